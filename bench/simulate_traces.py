#!/usr/bin/env python3
"""Savings, the clairvoyant bound and deadline misses of slurm-flex on real workload traces.

    .venv/bin/python bench/simulate_traces.py [--shared DIR] [--only KTH] [--objective carbon]
                                              [--jobs 2] [--from-json F ...]

Runs ``slurmflex simulate``'s engine (the daemon's own planning policy, planner.policy, with the
"fast" solver) on the Parallel Workloads Archive traces in ``../shared/data/traces`` against GB
2023 NESO carbon intensity (planned on the forecast, charged at actuals) and Elexon market index
prices, with deadlines counted from when Slurm alone started each job (every deadline one the
machine meets without slurm-flex, so every miss is slurm-flex's), for the 24 h and next-workday
slack rules, at the traced machine size and on a machine twice as big. Each row also gives the
clairvoyant bound (simulate.bound: the LP relaxation of placing every job, at its actual run
time, anywhere from its Slurm-alone start to its latest start, within the machine's capacity,
with perfect knowledge of the actual series) and the share of it captured. Runs go in parallel
processes (``--jobs``); ``--from-json`` formats ``slurmflex simulate --json`` outputs instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from slurm_flex.planner.policy import Policy, with_objective  # noqa: E402
from slurm_flex.simulate import SimConfig, SimSignals, load_signals, read_trace, simulate  # noqa: E402

TRACES = {
    "KTH": "KTH-SP2-1996-2.1-cln.swf.gz",
    "LLNL": "LLNL-Thunder-2007-1.1-cln.swf.gz",
    "Curie": "CEA-Curie-2011-2.1-cln.swf.gz",
}
# (trace, capacity scale, slack rule), deadlines from the Slurm-alone start
RUNS = [
    ("KTH", 1.0, "24h"),
    ("KTH", 2.0, "24h"),
    ("LLNL", 1.0, "24h"),
    ("LLNL", 2.0, "24h"),
    ("Curie", 1.0, "24h"),
    ("Curie", 2.0, "24h"),
    ("KTH", 1.0, "workday"),
    ("KTH", 2.0, "workday"),
    ("LLNL", 1.0, "workday"),
    ("LLNL", 2.0, "workday"),
]
HEADER = (
    f"{'trace':24s} {'slack':8s} {'obj':8s} {'days':>4s} {'util':>5s} {'jobs':>7s} "
    f"{'carbon%':>8s} {'bound%':>7s} {'share':>6s} {'cost%':>7s} {'bound%':>7s} {'share':>6s} "
    f"{'miss base':>9s} {'new':>4s} {'moved':>6s} {'delay h base->sf':>17s} {'time':>6s}"
)


def row(doc: dict[str, Any], scale: float = 1.0, seconds: float | None = None) -> str:
    b, f, s = doc["baseline"], doc["slurm_flex"], doc["savings"]
    bound = doc.get("bound") or {}
    name = doc["trace"].split("-cln")[0].replace("-2.1", "").replace("-1.1", "")
    if scale != 1.0:
        name += f" x{scale:g}"

    def share(kind: str) -> str:
        c = bound.get(kind)
        if not c:
            return f"{'-':>7s} {'-':>6s}"
        return f"{c['bound_percent']:7.2f} {c['captured_percent']:5.0f}%"

    took = f"{seconds:5.0f}s" if seconds is not None else ""
    return (
        f"{name:24s} {doc['slack']:8s} {doc.get('objective', '?'):8s} {doc['days']:4.0f} "
        f"{doc['utilisation']:5.2f} {f['jobs']:7d} {s.get('carbon_kg_saved_percent', 0):8.2f} {share('carbon')} "
        f"{s.get('cost_gbp_saved_percent', 0):7.2f} {share('cost')} {b['deadline_misses']:9d} "
        f"{f['deadline_misses_not_missed_as_submitted']:4d} {f.get('expedited_jobs', 0):6d} "
        f"{b['mean_delay_h']:7.2f} -> {f['mean_delay_h']:6.2f} {took}"
    )


def gb_2023_signals(shared: Path) -> SimSignals:
    """GB 2023: NESO national carbon intensity (forecast and actual) and Elexon market index prices."""
    data = shared / "data"
    return load_signals(
        data / "carbon" / "gb_national_2023_neso_carbon_intensity_api.csv",
        data / "price" / "gb_elexon_imbalance_and_market_index_price_2023-01_2024-05.csv",
    )


def run_one(
    shared: Path, trace_key: str, scale: float, rule: str, objective: str, dump: Path | None = None, days: float = 0
) -> str:
    signals = gb_2023_signals(shared)
    trace = read_trace(shared / "data" / "traces" / TRACES[trace_key])
    if days:
        trace = trace.window(0, days)
    trace = dataclasses.replace(trace, capacity_procs=trace.capacity_procs * scale)
    policy = with_objective(Policy(solver="fast"), objective)
    t0 = time.perf_counter()
    result = simulate(trace, signals, rule, SimConfig(policy=policy, deadline_basis="baseline"))
    if dump is not None:
        # What the bound is computed from, to recompute it alone (bench/bound_bench.py --from-dump).
        dump.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            dump / f"{trace_key}{f'-{days:g}d' if days else ''}-x{scale:g}-{rule}-{objective}.npz",
            earliest=result.baseline.start_s,
            flex_start=result.flex.start_s,
            latest=result.latest_start_s,
            runtime=result.runtime_s,
            procs=result.procs,
            kw=result.kw,
            carbon=result.carbon_actual,
            price=result.price,
            capacity=result.capacity_procs,
        )
        (dump / f"{trace_key}{f'-{days:g}d' if days else ''}-x{scale:g}-{rule}-{objective}.json").write_text(
            json.dumps(result.to_json(), default=str)
        )
    return row(result.to_json(), scale, time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    ap.add_argument("--only", choices=sorted(TRACES), action="append", help="only this trace (repeatable)")
    ap.add_argument("--objective", choices=["carbon", "cost", "combined"], action="append")
    ap.add_argument("--rule", choices=["24h", "workday"], action="append")
    ap.add_argument("--jobs", type=int, default=2, help="parallel simulations")
    ap.add_argument("--dump", type=Path, help="keep each run's result and bound inputs in this folder")
    ap.add_argument("--days", type=float, default=0, help="only the first DAYS of each trace (0: all)")
    ap.add_argument("--scale", type=float, action="append", help="only this capacity scale (repeatable)")
    ap.add_argument("--from-json", nargs="+", type=Path, help="format `slurmflex simulate --json` outputs")
    args = ap.parse_args()
    print(HEADER)
    if args.from_json:
        for path in args.from_json:
            doc = json.loads(path.read_text())
            for result in doc["results"]:
                print(row(result, float(doc.get("capacity_scale", 1.0))))
        return 0
    if not (args.shared / "data").is_dir():
        print(f"skipped: no shared data at {args.shared / 'data'}")
        return 0
    objectives = args.objective or ["carbon"]
    cases = [
        (trace, scale, rule, objective)
        for trace, scale, rule in RUNS
        for objective in objectives
        if (not args.only or trace in args.only)
        and (not args.rule or rule in args.rule)
        and (not args.scale or scale in args.scale)
    ]
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = [pool.submit(run_one, args.shared, *case, args.dump, args.days) for case in cases]
        for future in futures:
            print(future.result(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
