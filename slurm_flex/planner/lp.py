"""The time-indexed formulation, solved by HiGHS through scipy: the LP relaxation for lower bounds
and rounding, the exact MILP where it is small enough, and the same MILP on a sub-problem (some
jobs re-planned, the others held where they are) for repairs and local improvement.

Variables x[j, s] = 1 when job j starts in slot s, one per candidate start (see
:func:`slurm_flex.planner.lagrange.candidates`). Each job starts once; per slot, the nodes (and
kW) of the jobs running there stay within capacity (and the power cap). Optionally each job has
a "late" variable y[j] instead (it runs at release, outside the capacity rows) at a cost that
outweighs any plan, so that the MILP also finds the fewest jobs that cannot meet their deadline.
"""

from __future__ import annotations

import ctypes
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, linprog, milp

from slurm_flex.planner.instance import FloatArray, Instance, IntArray
from slurm_flex.planner.lagrange import Candidates, candidates, load_of

# HiGHS statuses as scipy reports them.
_OPTIMAL, _LIMIT, _INFEASIBLE = 0, 1, 2


@dataclass(frozen=True)
class Formulation:
    cost: FloatArray  # per variable
    job_of: IntArray  # per variable: position in ``jobs``
    start_of: IntArray  # per variable
    a_eq: sparse.csr_matrix
    a_ub: sparse.csr_matrix
    b_ub: FloatArray
    jobs: IntArray  # the jobs in the formulation (those with at least one candidate start)
    row_slot: IntArray  # per a_ub row: its slot
    row_is_kw: IntArray  # per a_ub row: 1 for a power-cap row, 0 for a node-capacity row

    @property
    def n_vars(self) -> int:
        return int(self.cost.shape[0])


def candidate_count(inst: Instance) -> int:
    return int(np.maximum(inst.latest_start - inst.release + 1, 0).sum())


def formulate(
    inst: Instance,
    jobs: IntArray | None = None,
    *,
    cands: Candidates | None = None,
    keep: npt.NDArray[np.bool_] | None = None,
    capacity_nodes: FloatArray | None = None,
    power_cap_kw: FloatArray | None = None,
) -> Formulation:
    """The time-indexed model over ``jobs`` (default all) and the candidates ``keep`` selects
    (default all), within ``capacity_nodes``/``power_cap_kw`` (default the instance's: a caller
    holding other jobs fixed passes what they leave)."""
    c = cands if cands is not None else candidates(inst)
    job = c.jobs[c.job]
    mask = np.ones(c.n_candidates, dtype=bool) if keep is None else np.asarray(keep, dtype=bool).copy()
    if jobs is not None:
        wanted = np.zeros(inst.n_jobs, dtype=bool)
        wanted[jobs] = True
        mask &= wanted[job]
    job, start, cost = job[mask], c.start[mask].astype(np.int64), c.cost[mask]
    cap = inst.capacity_nodes if capacity_nodes is None else capacity_nodes
    pcap = inst.power_cap_kw if power_cap_kw is None else power_cap_kw
    kept, job_local = np.unique(job, return_inverse=True)
    n_vars = cost.size
    none = np.zeros(0, np.int64)
    if n_vars == 0:
        empty = sparse.csr_matrix((0, 0))
        return Formulation(np.zeros(0), none, none, empty, empty, np.zeros(0), none, none, none)
    a_eq = sparse.csr_matrix((np.ones(n_vars), (job_local, np.arange(n_vars))), shape=(kept.size, n_vars))
    reps = inst.duration[job]
    var_rep = np.repeat(np.arange(n_vars), reps)
    offset = np.arange(int(reps.sum())) - np.repeat(np.cumsum(reps) - reps, reps)
    slot = np.repeat(start, reps) + offset
    row_parts, col_parts, val_parts, b_parts, slot_parts, kind_parts = [], [], [], [], [], []
    n_rows = 0
    for kind, (per_job, limit) in enumerate(((inst.nodes, cap), (inst.power_kw, pcap))):
        finite = np.isfinite(limit)
        if not finite.any():
            continue
        # Rows only for the slots some variable runs in: the others cannot bind.
        used = np.zeros(inst.n_slots, dtype=bool)
        used[slot] = True
        rows = finite & used
        slot_parts.append(np.flatnonzero(rows))
        kind_parts.append(np.full(int(rows.sum()), kind))
        row_index = np.full(inst.n_slots, -1)
        row_index[rows] = np.arange(n_rows, n_rows + int(rows.sum()))
        hit = rows[slot]
        row_parts.append(row_index[slot[hit]])
        col_parts.append(var_rep[hit])
        val_parts.append(np.repeat(per_job[job], reps)[hit])
        b_parts.append(limit[rows])
        n_rows += int(rows.sum())
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
        row_slot = row_is_kw = none
    return Formulation(cost, job_local, start, a_eq, a_ub, b_ub, kept.astype(np.int64), row_slot, row_is_kw)


