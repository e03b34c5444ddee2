"""Solving planning instances: pick the method that is fast for the instance at hand, plan within
capacity, call a job late only once it is shown that no plan meets every deadline, and certify
every result with a lower bound.

Methods:

* ``exact``  no capacity or power cap can bind: every job takes its cheapest window (optimal);
* ``milp``   the time-indexed MILP with HiGHS, when the model is small (optimal, or the best
             plan found within the time limit);
* ``lp-rounding`` the LP relaxation (HiGHS), rounded by diving: the jobs it splits between
             starts are fixed, biggest first, and the LP re-solved from its last basis until no
             job is split, compared with priced repairs from the first LP (and, where the
             dive gets stuck, from where it got to); then local search and the exact MILP
             re-solved on neighbourhoods of the jobs furthest from their LP-priced start, then
             on every job running in a sliding time window, each started from the plan so
             never worse;
* ``lagrange`` capacity prices from the smoothed Lagrangian dual (no LP at all: it scales to
             100,000 jobs), a priced repair in which the jobs hard to place go first (in
             deadline order and, when that leaves jobs late, biggest for its window first),
             then the same local search;
* ``fast``   the per-job cheapest windows when they fit together (then they are optimal), else
             a short subgradient ``lagrange`` with repairs: for simulations that plan every slot;
* ``greedy`` earliest-latest-start first, each job its cheapest feasible window (the first
             repair of ``lagrange``, kept as a fast fallback and for comparison).

``best_window`` is the rule other tools use (each job independently in its lowest-cost window,
ignoring the others); it is here as the baseline that benchmarks compare against, and it is the
one method whose plan may exceed capacity.

Whatever the method, a job the plan cannot fit is not reported late straight away: other jobs
are moved out of its way (:func:`~slurm_flex.planner.lagrange.make_room`), then the MILP is
solved on the conflicted sub-problem and, if need be, on the whole instance. A job is late only
when that fails, and the solution says why: the slots where capacity binds and whether the LP
relaxation or the MILP proved that no plan meets every deadline.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Literal, TypeVar

import numpy as np
import numpy.typing as npt

from slurm_flex.errors import PlanningError
from slurm_flex.planner.instance import FloatArray, Instance, IntArray, LateReason, Solution
from slurm_flex.planner.lagrange import (
    Candidates,
    DualResult,
    best_starts,
    candidates,
    free_capacity,
    group_by_duration,
    improve,
    load_of,
    make_room,
    min_conflicts,
    price_out,
    repair,
    select,
    smooth_dual,
    solve_lagrange,
    true_costs,
    window_min,
    window_sums,
    window_table,
    within,
)
from slurm_flex.planner.lp import (
    DiveResult,
    candidate_count,
    lp_deadlines_feasible,
    lp_dive,
    lp_relaxation,
    solve_milp,
)

ScalarT = TypeVar("ScalarT", bound=np.generic)

Method = Literal["auto", "fast", "exact", "milp", "lp-rounding", "lagrange", "greedy", "best-window"]

# Below these model sizes (candidate starts) the exact MILP is usually quick; up to the next,
# the LP relaxation is solved and rounded; above it, the smoothed Lagrangian dual prices.
MILP_MAX_VARIABLES = 5_000
LP_ROUNDING_MAX_VARIABLES = 150_000
# Methods without a bound of their own get the LP's up to this size, the Lagrangian dual's above.
LP_BOUND_MAX_VARIABLES = 60_000
# Below this size the fast method settles late jobs thoroughly at once (the MILP takes
# milliseconds); above it, a quick search for room comes first.
FAST_PROOF_MAX_VARIABLES = 1_000
# The whole-instance MILP that settles late jobs is tried up to this size.
MILP_SETTLE_MAX_VARIABLES = 400_000
# Moving other jobs out of late jobs' way first gets at least this long (seconds) and at most
# this share of the time left, before the search on the overflow (see :func:`_settle`).
ROOM_FIRST_SECONDS = 1.0
ROOM_FIRST_SHARE = 0.25
# The sub-problems re-solved exactly, in jobs.
SUB_MILP_JOBS = 300
# Rounds of the priced repair, each with the jobs the last could not fit first.
SQUEAKY_ROUNDS = 4
# Local search gets at most this share of the time left, and at most this long (seconds, plus
# seconds per job): after the LP, where it makes the difference between 0.1 % and 1 %, and
# after the Lagrangian prices, where the jobs are many and the rounding close already.
POLISH_SHARE = 0.5
POLISH_SECONDS_LP = (2.0, 0.002)
POLISH_SECONDS_LAGRANGE = (0.3, 0.0001)
# Local search stops this close to the lower bound (relative): after the LP, whose rounding is
# near-exact, and after the Lagrangian prices, where the jobs are many and each matters little
# (and the time is better kept short: that method is the one for big instances).
POLISH_GAP_LP = 2e-5
# The time-window search after the LP's rounding: window width (slots), seconds per window,
# and its share of the time left.
WINDOW_SLOTS = 8
WINDOW_SECONDS = 1.0
WINDOW_SHARE = 0.6
# ... and it stops this close to the LP bound (relative): each sweep costs seconds.
WINDOW_GAP = 5e-4
# ... and the lagrange method stops searching this close to its bound (relative): the target at
# 10,000 jobs, 0.5 % of the LP bound, which its bound is at most.
LAGRANGE_TARGET_GAP = 5e-3
# Up to this many candidate starts, a lagrange plan further than that from its bound is tried
# again from a restricted LP: each job's starts priced within this many slot-costs of its
# cheapest at the dual prices, given at most this share of the time left.
RESTRICTED_LP_MAX_CANDIDATES = 1_000_000
RESTRICTED_MARGINS = (0.0005, 0.001)
RESTRICTED_LP_SHARE = 0.5
# ... unless the first plan left more than this share of the jobs late: then wide jobs fill the
# machine in lumps, the LP splits them and its rounding is the worse plan (Curie's 1,024-node
# jobs under a power cap: 1.6 % above the LP bound against 1.1 %, for 2 s more).
RESTRICTED_MAX_LATE_SHARE = 0.01

# On the biggest instances (over 2,000,000 candidate starts) a further pass of the priced
# repair is made only if this share of the time limit is left after it: settling, local search
# and the tie shifts after it take 5-8 s at 100,000 x 336.
BIG_RESERVE = 0.35

# Share of the time left, and margin (slot-costs), of the reduced MILP after the LP's rounding.
REDUCED_MILP_SHARE = 0.9
REDUCED_MILP_MARGIN = 0.03

EPS = 1e-9
# HiGHS's absolute MIP gap (its default): an "optimal" MIP value is at most this above the optimum.
HIGHS_MIP_ABS_GAP = 1e-6


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


def _job_objectives(inst: Instance, starts: IntArray) -> FloatArray:
    """Each job's objective at ``starts`` as :func:`evaluate` counts it."""
    price = np.nan_to_num(inst.price, nan=0.0)
    carbon = np.nan_to_num(inst.carbon, nan=0.0)
    w = price / 1000.0 + carbon * inst.carbon_price_gbp_per_tonne / 1e6
    prefix = np.concatenate(([0.0], np.cumsum(w)))
    ends = starts + inst.duration
    return np.asarray((prefix[ends] - prefix[starts]) * inst.power_kw * inst.slot_hours, dtype=np.float64)


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


