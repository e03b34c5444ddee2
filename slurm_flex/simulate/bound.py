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
candidate starts (HiGHS, through scipy.optimize.linprog):

* cost of x[j, s] = the MIN of j's exact per-second cost over its candidate starts in slot s;
* capacity: for every slot k (and, with ``pair_rows``, every pair of consecutive slots),
  sum over variables of a[j, s, k] x[j, s] <= capacity x the interval's seconds, where
  a[j, s, k] is the MIN over the candidate starts of j in slot s of the processor-seconds j
  would use inside the interval;
* each job starts once: sum_s x[j, s] = 1, x >= 0.

Take any feasible schedule and set x[j, slot of j's start] = 1. Its LP cost is at most the
schedule's (each coefficient is a min over a set holding the actual start), and it meets every
capacity row: the row's left side is at most the processor-seconds the schedule really uses in
the interval, which is at most capacity x its length because the instantaneous limit holds at
every instant of it. So the LP minimum is <= the cost of every feasible schedule. (The min over
starts of an interval overlap is taken at the slot's first or last candidate: the overlap of
[u, u + r) with a fixed interval is a concave function of u, clipped at 0, hence quasi-concave.)
Integrated capacity is weaker than the instantaneous limit, so a job needing more processors
than the machine has would go unnoticed: such input is refused.

Windows: jobs are split by earliest start into windows (a week by default) and each window's LP is
solved on its own, with the FULL capacity in every row it touches, even where jobs of the
neighbouring window use processors too. Each window's LP is therefore a relaxation of the
global problem restricted to that window's jobs: a feasible global schedule, restricted to them,
still uses at most the capacity (other windows' jobs only add use) and so is feasible for it. Hence
each window's minimum is <= the cost of the window's jobs in any feasible global schedule, and
summing over the disjoint windows, the sum of the minima is <= its total cost. Dropping a row only
relaxes further, so rows that can never bind (even if every job used the most it could there)
are left out, and so are rows where a window has no job. Jobs that cannot move are constants.

Certificates, not solver output: HiGHS's objective belongs to a point that may violate rows by
~1e-7, so it is not itself trusted. What is reported is a Lagrangian value: for capacity prices
lambda >= 0 (one per row), G(lambda) = sum over jobs of min_s (c[j, s] + lambda . a[j, s]) minus
lambda . capacity. For ANY lambda >= 0, G(lambda) <= every feasible schedule's cost (put each job
at its actual start: it pays c plus its priced use, and the priced use of all jobs is at most
lambda . capacity), and at the LP's optimal prices (its duals) G equals the LP optimum (the
per-job problems are simplices, hence integral). So:

* per window, G at that window's LP duals (its ``minimum_by_windows`` share);
* then G over the whole trace, at the windows' prices summed, and at their maximum per row: each
  counts a slot's capacity once where the windows' minima counted it once per window. At the
  summed prices G is never below the sum of the windows' values (every job pays at least its own
  window's prices; the capacity terms are the same);
* lambda = 0 gives the no-capacity bound, also reported: every job at its own best candidate
  start, the exact min over its candidate starts.

``minimum`` is the best of these. Floating-point rounding in the sums (~1e-12 relative) is the
only slack in the guarantee.

A window whose LP is infeasible (only possible when the starts at earliest_s already overload
the machine, since that schedule is an LP point otherwise) or not solved (time limit) contributes
its no-capacity bound (zero prices) instead, and ``status`` says how many such windows there were.