@dataclass(frozen=True)
class LPResult:
    ok: bool
    value: float | None
    seconds: float
    message: str


def _solve_lp(f: Formulation, time_limit: float, cost: FloatArray | None = None) -> Any:
    """The LP relaxation of ``f`` (with ``cost`` instead of its own, e.g. zeros to test feasibility)."""
    return linprog(
        f.cost if cost is None else cost,
        A_ub=f.a_ub if f.a_ub.shape[0] else None,
        b_ub=f.b_ub if f.a_ub.shape[0] else None,
        A_eq=f.a_eq,
        b_eq=np.ones(f.a_eq.shape[0]),
        bounds=(0, 1),
        method="highs",
        options={"time_limit": max(time_limit, 0.01), "presolve": True},
    )


def lp_bound(inst: Instance, time_limit: float = 60.0) -> LPResult:
    """The LP relaxation's optimum: a lower bound on any plan's objective (GBP)."""
    t0 = time.perf_counter()
    f = formulate(inst)
    if f.n_vars == 0:
        return LPResult(True, 0.0, time.perf_counter() - t0, "no plannable jobs")
    res = _solve_lp(f, time_limit)
    ok = res.status == _OPTIMAL
    return LPResult(ok, float(res.fun) if ok else None, time.perf_counter() - t0, str(res.message))


@dataclass(frozen=True)
class LPRounding:
    preferred: IntArray  # per job: the start the LP weights most (release for jobs not in the LP)
    integral: IntArray  # bool per job: the LP put it wholly in one start
    node_prices: FloatArray  # per slot: the LP's dual price of node capacity (GBP per node-slot)
    kw_prices: FloatArray  # per slot: the dual price of the power cap (GBP per kW-slot)
    value: float
    infeasible: bool = False  # the LP relaxation itself is infeasible: not every deadline can be met


def lp_relaxation(inst: Instance, time_limit: float = 60.0, cands: Candidates | None = None) -> LPRounding | None:
    """The LP relaxation's solution and capacity prices, for rounding into a plan. None when it
    does not finish in time; ``infeasible`` when HiGHS proves that it has no solution."""
    f = formulate(inst, cands=cands)
    preferred = inst.release.copy()
    integral = np.zeros(inst.n_jobs, dtype=bool)
    lam = np.zeros(inst.n_slots)
    mu = np.zeros(inst.n_slots)
    if f.n_vars == 0:
        return LPRounding(preferred, integral, lam, mu, 0.0)
    res = _solve_lp(f, time_limit)
    if res.status == _INFEASIBLE:
        return LPRounding(preferred, integral, lam, mu, float("nan"), infeasible=True)
    if res.status != _OPTIMAL:
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


def lp_deadlines_feasible(inst: Instance, time_limit: float = 60.0) -> bool | None:
    """Whether the LP relaxation has any solution (every job in its window, within capacity):
    False proves that no plan meets every deadline; None when HiGHS did not finish in time."""
    f = formulate(inst)
    if f.n_vars == 0:
        return True
    res = _solve_lp(f, time_limit, cost=np.zeros(f.n_vars))
    if res.status == _OPTIMAL:
        return True
    if res.status == _INFEASIBLE:
        return False
    return None


@dataclass(frozen=True)
class MILPResult:
    starts: IntArray | None  # per job (all of them); None when no plan was found
    optimal: bool
    value: float | None  # objective of the re-planned jobs (late ones excluded)
    bound: float | None  # HiGHS's dual bound on that objective
    seconds: float
    message: str
    infeasible: bool = False  # proven: the re-planned jobs cannot all fit
    late: tuple[int, ...] = ()  # with ``allow_late``: the jobs the plan leaves late


