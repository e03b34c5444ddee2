#!/usr/bin/env python3
"""Run every benchmark and keep its figures in bench/results/<name>.txt.

    .venv/bin/python bench/run_all.py [--quick] [name ...]

planner (about 1 min; 3 min without --quick), daemon_cycle (10,000 jobs on a 32-node local
cluster, about 3 min), hook_throughput (2,000 submissions per configuration, about 10 min),
power_readers (well under a minute), power_ingest (1,000 nodes' pushes, about 1 min),
simulate (three real traces against GB 2023 grid data, about 45 min; needs ../shared),
ledger (100,000 records appended and verified, about a minute), simulate_sites (KTH on two
sites, GB/FR and GB/DE 2020: space vs time vs both, about 15 min; needs ../shared).
Each prints as it goes; the header line records when and on what the figures were taken.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
BENCHES = {
    "planner": ["planner_bench.py"],
    "daemon_cycle": ["daemon_cycle.py"],
    "hook_throughput": ["hook_throughput.py"],
    "power_readers": ["power_readers.py"],
    "power_ingest": ["power_ingest.py"],
    "simulate": ["simulate_traces.py"],
    "ledger": ["ledger_bench.py"],
    "battery": ["battery_bench.py"],
    "simulate_sites": ["simulate_sites.py"],
}


def header() -> str:
    slurm = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", "slurm-wlm"], capture_output=True, text=True, check=False
    ).stdout
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return f"# {when}, {os.cpu_count()} cores, {platform.platform()}, slurm-wlm {slurm or 'not installed'}\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="planner without the 100,000-job case")
    ap.add_argument("names", nargs="*", choices=[*BENCHES, []], help="which benchmarks (default: all)")
    args = ap.parse_args()
    RESULTS.mkdir(exist_ok=True)
    failed = []
    for name in args.names or list(BENCHES):
        argv = [sys.executable, str(BENCH / BENCHES[name][0])]
        if name == "planner" and args.quick:
            argv.append("--quick")
        print(f"== {name}", flush=True)
        out = RESULTS / f"{name}.txt"
        with out.open("w") as sink:
            sink.write(header())
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            assert proc.stdout is not None
            for line in proc.stdout:
                sys.stdout.write(line)
                sink.write(line)
            if proc.wait() != 0:
                failed.append(name)
        print(f"   -> {out}", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
