"""Solving planning instances: pick the method that is fast for the instance at hand, certify
the result with a lower bound, and apply the "not worth deferring" rule.

Methods:

* ``exact``  no capacity or power cap can bind: every job takes its cheapest window (optimal);
* ``milp``   the time-indexed MILP with HiGHS, when the model is small (optimal, or the best
             plan found within the time limit);
* ``lp-rounding`` the LP relaxation (HiGHS), rounded: its integral assignments kept, the rest
             repaired at the LP's dual capacity prices, then improved by local search;
* ``lagrange`` capacity prices by subgradient ascent, repaired into a feasible plan;
* ``fast``   the per-job cheapest windows when they fit together (then they are optimal), else
             ``lagrange`` with a short budget and no bound: for simulations that plan every slot;
* ``greedy`` earliest-latest-start first, each job its cheapest feasible window (the first
             repair of ``lagrange``, kept as the fast fallback and for comparison).

``best_window`` is the rule other tools use (each job independently in its lowest-cost window,
ignoring the others); it is here as the baseline that benchmarks compare against.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Literal

import numpy as np

from slurm_flex.planner.instance import FloatArray, Instance, IntArray, Solution
from slurm_flex.planner.lagrange import (
    best_starts,
    group_by_duration,
    improve,
    load_of,
    repair,
    solve_lagrange,
    true_costs,
    window_sums,
)
from slurm_flex.planner.lp import candidate_count, lp_bound, lp_relaxation, solve_milp

Method = Literal["auto", "fast", "exact", "milp", "lp-rounding", "lagrange", "greedy", "best-window"]

# Below these model sizes the exact MILP is usually quick; up to the next, the LP relaxation is
# solved and rounded; above it, the Lagrangian method.
MILP_MAX_VARIABLES = 20_000
LP_ROUNDING_MAX_VARIABLES = 150_000
# The LP bound is computed when the model has at most this many variables (else the
# Lagrangian bound, which converges to the same value, is reported).
LP_BOUND_MAX_VARIABLES = 400_000


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


def capacity_binds(inst: Instance) -> bool:
    return bool(np.isfinite(inst.capacity_nodes).any() or np.isfinite(inst.power_cap_kw).any())


def best_window(inst: Instance) -> IntArray:
    """Each job in its own cheapest window, ignoring capacity (the per-job rule)."""
    zero = np.zeros(inst.n_slots)
    starts, _ = best_starts(inst, group_by_duration(inst), inst.weights(), zero, zero)
    return starts


def overload(inst: Instance, starts: IntArray) -> float:
    """The largest excess of running nodes over capacity in any slot (0 when feasible)."""
    excess = load_of(inst, starts, inst.nodes) - inst.capacity_nodes
    return float(max(0.0, np.nanmax(np.where(np.isfinite(excess), excess, -np.inf), initial=0.0)))


def shift_to_earliest_tie(inst: Instance, starts: IntArray) -> IntArray:
    """Move each job to the earliest start that costs the same (within rounding) and still fits.

    Solvers return any one of equally cheap plans; a receding-horizon planner that does not
    prefer the earliest would let a job drift one slot later at every cycle."""
    if inst.n_jobs == 0:
        return starts
    w = inst.weights()
    out = starts.copy()
    costs = true_costs(inst, w, out)
    free_nodes = inst.capacity_nodes - load_of(inst, out, inst.nodes)
    free_kw = inst.power_cap_kw - load_of(inst, out, inst.power_kw)
    for j in np.argsort(out, kind="stable"):
        s, r, d = int(out[j]), int(inst.release[j]), int(inst.duration[j])
        if s <= r or not np.isfinite(costs[j]):
            continue
        earlier = np.arange(r, s)
        c = _costs_at(inst, w, j, earlier)
        tied = np.flatnonzero(c <= costs[j] + 1e-9 * abs(costs[j]) + 1e-15)
        n, p = inst.nodes[j], inst.power_kw[j]
        free_nodes[s : s + d] += n
        free_kw[s : s + d] += p
        for k in tied:
            t = int(earlier[k])
            if free_nodes[t : t + d].min() >= n - 1e-9 and free_kw[t : t + d].min() >= p - 1e-9:
                out[j] = s = t
                break
        free_nodes[s : s + d] -= n
        free_kw[s : s + d] -= p
    return out


def _costs_at(inst: Instance, weights: FloatArray, job: int, starts: IntArray) -> FloatArray:
    """Job ``job``'s objective at each of ``starts``."""
    d = int(inst.duration[job])
    sums = window_sums(weights, d)[starts]
    return np.asarray(sums * inst.power_kw[job] * inst.slot_hours, dtype=np.float64)