def solve_milp(
    inst: Instance,
    time_limit: float = 10.0,
    *,
    jobs: IntArray | None = None,
    fixed: IntArray | None = None,
    starts: IntArray | None = None,
    keep: npt.NDArray[np.bool_] | None = None,
    allow_late: bool = False,
    feasibility: bool = False,
    cands: Candidates | None = None,
    rel_gap: float = 1e-6,
) -> MILPResult:
    """Plan ``jobs`` (default all) exactly by branch and bound (HiGHS), with the jobs ``fixed``
    held at ``starts`` (their load taken out of capacity); jobs in neither are left out (late
    ones). May stop at the time limit with the best plan so far (``optimal`` False). With
    ``allow_late`` a job may instead be left late (at release) at a cost above any plan: the
    result then has the fewest late jobs, and the cheapest plan for the others. ``feasibility``
    drops the cost: any plan (with the fewest late jobs) will do, which HiGHS finds far sooner."""
    t0 = time.perf_counter()
    out = inst.release.copy() if starts is None else starts.copy()
    cap, pcap = inst.capacity_nodes, inst.power_cap_kw
    if fixed is not None and fixed.size:
        held = out[fixed]
        cap = cap - load_of(inst, held, inst.nodes[fixed], fixed)
        pcap = pcap - load_of(inst, held, inst.power_kw[fixed], fixed)
    f = formulate(inst, jobs, cands=cands, keep=keep, capacity_nodes=cap, power_cap_kw=pcap)
    planned = np.arange(inst.n_jobs) if jobs is None else np.asarray(jobs)
    missing = np.setdiff1d(planned, f.jobs)  # no candidate start at all: their window is empty
    if f.n_vars == 0:
        late = tuple(int(j) for j in missing)
        return MILPResult(out, True, 0.0, 0.0, time.perf_counter() - t0, "nothing to plan", bool(late), late)
    n_x = f.n_vars
    if not allow_late and not feasibility and starts is not None and _highs_core() is not None:
        return _milp_from_incumbent(inst, f, out, missing, time_limit, rel_gap, t0)
    cost = np.zeros(n_x) if feasibility else f.cost
    a_eq = f.a_eq
    a_ub = f.a_ub
    n_jobs = f.jobs.size
    if allow_late:
        # A late job costs more than the dearest plan of everything, so that fewer late jobs
        # always win; it uses no capacity.
        penalty = 1.0 + float(np.abs(cost).sum()) * 2.0
        cost = np.concatenate((cost, np.full(n_jobs, penalty)))
        a_eq = sparse.hstack((a_eq, sparse.identity(n_jobs, format="csr"))).tocsr()
        a_ub = sparse.hstack((a_ub, sparse.csr_matrix((a_ub.shape[0], n_jobs)))).tocsr()
    constraints = [LinearConstraint(a_eq, 1, 1)]
    if a_ub.shape[0]:
        constraints.append(LinearConstraint(a_ub, -np.inf, f.b_ub))
    res = milp(
        cost,
        constraints=constraints,
        integrality=np.ones(cost.size),
        bounds=Bounds(0, 1),
        options={"time_limit": max(time_limit, 0.01), "disp": False, "mip_rel_gap": rel_gap},
    )
    seconds = time.perf_counter() - t0
    if res.x is None:
        return MILPResult(None, False, None, None, seconds, str(res.message), infeasible=res.status == _INFEASIBLE)
    x = np.asarray(res.x)
    chosen = x[:n_x] > 0.5
    out[f.jobs[f.job_of[chosen]]] = f.start_of[chosen]
    late_list = [int(j) for j in missing]
    value = float(f.cost[chosen].sum())
    if allow_late:
        late_local = np.flatnonzero(x[n_x:] > 0.5)
        late_list += [int(j) for j in f.jobs[late_local]]
    late_arr = np.asarray(late_list, dtype=np.int64)
    out[late_arr] = inst.release[late_arr]
    bound = getattr(res, "mip_dual_bound", None)
    if allow_late or bound is None or not np.isfinite(bound):
        bound = None
    return MILPResult(
        out,
        res.status == _OPTIMAL,
        value,
        None if bound is None else float(bound),
        seconds,
        str(res.message),
        late=tuple(sorted(late_list)),
    )


