"""The clairvoyant bound: the least carbon (cost, combined objective) ANY schedule of a trace
could reach, knowing the actual grid series in advance, so that a scheduler's saving can be
read as a share of what was available ("captured 43 % of the 10.7 % available").

The schedules it bounds: every job starts at a tick (a multiple of ``tick_seconds``) within
[earliest_s, latest_s], or at earliest_s itself (so the baseline, every job at its earliest start,
is always one of them, even when earliest_s is off the tick grid), runs exactly runtime_s, and
the processors in use never exceed ``capacity_procs`` at any instant. Charging is per second, as
:func:`slurm_flex.simulate.engine._charge` does: kW x the integral of the half-hourly series over
[start, start + runtime] / 3600.

Why the minimum reported is a TRUE lower bound
----------------------------------------------
Exact tick-level placement is a huge integer program, so the bound solves a relaxation of it,
an LP with one variable x[j, s] per job j and half-hour slot s holding at least one of j's
candidate starts (scipy's HiGHS):

* cost of x[j, s] = the MIN of j's exact per-second cost over its candidate starts in slot s;
* capacity: for every slot k (and every pair of consecutive slots k, k+1), sum over variables of
  a[j, s, k] x[j, s] <= capacity x the interval's seconds, where a[j, s, k] is the MIN over the
  candidate starts of j in slot s of the processor-seconds j would use inside the interval;
* each job starts once: sum_s x[j, s] = 1, x >= 0.

Take any feasible schedule and set x[j, slot of j's start] = 1. Its LP cost is at most the
schedule's (each coefficient is a min over a set holding the actual start), and it meets every
capacity row: the row's left side is at most the processor-seconds the schedule really uses in
the interval, which is at most capacity x its length because the instantaneous limit holds at
every instant of it. So the LP minimum is <= the cost of every feasible schedule. (The min over
starts of an interval overlap is taken at the slot's first or last candidate: the overlap of
[u, u + r) with a fixed interval is a concave function of u, clipped at 0, hence quasi-concave.)

Windows: jobs are split by earliest start into windows (a week by default) and each window's LP is
solved on its own, with the FULL capacity in every row it touches, even where jobs of the
neighbouring window use processors too. Each window's LP is therefore a relaxation of the
global problem restricted to that window's jobs: a feasible global schedule, restricted to them,
still uses at most the capacity (other windows' jobs only add use) and so is feasible for it. Hence
each window's minimum is <= the cost of the window's jobs in any feasible global schedule, and
summing over the disjoint windows, the sum of the minima is <= its total cost. Dropping a row only
relaxes further, so rows that can never bind are left out, and so are rows where a window has no
job.

Solver tolerance: HiGHS's objective belongs to a point that may violate rows by ~1e-7, so it is
not itself certified. The bound reported is the Lagrangian value at the LP's capacity prices
lambda >= 0 (its dual values): sum over jobs of min_s (c[j, s] + lambda . a[j, s]) minus
lambda . capacity. For ANY lambda >= 0 that is <= every feasible schedule's cost (each schedule
pays c and uses at most the capacity, so the priced terms only subtract), and at the LP's
optimal prices it equals the LP optimum (the per-job problems are simplices, hence integral). It
is also never below the no-capacity bound (lambda = 0), which is reported as well: every job at
its own best candidate start, the exact min over its candidate starts.

A window whose LP is infeasible (only possible when the starts at earliest_s already overload
the machine, or a job needs more than the machine, since that schedule is an LP point
otherwise) or not solved within the time limit contributes its no-capacity bound instead, and
``status`` says how many such windows there were.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import sparse
from scipy.optimize import linprog

from slurm_flex.errors import SlurmFlexError
from slurm_flex.grid.series import SLOT_SECONDS

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

OBJECTIVES = ("carbon", "cost", "combined")
_UNITS = {"carbon": "kg", "cost": "GBP", "combined": "GBP"}
# A row whose largest possible left side stays below capacity by this (in capacity units) never
# binds; the margin only makes the test robust to rounding (dropping a row is always valid).
_REDUNDANT = 1e-12


class BoundError(SlurmFlexError):
    """The clairvoyant bound cannot be computed from these inputs."""


@dataclass(frozen=True)
class ObjectiveBound:
    """One objective's baseline (every job at its earliest start), the bound with the capacity
    limit, and without it (every job at its own best start)."""

    name: str
    unit: str
    baseline: float
    minimum: float
    minimum_no_capacity: float

    @property
    def saving_percent(self) -> float:
        return _percent(self.baseline, self.minimum)

    @property
    def saving_no_capacity_percent(self) -> float:
        return _percent(self.baseline, self.minimum_no_capacity)

    def to_json(self) -> dict[str, float | str]:
        return {
            "unit": self.unit,
            "baseline": round(self.baseline, 6),
            "minimum": round(self.minimum, 6),
            "minimum_no_capacity": round(self.minimum_no_capacity, 6),
            "saving_percent": round(self.saving_percent, 4),
            "saving_no_capacity_percent": round(self.saving_no_capacity_percent, 4),
        }


@dataclass(frozen=True)
class BoundResult:
    carbon: ObjectiveBound  # kg CO2
    cost: ObjectiveBound  # GBP
    combined: ObjectiveBound  # GBP: cost + carbon_kg / 1000 x carbon price
    n_jobs: int
    n_windows: int  # windows holding at least one job
    n_lp_variables: int  # columns of the LPs actually solved (after dropping fixed jobs, idle rows)
    solve_seconds: float  # building and solving everything
    status: str  # "optimal", or how many windows fell back to their no-capacity bound and why
    infeasible_windows: int
    unsolved_windows: int  # LP stopped for another reason (time limit...)
    max_certificate_gap: float  # largest relative (HiGHS objective - certified Lagrangian value)

    def objective(self, name: str) -> ObjectiveBound:
        if name not in OBJECTIVES:
            raise BoundError(f"unknown objective {name!r} (use {', '.join(OBJECTIVES)})")
        result: ObjectiveBound = getattr(self, name)
        return result

    def captured(self, name: str, achieved_percent: float) -> str:
        """E.g. "captured 43 % of the 10.7 % available" for a scheduler that saved
        ``achieved_percent`` of objective ``name``."""
        return capture_sentence(achieved_percent, self.objective(name).saving_percent)

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {name: self.objective(name).to_json() for name in OBJECTIVES}
        out.update(
            jobs=self.n_jobs,
            windows=self.n_windows,
            lp_variables=self.n_lp_variables,
            solve_seconds=round(self.solve_seconds, 2),
            status=self.status,
            infeasible_windows=self.infeasible_windows,
            unsolved_windows=self.unsolved_windows,
            max_certificate_gap=self.max_certificate_gap,
        )
        return out


def capture_sentence(achieved_percent: float, available_percent: float) -> str:
    """How much of the available saving a scheduler captured, as a sentence."""
    if not (math.isfinite(achieved_percent) and math.isfinite(available_percent)):
        return "no saving could be measured"
    if available_percent <= 0:
        return f"no saving was available (achieved {achieved_percent:.1f} %)"
    share = achieved_percent / available_percent * 100
    return f"captured {share:.0f} % of the {available_percent:.1f} % available"


def _percent(baseline: float, value: float) -> float:
    # A zero or negative baseline (prices can be negative) has no meaningful relative saving.
    if not (math.isfinite(baseline) and math.isfinite(value)) or baseline <= 0:
        return math.nan
    return (baseline - value) / baseline * 100


# -- input checks ---------------------------------------------------------------------------------


def _as_vector(name: str, values: npt.ArrayLike) -> FloatArray:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise BoundError(f"{name}: not numbers") from exc
    if arr.ndim != 1:
        raise BoundError(f"{name}: expected a 1-D array, got shape {arr.shape}")
    return arr


def _check_scalar(name: str, value: float, positive: bool) -> float:
    v = float(value)
    if not math.isfinite(v) or v < 0 or (positive and v == 0):
        raise BoundError(f"{name} must be a finite {'positive' if positive else 'non-negative'} number, got {value!r}")
    return v


class _Integral:
    """Per-second integral of a half-hourly series (NaN counted as 0), as engine._charge does."""

    def __init__(self, series: FloatArray) -> None:
        self.values = np.nan_to_num(series, nan=0.0)
        self.prefix = np.concatenate(([0.0], np.cumsum(self.values) * SLOT_SECONDS))

    def __call__(self, x: FloatArray) -> FloatArray:
        k = np.minimum((x // SLOT_SECONDS).astype(np.int64), self.values.size - 1)
        return np.asarray(self.prefix[k] + (x - k * SLOT_SECONDS) * self.values[k], dtype=np.float64)


@dataclass(frozen=True)
class _Jobs:
    earliest: FloatArray
    latest: FloatArray
    runtime: FloatArray
    procs: FloatArray
    kw: FloatArray


def _check(
    earliest_s: npt.ArrayLike,
    latest_s: npt.ArrayLike,
    runtime_s: npt.ArrayLike,
    procs: npt.ArrayLike,
    kw: npt.ArrayLike,
    carbon: npt.ArrayLike,
    price: npt.ArrayLike,
) -> tuple[_Jobs, FloatArray, FloatArray]:
    arrays = {
        name: _as_vector(name, v)
        for name, v in (
            ("earliest_s", earliest_s),
            ("latest_s", latest_s),
            ("runtime_s", runtime_s),
            ("procs", procs),
            ("kw", kw),
        )
    }
    sizes = {name: a.size for name, a in arrays.items()}
    if len(set(sizes.values())) > 1:
        raise BoundError(f"per-job arrays differ in length: {sizes}")
    for name, a in arrays.items():
        if not np.isfinite(a).all():
            raise BoundError(f"{name}: {int((~np.isfinite(a)).sum())} values are not finite")
        if (a < 0).any():
            raise BoundError(f"{name}: {int((a < 0).sum())} values are negative (first at job {int(np.argmax(a < 0))})")
    jobs = _Jobs(arrays["earliest_s"], arrays["latest_s"], arrays["runtime_s"], arrays["procs"], arrays["kw"])
    if (bad := jobs.latest < jobs.earliest).any():
        raise BoundError(f"latest_s < earliest_s for {int(bad.sum())} jobs (first: job {int(np.argmax(bad))})")
    if (bad := jobs.runtime <= 0).any():
        raise BoundError(f"runtime_s must be > 0; {int(bad.sum())} jobs are not (first: job {int(np.argmax(bad))})")
    carbon_a, price_a = _as_vector("carbon", carbon), _as_vector("price", price)
    end = jobs.latest + jobs.runtime
    need = math.ceil(float(end.max()) / SLOT_SECONDS) if end.size else 0
    for name, series in (("carbon", carbon_a), ("price", price_a)):
        if series.size < need:
            raise BoundError(
                f"{name} has {series.size} half-hour slots; the latest job end needs {need} ({need - series.size} more)"
            )
    if np.isinf(carbon_a).any() or np.isinf(price_a).any():
        raise BoundError("carbon and price must not hold infinite values")
    if (carbon_a < 0).any():
        raise BoundError(f"carbon: {int((carbon_a < 0).sum())} negative intensities")
    if jobs.earliest.size and np.isnan(carbon_a[:need]).any():
        # Only the slots a job could run in must be known: count NaNs between each job's first
        # and last possible slot.
        nan_before = np.concatenate(([0], np.cumsum(np.isnan(carbon_a[:need]))))
        first = (jobs.earliest // SLOT_SECONDS).astype(np.int64)
        last = np.maximum(np.ceil(end / SLOT_SECONDS).astype(np.int64), first + 1)
        bad = nan_before[last] > nan_before[first]
        if bad.any():
            j = int(np.argmax(bad))
            raise BoundError(
                f"carbon is NaN inside the windows of {int(bad.sum())} jobs (first: job {j}, slots "
                f"{first[j]}..{last[j] - 1})"
            )
    return jobs, carbon_a, price_a


# -- one window's LP ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Formulation:
    """The LP of a window's jobs (local indices). Variables are grouped by job, in job order."""

    job_start: IntArray  # per job: its first variable (for np.minimum.reduceat)
    n_var_of_job: IntArray
    costs: FloatArray  # (3, n_vars): carbon kg, cost GBP, combined GBP
    a: sparse.csr_matrix  # (rows, n_vars) capacity coefficients, in units of capacity x 1800 s
    b: FloatArray  # per row: capacity x the row's length, same units (1 per slot)


