#!/usr/bin/env python3
"""Daemon cycle cost with a large queue, on a real local cluster.

Submits N flexible jobs (default 10,000: --begin in 2 h, --deadline in 12 h, so they stay
pending), then runs daemon cycles and prints, per cycle: wall time, Slurm commands issued,
jobs updated, and slurmctld's own RPC counts and times from sdiag.

    .venv/bin/python bench/daemon_cycle.py [--jobs 10000] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from slurm_flex.config import Config  # noqa: E402
from slurm_flex.grid.series import floor_slot  # noqa: E402
from slurm_flex.job_submit.install import install_hook  # noqa: E402

DIR = Path(os.environ.get("BENCH_CLUSTER_DIR", "/var/tmp/slurm-flex-bench"))
PORT_BASE = os.environ.get("BENCH_PORT_BASE", "36817")
RPC = re.compile(r"^\s*(REQUEST_\w+)\s+\(\s*\d+\)\s+count:(\d+)\s+ave_time:(\d+)\s+total_time:(\d+)", re.M)


def devcluster(*args: str) -> None:
    # Enough nodes that a good share of the queue fits into the clean windows (so the update
    # path is exercised); the slurmd processes sit idle.
    env = dict(
        os.environ,
        DEVCLUSTER_DIR=str(DIR),
        DEVCLUSTER_PORT_BASE=PORT_BASE,
        DEVCLUSTER_CLUSTER="sfxbench",
        DEVCLUSTER_NODES=os.environ.get("BENCH_NODES", "32"),
    )
    subprocess.run([str(REPO / "scripts" / "devcluster"), *args], env=env, check=True, stdout=subprocess.DEVNULL)


def slurm_env() -> dict[str, str]:
    return dict(os.environ, SLURM_CONF=str(DIR / "etc" / "slurm.conf"), TZ="UTC")


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), env=slurm_env(), capture_output=True, text=True, check=True)


def submit(n: int, workdir: str) -> None:
    def one(i: int) -> None:
        run(
            "sbatch",
            "--parsable",
            "-J",
            f"f{i}",
            "-t",
            "30",
            "--begin",
            "now+2hours",
            "--deadline",
            f"now+{12 + i % 24}hours",
            "--chdir",
            workdir,
            "--wrap",
            "true",
        )

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, range(n)))


def rpc_stats() -> dict[str, tuple[int, int]]:
    out = run("sdiag").stdout
    return {m.group(1): (int(m.group(2)), int(m.group(4))) for m in RPC.finditer(out)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--cycles", type=int, default=3)
    ap.add_argument("--keep", action="store_true", help="leave the bench cluster running")
    args = ap.parse_args()
    # A fresh controller: finished jobs linger in squeue --json for MinJobAge and would skew it.
    devcluster("purge")
    devcluster("up")
    install_hook(Config.model_validate({"power": {"cpus_per_node": 2}}), DIR / "etc", force=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        t0 = time.perf_counter()
        submit(args.jobs, str(tmpdir))
        print(f"submitted {args.jobs} pending flexible jobs in {time.perf_counter() - t0:.0f} s", flush=True)
        slot0 = floor_slot(time.time())
        # Clean half-hours every two hours (40-60 g/kWh), 300 g/kWh otherwise.
        carbon = [40 + 10 * (i % 3) if i % 4 == 0 else 300 for i in range(96)]
        stamps = [time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(slot0 + i * 1800)) for i in range(96)]
        rows = ["from,carbon_g_per_kwh"] + [f"{t},{c}" for t, c in zip(stamps, carbon, strict=True)]
        (tmpdir / "forecast.csv").write_text("\n".join(rows) + "\n")
        (tmpdir / "c.toml").write_text(
            f'[daemon]\nstate_dir = "{tmpdir}/state"\n[slurm]\nslurm_conf = "{DIR}/etc/slurm.conf"\n'
            f'[forecast]\npath = "{tmpdir}/forecast.csv"\n[power]\ncpus_per_node = 2\n'
            "[policy]\nmin_saving_fraction = 0.0\n"
        )
        squeue_t0 = time.perf_counter()
        size = len(run("squeue", "--json").stdout)
        print(f"squeue --json: {size / 1e6:.1f} MB in {time.perf_counter() - squeue_t0:.2f} s", flush=True)
        for cycle in range(args.cycles):
            run("sdiag", "--reset")
            proc = subprocess.run(
                [sys.executable, "-m", "slurm_flex.cli", "--config", str(tmpdir / "c.toml"), "daemon", "--once"],
                env=slurm_env(),
                capture_output=True,
                text=True,
                check=True,
            )
            event = next(json.loads(line) for line in proc.stderr.splitlines() if '"event": "cycle"' in line)
            rpcs = rpc_stats()
            interesting = {
                k: v
                for k, v in rpcs.items()
                if k
                in (
                    "REQUEST_JOB_INFO",
                    "REQUEST_NODE_INFO",
                    "REQUEST_PARTITION_INFO",
                    "REQUEST_UPDATE_JOB",
                    "REQUEST_JOB_INFO_SINGLE",
                    "REQUEST_BUILD_INFO",
                )
            }
            rpc_text = ", ".join(f"{k} x{c} ({t / 1e3:.0f} ms)" for k, (c, t) in sorted(interesting.items()))
            print(
                f"cycle {cycle + 1}: {event['seconds']:.2f} s, {event['commands']} Slurm commands, "
                f"{event['updates']} jobs updated, {event['deferred']} deferred of {event['flexible']} flexible; "
                f"slurmctld RPCs {rpc_text}",
                flush=True,
            )
    run("scancel", "--user", os.environ.get("USER", "root"))
    # Slurm 22.05's squeue --json ignores --states: finished jobs stay in it for MinJobAge.
    t0 = time.perf_counter()
    doc = json.loads(run("squeue", "--json").stdout)
    print(
        f"after scancel: squeue --json still lists {len(doc['jobs'])} finished jobs (MinJobAge), "
        f"read in {time.perf_counter() - t0:.2f} s",
        flush=True,
    )
    if not args.keep:
        devcluster("down")


if __name__ == "__main__":
    main()
