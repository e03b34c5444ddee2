"""Jobs and battery in one model: a time-indexed MILP (HiGHS through scipy) that places the
planned jobs' starts and the battery's charge and discharge per slot together.

Over the slots ``t`` from the plan's first slot (``n`` of them, the battery's horizon) and each
job's candidate starts ``s`` (release .. latest start, every slot of its run with a forecast)::

    x[j,s] in {0, 1},  sum_s x[j,s] = 1                      (each job starts once)
    P[t]   = sum_{j,s: s <= t < s + dur_j} kw_j x[j,s]         (the planned jobs' kW)
    sum_{j,s: s <= t < s + dur_j} nodes_j x[j,s] <= cap[t]    (free nodes, as the job planner)
    e[t]   = e[t-1] + eta*h*c[t] - h*d[t]/eta                  (as battery.dispatch)
    fixed[t] + P[t] + c[t] - d[t] >= 0                         (no export)
    fixed[t] + P[t] + c[t] - d[t] <= meter[t] + over[t]        (the meter ceiling)
    c[t] <= max_charge * z[t],  d[t] <= max_discharge * (1 - z[t])   (one direction a slot)

minimising ``sum_t w[t] h (fixed + P + c - d)[t]`` plus the dispatch LP's penalties (a kWh over
the ceiling, a kWh short of the target state of charge at the end). ``fixed`` is the load the
plan does not place (the site's other load and flexible jobs that run as submitted).

The two-stage plan (``battery.planning``: jobs against the ceiling raised by what the battery
surely delivers, then dispatch) is a feasible point of this model whenever it leaves no job late,
so the joint optimum is never worse; :func:`site_cost` prices both the same way, and the caller
keeps the two-stage plan unless the joint one is strictly cheaper (a MILP stopped by its time
limit may return a worse incumbent). Instances with more than ``max_starts`` candidate starts are
left to the two-stage path.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, milp

from slurm_flex.battery.dispatch import OVER_PENALTY, SLOT_HOURS, THROUGHPUT_TIE, Schedule, _dynamics, _energy_bounds
from slurm_flex.battery.model import Battery
from slurm_flex.planner.instance import FloatArray, Instance

# Candidate starts (binaries x[j,s]) above which the joint model is not built.
JOINT_MAX_STARTS = 20_000
# HiGHS stops at this relative gap (its default, 1e-4, leaves plans a hundredth of a percent
# worse than the two-stage one).
MIP_REL_GAP = 1e-6


@dataclass(frozen=True)
class JointResult:
    """The joint model's job starts (slot per job id), its objective (as :func:`site_cost`
    prices a plan) and whether HiGHS proved it optimal."""

    starts: dict[str, int]
    objective: float
    optimal: bool
    n_starts: int


def _penalties(weight: FloatArray, battery: Battery) -> tuple[FloatArray, float, float]:
    wz = np.where(np.isfinite(weight), weight, 0.0)
    big = OVER_PENALTY * max(1.0, float(np.abs(wz).max(initial=0.0)))
    terminal = 2.0 * float(np.abs(wz).max(initial=0.0)) / battery.efficiency + 1e-3
    return wz, big, terminal


def site_cost(schedule: Schedule, battery: Battery, weight: FloatArray, slot_hours: float = SLOT_HOURS) -> float:
    """What a plan with its battery schedule costs by the joint model's objective: the grid draw
    by the weights, plus the dispatch LP's penalties on kWh over the ceiling and short of the
    target charge at the end."""
    wz, big, terminal = _penalties(np.asarray(weight, dtype=np.float64), battery)
    end = battery.energy_kwh if schedule.soc.size == 0 else float(schedule.soc[-1]) * battery.capacity_kwh
    short = max(0.0, battery.target_kwh - end)
    return float(
        (wz * slot_hours * schedule.grid_kw).sum() + big * slot_hours * schedule.unmet_kw.sum() + terminal * short
    )


def _candidates(inst: Instance, usable: FloatArray) -> list[np.ndarray] | None:
    """Per job, its start slots whose whole run has a forecast (None: a job has none)."""
    bad = np.concatenate(([0], np.cumsum(~np.isfinite(usable[: inst.n_slots])).astype(np.int64)))
    out = []
    for j in range(inst.n_jobs):
        dur = int(inst.duration[j])
        s = np.arange(int(inst.release[j]), int(inst.latest_start[j]) + 1)
        s = s[(s >= 0) & (s + dur <= inst.n_slots)]
        s = s[bad[s + dur] - bad[s] == 0]
        if s.size == 0:
            return None
        out.append(s)
    return out


def joint_plan(
    inst: Instance,
    battery: Battery,
    weight: FloatArray,
    fixed_kw: FloatArray,
    meter_ceiling_kw: FloatArray | None,
    time_limit: float = 10.0,
    max_starts: int = JOINT_MAX_STARTS,
    slot_hours: float = SLOT_HOURS,
) -> JointResult | None:
    """The joint optimum (module docstring) for ``inst``'s jobs on the battery's horizon of
    ``weight.size`` slots from the instance's first slot; None when it is not built (too many
    candidate starts, a job without a usable start, a horizon shorter than the instance's) or
    HiGHS found no feasible point in ``time_limit``."""
    w = np.asarray(weight, dtype=np.float64)
    n = int(w.size)
    if inst.n_jobs == 0 or inst.n_slots > n or n == 0:
        return None
    cands = _candidates(inst, w)
    if cands is None:
        return None
    k_total = sum(int(c.size) for c in cands)
    if k_total > max_starts:
        return None
    fixed = np.asarray(fixed_kw, dtype=np.float64)
    meter = np.full(n, np.inf) if meter_ceiling_kw is None else np.asarray(meter_ceiling_kw, dtype=np.float64)
    h = slot_hours
    wz, big, terminal = _penalties(w, battery)
    cum_w = np.concatenate(([0.0], np.cumsum(wz)))
    # Variables: x (K), c (n), d (n), e (n), over (n), u (1), z (n).
    K = k_total
    oc, od, oe, oo, ou, oz = K, K + n, K + 2 * n, K + 3 * n, K + 4 * n, K + 4 * n + 1
    n_vars = K + 5 * n + 1
    # Per candidate: its job, start, and the slots it covers (for the load and node rows).
    job_of = np.concatenate([np.full(c.size, j, dtype=np.int64) for j, c in enumerate(cands)])
    start_of = np.concatenate(cands).astype(np.int64)
    dur_of = inst.duration[job_of].astype(np.int64)
    cover_col = np.repeat(np.arange(K), dur_of)
    cover_slot = np.repeat(start_of, dur_of) + (
        np.arange(int(dur_of.sum())) - np.repeat(np.cumsum(dur_of) - dur_of, dur_of)
    )
    kw_col = inst.power_kw[job_of]
    cost = np.zeros(n_vars)
    cost[:K] = kw_col * h * (cum_w[start_of + dur_of] - cum_w[start_of])
    cost[oc:od] = h * wz + THROUGHPUT_TIE * h
    cost[od:oe] = -h * wz + THROUGHPUT_TIE * h
    cost[oo:ou] = big * h
    cost[ou] = terminal
    load = sparse.csr_matrix((kw_col[cover_col], (cover_slot, cover_col)), shape=(n, K))
    eye = sparse.identity(n, format="csr")
    zero_n = sparse.csr_matrix((n, n))
    constraints: list[LinearConstraint] = []
    # each job starts once
    one = sparse.csr_matrix((np.ones(K), (job_of, np.arange(K))), shape=(inst.n_jobs, n_vars))
    constraints.append(LinearConstraint(one, 1.0, 1.0))
    # free nodes, where finite
    cap = inst.capacity_nodes
    rows = np.flatnonzero(np.isfinite(cap))
    if rows.size:
        nodes = sparse.csr_matrix((inst.nodes[job_of][cover_col], (cover_slot, cover_col)), shape=(n, K))[rows]
        constraints.append(
            LinearConstraint(sparse.hstack([nodes, sparse.csr_matrix((rows.size, n_vars - K))]), -np.inf, cap[rows])
        )
    # no export: -(P + c - d) <= fixed
    grid = sparse.hstack([load, eye, -eye, zero_n, zero_n, sparse.csr_matrix((n, 1)), zero_n]).tocsr()
    constraints.append(LinearConstraint(-grid, -np.inf, fixed))
    # the meter ceiling: P + c - d - over <= meter - fixed, where finite
    rows = np.flatnonzero(np.isfinite(meter))
    if rows.size:
        over = sparse.hstack(
            [sparse.csr_matrix((n, K)), zero_n, zero_n, zero_n, eye, sparse.csr_matrix((n, 1)), zero_n]
        ).tocsr()
        constraints.append(LinearConstraint((grid - over)[rows], -np.inf, meter[rows] - fixed[rows]))
    # the battery's dynamics, shifted past the job columns
    a_eq, b_eq = _dynamics(battery, n, h, 3 * n)
    constraints.append(
        LinearConstraint(
            sparse.hstack([sparse.csr_matrix((n, K)), a_eq, sparse.csr_matrix((n, 2 * n + 1))]), b_eq, b_eq
        )
    )
    # the target at the end: e[n-1] + u >= target
    end = sparse.csr_matrix(([1.0, 1.0], ([0, 0], [oe + n - 1, ou])), shape=(1, n_vars))
    constraints.append(LinearConstraint(end, battery.target_kwh, np.inf))
    # one direction a slot
    t = np.arange(n)
    link = sparse.csr_matrix(
        (
            np.concatenate(
                [np.ones(n), -np.full(n, battery.max_charge_kw), np.ones(n), np.full(n, battery.max_discharge_kw)]
            ),
            (np.concatenate([t, t, n + t, n + t]), np.concatenate([oc + t, oz + t, od + t, oz + t])),
        ),
        shape=(2 * n, n_vars),
    )
    constraints.append(
        LinearConstraint(link, -np.inf, np.concatenate([np.zeros(n), np.full(n, battery.max_discharge_kw)]))
    )
    lo_e, hi_e = _energy_bounds(battery)
    lower = np.concatenate([np.zeros(K + 2 * n), np.full(n, lo_e), np.zeros(2 * n + 1)])
    upper = np.concatenate(
        [
            np.ones(K),
            np.where(np.isfinite(w), battery.max_charge_kw, 0.0),
            np.full(n, battery.max_discharge_kw),
            np.full(n, hi_e),
            np.full(n + 1, np.inf),
            np.ones(n),
        ]
    )
    integrality = np.concatenate([np.ones(K), np.zeros(4 * n + 1), np.ones(n)])
    res = milp(
        cost,
        constraints=constraints,
        integrality=integrality,
        bounds=Bounds(lower, upper),
        options={"time_limit": time_limit, "mip_rel_gap": MIP_REL_GAP},
    )
    if res.x is None:
        return None
    x = np.asarray(res.x, dtype=np.float64)
    chosen = np.flatnonzero(x[:K] > 0.5)
    starts: dict[str, int] = {}
    for col in chosen:
        starts.setdefault(inst.job_ids[int(job_of[col])], int(start_of[col]))
    if len(starts) != inst.n_jobs:
        return None
    objective = float(res.fun) + float(h * (wz * fixed).sum()) - THROUGHPUT_TIE * h * float(x[oc:oe].sum())
    return JointResult(starts, objective, bool(res.status == 0), K)
