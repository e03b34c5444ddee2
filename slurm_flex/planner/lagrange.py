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
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

import numpy as np
import numpy.typing as npt

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


def window_min(values: FloatArray, d: int) -> FloatArray:
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
    feasible start stay at their release slot and are returned as late (not yet proven late: the
    caller searches on, see :func:`make_room`); their load is left out of the capacity check."""
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
                    fits &= window_min(free_nodes[lo : hi + d], d) >= n - eps
                if check_kw:
                    fits &= window_min(free_kw[lo : hi + d], d) >= p - eps
                if fits.any():
                    if d not in per_kw:
                        per_kw[d] = h * window_sums(weights, d) + window_sums(mu, d)
                        per_node[d] = window_sums(lam, d)
                    priced = p * per_kw[d][lo : hi + 1] + n * per_node[d][lo : hi + 1]
                    priced = np.where(fits, priced, np.inf)
                    k = int(earliest_min(priced))
                    chosen = lo + (k if np.isfinite(priced[k]) else int(np.argmax(fits)))
            if chosen < 0:
                # A late job runs at release whatever the capacity: it is reported, and its load
                # is not counted against the others (they are planned within capacity).
                late.append(int(j))
                starts[j] = lo
                continue
        starts[j] = chosen
        if check_nodes:
            free_nodes[chosen : chosen + d] -= n
        if check_kw:
            free_kw[chosen : chosen + d] -= p
    return starts, late


def improve(
    inst: Instance,
    starts: IntArray,
    weights: FloatArray,
    passes: int = 2,
    floor_costs: FloatArray | None = None,
    late: list[int] | None = None,
) -> IntArray:
    """Local search on a feasible plan: move single jobs to a cheaper start that still fits,
    biggest possible gains first, until a pass moves nothing (or ``passes`` run out).
    ``floor_costs`` (each job's cost in its cheapest window) is computed when not given; the
    ``late`` jobs stay at release and out of the capacity count."""
    check_nodes = bool(np.isfinite(inst.capacity_nodes).any())
    check_kw = bool(np.isfinite(inst.power_cap_kw).any())
    out = starts.copy()
    on_time = np.ones(inst.n_jobs, dtype=bool)
    if late:
        on_time[late] = False
    free_nodes, free_kw = free_capacity(inst, out, np.flatnonzero(on_time))
    h = inst.slot_hours
    sums: dict[int, FloatArray] = {}
    latest = inst.latest_start
    eps = 1e-9
    if floor_costs is None:
        zero = np.zeros(inst.n_slots)
        _, floor_costs = best_starts(inst, group_by_duration(inst), weights, zero, zero)
    for _ in range(passes):
        current = true_costs(inst, weights, out)
        gain = np.where(np.isfinite(current) & np.isfinite(floor_costs) & on_time, current - floor_costs, 0.0)
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
                better &= window_min(free_nodes[lo : hi + d], d) >= n - eps
            if check_kw:
                free_kw[s : s + d] += p
                better &= window_min(free_kw[lo : hi + d], d) >= p - eps
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
    node_prices: FloatArray  # the prices of the best bound
    kw_prices: FloatArray
    preferred: IntArray  # each job's cheapest start at those prices


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
    preferred, _ = best_starts(inst, groups, w, *best_prices)
    return LagrangeResult(
        best_plan,
        best_late,
        best_obj,
        best_lb,
        iterations,
        time.perf_counter() - t0,
        best_prices[0],
        best_prices[1],
        preferred,
    )


# -- candidate lists, exact pricing and the smoothed dual --------------------------------------
#
# The dense score matrices above cost jobs x slots per evaluation; the dual ascent below needs a
# few hundred evaluations, so it works on the list of each job's candidate starts instead (its
# window only), in job-aligned chunks so that memory stays bounded at 100,000 jobs.

# Candidates are scored in job-aligned chunks of about this many.
CHUNK_CANDIDATES = 2_000_000
# Above twice this many candidates the dual starts from a sample of the jobs about this big.
WARM_START_CANDIDATES = 1_500_000


def evaluation_weights(inst: Instance) -> FloatArray:
    """GBP per kWh per slot as :func:`slurm_flex.planner.solve.evaluate` charges it (missing
    values count 0): the cost of jobs whose whole window lies where the forecast is missing."""
    price = np.nan_to_num(inst.price, nan=0.0)
    carbon = np.nan_to_num(inst.carbon, nan=0.0)
    return np.asarray(price / 1000.0 + carbon * inst.carbon_price_gbp_per_tonne / 1e6, dtype=np.float64)


def window_table(values: FloatArray, durations: IntArray, n_slots: int) -> FloatArray:
    """Row k: sum(values[s:s+durations[k]]) at each start s (inf where the job would overrun)."""
    out = np.full((durations.size, n_slots), np.inf)
    for k, d in enumerate(durations):
        out[k, : n_slots - int(d) + 1] = window_sums(values, int(d))
    return out


@dataclass(frozen=True)
class Candidates:
    """Every job's candidate starts, grouped by job. ``jobs`` lists the jobs with at least one;
    the others (empty window) cannot be planned at all."""

    jobs: IntArray  # listed jobs, ascending
    seg: IntArray  # per listed job: index of its first candidate; one more entry: the total
    job: npt.NDArray[np.int32]  # per candidate: position of its job in ``jobs``
    start: IntArray  # per candidate: start slot
    flat: IntArray  # per candidate: duration code * n_slots + start (into window tables)
    durations: IntArray  # the distinct durations (codes index this)
    cost: FloatArray  # per candidate: the job's objective (GBP) there
    nodes: FloatArray  # per listed job
    power: FloatArray  # per listed job
    scale: FloatArray  # per listed job: GBP of one slot of it, the unit of its smoothing
    chunks: tuple[tuple[int, int], ...]  # job-position ranges [a, b) of about CHUNK_CANDIDATES

    @property
    def n_candidates(self) -> int:
        return int(self.start.shape[0])


def candidates(inst: Instance) -> Candidates:
    """Each job's starts in its window with a finite cost. A job whose window lies wholly where
    the forecast is missing gets every start in it, at the cost :func:`evaluation_weights`
    charges: it still has to run, and within capacity."""
    n_slots = inst.n_slots
    durations, code = np.unique(inst.duration, return_inverse=True)
    lo = inst.release
    hi = np.minimum(inst.latest_start, n_slots - inst.duration)
    counts = np.maximum(hi - lo + 1, 0)
    total = int(counts.sum())
    job_rep = np.repeat(np.arange(inst.n_jobs, dtype=np.int64), counts)
    first = np.cumsum(counts) - counts
    start = np.arange(total, dtype=np.int64) - np.repeat(first - lo, counts)
    flat = code[job_rep].astype(np.int64) * n_slots + start
    power = inst.power_kw * inst.slot_hours
    cost = power[job_rep] * window_table(inst.weights(), durations, n_slots).ravel()[flat]
    finite = np.isfinite(cost)
    if not finite.all():
        has_finite = np.zeros(inst.n_jobs, dtype=bool)
        has_finite[job_rep[finite]] = True
        fallback = ~has_finite[job_rep]
        if fallback.any():
            table = window_table(evaluation_weights(inst), durations, n_slots).ravel()
            cost[fallback] = power[job_rep[fallback]] * table[flat[fallback]]
        keep = finite | fallback
        job_rep, start, flat, cost = job_rep[keep], start[keep], flat[keep], cost[keep]
    new_job = np.ones(job_rep.size, dtype=bool)
    new_job[1:] = job_rep[1:] != job_rep[:-1]
    seg = np.append(np.flatnonzero(new_job), job_rep.size).astype(np.int64)
    jobs = job_rep[seg[:-1]]
    position = (np.cumsum(new_job) - 1).astype(np.int32)
    w = inst.weights()
    unit = float(np.abs(w[np.isfinite(w)]).mean()) if np.isfinite(w).any() else 0.0
    unit = max(unit, 1e-9)
    # Per-node power of the average job makes node-only (zero-power) jobs smooth on the same scale.
    kw_per_node = float(inst.power_kw.sum() / max(inst.nodes.sum(), 1e-12)) or 1.0
    scale = inst.slot_hours * unit * (inst.power_kw[jobs] + inst.nodes[jobs] * kw_per_node) + 1e-12
    chunks: list[tuple[int, int]] = []
    a = 0
    while a < jobs.size:
        b = int(np.searchsorted(seg, seg[a] + CHUNK_CANDIDATES, side="right")) - 1
        b = min(max(b, a + 1), jobs.size)
        chunks.append((a, b))
        a = b
    return Candidates(
        jobs=jobs,
        seg=seg,
        job=position,
        start=start.astype(np.int32),
        flat=flat.astype(np.int32),
        durations=durations.astype(np.int64),
        cost=cost,
        nodes=inst.nodes[jobs].astype(np.float64),
        power=inst.power_kw[jobs].astype(np.float64),
        scale=scale,
        chunks=tuple(chunks),
    )


def _scores(c: Candidates, a: int, b: int, lam_tab: FloatArray | None, mu_tab: FloatArray | None) -> FloatArray:
    """Priced cost of the candidates of listed jobs a..b-1."""
    lo, hi = int(c.seg[a]), int(c.seg[b])
    score = c.cost[lo:hi].copy()
    if lam_tab is not None or mu_tab is not None:
        counts = np.diff(c.seg[a : b + 1])
        flat = c.flat[lo:hi]
        if lam_tab is not None:
            score += np.repeat(c.nodes[a:b], counts) * lam_tab[flat]
        if mu_tab is not None:
            score += np.repeat(c.power[a:b], counts) * mu_tab[flat]
    return score


def prune(c: Candidates, n_slots: int, lam: FloatArray, mu: FloatArray, margin: float) -> Candidates:
    """The candidates priced within ``margin`` (in units of the job's ``scale``) of their job's
    cheapest at (λ, μ): the others weigh nothing in a soft minimum at a low temperature, and
    dropping them makes each evaluation proportionally cheaper. Every job keeps its cheapest."""
    return select(c, within(c, n_slots, lam, mu, margin))


def within(c: Candidates, n_slots: int, lam: FloatArray, mu: FloatArray, margin: float) -> npt.NDArray[np.bool_]:
    """Per candidate: whether it is priced within ``margin`` (in units of its job's ``scale``)
    of its job's cheapest at (λ, μ)."""
    lam_tab, mu_tab = _price_tables(c, n_slots, lam, mu)
    keep = np.zeros(c.n_candidates, dtype=bool)
    for a, b in c.chunks:
        lo, hi = int(c.seg[a]), int(c.seg[b])
        score = _scores(c, a, b, lam_tab, mu_tab)
        local = c.seg[a : b + 1] - lo
        counts = np.diff(local)
        low = np.minimum.reduceat(score, local[:-1])
        keep[lo:hi] = score <= np.repeat(low + margin * c.scale[a:b], counts)
    return keep


def select(c: Candidates, keep: npt.NDArray[np.bool_]) -> Candidates:
    """The candidates ``keep`` selects; every listed job must keep at least one."""
    idx = np.flatnonzero(keep)
    job = c.job[idx]
    new_job = np.ones(idx.size, dtype=bool)
    new_job[1:] = job[1:] != job[:-1]
    seg = np.append(np.flatnonzero(new_job), idx.size).astype(np.int64)
    chunks: list[tuple[int, int]] = []
    a = 0
    while a < c.jobs.size:
        b = int(np.searchsorted(seg, seg[a] + CHUNK_CANDIDATES, side="right")) - 1
        b = min(max(b, a + 1), c.jobs.size)
        chunks.append((a, b))
        a = b
    return replace(c, seg=seg, job=job, start=c.start[idx], flat=c.flat[idx], cost=c.cost[idx], chunks=tuple(chunks))


def _price_tables(
    c: Candidates, n_slots: int, lam: FloatArray, mu: FloatArray
) -> tuple[FloatArray | None, FloatArray | None]:
    lam_tab = window_table(lam, c.durations, n_slots).ravel() if lam.any() else None
    mu_tab = window_table(mu, c.durations, n_slots).ravel() if mu.any() else None
    return lam_tab, mu_tab


@dataclass(frozen=True)
class Pricing:
    """Every listed job's cheapest start at given prices, and what it says."""

    starts: IntArray  # per listed job
    priced: FloatArray  # per listed job: its priced cost there
    costs: FloatArray  # per listed job: its objective there
    bound: float  # the Lagrangian dual value: a lower bound on every capacity-feasible plan
    margin: FloatArray  # per listed job: how much dearer its next cheapest start is (inf: none)


def price_out(inst: Instance, c: Candidates, lam: FloatArray, mu: FloatArray) -> Pricing:
    """Each job's cheapest start at node prices ``lam`` and power prices ``mu`` (earliest among
    ties) and the Lagrangian bound Σ_j min_s priced_js - λ·capacity - μ·power cap."""
    lam_tab, mu_tab = _price_tables(c, inst.n_slots, lam, mu)
    n = c.jobs.size
    starts = np.zeros(n, dtype=np.int64)
    priced = np.zeros(n)
    costs = np.zeros(n)
    margin = np.zeros(n)
    for a, b in c.chunks:
        lo = int(c.seg[a])
        score = _scores(c, a, b, lam_tab, mu_tab)
        local = c.seg[a : b + 1] - lo
        low = np.minimum.reduceat(score, local[:-1])
        jl = c.job[lo : int(c.seg[b])] - a
        hit = np.flatnonzero(score <= low[jl] + (1e-9 * np.abs(low[jl]) + 1e-12))
        firsts = hit[np.r_[True, jl[hit][1:] != jl[hit][:-1]]]
        starts[a:b] = c.start[lo + firsts]
        priced[a:b] = low
        costs[a:b] = c.cost[lo + firsts]
        score[firsts] = np.inf
        margin[a:b] = np.minimum.reduceat(score, local[:-1]) - low
    bound = float(priced.sum() - _capacity_charge(inst, lam, mu))
    return Pricing(starts, priced, costs, bound, margin)


def _capacity_charge(inst: Instance, lam: FloatArray, mu: FloatArray) -> float:
    cap = np.where(np.isfinite(inst.capacity_nodes), inst.capacity_nodes, 0.0)
    pcap = np.where(np.isfinite(inst.power_cap_kw), inst.power_cap_kw, 0.0)
    return float(lam @ cap + mu @ pcap)


def _load_from_table(weights: FloatArray, durations: IntArray, n_slots: int) -> FloatArray:
    """Per slot: Σ over (duration k, start s) of weights[k, s] for the slots that run covers."""
    diff = np.zeros(n_slots + 1)
    for k, d in enumerate(durations):
        row = weights[k]
        diff[:n_slots] += row
        diff[int(d) : n_slots + 1] -= row[: n_slots + 1 - int(d)]
    return np.cumsum(diff[:-1])


@dataclass(frozen=True)
class DualResult:
    lam: FloatArray  # node-capacity prices per slot (GBP per node-slot), at the best bound
    mu: FloatArray  # power-cap prices per slot (GBP per kW-slot)
    bound: float  # the best Lagrangian bound found
    pricing: Pricing  # each job's cheapest start at (lam, mu)
    confidence: FloatArray  # per listed job: the smoothed weight of that start (1: certain)
    evaluations: int
    seconds: float
    infeasible: bool = False  # the bound exceeds any plan's cost: no plan meets every deadline


def smooth_dual(
    inst: Instance,
    c: Candidates,
    *,
    time_limit: float = 10.0,
    temperatures: tuple[float, ...] = (0.1, 0.01, 0.001),
    iterations: int = 40,
) -> DualResult:
    """Maximise the Lagrangian dual of the capacity constraints by smoothing it.

    The dual function is piecewise linear, so subgradient steps creep towards its maximum. With
    each job's minimum replaced by a soft minimum at temperature τ (in units of one slot of the
    job's cost), it becomes smooth and concave, and its gradient is the expected load minus
    capacity: a limited-memory quasi-Newton method then climbs it in a few dozen evaluations, and lowering τ in stages
    brings the smooth maximiser to the true one. The true dual value at the prices found is the
    certified bound; it is within a few hundredths of a percent of the LP relaxation's optimum
    at a fraction of its cost (the LP has jobs x window columns, this has two prices per slot)."""
    t0 = time.perf_counter()
    n_slots = inst.n_slots
    finite_cap = np.isfinite(inst.capacity_nodes)
    finite_pcap = np.isfinite(inst.power_cap_kw)
    cap = np.where(finite_cap, inst.capacity_nodes, 0.0)
    pcap = np.where(finite_pcap, inst.power_cap_kw, 0.0)
    use_kw = bool(finite_pcap.any())
    n_var = 2 * n_slots if use_kw else n_slots
    free = np.concatenate((finite_cap, finite_pcap)) if use_kw else finite_cap.copy()
    # Work in units of the unconstrained optimum so that tolerances mean the same at any size.
    zero = np.zeros(n_slots)
    unconstrained = price_out(inst, c, zero, zero)
    norm = max(abs(float(unconstrained.priced.sum())), 1e-9)
    # No plan costs more than every job at its dearest start: a dual value above that proves
    # that there is no plan at all (the dual is unbounded when capacity cannot hold the jobs).
    dearest = float(np.maximum.reduceat(c.cost, c.seg[:-1]).sum()) if c.jobs.size else 0.0
    ceiling = dearest + 1e-6 * abs(dearest) + 1e-9
    evaluations = 0
    state: dict[str, FloatArray] = {}

    def split(z: FloatArray) -> tuple[FloatArray, FloatArray]:
        lam = np.maximum(z[:n_slots], 0.0)
        mu = np.maximum(z[n_slots:], 0.0) if use_kw else zero
        return lam, mu

    def negative_smooth(z: FloatArray, c: Candidates, tau: float) -> tuple[float, FloatArray]:
        nonlocal evaluations
        evaluations += 1
        lam, mu = split(z)
        lam_tab, mu_tab = _price_tables(c, n_slots, lam, mu)
        value = -float(lam @ cap + mu @ pcap)
        w_nodes = np.zeros(c.durations.size * n_slots)
        w_kw = np.zeros(c.durations.size * n_slots) if use_kw else w_nodes
        confidence = np.zeros(c.jobs.size)
        for a, b in c.chunks:
            lo, hi = int(c.seg[a]), int(c.seg[b])
            score = _scores(c, a, b, lam_tab, mu_tab)
            local = c.seg[a : b + 1] - lo
            counts = np.diff(local)
            low = np.minimum.reduceat(score, local[:-1])
            t = tau * c.scale[a:b]
            score -= np.repeat(low, counts)
            score /= np.repeat(-t, counts)
            np.exp(score, out=score)  # now each candidate's unnormalised weight
            z_sum = np.add.reduceat(score, local[:-1])
            value += float((low - t * np.log(z_sum)).sum())
            score /= np.repeat(z_sum, counts)  # now the weight x_js
            confidence[a:b] = np.maximum.reduceat(score, local[:-1])
            flat = c.flat[lo:hi]
            w_nodes += np.bincount(flat, weights=score * np.repeat(c.nodes[a:b], counts), minlength=w_nodes.size)
            if use_kw:
                w_kw += np.bincount(flat, weights=score * np.repeat(c.power[a:b], counts), minlength=w_kw.size)
        shape = (c.durations.size, n_slots)
        g = _load_from_table(w_nodes.reshape(shape), c.durations, n_slots) - cap
        g = np.where(finite_cap, g, 0.0)
        if use_kw:
            gk = np.where(finite_pcap, _load_from_table(w_kw.reshape(shape), c.durations, n_slots) - pcap, 0.0)
            g = np.concatenate((g, gk))
        state["confidence"] = confidence
        return -value / norm, -g / norm

    best = unconstrained
    best_z = np.zeros(n_var)
    best_confidence = np.ones(c.jobs.size)
    z = np.zeros(n_var)
    deadline = t0 + time_limit
    if c.n_candidates > 2 * WARM_START_CANDIDATES and len(temperatures) > 1:
        # Very big: the first, coarse stage runs on a random sample of the jobs against the
        # same share of capacity, whose prices are nearly those of the whole; the whole then
        # starts from them, at the finer temperatures only.
        sample = _sample(inst, WARM_START_CANDIDATES / c.n_candidates)
        warm = smooth_dual(sample, candidates(sample), time_limit=0.3 * time_limit, temperatures=temperatures)
        z = np.concatenate((warm.lam, warm.mu)) if use_kw else warm.lam.copy()
        evaluations += warm.evaluations
        temperatures = temperatures[1:]
    # A first step of about the energy cost of one node-slot (the scale of the prices).
    typical = float(np.median(c.scale / np.maximum(c.nodes, 1e-9))) if c.jobs.size else 1.0
    for tau in temperatures:
        # Once the prices are roughly right (after a stage), starts priced far above their
        # job's cheapest cannot matter at this temperature (nor, nearly, at the optimum).
        sub = c if not z.any() else prune(c, n_slots, *split(z), margin=30 * tau + 0.05)
        z = _projected_lbfgs(
            partial(negative_smooth, c=sub, tau=tau),
            z,
            free,
            first_step=typical,
            max_evaluations=2 * iterations,
            deadline=deadline,
            stop_below=-ceiling / norm,
        )
        confidence = state.get("confidence", best_confidence)
        exact = price_out(inst, c, *split(z))
        if exact.bound > best.bound:
            best, best_z, best_confidence = exact, z.copy(), confidence
        if time.perf_counter() > deadline or best.bound > ceiling:
            break
    lam, mu = split(best_z)
    return DualResult(
        lam, mu, best.bound, best, best_confidence, evaluations, time.perf_counter() - t0, best.bound > ceiling
    )


def _sample(inst: Instance, fraction: float, seed: int = 0) -> Instance:
    """A random ``fraction`` of the jobs, with capacity and power cap scaled by their share of
    the node-slots and kW-slots."""
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(inst.n_jobs, size=max(1, int(fraction * inst.n_jobs)), replace=False))
    node_slots = inst.nodes * inst.duration
    kw_slots = inst.power_kw * inst.duration
    share_n = float(node_slots[keep].sum() / max(node_slots.sum(), 1e-12))
    share_k = float(kw_slots[keep].sum() / max(kw_slots.sum(), 1e-12))
    return replace(
        inst,
        job_ids=tuple(inst.job_ids[j] for j in keep),
        nodes=inst.nodes[keep],
        power_kw=inst.power_kw[keep],
        duration=inst.duration[keep],
        release=inst.release[keep],
        deadline=inst.deadline[keep],
        capacity_nodes=inst.capacity_nodes * share_n,
        power_cap_kw=inst.power_cap_kw * share_k,
    )


def free_capacity(inst: Instance, starts: IntArray, on_time: IntArray | None = None) -> tuple[FloatArray, FloatArray]:
    """Free nodes and kW per slot left by the jobs ``on_time`` (default all) at ``starts``."""
    jobs = np.arange(inst.n_jobs) if on_time is None else on_time
    nodes = inst.capacity_nodes - load_of(inst, starts[jobs], inst.nodes[jobs], jobs)
    kw = inst.power_cap_kw - load_of(inst, starts[jobs], inst.power_kw[jobs], jobs)
    return nodes, kw


def make_room(
    inst: Instance,
    starts: IntArray,
    late: list[int],
    weights: FloatArray,
    lam: FloatArray,
    mu: FloatArray,
    tries: int = 4,
    deadline: float = float("inf"),
) -> tuple[IntArray, list[int]]:
    """Place late jobs by moving others out of their way (an ejection chain of depth one).

    For a late job, each start in its window is scored by how far it overflows capacity; at
    the least overflowing few, the jobs running in the overflowing slots are moved, one by one
    and biggest overlap first, to the start in their own window that fits and is cheapest at
    prices (λ, μ), until the late job fits. Moves that do not make it fit are undone. Jobs not
    reached by ``deadline`` stay late."""
    out = starts.copy()
    late_set = set(late)
    on_time = np.asarray([j for j in range(inst.n_jobs) if j not in late_set], dtype=np.int64)
    free_n, free_k = free_capacity(inst, out, on_time)
    running = np.ones(inst.n_jobs, dtype=bool)
    running[list(late_set)] = False
    h = inst.slot_hours
    still: list[int] = []
    eps = 1e-9
    per_kw: dict[int, FloatArray] = {}
    per_node: dict[int, FloatArray] = {}
    last = np.minimum(inst.latest_start, inst.n_slots - inst.duration)
    for j in sorted(late, key=lambda k: (int(last[k]), -float(inst.nodes[k]))):
        if time.perf_counter() > deadline:
            still.append(j)
            continue
        d, n, p = int(inst.duration[j]), float(inst.nodes[j]), float(inst.power_kw[j])
        lo, hi = int(inst.release[j]), int(last[j])
        if hi < lo:
            still.append(j)
            continue
        short_n = np.maximum(n - free_n, 0.0)
        short_k = np.maximum(p - free_k, 0.0) if p > 0 else np.zeros(inst.n_slots)
        scale_k = n / p if p > 0 else 0.0
        deficit = window_sums(short_n + scale_k * np.where(np.isfinite(short_k), short_k, 0.0), d)[lo : hi + 1]
        placed = False
        for k in np.argsort(deficit, kind="stable")[:tries]:
            s = lo + int(k)
            moves: list[tuple[int, int]] = []
            free_n[s : s + d] -= n
            free_k[s : s + d] -= p
            blockers = np.flatnonzero(
                running & (out < s + d) & (out + inst.duration > s) & (np.arange(inst.n_jobs) != j)
            )
            over = np.flatnonzero((free_n < -eps) | (free_k < -eps))
            if over.size:
                mask = np.zeros(inst.n_slots, dtype=bool)
                mask[over] = True
                cover = np.cumsum(np.r_[0, mask])
                overlap = cover[out[blockers] + inst.duration[blockers]] - cover[out[blockers]]
                blockers = blockers[overlap > 0]
                overlap = overlap[overlap > 0]
                for b in blockers[np.argsort(-overlap * inst.nodes[blockers], kind="stable")]:
                    if not ((free_n < -eps) | (free_k < -eps)).any():
                        break
                    db, sb = int(inst.duration[b]), int(out[b])
                    nb, pb = float(inst.nodes[b]), float(inst.power_kw[b])
                    blo, bhi = int(inst.release[b]), int(last[b])
                    free_n[sb : sb + db] += nb
                    free_k[sb : sb + db] += pb
                    fits = (window_min(free_n[blo : bhi + db], db) >= nb - eps) & (
                        window_min(free_k[blo : bhi + db], db) >= pb - eps
                    )
                    fits[sb - blo] = False  # staying put is no move
                    if fits.any():
                        if db not in per_kw:
                            per_kw[db] = h * window_sums(weights, db) + window_sums(mu, db)
                            per_node[db] = window_sums(lam, db)
                        priced = pb * per_kw[db][blo : bhi + 1] + nb * per_node[db][blo : bhi + 1]
                        priced = np.where(np.isfinite(priced), priced, 1e300)
                        nb_start = blo + int(earliest_min(np.where(fits, priced, np.inf)))
                        moves.append((int(b), sb))
                        out[b] = sb = nb_start
                    free_n[sb : sb + db] -= nb
                    free_k[sb : sb + db] -= pb
            if not ((free_n < -eps) | (free_k < -eps)).any():
                out[j] = s
                running[j] = True
                placed = True
                break
            # Undo: the late job out, the moved jobs back.
            free_n[s : s + d] += n
            free_k[s : s + d] += p
            for b, sb in reversed(moves):
                db = int(inst.duration[b])
                free_n[out[b] : out[b] + db] += inst.nodes[b]
                free_k[out[b] : out[b] + db] += inst.power_kw[b]
                out[b] = sb
                free_n[sb : sb + db] -= inst.nodes[b]
                free_k[sb : sb + db] -= inst.power_kw[b]
        if not placed:
            still.append(j)
    return out, still


def _projected_lbfgs(
    fun: Callable[[FloatArray], tuple[float, FloatArray]],
    z0: FloatArray,
    free: npt.NDArray[np.bool_],
    *,
    first_step: float,
    max_evaluations: int,
    deadline: float,
    stop_below: float = -np.inf,
    memory: int = 8,
) -> FloatArray:
    """Minimise a smooth convex ``fun`` (value and gradient) over z >= 0, coordinates not
    ``free`` held at 0: limited-memory BFGS directions on the coordinates not held at their
    bound, projected backtracking steps. Stops early once ``fun`` is below ``stop_below``.

    Written out rather than calling scipy's L-BFGS-B: that one calls threaded BLAS for a
    problem of a few hundred variables, and on a busy machine the idle BLAS threads spinning
    cost more than the whole evaluation."""
    z = np.where(free, np.maximum(z0, 0.0), 0.0)
    f, g = fun(z)
    evaluations = 1
    history: list[tuple[FloatArray, FloatArray, float]] = []
    stalls = 0
    while evaluations < max_evaluations and time.perf_counter() < deadline:
        moving = free & ~((z <= 0.0) & (g > 0.0))
        gm = np.where(moving, g, 0.0)
        if not np.any(np.abs(gm) > 1e-12):
            break
        q = gm.copy()
        alphas: list[float] = []
        for s, y, rho in reversed(history):
            a = rho * float(s @ q)
            q -= a * y
            alphas.append(a)
        if history:
            s, y, _ = history[-1]
            q *= float(s @ y) / max(float(y @ y), 1e-300)
            step = 1.0
        else:
            q *= first_step / float(np.abs(gm).max())
            step = 1.0
        for (s, y, rho), a in zip(history, reversed(alphas), strict=True):
            q += s * (a - rho * float(y @ q))
        d = -np.where(moving, q, 0.0)
        if float(gm @ d) >= 0.0:  # curvature pairs from an old active set: restart
            history.clear()
            d = -gm * (first_step / float(np.abs(gm).max()))
        while True:
            zn = np.where(free, np.maximum(z + step * d, 0.0), 0.0)
            fn, gn = fun(zn)
            evaluations += 1
            if not (np.isfinite(fn) and np.isfinite(gn).all()):
                return z
            if fn <= f + 1e-4 * float(g @ (zn - z)) or evaluations >= max_evaluations:
                break
            step *= 0.25
            if step < 1e-10:
                break
        s, y = zn - z, gn - g
        sy = float(s @ y)
        if sy > 1e-12 * float(np.linalg.norm(s) * np.linalg.norm(y)):
            history.append((s, y, 1.0 / sy))
            if len(history) > memory:
                history.pop(0)
        improved = f - fn
        z, f, g = zn, fn, gn
        if f < stop_below:
            break
        stalls = stalls + 1 if improved <= 1e-10 * max(abs(f), 1.0) else 0
        if stalls >= 2:
            break
    return z


def min_conflicts(
    inst: Instance,
    starts: IntArray,
    late: list[int],
    weights: FloatArray,
    *,
    max_moves: int = 2000,
    deadline: float = float("inf"),
    seed: int = 0,
) -> tuple[IntArray, list[int]]:
    """Place the late jobs by local search on the overflow: each is put where it overflows
    capacity least, then, while any slot overflows, one of the jobs running there moves to the
    start in its window that most reduces the total overflow (the cheapest among equals; a
    short tabu list keeps it from moving straight back, and when no move helps the least bad
    one is taken). Chains of moves like this find room that single moves do not. Returns the
    input unchanged (with its late jobs) when the overflow does not reach zero."""
    if not late:
        return starts, late
    rng = np.random.default_rng(seed)
    out = starts.copy()
    n_slots = inst.n_slots
    finite_n = np.isfinite(inst.capacity_nodes)
    finite_k = np.isfinite(inst.power_cap_kw)
    cap_n = np.where(finite_n, inst.capacity_nodes, np.inf)
    cap_k = np.where(finite_k, inst.power_cap_kw, np.inf)
    # Power overflow counts in nodes at the average kW per node, so one measure covers both.
    kw_weight = float(inst.nodes.sum() / max(inst.power_kw.sum(), 1e-12))
    load_n = load_of(inst, out, inst.nodes)
    load_k = load_of(inst, out, inst.power_kw)
    for j in late:  # the late jobs' current load (at release) was not in the plan's count
        d = int(inst.duration[j])
        load_n[out[j] : out[j] + d] -= inst.nodes[j]
        load_k[out[j] : out[j] + d] -= inst.power_kw[j]
    h = inst.slot_hours
    lo_all = inst.release
    hi_all = np.minimum(inst.latest_start, n_slots - inst.duration)
    if (hi_all[late] < lo_all[late]).any():
        return starts, late

    def over(ln: FloatArray, lk: FloatArray) -> FloatArray:
        return np.asarray(np.maximum(ln - cap_n, 0.0) + kw_weight * np.maximum(lk - cap_k, 0.0), dtype=np.float64)

    def best_move(j: int) -> tuple[int, float]:
        """(start, change in total overflow) of job j's best start, its own excluded."""
        d, s = int(inst.duration[j]), int(out[j])
        n, p = float(inst.nodes[j]), float(inst.power_kw[j])
        lo, hi = int(lo_all[j]), int(hi_all[j])
        ln, lk = load_n.copy(), load_k.copy()
        ln[s : s + d] -= n
        lk[s : s + d] -= p
        base = over(ln, lk)
        added = over(ln + n, lk + p) - base
        gain_out = float((over(load_n, load_k) - base)[s : s + d].sum())  # overflow removed by leaving
        delta = window_sums(added, d)[lo : hi + 1] - gain_out
        cost = p * h * window_sums(weights, d)[lo : hi + 1]
        cost = np.where(np.isfinite(cost), cost, 1e300)
        delta[s - lo] = np.inf
        best = float(delta.min())
        if not np.isfinite(best):
            return s, np.inf
        ties = np.flatnonzero(delta <= best + 1e-9)
        k = int(ties[np.argmin(cost[ties])])
        return lo + k, best

    for j in sorted(late, key=lambda k: -float(inst.nodes[k] * inst.duration[k])):
        d = int(inst.duration[j])
        lo, hi = int(lo_all[j]), int(hi_all[j])
        added = over(load_n + inst.nodes[j], load_k + inst.power_kw[j]) - over(load_n, load_k)
        delta = window_sums(added, d)[lo : hi + 1]
        cost = inst.power_kw[j] * h * window_sums(weights, d)[lo : hi + 1]
        ties = np.flatnonzero(delta <= delta.min() + 1e-9)
        s = lo + int(ties[np.argmin(np.where(np.isfinite(cost[ties]), cost[ties], 1e300))])
        out[j] = s
        load_n[s : s + d] += inst.nodes[j]
        load_k[s : s + d] += inst.power_kw[j]
    tabu = np.full(inst.n_jobs, -1)
    movable = hi_all > lo_all
    for move in range(max_moves):
        excess = over(load_n, load_k)
        hot = np.flatnonzero(excess > 1e-9)
        if hot.size == 0:
            return out, []
        if move % 16 == 0 and time.perf_counter() > deadline:
            break
        t = int(rng.choice(hot))
        running = np.flatnonzero((out <= t) & (out + inst.duration > t) & movable & (tabu < move))
        if running.size == 0:
            continue
        if running.size > 40:
            running = rng.choice(running, 40, replace=False)
        moves = [(*best_move(int(k)), int(k)) for k in running]
        s, change, j = min(moves, key=lambda m: m[1])
        if not np.isfinite(change):
            continue
        if change >= 0 and rng.random() < 0.3:
            s, change, j = moves[int(rng.integers(len(moves)))]
            if not np.isfinite(change):
                continue
        d, old = int(inst.duration[j]), int(out[j])
        load_n[old : old + d] -= inst.nodes[j]
        load_k[old : old + d] -= inst.power_kw[j]
        out[j] = s
        load_n[s : s + d] += inst.nodes[j]
        load_k[s : s + d] += inst.power_kw[j]
        tabu[j] = move + 7
    return starts, late