Cost: a week of LLNL Thunder (10,500 jobs, 24 h windows: half a million variables, 95 %
utilisation) takes HiGHS about 45 s per objective; a week of KTH about a second.
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
    minimum: float  # the bound: the best of the certified values below
    minimum_no_capacity: float
    minimum_by_windows: float  # the sum of the windows' LP minima (before trace-wide pricing)

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
            "minimum_by_windows": round(self.minimum_by_windows, 6),
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
    if available_percent < 0.05:  # would read "of the 0.0 % available"
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
    row_slot: IntArray  # per row: its first slot (of the whole trace)
    row_length: IntArray  # per row: its length in slots (1, or 2 for a pair row)

    def global_rows(self, n_slots: int) -> IntArray:
        """Each row's index among the trace's rows: (length - 1) x n_slots + first slot."""
        return np.asarray((self.row_length - 1) * n_slots + self.row_slot, dtype=np.int64)


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
    pair_rows: bool,
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

    # Capacity rows: each slot and, with ``pair_rows``, each pair of consecutive slots (a short
    # job straddling a slot boundary may count for little in either slot, but all its
    # processor-seconds fall in the pair). Row of the interval of ``length`` slots starting at
    # slot k: (length - 1) x n_slots + k - base.
    rv = r[var_job]
    end_slot = np.maximum(np.ceil((t_hi + rv) / SLOT_SECONDS).astype(np.int64) - 1, var_slot)
    base = int(var_slot.min()) if n_vars else 0
    n_slots = int(end_slot.max()) - base + 1 if n_vars else 0
    scale = p[var_job] / (SLOT_SECONDS * capacity)
    lengths = (1, 2) if pair_rows else (1,)
    rows: list[IntArray] = []
    cols: list[IntArray] = []
    vals: list[FloatArray] = []
    for length in lengths:
        # Intervals from var_slot to end_slot - length + 1: those wholly inside the slots the
        # variable can touch (one reaching outside only repeats a weaker shorter row).
        count = np.maximum(end_slot - var_slot - length + 2, 0)
        var = np.repeat(np.arange(n_vars), count)
        k0 = np.repeat(var_slot, count) + (np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count))
        lo = k0 * float(SLOT_SECONDS)
        hi = lo + length * SLOT_SECONDS
        # The overlap is quasi-concave in the start: its min over the slot's candidates is at the
        # first or the last of them.
        use = np.minimum(_overlap(t_lo[var], rv[var], lo, hi), _overlap(t_hi[var], rv[var], lo, hi)) * scale[var]
        keep = use > 0
        rows.append(k0[keep] - base + (length - 1) * n_slots)
        cols.append(var[keep])
        vals.append(use[keep])
    shape = (len(lengths) * n_slots, n_vars)
    a = sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=shape)
    b = np.concatenate([np.full(n_slots, float(length)) for length in lengths])
    row_slot = np.tile(np.arange(base, base + n_slots, dtype=np.int64), len(lengths))
    row_length = np.repeat(np.asarray(lengths, dtype=np.int64), n_slots)
    return _Formulation(job_start, n_var_of_job, costs, a, b, row_slot, row_length)


@dataclass(frozen=True)
class _WindowOutcome:
    minimum: FloatArray  # (3,) certified bound per objective
    no_capacity: FloatArray  # (3,)
    prices: FloatArray  # (3, rows): the LP's capacity prices per objective (0 where not solved)
    n_lp_variables: int
    infeasible: bool
    unsolved: bool
    certificate_gap: float


