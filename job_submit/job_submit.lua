-- Standalone job_submit.lua for sites without one of their own: install it next to slurm.conf
-- (with slurmflex.lua and slurmflex_policy.lua) and set JobSubmitPlugins=lua.
-- Sites with their own job_submit.lua call the module instead; see job_submit/README.md.

local here = string.match(debug.getinfo(1, "S").source, "^@(.*/)") or "./"
package.path = here .. "?.lua;" .. package.path

local log_error = slurm.log_error or slurm.error

local sfx = nil
do
    local ok, mod = pcall(require, "slurmflex")
    if ok then
        sfx = mod
        local have_policy, policy = pcall(dofile, here .. "slurmflex_policy.lua")
        if have_policy then
            sfx.configure(policy)
        else
            slurm.log_info("slurm-flex: no usable policy file (%s); using built-in defaults", tostring(policy))
            sfx.configure({})
        end
    else
        log_error("slurm-flex: module not loaded, jobs pass untouched: %s", tostring(mod))
    end
end

function slurm_job_submit(job_desc, part_list, submit_uid)
    if sfx then
        local ok, rc = pcall(sfx.submit, job_desc, part_list, submit_uid)
        if not ok then
            log_error("slurm-flex: hook error, job accepted unchanged: %s", tostring(rc))
        elseif rc == slurm.ERROR then
            return slurm.ERROR  -- the site rejects invalid flexibility requests; the user was told why
        end
    end
    return slurm.SUCCESS
end

function slurm_job_modify(job_desc, job_rec, part_list, modify_uid)
    if sfx then
        local ok, err = pcall(sfx.modify, job_desc, job_rec, part_list, modify_uid)
        if not ok then
            log_error("slurm-flex: modify hook error, update accepted unchanged: %s", tostring(err))
        end
    end
    return slurm.SUCCESS
end

return slurm.SUCCESS
