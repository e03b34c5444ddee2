-- Unit tests of job_submit/slurmflex.lua and job_submit.lua (run by tests/test_hook_lua.py).

local NOW = 1795251000

local function fresh(policy)
    package.loaded["slurmflex"] = nil
    local M = require("slurmflex")
    M.configure(policy or {})
    return M
end

local FLEX_SCRIPT = "#!/bin/bash\n#SBATCH -t 60\n#SBATCH --deadline=now+6hours\nsrun hostname\n"
local PARTS = { debug = { name = "debug", flag_default = 1 }, gpu = { name = "gpu", flag_default = 0 } }

-- plain jobs ---------------------------------------------------------------------------------

test("plain job gets a tag and nothing else", function()
    local M = fresh()
    local jd = job_desc()
    eq(M.submit(jd, PARTS, 1000, NOW), slurm.SUCCESS, "accepted")
    eq(tag_field(jd.admin_comment, "flex"), "no", "flex")
    eq(tag_field(jd.admin_comment, "why"), "none", "why")
    eq(tag_field(jd.admin_comment, "grace"), "0", "grace")
    eq(tag_field(jd.admin_comment, "begin"), "0", "begin")
    eq(jd.begin_time, 0, "begin_time untouched")
    eq(#logs.user, 0, "no user message")
end)

test("all fields nil still works", function()
    local M = fresh()
    local jd = { script = "#!/bin/sh\n" }
    M.submit(jd, nil, 0, NOW)
    eq(tag_field(jd.admin_comment, "power_w"), "125", "1 node, 1 cpu with defaults: 120 + 330/64")
end)

-- power --------------------------------------------------------------------------------------

test("power from nodes, cpus, memory and gpus", function()
    local M = fresh({ power = { node_idle_watts = 100, node_max_watts = 300, cpus_per_node = 10, gpu_watts = 250,
                                memory_watts_per_gb = 1.0 } })
    local w = M.estimate_power(job_desc({ min_nodes = 2, min_cpus = 4, tres_per_node = "gres:gpu:2",
                                          min_mem_per_node = 2048 }))
    eq(w, 2 * 100 + 4 * 20 + 2 * 2 * 1.0 + 2 * 2 * 250, "watts")
    eq(M.estimate_power(job_desc({ num_tasks = 8, cpus_per_task = 2 })), 100 + 10 * 20, "tasks capped at node cpus")
    eq(M.estimate_power(job_desc({ min_cpus = 4, min_mem_per_cpu = 512 })), 100 + 4 * 20 + 2, "memory per cpu")
    eq(M.estimate_power(job_desc({ tres_per_job = "gres:gpu:3" })), 100 + 20 + 3 * 250, "gpus per job")
    eq(M.estimate_power(job_desc({ num_tasks = 2, tres_per_task = "gres:gpu:1" })), 100 + 40 + 2 * 250, "per task")
end)

test("node types by partition and GPU models", function()
    local M = fresh({ power = {
        node_types = { fat = { node_idle_watts = 300, node_max_watts = 1000, cpus_per_node = 70 } },
        partition_node_types = { gpu = "fat" },
        gpu_model_watts = { a100 = 400 },
    } })
    eq(M.estimate_power(job_desc({ tres_per_node = "gres/gpu:a100:2" }), "gpu"), 300 + 10 + 2 * 400, "fat + a100")
    eq(M.estimate_power(job_desc({ tres_per_node = "gres/gpu:v100:1" }), "gpu"), 300 + 10 + 300, "unknown model")
    local by_model, total = M.gpus("gres/gpu:a100:4,gres/shard:2,gres:gpu:1")
    eq(by_model.a100, 4, "a100")
    eq(by_model.default, 1, "untyped")
    eq(total, 5, "total")
end)

-- deadlines ----------------------------------------------------------------------------------

test("script deadline makes the job flexible with a grace period", function()
    local M = fresh({ grace_seconds = 120 })
    local jd = job_desc({ time_limit = 60, script = FLEX_SCRIPT })
    M.submit(jd, PARTS, 1000, NOW)
    eq(jd.begin_time, NOW + 120, "begin_time")
    eq(tag_field(jd.admin_comment, "flex"), "deadline", "flex")
    eq(tag_field(jd.admin_comment, "why"), "", "why")
    eq(tag_field(jd.admin_comment, "deadline"), tostring(NOW + 6 * 3600), "deadline")
    eq(tag_field(jd.admin_comment, "grace"), tostring(NOW + 120), "grace")
    contains(logs.user[1], "job is flexible until its deadline", "user message")
    contains(logs.user[1], "latest start", "latest start shown")
end)

test("command-line deadline passed on by the cli_filter", function()
    local M = fresh()
    local jd = job_desc({ time_limit = 30, environment = { SLURMFLEX_DEADLINE = "2026-11-21T20:00:00" } })
    M.submit(jd, PARTS, 1000, NOW)
    eq(tag_field(jd.admin_comment, "flex"), "deadline", "flex")
    eq(tag_field(jd.admin_comment, "deadline"), tostring(os.time({ year = 2026, month = 11, day = 21, hour = 20 })), "deadline")
    local unset = job_desc({ environment = { SLURMFLEX_DEADLINE = "Unknown" } })
    M.submit(unset, PARTS, 1000, NOW)
    eq(tag_field(unset.admin_comment, "flex"), "no", "Unknown means no deadline")
end)

test("deadline lines after the first command are ignored, like sbatch does", function()
    local M = fresh()
    eq(M.script_option("#!/bin/sh\necho hi\n#SBATCH --deadline=now+1hour\n", "deadline"), nil, "after command")
    eq(M.script_option("#!/bin/sh\n\n# comment\n#SBATCH --deadline 2026-12-01T10:00\n", "deadline"), "2026-12-01T10:00", "space form")
    eq(M.script_option(nil, "deadline"), nil, "no script")
end)

test("too tight a deadline gets no grace", function()
    local M = fresh({ grace_seconds = 120, safety_margin_seconds = 900 })
    local jd = job_desc({ time_limit = 60, script = "#!/bin/sh\n#SBATCH --deadline=now+70minutes\n" })
    M.submit(jd, PARTS, 1000, NOW)
    eq(jd.begin_time, 0, "begin untouched")
    eq(tag_field(jd.admin_comment, "flex"), "deadline", "still flexible")
end)

test("a deadline before the job could finish is invalid: accepted as inflexible by default", function()
    local M = fresh()
    local jd = job_desc({ time_limit = 120, script = "#!/bin/sh\n#SBATCH --deadline=now+60minutes\n" })
    eq(M.submit(jd, PARTS, 1000, NOW), slurm.SUCCESS, "accepted")
    eq(tag_field(jd.admin_comment, "flex"), "no", "not flexible")
    eq(tag_field(jd.admin_comment, "why"), "invalid", "why")
    contains(logs.user[1], "earlier than the earliest start plus the time limit", "told why")
    contains(logs.user[1], "will not be moved", "told the outcome")
end)

test("a site can reject invalid requests instead", function()
    local M = fresh({ invalid_request = "reject" })
    local jd = job_desc({ time_limit = 120, script = "#!/bin/sh\n#SBATCH --deadline=now+60minutes\n" })
    eq(M.submit(jd, PARTS, 1000, NOW), slurm.ERROR, "rejected")
    eq(jd.admin_comment, nil, "untouched")
    contains(logs.user[1], "slurm-flex: the deadline", "told why")
end)

test("a later --begin of the user's own is kept", function()
    local M = fresh()
    local jd = job_desc({ begin_time = NOW + 3600, script = "#!/bin/sh\n#SBATCH --deadline=now+1day\n" })
    M.submit(jd, PARTS, 1000, NOW)
    eq(jd.begin_time, NOW + 3600, "begin")
    eq(tag_field(jd.admin_comment, "begin"), tostring(NOW + 3600), "tag begin")
    eq(tag_field(jd.admin_comment, "grace"), "0", "no grace needed")
end)

test("newer Slurm's job_desc.deadline is used directly", function()
    local M = fresh()
    local jd = job_desc({ deadline = NOW + 7200, time_limit = 10 })
    M.submit(jd, PARTS, 1000, NOW)
    eq(tag_field(jd.admin_comment, "deadline"), tostring(NOW + 7200), "deadline")
    eq(jd.begin_time, NOW + 120, "grace")
end)

test("unparseable deadline text is flexible with unknown deadline", function()
    local M = fresh()
    local jd = job_desc({ script = "#!/bin/sh\n#SBATCH --deadline=teatime\n" })
    M.submit(jd, PARTS, 1000, NOW)
    eq(tag_field(jd.admin_comment, "flex"), "deadline", "flex")
    eq(tag_field(jd.admin_comment, "deadline"), "0", "unknown")
end)

test("a deadline beyond the site's maximum slack is capped", function()
    local M = fresh({ max_slack_seconds = 12 * 3600 })
    local jd = job_desc({ time_limit = 60, script = "#!/bin/sh\n#SBATCH --deadline=now+3days\n" })
    M.submit(jd, PARTS, 1000, NOW)
    eq(tag_field(jd.admin_comment, "slack"), tostring(12 * 3600), "slack capped")
    contains(logs.user[2], "at most 12h", "told about the cap")
end)

-- keywords and policy ------------------------------------------------------------------------

test("flex=no opts out even with a deadline", function()
    local M = fresh()
    local jd = job_desc({ comment = "run asap flex=no", time_limit = 60, script = FLEX_SCRIPT })
    M.submit(jd, PARTS, 1000, NOW)
    eq(tag_field(jd.admin_comment, "flex"), "no", "flex")
    eq(tag_field(jd.admin_comment, "why"), "optout", "why")
    eq(jd.begin_time, 0, "no grace")
    contains(logs.user[1], "flex=no", "acknowledged")
end)

test("flex=<duration> opts in without a deadline", function()
    local M = fresh()
    local jd = job_desc({ comment = "flex=1d12h", time_limit = 60 })
    M.submit(jd, PARTS, 1000, NOW)
    eq(tag_field(jd.admin_comment, "flex"), "keyword", "flex")
    eq(tag_field(jd.admin_comment, "slack"), tostring(36 * 3600), "slack")
    eq(jd.begin_time, NOW + 120, "grace")
    contains(logs.user[1], "may wait up to 36h", "told")
end)

test("keyword forms", function()
    local M = fresh()
    eq(M.keyword("flex=24h"), 86400, "hours")
    eq(M.keyword("x,flex=90m"), 5400, "after a comma")
    eq(M.keyword("FLEX=no"), nil, "case-sensitive key")
    eq(M.keyword("flex=OFF"), "no", "off")
    eq(M.keyword("reflex=3h"), nil, "not a word boundary")
    local kind, raw = M.keyword("flex=banana")
    eq(kind, "invalid", "garbage")
    eq(raw, "banana", "raw value")
    eq(M.keyword(nil), nil, "no comment")
    eq(M.parse_duration("1w"), 604800, "week")
    eq(M.parse_duration("3600"), 3600, "bare seconds")
    eq(M.parse_duration("12x"), nil, "bad unit")
end)

test("garbage keyword: clear message, accepted as inflexible", function()
    local M = fresh()
    local jd = job_desc({ comment = "flex=soonish" })
    eq(M.submit(jd, PARTS, 1000, NOW), slurm.SUCCESS, "accepted")
    eq(tag_field(jd.admin_comment, "why"), "invalid", "why")
    contains(logs.user[1], "cannot read flex=soonish", "told")
end)

test("a partition flexible by default, with a per-QOS override and a cap", function()
    local M = fresh({
        partition_policy = { batch = { default_slack_seconds = 12 * 3600, max_slack_seconds = 24 * 3600 } },
        qos_policy = { urgent = { default_slack_seconds = 0 } },
    })
    local jd = job_desc({ partition = "batch", time_limit = 30 })
    M.submit(jd, PARTS, 1000, NOW)
    eq(tag_field(jd.admin_comment, "flex"), "policy", "flexible by default")
    eq(tag_field(jd.admin_comment, "slack"), tostring(12 * 3600), "default slack")
    contains(logs.user[1], "flex=no to opt out", "tells how to opt out")
    local urgent = job_desc({ partition = "batch", qos = "urgent" })
    M.submit(urgent, PARTS, 1000, NOW)
    eq(tag_field(urgent.admin_comment, "flex"), "no", "QOS override")
    local greedy = job_desc({ partition = "batch", comment = "flex=1w" })
    M.submit(greedy, PARTS, 1000, NOW)
    eq(tag_field(greedy.admin_comment, "slack"), tostring(24 * 3600), "capped")
    local other = job_desc({ partition = "debug" })
    M.submit(other, PARTS, 1000, NOW)
    eq(tag_field(other.admin_comment, "flex"), "no", "other partitions unchanged")
end)

test("the default partition comes from part_list", function()
    local M = fresh({ partition_policy = { debug = { default_slack_seconds = 3600 } } })
    local jd = job_desc()
    M.submit(jd, PARTS, 1000, NOW)
    eq(tag_field(jd.admin_comment, "flex"), "policy", "default partition's policy")
end)

test("exempt users and accounts", function()
    local M = fresh({ exempt_users = { "alice" }, exempt_accounts = { "ops" } })
    local jd = job_desc({ script = FLEX_SCRIPT, time_limit = 60 })
    M.submit(jd, PARTS, 1000, NOW)
    eq(tag_field(jd.admin_comment, "why"), "exempt", "user")
    local ops = job_desc({ user_name = "bob", account = "ops", script = FLEX_SCRIPT })
    M.submit(ops, PARTS, 1000, NOW)
    eq(tag_field(ops.admin_comment, "why"), "exempt", "account")
    eq(ops.begin_time, 0, "no grace")
end)

test("managed and excluded partitions", function()
    local M = fresh({ partitions = { "batch" } })
    local jd = job_desc({ partition = "interactive", script = FLEX_SCRIPT })
    M.submit(jd, PARTS, 1000, NOW)
    eq(jd.admin_comment, nil, "no tag")
    eq(jd.begin_time, 0, "no grace")
    local jd2 = job_desc({ partition = "batch" })
    M.submit(jd2, PARTS, 1000, NOW)
    truthy(jd2.admin_comment, "tagged in batch")
    local N = fresh({ exclude_partitions = { "gpu" } })
    local jd3 = job_desc({ partition = "gpu,debug", script = FLEX_SCRIPT })
    N.submit(jd3, PARTS, 1000, NOW)
    eq(jd3.admin_comment, nil, "excluded (first of several partitions)")
end)

-- job kinds ----------------------------------------------------------------------------------

test("interactive jobs (no script) are never deferred", function()
    local M = fresh()
    local jd = job_desc({ script = nil, comment = "flex=12h" })
    jd.script = nil
    M.submit(jd, PARTS, 1000, NOW)
    eq(tag_field(jd.admin_comment, "flex"), "no", "flex")
    eq(tag_field(jd.admin_comment, "why"), "interactive", "why")
    eq(jd.begin_time, 0, "no grace")
end)

test("heterogeneous job components are tagged but not moved", function()
    local M = fresh()
    local first = job_desc({ het_job_offset = 0, script = FLEX_SCRIPT })
    M.submit(first, PARTS, 1000, NOW)
    eq(tag_field(first.admin_comment, "why"), "hetjob", "first component")
    contains(logs.user[1], "heterogeneous", "told once")
    local second = job_desc({ het_job_offset = 1 })
    second.script = nil
    M.submit(second, PARTS, 1000, NOW)
    eq(tag_field(second.admin_comment, "why"), "hetjob", "not mistaken for interactive")
    eq(#logs.user, 1, "no second message")
end)

test("array jobs are tagged once for all tasks", function()
    local M = fresh()
    local jd = job_desc({ array_inx = "1-100%10", script = FLEX_SCRIPT, time_limit = 60 })
    M.submit(jd, PARTS, 1000, NOW)
    eq(tag_field(jd.admin_comment, "flex"), "deadline", "flexible")
    eq(tag_field(jd.admin_comment, "power_w"), "125", "per task")
    eq(jd.array_inx, "1-100%10", "array untouched")
end)

-- updates ------------------------------------------------------------------------------------

test("modify: flex=no in a new comment opts a tagged job out", function()
    local M = fresh()
    local rec = { admin_comment = "site=x slurmflex:v1;power_w=9;begin=0;grace=5;deadline=7;slack=0;flex=deadline;why=" }
    local desc = { comment = "flex=no" }
    M.modify(desc, rec, PARTS, 0)
    eq(desc.admin_comment, "site=x slurmflex:v1;power_w=9;begin=0;grace=5;deadline=7;slack=0;flex=no;why=optout", "opted out")
end)

test("modify: flex=<duration> opts an untouched job in", function()
    local M = fresh({ max_slack_seconds = 7200 })
    local rec = { admin_comment = "slurmflex:v1;power_w=9;begin=0;grace=0;deadline=0;slack=0;flex=no;why=none" }
    local desc = { comment = "flex=5h" }
    M.modify(desc, rec, PARTS, 0)
    eq(desc.admin_comment, "slurmflex:v1;power_w=9;begin=0;grace=0;deadline=0;slack=7200;flex=keyword;why=", "opted in, capped")
    local exempt = { admin_comment = "slurmflex:v1;power_w=9;begin=0;grace=0;deadline=0;slack=0;flex=no;why=exempt" }
    local d2 = { comment = "flex=5h" }
    M.modify(d2, exempt, PARTS, 0)
    eq(d2.admin_comment, nil, "exempt stays exempt")
end)

test("modify passes other updates through untouched", function()
    local M = fresh()
    local desc = { begin_time = NOW + 7200 }
    eq(M.modify(desc, { admin_comment = "slurmflex:v1;flex=deadline" }, PARTS, 0), nil, "no change")
    eq(desc.admin_comment, nil, "untouched")
    eq(M.modify({ comment = "flex=no" }, { admin_comment = nil }, PARTS, 0), nil, "untagged job untouched")
end)

-- safety -------------------------------------------------------------------------------------

test("time forms", function()
    local M = fresh()
    eq(M.parse_time("now+90minutes", NOW), NOW + 5400, "minutes")
    eq(M.parse_time("now+2days", NOW), NOW + 172800, "days")
    eq(M.parse_time("now+30", NOW), NOW + 30, "bare seconds")
    eq(M.parse_time("now+3fortnights", NOW), nil, "unknown unit")
    eq(M.parse_time("2026-11-21T12:00:00", NOW), os.time({ year = 2026, month = 11, day = 21, hour = 12, min = 0, sec = 0 }), "iso")
    eq(M.parse_time("2026-11-21", NOW), os.time({ year = 2026, month = 11, day = 21, hour = 0 }), "date")
    truthy(M.parse_time("23:59", NOW) > NOW, "clock time is in the future")
    eq(M.parse_time("soon", NOW), nil, "garbage")
end)

test("site admin_comment text is kept and an old token replaced", function()
    local M = fresh()
    eq(M.merge_admin_comment("project=x slurmflex:v1;power_w=1", "slurmflex:v1;power_w=2"), "project=x slurmflex:v1;power_w=2", "replace")
    eq(M.merge_admin_comment(nil, "T"), "T", "nil")
    local jd = job_desc({ admin_comment = "audit=ok" })
    M.submit(jd, PARTS, 1000, NOW)
    contains(jd.admin_comment, "audit=ok slurmflex:v1;", "kept")
end)

test("standalone job_submit.lua accepts the job unchanged when the module fails", function()
    package.loaded["slurmflex"] = {
        configure = function() end,
        submit = function(jd) error("boom") end,
        modify = function() error("boom") end,
    }
    dofile(arg[1] .. "/job_submit.lua")
    local jd = job_desc()
    eq(slurm_job_submit(jd, {}, 1000), slurm.SUCCESS, "accepted")
    eq(jd.admin_comment, nil, "unchanged")
    eq(slurm_job_modify(jd, {}, {}, 0), slurm.SUCCESS, "modify accepted")
    contains(logs.error[1], "hook error, job accepted unchanged", "logged")
end)

test("a failure part-way through deciding leaves job_desc untouched", function()
    local M = fresh()
    local jd = job_desc({ script = FLEX_SCRIPT })
    M.estimate_power = function() error("model exploded") end
    local ok = pcall(M.submit, jd, PARTS, 1000, NOW)
    eq(ok, false, "raised")
    eq(jd.begin_time, 0, "begin untouched")
    eq(jd.admin_comment, nil, "comment untouched")
end)

test("a failure while writing job_desc restores what was written", function()
    local M = fresh()
    local store = { begin_time = 0, script = FLEX_SCRIPT, time_limit = 60, min_cpus = 1 }
    local jd = setmetatable({}, {
        __index = store,
        __newindex = function(t, k, v)
            if k == "begin_time" and v ~= 0 then error("read-only field") end
            store[k] = v
        end,
    })
    local ok = pcall(M.submit, jd, PARTS, 1000, NOW)
    eq(ok, false, "raised")
    eq(store.admin_comment, nil, "admin_comment restored")
    eq(store.begin_time, 0, "begin untouched")
end)

test("standalone job_submit.lua passes a site's rejection of invalid requests through", function()
    package.loaded["slurmflex"] = nil
    dofile(arg[1] .. "/job_submit.lua")
    package.loaded["slurmflex"].configure({ invalid_request = "reject" })
    local jd = job_desc({ comment = "flex=whenever" })
    eq(slurm_job_submit(jd, PARTS, 1000), slurm.ERROR, "rejected by policy")
end)

test("standalone job_submit.lua loads the real module and policy", function()
    package.loaded["slurmflex"] = nil
    dofile(arg[1] .. "/job_submit.lua")
    local jd = job_desc()
    eq(slurm_job_submit(jd, {}, 1000), slurm.SUCCESS, "accepted")
    truthy(tag_field(jd.admin_comment, "power_w"), "tagged")
end)
