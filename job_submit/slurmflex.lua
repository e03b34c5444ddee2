-- slurm-flex submit hook module (Lua 5.1, runs inside slurmctld via job_submit/lua).
--
-- Tags each job's admin_comment with a versioned token the slurm-flex daemon reads:
--   slurmflex:v1;power_w=<W>;basis=req;begin=<epoch>;grace=<epoch>;deadline=<epoch>;flex=<why>
-- and, for jobs that are flexible (they have a deadline), postpones the start by a short grace
-- period so the daemon can plan them before the scheduler starts them.
--
-- Rules: no network, no processes, no file I/O here (the policy is loaded once by the caller);
-- everything is computed first and only then written to job_desc, so an error part-way leaves
-- the job untouched. Callers wrap M.submit in pcall and accept the job whatever happens.

local M = {}

M.TAG_VERSION = 1

-- Slurm's "unset" sentinels as they reach Lua.
local NO_VAL = 4294967294
local INFINITE = 4294967295
local NO_VAL16 = 65534
local INFINITE16 = 65535

M.defaults = {
    grace_seconds = 120,         -- postpone flexible jobs this long so the daemon plans them first
    safety_margin_seconds = 900, -- the grace never pushes a job past deadline - time limit - margin
    partitions = {},             -- partitions slurm-flex manages; empty = all
    power = {
        node_idle_watts = 120,
        node_max_watts = 450,
        cpus_per_node = 64,
        gpu_watts = 300,
    },
}

M.policy = M.defaults

local function is_set(v)
    return type(v) == "number" and v ~= NO_VAL and v ~= INFINITE and v ~= NO_VAL16 and v ~= INFINITE16
end

local function merge(base, over)
    local out = {}
    for k, v in pairs(base) do out[k] = v end
    for k, v in pairs(over or {}) do
        if type(v) == "table" and type(base[k]) == "table" and #v == 0 and next(v) ~= nil then
            out[k] = merge(base[k], v)
        else
            out[k] = v
        end
    end
    return out
end

-- Install a site policy table (as rendered by `slurmflex hook install`).
function M.configure(policy)
    M.policy = merge(M.defaults, policy or {})
    local set = {}
    for _, p in ipairs(M.policy.partitions or {}) do set[p] = true end
    M.policy.partition_set = set
    return M.policy
end

-- GPUs per node from a TRES string: "gres:gpu:2", "gres/gpu:a100:4", "gres/gpu=1".
function M.gpus_per_node(tres)
    if type(tres) ~= "string" then return 0 end
    local total = 0
    for item in string.gmatch(tres, "[^,]+") do
        local n = string.match(item, "^gres[:/]gpu:[^:=]+[:=](%d+)$")
            or string.match(item, "^gres[:/]gpu[:=](%d+)$")
        if n then total = total + tonumber(n) end
    end
    return total
end

-- Estimated whole-job watts from requested resources; same formula as slurm_flex/powermodel.py.
function M.estimate_power(job_desc)
    local pw = M.policy.power
    local nodes = is_set(job_desc.min_nodes) and job_desc.min_nodes or 1
    if nodes < 1 then nodes = 1 end
    local cpus = is_set(job_desc.min_cpus) and job_desc.min_cpus or 1
    local tasks = is_set(job_desc.num_tasks) and job_desc.num_tasks or nil
    local cpt = is_set(job_desc.cpus_per_task) and job_desc.cpus_per_task or 1
    if tasks and tasks * cpt > cpus then cpus = tasks * cpt end
    if cpus < 1 then cpus = 1 end
    local cap = nodes * pw.cpus_per_node
    if cpus > cap then cpus = cap end
    local gpus = M.gpus_per_node(job_desc.tres_per_node)
    local dynamic = (pw.node_max_watts - pw.node_idle_watts) / pw.cpus_per_node
    local watts = nodes * pw.node_idle_watts + cpus * dynamic + nodes * gpus * pw.gpu_watts
    return watts, nodes, cpus, gpus
end

local UNIT_SECONDS = {
    [""] = 1, s = 1, sec = 1, secs = 1, second = 1, seconds = 1,
    m = 60, min = 60, mins = 60, minute = 60, minutes = 60,
    h = 3600, hour = 3600, hours = 3600,
    d = 86400, day = 86400, days = 86400,
    w = 604800, week = 604800, weeks = 604800,
}

