"""Tight planning instances from real data, feasible by construction.

Slots carry real GB carbon intensity (NESO national forecasts, 2023) and prices (Elexon market
index), half-hourly. Jobs are drawn from a real workload trace (KTH SP2, LLNL Thunder or CEA
Curie, Parallel Workloads Archive): their real node counts (processors over cores per node)
and run times (rounded up to slots). Capacity is set so that the jobs fill the horizon to the
asked utilisation, and a reference schedule is packed first-fit within it; every job's window
then contains its reference start, so a plan meeting every deadline within capacity (and the
power cap, when asked) exists: any job a planner calls late on these instances is a false
``late``, and any slot over capacity is a real violation.

    from bench.tight_instances import tight_instance
    inst, info = tight_instance("LLNL", n_jobs=1000, n_slots=96, utilisation=0.7, seed=1)
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from slurm_flex.planner.instance import Instance

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"
CARBON_CSV = SHARED / "carbon" / "gb_national_2023_neso_carbon_intensity_api.csv"
PRICE_CSV = SHARED / "price" / "gb_elexon_imbalance_and_market_index_price_2023-01_2024-05.csv"

# trace -> (file, cores per node, kW per node at full load): node counts are the trace's
# processors over its cores per node; power per node is a typical figure for the system's era.
TRACES: dict[str, tuple[str, int, float]] = {
    "KTH": ("KTH-SP2-1996-2.1-cln.swf.gz", 1, 0.15),
    "LLNL": ("LLNL-Thunder-2007-1.1-cln.swf.gz", 4, 0.35),
    "Curie": ("CEA-Curie-2011-2.1-cln.swf.gz", 16, 0.40),
}

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class TightInfo:
    trace: str
    utilisation: float  # node-slots of the jobs over capacity x slots
    capacity_nodes: float
    power_cap_kw: float  # inf when no power cap
    reference: IntArray  # a start per job meeting every deadline within capacity (the witness)


def _cache_dir() -> Path:
    d = Path(tempfile.gettempdir()) / "slurmflex-bench-cache"
    d.mkdir(exist_ok=True)
    return d


def grid_signals() -> tuple[FloatArray, FloatArray]:
    """Half-hourly carbon (g/kWh) and price (GBP/MWh) for 2023, gaps interpolated."""
    cached = _cache_dir() / "signals.npz"
    if cached.exists():
        with np.load(cached) as z:
            return np.asarray(z["carbon"]), np.asarray(z["price"])
    import pandas as pd

    c = pd.read_csv(CARBON_CSV, usecols=["from", "forecast"])
    p = pd.read_csv(PRICE_CSV, usecols=["period_start_utc", "market_index_price_gbp_per_mwh"])
    c["t"] = pd.to_datetime(c["from"], utc=True)
    p["t"] = pd.to_datetime(p["period_start_utc"], utc=True)
    df = c.merge(p, on="t", how="left").sort_values("t")
    carbon = df["forecast"].to_numpy(dtype=float, copy=True)
    price = df["market_index_price_gbp_per_mwh"].to_numpy(dtype=float, copy=True)
    for arr in (carbon, price):
        bad = ~np.isfinite(arr)
        if bad.any():
            arr[bad] = np.interp(np.flatnonzero(bad), np.flatnonzero(~bad), arr[~bad])
    np.savez(cached, carbon=carbon, price=price)
    return carbon, price


def trace_jobs(trace: str) -> tuple[FloatArray, FloatArray]:
    """(nodes, run time in seconds) of every job of ``trace``."""
    name, cores, _ = TRACES[trace]
    cached = _cache_dir() / f"{trace}.npz"
    if cached.exists():
        with np.load(cached) as z:
            return np.asarray(z["nodes"]), np.asarray(z["runtime"])
    from slurm_flex.simulate.traces import read_swf

    t = read_swf(SHARED / "traces" / name)
    nodes = np.ceil(t.procs / cores)
    np.savez(cached, nodes=nodes, runtime=t.runtime_s)
    return nodes, np.asarray(t.runtime_s, dtype=np.float64)


def _pack(nodes: FloatArray, duration: IntArray, target: IntArray, capacity: float, n_slots: int) -> IntArray:
    """First-fit reference starts (biggest jobs first, each nearest its target); -1: no room."""
    load = np.zeros(n_slots)
    starts = np.full(nodes.size, -1, dtype=np.int64)
    for j in np.argsort(-(nodes * duration), kind="stable"):
        d, n = int(duration[j]), nodes[j]
        n_pos = n_slots - d + 1
        peak = np.lib.stride_tricks.sliding_window_view(load, d).max(axis=1)[:n_pos]
        ok = np.flatnonzero(peak + n <= capacity + 1e-9)
        if ok.size:
            s = int(ok[np.argmin(np.abs(ok - target[j]))])
            starts[j] = s
            load[s : s + d] += n
    return starts


def tight_instance(
    trace: str,
    n_jobs: int,
    n_slots: int,
    utilisation: float,
    seed: int,
    *,
    power_cap: bool = False,
    carbon_price_gbp_per_tonne: float = 250.0,
) -> tuple[Instance, TightInfo]:
    """``n_jobs`` jobs of ``trace`` over ``n_slots`` half-hours at ``utilisation``, with a
    reference plan that meets every deadline within capacity (and the power cap)."""
    rng = np.random.default_rng([seed, n_jobs, n_slots, int(utilisation * 1000), list(TRACES).index(trace)])
    all_nodes, all_runtime = trace_jobs(trace)
    all_dur = np.ceil(all_runtime / 1800).astype(np.int64)
    # Jobs that fit a quarter of the horizon: longer ones leave no room to move at all.
    usable = np.flatnonzero((all_dur >= 1) & (all_dur <= max(1, n_slots // 4)))
    pick = rng.choice(usable, size=n_jobs, replace=usable.size < n_jobs)
    # Capacity follows from the jobs' demand; jobs wider than a quarter of it (a few very wide
    # ones on Curie) are drawn again, so that the utilisation is the one asked for.
    for _ in range(20):
        capacity = math.ceil(float((all_nodes[pick] * all_dur[pick]).sum()) / (n_slots * utilisation))
        wide = all_nodes[pick] > capacity / 4
        if not wide.any():
            break
        narrow = usable[all_nodes[usable] <= capacity / 4]
        if narrow.size == 0:  # a handful of jobs: capacity is set by the widest anyway
            break
        pick[wide] = rng.choice(narrow, size=int(wide.sum()))
    nodes = all_nodes[pick].astype(np.float64)
    duration = all_dur[pick]
    demand = float((nodes * duration).sum())
    capacity = float(max(nodes.max(), math.ceil(demand / (n_slots * utilisation))))
    target = rng.integers(0, n_slots - duration + 1)
    ref = _pack(nodes, duration, target, capacity, n_slots)
    # Jobs the packing could not place are replaced by small ones drawn again until they fit;
    # this keeps the job count and the utilisation close to what was asked.
    small = usable[all_nodes[usable] * all_dur[usable] <= np.median(all_nodes[usable] * all_dur[usable])]
    load = np.zeros(n_slots)
    for j in np.flatnonzero(ref >= 0):
        load[ref[j] : ref[j] + duration[j]] += nodes[j]
    for j in np.flatnonzero(ref < 0):
        for _ in range(1000):
            k = int(rng.choice(small))
            d, n = int(all_dur[k]), float(all_nodes[k])
            peak = np.lib.stride_tricks.sliding_window_view(load, d).max(axis=1)
            ok = np.flatnonzero(peak + n <= capacity + 1e-9)
            if ok.size:
                s = int(rng.choice(ok))
                nodes[j], duration[j], ref[j] = n, d, s
                load[s : s + d] += n
                break
        else:
            raise RuntimeError("could not pack the reference schedule")
    # Windows around the reference start: releases up to a third of the horizon earlier,
    # deadlines from none to half the horizon later; a tenth of the jobs are rigid.
    back = rng.integers(0, n_slots // 3 + 1, n_jobs)
    ahead = rng.integers(0, n_slots // 2 + 1, n_jobs)
    rigid = rng.random(n_jobs) < 0.1
    back[rigid] = 0
    ahead[rigid] = 0
    release = np.maximum(0, ref - back)
    deadline = np.minimum(n_slots, ref + duration + ahead)
    power_kw = nodes * TRACES[trace][2] * rng.uniform(0.6, 1.0, n_jobs)
    pcap = math.inf
    if power_cap:
        ref_power = np.zeros(n_slots)
        for j in range(n_jobs):
            ref_power[ref[j] : ref[j] + duration[j]] += power_kw[j]
        pcap = float(ref_power.max())
    carbon, price = grid_signals()
    offset = int(rng.integers(0, carbon.size - n_slots))
    inst = Instance(
        slot_minutes=30,
        start=0,
        carbon_price_gbp_per_tonne=carbon_price_gbp_per_tonne,
        carbon=carbon[offset : offset + n_slots].copy(),
        price=price[offset : offset + n_slots].copy(),
        capacity_nodes=np.full(n_slots, capacity),
        power_cap_kw=np.full(n_slots, pcap),
        job_ids=tuple(str(i) for i in range(n_jobs)),
        nodes=nodes,
        power_kw=power_kw,
        duration=duration.astype(np.int64),
        release=release.astype(np.int64),
        deadline=deadline.astype(np.int64),
    )
    used = float((nodes * duration).sum()) / (capacity * n_slots)
    return inst, TightInfo(trace, used, capacity, pcap, ref)