def _milp_from_incumbent(
    inst: Instance,
    f: Formulation,
    out: IntArray,
    missing: IntArray,
    time_limit: float,
    rel_gap: float,
    t0: float,
) -> MILPResult:
    """:func:`solve_milp` through HiGHS's own interface, started from the plan in ``out`` when
    it is one of the model's solutions (then the result is never worse than it)."""
    model = HighsModel(f, integer=True)
    current = f.start_of == out[f.jobs[f.job_of]]
    if np.bincount(f.job_of[current], minlength=f.jobs.size).min(initial=1) >= 1:
        model.start_from(np.flatnonzero(current))
    status = model.run(time_limit, rel_gap)
    seconds = time.perf_counter() - t0
    if not model.has_solution() or status == "infeasible":
        return MILPResult(None, False, None, None, seconds, status, infeasible=status == "infeasible")
    x = model.x()
    chosen = x > 0.5
    if np.bincount(f.job_of[chosen], minlength=f.jobs.size).min(initial=1) != 1:
        return MILPResult(None, False, None, None, seconds, "no integral solution")
    out = out.copy()
    out[f.jobs[f.job_of[chosen]]] = f.start_of[chosen]
    late = tuple(sorted(int(j) for j in missing))
    out[np.asarray(late, dtype=np.int64)] = inst.release[np.asarray(late, dtype=np.int64)]
    bound = model.dual_bound()
    return MILPResult(
        out,
        status == "optimal",
        float(f.cost[chosen].sum()),
        bound if np.isfinite(bound) else None,
        seconds,
        status,
        late=late,
    )


@contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send what HiGHS prints on the process's standard output to standard error meanwhile.

    Started from a known solution, HiGHS's MIP solver writes a line to standard output whatever
    its output options say; on stdout it would corrupt ``slurmflex plan --json``."""
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError):  # no real standard output (captured by a test runner): leave it
        yield
        return
    try:
        os.dup2(2, 1)
        yield
    finally:
        _flush_c_stdio()  # what HiGHS left in the C library's buffer goes to stderr too
        os.dup2(saved, 1)
        os.close(saved)


def _flush_c_stdio() -> None:
    # No C library to reach means nothing buffered there either.
    with suppress(OSError, AttributeError):
        ctypes.CDLL(None).fflush(None)


def _highs_core() -> Any | None:
    """HiGHS's own interface as scipy ships it (scipy >= 1.15), or None.

    scipy's ``linprog``/``milp`` rebuild and re-solve a model from nothing each time. A dive
    re-solves one LP many times with a few more variables fixed, and a warm-started dual
    simplex does that in a handful of iterations; a MILP sub-problem solved from a known plan
    (the incumbent) prunes from the start and never returns worse. Without the interface the
    callers fall back to solving from scratch."""
    try:
        from scipy.optimize._highspy import _core
    except ImportError:  # older scipy: no incremental interface
        return None
    return _core


class HighsModel:
    """One time-indexed model held in HiGHS, to solve, change and solve again."""

    def __init__(self, f: Formulation, *, integer: bool = False) -> None:
        core = _highs_core()
        if core is None:
            raise RuntimeError("HiGHS's interface is not available")
        self.core = core
        self.f = f
        n_eq, n_ub = f.a_eq.shape[0], f.a_ub.shape[0]
        a = sparse.vstack((f.a_eq, f.a_ub)).tocsc() if n_ub else f.a_eq.tocsc()
        lp = core.HighsLp()
        lp.num_col_ = f.n_vars
        lp.num_row_ = n_eq + n_ub
        lp.col_cost_ = np.asarray(f.cost, dtype=np.float64)
        lp.col_lower_ = np.zeros(f.n_vars)
        lp.col_upper_ = np.ones(f.n_vars)
        lp.row_lower_ = np.concatenate((np.ones(n_eq), np.full(n_ub, -np.inf)))
        lp.row_upper_ = np.concatenate((np.ones(n_eq), f.b_ub))
        lp.a_matrix_.format_ = core.MatrixFormat.kColwise
        lp.a_matrix_.start_ = a.indptr.astype(np.int32)
        lp.a_matrix_.index_ = a.indices.astype(np.int32)
        lp.a_matrix_.value_ = a.data.astype(np.float64)
        lp.a_matrix_.num_col_ = f.n_vars
        lp.a_matrix_.num_row_ = n_eq + n_ub
        if integer:
            lp.integrality_ = [core.HighsVarType.kInteger] * f.n_vars
        self.h = core._Highs()
        self.h.setOptionValue("output_flag", False)
        self.h.passModel(lp)
        self.n_eq = n_eq

    def run(self, time_limit: float, rel_gap: float = 1e-6) -> str:
        """Solve; returns "optimal", "infeasible", "limit" or "failed"."""
        self.h.setOptionValue("time_limit", max(float(time_limit), 0.01))
        self.h.setOptionValue("mip_rel_gap", rel_gap)
        with _stdout_to_stderr():
            self.h.run()
        status = self.h.getModelStatus()
        ms = self.core.HighsModelStatus
        if status == ms.kOptimal:
            return "optimal"
        if status == ms.kInfeasible:
            return "infeasible"
        if status in (ms.kTimeLimit, ms.kIterationLimit, ms.kSolutionLimit, ms.kInterrupt):
            return "limit"
        return "failed"

    def x(self) -> FloatArray:
        return np.asarray(self.h.getSolution().col_value, dtype=np.float64)

    def has_solution(self) -> bool:
        return bool(self.h.getSolution().value_valid)

    def capacity_prices(self, n_slots: int) -> tuple[FloatArray, FloatArray]:
        """The row duals of the capacity rows as (node, kW) prices per slot (>= 0)."""
        duals = -np.asarray(self.h.getSolution().row_dual, dtype=np.float64)[self.n_eq :]
        lam = np.zeros(n_slots)
        mu = np.zeros(n_slots)
        node_rows = self.f.row_is_kw == 0
        lam[self.f.row_slot[node_rows]] = np.maximum(duals[node_rows], 0.0)
        mu[self.f.row_slot[~node_rows]] = np.maximum(duals[~node_rows], 0.0)
        return lam, mu

    def reduced_costs(self) -> FloatArray:
        return np.asarray(self.h.getSolution().col_dual, dtype=np.float64)

    def objective(self) -> float:
        return float(self.h.getInfo().objective_function_value)

    def dual_bound(self) -> float:
        return float(self.h.getInfo().mip_dual_bound)

    def fix(self, columns: IntArray) -> None:
        """Force each of ``columns`` to 1 (its job then starts there)."""
        cols = np.asarray(columns, dtype=np.int32)
        self.h.changeColsBounds(cols.size, cols, np.ones(cols.size), np.ones(cols.size))

    def unfix(self, columns: IntArray) -> None:
        cols = np.asarray(columns, dtype=np.int32)
        self.h.changeColsBounds(cols.size, cols, np.zeros(cols.size), np.ones(cols.size))

    def start_from(self, columns: IntArray) -> None:
        """A known solution (the columns at 1) for branch and bound to start from."""
        sol = self.core.HighsSolution()
        x = np.zeros(self.f.n_vars)
        x[columns] = 1.0
        sol.col_value = x
        sol.value_valid = True
        self.h.setSolution(sol)


# A dive tries at most this many starts for a job before leaving it to the caller.
DIVE_TRIES = 6


@dataclass(frozen=True)
class DiveResult:
    preferred: IntArray  # per job: its start (complete) or the last LP's heaviest start
    integral: IntArray  # bool per job: the last LP put it wholly there
    complete: bool  # a whole plan within capacity
    value: float  # the first LP's optimum: the LP bound
    node_prices: FloatArray  # the first LP's capacity prices
    kw_prices: FloatArray
    root_preferred: IntArray  # per job: the first LP's heaviest start
    root_integral: IntArray  # bool per job: the first LP put it wholly there


def lp_dive(
    inst: Instance,
    cands: Candidates,
    *,
    time_limit: float = 10.0,
    batch: float = 0.25,
) -> DiveResult | None:
    """Round the LP relaxation by diving: solve it, fix the biggest of the jobs it splits
    between starts to the start it weights most, solve again (warm, from the last basis), and
    so on until no job is split. Each LP re-balances the jobs not yet fixed around the ones
    that are, so big jobs keep room in the cheap slots that a greedy rounding would fill first
    with small ones. Jobs the LP puts wholly in one start are not fixed: they may still move to
    make room. Returns the plan, or when an LP turns infeasible or the time runs out, where it
    got to (``complete`` False: the jobs fixed so far and the last LP's heaviest starts), with
    the first LP's value and prices; None without a first LP (or HiGHS's interface)."""
    t0 = time.perf_counter()
    if _highs_core() is None:
        return None
    f = formulate(inst, cands=cands)
    if f.n_vars == 0:
        zero = np.zeros(inst.n_slots)
        none = np.zeros(inst.n_jobs, dtype=bool)
        return DiveResult(inst.release.copy(), none, True, 0.0, zero, zero, inst.release.copy(), none)
    model = HighsModel(f)
    fixed = np.zeros(inst.n_jobs, dtype=bool)
    preferred = inst.release.copy()
    size = (inst.nodes * inst.duration)[f.jobs]
    first: tuple[float, FloatArray, FloatArray, IntArray, IntArray] | None = None
    last: list[int] = []  # the columns fixed last, undone when they leave no room
    pending: list[int] = []  # the job being fixed alone: its columns still to try
    trying = -1  # that job (local index)
    stuck = np.zeros(f.jobs.size, dtype=bool)  # jobs no column of which fits: left to the caller
    share = batch  # of the split jobs, fixed at once

    def alternatives(job: int, x: FloatArray) -> list[int]:
        # Its columns in use, heaviest first, then the cheapest at the LP's prices (a few: each
        # costs an LP).
        cols = np.flatnonzero(f.job_of == job)
        cols = cols[np.lexsort((model.reduced_costs()[cols], -x[cols]))][:DIVE_TRIES]
        return [int(c) for c in cols]

    x = np.zeros(f.n_vars)
    while True:
        left = time_limit - (time.perf_counter() - t0)
        if left <= 0:
            return None if first is None else DiveResult(preferred, fixed, False, *first)
        status = model.run(left)
        if status != "optimal":
            if status != "infeasible" or first is None or not last:
                return None if first is None else DiveResult(preferred, fixed, False, *first)
            # The last fixings leave no room: undo them, fix the biggest of them alone, at each
            # of its likely starts in turn, and give up on a job none of which fits.
            model.unfix(np.asarray(last))
            if len(last) > 1:
                # Smaller batches from now on; this time the batch's biggest job alone.
                share /= 4
                trying = int(f.job_of[last[0]])
                pending = alternatives(trying, x)
            if pending:
                last = [pending.pop(0)]
                model.fix(np.asarray(last))
            else:
                stuck[trying] = True
                last = []
            continue
        x = model.x()
        order = np.lexsort((-x, f.job_of))
        head = np.concatenate(([True], f.job_of[order][1:] != f.job_of[order][:-1]))
        top = order[head]  # per local job, its heaviest column
        whole = x[top] > 1 - 1e-6
        preferred[f.jobs[f.job_of[top]]] = f.start_of[top]
        fixed[:] = False
        fixed[f.jobs[f.job_of[top[whole]]]] = True
        if first is None:
            first = (model.objective(), *model.capacity_prices(inst.n_slots), preferred.copy(), fixed.copy())
            # From here on each LP starts from the last basis; presolve would throw it away.
            model.h.setOptionValue("presolve", "off")
        split = np.flatnonzero(~whole & ~stuck)
        if split.size == 0:
            return DiveResult(preferred, fixed, not stuck.any(), *first)
        k = max(1, int(share * split.size))
        pick = split[np.argsort(-size[split], kind="stable")[:k]]
        if k == 1:
            trying = int(pick[0])
            pending = alternatives(trying, x)
            last = [pending.pop(0)]
        else:
            # Biggest first (in job order: ``pick`` is per local job); the first is the one
            # tried alone should the batch leave no room.
            last = [int(top[j]) for j in pick]
        model.fix(np.asarray(last))
