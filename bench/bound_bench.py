#!/usr/bin/env python3
"""Time and memory of the clairvoyant bound (slurm_flex.simulate.bound) on real traces.

    .venv/bin/python bench/bound_bench.py [--shared DIR] [--case KTH-12w --case KTH ...]
                                          [--method highs-ipm] [--window-days 7]

Each case runs in its own process, so the peak memory printed (ru_maxrss) is that case's own.
As earliest starts it uses the submit times (a rough stand-in: the real caller passes the starts
of the simulated Slurm-alone run), latest = earliest + 24 h, the actual NESO carbon intensity and
the Elexon market index price laid over the trace as ``slurmflex simulate`` does, 10 W per
processor and a carbon price of 250 GBP/t. Submit times are not a feasible schedule (jobs queue),
so a window may be infeasible even with 24 h to move; the status line says so.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from bench.simulate_traces import TRACES, gb_2023_signals  # noqa: E402
from slurm_flex.grid.series import SLOT_SECONDS  # noqa: E402
from slurm_flex.simulate import SimConfig, read_trace  # noqa: E402
from slurm_flex.simulate.bound import clairvoyant_bound  # noqa: E402
from slurm_flex.simulate.engine import align_start  # noqa: E402

# case -> (trace, days from its start, None for all of it)
CASES = {
    "KTH-12w": ("KTH", 84.0),
    "KTH": ("KTH", None),
    "LLNL": ("LLNL", None),
    "Curie": ("Curie", None),
}
SLACK_S = 24 * 3600.0
CARBON_PRICE_GBP_PER_TONNE = 250.0  # the daemon's default [policy] carbon price


def run_case(case: str, shared: Path, method: str, window_days: float) -> dict[str, object]:
    data = shared / "data"
    trace_key, days = CASES[case]
    signals = gb_2023_signals(shared)
    trace = read_trace(data / "traces" / TRACES[trace_key])
    if days is not None:
        trace = trace.window(0.0, days)
    start_epoch = align_start(trace, signals, None)
    offset = (start_epoch - signals.start) // SLOT_SECONDS
    cfg = SimConfig()
    earliest = trace.submit_s
    latest = earliest + SLACK_S
    need = int(np.ceil(float((latest + trace.runtime_s).max()) / SLOT_SECONDS)) + 1
    carbon = signals.actual[offset : offset + need]
    price = signals.price[offset : offset + need]
    t0 = time.perf_counter()
    result = clairvoyant_bound(
        earliest,
        latest,
        trace.runtime_s,
        trace.procs,
        trace.procs * cfg.watts_per_proc / 1000.0,
        carbon,
        price,
        capacity_procs=trace.capacity_procs,
        carbon_price_gbp_per_tonne=CARBON_PRICE_GBP_PER_TONNE,
        window_days=window_days,
        method=method,
    )
    seconds = time.perf_counter() - t0
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    return {
        "case": case,
        "jobs": result.n_jobs,
        "days": round(float(trace.submit_s.max()) / 86400, 1),
        "capacity": trace.capacity_procs,
        "windows": result.n_windows,
        "lp_variables": result.n_lp_variables,
        "carbon_percent": round(result.carbon.saving_percent, 2),
        "carbon_no_capacity_percent": round(result.carbon.saving_no_capacity_percent, 2),
        # Before the trace-wide pricing (each window's LP alone, full capacity in every slot).
        "carbon_by_windows_percent": round(
            (result.carbon.baseline - result.carbon.minimum_by_windows) / result.carbon.baseline * 100, 2
        ),
        "cost_percent": round(result.cost.saving_percent, 2),
        "cost_no_capacity_percent": round(result.cost.saving_no_capacity_percent, 2),
        "combined_percent": round(result.combined.saving_percent, 2),
        "seconds": round(seconds, 1),
        "peak_mib": round(peak_mib),
        "status": result.status,
        "max_certificate_gap": result.max_certificate_gap,
    }


HEADER = (
    f"{'case':8s} {'jobs':>7s} {'days':>5s} {'win':>4s} {'LP vars':>9s} {'carbon%':>8s} {'(win)':>7s} {'(nocap)':>8s} "
    f"{'cost%':>7s} {'(nocap)':>8s} {'comb%':>7s} {'s':>7s} {'MiB':>6s}  status"
)


def row(doc: dict[str, object]) -> str:
    return (
        f"{doc['case']!s:8s} {doc['jobs']!s:>7s} {doc['days']!s:>5s} {doc['windows']!s:>4s} "
        f"{doc['lp_variables']!s:>9s} {doc['carbon_percent']!s:>8s} {doc['carbon_by_windows_percent']!s:>7s} "
        f"{doc['carbon_no_capacity_percent']!s:>8s} "
        f"{doc['cost_percent']!s:>7s} {doc['cost_no_capacity_percent']!s:>8s} {doc['combined_percent']!s:>7s} "
        f"{doc['seconds']!s:>7s} {doc['peak_mib']!s:>6s}  {doc['status']}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    ap.add_argument("--case", choices=sorted(CASES), action="append", help="run this case (repeatable)")
    ap.add_argument("--method", default="highs", help="linprog method (highs, highs-ds, highs-ipm)")
    ap.add_argument("--window-days", type=float, default=7.0)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not (args.shared / "data").is_dir():
        print(f"skipped: no shared data at {args.shared / 'data'}")
        return 0
    cases = args.case or ["KTH-12w", "KTH"]
    if args.child:
        # One case, in a process of its own: print its figures as JSON for the parent.
        print(json.dumps(run_case(cases[0], args.shared, args.method, args.window_days)))
        return 0
    print(HEADER, flush=True)
    for case in cases:
        cmd = [sys.executable, __file__, "--child", "--case", case, "--shared", str(args.shared)]
        cmd += ["--method", args.method, "--window-days", str(args.window_days)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            print(f"{case:8s} failed: {out.stderr.strip()[-2000:]}", flush=True)
            continue
        print(row(json.loads(out.stdout.strip().splitlines()[-1])), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
