#!/usr/bin/env python3
"""Savings and deadline misses of slurm-flex on real workload traces and real GB grid data.

    .venv/bin/python bench/simulate_traces.py [--shared DIR] [--only KTH] [--from-json F ...]

Runs ``slurmflex simulate``'s engine on the Parallel Workloads Archive traces in
``../shared/data/traces`` against GB 2023 NESO carbon intensity (planned on the forecast,
charged at actuals) and Elexon market index prices, for the 24 h and next-workday slack rules,
with deadlines counted from submission and from when Slurm alone started each job. Prints one
row per run. About 45 minutes on 2 cores for everything; ``--from-json`` formats the output of
``slurmflex simulate --json`` runs instead of simulating.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from slurm_flex.simulate import SimConfig, load_signals, read_trace, simulate  # noqa: E402

TRACES = {
    "KTH": "KTH-SP2-1996-2.1-cln.swf.gz",
    "LLNL": "LLNL-Thunder-2007-1.1-cln.swf.gz",
    "Curie": "CEA-Curie-2011-2.1-cln.swf.gz",
}
# (trace, capacity scale, deadline basis, slack rules)
RUNS = [
    ("KTH", 1.0, "submit", ("24h", "workday")),
    ("KTH", 1.0, "baseline", ("24h", "workday")),
    ("KTH", 2.0, "baseline", ("24h", "workday")),
    ("LLNL", 1.0, "submit", ("24h", "workday")),
    ("LLNL", 1.0, "baseline", ("24h", "workday")),
    ("Curie", 1.0, "baseline", ("24h",)),
]
HEADER = (
    f"{'trace':28s} {'slack':8s} {'from':8s} {'days':>5s} {'util':>5s} {'jobs':>7s} {'carbon%':>8s} {'cost%':>7s} "
    f"{'miss base':>9s} {'miss sf':>8s} {'new':>5s} {'moved':>6s} {'delay h base->sf':>17s}"
)


def row(doc: dict[str, Any], scale: float = 1.0) -> str:
    b, f, s = doc["baseline"], doc["slurm_flex"], doc["savings"]
    name = doc["trace"].split("-cln")[0].replace("-2.1", "").replace("-1.1", "")
    if scale != 1.0:
        name += f" capacity x{scale:g}"
    return (
        f"{name:28s} {doc['slack']:8s} {doc.get('deadline_from', 'submit'):8s} {doc['days']:5.0f} "
        f"{doc['utilisation']:5.2f} {f['jobs']:7d} {s.get('carbon_kg_saved_percent', 0):8.2f} "
        f"{s.get('cost_gbp_saved_percent', 0):7.2f} {b['deadline_misses']:9d} {f['deadline_misses']:8d} "
        f"{f['deadline_misses_not_missed_as_submitted']:5d} {f.get('expedited_jobs', 0):6d} "
        f"{b['mean_delay_h']:7.2f} -> {f['mean_delay_h']:6.2f}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    ap.add_argument("--only", choices=sorted(TRACES), action="append", help="only this trace (repeatable)")
    ap.add_argument("--from-json", nargs="+", type=Path, help="format `slurmflex simulate --json` outputs")
    args = ap.parse_args()
    print(HEADER)
    if args.from_json:
        for path in args.from_json:
            doc = json.loads(path.read_text())
            for result in doc["results"]:
                print(row(result, float(doc.get("capacity_scale", 1.0))))
        return 0
    data = args.shared / "data"
    if not data.is_dir():
        print(f"skipped: no shared data at {data}")
        return 0
    signals = load_signals(
        data / "carbon" / "gb_national_2023_neso_carbon_intensity_api.csv",
        data / "price" / "gb_elexon_imbalance_and_market_index_price_2023-01_2024-05.csv",
    )
    for trace_key, scale, basis, rules in RUNS:
        if args.only and trace_key not in args.only:
            continue
        trace = read_trace(data / "traces" / TRACES[trace_key])
        trace = dataclasses.replace(trace, capacity_procs=trace.capacity_procs * scale)
        for rule in rules:
            t0 = time.perf_counter()
            result = simulate(trace, signals, rule, SimConfig(deadline_basis=basis))
            print(row(result.to_json(), scale), f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
