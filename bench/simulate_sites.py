#!/usr/bin/env python3
"""Moving work in space, in time, or both: slurm-flex's simulator on two sites, real data.

    .venv/bin/python bench/simulate_sites.py [--shared DIR] [--trace KTH] [--days 42]
                                             [--pair GB/FR --pair GB/DE] [--split windows --split hash]

Runs :func:`slurm_flex.simulate.multisite.simulate_sites` (module docstring: the three policies
and their bounds) on a Parallel Workloads Archive trace split across two sites, each with its own
2020 "Let's Wait Awhile" ENTSO-E carbon series (one series per country, no forecasts: planned
with perfect foresight), deadlines by the 24 h rule from each job's Slurm-alone start at home.

Splits: ``windows`` = one trace per site, each the traced machine with the traced load: the first
site gets days 0..D of the trace, the second days D..2D, both laid over the same dates;
``hash`` = the first D days split by a seeded hash of the job index, each site the traced
machine (so each carries about half the traced load).

Date alignment: the trace's first window starts at the first time on or after 2020-01-01 00:00
UTC with the trace's own weekday and local time of day (simulate.engine.align_start from
2020-01-01); every site uses that same UTC instant, so the sites see the same hours of 2020 on
their own grids.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from slurm_flex.planner.policy import Policy, with_objective  # noqa: E402
from slurm_flex.simulate import SimConfig, load_signals, read_trace  # noqa: E402
from slurm_flex.simulate.engine import align_start  # noqa: E402
from slurm_flex.simulate.multisite import Site, format_table, simulate_sites, split_trace  # noqa: E402

TRACES = {
    "KTH": "KTH-SP2-1996-2.1-cln.swf.gz",
    "LLNL": "LLNL-Thunder-2007-1.1-cln.swf.gz",
}
CARBON = {
    "GB": "gb_2020_lwa_entsoe_ci.csv",
    "FR": "fr_2020_lwa_entsoe_ci.csv",
    "DE": "de_2020_lwa_entsoe_ci.csv",
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    ap.add_argument("--trace", choices=sorted(TRACES), action="append")
    ap.add_argument("--days", type=float, default=42.0)
    ap.add_argument("--pair", action="append", help="e.g. GB/FR (repeatable; default GB/FR and GB/DE)")
    ap.add_argument("--split", choices=["windows", "hash"], action="append")
    ap.add_argument("--rule", default="24h")
    ap.add_argument("--move-threshold", type=float, default=0.0)
    args = ap.parse_args()
    data = args.shared / "data"
    if not data.is_dir():
        print(f"skipped: no shared data at {data}")
        return 0
    policy = with_objective(Policy(solver="fast"), "carbon")
    cfg = SimConfig(policy=policy, deadline_basis="baseline")
    signals = {name: load_signals(data / "carbon" / f) for name, f in CARBON.items()}
    for trace_key in args.trace or ["KTH"]:
        full = read_trace(data / "traces" / TRACES[trace_key])
        for split in args.split or ["windows", "hash"]:
            for pair in args.pair or ["GB/FR", "GB/DE"]:
                names = pair.split("/")
                sites = [Site(n, signals[n]) for n in names]
                if split == "windows":
                    traces = split_trace(full, len(sites), "windows", days=args.days)
                else:
                    traces = split_trace(full.window(0, args.days), len(sites), "hash", seed=0)
                y2020 = dataclasses.replace(sites[0].signals, start=int(datetime(2020, 1, 1, tzinfo=UTC).timestamp()))
                start = datetime.fromtimestamp(align_start(traces[0], y2020, None), UTC)
                t0 = time.perf_counter()
                result = simulate_sites(
                    traces,
                    sites,
                    args.rule,
                    cfg,
                    start,
                    move_threshold=args.move_threshold,
                    policies=("time", "space", "both", "space-oracle", "both-2stage"),
                    bound=True,
                )
                took = time.perf_counter() - t0
                doc = result.to_json()
                print(
                    f"## {trace_key} split {split}, {pair}, slack {args.rule} from the Slurm-alone start, "
                    f"{doc['days']} days from {doc['start']}, {result.n_jobs} jobs ({result.n_flexible} flexible)"
                )
                for name, t, cap, util in zip(
                    result.sites, result.traces, result.capacities, result.utilisation, strict=True
                ):
                    print(f"#   {name}: {t}, {cap:g} processors, utilisation {util:.2f}")
                b = result.baseline_metrics
                print(
                    f"#   Slurm alone at home: {result.baseline_kg:.1f} kg, mean delay {b['mean_delay_h']:.2f} h, "
                    f"{b['deadline_misses']} misses; {took:.0f} s"
                )
                for line in format_table(result):
                    print(line)
                print(flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