def _solve_window(f: _Formulation, time_limit: float | None, method: str) -> _WindowOutcome:
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
        return _WindowOutcome(no_cap, no_cap, np.zeros((3, f.b.size)), 0, True, False, 0.0)
    # The LP holds the movable jobs with a coefficient in a binding row (all their variables);
    # the others sit at their cheapest start, as nothing constrains them.
    in_rows = np.asarray(a[binding].sum(axis=0)).ravel() > 0 if binding.any() else np.zeros(n_vars, bool)
    lp_job = np.zeros(n_jobs, dtype=bool)
    lp_job[var_job[in_rows & ~fixed_var]] = True
    lp_var = lp_job[var_job]
    n_lp = int(lp_var.sum())
    if n_lp == 0:
        return _WindowOutcome(no_cap, no_cap, np.zeros((3, f.b.size)), 0, False, False, 0.0)
    rows = np.flatnonzero(binding)
    lp_cols = np.flatnonzero(lp_var)
    a_ub = a[rows][:, lp_cols].tocsc()
    b_ub = f.b[rows] - fixed_use[rows]
    n_lp_jobs = int(lp_job.sum())
    lp_job_of_col = (np.cumsum(lp_job) - 1)[var_job[lp_cols]]
    a_eq = sparse.csc_matrix((np.ones(n_lp), (lp_job_of_col, np.arange(n_lp))), shape=(n_lp_jobs, n_lp))
    lp_job_start = np.flatnonzero(np.concatenate(([True], lp_job_of_col[1:] != lp_job_of_col[:-1])))
    a_ub_t = a_ub.T.tocsr()
    options: dict[str, Any] = {"presolve": True}
    if time_limit is not None:
        options["time_limit"] = time_limit
    minimum = no_cap.copy()
    prices = np.zeros((3, f.b.size))
    infeasible = unsolved = False
    gap = 0.0
    for o in range(len(OBJECTIVES)):
        c_all = f.costs[o]
        c = c_all[lp_cols]
        # Jobs outside the LP: fixed ones at their only start, free ones at their cheapest.
        outside = float(np.minimum.reduceat(c_all, f.job_start)[~lp_job].sum())
        res = linprog(
            c,
            A_ub=a_ub,
            b_ub=b_ub,
            A_eq=a_eq,
            b_eq=np.ones(n_lp_jobs),
            bounds=(0, None),
            method=method,
            options=options,
        )
        if res.status == 2:
            infeasible = True
            break
        marginals = getattr(getattr(res, "ineqlin", None), "marginals", None)
        if res.status != 0 or marginals is None:
            unsolved = True
            continue
        # The certified value: the Lagrangian at the LP's capacity prices (module docstring),
        # over every variable of the LP's jobs, plus the jobs outside it.
        lam = np.maximum(-np.asarray(marginals, dtype=np.float64), 0.0)
        priced = c + a_ub_t @ lam
        certified = float(np.minimum.reduceat(priced, lp_job_start).sum() - lam @ b_ub) + outside
        lp_value = float(res.fun) + outside
        minimum[o] = max(certified, no_cap[o])
        prices[o, rows] = lam
        gap = max(gap, (lp_value - certified) / max(abs(lp_value), 1e-12))
    if infeasible:
        minimum = no_cap.copy()
        prices[:] = 0.0
    return _WindowOutcome(minimum, no_cap, prices, n_lp, infeasible, unsolved, gap)