def _overlap(t: FloatArray, r: FloatArray, lo: FloatArray, hi: FloatArray) -> FloatArray:
    """Seconds of [t, t + r) inside [lo, hi)."""
    return np.asarray(np.maximum(0.0, np.minimum(t + r, hi) - np.maximum(t, lo)), dtype=np.float64)


def _formulate(
    jobs: _Jobs,
    carbon: _Integral,
    price: _Integral,
    carbon_price: float,
    capacity: float,
    tick: float,
    pair_rows: bool = True,
) -> _Formulation:
    e, lt, r, p, kw = jobs.earliest, jobs.latest, jobs.runtime, jobs.procs, jobs.kw
    n = e.size
    # Candidate starts: earliest itself, then every tick multiple in [earliest, latest].
    first_tick = np.ceil(e / tick) * tick
    last_tick = np.floor(lt / tick) * tick
    n_ticks = np.where(last_tick >= first_tick, np.floor((last_tick - first_tick) / tick + 0.5) + 1, 0).astype(np.int64)
    extra = (e < first_tick).astype(np.int64)  # earliest is off the tick grid: a candidate too
    n_cand = n_ticks + extra
    total = int(n_cand.sum())
    job = np.repeat(np.arange(n), n_cand)
    k = np.arange(total) - np.repeat(np.cumsum(n_cand) - n_cand, n_cand)
    t = np.where((k == 0) & (extra[job] == 1), e[job], first_tick[job] + tick * (k - extra[job]))
    rj, kwj = r[job], kw[job]
    # Exact per-second charge of every candidate start (kWh x g/kWh -> kg; kWh x GBP/MWh -> GBP).
    carbon_kg = kwj * (carbon(t + rj) - carbon(t)) / 3600 / 1000
    cost_gbp = kwj * (price(t + rj) - price(t)) / 3600 / 1000
    combined = cost_gbp + carbon_kg / 1000 * carbon_price
    del kwj
    # One variable per (job, slot) holding candidates; candidates are sorted within each job.
    slot = (t // SLOT_SECONDS).astype(np.int64)
    new = np.ones(total, dtype=bool)
    new[1:] = (job[1:] != job[:-1]) | (slot[1:] != slot[:-1])
    first = np.flatnonzero(new)
    last = np.append(first[1:], total) - 1
    costs = np.vstack([np.minimum.reduceat(c, first) for c in (carbon_kg, cost_gbp, combined)])
    var_job = job[first]
    var_slot = slot[first]
    t_lo, t_hi = t[first], t[last]
    del job, k, t, rj, carbon_kg, cost_gbp, combined, slot, new, last
    n_vars = first.size
    n_var_of_job = np.bincount(var_job, minlength=n).astype(np.int64)
    job_start = (np.cumsum(n_var_of_job) - n_var_of_job).astype(np.int64)

    # Capacity rows: each slot, then each pair of consecutive slots (a job of up to a slot that
    # straddles a boundary uses little of either slot at worst, but all its processor-seconds in
    # the pair). Row index: slot k -> k - base; pair (k, k + 1) -> n_slots + k - base.
    rv = r[var_job]
    end_slot = np.maximum(np.ceil((t_hi + rv) / SLOT_SECONDS).astype(np.int64) - 1, var_slot)
    base = int(var_slot.min()) if n_vars else 0
    n_slots = int(end_slot.max()) - base + 1 if n_vars else 0
    scale = p[var_job] / (SLOT_SECONDS * capacity)
    rows: list[IntArray] = []
    cols: list[IntArray] = []
    vals: list[FloatArray] = []
    for length in (1, 2) if pair_rows else (1,):
        # Intervals starting at var_slot .. end_slot - length + 1 (those wholly inside the span the
        # job can touch; an interval reaching outside it only repeats a weaker single-slot row).
        count = np.maximum(end_slot - var_slot - length + 2, 0)
        var = np.repeat(np.arange(n_vars), count)
        k0 = np.repeat(var_slot, count) + (np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count))
        lo = k0 * float(SLOT_SECONDS)
        hi = lo + length * SLOT_SECONDS
        # The overlap is quasi-concave in the start: its min over the slot's candidates is at the
        # first or the last of them.
        use = np.minimum(_overlap(t_lo[var], rv[var], lo, hi), _overlap(t_hi[var], rv[var], lo, hi)) * scale[var]
        keep = use > 0
        row = k0[keep] - base + (0 if length == 1 else n_slots)
        rows.append(row)
        cols.append(var[keep])
        vals.append(use[keep])
    n_rows = 2 * n_slots
    a = sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n_rows, n_vars))
    b = np.concatenate((np.ones(n_slots), np.full(n_slots, 2.0)))
    return _Formulation(job_start, n_var_of_job, costs, a, b)


