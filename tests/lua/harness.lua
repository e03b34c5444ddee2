-- Minimal harness for the submit hook under Lua 5.1, outside slurmctld.
-- Usage: lua5.1 harness.lua <repo>/job_submit <test file> [test name | --list]
-- Provides a fake `slurm` table that records log lines, and assertion helpers.

local hook_dir, test_file, only = arg[1], arg[2], arg[3]
package.path = hook_dir .. "/?.lua;" .. package.path

NO_VAL = 4294967294
NO_VAL16 = 65534
INFINITE = 4294967295

logs = { info = {}, user = {}, error = {} }
local function recorder(kind)
    return function(fmt, ...) table.insert(logs[kind], string.format(fmt, ...)) end
end
slurm = {
    SUCCESS = 0, ERROR = -1,
    log_info = recorder("info"), log_user = recorder("user"),
    log_error = recorder("error"), error = recorder("error"),
    log_verbose = recorder("info"), log_debug = recorder("info"),
}

function reset_logs() logs = { info = {}, user = {}, error = {} } end

-- A job_desc as slurmctld builds it for `sbatch --wrap` with no options: sentinels, not nils.
function job_desc(overrides)
    local jd = {
        min_nodes = NO_VAL, max_nodes = NO_VAL, min_cpus = 1, num_tasks = NO_VAL,
        cpus_per_task = NO_VAL16, time_limit = NO_VAL, begin_time = 0, priority = NO_VAL,
        user_id = 1000, user_name = "alice", script = "#!/bin/sh\nsleep 1\n",
    }
    for k, v in pairs(overrides or {}) do jd[k] = v end
    return jd
end

function eq(actual, expected, what)
    if actual ~= expected then
        error(string.format("%s: expected %s, got %s", what or "value", tostring(expected), tostring(actual)), 2)
    end
end

function truthy(v, what) if not v then error((what or "condition") .. " is false", 2) end end

function contains(text, fragment, what)
    if type(text) ~= "string" or not string.find(text, fragment, 1, true) then
        error(string.format("%s: %q not found in %q", what or "text", fragment, tostring(text)), 2)
    end
end

function tag_field(admin_comment, key)
    return string.match(admin_comment or "", "slurmflex:v%d+[^%s]*;" .. key .. "=([^;%s]*)")
end

TESTS = {}
function test(name, fn) table.insert(TESTS, { name = name, fn = fn }) end

dofile(test_file)

if only == "--list" then
    for _, t in ipairs(TESTS) do print(t.name) end
    os.exit(0)
end

local failed = 0
for _, t in ipairs(TESTS) do
    if only == nil or only == t.name then
        reset_logs()
        package.loaded["slurmflex"] = nil
        local ok, err = pcall(t.fn)
        if ok then print("ok " .. t.name) else failed = failed + 1; print("FAIL " .. t.name .. ": " .. tostring(err)) end
    end
end
os.exit(failed == 0 and 0 or 1)
