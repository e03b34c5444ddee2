"""Capacity-aware greedy solver: earliest-deadline first, each job takes its cheapest window
that still fits the remaining node capacity and power cap.

Unlike the per-job "best window" rule, later jobs see the capacity earlier jobs took, so jobs
sharing one green window spread out instead of stampeding into it. A job that cannot meet its
deadline within capacity starts at its release slot and is reported late.
"""

from __future__ import annotations

import time

import numpy as np

from slurm_flex.planner.instance import FloatArray, Instance, IntArray, Solution, window_costs


def _window_min(values: FloatArray, width: int) -> FloatArray:
    """min(values[s:s+width]) for every s with s+width <= len(values)."""
    view = np.lib.stride_tricks.sliding_window_view(values, width)
    return np.asarray(view.min(axis=1), dtype=np.float64)


def evaluate(inst: Instance, starts: IntArray) -> tuple[float, float, float, float]:
    """(energy kWh, carbon kg, cost GBP, objective GBP) of a full assignment of start slots."""
    price = np.nan_to_num(inst.price, nan=0.0)
    carbon = np.nan_to_num(inst.carbon, nan=0.0)
    cum_c = np.concatenate(([0.0], np.cumsum(carbon)))
    cum_p = np.concatenate(([0.0], np.cumsum(price)))
    ends = starts + inst.duration
    kwh_per_slot = inst.power_kw * inst.slot_hours
    energy = float((kwh_per_slot * inst.duration).sum())
    carbon_kg = float((kwh_per_slot * (cum_c[ends] - cum_c[starts])).sum() / 1000.0)
    cost = float((kwh_per_slot * (cum_p[ends] - cum_p[starts])).sum() / 1000.0)
    objective = cost + carbon_kg / 1000.0 * inst.carbon_price_gbp_per_tonne
    return energy, carbon_kg, cost, objective


def unconstrained_bound(inst: Instance) -> float:
    """Sum of each job's cheapest window ignoring capacity: a valid lower bound (GBP)."""
    w = inst.weights()
    total = 0.0
    for j in range(inst.n_jobs):
        latest = max(int(inst.latest_start[j]), int(inst.release[j]))
        costs = window_costs(inst, w, j, np.arange(int(inst.release[j]), latest + 1))
        finite = costs[np.isfinite(costs)]
        if finite.size == 0:
            return float("nan")
        total += float(finite.min())
    return total


def solve_greedy(inst: Instance, min_saving_fraction: float = 0.0) -> Solution:
    """Plan every job; ``min_saving_fraction`` keeps a job at its release slot unless a later
    window saves at least that fraction of its cost there (avoids deferring for crumbs)."""
    t0 = time.perf_counter()
    w = inst.weights()
    free_nodes = inst.capacity_nodes.astype(np.float64).copy()
    free_kw = inst.power_cap_kw.astype(np.float64).copy()
    starts = inst.release.copy()
    late: list[str] = []
    order = np.lexsort((-inst.nodes, inst.latest_start))
    for j in order:
        d = int(inst.duration[j])
        rel = int(inst.release[j])
        latest = int(inst.latest_start[j])
        if latest < rel:
            late.append(inst.job_ids[j])
            chosen = rel
        else:
            candidates = np.arange(rel, latest + 1)
            costs = window_costs(inst, w, j, candidates)
            fits = (_window_min(free_nodes, d)[candidates] >= inst.nodes[j] - 1e-9) & (
                _window_min(free_kw, d)[candidates] >= inst.power_kw[j] - 1e-9
            )
            if not fits.any():
                late.append(inst.job_ids[j])
                chosen = rel
            else:
                feasible_costs = np.where(fits, costs, np.inf)
                best = int(np.argmin(feasible_costs))  # argmin returns the earliest of ties
                if not np.isfinite(feasible_costs[best]):
                    best = int(np.argmax(fits))  # no priced window: earliest that fits
                elif (
                    fits[0]
                    and np.isfinite(costs[0])
                    and costs[0] - feasible_costs[best] < min_saving_fraction * costs[0]
                ):
                    best = 0
                chosen = int(candidates[best])
        starts[j] = chosen
        free_nodes[chosen : chosen + d] -= inst.nodes[j]
        free_kw[chosen : chosen + d] -= inst.power_kw[j]
    energy, carbon_kg, cost, objective = evaluate(inst, starts)
    bound = unconstrained_bound(inst)
    return Solution(
        starts={jid: int(s) for jid, s in zip(inst.job_ids, starts, strict=True)},
        late=tuple(sorted(late)),
        energy_kwh=energy,
        carbon_kg=carbon_kg,
        cost_gbp=cost,
        objective_gbp=objective,
        lower_bound_gbp=None if np.isnan(bound) else bound,
        solve_seconds=time.perf_counter() - t0,
        method="greedy-edf",
    )