@dataclass(frozen=True)
class _WindowOutcome:
    minimum: FloatArray  # (3,) certified bound per objective
    no_capacity: FloatArray  # (3,)
    n_lp_variables: int
    infeasible: bool
    unsolved: bool
    certificate_gap: float


def _solve_window(
    f: _Formulation, time_limit: float | None, method: str, tolerance: float, max_rounds: int
) -> _WindowOutcome:
    n_jobs = f.job_start.size
    no_cap = np.array([float(np.minimum.reduceat(c, f.job_start).sum()) for c in f.costs]) if n_jobs else np.zeros(3)
    n_vars = f.costs.shape[1]
    var_job = np.repeat(np.arange(n_jobs), f.n_var_of_job)
    fixed_var = (f.n_var_of_job == 1)[var_job]
    a = f.a.tocsc()
    # Processor use of jobs that cannot move (a single variable), and each row's largest
    # possible left side (per job the most any of its variables uses): a row that cannot exceed
    # its capacity never binds, and leaving it out keeps the LP small.
    fixed_use = np.asarray(a @ fixed_var.astype(np.float64)).ravel()
    coo = a.tocoo()
    key = var_job[coo.col].astype(np.int64) * a.shape[0] + coo.row
    order = np.argsort(key, kind="stable")
    key_sorted = key[order]
    starts = np.flatnonzero(np.concatenate(([True], key_sorted[1:] != key_sorted[:-1])))
    job_row_max = np.maximum.reduceat(coo.data[order], starts) if starts.size else np.zeros(0)
    row_max = np.bincount((key_sorted[starts] % a.shape[0]).astype(np.int64), job_row_max, minlength=a.shape[0])
    del coo, key, order, key_sorted, starts, job_row_max
    binding = row_max > f.b - _REDUNDANT
    if (fixed_use > f.b * (1 + 1e-9) + 1e-9).any():
        # Jobs that cannot move already exceed the machine: no feasible schedule exists.
        return _WindowOutcome(no_cap, no_cap, 0, True, False, 0.0)
    # The LP holds the movable jobs with a coefficient in a binding row (all their variables);
    # the others sit at their cheapest start, as nothing constrains them.
    in_rows = np.asarray(a[binding].sum(axis=0)).ravel() > 0 if binding.any() else np.zeros(n_vars, bool)
    lp_job = np.zeros(n_jobs, dtype=bool)
    lp_job[var_job[in_rows & ~fixed_var]] = True
    lp_var = lp_job[var_job]
    n_lp = int(lp_var.sum())
    if n_lp == 0:
        return _WindowOutcome(no_cap, no_cap, 0, False, False, 0.0)
    rows = np.flatnonzero(binding)
    lp_cols = np.flatnonzero(lp_var)
    master = _Master(
        a=a[rows][:, lp_cols].tocsc(),
        b=f.b[rows] - fixed_use[rows],
        job_start=(np.cumsum(f.n_var_of_job[lp_job]) - f.n_var_of_job[lp_job]).astype(np.int64),
        method=method,
        time_limit=time_limit,
    )
    minimum = no_cap.copy()
    infeasible = unsolved = False
    gap = 0.0
    for o in range(len(OBJECTIVES)):
        c = f.costs[o]
        # Jobs outside the LP: fixed ones at their only start, free ones at their cheapest.
        outside = float(np.minimum.reduceat(c, f.job_start)[~lp_job].sum())
        sol = master.solve(c[lp_cols], tolerance, max_rounds)
        if sol.infeasible:
            infeasible = True
            break
        unsolved |= not sol.converged
        minimum[o] = max(sol.certified + outside, no_cap[o])
        if math.isfinite(sol.lp_value):
            gap = max(gap, (sol.lp_value - sol.certified) / max(abs(sol.lp_value + outside), 1e-12))
    if infeasible:
        minimum = no_cap.copy()
    return _WindowOutcome(minimum, no_cap, n_lp, infeasible, unsolved, gap)


