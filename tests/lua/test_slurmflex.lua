-- Unit tests of job_submit/slurmflex.lua and job_submit.lua (run by tests/test_hook_lua.py).

local NOW = 1795251000

local function fresh(policy)
    package.loaded["slurmflex"] = nil
    local M = require("slurmflex")
    M.configure(policy or {})
    return M
end

test("plain job gets a tag and nothing else", function()
    local M = fresh()
    local jd = job_desc()
    local changes = M.submit(jd, {}, 1000, NOW)
    eq(tag_field(jd.admin_comment, "flex"), "no", "flex")
    eq(tag_field(jd.admin_comment, "grace"), "0", "grace")
    eq(tag_field(jd.admin_comment, "begin"), "0", "begin")
    eq(jd.begin_time, 0, "begin_time untouched")
    eq(changes.begin_time, nil, "no begin change")
    eq(#logs.user, 0, "no user message")
end)

test("all fields nil still works", function()
    local M = fresh()
    local jd = {}
    M.submit(jd, nil, 0, NOW)
    eq(tag_field(jd.admin_comment, "power_w"), "125", "1 node, 1 cpu with defaults: 120 + 330/64")
end)

test("power from nodes, cpus and gpus", function()
    local M = fresh({ power = { node_idle_watts = 100, node_max_watts = 300, cpus_per_node = 10, gpu_watts = 250 } })
    local w = M.estimate_power(job_desc({ min_nodes = 2, min_cpus = 4, tres_per_node = "gres:gpu:2" }))
    eq(w, 2 * 100 + 4 * 20 + 2 * 2 * 250, "watts")
    eq(M.estimate_power(job_desc({ num_tasks = 8, cpus_per_task = 2 })), 100 + 10 * 20, "tasks capped at node cpus")
    eq(M.gpus_per_node("gres/gpu:a100:4,gres/shard:2"), 4, "typed gpus")
    eq(M.gpus_per_node("gres/gpu=1"), 1, "tres form")
    eq(M.gpus_per_node(nil), 0, "nil")
end)

test("script deadline makes the job flexible with a grace period", function()
    local M = fresh({ grace_seconds = 120 })
    local jd = job_desc({ time_limit = 60, script = "#!/bin/bash\n#SBATCH -t 60\n#SBATCH --deadline=now+6hours\nsrun hostname\n" })
    M.submit(jd, {}, 1000, NOW)
    eq(jd.begin_time, NOW + 120, "begin_time")
    eq(tag_field(jd.admin_comment, "flex"), "deadline", "flex")
    eq(tag_field(jd.admin_comment, "deadline"), tostring(NOW + 6 * 3600), "deadline")
    eq(tag_field(jd.admin_comment, "grace"), tostring(NOW + 120), "grace")
    contains(logs.user[1], "flexible", "user message")
end)

test("deadline lines after the first command are ignored, like sbatch does", function()
    local M = fresh()
    eq(M.script_deadline("#!/bin/sh\necho hi\n#SBATCH --deadline=now+1hour\n"), nil, "after command")
    eq(M.script_deadline("#!/bin/sh\n\n# comment\n#SBATCH --deadline 2026-12-01T10:00\n"), "2026-12-01T10:00", "space form")
    eq(M.script_deadline(nil), nil, "no script")
end)

test("too tight a deadline gets no grace", function()
    local M = fresh({ grace_seconds = 120, safety_margin_seconds = 900 })
    local jd = job_desc({ time_limit = 60, script = "#!/bin/sh\n#SBATCH --deadline=now+70minutes\n" })
    M.submit(jd, {}, 1000, NOW)
    eq(jd.begin_time, 0, "begin untouched")
    eq(tag_field(jd.admin_comment, "flex"), "deadline", "still flexible")
end)

test("a later --begin of the user's own is kept", function()
    local M = fresh()
    local jd = job_desc({ begin_time = NOW + 3600, script = "#!/bin/sh\n#SBATCH --deadline=now+1day\n" })
    M.submit(jd, {}, 1000, NOW)
    eq(jd.begin_time, NOW + 3600, "begin")
    eq(tag_field(jd.admin_comment, "begin"), tostring(NOW + 3600), "tag begin")
    eq(tag_field(jd.admin_comment, "grace"), "0", "no grace needed")
end)

test("newer Slurm's job_desc.deadline is used directly", function()
    local M = fresh()
    local jd = job_desc({ deadline = NOW + 7200, time_limit = 10 })
    M.submit(jd, {}, 1000, NOW)
    eq(tag_field(jd.admin_comment, "deadline"), tostring(NOW + 7200), "deadline")
    eq(jd.begin_time, NOW + 120, "grace")
end)

test("unparseable deadline text is flexible with unknown deadline", function()
    local M = fresh()
    local jd = job_desc({ script = "#!/bin/sh\n#SBATCH --deadline=teatime\n" })
    M.submit(jd, {}, 1000, NOW)
    eq(tag_field(jd.admin_comment, "flex"), "deadline", "flex")
    eq(tag_field(jd.admin_comment, "deadline"), "0", "unknown")
end)

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
    M.submit(jd, {}, 1000, NOW)
    contains(jd.admin_comment, "audit=ok slurmflex:v1;", "kept")
end)

test("partitions outside the managed set are untouched", function()
    local M = fresh({ partitions = { "batch" } })
    local jd = job_desc({ partition = "interactive", script = "#!/bin/sh\n#SBATCH --deadline=now+1day\n" })
    M.submit(jd, {}, 1000, NOW)
    eq(jd.admin_comment, nil, "no tag")
    eq(jd.begin_time, 0, "no grace")
    local jd2 = job_desc({ partition = "batch" })
    M.submit(jd2, {}, 1000, NOW)
    truthy(jd2.admin_comment, "tagged in batch")
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
    local jd = job_desc({ script = "#!/bin/sh\n#SBATCH --deadline=now+1day\n" })
    M.estimate_power = function() error("model exploded") end
    local ok = pcall(M.submit, jd, {}, 1000, NOW)
    eq(ok, false, "raised")
    eq(jd.begin_time, 0, "begin untouched")
    eq(jd.admin_comment, nil, "comment untouched")
end)

test("standalone job_submit.lua loads the real module and policy", function()
    package.loaded["slurmflex"] = nil
    dofile(arg[1] .. "/job_submit.lua")
    local jd = job_desc()
    eq(slurm_job_submit(jd, {}, 1000), slurm.SUCCESS, "accepted")
    truthy(tag_field(jd.admin_comment, "power_w"), "tagged")
end)

test("modify passes updates through", function()
    local M = fresh()
    eq(M.modify(job_desc(), {}, {}, 0), nil, "no change")
end)
