#!/usr/bin/env python3
"""Planner quality and speed on instances built from real GB carbon and price data.

    .venv/bin/python bench/planner_bench.py [--quick]

Carbon: NESO national forecasts for 2023, prices: Elexon market index (../shared/data); without
../shared the bundled 72 h series is tiled. Jobs: durations, sizes and slack drawn like a batch
queue (log-normal run times, mostly small jobs); capacity set so that the per-job best-window
rule overloads it (capacity binds). Each size runs in its own process so peak memory is its own.

Prints, per size: method, seconds, objective, lower bound and gap, peak RSS; and for the quality
instances the best-window rule's overload (the thundering herd) for comparison.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from slurm_flex.planner.instance import Instance  # noqa: E402
from slurm_flex.planner.solve import best_window, evaluate, overload, solve  # noqa: E402

SHARED = REPO.parent / "shared" / "data"


def signals(n_slots: int, offset: int) -> tuple[np.ndarray, np.ndarray, str]:
    carbon_csv = SHARED / "carbon" / "gb_national_2023_neso_carbon_intensity_api.csv"
    price_csv = SHARED / "price" / "gb_elexon_imbalance_and_market_index_price_2023-01_2024-05.csv"
    if carbon_csv.exists() and price_csv.exists():
        import pandas as pd

        c = pd.read_csv(carbon_csv, usecols=["from", "forecast"])
        p = pd.read_csv(price_csv, usecols=["period_start_utc", "market_index_price_gbp_per_mwh"])
        c["t"] = pd.to_datetime(c["from"], utc=True)
        p["t"] = pd.to_datetime(p["period_start_utc"], utc=True)
        df = c.merge(p, on="t", how="left").sort_values("t")
        carbon = df["forecast"].to_numpy(dtype=float)
        price = df["market_index_price_gbp_per_mwh"].to_numpy(dtype=float)
        source = "NESO 2023 forecasts + Elexon MID (../shared)"
    else:
        from slurm_flex.config import bundled_forecast
        from slurm_flex.grid.filesource import load_series_file

        s = load_series_file(bundled_forecast())
        carbon, price = s.carbon_array(), s.price_array()
        source = "bundled 72 h series, tiled"
    reps = math.ceil((offset + n_slots) / carbon.size) + 1
    carbon, price = np.tile(carbon, reps), np.tile(price, reps)
    seg_c = carbon[offset : offset + n_slots]
    seg_p = price[offset : offset + n_slots]
    # Interpolate the few missing values so every slot is plannable.
    for arr in (seg_c, seg_p):
        bad = ~np.isfinite(arr)
        if bad.any():
            arr[bad] = np.interp(np.flatnonzero(bad), np.flatnonzero(~bad), arr[~bad])
    return seg_c, seg_p, source


def make_instance(n_jobs: int, n_slots: int, seed: int, utilisation: float = 0.75) -> tuple[Instance, str]:
    rng = np.random.default_rng(seed)
    carbon, price, source = signals(n_slots, offset=int(rng.integers(0, 17000 - n_slots)))
    duration = np.clip(np.round(rng.lognormal(math.log(4), 0.8, n_jobs)), 1, max(1, n_slots // 4)).astype(np.int64)
    nodes = np.clip(np.round(rng.lognormal(0.3, 0.9, n_jobs)), 1, 64).astype(float)
    power_kw = nodes * rng.uniform(0.25, 0.6, n_jobs)
    release = rng.integers(0, max(1, n_slots // 2), n_jobs)
    release = np.minimum(release, n_slots - duration)
    slack = np.round(rng.uniform(0.5, 1.0, n_jobs) * (n_slots - release - duration)).astype(np.int64)
    deadline = release + duration + slack
    demand = float((nodes * duration).sum())
    capacity = np.full(n_slots, math.ceil(demand / (n_slots * 0.6) / utilisation))
    inst = Instance(
        slot_minutes=30,
        start=0,
        carbon_price_gbp_per_tonne=250.0,
        carbon=carbon,
        price=price,
        capacity_nodes=capacity,
        power_cap_kw=np.full(n_slots, np.inf),
        job_ids=tuple(str(i) for i in range(n_jobs)),
        nodes=nodes,
        power_kw=power_kw,
        duration=duration,
        release=release.astype(np.int64),
        deadline=deadline.astype(np.int64),
    )
    return inst, source


def run_case(n_jobs: int, n_slots: int, method: str, seed: int, time_limit: float) -> dict[str, object]:
    inst, source = make_instance(n_jobs, n_slots, seed)
    t0 = time.perf_counter()
    sol = solve(inst, method=method, time_limit=time_limit)  # type: ignore[arg-type]
    seconds = time.perf_counter() - t0
    herd = best_window(inst)
    gap = None
    if sol.lower_bound_gbp:
        gap = (sol.objective_gbp - sol.lower_bound_gbp) / abs(sol.lower_bound_gbp)
    starts = np.array([sol.starts[j] for j in inst.job_ids])
    return {
        "jobs": n_jobs,
        "slots": n_slots,
        "method": sol.method,
        "seconds": round(seconds, 3),
        "objective_gbp": round(sol.objective_gbp, 2),
        "lower_bound_gbp": sol.lower_bound_gbp and round(sol.lower_bound_gbp, 2),
        "gap": gap,
        "late": len(sol.late),
        "overload_nodes": overload(inst, starts),
        "best_window_overload_nodes": overload(inst, herd),
        "best_window_objective_gbp": round(evaluate(inst, herd)[3], 2),
        "capacity_nodes": float(inst.capacity_nodes[0]),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "signals": source,
    }


CASES = [
    # (jobs, slots, method, time limit) -- quality on binding capacity, then the speed targets
    (1000, 96, "auto", 60.0),
    (1000, 96, "lagrange", 20.0),
    (1000, 96, "greedy", 20.0),
    (1000, 192, "lagrange", 20.0),
    (10_000, 96, "auto", 20.0),
    (100_000, 336, "auto", 25.0),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="skip the 100,000-job case")
    args = ap.parse_args()
    if args.case is not None:
        n, t, m, limit = CASES[args.case]
        print(json.dumps(run_case(n, t, m, args.seed, limit)))
        return
    for i, (n, t, m, _) in enumerate(CASES):
        if args.quick and n >= 100_000:
            continue
        out = subprocess.run(
            [sys.executable, __file__, "--case", str(i), "--seed", str(args.seed)],
            capture_output=True,
            text=True,
            check=True,
        )
        r = json.loads(out.stdout)
        gap = "   n/a" if r["gap"] is None else f"{r['gap'] * 100:5.2f}%"
        print(
            f"{n:>7} jobs x {t:>3} slots  {m:8s} -> {r['method']:18s} {r['seconds']:7.2f} s  "
            f"objective {r['objective_gbp']:>10.2f}  bound {r['lower_bound_gbp']!s:>10}  gap {gap}  "
            f"late {r['late']}  peak RSS {r['peak_rss_mib']:7.1f} MiB  "
            f"(best-window rule: overload {r['best_window_overload_nodes']:.0f} of {r['capacity_nodes']:.0f} nodes)",
            flush=True,
        )
    print(f"signals: {r['signals']}")


if __name__ == "__main__":
    main()