@dataclass(frozen=True)
class _MasterSolution:
    certified: float  # best Lagrangian value found (a valid bound; -inf if no prices were found)
    lp_value: float  # the last restricted LP's optimum (>= the LP's; nan if none)
    converged: bool  # certified and lp_value agree within the tolerance
    infeasible: bool


@dataclass(frozen=True)
class _Master:
    """A window's LP, capacity rows ``a`` x <= ``b``, one start per job (variables grouped by
    job from ``job_start``), solved by column generation: HiGHS solves the LP over a few
    columns per job; the capacity prices it returns price every column; each job whose best
    priced column beats the ones already in gets it; until no job gains (within the tolerance).

    Why: a job ends at one or two of its ~50 starts, and the LP over all of them (LLNL
    Thunder: half a million columns a week) takes HiGHS minutes where a few rounds over a
    tenth of them take seconds. Every round's prices give a certified Lagrangian bound, so the
    result is a valid bound even if the rounds stop early."""

    a: sparse.csc_matrix
    b: FloatArray
    job_start: IntArray
    method: str
    time_limit: float | None

    def _lp(self, c: FloatArray, cols: IntArray, job_of_col: IntArray, penalty: float | None) -> Any:
        """The LP over columns ``cols``; with a ``penalty``, each capacity row also gets a slack
        column of that cost (so the LP is always feasible)."""
        n_jobs, n_rows = self.job_start.size, self.b.size
        n_slack = n_rows if penalty is not None else 0
        a_ub = self.a[:, cols]
        cost = c[cols]
        if penalty is not None:
            a_ub = sparse.hstack((a_ub, -sparse.identity(n_rows, format="csc")), format="csc")
            cost = np.concatenate((cost, np.full(n_rows, penalty)))
        a_eq = sparse.csr_matrix(
            (np.ones(cols.size), (job_of_col, np.arange(cols.size))), shape=(n_jobs, cols.size + n_slack)
        )
        options: dict[str, Any] = {"presolve": True}
        if self.time_limit is not None:
            options["time_limit"] = self.time_limit
        return linprog(
            cost,
            A_ub=a_ub,
            b_ub=self.b,
            A_eq=a_eq,
            b_eq=np.ones(n_jobs),
            bounds=(0, None),
            method=self.method,
            options=options,
        )

    def solve(self, c: FloatArray, tolerance: float, max_rounds: int) -> _MasterSolution:
        n_vars = c.size
        n_per_job = np.diff(np.append(self.job_start, n_vars))
        var_job = np.repeat(np.arange(self.job_start.size), n_per_job)
        # Start with each job's earliest slot (its first variable: together a feasible point when
        # the starts at earliest_s are a feasible schedule) and its cheapest start.
        job_min = np.minimum.reduceat(c, self.job_start)
        chosen = np.zeros(n_vars, dtype=bool)
        chosen[self.job_start] = True
        chosen[_first_per_job(c <= job_min[var_job], var_job)] = True
        # Until the columns in hand can fit the machine (the earliest starts need not, e.g.
        # submit times), rows may overflow at a high cost per unit: far above what a variable
        # costs per unit of capacity it uses, so no optimal price reaches it unless the rows
        # cannot be met at all. The prices stay valid for the bound whatever the penalty.
        col_use = np.asarray(self.a.sum(axis=0)).ravel()
        ratio = np.abs(c) / np.maximum(col_use, 1e-300)
        penalty: float | None = 1e3 * float(ratio[col_use > 0].max(initial=0.0)) + 1.0
        best = -math.inf
        lp_value = math.nan
        for _ in range(max_rounds):
            cols = np.flatnonzero(chosen)
            res = self._lp(c, cols, var_job[cols], penalty)
            if res.status == 2:
                return _MasterSolution(best, lp_value, False, True)
            if res.status != 0 or getattr(res, "ineqlin", None) is None:
                return _MasterSolution(best, lp_value, False, False)
            lam = np.maximum(-np.asarray(res.ineqlin.marginals, dtype=np.float64), 0.0)
            priced = c + np.asarray(self.a.T @ lam).ravel()
            full_min = np.minimum.reduceat(priced, self.job_start)
            # The Lagrangian at these prices: a bound whatever the prices (module docstring).
            best = max(best, float(full_min.sum() - lam @ self.b))
            lp_value = float(res.fun)
            in_min = np.minimum.reduceat(np.where(chosen, priced, np.inf), self.job_start)
            gains = full_min < in_min - 1e-12 * np.maximum(np.abs(in_min), 1.0)
            converged = lp_value - best <= tolerance * max(abs(lp_value), 1e-12) or not gains.any()
            if converged and penalty is not None and float(np.asarray(res.x)[cols.size :].sum()) > 1e-9:
                # No column helps yet rows still overflow: the jobs cannot fit (or the penalty
                # was too low). The whole LP without slack decides.
                chosen[:] = True
                penalty = None
                continue
            if converged:
                return _MasterSolution(best, lp_value, True, False)
            if penalty is not None and float(np.asarray(res.x)[cols.size :].sum()) <= 1e-12:
                # The columns in hand fit the machine: from now on it is the plain LP.
                penalty = None
            add = _first_per_job(priced <= full_min[var_job], var_job)
            chosen[add[gains[var_job[add]]]] = True
        return _MasterSolution(best, lp_value, False, False)