def violations(inst: Instance, starts: IntArray, late: tuple[int, ...] | list[int] = ()) -> IntArray:
    """The slots where the jobs that are not late exceed node capacity or the power cap."""
    on_time = np.setdiff1d(np.arange(inst.n_jobs), np.asarray(late, dtype=np.int64))
    free_n, free_k = free_capacity(inst, starts, on_time)
    tol_n = EPS * np.maximum(1.0, np.where(np.isfinite(inst.capacity_nodes), np.abs(inst.capacity_nodes), 1.0))
    tol_k = EPS * np.maximum(1.0, np.where(np.isfinite(inst.power_cap_kw), np.abs(inst.power_cap_kw), 1.0))
    return np.flatnonzero((free_n < -tol_n - 1e-6) | (free_k < -tol_k - 1e-6))


def shift_to_earliest_tie(inst: Instance, starts: IntArray) -> IntArray:
    """Move each job to the earliest start that costs the same (within rounding) and still fits.

    Solvers return any one of equally cheap plans; a receding-horizon planner that does not
    prefer the earliest would let a job drift one slot later at every cycle. Room is counted
    against every job's load, late ones included, so no slot gets fuller than it was."""
    if inst.n_jobs == 0:
        return starts
    w = inst.weights()
    out = starts.copy()
    costs = true_costs(inst, w, out)
    tied_earlier = _has_earlier_tie(inst, w, out, costs)
    if not tied_earlier.any():
        return out
    free_nodes, free_kw = free_capacity(inst, out)
    check_kw = bool(np.isfinite(inst.power_cap_kw).any())
    sums: dict[int, FloatArray] = {}
    h = inst.slot_hours
    for j in np.argsort(out, kind="stable"):
        if not tied_earlier[j]:
            continue
        s, r, d = int(out[j]), int(inst.release[j]), int(inst.duration[j])
        if d not in sums:
            sums[d] = window_sums(w, d)
        c = sums[d][r:s] * (inst.power_kw[j] * h)
        n, p = inst.nodes[j], inst.power_kw[j]
        free_nodes[s : s + d] += n
        free_kw[s : s + d] += p
        ok = c <= costs[j] + 1e-9 * abs(costs[j]) + 1e-15
        ok &= window_min(free_nodes[r : s + d - 1], d)[: s - r] >= n - EPS
        if check_kw:
            ok &= window_min(free_kw[r : s + d - 1], d)[: s - r] >= p - EPS
        if ok.any():
            out[j] = s = r + int(np.argmax(ok))
        free_nodes[s : s + d] -= n
        free_kw[s : s + d] -= p
    return out


def _range_min(values: FloatArray, lo: IntArray, hi: IntArray) -> FloatArray:
    """min(values[lo[i]:hi[i]]) for each i (hi > lo), from a sparse table: O(n log n + queries)."""
    table = [values]
    while 2 ** len(table) <= values.size:
        prev, half = table[-1], 2 ** (len(table) - 1)
        table.append(np.minimum(prev[:-half], prev[half:]))
    length = hi - lo
    k = np.floor(np.log2(np.maximum(length, 1))).astype(np.int64)
    out = np.empty(lo.size)
    for level in np.unique(k):
        sel = k == level
        row = table[int(level)]
        out[sel] = np.minimum(row[lo[sel]], row[hi[sel] - 2 ** int(level)])
    return out


def _has_earlier_tie(inst: Instance, weights: FloatArray, starts: IntArray, costs: FloatArray) -> IntArray:
    """Per job: whether some earlier start in its window costs the same (within rounding)."""
    out = np.zeros(inst.n_jobs, dtype=bool)
    movable = (starts > inst.release) & np.isfinite(costs)
    for d in np.unique(inst.duration[movable]):
        jobs = np.flatnonzero(movable & (inst.duration == d))
        sums = window_sums(weights, int(d))
        low = _range_min(sums, inst.release[jobs], starts[jobs])
        cheapest = low * inst.power_kw[jobs] * inst.slot_hours
        out[jobs] = cheapest <= costs[jobs] + 1e-9 * np.abs(costs[jobs]) + 1e-15
    return out


def apply_min_saving(inst: Instance, starts: IntArray, fraction: float, late: tuple[int, ...] = ()) -> IntArray:
    """Move a job back to its release slot when the later start saves less than ``fraction`` of
    its cost there and the release slot has room (jobs in EDF order). Room is counted against
    every job's load, late ones included."""
    if fraction <= 0 or inst.n_jobs == 0:
        return starts
    w = inst.weights()
    out = starts.copy()
    at_release = true_costs(inst, w, inst.release)
    planned = true_costs(inst, w, out)
    small = (out != inst.release) & np.isfinite(at_release) & (at_release - planned < fraction * at_release)
    if late:
        small[list(late)] = False
    if not small.any():
        return out
    free_nodes, free_kw = free_capacity(inst, out)
    for j in np.flatnonzero(small)[np.argsort(inst.latest_start[small], kind="stable")]:
        d, r, s = int(inst.duration[j]), int(inst.release[j]), int(out[j])
        n, p = inst.nodes[j], inst.power_kw[j]
        # Free the job's current slots, then check the release window.
        free_nodes[s : s + d] += n
        free_kw[s : s + d] += p
        if free_nodes[r : r + d].min() >= n - EPS and free_kw[r : r + d].min() >= p - EPS:
            out[j] = r
        free_nodes[int(out[j]) : int(out[j]) + d] -= n
        free_kw[int(out[j]) : int(out[j]) + d] -= p
    return out


# -- the pieces every capacity-aware method shares ---------------------------------------------