-- Epoch for the time forms sbatch users write most (now+N<unit>, YYYY-MM-DD[THH:MM[:SS]],
-- HH:MM[:SS]); nil for anything else (the daemon still reads the real value from Slurm).
function M.parse_time(text, now)
    if type(text) ~= "string" then return nil end
    local s = string.lower(text)
    local n, unit = string.match(s, "^now%+(%d+)(%a*)$")
    if n then
        local mult = UNIT_SECONDS[unit]
        if not mult then return nil end
        return now + tonumber(n) * mult
    end
    local y, mo, d, rest = string.match(s, "^(%d%d%d%d)%-(%d%d)%-(%d%d)(.*)$")
    if y then
        local hh, mm, ss = 0, 0, 0
        if rest ~= "" then
            local h2, m2, s2 = string.match(rest, "^t(%d%d):(%d%d):?(%d*)$")
            if not h2 then return nil end
            hh, mm, ss = tonumber(h2), tonumber(m2), tonumber(s2) or 0
        end
        return os.time({year = tonumber(y), month = tonumber(mo), day = tonumber(d),
                        hour = hh, min = mm, sec = ss})
    end
    local h3, m3, s3 = string.match(s, "^(%d%d?):(%d%d):?(%d*)$")
    if h3 then
        local t = os.date("*t", now)
        t.hour, t.min, t.sec = tonumber(h3), tonumber(m3), tonumber(s3) or 0
        local at = os.time(t)
        if at <= now then at = at + 86400 end
        return at
    end
    return nil
end

-- The --deadline value from the script's #SBATCH lines (the header block only, like sbatch).
function M.script_deadline(script)
    if type(script) ~= "string" then return nil end
    local found = nil
    local first = true
    for line in string.gmatch(script, "([^\n]*)\n?") do
        if first and string.sub(line, 1, 2) == "#!" then
            -- interpreter line
        elseif string.match(line, "^%s*$") then
            -- blank lines do not end the header
        elseif string.sub(line, 1, 1) == "#" then
            local v = string.match(line, "^#SBATCH%s+%-%-deadline[=%s]%s*(%S+)")
            if v then found = v end
        else
            break
        end
        first = false
    end
    return found
end

-- Replace (or add) the slurm-flex token in an admin_comment, keeping a site's own text.
function M.merge_admin_comment(existing, tag)
    if type(existing) ~= "string" or existing == "" then return tag end
    local cleaned = string.gsub(existing, "slurmflex:v%d+[^%s]*", "")
    cleaned = string.gsub(string.gsub(cleaned, "^%s+", ""), "%s+$", "")
    if cleaned == "" then return tag end
    return cleaned .. " " .. tag
end

-- Decide everything for one submission without touching job_desc.
-- Returns a table of field -> new value, and a list of messages for the user.
function M.decide(job_desc, now)
    local policy = M.policy
    local changes, messages = {}, {}
    local partition = job_desc.partition
    if next(policy.partition_set or {}) ~= nil then
        if type(partition) ~= "string" or not policy.partition_set[partition] then
            return changes, messages
        end
    end
    local watts = M.estimate_power(job_desc)
    local user_begin = (is_set(job_desc.begin_time) and job_desc.begin_time > 0) and job_desc.begin_time or 0
    local deadline = nil
    if is_set(job_desc.deadline) and job_desc.deadline > 0 then
        deadline = job_desc.deadline          -- newer Slurm exposes it
    else
        local text = M.script_deadline(job_desc.script)
        if text then deadline = M.parse_time(text, now) or -1 end  -- -1: present, value unknown
    end
    local flex = deadline and "deadline" or "no"
    local grace = 0
    if deadline and policy.grace_seconds > 0 then
        grace = now + policy.grace_seconds
        if deadline > 0 then
            local limit = is_set(job_desc.time_limit) and job_desc.time_limit * 60 or 0
            local latest = deadline - limit - policy.safety_margin_seconds
            if latest < grace then grace = 0 end  -- too tight to postpone at all
        end
        if grace > 0 and user_begin >= grace then grace = 0 end  -- already starts later
    end
    local tag = string.format("slurmflex:v%d;power_w=%d;basis=req;begin=%d;grace=%d;deadline=%d;flex=%s",
        M.TAG_VERSION, math.floor(watts + 0.5), user_begin, grace,
        (deadline and deadline > 0) and deadline or 0, flex)
    changes.admin_comment = M.merge_admin_comment(job_desc.admin_comment, tag)
    if grace > 0 then
        changes.begin_time = grace
        messages[#messages + 1] = string.format(
            "slurm-flex: job is flexible (it has a deadline); it may start later to use cleaner power, and never too late to meet its deadline")
    end
    return changes, messages
end

function M.submit(job_desc, part_list, submit_uid, now)
    local changes, messages = M.decide(job_desc, now or os.time())
    for field, value in pairs(changes) do job_desc[field] = value end
    if slurm and slurm.log_user then
        for _, m in ipairs(messages) do slurm.log_user("%s", m) end
    end
    return changes
end

-- Updates of existing jobs (including the daemon's own StartTime changes) pass untouched.
function M.modify(job_desc, job_rec, part_list, modify_uid)
    return nil
end

return M