def _priced_minimum(f: _Formulation, prices: FloatArray) -> FloatArray:
    """Per objective: the sum over the window's jobs of their cheapest start with the capacity
    each start uses charged at ``prices`` (3, the window's rows)."""
    at = f.a.T.tocsr()
    return np.array([float(np.minimum.reduceat(f.costs[o] + at @ prices[o], f.job_start).sum()) for o in range(3)])


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
    pair_rows: bool = False,
) -> BoundResult:
    """The clairvoyant bound on carbon, cost and the combined objective (module docstring).

    Per job: ``earliest_s``, ``latest_s`` (latest start; equal to earliest for a job that cannot
    move), ``runtime_s`` (> 0), ``procs`` (at most ``capacity_procs``), ``kw``; times in seconds
    from the start of slot 0 of ``carbon`` (g/kWh, actual) and ``price`` (GBP/MWh, may be
    negative; NaN counts as 0), which must cover every job's latest end. The combined objective
    is cost + carbon kg / 1000 x ``carbon_price_gbp_per_tonne``. Starts are on multiples of
    ``tick_seconds`` (or at earliest_s). Jobs are grouped into windows of ``window_days`` by
    earliest start; ``time_limit_per_lp`` (s) caps each HiGHS solve (a window that runs out
    falls back to its no-capacity bound); ``method`` is linprog's (highs, highs-ds, highs-ipm);
    ``pair_rows`` adds the rows over pairs of slots (a slightly tighter bound for short jobs, at
    about 1.5 times the solve time). Raises :class:`BoundError` on bad input."""
    t0 = time.perf_counter()
    jobs, carbon_a, price_a = _check(earliest_s, latest_s, runtime_s, procs, kw, carbon, price)
    capacity = _check_scalar("capacity_procs", capacity_procs, positive=True)
    if (too_big := jobs.procs > capacity).any():
        # No schedule could run such a job, and the integrated capacity rows would not notice.
        raise BoundError(
            f"{int(too_big.sum())} jobs need more processors than the machine has ({capacity:g}); "
            f"first: job {int(np.argmax(too_big))} with {jobs.procs[too_big][0]:g}"
        )
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

    # Windows by earliest start; each a list of job indices.
    window = (jobs.earliest // window_s).astype(np.int64)
    order = np.argsort(window, kind="stable")
    groups: list[IntArray] = []
    if order.size:
        cuts = np.flatnonzero(window[order][1:] != window[order][:-1]) + 1
        groups = np.split(order, cuts)
    n_slots = math.ceil(float((jobs.latest + jobs.runtime).max()) / SLOT_SECONDS) + 1 if groups else 0
    n_rows = 2 * n_slots
    by_windows, no_cap = np.zeros(3), np.zeros(3)
    # Trace-wide capacity prices from the windows' LPs: summed over windows, and the largest.
    price_sum, price_max = np.zeros((3, n_rows)), np.zeros((3, n_rows))
    n_lp = infeasible = unsolved = 0
    gap = 0.0

    def formulate(idx: IntArray) -> _Formulation:
        sub = _Jobs(jobs.earliest[idx], jobs.latest[idx], jobs.runtime[idx], jobs.procs[idx], jobs.kw[idx])
        return _formulate(sub, carbon_i, price_i, carbon_price, capacity, tick, pair_rows)

    for idx in groups:
        f = formulate(idx)
        out = _solve_window(f, time_limit_per_lp, method)
        rows = f.global_rows(n_slots)
        price_sum[:, rows] += out.prices
        price_max[:, rows] = np.maximum(price_max[:, rows], out.prices)
        del f
        by_windows += out.minimum
        no_cap += out.no_capacity
        n_lp += out.n_lp_variables
        infeasible += out.infeasible
        unsolved += out.unsolved
        gap = max(gap, out.certificate_gap)
    # The windows' minima count a slot's capacity once per window using it. The Lagrangian of
    # the whole trace at one set of prices counts it once, and is a bound whatever the prices
    # (module docstring); at the summed prices it is never below the sum of the windows' minima
    # (each job pays at least its own window's prices, and the capacity terms are the same).
    minimum = by_windows.copy()
    if groups and (price_sum > 0).any():
        capacity_rows = np.concatenate((np.ones(n_slots), np.full(n_slots, 2.0)))
        priced = np.zeros((2, 3))
        for idx in groups:
            f = formulate(idx)
            rows = f.global_rows(n_slots)
            priced[0] += _priced_minimum(f, price_sum[:, rows])
            priced[1] += _priced_minimum(f, price_max[:, rows])
            del f
        for k, lam in enumerate((price_sum, price_max)):
            minimum = np.maximum(minimum, priced[k] - lam @ capacity_rows)
    problems = []
    if infeasible:
        problems.append(
            f"infeasible in {infeasible} windows (even moved within their windows, the jobs overload the machine)"
        )
    if unsolved:
        problems.append(f"not solved to optimality in {unsolved} windows")
    status = "optimal" if not problems else "; ".join(problems) + " - their no-capacity bound is used"
    objectives = [
        ObjectiveBound(
            name, _UNITS[name], float(baseline[i]), float(minimum[i]), float(no_cap[i]), float(by_windows[i])
        )
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
