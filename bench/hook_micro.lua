-- Cost of the slurm-flex hook's own Lua per submission, outside slurmctld (lua5.1).
--   lua5.1 bench/hook_micro.lua job_submit [iterations]
local dir, n = arg[1] or "job_submit", tonumber(arg[2] or "200000")
package.path = dir .. "/?.lua;" .. package.path
slurm = { SUCCESS = 0, ERROR = -1, log_user = function() end, log_info = function() end }
local M = require("slurmflex")
M.configure({ partition_policy = { batch = { default_slack_seconds = 3600 } }, exempt_users = { "ops" } })
local script = "#!/bin/bash\n#SBATCH -J sim\n#SBATCH -N 2\n#SBATCH -t 02:00:00\n#SBATCH --deadline=now+12hours\n"
    .. "#SBATCH --mem=4G\n\nmodule load gcc\nsrun ./simulate --steps 1000\n" .. string.rep("echo line\n", 40)
local parts = { debug = { name = "debug", flag_default = 1 }, batch = { name = "batch", flag_default = 0 } }
local function desc(i)
    return { min_nodes = 2, max_nodes = 4294967294, min_cpus = 8, num_tasks = 4294967294, cpus_per_task = 65534,
             time_limit = 120, begin_time = 0, script = script, user_name = "alice", min_mem_per_node = 4096,
             comment = (i % 3 == 0) and "flex=6h" or nil, environment = { HOME = "/home/alice", PATH = "/usr/bin" },
             tres_per_node = (i % 5 == 0) and "gres:gpu:a100:2" or nil, partition = (i % 2 == 0) and "batch" or nil }
end
-- Building the table is the harness's cost, not the hook's: time it separately.
local t0 = os.clock()
for i = 1, n do local jd = desc(i) end
local build = os.clock() - t0
t0 = os.clock()
for i = 1, n do M.submit(desc(i), parts, 1000, 1795251000) end
local total = os.clock() - t0
print(string.format("slurm-flex hook: %.1f us per submission (%d submissions, Lua 5.1, table building excluded)",
    (total - build) / n * 1e6, n))
