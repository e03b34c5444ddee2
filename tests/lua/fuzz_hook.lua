-- Fuzzing the submit hook through its real entry point (job_submit/job_submit.lua) under Lua 5.1.
-- Run by tests/test_hook_lua.py through harness.lua; SLURMFLEX_FUZZ_JOBS and SLURMFLEX_FUZZ_SEED
-- set how many job_desc tables and which ones.
--
-- Each job_desc has fields missing, of the wrong type, huge, negative, NaN, infinite or Slurm's
-- sentinels, odd comments and scripts; some are proxies (as slurmctld's job_desc is userdata)
-- that fail on reading or writing a field. For every job: slurm_job_submit accepts it; where the
-- hook could not decide (it reported an error), the job is exactly as submitted; otherwise it
-- changed at most admin_comment (one slurm-flex tag) and begin_time.

local JOBS = tonumber(os.getenv("SLURMFLEX_FUZZ_JOBS") or "") or 10000
local SEED = tonumber(os.getenv("SLURMFLEX_FUZZ_SEED") or "") or 1

local function hook_dir()
    local p = package.path
    return string.match(p, "^([^;]*/)%?%.lua;")
end

-- Install the hook's real job_submit.lua (it loads slurmflex.lua next to it, with the defaults).
dofile(hook_dir() .. "job_submit.lua")

local NAN, INF = 0 / 0, 1 / 0
local FIELDS = {
    "partition", "qos", "user_name", "account", "comment", "admin_comment", "script", "deadline",
    "begin_time", "time_limit", "het_job_offset", "min_nodes", "min_cpus", "num_tasks", "cpus_per_task",
    "min_mem_per_node", "min_mem_per_cpu", "tres_per_node", "tres_per_job", "tres_per_task", "environment",
    "priority", "name", "work_dir",
}
local NUMBERS = {
    0, 1, -1, 2, 7, 60, 1440, 65534, 65535, 4294967294, 4294967295, 2 ^ 31, -2 ^ 31, 2 ^ 53, -2 ^ 53,
    1e18, -1e18, 1e308, -1e308, NAN, INF, -INF, 0.5, -0.5, 1795251000, 4102444800, 2 ^ 63,
}
local WORDS = {
    "", " ", "debug", "gpu,debug", ",", "batch,", "normal", "flex=no", "flex=12h", "flex=", "flex=-5h",
    "flex=0", "flex=99999999999999999999d", "flex=1w2d3h4m5s", "flex=%d%s", "FLEX=NO", "a flex=3h b",
    "flex=3h;flex=no", "flex=nan", "flex=inf", "flex=1e400s", "flex=\0", "slurmflex:v1;power_w=5",
    "slurmflex:v999;grace=-1;deadline=nan", "slurmflex:v1" .. string.rep(";x=y", 200), "%", "%%s", "%(",
    "now+6hours", "now+-1hours", "now+99999999999999999999hours", "2026-11-21T08:00", "2026-13-45T99:99",
    "25:61", "00:00:00", "Unknown", "gres:gpu:2", "gres/gpu:a100:-4", "gres:gpu:99999999999999999999",
    "gres/gpu=", "gres:gpu:x:y:z", "\226\130\172uro", "\255\254", string.rep("x", 70000),
}

local function pick(list) return list[math.random(#list)] end

local function random_string()
    local r = math.random()
    if r < 0.6 then return pick(WORDS) end
    local n = math.random(0, 40)
    local bytes = {}
    for i = 1, n do bytes[i] = string.char(math.random(0, 255)) end
    return table.concat(bytes)
end

local function random_script()
    local lines = { "#!/bin/bash" }
    for _ = 1, math.random(0, 6) do
        local option = pick({ "deadline", "time", "begin", "comment", "partition", "dead line", "" })
        local value = math.random() < 0.5 and pick(WORDS) or tostring(pick(NUMBERS))
        lines[#lines + 1] = pick({ "#SBATCH --", "#SBATCH  --", "# SBATCH --", "#SBATCH -" }) .. option
            .. pick({ "=", " ", "" }) .. value
    end
    if math.random() < 0.3 then lines[#lines + 1] = "srun hostname" end
    return table.concat(lines, pick({ "\n", "\r\n", "\n\n" })) .. pick({ "\n", "" })
end

local function random_value(field)
    local r = math.random()
    if r < 0.12 then return nil end
    if r < 0.45 then return pick(NUMBERS) end
    if r < 0.55 then return math.random(-100000, 100000) end
    if r < 0.62 then return math.random() < 0.5 end
    if r < 0.68 then return { pick(NUMBERS), pick(WORDS) } end
    if r < 0.70 then return function() return 1 end end
    if field == "script" and r < 0.9 then return random_script() end
    if field == "environment" then
        return { SLURMFLEX_DEADLINE = math.random() < 0.7 and pick(WORDS) or pick(NUMBERS) }
    end
    return random_string()
end

local function random_job_desc()
    local jd = {}
    for _, field in ipairs(FIELDS) do
        if math.random() < 0.8 then jd[field] = random_value(field) end
    end
    -- Plausible jobs too, so the hook decides often: a script, a time limit, a deadline.
    if math.random() < 0.4 then
        jd.script = random_script() .. "#SBATCH --deadline=now+" .. math.random(-5, 500) .. "hours\n"
        jd.time_limit = math.random(-10, 100000)
        jd.begin_time = pick({ 0, 1795251000 + math.random(-86400, 86400), 4294967294 })
    end
    return jd
end

local function random_part_list()
    local r = math.random()
    if r < 0.3 then return nil end
    if r < 0.5 then return {} end
    if r < 0.6 then return pick(WORDS) end
    local parts = {}
    for _ = 1, math.random(1, 4) do
        local name = pick(WORDS)
        parts[name] = math.random() < 0.8 and { name = pick({ name, nil, 5 }), flag_default = pick({ 0, 1, nil, "1" }) }
            or pick(NUMBERS)
    end
    return parts
end

-- slurmctld's job_desc is userdata: reading or writing a field can fail. A proxy over the table
-- fails like that for one field (on read or on write).
local function proxy(backing)
    local on_write = math.random() < 0.7
    local bad = on_write and pick({ "admin_comment", "begin_time" }) or pick(FIELDS)  -- the hook writes those
    local p = {}
    setmetatable(p, {
        __index = function(_, k)
            if k == bad and not on_write then error("cannot read " .. k) end
            return backing[k]
        end,
        __newindex = function(_, k, v)
            if k == bad and on_write then error("cannot set " .. k) end
            backing[k] = v
        end,
    })
    return p
end

local function copy(t)
    local out = {}
    for k, v in pairs(t) do out[k] = type(v) == "table" and copy(v) or v end
    return out
end

local function same(a, b)
    if type(a) == "number" and type(b) == "number" and a ~= a and b ~= b then return true end  -- NaN
    if type(a) ~= "table" or type(b) ~= "table" then return a == b end
    for k, v in pairs(a) do if not same(v, b[k]) then return false end end
    for k, v in pairs(b) do if not same(a[k], v) then return false end end
    return true
end

local function describe(t)
    local parts = {}
    for k, v in pairs(t) do
        local text = type(v) == "string" and string.format("%q", string.sub(v, 1, 60)) or tostring(v)
        parts[#parts + 1] = tostring(k) .. "=" .. text
    end
    table.sort(parts)
    return "{" .. table.concat(parts, ", ") .. "}"
end

test("fuzz", function()
    math.randomseed(SEED)
    local stats = { jobs = 0, accepted = 0, undecided = 0, changed = 0, proxies = 0 }
    for i = 1, JOBS do
        local backing = random_job_desc()
        local before = copy(backing)
        local use_proxy = math.random() < 0.15
        local jd = use_proxy and proxy(backing) or backing
        if use_proxy then stats.proxies = stats.proxies + 1 end
        local errors_before = #logs.error
        local ok, rc = pcall(slurm_job_submit, jd, random_part_list(), math.random(0, 70000))
        local function where() return string.format("job %d (seed %d): %s", i, SEED, describe(before)) end
        if not ok then error("slurm_job_submit raised: " .. tostring(rc) .. " for " .. where()) end
        if rc ~= slurm.SUCCESS then error("not accepted (" .. tostring(rc) .. "): " .. where()) end
        stats.jobs, stats.accepted = stats.jobs + 1, stats.accepted + 1
        if #logs.error > errors_before then
            stats.undecided = stats.undecided + 1
            if not same(backing, before) then
                error("changed although the hook could not decide (" .. logs.error[#logs.error] .. "): " .. where()
                    .. " -> " .. describe(backing))
            end
        else
            for k, v in pairs(backing) do
                if k ~= "admin_comment" and k ~= "begin_time" and not same(v, before[k]) then
                    error("changed " .. tostring(k) .. ": " .. where())
                end
            end
            for k in pairs(before) do
                if backing[k] == nil and before[k] ~= nil then error("removed " .. tostring(k) .. ": " .. where()) end
            end
            if not same(backing, before) then
                stats.changed = stats.changed + 1
                local _, tags = string.gsub(backing.admin_comment or "", "slurmflex:v%d+", "")
                if tags ~= 1 then error("not one slurm-flex tag in " .. tostring(backing.admin_comment) .. ": " .. where()) end
            end
        end
        if #logs.error > 1000 then logs.error = {} end
    end
    print(string.format("jobs=%d accepted=%d undecided=%d changed=%d proxies=%d",
        stats.jobs, stats.accepted, stats.undecided, stats.changed, stats.proxies))
end)
