#!/usr/bin/env python3
"""Submission throughput with and without the slurm-flex submit hook, on a real local cluster.

Configurations of the same private cluster (scripts/devcluster, its own state dir and ports):
  none            no JobSubmitPlugins, no CliFilterPlugins
  lua-empty       JobSubmitPlugins=lua with a job_submit.lua that does nothing (Slurm's own cost
                  of the Lua plugin, which most sites already pay)
  hook            the slurm-flex submit hook (job_submit.lua + module + policy)
  hook+cli_filter the hook and slurm-flex's cli_filter.lua (what a 22.05 site installs to let a
                  command-line --deadline reach the hook; it runs in sbatch, on the client)

For each, N `sbatch --hold` submissions (half with --deadline, so the hook's full path runs) from
W parallel submitters. Prints jobs/s seen by the clients and slurmctld's own average time per
REQUEST_SUBMIT_BATCH_JOB from sdiag (the hook runs inside that RPC, under slurmctld's locks).

    .venv/bin/python bench/hook_throughput.py [--jobs 2000] [--workers 4] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from slurm_flex.config import Config  # noqa: E402
from slurm_flex.job_submit.install import install_hook, mark_changed  # noqa: E402

DIR = Path(os.environ.get("BENCH_CLUSTER_DIR", "/var/tmp/slurm-flex-bench"))
PORT_BASE = os.environ.get("BENCH_PORT_BASE", "36817")
PASSTHROUGH = {
    "job_submit.lua": "function slurm_job_submit(j, p, u) return slurm.SUCCESS end\n"
    "function slurm_job_modify(j, r, p, u) return slurm.SUCCESS end\nreturn slurm.SUCCESS\n",
    "cli_filter.lua": "function slurm_cli_setup_defaults(o, e) return slurm.SUCCESS end\n"
    "function slurm_cli_pre_submit(o, i) return slurm.SUCCESS end\n"
    "function slurm_cli_post_submit(i, j, s) return slurm.SUCCESS end\n",
}
_SDIAG = re.compile(r"REQUEST_SUBMIT_BATCH_JOB\s+\(\s*\d+\)\s+count:(\d+)\s+ave_time:(\d+)")


def devcluster(*args: str, plugins: str) -> None:
    env = dict(
        os.environ,
        DEVCLUSTER_DIR=str(DIR),
        DEVCLUSTER_PORT_BASE=PORT_BASE,
        DEVCLUSTER_CLUSTER="sfxbench",
        DEVCLUSTER_PLUGINS=plugins,
    )
    subprocess.run([str(REPO / "scripts" / "devcluster"), *args], env=env, check=True, stdout=subprocess.DEVNULL)


def slurm_env() -> dict[str, str]:
    return dict(os.environ, SLURM_CONF=str(DIR / "etc" / "slurm.conf"))


def sbatch(i: int, workdir: str) -> float:
    args = ["sbatch", "--hold", "--parsable", "-t", "10", "-J", f"b{i}", "--chdir", workdir, "--wrap", "true"]
    if i % 2:
        args[1:1] = ["--deadline", "now+6hours"]
    t0 = time.perf_counter()
    subprocess.run(args, env=slurm_env(), check=True, capture_output=True)
    return time.perf_counter() - t0


def fresh_cluster(plugins: str) -> None:
    """Restart the daemons with an empty controller state, so every run starts alike."""
    devcluster("down", plugins=plugins)
    for state in (DIR / "ctld").glob("*"):
        if state.is_file():
            state.unlink()
    devcluster("up", plugins=plugins)


def slurmctld_cpu_seconds() -> float:
    """User+system CPU slurmctld has used so far (all its threads), from /proc."""
    pid = (DIR / "run" / "slurmctld.pid").read_text().strip()
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


CONFIGS = {"none": "none", "lua-empty": "job_submit", "hook": "job_submit", "hook+cli_filter": "lua"}


def configure(name: str) -> None:
    fresh_cluster(CONFIGS[name])
    etc = DIR / "etc"
    if name == "lua-empty":
        for file, text in PASSTHROUGH.items():
            previous = (etc / file).stat().st_mtime if (etc / file).exists() else None
            (etc / file).write_text(text)
            mark_changed(etc / file, previous)
    elif name.startswith("hook"):
        install_hook(Config.model_validate({"power": {"cpus_per_node": 2}}), etc, force=True)


def run(name: str, jobs: int, workers: int) -> dict[str, float]:
    configure(name)
    subprocess.run(["sdiag", "--reset"], env=slurm_env(), check=True, capture_output=True)
    cpu0 = slurmctld_cpu_seconds()
    with tempfile.TemporaryDirectory() as work, ThreadPoolExecutor(workers) as pool:
        t0 = time.perf_counter()
        latencies = list(pool.map(lambda i: sbatch(i, work), range(jobs)))
        wall = time.perf_counter() - t0
    ctld_cpu_us = (slurmctld_cpu_seconds() - cpu0) / jobs * 1e6
    sdiag = subprocess.run(["sdiag"], env=slurm_env(), capture_output=True, text=True, check=True).stdout
    m = _SDIAG.search(sdiag)
    count, ave_us = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    if name.startswith("hook"):
        probe = subprocess.run(
            ["squeue", "-h", "-o", "%i"], env=slurm_env(), capture_output=True, text=True, check=True
        ).stdout.split()
        shown = subprocess.run(
            ["scontrol", "-o", "show", "job", probe[0]], env=slurm_env(), capture_output=True, text=True, check=True
        ).stdout
        assert "slurmflex:v1" in shown, "the hook did not tag the jobs: benchmark invalid"
    return {
        "wall_s": wall,
        "jobs_per_s": jobs / wall,
        "p50_ms": statistics.median(latencies) * 1000,
        "rpc_count": count,
        "rpc_ave_us": ave_us,
        "ctld_cpu_us": ctld_cpu_us,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3, help="alternate the configurations this many times")
    ap.add_argument("--keep", action="store_true", help="leave the bench cluster running")
    args = ap.parse_args()
    results: dict[str, list[dict[str, float]]] = {name: [] for name in CONFIGS}
    try:
        for r in range(args.rounds):
            for name in results:
                res = run(name, args.jobs, args.workers)
                results[name].append(res)
                print(
                    f"round {r + 1} {name:15s} {res['jobs_per_s']:7.1f} jobs/s  client p50 {res['p50_ms']:6.1f} ms"
                    f"  slurmctld: RPC ave {res['rpc_ave_us']:5d} us, CPU {res['ctld_cpu_us']:5.0f} us/job"
                    f" (n={res['rpc_count']})",
                    flush=True,
                )
    finally:
        if not args.keep:
            devcluster("down", plugins="lua")
    best = {name: statistics.median(r["jobs_per_s"] for r in runs) for name, runs in results.items()}
    rpc = {name: round(statistics.median(r["rpc_ave_us"] for r in runs)) for name, runs in results.items()}
    cpu = {name: statistics.median(r["ctld_cpu_us"] for r in runs) for name, runs in results.items()}
    print(f"\n{args.jobs} submissions x {args.rounds} rounds, {args.workers} parallel submitters (median of rounds):")
    for name in results:
        print(f"  {name:15s} {best[name]:7.1f} jobs/s   slurmctld: RPC {rpc[name]:5d} us, CPU {cpu[name]:5.0f} us/job")

    def cost(a: str, b: str) -> str:
        return (
            f"{(1 - best[a] / best[b]) * 100:+.1f}% throughput; slurmctld CPU {cpu[a] - cpu[b]:+.0f} us/job "
            f"({(cpu[a] / cpu[b] - 1) * 100:+.1f}%), RPC time {rpc[a] - rpc[b]:+d} us"
        )

    print(f"slurm-flex hook vs an empty job_submit.lua: {cost('hook', 'lua-empty')}")
    print(f"slurm-flex hook vs no plugin at all:        {cost('hook', 'none')}")
    print(f"  (Slurm's Lua plugin alone:                {cost('lua-empty', 'none')})")
    print(f"adding the cli_filter (client side):        {cost('hook+cli_filter', 'hook')}")


if __name__ == "__main__":
    main()