def _first_per_job(mask: BoolArray, var_job: IntArray) -> IntArray:
    """Per job, its first variable where ``mask`` holds (jobs with none are skipped)."""
    idx = np.flatnonzero(mask)
    _, first = np.unique(var_job[idx], return_index=True)
    return idx[first]


# -- the bound ------------------------------------------------------------------------------------


def clairvoyant_bound(
    earliest_s: npt.ArrayLike,
    latest_s: npt.ArrayLike,
    runtime_s: npt.ArrayLike,
    procs: npt.ArrayLike,
    kw: npt.ArrayLike,
    carbon: npt.ArrayLike,
    price: npt.ArrayLike,
    capacity_procs: float,
    carbon_price_gbp_per_tonne: float = 250.0,
    tick_seconds: float = 300.0,
    window_days: float = 7.0,
    time_limit_per_lp: float | None = None,
    method: str = "highs",
    tolerance: float = 1e-7,
    max_rounds: int = 200,
) -> BoundResult:
    """The clairvoyant bound on carbon, cost and the combined objective (module docstring).

    Per job: ``earliest_s``, ``latest_s`` (latest start; equal to earliest for a job that cannot
    move), ``runtime_s`` (> 0), ``procs``, ``kw``; times in seconds from the start of slot 0 of
    ``carbon`` (g/kWh, actual) and ``price`` (GBP/MWh; NaN counts as 0), which must cover every
    job's latest end. Jobs are grouped into windows of ``window_days`` by earliest start."""
    t0 = time.perf_counter()
    jobs, carbon_a, price_a = _check(earliest_s, latest_s, runtime_s, procs, kw, carbon, price)
    capacity = _check_scalar("capacity_procs", capacity_procs, positive=True)
    carbon_price = _check_scalar("carbon_price_gbp_per_tonne", carbon_price_gbp_per_tonne, positive=False)
    tick = _check_scalar("tick_seconds", tick_seconds, positive=True)
    window_s = _check_scalar("window_days", window_days, positive=True) * 86400
    carbon_i, price_i = _Integral(carbon_a), _Integral(price_a)

    baseline = np.zeros(3)
    if jobs.earliest.size:
        e, r, kw_a = jobs.earliest, jobs.runtime, jobs.kw
        b_carbon = float((kw_a * (carbon_i(e + r) - carbon_i(e))).sum()) / 3600 / 1000
        b_cost = float((kw_a * (price_i(e + r) - price_i(e))).sum()) / 3600 / 1000
        baseline[:] = (b_carbon, b_cost, b_cost + b_carbon / 1000 * carbon_price)

    window = (jobs.earliest // window_s).astype(np.int64)
    order = np.argsort(window, kind="stable")
    bounds = np.flatnonzero(np.concatenate(([True], window[order][1:] != window[order][:-1]))) if order.size else []
    groups = np.split(order, bounds[1:]) if order.size else []
    minimum, no_cap = np.zeros(3), np.zeros(3)
    n_lp = infeasible = unsolved = 0
    gap = 0.0
    for idx in groups:
        sub = _Jobs(jobs.earliest[idx], jobs.latest[idx], jobs.runtime[idx], jobs.procs[idx], jobs.kw[idx])
        f = _formulate(sub, carbon_i, price_i, carbon_price, capacity, tick)
        out = _solve_window(f, time_limit_per_lp, method, tolerance, max_rounds)
        del f
        minimum += out.minimum
        no_cap += out.no_capacity
        n_lp += out.n_lp_variables
        infeasible += out.infeasible
        unsolved += out.unsolved
        gap = max(gap, out.certificate_gap)
    problems = []
    if infeasible:
        problems.append(
            f"infeasible in {infeasible} windows (even moved within their windows, the jobs overload the machine)"
        )
    if unsolved:
        problems.append(f"not solved to optimality in {unsolved} windows")
    status = "optimal" if not problems else "; ".join(problems) + " - their no-capacity bound is used"
    objectives = [
        ObjectiveBound(name, _UNITS[name], float(baseline[i]), float(minimum[i]), float(no_cap[i]))
        for i, name in enumerate(OBJECTIVES)
    ]
    return BoundResult(
        carbon=objectives[0],
        cost=objectives[1],
        combined=objectives[2],
        n_jobs=int(jobs.earliest.size),
        n_windows=len(groups),
        n_lp_variables=n_lp,
        solve_seconds=time.perf_counter() - t0,
        status=status,
        infeasible_windows=infeasible,
        unsolved_windows=unsolved,
        max_certificate_gap=gap,
    )
