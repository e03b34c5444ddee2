-- slurm-flex submit hook module (Lua 5.1, runs inside slurmctld via job_submit/lua).
--
-- For every submission it decides whether the job is flexible (and how far it may move) and
-- writes one versioned token into admin_comment, which users cannot set:
--
--   slurmflex:v1;power_w=<W>;basis=req;begin=<epoch>;grace=<epoch>;deadline=<epoch>;slack=<s>;flex=<how>;why=<why>
--
--   flex     deadline (sbatch --deadline) | keyword (--comment flex=<duration>) |
--            policy (the partition/QOS is flexible by default) | no
--   why      for flex=no: none | optout | exempt | interactive | hetjob | invalid
--   deadline the deadline as the hook saw it (0 = none or unknown; the daemon reads Slurm's own)
--   slack    the longest the job may wait past its earliest start (0 = only the deadline limits it)
--   begin    the user's own --begin (0 = none): the earliest start slurm-flex may ever choose
--   grace    the hook postponed the start to this time so the daemon can plan the job first
--
-- Rules: no network, no processes, no file I/O here (the caller loads the policy once);
-- everything is decided first and only then written to job_desc, so an error part-way leaves the
-- job untouched. Callers wrap M.submit in pcall and accept the job whatever happens inside.

local M = {}

M.TAG_VERSION = 1

-- Slurm's "unset" sentinels as they reach Lua.
local NO_VAL = 4294967294
local INFINITE = 4294967295
local NO_VAL16 = 65534
local INFINITE16 = 65535

M.defaults = {
    grace_seconds = 120,          -- postpone flexible jobs this long so the daemon plans them first
    safety_margin_seconds = 900,  -- the grace never pushes a job past deadline - time limit - margin
    partitions = {},              -- partitions slurm-flex manages; empty = all
    exclude_partitions = {},      -- partitions slurm-flex never touches (no tag, no change)
    exempt_users = {},            -- jobs of these users are never flexible
    exempt_accounts = {},
    invalid_request = "accept",   -- "accept" (as inflexible, with a message) or "reject"
    max_slack_seconds = 7 * 86400,
    default_slack_seconds = 0,    -- > 0: jobs are flexible by default by this much
    partition_policy = {},        -- name -> {default_slack_seconds=, max_slack_seconds=}
    qos_policy = {},              -- name -> {default_slack_seconds=, max_slack_seconds=}
    power = {
        node_idle_watts = 120, node_max_watts = 450, cpus_per_node = 64, gpu_watts = 300,
        memory_watts_per_gb = 0.375,
        node_types = {},          -- name -> {node_idle_watts=, node_max_watts=, cpus_per_node=, gpu_watts=}
        partition_node_types = {},-- partition -> node type name
        gpu_model_watts = {},     -- GPU model (as in gres:gpu:<model>:N) -> watts
    },
}

local function set_of(list)
    local set = {}
    for _, v in ipairs(list or {}) do set[v] = true end
    return set
end

local function merge(base, over)
    local out = {}
    for k, v in pairs(base) do out[k] = v end
    for k, v in pairs(over or {}) do
        if type(v) == "table" and type(base[k]) == "table" and #v == 0 and next(base[k]) ~= nil and #base[k] == 0 then
            out[k] = merge(base[k], v)
        else
            out[k] = v
        end
    end
    return out
end

M.policy = nil

-- Install a site policy table (as rendered by `slurmflex hook install`).
function M.configure(policy)
    local p = merge(M.defaults, policy or {})
    p.partition_set = set_of(p.partitions)
    p.exclude_set = set_of(p.exclude_partitions)
    p.user_set = set_of(p.exempt_users)
    p.account_set = set_of(p.exempt_accounts)
    M.policy = p
    return p
end

M.configure({})

local function is_set(v)
    return type(v) == "number" and v ~= NO_VAL and v ~= INFINITE and v ~= NO_VAL16 and v ~= INFINITE16
end

local function first_partition(job_desc, part_list)
    local p = job_desc.partition
    if type(p) == "string" and p ~= "" then
        return (string.match(p, "^([^,]+)"))
    end
    if type(part_list) ~= "table" then return nil end
    for name, part in pairs(part_list) do
        if type(part) == "table" and part.flag_default == 1 then return part.name or name end
    end
    return nil
end

-- GPU counts by model from a TRES string: "gres:gpu:2", "gres/gpu:a100:4", "gres/gpu=1".
function M.gpus(tres)
    local by_model, total = {}, 0
    if type(tres) ~= "string" then return by_model, total end
    for item in string.gmatch(tres, "[^,]+") do
        local model, n = string.match(item, "^gres[:/]gpu:([^:=]+)[:=](%d+)$")
        if not model then
            n = string.match(item, "^gres[:/]gpu[:=](%d+)$")
            model = "default"
        end
        if n then
            by_model[model] = (by_model[model] or 0) + tonumber(n)
            total = total + tonumber(n)
        end
    end
    return by_model, total
end

local function node_type(power, partition)
    local name = partition and power.partition_node_types[partition]
    local t = name and power.node_types[name]
    return t and merge(power, t) or power
end

local function gpu_watts(power, t, model)
    return power.gpu_model_watts[model] or t.gpu_watts
end

-- Estimated whole-job watts from requested resources (per array task); same formula as
-- slurm_flex/power/model.py: nodes*idle + cpus*(max-idle)/cpus_per_node + memory + GPUs.
function M.estimate_power(job_desc, partition)
    local power = M.policy.power
    local t = node_type(power, partition)
    local nodes = is_set(job_desc.min_nodes) and job_desc.min_nodes or 1
    if nodes < 1 then nodes = 1 end
    local cpus = is_set(job_desc.min_cpus) and job_desc.min_cpus or 1
    local tasks = is_set(job_desc.num_tasks) and job_desc.num_tasks or 1
    local cpt = is_set(job_desc.cpus_per_task) and job_desc.cpus_per_task or 1
    if tasks * cpt > cpus then cpus = tasks * cpt end
    local cap = nodes * t.cpus_per_node
    if cpus > cap then cpus = cap end
    if cpus < 1 then cpus = 1 end
    local watts = nodes * t.node_idle_watts + cpus * (t.node_max_watts - t.node_idle_watts) / t.cpus_per_node
    local mem_mb = 0
    if is_set(job_desc.min_mem_per_node) and job_desc.min_mem_per_node > 0 then
        mem_mb = job_desc.min_mem_per_node * nodes
    elseif is_set(job_desc.min_mem_per_cpu) and job_desc.min_mem_per_cpu > 0 then
        mem_mb = job_desc.min_mem_per_cpu * cpus
    end
    watts = watts + mem_mb / 1024 * power.memory_watts_per_gb
    local per_node = M.gpus(job_desc.tres_per_node)
    for model, n in pairs(per_node) do watts = watts + n * nodes * gpu_watts(power, t, model) end
    local per_job = M.gpus(job_desc.tres_per_job)
    for model, n in pairs(per_job) do watts = watts + n * gpu_watts(power, t, model) end
    local per_task = M.gpus(job_desc.tres_per_task)
    for model, n in pairs(per_task) do watts = watts + n * tasks * gpu_watts(power, t, model) end
    return watts
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
        return os.time({ year = tonumber(y), month = tonumber(mo), day = tonumber(d), hour = hh, min = mm, sec = ss })
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

-- Seconds in a duration such as "24h", "90m", "2d", "1d12h", "1w", "3600s" or "3600"; nil otherwise.
function M.parse_duration(text)
    if type(text) ~= "string" or text == "" then return nil end
    if string.match(text, "^%d+$") then return tonumber(text) end
    local total, rest = 0, string.lower(text)
    while rest ~= "" do
        local n, unit, tail = string.match(rest, "^(%d+)(%a+)(.*)$")
        if not n or not UNIT_SECONDS[unit] or unit == "" then return nil end
        total = total + tonumber(n) * UNIT_SECONDS[unit]
        rest = tail
    end
    return total
end

-- The value of an #SBATCH option in the script's header block (like sbatch reads it).
function M.script_option(script, option)
    if type(script) ~= "string" then return nil end
    local found = nil
    local first = true
    local pattern = "^#SBATCH%s+%-%-" .. option .. "[=%s]%s*(%S+)"
    for line in string.gmatch(script, "([^\n]*)\n?") do
        if first and string.sub(line, 1, 2) == "#!" then
            -- interpreter line
        elseif string.match(line, "^%s*$") then
            -- blank lines do not end the header
        elseif string.sub(line, 1, 1) == "#" then
            local v = string.match(line, pattern)
            if v then found = v end
        else
            break
        end
        first = false
    end
    return found
end

-- The flex=... keyword in a comment: "no" (opt-out), a slack in seconds, "invalid", or nil.
function M.keyword(comment)
    if type(comment) ~= "string" then return nil end
    local value = string.match(" " .. comment, "[%s,;]flex=([^%s,;]*)")
    if value == nil then return nil end
    local v = string.lower(value)
    if v == "no" or v == "off" or v == "false" or v == "0" or v == "none" then return "no" end
    local seconds = M.parse_duration(v)
    if seconds and seconds > 0 then return seconds end
    return "invalid", value
end

-- The fields the hook reads. In slurmctld every job_desc access is a call into C (and `script`
-- copies the whole script), so each is read exactly once into a plain table.
M.FIELDS = {
    "partition", "qos", "user_name", "account", "comment", "admin_comment", "script", "deadline",
    "begin_time", "time_limit", "het_job_offset", "min_nodes", "min_cpus", "num_tasks", "cpus_per_task",
    "min_mem_per_node", "min_mem_per_cpu", "tres_per_node", "tres_per_job", "tres_per_task",
}

function M.snapshot(job_desc)
    local r = {}
    for _, field in ipairs(M.FIELDS) do r[field] = job_desc[field] end
    local env = job_desc.environment
    if type(env) == "table" or type(env) == "userdata" then
        local ok, v = pcall(function() return env.SLURMFLEX_DEADLINE end)
        if ok and type(v) == "string" then r.env_deadline = v end
    end
    return r
end

-- The deadline: newer Slurm's job_desc.deadline, the cli_filter's SLURMFLEX_DEADLINE (for a
-- command-line --deadline on Slurm 22.05, which does not pass it to Lua), or the script header.
-- Takes a snapshot; returns epoch, -1 for a deadline in a form the hook cannot read, or nil.
function M.deadline(r, now)
    if is_set(r.deadline) and r.deadline > 0 then return r.deadline end
    local text = r.env_deadline
    if text == "" or text == "Unknown" then text = nil end
    text = text or M.script_option(r.script, "deadline")
    if text == nil then return nil end
    return M.parse_time(text, now) or -1
end

-- (default, max) slack in seconds for a partition and QOS: QOS beats partition beats the global
-- values. The daemon's twin is FlexConfig.slack_limits (slurm_flex/config.py), in hours.
local function slack_policy(policy, partition, qos)
    local default, max = policy.default_slack_seconds, policy.max_slack_seconds
    -- Not ipairs: it would stop at a partition without a layer and skip the QOS.
    local layers = { partition and policy.partition_policy[partition], qos and policy.qos_policy[qos] }
    for i = 1, 2 do
        local layer = layers[i]
        if layer then
            default = layer.default_slack_seconds or default
            max = layer.max_slack_seconds or max
        end
    end
    return default, max
end

function M.slack_limits(partition, qos)
    return slack_policy(M.policy, partition, qos)
end

local function hhmm(epoch)
    -- os.date gives nil (or fails) for times beyond what the C library can show.
    local ok, text = pcall(os.date, "%Y-%m-%d %H:%M %Z", epoch)
    return (ok and text) or tostring(epoch)
end

local function span(seconds)
    if seconds % 86400 == 0 then return string.format("%dd", seconds / 86400) end
    if seconds % 3600 == 0 then return string.format("%dh", seconds / 3600) end
    return string.format("%dm", math.floor(seconds / 60 + 0.5))
end

-- Decide everything for one submission without touching job_desc. Returns
-- changes (field -> value), messages for the user, and a rejection message or nil.
function M.decide(job_desc, part_list, now)
    job_desc = M.snapshot(job_desc)
    local policy = M.policy
    local changes, messages = {}, {}
    local partition = first_partition(job_desc, part_list)
    if partition and policy.exclude_set[partition] then return changes, messages, nil end
    if next(policy.partition_set) ~= nil and not (partition and policy.partition_set[partition]) then
        return changes, messages, nil
    end
    local watts = M.estimate_power(job_desc, partition)
    local user_begin = (is_set(job_desc.begin_time) and job_desc.begin_time > 0) and job_desc.begin_time or 0
    local earliest = user_begin > now and user_begin or now
    local limit = is_set(job_desc.time_limit) and job_desc.time_limit * 60 or nil
    local default_slack, max_slack = slack_policy(policy, partition, job_desc.qos)
    local keyword, raw_keyword = M.keyword(job_desc.comment)
    local deadline = M.deadline(job_desc, now)
    local het = is_set(job_desc.het_job_offset)
    local flex, why, slack, reject, capped = "no", "none", 0, nil, false

    local function invalid(text)
        if policy.invalid_request == "reject" then
            reject = "slurm-flex: " .. text
        else
            why = "invalid"
            messages[#messages + 1] = "slurm-flex: " .. text .. "; slurm-flex lets the job through unchanged, and it will not be moved"
        end
    end

    if policy.user_set[job_desc.user_name or ""] or policy.account_set[job_desc.account or ""] then
        why = "exempt"
    elseif het and job_desc.het_job_offset > 0 then
        why = "hetjob"
    elseif job_desc.script == nil and not het then
        why = "interactive"   -- somebody is waiting at a terminal: never deferred
    elseif het then
        why = "hetjob"
        messages[#messages + 1] = "slurm-flex: heterogeneous jobs are not moved"
    elseif keyword == "no" then
        why = "optout"
        messages[#messages + 1] = "slurm-flex: flex=no: this job will not be moved"
    elseif keyword == "invalid" then
        invalid(string.format("cannot read flex=%s (use flex=no, or flex=<how long it may wait> such as flex=12h)", raw_keyword))
    elseif deadline == -1 then
        -- A deadline form the hook cannot parse: Slurm has it and the daemon reads it there.
        flex = "deadline"
    elseif deadline then
        if limit and deadline < earliest + limit then
            invalid(string.format("the deadline %s is earlier than the earliest start plus the time limit; "
                .. "Slurm cancels a job that cannot finish by its deadline (Slurm 24.11 and later refuse it at "
                .. "submission)", hhmm(deadline)))
        else
            flex = "deadline"
            if limit and deadline - earliest - limit > max_slack then
                slack, capped = max_slack, true
            end
        end
    elseif type(keyword) == "number" then
        flex, slack = "keyword", keyword
        if slack > max_slack then slack, capped = max_slack, true end
    elseif default_slack > 0 then
        flex, slack = "policy", math.min(default_slack, max_slack)
    end
    if reject then return {}, {}, reject end

    -- The latest start slurm-flex will ever choose, as far as the hook can tell.
    local latest = nil
    if flex == "deadline" and deadline and deadline > 0 and limit then
        latest = deadline - limit - policy.safety_margin_seconds
    end
    if flex ~= "no" and slack > 0 and (latest == nil or earliest + slack < latest) then
        latest = earliest + slack
    end
    local grace = 0
    if flex ~= "no" and policy.grace_seconds > 0 then
        grace = now + policy.grace_seconds
        if latest and latest < grace then grace = 0 end       -- too tight to postpone at all
        if grace > 0 and user_begin >= grace then grace = 0 end -- already starts later
    end
    if flex ~= "no" then
        local until_text = latest and (" (latest start " .. hhmm(latest) .. ")") or ""
        if flex == "deadline" then
            messages[#messages + 1] = "slurm-flex: job is flexible until its deadline" .. until_text
                .. "; it may start later to use cleaner power, never too late to finish"
        elseif flex == "keyword" then
            messages[#messages + 1] = "slurm-flex: job may wait up to " .. span(slack) .. until_text
                .. " to use cleaner power"
        else
            messages[#messages + 1] = "slurm-flex: jobs here may wait up to " .. span(slack) .. until_text
                .. " to use cleaner power; add --comment=flex=no to opt out"
        end
        if capped then
            messages[#messages + 1] = "slurm-flex: the site allows at most " .. span(max_slack) .. " of waiting here"
        end
    end
    local tag = string.format(
        "slurmflex:v%d;power_w=%d;basis=req;begin=%d;grace=%d;deadline=%d;slack=%d;flex=%s;why=%s",
        M.TAG_VERSION, math.floor(watts + 0.5), user_begin, grace,
        (deadline and deadline > 0) and deadline or 0, slack, flex, flex == "no" and why or "")
    changes.admin_comment = M.merge_admin_comment(job_desc.admin_comment, tag)
    if grace > 0 then changes.begin_time = grace end
    return changes, messages, nil
end

-- Replace (or add) the slurm-flex token in an admin_comment, keeping a site's own text.
function M.merge_admin_comment(existing, tag)
    if type(existing) ~= "string" or existing == "" then return tag end
    local cleaned = string.gsub(existing, "slurmflex:v%d+[^%s]*", "")
    cleaned = string.gsub(string.gsub(cleaned, "^%s+", ""), "%s+$", "")
    if cleaned == "" then return tag end
    return cleaned .. " " .. tag
end

local function log_user(messages)
    if slurm and slurm.log_user then
        for _, m in ipairs(messages) do slurm.log_user("%s", m) end
    end
end

-- Returns slurm.SUCCESS, or slurm.ERROR only when the site chose to reject invalid requests.
function M.submit(job_desc, part_list, submit_uid, now)
    local changes, messages, reject = M.decide(job_desc, part_list, now or os.time())
    if reject then
        log_user({ reject })
        return slurm.ERROR
    end
    -- Remember each field before writing it, nil included (a table cannot hold nil values, so a
    -- list of records), and put them all back if any write fails.
    local written = {}
    local ok, err = pcall(function()
        for field, value in pairs(changes) do
            written[#written + 1] = { field = field, old = job_desc[field] }
            job_desc[field] = value
        end
    end)
    if not ok then
        for i = #written, 1, -1 do
            local w = written[i]
            pcall(function() job_desc[w.field] = w.old end)
        end
        error(err, 0)
    end
    log_user(messages)
    return slurm.SUCCESS
end

-- Updates pass untouched (the daemon's own StartTime changes among them), except that a new
-- flex= keyword in the comment opts a tagged job out (flex=no) or in (flex=<duration>).
function M.modify(job_desc, job_rec, part_list, modify_uid)
    local comment = job_desc.comment
    if comment == nil then return nil end
    local current = job_rec and job_rec.admin_comment
    if type(current) ~= "string" or not string.find(current, "slurmflex:v", 1, true) then return nil end
    local keyword = M.keyword(comment)
    local token = string.match(current, "slurmflex:v%d+[^%s]*")
    local updated = nil
    if keyword == "no" then
        updated = string.gsub(string.gsub(token, ";flex=[^;]*", ";flex=no"), ";why=[^;]*", ";why=optout")
    elseif type(keyword) == "number" and string.find(token, ";flex=no", 1, true)
        and (string.find(token, ";why=optout", 1, true) or string.find(token, ";why=none", 1, true)) then
        local slack = math.min(keyword, M.policy.max_slack_seconds)
        updated = string.gsub(string.gsub(string.gsub(token, ";flex=[^;]*", ";flex=keyword"),
            ";why=[^;]*", ";why="), ";slack=%d+", ";slack=" .. slack)
    end
    if updated and updated ~= token then
        job_desc.admin_comment = M.merge_admin_comment(current, updated)
        return updated
    end
    return nil
end

return M