def apply_min_saving(inst: Instance, starts: IntArray, fraction: float) -> IntArray:
    """Move a job back to its release slot when the later start saves less than ``fraction`` of
    its cost there and the release slot has room (jobs in EDF order)."""
    if fraction <= 0 or inst.n_jobs == 0:
        return starts
    w = inst.weights()
    out = starts.copy()
    at_release = true_costs(inst, w, inst.release)
    planned = true_costs(inst, w, out)
    small = (out != inst.release) & np.isfinite(at_release) & (at_release - planned < fraction * at_release)
    if not small.any():
        return out
    free_nodes = inst.capacity_nodes - load_of(inst, out, inst.nodes)
    free_kw = inst.power_cap_kw - load_of(inst, out, inst.power_kw)
    for j in np.flatnonzero(small)[np.argsort(inst.latest_start[small], kind="stable")]:
        d, r, s = int(inst.duration[j]), int(inst.release[j]), int(out[j])
        n, p = inst.nodes[j], inst.power_kw[j]
        # Free the job's current slots, then check the release window.
        free_nodes[s : s + d] += n
        free_kw[s : s + d] += p
        if free_nodes[r : r + d].min() >= n - 1e-9 and free_kw[r : r + d].min() >= p - 1e-9:
            out[j] = r
        free_nodes[int(out[j]) : int(out[j]) + d] -= n
        free_kw[int(out[j]) : int(out[j]) + d] -= p
    return out


