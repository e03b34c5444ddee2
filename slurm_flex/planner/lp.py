"""The time-indexed formulation, solved by HiGHS through scipy: an LP relaxation for lower bounds
and an exact MILP where it is small enough to be fast.

Variables x[j, s] = 1 when job j starts in slot s, for every start in its window whose cost is
finite. Each job starts once; per slot, the nodes (and kW) of the jobs running there stay within
capacity (and the power cap).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, linprog, milp

from slurm_flex.planner.instance import FloatArray, Instance, IntArray
from slurm_flex.planner.lagrange import window_sums


@dataclass(frozen=True)
class Formulation:
    cost: FloatArray  # per variable
    job_of: IntArray  # per variable
    start_of: IntArray  # per variable
    a_eq: sparse.csr_matrix
    a_ub: sparse.csr_matrix
    b_ub: FloatArray
    jobs: IntArray  # the jobs in the formulation (those with at least one finite start)
    row_slot: IntArray  # per a_ub row: its slot
    row_is_kw: IntArray  # per a_ub row: 1 for a power-cap row, 0 for a node-capacity row

    @property
    def n_vars(self) -> int:
        return int(self.cost.shape[0])


def candidate_count(inst: Instance) -> int:
    return int(np.maximum(inst.latest_start - inst.release + 1, 0).sum())


def formulate(inst: Instance, jobs: IntArray | None = None) -> Formulation:
    """The time-indexed model over ``jobs`` (default all), with capacity left for the others
    already subtracted by the caller through ``inst.capacity_nodes``/``power_cap_kw``."""
    w = inst.weights()
    h = inst.slot_hours
    if jobs is None:
        jobs = np.arange(inst.n_jobs)
    costs: list[FloatArray] = []
    job_of: list[IntArray] = []
    start_of: list[IntArray] = []
    kept: list[int] = []
    sums_by_d: dict[int, FloatArray] = {}
    for j in jobs:
        d = int(inst.duration[j])
        if d not in sums_by_d:
            sums_by_d[d] = window_sums(w, d)
        lo, hi = int(inst.release[j]), int(inst.latest_start[j])
        if hi < lo:
            continue
        c = sums_by_d[d][lo : hi + 1] * inst.power_kw[j] * h
        ok = np.isfinite(c)
        if not ok.any():
            continue
        s = np.arange(lo, hi + 1)[ok]
        costs.append(c[ok])
        start_of.append(s)
        job_of.append(np.full(s.size, len(kept)))
        kept.append(int(j))
    if not kept:
        empty = sparse.csr_matrix((0, 0))
        none = np.zeros(0, np.int64)
        return Formulation(np.zeros(0), none, none, empty, empty, np.zeros(0), none, none, none)
    cost = np.concatenate(costs)
    job_local = np.concatenate(job_of)
    start = np.concatenate(start_of)
    kept_arr = np.asarray(kept, dtype=np.int64)
    n_vars = cost.size
    a_eq = sparse.csr_matrix((np.ones(n_vars), (job_local, np.arange(n_vars))), shape=(kept_arr.size, n_vars))
    dur = inst.duration[kept_arr][job_local]
    nodes = inst.nodes[kept_arr][job_local]
    power = inst.power_kw[kept_arr][job_local]
    # One (slot, variable) entry for every slot each variable's job would run in.
    reps = dur
    var_rep = np.repeat(np.arange(n_vars), reps)
    offset = np.arange(int(reps.sum())) - np.repeat(np.cumsum(reps) - reps, reps)
    slot = np.repeat(start, reps) + offset
    row_parts, col_parts, val_parts, b_parts, slot_parts, kind_parts = [], [], [], [], [], []
    n_rows = 0
    for kind, (per_var, limit) in enumerate(((nodes, inst.capacity_nodes), (power, inst.power_cap_kw))):
        finite = np.isfinite(limit)
        if not finite.any():
            continue
        slot_parts.append(np.flatnonzero(finite))
        kind_parts.append(np.full(int(finite.sum()), kind))
        row_index = np.full(inst.n_slots, -1)
        row_index[finite] = np.arange(n_rows, n_rows + int(finite.sum()))
        keep = finite[slot]
        row_parts.append(row_index[slot[keep]])
        col_parts.append(var_rep[keep])
        val_parts.append(np.repeat(per_var, reps)[keep])
        b_parts.append(limit[finite])
        n_rows += int(finite.sum())
    if n_rows:
        a_ub = sparse.csr_matrix(
            (np.concatenate(val_parts), (np.concatenate(row_parts), np.concatenate(col_parts))),
            shape=(n_rows, n_vars),
        )
        b_ub = np.concatenate(b_parts)
        row_slot, row_is_kw = np.concatenate(slot_parts), np.concatenate(kind_parts)
    else:
        a_ub = sparse.csr_matrix((0, n_vars))
        b_ub = np.zeros(0)
        row_slot = row_is_kw = np.zeros(0, np.int64)
    return Formulation(cost, job_local, start, a_eq, a_ub, b_ub, kept_arr, row_slot, row_is_kw)


@dataclass(frozen=True)
class LPResult:
    ok: bool
    value: float | None
    seconds: float
    message: str


def _solve_lp(f: Formulation, time_limit: float) -> Any:
    return linprog(
        f.cost,
        A_ub=f.a_ub if f.a_ub.shape[0] else None,
        b_ub=f.b_ub if f.a_ub.shape[0] else None,
        A_eq=f.a_eq,
        b_eq=np.ones(f.a_eq.shape[0]),
        bounds=(0, 1),
        method="highs",
        options={"time_limit": time_limit, "presolve": True},
    )


def lp_bound(inst: Instance, time_limit: float = 60.0) -> LPResult:
    """The LP relaxation's optimum: a lower bound on any plan's objective (GBP)."""
    t0 = time.perf_counter()
    f = formulate(inst)
    if f.n_vars == 0:
        return LPResult(True, 0.0, time.perf_counter() - t0, "no plannable jobs")
    res = _solve_lp(f, time_limit)
    ok = res.status == 0
    return LPResult(ok, float(res.fun) if ok else None, time.perf_counter() - t0, str(res.message))


@dataclass(frozen=True)
class LPRounding:
    preferred: IntArray  # per job: the start the LP weights most (release for jobs not in the LP)
    integral: IntArray  # bool per job: the LP put it wholly in one start
    node_prices: FloatArray  # per slot: the LP's dual price of node capacity (GBP per node-slot)
    kw_prices: FloatArray  # per slot: the dual price of the power cap (GBP per kW-slot)
    value: float


def lp_relaxation(inst: Instance, time_limit: float = 60.0) -> LPRounding | None:
    """The LP relaxation's solution and capacity prices, for rounding into a plan (None when the
    LP is infeasible or does not finish in time)."""
    f = formulate(inst)
    preferred = inst.release.copy()
    integral = np.zeros(inst.n_jobs, dtype=bool)
    lam = np.zeros(inst.n_slots)
    mu = np.zeros(inst.n_slots)
    if f.n_vars == 0:
        return LPRounding(preferred, integral, lam, mu, 0.0)
    res = _solve_lp(f, time_limit)
    if res.status != 0:
        return None
    x = np.asarray(res.x)
    # Per job (local index), the variable with the largest weight.
    order = np.lexsort((-x, f.job_of))
    first = np.concatenate(([True], f.job_of[order][1:] != f.job_of[order][:-1]))
    top = order[first]
    jobs = f.jobs[f.job_of[top]]
    preferred[jobs] = f.start_of[top]
    integral[jobs] = x[top] > 1 - 1e-6
    if f.a_ub.shape[0]:
        duals = -np.asarray(res.ineqlin.marginals)  # scipy reports <= duals as non-positive
        node_rows = f.row_is_kw == 0
        lam[f.row_slot[node_rows]] = np.maximum(duals[node_rows], 0.0)
        mu[f.row_slot[~node_rows]] = np.maximum(duals[~node_rows], 0.0)
    return LPRounding(preferred, integral, lam, mu, float(res.fun))


@dataclass(frozen=True)
class MILPResult:
    starts: IntArray | None
    optimal: bool
    value: float | None
    bound: float | None
    seconds: float
    message: str


def solve_milp(inst: Instance, time_limit: float = 10.0) -> MILPResult:
    """The exact plan by branch and bound (HiGHS); may stop at the time limit with the best
    plan so far (``optimal`` False). Jobs without any finite start stay at release."""
    t0 = time.perf_counter()
    f = formulate(inst)
    starts = inst.release.copy()
    if f.n_vars == 0:
        return MILPResult(starts, True, 0.0, 0.0, time.perf_counter() - t0, "no plannable jobs")
    constraints = [LinearConstraint(f.a_eq, 1, 1)]
    if f.a_ub.shape[0]:
        constraints.append(LinearConstraint(f.a_ub, -np.inf, f.b_ub))
    res = milp(
        f.cost,
        constraints=constraints,
        integrality=np.ones(f.n_vars),
        bounds=Bounds(0, 1),
        options={"time_limit": time_limit, "disp": False, "mip_rel_gap": 1e-6},
    )
    if res.x is None:
        return MILPResult(None, False, None, None, time.perf_counter() - t0, str(res.message))
    chosen = res.x > 0.5
    starts[f.jobs[f.job_of[chosen]]] = f.start_of[chosen]
    bound = getattr(res, "mip_dual_bound", None)
    return MILPResult(
        starts,
        res.status == 0,
        float(res.fun),
        None if bound is None else float(bound),
        time.perf_counter() - t0,
        str(res.message),
    )
