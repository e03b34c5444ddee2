"""The clairvoyant bound on several sites: the least carbon any schedule could reach when each
job may also choose WHERE it runs, knowing every site's actual carbon series in advance.

The schedules it bounds: every job j runs exactly ``runtime_s[j]`` at one site s it is allowed at
(its home site; any site whose capacity holds it, when it is portable), starting at a tick
within [earliest_s[j], latest_s[j]] (or at earliest_s itself), and at every instant each site's
processors in use stay within that site's capacity. With ``latest_s == earliest_s`` the start is
fixed and only the site is chosen (the "space only" bound); with the job's slack window it is
"space and time". Charging is per second on the chosen site's series, as the engine does.

The LP is :mod:`slurm_flex.simulate.bound`'s relaxation with one more index: a variable
x[j, s, k] per job, allowed site and half-hour slot holding one of j's candidate starts, costed
at the MIN of the exact carbon over those candidates on site s's series; per site and slot a
capacity row (the MIN processor-seconds of the slot's candidates inside the slot, at most that
site's capacity x 1800 s); each job starts once over all its sites and slots. Any feasible
schedule, written as x = 1 at its (site, slot), costs at least as much in the LP and meets every
row, so the LP minimum is a lower bound (same argument as the single-site module docstring,
applied to each site's rows on their own).

As there, what is reported is not HiGHS's objective but a certified Lagrangian value: for
capacity prices lambda >= 0, G(lambda) = sum_j min over j's (site, slot) variables of
(c + lambda . a) - lambda . b is <= every feasible schedule's carbon; it is evaluated at the LP's
duals (and at lambda = 0, the no-capacity bound; the larger is kept). Jobs are grouped into
windows by earliest start, each window's LP with the FULL capacity of every site in every row
(a relaxation of the whole problem restricted to that window's jobs), and the windows' values
summed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import sparse
from scipy.optimize import linprog

from slurm_flex.simulate.bound import BoundError, _check_scalar, _formulate, _Integral, _Jobs

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class SitesBound:
    """The carbon bound (kg) of a multi-site schedule and what it was computed from."""

    minimum: float  # the certified bound
    minimum_no_capacity: float  # every job at its best (site, start), capacity ignored
    n_jobs: int
    n_windows: int
    n_lp_variables: int
    infeasible_windows: int
    unsolved_windows: int
    solve_seconds: float

    @property
    def status(self) -> str:
        bad = []
        if self.infeasible_windows:
            bad.append(f"{self.infeasible_windows} windows infeasible")
        if self.unsolved_windows:
            bad.append(f"{self.unsolved_windows} windows not solved")
        return "optimal" if not bad else "; ".join(bad) + " - their no-capacity bound is used"


def _vector(name: str, values: npt.ArrayLike, n: int | None = None) -> FloatArray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise BoundError(f"{name}: expected a 1-D array, got shape {arr.shape}")
    if n is not None and arr.size != n:
        raise BoundError(f"{name}: {arr.size} values for {n} jobs")
    if not np.isfinite(arr).all():
        raise BoundError(f"{name}: {int((~np.isfinite(arr)).sum())} values are not finite")
    return arr


def sites_bound(
    earliest_s: npt.ArrayLike,
    latest_s: npt.ArrayLike,
    runtime_s: npt.ArrayLike,
    procs: npt.ArrayLike,
    kw: npt.ArrayLike,
    home: npt.ArrayLike,
    portable: npt.ArrayLike,
    carbon: Sequence[npt.ArrayLike],
    capacities: Sequence[float],
    tick_seconds: float = 300.0,
    window_days: float = 7.0,
    time_limit_per_lp: float | None = None,
) -> SitesBound:
    """The clairvoyant carbon bound (kg) over (site, start) schedules (module docstring).

    Per job: ``earliest_s``, ``latest_s`` (latest start), ``runtime_s`` (> 0), ``procs``, ``kw``,
    ``home`` (site index) and ``portable`` (may run at another site); per site: ``carbon``
    (g/kWh per half-hour from the common time 0; must cover every job's latest end) and
    ``capacities`` (processors). Raises :class:`BoundError` on bad input."""
    t0 = time.perf_counter()
    e = _vector("earliest_s", earliest_s)
    n = e.size
    lt = _vector("latest_s", latest_s, n)
    r = _vector("runtime_s", runtime_s, n)
    p = _vector("procs", procs, n)
    kw_a = _vector("kw", kw, n)
    home_a = np.asarray(home, dtype=np.int64)
    port = np.asarray(portable, dtype=bool)
    if home_a.shape != (n,) or port.shape != (n,):
        raise BoundError("home and portable need one value per job")
    n_sites = len(carbon)
    if n_sites < 1 or len(capacities) != n_sites:
        raise BoundError(f"{n_sites} carbon series for {len(capacities)} capacities")
    caps = [_check_scalar("capacity", c, positive=True) for c in capacities]
    if n and (home_a.min() < 0 or home_a.max() >= n_sites):
        raise BoundError("a home site index is out of range")
    if (lt < e).any() or (r <= 0).any() or (e < 0).any() or (p < 0).any() or (kw_a < 0).any():
        raise BoundError("need 0 <= earliest <= latest, runtime > 0, procs >= 0, kw >= 0")
    series = [np.asarray(c, dtype=np.float64) for c in carbon]
    need = math.ceil(float((lt + r).max()) / 1800) if n else 0
    for s, c in enumerate(series):
        if c.ndim != 1 or c.size < need:
            raise BoundError(f"carbon of site {s} has {c.size} half-hour slots; the latest job end needs {need}")
        if np.isinf(c).any() or (c < 0).any():
            raise BoundError(f"carbon of site {s}: infinite or negative values")
    # Where each job may run: home always (when it fits), other sites when portable and it fits.
    allowed = np.zeros((n_sites, n), dtype=bool)
    for s in range(n_sites):
        fits = p <= caps[s] + 1e-9
        allowed[s] = fits & (port | (home_a == s))
    if n and (~allowed.any(axis=0)).any():
        j = int(np.argmax(~allowed.any(axis=0)))
        raise BoundError(f"job {j} ({p[j]:g} processors) fits no site it may run at")
    tick = _check_scalar("tick_seconds", tick_seconds, positive=True)
    window_s = _check_scalar("window_days", window_days, positive=True) * 86400
    integrals = [_Integral(c) for c in series]
    zero = _Integral(np.zeros(max(need, 1) + 1))

    window = (e // window_s).astype(np.int64)
    total = no_cap_total = 0.0
    n_lp = infeasible = unsolved = n_windows = 0
    for w in np.unique(window):
        idx = np.flatnonzero(window == w)
        n_windows += 1
        costs: list[FloatArray] = []
        var_job: list[IntArray] = []
        blocks: list[sparse.csr_matrix] = []
        rhs: list[FloatArray] = []
        for s in range(n_sites):
            jobs_s = idx[allowed[s, idx]]
            if not jobs_s.size:
                continue
            sub = _Jobs(e[jobs_s], lt[jobs_s], r[jobs_s], p[jobs_s], kw_a[jobs_s])
            f = _formulate(sub, integrals[s], zero, 0.0, caps[s], tick, False)
            costs.append(np.asarray(f.costs[0], dtype=np.float64))
            var_job.append(np.repeat(np.searchsorted(idx, jobs_s), f.n_var_of_job).astype(np.int64))
            blocks.append(f.a)
            rhs.append(f.b)
        c = np.concatenate(costs)
        vj = np.concatenate(var_job)
        best = np.full(idx.size, np.inf)
        np.minimum.at(best, vj, c)
        no_cap = float(best.sum())
        no_cap_total += no_cap
        a_ub = sparse.block_diag(blocks, format="csc")
        b_ub = np.concatenate(rhs)
        a_eq = sparse.csc_matrix((np.ones(c.size), (vj, np.arange(c.size))), shape=(idx.size, c.size))
        n_lp += c.size
        options: dict[str, float | bool] = {"presolve": True}
        if time_limit_per_lp is not None:
            options["time_limit"] = time_limit_per_lp
        res = linprog(
            c,
            A_ub=a_ub,
            b_ub=b_ub,
            A_eq=a_eq,
            b_eq=np.ones(idx.size),
            bounds=(0, None),
            method="highs",
            options=options,
        )
        marginals = getattr(getattr(res, "ineqlin", None), "marginals", None)
        if res.status == 2:
            infeasible += 1
            total += no_cap
            continue
        if res.status != 0 or marginals is None:
            unsolved += 1
            total += no_cap
            continue
        lam = np.maximum(-np.asarray(marginals, dtype=np.float64), 0.0)
        priced = c + a_ub.T.tocsr() @ lam
        per_job = np.full(idx.size, np.inf)
        np.minimum.at(per_job, vj, priced)
        certified = float(per_job.sum() - lam @ b_ub)
        total += max(certified, no_cap)
    return SitesBound(
        minimum=total,
        minimum_no_capacity=no_cap_total,
        n_jobs=n,
        n_windows=n_windows,
        n_lp_variables=n_lp,
        infeasible_windows=infeasible,
        unsolved_windows=unsolved,
        solve_seconds=time.perf_counter() - t0,
    )
