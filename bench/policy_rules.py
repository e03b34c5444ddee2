#!/usr/bin/env python3
"""What each rule of the planning policy costs and buys: the saving and the deadline misses with
load shaping off (the per-job loop alone), with each protective rule dropped in turn (and all of
them), next to the defaults.

    .venv/bin/python bench/policy_rules.py [--shared DIR] [--trace KTH] [--days 42] [--jobs 1]

Runs ``slurmflex simulate``'s engine on the first ``--days`` of a trace, deadlines 24 h from the
Slurm-alone start, carbon objective, at the traced machine size and twice it, and prints one row
per (rule set, load) with the share of the clairvoyant bound captured.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.simulate_traces import TRACES, gb_2023_signals  # noqa: E402
from slurm_flex.planner.policy import Policy, with_objective  # noqa: E402
from slurm_flex.simulate import SimConfig, read_trace, simulate  # noqa: E402

# Each variant: the [policy] values it changes from the defaults.
VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "per-job loop (no shaping)": {"shape_load": False, "defer_to_windows": True},
    "shaping and single windows": {"defer_to_windows": True},
    "shaping, no 6 h exemption": {"shape_exempt_hours": 0.0},
    "no idle-queue rule": {"defer_only_when_queue_idle": False},
    "no minimum saving": {"min_saving_fraction": 0.0},
    "whole slack": {"slack_use_fraction": 1.0},
    "no arrival reserve": {"arrival_reserve": False},
    "no capacity headroom": {"capacity_headroom": 1.0},
    "big jobs deferred too": {"max_deferred_share": 1.0},
    "time limits, whole slots": {"plan_runtime": "limit", "fractional_occupancy": False},
    "no rules": {
        "defer_only_when_queue_idle": False,
        "min_saving_fraction": 0.0,
        "slack_use_fraction": 1.0,
        "arrival_reserve": False,
        "capacity_headroom": 1.0,
        "max_deferred_share": 1.0,
    },
}


def run(shared: Path, trace_key: str, days: float, scale: float, name: str) -> str:
    signals = gb_2023_signals(shared)
    trace = read_trace(shared / "data" / "traces" / TRACES[trace_key]).window(0, days)
    trace = dataclasses.replace(trace, capacity_procs=trace.capacity_procs * scale)
    policy = with_objective(dataclasses.replace(Policy(solver="fast"), **VARIANTS[name]), "carbon")
    t0 = time.perf_counter()
    r = simulate(trace, signals, "24h", SimConfig(policy=policy, deadline_basis="baseline"))
    c = r.captured().get("carbon", {})
    f = r.flex.metrics
    return (
        f"{trace_key} x{scale:<3g} {name:26s} carbon {c.get('achieved_percent', float('nan')):6.2f}% "
        f"of {c.get('bound_percent', float('nan')):6.2f}% = {c.get('captured_percent', float('nan')):4.0f}% "
        f"new misses {f['deadline_misses_not_missed_as_submitted']:3d}  delay {f['mean_delay_h']:5.2f} h "
        f"({time.perf_counter() - t0:.0f} s)"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    ap.add_argument("--trace", choices=sorted(TRACES), default="KTH")
    ap.add_argument("--days", type=float, default=42.0)
    ap.add_argument("--jobs", type=int, default=1)
    args = ap.parse_args()
    if not (args.shared / "data").is_dir():
        print(f"skipped: no shared data at {args.shared / 'data'}")
        return 0
    cases = [(scale, name) for scale in (1.0, 2.0) for name in VARIANTS]
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = [pool.submit(run, args.shared, args.trace, args.days, *case) for case in cases]
        for future in futures:
            print(future.result(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
