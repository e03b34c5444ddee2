-- slurm-flex cli_filter (Lua 5.1). Runs inside sbatch/srun/salloc on submit hosts when
-- slurm.conf has CliFilterPlugins=cli_filter/lua and this file sits next to slurm.conf.
--
-- Slurm 22.05 does not pass a command-line --deadline to job_submit.lua. This filter passes it
-- on in the job's environment as SLURMFLEX_DEADLINE, so the submit hook can see it too (to tell
-- the user, check the site's limits and give the daemon its grace period). Nothing else changes;
-- a user who asked for no environment (--export=NONE) keeps it that way.

local function slurmflex_pass_deadline(options)
    local deadline = options["deadline"]
    if deadline == nil or deadline == "" or deadline == "Unknown" then return end
    local export = options["export"]
    if export == "NONE" or export == "NIL" then return end
    if export == nil or export == "" then export = "ALL" end
    if string.find(export, "SLURMFLEX_DEADLINE=", 1, true) then return end
    options["export"] = export .. ",SLURMFLEX_DEADLINE=" .. deadline
end

function slurm_cli_setup_defaults(options, early_pass)
    return slurm.SUCCESS
end

function slurm_cli_pre_submit(options, offset)
    local ok, err = pcall(slurmflex_pass_deadline, options)
    if not ok and slurm.log_debug then
        slurm.log_debug("slurm-flex cli_filter: %s", tostring(err))
    end
    return slurm.SUCCESS
end

function slurm_cli_post_submit(offset, job_id, step_id)
    return slurm.SUCCESS
end
