"""Lagrangian pricing of capacity, vectorised with numpy, then a priced greedy repair.

Relaxing the per-slot node capacity (and power cap) constraints with prices λ_t (μ_t) splits the
problem into one tiny problem per job: pick the start s in its window minimising

    p_j * h * Σ_{t∈run(s)} w_t  +  n_j * Σ_{t∈run(s)} λ_t  +  p_j * Σ_{t∈run(s)} μ_t

which is done for all jobs at once, per distinct duration, from prefix sums. The dual function
gives a lower bound on the optimum; because every job's subproblem has the integrality property,
the best Lagrangian bound equals the LP-relaxation bound. Prices are raised by projected
subgradient steps (Polyak step sizes against the best plan found so far), and every few
iterations the priced preferences are turned into a feasible plan by :func:`repair`: jobs in
earliest-latest-start order each take the feasible start that is cheapest at current prices.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from slurm_flex.planner.instance import FloatArray, Instance, IntArray

# Score matrices are processed in row chunks of at most this many cells (memory stays bounded).
CHUNK_CELLS = 4_000_000


def earliest_min(score: FloatArray, axis: int = -1) -> IntArray:
    """Index of the minimum along ``axis``, the earliest among near-ties: prefix-sum rounding makes
    equal windows differ by an ulp, and a receding-horizon plan would otherwise slip a job one
    slot later at every re-plan."""
    low = np.min(score, axis=axis, keepdims=True)
    tol = 1e-9 * np.abs(low) + 1e-12
    near = score <= np.where(np.isfinite(low), low + tol, low)
    return np.asarray(np.argmax(near, axis=axis), dtype=np.int64)


def window_sums(values: FloatArray, d: int) -> FloatArray:
    """sum(values[s:s+d]) for s = 0 .. len-d (inf where any value is inf)."""
    finite = np.where(np.isfinite(values), values, 0.0)
    prefix = np.concatenate(([0.0], np.cumsum(finite)))
    bad = np.concatenate(([0], np.cumsum(~np.isfinite(values))))
    sums = prefix[d:] - prefix[:-d]
    return np.where(bad[d:] - bad[:-d] > 0, np.inf, sums)


@dataclass
class _Groups:
    """Jobs grouped by duration: index arrays and per-group window bounds."""

    durations: list[int]
    members: list[IntArray]


def group_by_duration(inst: Instance) -> _Groups:
    order = np.argsort(inst.duration, kind="stable")
    d_sorted = inst.duration[order]
    cuts = np.flatnonzero(np.diff(d_sorted)) + 1
    members = np.split(order, cuts)
    return _Groups([int(inst.duration[m[0]]) for m in members], members)


def best_starts(
    inst: Instance, groups: _Groups, weights: FloatArray, lam: FloatArray, mu: FloatArray
) -> tuple[IntArray, FloatArray]:
    """Each job's cheapest start at prices (λ, μ) and that priced cost (inf if none is finite)."""
    starts = inst.release.copy()
    costs = np.full(inst.n_jobs, np.inf)
    h = inst.slot_hours
    latest = inst.latest_start
    for d, idx in zip(groups.durations, groups.members, strict=True):
        energy_part = h * window_sums(weights, d) + window_sums(mu, d)  # per kW
        node_part = window_sums(lam, d)  # per node
        n_pos = energy_part.shape[0]
        # Big blocks in single precision (half the memory traffic; ties aside, the same argmin),
        # small ones in double so small instances are solved exactly.
        dtype = np.float32 if idx.size * n_pos > 2_000_000 else np.float64
        e_part, n_part = energy_part.astype(dtype), node_part.astype(dtype)
        positions = np.arange(n_pos)
        rows = max(1, CHUNK_CELLS // n_pos)
        for lo in range(0, idx.size, rows):
            j = idx[lo : lo + rows]
            score = np.multiply.outer(inst.power_kw[j].astype(dtype), e_part)
            score += np.multiply.outer(inst.nodes[j].astype(dtype), n_part)
            outside = positions[None, :] < inst.release[j, None]
            outside |= positions[None, :] > latest[j, None]
            np.copyto(score, np.inf, where=outside)
            best = earliest_min(score, axis=1)
            value = score[np.arange(j.size), best].astype(np.float64)
            starts[j] = np.where(np.isfinite(value), best, inst.release[j])
            # The priced cost in double precision, for the bound.
            costs[j] = np.where(
                np.isfinite(value),
                inst.power_kw[j] * energy_part[best] + inst.nodes[j] * node_part[best],
                np.inf,
            )
    # Jobs whose window is empty (latest < release) keep their release slot.
    empty = latest < inst.release
    starts[empty] = inst.release[empty]
    return starts, costs


def load_of(inst: Instance, starts: IntArray, per_job: FloatArray, jobs: IntArray | None = None) -> FloatArray:
    """Σ per_job over the slots each job runs in (difference array, O(J + T)); ``jobs`` selects
    which jobs ``starts`` and ``per_job`` describe (default: all, in order)."""
    duration = inst.duration if jobs is None else inst.duration[jobs]
    diff = np.zeros(inst.n_slots + 1)
    np.add.at(diff, starts, per_job)
    np.add.at(diff, starts + duration, -per_job)
    return np.cumsum(diff[:-1])


def _window_min(values: FloatArray, d: int) -> FloatArray:
    """min(values[s:s+d]) for every s with s+d <= len(values)."""
    n = values.shape[0] - d + 1
    if d <= 12:  # a few shifted minimums beat building a strided view for short jobs
        out = values[:n].copy()
        for k in range(1, d):
            np.minimum(out, values[k : k + n], out=out)
        return out
    return np.asarray(np.lib.stride_tricks.sliding_window_view(values, d).min(axis=1), dtype=np.float64)


def repair(
    inst: Instance,
    preferred: IntArray,
    weights: FloatArray,
    lam: FloatArray,
    mu: FloatArray,
    order: IntArray | None = None,
) -> tuple[IntArray, list[int]]:
    """A capacity-feasible plan near ``preferred``: jobs in EDF order keep their preferred start
    when it fits, else take the feasible start that is cheapest at prices (λ, μ). Jobs with no
    feasible start stay at their release slot and are returned as late."""
    check_nodes = bool(np.isfinite(inst.capacity_nodes).any())
    check_kw = bool(np.isfinite(inst.power_cap_kw).any())
    free_nodes = inst.capacity_nodes.astype(np.float64).copy()
    free_kw = inst.power_cap_kw.astype(np.float64).copy()
    starts = inst.release.copy()
    late: list[int] = []
    latest = inst.latest_start
    if order is None:
        order = np.lexsort((-inst.nodes, latest))
    # Priced window sums per duration, per kW and per node, computed once for the whole pass.
    h = inst.slot_hours
    per_kw: dict[int, FloatArray] = {}
    per_node: dict[int, FloatArray] = {}
    eps = 1e-9
    for j in order:
        d = int(inst.duration[j])
        s = int(preferred[j])
        n, p = inst.nodes[j], inst.power_kw[j]
        lo, hi = int(inst.release[j]), int(latest[j])
        fits_preferred = (
            lo <= s <= hi
            and (not check_nodes or free_nodes[s : s + d].min() >= n - eps)
            and (not check_kw or free_kw[s : s + d].min() >= p - eps)
        )
        if fits_preferred:
            chosen = s
        else:
            chosen = -1
            if hi >= lo:
                fits = np.ones(hi - lo + 1, dtype=bool)
                if check_nodes:
                    fits &= _window_min(free_nodes[lo : hi + d], d) >= n - eps
                if check_kw:
                    fits &= _window_min(free_kw[lo : hi + d], d) >= p - eps
                if fits.any():
                    if d not in per_kw:
                        per_kw[d] = h * window_sums(weights, d) + window_sums(mu, d)
                        per_node[d] = window_sums(lam, d)
                    priced = p * per_kw[d][lo : hi + 1] + n * per_node[d][lo : hi + 1]
                    priced = np.where(fits, priced, np.inf)
                    k = int(earliest_min(priced))
                    chosen = lo + (k if np.isfinite(priced[k]) else int(np.argmax(fits)))
            if chosen < 0:
                late.append(int(j))
                chosen = lo
        starts[j] = chosen
        if check_nodes:
            free_nodes[chosen : chosen + d] -= n
        if check_kw:
            free_kw[chosen : chosen + d] -= p
    return starts, late


def improve(
    inst: Instance, starts: IntArray, weights: FloatArray, passes: int = 2, floor_costs: FloatArray | None = None
) -> IntArray:
    """Local search on a feasible plan: move single jobs to a cheaper start that still fits,
    biggest possible gains first, until a pass moves nothing (or ``passes`` run out).
    ``floor_costs`` (each job's cost in its cheapest window) is computed when not given."""
    check_nodes = bool(np.isfinite(inst.capacity_nodes).any())
    check_kw = bool(np.isfinite(inst.power_cap_kw).any())
    out = starts.copy()
    free_nodes = inst.capacity_nodes - load_of(inst, out, inst.nodes)
    free_kw = inst.power_cap_kw - load_of(inst, out, inst.power_kw)
    h = inst.slot_hours
    sums: dict[int, FloatArray] = {}
    latest = inst.latest_start
    eps = 1e-9
    if floor_costs is None:
        zero = np.zeros(inst.n_slots)
        _, floor_costs = best_starts(inst, group_by_duration(inst), weights, zero, zero)
    for _ in range(passes):
        current = true_costs(inst, weights, out)
        gain = np.where(np.isfinite(current) & np.isfinite(floor_costs), current - floor_costs, 0.0)
        candidates = np.flatnonzero(gain > 1e-12)
        moved = 0
        for j in candidates[np.argsort(-gain[candidates], kind="stable")]:
            d, s = int(inst.duration[j]), int(out[j])
            n, p = inst.nodes[j], inst.power_kw[j]
            lo, hi = int(inst.release[j]), int(latest[j])
            if d not in sums:
                sums[d] = h * window_sums(weights, d)
            cost = p * sums[d][lo : hi + 1]
            better = cost < cost[s - lo] - (1e-9 * abs(cost[s - lo]) + 1e-12)
            if not better.any():
                continue
            if check_nodes:
                free_nodes[s : s + d] += n
                better &= _window_min(free_nodes[lo : hi + d], d) >= n - eps
            if check_kw:
                free_kw[s : s + d] += p
                better &= _window_min(free_kw[lo : hi + d], d) >= p - eps
            if better.any():
                s = lo + int(earliest_min(np.where(better, cost, np.inf)))
                out[j] = s
                moved += 1
            if check_nodes:
                free_nodes[s : s + d] -= n
            if check_kw:
                free_kw[s : s + d] -= p
        if moved == 0:
            break
    return out


def true_costs(inst: Instance, weights: FloatArray, starts: IntArray) -> FloatArray:
    """Each job's objective (GBP) at its start (missing prices count 0, missing carbon inf)."""
    prefix = np.concatenate(([0.0], np.cumsum(np.where(np.isfinite(weights), weights, 0.0))))
    bad = np.concatenate(([0], np.cumsum(~np.isfinite(weights))))
    ends = starts + inst.duration
    cost = (prefix[ends] - prefix[starts]) * inst.power_kw * inst.slot_hours
    return np.where(bad[ends] - bad[starts] > 0, np.inf, cost)


@dataclass(frozen=True)
class LagrangeResult:
    starts: IntArray
    late: list[int]
    objective: float
    lower_bound: float
    iterations: int
    seconds: float


def solve_lagrange(
    inst: Instance,
    *,
    max_iterations: int = 60,
    repairs_at: tuple[int, ...] = (0, 12, 30),
    time_limit: float = 20.0,
    target_gap: float = 0.002,
) -> LagrangeResult:
    """Subgradient ascent on capacity prices; plans repaired from the priced preferences at a few
    iterations and at the prices of the best bound; the best plan is then improved by local
    search. Returns it with the best Lagrangian lower bound (GBP)."""
    t0 = time.perf_counter()
    w = inst.weights()
    groups = group_by_duration(inst)
    finite_cap = np.isfinite(inst.capacity_nodes)
    finite_pcap = np.isfinite(inst.power_cap_kw)
    cap = np.where(finite_cap, inst.capacity_nodes, 0.0)
    pcap = np.where(finite_pcap, inst.power_cap_kw, 0.0)
    lam = np.zeros(inst.n_slots)
    mu = np.zeros(inst.n_slots)
    best_lb, best_prices = -np.inf, (lam, mu)
    best_obj = np.inf
    best_plan = inst.release.copy()
    best_late: list[int] = []
    floor_costs = np.zeros(inst.n_jobs)
    theta = 1.0
    stall = 0
    iterations = 0
    repair_seconds = 0.0

    def consider(plan: IntArray, late: list[int]) -> None:
        nonlocal best_obj, best_plan, best_late
        obj = float(np.where(np.isfinite(c := true_costs(inst, w, plan)), c, 0.0).sum())
        if best_obj == np.inf or (len(late), obj) < (len(best_late), best_obj):
            best_obj, best_plan, best_late = obj, plan, late

    # Jobs with no usable start at all (empty window, or only unpriced slots) cannot be planned:
    # they are left at release and excluded from the bound.
    for it in range(max_iterations):
        iterations = it + 1
        starts, priced = best_starts(inst, groups, w, lam, mu)
        if it == 0:
            floor_costs = priced  # at zero prices: each job's cheapest window
        plannable = np.isfinite(priced)
        lb = float(priced[plannable].sum() - lam @ cap - mu @ pcap)
        if lb > best_lb + 1e-12:
            best_lb, best_prices, stall = lb, (lam, mu), 0
        else:
            stall += 1
        g_nodes = np.where(finite_cap, load_of(inst, starts, inst.nodes) - cap, 0.0)
        g_kw = np.where(finite_pcap, load_of(inst, starts, inst.power_kw) - pcap, 0.0)
        violated = (g_nodes > 1e-9).any() or (g_kw > 1e-9).any()
        if not violated:
            consider(starts, [])
            break  # the relaxed solution is feasible, so it is optimal
        if it in repairs_at:
            r0 = time.perf_counter()
            consider(*repair(inst, starts, w, lam, mu))
            repair_seconds = max(repair_seconds, time.perf_counter() - r0)
        if best_obj < np.inf and best_obj - best_lb <= target_gap * abs(best_obj):
            break
        # Stop early enough to leave time for the final repair and local search.
        if time.perf_counter() - t0 + 3 * repair_seconds > time_limit or theta < 1 / 64:
            break
        if stall >= 4:
            theta, stall = theta / 2, 0
        norm = float(g_nodes @ g_nodes + g_kw @ g_kw)
        gap = (best_obj if best_obj < np.inf else abs(lb) * 1.05 + 1.0) - lb
        step = theta * max(gap, 1e-9) / norm
        lam = np.maximum(0.0, lam + step * g_nodes)
        mu = np.maximum(0.0, mu + step * g_kw)
    if best_late or best_obj > best_lb * (1 + target_gap):
        starts, _ = best_starts(inst, groups, w, *best_prices)
        consider(*repair(inst, starts, w, *best_prices))
    if not best_late:
        best_plan = improve(inst, best_plan, w, floor_costs=floor_costs)
        consider(best_plan, [])
    return LagrangeResult(best_plan, best_late, best_obj, best_lb, iterations, time.perf_counter() - t0)