def solve(
    inst: Instance,
    *,
    method: Method = "auto",
    time_limit: float = 20.0,
    min_saving_fraction: float = 0.0,
    bound: bool = True,
) -> Solution:
    """Plan ``inst``. ``bound`` asks for a certified lower bound (LP or Lagrangian)."""
    t0 = time.perf_counter()
    late: list[int] = []
    lower: float | None = None
    if method == "auto":
        candidates = candidate_count(inst)
        if not capacity_binds(inst):
            method = "exact"
        elif candidates <= MILP_MAX_VARIABLES:
            method = "milp"
        elif candidates <= LP_ROUNDING_MAX_VARIABLES:
            method = "lp-rounding"
        else:
            method = "lagrange"
    used: str = method
    if method in ("exact", "best-window"):
        starts = best_window(inst)
        if method == "exact":
            if capacity_binds(inst):
                raise ValueError("the exact per-job method ignores capacity; use it only when none binds")
            lower = evaluate(inst, starts)[3]
    elif method == "greedy":
        starts, late = repair(inst, best_window(inst), inst.weights(), np.zeros(inst.n_slots), np.zeros(inst.n_slots))
    elif method == "lp-rounding":
        relaxed = lp_relaxation(inst, time_limit=time_limit)
        if relaxed is None:
            lres = solve_lagrange(inst, time_limit=time_limit)
            starts, late, used = lres.starts, lres.late, "lagrange"
            lower = lres.lower_bound if not late and np.isfinite(lres.lower_bound) else None
        else:
            # Integral LP assignments first (they fit together), then the fractional jobs in EDF
            # order, each in its cheapest feasible start at the LP's capacity prices.
            w = inst.weights()
            order = np.lexsort((-inst.nodes, inst.latest_start, ~relaxed.integral))
            starts, late = repair(inst, relaxed.preferred, w, relaxed.node_prices, relaxed.kw_prices, order=order)
            if not late:
                starts = improve(inst, starts, w)
                lower = relaxed.value
    elif method == "fast":
        starts = best_window(inst)
        fits = (
            overload(inst, starts) <= 1e-9
            and not (load_of(inst, starts, inst.power_kw) > inst.power_cap_kw + 1e-9).any()
        )
        if fits:
            used = "exact"
        else:
            lres = solve_lagrange(inst, time_limit=time_limit, max_iterations=25)
            starts, late, used = lres.starts, lres.late, "lagrange"
        bound = False
    elif method == "lagrange":
        lres = solve_lagrange(inst, time_limit=time_limit)
        starts, late = lres.starts, lres.late
        lower = lres.lower_bound if not late and np.isfinite(lres.lower_bound) else None
    elif method == "milp":
        zero = np.zeros(inst.n_slots)
        greedy_starts, greedy_late = repair(inst, best_window(inst), inst.weights(), zero, zero)
        mres = solve_milp(inst, time_limit=time_limit)
        if mres.starts is None and greedy_late:
            # Not every job fits within capacity (the model is infeasible): those the greedy
            # could not place run late at release, and the MILP plans the others around them.
            mres = solve_milp(_without(inst, greedy_late), time_limit=time_limit)
            late = greedy_late
        if mres.starts is None or (
            not mres.optimal and not greedy_late and evaluate(inst, greedy_starts)[3] < evaluate(inst, mres.starts)[3]
        ):
            starts, late = greedy_starts, greedy_late  # no MILP plan, or a worse one at the time limit
        else:
            starts = mres.starts
            used = "milp" if mres.optimal else "milp (time limit)"
            if not late:
                lower = mres.value if mres.optimal else mres.bound
    else:
        raise ValueError(f"unknown method {method!r}")
    starts = apply_min_saving(inst, shift_to_earliest_tie(inst, starts), min_saving_fraction)
    # The LP relaxation is the tightest bound of this model; the Lagrangian one approaches it
    # from below. Compute it where that is cheap and keep the better of the two.
    wants_lp = bound and not late and inst.n_jobs and capacity_binds(inst) and used not in ("milp", "lp-rounding")
    if wants_lp and candidate_count(inst) <= LP_BOUND_MAX_VARIABLES:
        lp = lp_bound(inst, time_limit=max(5.0, time_limit))
        if lp.ok and lp.value is not None:
            lower = lp.value if lower is None else max(lower, lp.value)
    energy, carbon_kg, cost, objective = evaluate(inst, starts)
    return Solution(
        starts={jid: int(s) for jid, s in zip(inst.job_ids, starts, strict=True)},
        late=tuple(sorted(inst.job_ids[j] for j in late)),
        energy_kwh=energy,
        carbon_kg=carbon_kg,
        cost_gbp=cost,
        objective_gbp=objective,
        lower_bound_gbp=lower,
        solve_seconds=time.perf_counter() - t0,
        method=used,
    )


def _without(inst: Instance, late: list[int]) -> Instance:
    """``inst`` with the late jobs running at release (their load taken out of capacity) and
    their windows emptied, so the model plans only the others."""
    if not late:
        return inst
    idx = np.asarray(late)
    cap = inst.capacity_nodes - load_of(inst, inst.release[idx], inst.nodes[idx], idx)
    pcap = inst.power_cap_kw - load_of(inst, inst.release[idx], inst.power_kw[idx], idx)
    deadline = inst.deadline.copy()
    deadline[idx] = inst.release[idx] + inst.duration[idx] - 1  # latest start < release
    return replace(inst, capacity_nodes=np.maximum(cap, 0.0), power_cap_kw=np.maximum(pcap, 0.0), deadline=deadline)