def _seconds(rule: tuple[float, float], inst: Instance) -> float:
    return rule[0] + rule[1] * inst.n_jobs


class _Clock:
    def __init__(self, time_limit: float) -> None:
        self.t0 = time.perf_counter()
        self.limit = time_limit

    def left(self) -> float:
        return self.limit - (time.perf_counter() - self.t0)


def _per_job(cands: Candidates, values: npt.NDArray[ScalarT], default: npt.NDArray[ScalarT]) -> npt.NDArray[ScalarT]:
    """Per-listed-job ``values`` spread over all jobs, ``default`` for jobs not listed."""
    out = default.copy()
    out[cands.jobs] = values
    return out


def _floor_costs(inst: Instance, cands: Candidates) -> FloatArray:
    """Each job's cost in its cheapest window (inf for jobs with no candidate)."""
    zero = np.zeros(inst.n_slots)
    return _per_job(cands, price_out(inst, cands, zero, zero).costs, np.full(inst.n_jobs, np.inf))


def _polish(
    inst: Instance,
    cands: Candidates,
    starts: IntArray,
    late: list[int],
    lam: FloatArray,
    mu: FloatArray,
    clock: _Clock,
    budget: float,
    bound: float | None = None,
    gap: float = 2e-5,
    size: int = 60,
) -> IntArray:
    """Large-neighbourhood search: for the jobs whose start costs most above their cheapest at
    the capacity prices (reduced cost: what keeps the plan from the bound), re-solve the MILP
    exactly on the job and the jobs occupying the slots where the prices say it belongs, the
    others held where they are; keep each result that is cheaper.

    This finds the exchanges single moves cannot (a job into a full cheap slot, the job there
    out to where it costs less extra, and so on, to any depth within the neighbourhood). The
    plan held so far is a solution of each sub-problem, so a sub-problem never makes it worse,
    and each re-plan stays within capacity. Stops once within ``gap`` (relative) of ``bound``."""
    stop = time.perf_counter() + max(0.0, min(budget, clock.left()))
    on_time = np.ones(inst.n_jobs, dtype=bool)
    on_time[late] = False
    out = starts.copy()
    cand_job = cands.jobs[cands.job]
    pricing = price_out(inst, cands, lam, mu)
    best_priced = _per_job(cands, pricing.priced, np.full(inst.n_jobs, np.inf))
    target_of = _per_job(cands, pricing.starts, inst.release.copy())
    code = np.searchsorted(cands.durations, inst.duration)
    node_win = window_table(lam, cands.durations, inst.n_slots).ravel()
    kw_win = window_table(mu, cands.durations, inst.n_slots).ravel()

    def reduced(plan: IntArray) -> FloatArray:
        flat = code * inst.n_slots + plan
        priced = _job_objectives(inst, plan) + inst.nodes * node_win[flat] + inst.power_kw * kw_win[flat]
        return np.where(on_time & np.isfinite(best_priced), priced - best_priced, -np.inf)

    current = _job_objectives(inst, out)
    rc = reduced(out)
    threshold = 1e-9 * (np.abs(current) + 1) + 1e-12
    done = np.zeros(inst.n_jobs, dtype=bool)
    for _ in range(2):
        ranked = np.argsort(-rc, kind="stable")
        ranked = ranked[(rc[ranked] > threshold[ranked]) & ~done[ranked]]
        if ranked.size == 0:
            break
        for a in ranked:
            if time.perf_counter() > stop:
                return out
            if bound is not None and float(current[on_time].sum()) <= bound + gap * abs(bound):
                return out
            if rc[a] <= threshold[a]:
                continue
            done[a] = True
            target = int(target_of[a])
            if target == out[a]:
                continue
            d = int(inst.duration[a])
            # The jobs occupying the target slots, most node-slots in the way first, enough of
            # them to make room twice over (when they are that many).
            run_lo = np.maximum(out, target)
            run_hi = np.minimum(out + inst.duration, target + d)
            overlap = np.where(on_time, np.maximum(run_hi - run_lo, 0), 0) * inst.nodes
            overlap[a] = 0
            others = np.flatnonzero(overlap > 0)
            others = others[np.argsort(-overlap[others], kind="stable")]
            enough = int(np.searchsorted(np.cumsum(overlap[others]), 2.0 * inst.nodes[a] * d)) + 1
            others = others[: max(min(enough, size - 1), min(others.size, size // 2))]
            pool = np.concatenate(([a], others)).astype(np.int64)
            chosen = np.zeros(inst.n_jobs, dtype=bool)
            chosen[pool] = True
            res = solve_milp(
                inst,
                time_limit=max(0.05, min(0.3, stop - time.perf_counter())),
                jobs=pool,
                fixed=np.flatnonzero(on_time & ~chosen),
                starts=out,
                keep=chosen[cand_job],
                cands=cands,
                rel_gap=1e-6,
            )
            if res.starts is None or res.late:
                continue
            new = _job_objectives(inst, res.starts)
            if float(new[pool].sum()) < float(current[pool].sum()) - 1e-12:
                out = res.starts
                current[pool] = new[pool]
                rc = reduced(out)
                done[pool] = False
                done[a] = True
    return out


def _window_polish(
    inst: Instance,
    cands: Candidates,
    starts: IntArray,
    late: list[int],
    clock: _Clock,
    budget: float,
    bound: float | None,
    gap: float,
) -> IntArray:
    """Large-neighbourhood search by time window: re-solve the MILP exactly on every job running
    in a window of :data:`WINDOW_SLOTS` slots, the others held where they are, sliding the window
    across the horizon (half a window at a time) while time and improvement last.

    Where capacity is tight the LP's rounding leaves groups of jobs that block one another in
    the same hours; freeing everything in those hours at once finds the exchanges that
    neighbourhoods built around one job's price-preferred start do not (measured on the tight
    bench instances at 90 % utilisation: 0.74 % above the LP bound down to 0.53 % in one sweep).
    Each sub-problem starts from the plan held, so the plan never gets worse or over capacity."""
    stop = time.perf_counter() + max(0.0, min(budget, clock.left()))
    on_time = np.ones(inst.n_jobs, dtype=bool)
    on_time[late] = False
    out = starts.copy()
    value = float(_job_objectives(inst, out)[on_time].sum())
    step = max(1, WINDOW_SLOTS // 2)
    floor = _floor_costs(inst, cands)
    while True:
        before = value
        # The windows where jobs sit furthest above their cheapest start first: time may not
        # allow a whole sweep.
        excess = np.where(on_time, _job_objectives(inst, out) - floor, 0.0)
        excess = np.where(np.isfinite(excess), np.maximum(excess, 0.0), 0.0)
        lows = np.arange(0, inst.n_slots, step)
        weight = np.array(
            [excess[(out < t + WINDOW_SLOTS) & (out + inst.duration > t)].sum() for t in lows], dtype=np.float64
        )
        for t in lows[np.argsort(-weight, kind="stable")]:
            left = stop - time.perf_counter()
            if left <= 0.05 or (bound is not None and value <= bound + gap * abs(bound)):
                return out
            running = on_time & (out < t + WINDOW_SLOTS) & (out + inst.duration > t)
            pool = np.flatnonzero(running)
            if pool.size == 0:
                continue
            res = solve_milp(
                inst,
                time_limit=min(WINDOW_SECONDS, left),
                jobs=pool,
                fixed=np.flatnonzero(on_time & ~running),
                starts=out,
                cands=cands,
                rel_gap=1e-6,
            )
            if res.starts is None or res.late:
                continue
            new = float(_job_objectives(inst, res.starts)[on_time].sum())
            if new < value - 1e-12 * (abs(value) + 1):
                out, value = res.starts, new
        if value >= before - 1e-9 * (abs(before) + 1):
            return out


def _settle(
    inst: Instance,
    cands: Candidates,
    starts: IntArray,
    late: list[int],
    w: FloatArray,
    lam: FloatArray,
    mu: FloatArray,
    clock: _Clock,
    *,
    thorough: bool = True,
) -> tuple[IntArray, list[int], str]:
    """Try to place the jobs a plan left late; returns the plan, the jobs still late and how it
    was shown that they must be ("" when nothing is late).

    First other jobs are moved out of the way, singly (:func:`make_room`), then by local search
    on the overflow (:func:`min_conflicts`); then the MILP is solved on the conflicted
    sub-problem (the late jobs and the jobs running in their windows), growing it up to the
    whole instance. Only if the whole-instance MILP or the LP relaxation has no plan meeting
    every deadline is a job left late, and then the MILP with late variables leaves the fewest."""
    if not late:
        return starts, [], ""
    # Placing late jobs comes before the time limit (a job called late when a plan exists is
    # the one wrong answer): the thorough search gets at least a second plus a little per late
    # job, whatever is left; the fast one a few milliseconds.
    floor = 0.0 if not thorough else 1.0 + 0.02 * len(late)
    room_budget = (
        _seconds((0.01, 0.0001), inst) if not thorough else max(floor, min(clock.left(), 0.5 + 0.001 * inst.n_jobs))
    )
    # Moving blockers one late job at a time places them at the better starts, but at many late
    # jobs it is slow (100,000 x 336 LLNL with a cap: 30 s for 1,459 of them, where the search
    # on the overflow below places them all in under 2 s): it gets a share of the time left
    # first, and whatever that share leaves once the overflow search is done.
    room_end = time.perf_counter() + room_budget
    first_pass = min(room_budget, max(ROOM_FIRST_SECONDS, ROOM_FIRST_SHARE * clock.left())) if thorough else room_budget
    starts, late = make_room(inst, starts, late, w, lam, mu, deadline=time.perf_counter() + first_pass)
    n_cands = cands.n_candidates
    small = n_cands <= MILP_MAX_VARIABLES
    if late and not (small and thorough):
        # Small models go straight to the MILP below, which settles them at once either way.
        # The fast method (re-planning every slot of a simulation) gets a few milliseconds.
        rule = (0.01, 0.00005) if not thorough else (0.05, 0.01)
        budget = max(floor, min(clock.left() * 0.25, _seconds(rule, inst)))
        starts, late = min_conflicts(inst, starts, late, w, deadline=time.perf_counter() + budget)
    if late and thorough and time.perf_counter() < room_end:
        starts, late = make_room(inst, starts, late, w, lam, mu, deadline=room_end)
    if not late:
        return starts, [], ""
    if not thorough:
        return starts, late, "not proven: moving other jobs made no room, and the search stopped there"
    end = time.perf_counter() + max(clock.left(), 2 * floor)

    def left() -> float:
        return end - time.perf_counter()

    proof = ""
    whole_tried = False
    for size in (inst.n_jobs,) if small else (SUB_MILP_JOBS, 4 * SUB_MILP_JOBS, inst.n_jobs):
        if left() <= 0:
            break
        late_mask = np.zeros(inst.n_jobs, dtype=bool)
        late_mask[late] = True
        lo, hi = inst.release[late].min(), inst.deadline[late].max()
        # The jobs running in the late jobs' windows, the most movable (widest window) first.
        near = np.flatnonzero((starts < hi) & (starts + inst.duration > lo) & ~late_mask)
        near = near[np.argsort(-(inst.latest_start - inst.release)[near], kind="stable")]
        sub = np.concatenate((np.asarray(late, dtype=np.int64), near[: max(0, size - len(late))]))
        whole = size >= inst.n_jobs
        if whole:
            if n_cands > MILP_SETTLE_MAX_VARIABLES:
                break
            sub = np.arange(inst.n_jobs)
        in_sub = np.zeros(inst.n_jobs, dtype=bool)
        in_sub[sub] = True
        res = solve_milp(
            inst,
            time_limit=max(0.1, left() * (0.5 if whole else 0.1)),
            jobs=sub,
            fixed=np.flatnonzero(~late_mask & ~in_sub),
            starts=starts,
            cands=cands,
            feasibility=True,
        )
        if res.starts is not None and not res.late:
            return res.starts, [], ""
        if whole:
            whole_tried = True
            if res.infeasible:
                proof = "proven: the MILP has no plan meeting every deadline within capacity"
        if sub.size >= inst.n_jobs:
            break
    # Not placed: show that no plan meets every deadline, then leave as few jobs late as can be.
    if (
        not proof
        and left() > 0
        and n_cands <= MILP_SETTLE_MAX_VARIABLES
        and lp_deadlines_feasible(inst, time_limit=max(0.1, left() * 0.5)) is False
    ):
        proof = "proven: the LP relaxation has no plan meeting every deadline within capacity"
    if proof and left() > 0 and n_cands <= MILP_SETTLE_MAX_VARIABLES:
        res = solve_milp(inst, time_limit=max(0.1, left() * 0.5), cands=cands, allow_late=True, feasibility=True)
        if res.starts is not None and len(res.late) <= len(late):
            starts, late = res.starts, list(res.late)
            if res.optimal:
                proof += "; no plan leaves fewer jobs late"
    if not proof:
        proof = "not proven: no plan found within the time limit" + (
            "" if not whole_tried else ", and the LP relaxation did not rule one out"
        )
    return starts, late, proof


def _late_reasons(inst: Instance, starts: IntArray, late: list[int], proof: str) -> dict[str, LateReason]:
    """Why each late job is late: the slots of its window where capacity (left by the jobs that
    are not late) is too small for it."""
    if not late:
        return {}
    free_n, free_k = free_capacity(inst, starts, np.setdiff1d(np.arange(inst.n_jobs), late))
    reasons: dict[str, LateReason] = {}
    for j in late:
        lo, hi = int(inst.release[j]), int(min(inst.deadline[j], inst.n_slots))
        d = int(inst.duration[j])
        if hi - lo < d:
            reasons[inst.job_ids[j]] = LateReason(
                binding_slots=(),
                resource="window",
                detail=f"its window (slots {lo}-{hi - 1}) is shorter than its {d} slots",
            )
            continue
        slots = np.arange(lo, hi)
        short_n = free_n[lo:hi] < inst.nodes[j] - EPS
        short_k = free_k[lo:hi] < inst.power_kw[j] - EPS
        binding = slots[short_n | short_k]
        resource = "nodes and power" if short_n.any() and short_k.any() else ("power" if short_k.any() else "nodes")
        reasons[inst.job_ids[j]] = LateReason(
            binding_slots=tuple(int(t) for t in binding),
            resource=resource,
            detail=proof,
        )
    return reasons


def _certified(inst: Instance, cands: Candidates, lam: FloatArray, mu: FloatArray) -> float:
    """The bound an LP's capacity prices certify: the Lagrangian dual at them, in exact
    arithmetic. The LP's own optimum is only as exact as HiGHS's tolerances (1e-7 on reduced
    costs), which on a plan worth pennies is more than the difference between two starts."""
    return price_out(inst, cands, lam, mu).bound


def _bound_without(inst: Instance, late: list[int], time_limit: float) -> float | None:
    """A lower bound on any plan leaving ``late`` late: the LP (or Lagrangian dual) bound of the
    others plus the late jobs' cost at release."""
    reduced = inst
    late_cost = 0.0
    if late:
        idx = np.asarray(late, dtype=np.int64)
        deadline = inst.deadline.copy()
        deadline[idx] = inst.release[idx] + inst.duration[idx] - 1  # no start left: out of the model
        reduced = replace(inst, deadline=deadline)
        late_cost = float(_job_objectives(inst, inst.release)[idx].sum())
    cands = candidates(reduced)
    if cands.n_candidates <= LP_BOUND_MAX_VARIABLES:
        lp = lp_relaxation(reduced, time_limit=max(1.0, time_limit), cands=cands)
        if lp is not None and not lp.infeasible:
            return _certified(reduced, cands, lp.node_prices, lp.kw_prices) + late_cost
    dual = smooth_dual(reduced, cands, time_limit=max(0.5, time_limit))
    return dual.bound + late_cost if np.isfinite(dual.bound) else None


def _round(
    inst: Instance,
    cands: Candidates,
    preferred: IntArray,
    sure: npt.NDArray[Any],  # bool per job: the prices (or the LP) are sure of its start
    lam: FloatArray,
    mu: FloatArray,
    clock: _Clock,
    polish_seconds: float,
    thorough: bool = True,
    bound: float | None = None,
    gap: float = POLISH_GAP_LP,
) -> tuple[IntArray, list[int], str]:
    """A plan from priced preferences: jobs the prices are sure of first, then the others, each
    at its preferred start if it fits or the cheapest feasible at the prices; then finished by
    :func:`_finish`.

    Jobs the pass cannot fit go to the front of the order and the pass runs again (the
    "squeaky wheel": what was hard to place is placed while there is room), a few times while
    it leaves fewer late jobs: a job placed late, by moving others, lands where it costs more."""
    order = np.lexsort((-inst.nodes, inst.latest_start, ~sure.astype(bool)))
    starts, late = _squeaky(inst, preferred, lam, mu, clock, None, order)
    return _finish(inst, cands, starts, late, lam, mu, clock, polish_seconds, thorough, bound, gap)


def _squeaky(
    inst: Instance,
    preferred: IntArray,
    lam: FloatArray,
    mu: FloatArray,
    clock: _Clock,
    first: tuple[IntArray, list[int]] | None = None,
    order: IntArray | None = None,
    round_seconds: float = 0.0,
    reserve: float = 0.2,
) -> tuple[IntArray, list[int]]:
    """The priced repair, again with the jobs the last pass could not fit first (the "squeaky
    wheel": what was hard to place is placed while there is room), a few times while it leaves
    fewer late jobs; the plan with the fewest, then the cheapest. ``first``: a plan already
    made (its late jobs go first in the next pass), which took ``round_seconds``. A pass starts
    only if it would leave ``reserve`` of the time limit, at the longest pass's time so far."""
    w = inst.weights()
    if order is None:
        order = np.lexsort((-inst.nodes, inst.latest_start))
    best: tuple[int, float, IntArray, list[int]] | None = None
    for _ in range(SQUEAKY_ROUNDS):
        if first is not None:
            starts, late = first
            first = None
        else:
            r0 = time.perf_counter()
            starts, late = repair(inst, preferred, w, lam, mu, order=order)
            round_seconds = max(round_seconds, time.perf_counter() - r0)
        key = (len(late), float(_job_objectives(inst, starts).sum()))
        progress = best is None or key[0] < best[0]
        if best is None or key < best[:2]:
            best = (*key, starts, late)
        if not late or not progress or clock.left() - round_seconds < reserve * clock.limit:
            break
        front = np.zeros(inst.n_jobs, dtype=bool)
        front[late] = True
        order = np.concatenate((order[front[order]], order[~front[order]]))
    assert best is not None
    return best[2], best[3]


def _finish(
    inst: Instance,
    cands: Candidates,
    starts: IntArray,
    late: list[int],
    lam: FloatArray,
    mu: FloatArray,
    clock: _Clock,
    polish_seconds: float,
    thorough: bool = True,
    bound: float | None = None,
    gap: float = POLISH_GAP_LP,
) -> tuple[IntArray, list[int], str]:
    """Settle the late jobs, then local search and the exact re-solve of neighbourhoods (for at
    most ``polish_seconds``, and half the time left)."""
    w = inst.weights()
    starts, late, proof = _settle(inst, cands, starts, late, w, lam, mu, clock, thorough=thorough)
    floor = _floor_costs(inst, cands)
    # One pass of local search on the biggest instances: the second rarely pays for its time.
    starts = improve(inst, starts, w, passes=1 if inst.n_jobs > 50_000 else 2, floor_costs=floor, late=late)
    if polish_seconds > 0:
        budget = min(POLISH_SHARE * clock.left(), polish_seconds)
        late_cost = float(_job_objectives(inst, starts)[late].sum()) if late else 0.0
        target = None if bound is None else bound - late_cost
        starts = _polish(inst, cands, starts, late, lam, mu, clock, budget, target, gap)
        starts = improve(inst, starts, w, passes=1, floor_costs=floor, late=late)
    return starts, late, proof


def _plan_from_dive(
    inst: Instance,
    cands: Candidates,
    dive: DiveResult,
    clock: _Clock,
    polish_seconds: float,
    bound: float,
    window_share: float,
    polish_gap: float = POLISH_GAP_LP,
    window_gap: float = WINDOW_GAP,
    deadline_order: bool = True,
) -> tuple[IntArray, list[int], str]:
    """A plan from an LP dive: its plan when complete, else the best of priced repairs from
    where it got to and from its first LP (biggest-for-its-window first, and unless
    ``deadline_order`` is False in deadline order too); then settled, searched locally and
    re-solved by neighbourhoods (:func:`_finish`) and by time windows (:func:`_window_polish`,
    for ``window_share`` of the time left) while more than ``polish_gap``/``window_gap`` above
    ``bound``."""
    lam, mu = dive.node_prices, dive.kw_prices
    plans: list[tuple[IntArray, list[int]]] = []
    w = inst.weights()
    size = inst.nodes * inst.duration / np.maximum(inst.latest_start - inst.release + 1.0, 1.0)
    roots: list[tuple[IntArray, IntArray]] = []
    if dive.complete:
        plans.append((dive.preferred, []))
    else:
        # The dive got stuck: round from where it got to too.
        roots.append((dive.preferred, dive.integral))
    if not np.array_equal(dive.preferred, dive.root_preferred):
        # Round from the first LP, in deadline order and biggest-for-its-window first, and keep
        # the best. Even when the dive completes: each rounding takes milliseconds, and on the
        # tight 1,000-job instances one of them is at times far the better start for the local
        # search (LLNL 75 %: 0.06 % above the LP bound against the dive's 0.39 %).
        roots.append((dive.root_preferred, dive.root_integral))
    for pref, integral in roots:
        orders = [np.argsort(-size, kind="stable")]
        if deadline_order:
            orders.insert(0, np.lexsort((-inst.nodes, inst.latest_start, ~integral)))
        for order in orders:
            if deadline_order:
                plans.append(repair(inst, pref, w, lam, mu, order=order))
            else:
                # Alone, it goes on while it leaves fewer late jobs, those first.
                plans.append(_squeaky(inst, pref, lam, mu, clock, None, order))
    best: tuple[int, float, IntArray, list[int], str] | None = None
    for cand_starts, cand_late in plans:
        s_, l_, p_ = _finish(inst, cands, cand_starts, cand_late, lam, mu, clock, 0.0)
        key = (len(l_), evaluate(inst, s_)[3])
        if best is None or key < best[:2]:
            best = (*key, s_, l_, p_)
    assert best is not None
    starts, late, proof = best[2], best[3], best[4]
    if polish_seconds > 0:
        starts, late, proof = _finish(
            inst, cands, starts, late, lam, mu, clock, polish_seconds, bound=bound, gap=polish_gap
        )
    if window_share > 0:
        starts = _window_polish(inst, cands, starts, late, clock, window_share * clock.left(), bound, window_gap)
    if window_share > 0 and REDUCED_MILP_SHARE > 0 and not late and _gap(inst, starts, late, bound) > window_gap:
        # Then, with most of the time left, the exact MILP over the starts priced near each
        # job's cheapest at the LP's prices (the LP optimum's support and its neighbours) and
        # the plan's, started from it: the exchanges no one window holds.
        keep = within(cands, inst.n_slots, lam, mu, REDUCED_MILP_MARGIN)
        keep |= cands.start == starts[cands.jobs[cands.job]]
        res = solve_milp(
            inst, time_limit=REDUCED_MILP_SHARE * clock.left(), cands=cands, keep=keep, starts=starts, rel_gap=1e-5
        )
        if res.starts is not None and not res.late and evaluate(inst, res.starts)[3] < evaluate(inst, starts)[3]:
            starts = res.starts
    return starts, late, proof


def _gap(inst: Instance, starts: IntArray, late: list[int], bound: float) -> float:
    """How far the on-time jobs' objective is above ``bound`` (relative; inf with late jobs)."""
    if late:
        return float("inf")
    value = evaluate(inst, starts)[3]
    return (value - bound) / max(abs(bound), 1e-12)


def _lagrange_plan(
    inst: Instance, cands: Candidates, dual: DualResult, clock: _Clock
) -> tuple[IntArray, list[int], str, float | None]:
    """The plan of the ``lagrange`` method from the smoothed dual's prices, with its bound.

    The prices' preferred starts are rounded as :func:`_round` does (without the exact
    re-solves; its late jobs are settled only if no later plan does without them), and when
    that leaves jobs late, also with the biggest jobs for their window first. If that
    plan is further than :data:`LAGRANGE_TARGET_GAP` from the bound and the instance is not too
    big, a restricted LP is solved by HiGHS: each job's starts priced within a margin of its
    cheapest (a few per job instead of its whole window) and the plans' starts so far, rounded
    by :func:`_plan_from_dive`; with a wider margin if still above the target. Its duals are
    prices too, and the Lagrangian dual at them over every candidate start is a bound like the
    smoothed one (at times a better one). The best plan is then searched locally while time
    lasts and the gap is above the target."""
    pref = _per_job(cands, dual.pricing.starts, inst.release.copy())
    sure = _per_job(cands, dual.pricing.margin > 1e-3 * cands.scale, np.zeros(inst.n_jobs, dtype=bool))
    big = cands.n_candidates > 2_000_000
    bound = dual.bound
    lam, mu = dual.lam, dual.mu
    polish = 0.0 if big else _seconds(POLISH_SECONDS_LAGRANGE, inst)
    order = np.lexsort((-inst.nodes, inst.latest_start, ~sure.astype(bool)))
    w = inst.weights()
    r0 = time.perf_counter()
    first = repair(inst, pref, w, lam, mu, order=order)
    first_seconds = time.perf_counter() - r0
    if first[1] and (not big or clock.left() - first_seconds > BIG_RESERVE * clock.limit):
        # Also the jobs the prices are sure of first, then biggest for its window first: where
        # wide jobs fill the machine in lumps, placing them before the small ones that would
        # fill their room (in deadline order) leaves far fewer late and a far cheaper plan
        # (Curie at 85 % with a power cap, 10,000 x 96: 1.4 % above the LP bound after
        # settling against 0.6 %). The one with fewer late jobs, then the cheaper, goes on.
        size = inst.nodes * inst.duration / np.maximum(inst.latest_start - inst.release + 1.0, 1.0)
        by_size = np.lexsort((-size, ~sure.astype(bool)))
        alt = repair(inst, pref, w, lam, mu, order=by_size)
        if (len(alt[1]), evaluate(inst, alt[0])[3]) < (len(first[1]), evaluate(inst, first[0])[3]):
            first, order = alt, by_size
    starts, late, proof = first[0], first[1], ""
    settled = not late
    if settled:
        starts, late, proof = _finish(inst, cands, starts, late, lam, mu, clock, 0.0)
    eligible = (
        cands.n_candidates <= RESTRICTED_LP_MAX_CANDIDATES
        and not dual.infeasible
        and len(first[1]) <= RESTRICTED_MAX_LATE_SHARE * inst.n_jobs
    )
    for margin in RESTRICTED_MARGINS if eligible else ():
        if _gap(inst, starts, late, bound) <= LAGRANGE_TARGET_GAP or clock.left() < 0.25 * clock.limit:
            break
        # The columns: the starts priced near their job's cheapest, and the plans' so far (the
        # restricted LP then has a solution whenever one of them is complete).
        keep = within(cands, inst.n_slots, dual.lam, dual.mu, margin)
        keep |= cands.start == first[0][cands.jobs[cands.job]]
        keep |= cands.start == starts[cands.jobs[cands.job]]
        rlp = lp_relaxation(inst, time_limit=max(0.1, RESTRICTED_LP_SHARE * clock.left()), cands=select(cands, keep))
        if rlp is None or rlp.infeasible:
            continue
        bound = max(bound, price_out(inst, cands, rlp.node_prices, rlp.kw_prices).bound)
        if rlp.value > bound + LAGRANGE_TARGET_GAP * abs(bound):
            continue  # no plan on these columns is within the target: wider ones, if any
        # Rounded as a dive that stopped at its first LP: from its heaviest starts, biggest for
        # its window first (only: in deadline order the jobs the LP splits, often the biggest,
        # are left the dear starts; measured on the bench's capped instances).
        root = DiveResult(
            rlp.preferred, rlp.integral, False, rlp.value, rlp.node_prices, rlp.kw_prices, rlp.preferred, rlp.integral
        )
        rounded = _plan_from_dive(inst, cands, root, clock, 0.0, bound, 0.0, deadline_order=False)
        plan = (*rounded, rlp.node_prices, rlp.kw_prices)
        if plan[1]:
            continue
        # A wider margin makes the LP nearer the whole one, not its rounding better: it is
        # tried only when this rounding came near the target.
        widen = _gap(inst, plan[0], plan[1], bound) <= 2 * LAGRANGE_TARGET_GAP
        if not settled or evaluate(inst, plan[0])[3] < evaluate(inst, starts)[3]:
            # Complete and cheaper (the first plan's late jobs then need not be settled).
            starts, late, proof, lam, mu = plan
            settled = True
        if not widen:
            break
    if first[1] and _gap(inst, starts, late, bound) > LAGRANGE_TARGET_GAP:
        # The first plan's late jobs, settled: at times the better plan after all.
        # On the biggest instances a pass costs seconds, and the settling, local search and tie
        # shifts after it about a third of the time limit (100,000 x 336: 2.5-3.5 s a pass, 5-8 s
        # after): a pass is made only if that much is left after it.
        reserve = BIG_RESERVE if big else 0.2
        a_starts, a_late = _squeaky(
            inst, pref, dual.lam, dual.mu, clock, first, order, round_seconds=first_seconds, reserve=reserve
        )
        a_starts, a_late, a_proof = _finish(inst, cands, a_starts, a_late, dual.lam, dual.mu, clock, 0.0)
        if not settled or (len(a_late), evaluate(inst, a_starts)[3]) < (len(late), evaluate(inst, starts)[3]):
            starts, late, proof, lam, mu = a_starts, a_late, a_proof, dual.lam, dual.mu
    if polish > 0 and _gap(inst, starts, late, bound) > LAGRANGE_TARGET_GAP:
        starts, late, proof = _finish(
            inst, cands, starts, late, lam, mu, clock, polish, bound=bound, gap=LAGRANGE_TARGET_GAP
        )
    lower = bound if not late and not dual.infeasible else None
    return starts, late, proof, lower


def solve(
    inst: Instance,
    *,
    method: Method = "auto",
    time_limit: float = 20.0,
    min_saving_fraction: float = 0.0,
    bound: bool = True,
) -> Solution:
    """Plan ``inst``. ``bound`` asks for a certified lower bound where the method has none of its
    own (``greedy``, ``best-window``); every other method reports the bound it proves anyway."""
    clock = _Clock(time_limit)
    t0 = clock.t0
    late: list[int] = []
    proof = ""
    lower: float | None = None
    zero = np.zeros(inst.n_slots)
    if method == "auto":
        n_cands = candidate_count(inst)
        if not capacity_binds(inst):
            method = "exact"
        elif n_cands <= MILP_MAX_VARIABLES:
            method = "milp"
        elif n_cands <= LP_ROUNDING_MAX_VARIABLES:
            method = "lp-rounding"
        else:
            method = "lagrange"
    used: str = method
    if method in ("exact", "best-window"):
        if method == "exact" and capacity_binds(inst):
            raise PlanningError("the exact per-job method ignores capacity; use it only when none binds")
        starts = best_window(inst)
        if method == "exact":
            lower = evaluate(inst, starts)[3]
    elif method == "greedy":
        cands = candidates(inst)
        starts, late = repair(inst, best_window(inst), inst.weights(), zero, zero)
        starts, late, proof = _settle(inst, cands, starts, late, inst.weights(), zero, zero, clock)
    elif method == "fast":
        starts = best_window(inst)
        fits = violations(inst, starts).size == 0
        if fits:
            used = "exact"
            lower = evaluate(inst, starts)[3]
        else:
            lres = solve_lagrange(inst, time_limit=time_limit, max_iterations=25, repairs_at=(0, 12))
            starts, late, used = lres.starts, lres.late, "lagrange"
            w = inst.weights()
            lam, mu = lres.node_prices, lres.kw_prices
            if late:
                starts, late = _squeaky(inst, lres.preferred, lam, mu, clock, (starts, late))
            if late:
                # Moving other jobs out of the way first, for a few milliseconds: this method
                # runs every slot of a year-long simulation, and that usually places them. What
                # it cannot place gets the thorough search (sub-problem MILPs) before anything is
                # called late: a false "late" runs the job early, outside the cleanest hours.
                cands = candidates(inst)
                small = cands.n_candidates <= FAST_PROOF_MAX_VARIABLES
                if not small:
                    starts, late, proof = _settle(inst, cands, starts, late, w, lam, mu, clock, thorough=False)
                if late:
                    starts, late, proof = _settle(inst, cands, starts, late, w, lam, mu, clock)
                if not late:
                    starts = improve(inst, starts, w)
            if np.isfinite(lres.lower_bound) and not late:
                lower = lres.lower_bound
    elif method == "lp-rounding":
        cands = candidates(inst)
        dive = lp_dive(inst, cands, time_limit=max(0.1, clock.left() * 0.4))
        if dive is not None:
            starts, late, proof = _plan_from_dive(
                inst, cands, dive, clock, _seconds(POLISH_SECONDS_LP, inst), dive.value, WINDOW_SHARE
            )
            if not late:
                lower = _certified(inst, cands, dive.node_prices, dive.kw_prices)
        else:
            relaxed = lp_relaxation(inst, time_limit=max(0.1, clock.left() * 0.5), cands=cands)
            if relaxed is None or relaxed.infeasible:
                # No LP plan in time, or none at all: the dual prices still make a good plan,
                # and settling the late jobs decides which cannot be on time.
                dual = smooth_dual(inst, cands, time_limit=max(0.1, clock.left() * 0.3))
                pref = _per_job(cands, dual.pricing.starts, inst.release.copy())
                sure = _per_job(cands, dual.pricing.margin > 1e-3 * cands.scale, np.zeros(inst.n_jobs, dtype=bool))
                starts, late, proof = _round(
                    inst,
                    cands,
                    pref,
                    sure,
                    dual.lam,
                    dual.mu,
                    clock,
                    _seconds(POLISH_SECONDS_LP, inst),
                    bound=dual.bound,
                )
                if not late:
                    lower = dual.bound
                used = "lagrange"
            else:
                starts, late, proof = _round(
                    inst,
                    cands,
                    relaxed.preferred,
                    relaxed.integral,
                    relaxed.node_prices,
                    relaxed.kw_prices,
                    clock,
                    _seconds(POLISH_SECONDS_LP, inst),
                    bound=relaxed.value,
                )
                if not late:
                    lower = _certified(inst, cands, relaxed.node_prices, relaxed.kw_prices)
    elif method == "lagrange":
        cands = candidates(inst)
        dual = smooth_dual(inst, cands, time_limit=max(0.1, clock.left() * 0.4))
        starts, late, proof, lower = _lagrange_plan(inst, cands, dual, clock)
    elif method == "milp":
        cands = candidates(inst)
        w = inst.weights()
        # A quick plan first: HiGHS starts from it, so it prunes from the first node and the
        # MILP's answer is never worse than it.
        greedy_starts, greedy_late = repair(inst, best_window(inst), w, zero, zero)
        if not greedy_late:
            greedy_starts = improve(inst, greedy_starts, w)
        mres = solve_milp(inst, time_limit=max(0.1, clock.left() * 0.8), cands=cands, starts=greedy_starts)
        if mres.starts is not None:
            # Its late jobs, if any, are those whose window is empty: every other job is planned.
            starts, late = mres.starts, list(mres.late)
            used = "milp" if mres.optimal else "milp (time limit)"
            # "Optimal" is within HiGHS's gaps, the absolute one of which (1e-6 GBP) can be most
            # of a tiny objective: single moves pick up what they let through, and the bound
            # allows for it.
            starts = improve(inst, starts, w, late=late)
            if not late:
                lower = mres.value - HIGHS_MIP_ABS_GAP if mres.optimal and mres.value is not None else mres.bound
        else:
            starts, late = greedy_starts, greedy_late
            used = "milp" if mres.infeasible else "milp (time limit)"
            if late:
                starts, late, proof = _settle(inst, cands, starts, late, w, zero, zero, clock)
            if not late:
                starts = improve(inst, starts, w)
    else:
        raise PlanningError(f"unknown method {method!r}")
    # A job whose window is empty (its deadline is before release plus run time) is late
    # whatever the plan: it runs at release, outside the capacity count.
    empty = np.flatnonzero(np.minimum(inst.latest_start, inst.n_slots - inst.duration) < inst.release)
    if empty.size:
        starts = starts.copy()
        starts[empty] = inst.release[empty]
    late_t = tuple(sorted(set(late) | {int(j) for j in empty}))
    starts = apply_min_saving(inst, shift_to_earliest_tie(inst, starts), min_saving_fraction, late_t)
    # Certify: every solve reports a lower bound. With late jobs it is the bound over plans
    # that leave the same jobs late (they run at release, outside the capacity count).
    if lower is None and inst.n_jobs and bound:
        if not capacity_binds(inst):
            lower = evaluate(inst, best_window(inst))[3]
        else:
            lower = _bound_without(inst, list(late_t), max(1.0, clock.left()))
    energy, carbon_kg, cost, objective = evaluate(inst, starts)
    if lower is not None and objective < lower <= objective + 1e-9 * abs(objective) + 1e-9:
        lower = objective  # the solvers' rounding, not a better bound
    return Solution(
        starts={jid: int(s) for jid, s in zip(inst.job_ids, starts, strict=True)},
        late=tuple(sorted(inst.job_ids[j] for j in late_t)),
        energy_kwh=energy,
        carbon_kg=carbon_kg,
        cost_gbp=cost,
        objective_gbp=objective,
        lower_bound_gbp=lower,
        solve_seconds=time.perf_counter() - t0,
        method=used,
        late_reasons=_late_reasons(inst, starts, list(late_t), proof),
    )
