"""Charge and discharge per half-hour slot: pure linear programs, solved by HiGHS through scipy
like the rest of the planner.

:func:`dispatch` decides, for a known site load, how much the battery charges (``c``) and
discharges (``d``) in each slot::

    grid[t] = load[t] + c[t] - d[t]                      (what the grid meter sees)
    e[t]    = e[t-1] + eta * h * c[t] - h * d[t] / eta   (stored kWh; eta = sqrt(round trip))
    min_soc * capacity <= e[t] <= max_soc * capacity
    0 <= c[t] <= max_charge_kw,  0 <= d[t] <= max_discharge_kw
    grid[t] >= 0                                          (no export: discharge feeds the site)
    grid[t] <= ceiling[t] + over[t]                       (a flexibility activation's ceiling)

minimising ``sum(weight[t] * h * grid[t])`` (the planner's objective per kWh: price, priced
carbon or both, :func:`grid_weight`) plus a penalty on ``over`` that outweighs any saving, so
the ceiling is kept wherever the battery can keep it and ``unmet_kw`` says by how much it could
not. The stored energy at the end of the horizon should not be less than at its start, or
than ``Battery.target_soc`` where it is set, as the daemon plans (a soft constraint priced
above any slot's weight): otherwise the last slots would always empty the battery. Where the
linear optimum charges and discharges in the same slot (it pays only with negative weights,
i.e. negative prices) the same model is solved again with one binary per slot (charge or
discharge, not both), so a schedule is always one a real inverter can follow.

:func:`deliverable` is the first stage of planning jobs with a battery (see
``slurm_flex.battery.planning``): the discharge the battery can surely give in each slot that
has a ceiling, spread as evenly as its energy allows, charging only in slots without one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, linprog, milp

from slurm_flex.battery.model import Battery
from slurm_flex.errors import PlanningError
from slurm_flex.planner.instance import FloatArray
from slurm_flex.planner.policy import Policy

SLOT_HOURS = 0.5
# A kWh above the ceiling costs this many times the dearest slot's weight (and at least 1 GBP).
OVER_PENALTY = 1000.0
# Per kWh moved through the battery: breaks ties towards doing nothing (no pointless cycling).
THROUGHPUT_TIE = 1e-7
# Charge and discharge in one slot below this (kW) count as neither.
SIMULTANEOUS_KW = 1e-6


def grid_weight(carbon: FloatArray, price: FloatArray, policy: Policy) -> FloatArray:
    """GBP per kWh drawn in each slot, as the job planner weighs it
    (:meth:`planner.instance.Instance.weights`): the price when ``policy.use_price`` (missing:
    0) plus carbon at the policy's carbon price. A slot without carbon is NaN (the battery does
    not charge there)."""
    carbon = np.asarray(carbon, dtype=np.float64)
    price = np.asarray(price, dtype=np.float64)
    cost = np.nan_to_num(price, nan=0.0) / 1000.0 if policy.use_price else np.zeros_like(carbon)
    w = cost + carbon * policy.carbon_price_gbp_per_tonne / 1e6
    return np.asarray(np.where(np.isfinite(carbon), w, np.nan), dtype=np.float64)


@dataclass(frozen=True)
class Schedule:
    """A battery schedule per slot from the first planned slot."""

    charge_kw: FloatArray
    discharge_kw: FloatArray
    soc: FloatArray  # fraction of capacity at the end of each slot
    load_kw: FloatArray  # the site load it was planned against
    grid_kw: FloatArray  # load + charge - discharge: the grid meter
    ceiling_kw: FloatArray  # inf: none
    unmet_kw: FloatArray  # grid above the ceiling the battery could not cover
    cost: float  # objective of the grid draw with the battery (GBP by the weights)
    cost_without: float  # the same load without the battery
    method: Literal["lp", "milp"]
    soc_start: float

    @property
    def net_kw(self) -> FloatArray:
        """Per slot: positive charges, negative discharges."""
        return np.asarray(self.charge_kw - self.discharge_kw, dtype=np.float64)

    @property
    def saving(self) -> float:
        return self.cost_without - self.cost

    def to_json(self, start: int | None = None) -> dict[str, Any]:
        def floats(values: FloatArray) -> list[float | None]:
            return [round(float(x), 4) if math.isfinite(x) else None for x in values]

        return {
            **({"start": start} if start is not None else {}),
            "soc_start": round(self.soc_start, 4),
            "method": self.method,
            "cost": round(self.cost, 6),
            "cost_without": round(self.cost_without, 6),
            "net_kw": floats(self.net_kw),
            "soc": floats(self.soc),
            "load_kw": floats(self.load_kw),
            "grid_kw": floats(self.grid_kw),
            "ceiling_kw": floats(self.ceiling_kw),
            "unmet_kw": floats(self.unmet_kw),
        }


def _dynamics(battery: Battery, n: int, h: float, n_vars: int) -> tuple[sparse.csr_matrix, FloatArray]:
    """Rows e[t] - e[t-1] - eta*h*c[t] + h/eta*d[t] = 0 (e[-1] = the energy now), over
    variables laid out [c (n), d (n), e (n), ...]."""
    eta = battery.efficiency
    t = np.arange(n)
    rows = np.concatenate([t, t, t, t[1:]])
    cols = np.concatenate([t, n + t, 2 * n + t, 2 * n + t[1:] - 1])
    vals = np.concatenate([np.full(n, -eta * h), np.full(n, h / eta), np.ones(n), -np.ones(n - 1)])
    a = sparse.csr_matrix((vals, (rows, cols)), shape=(n, n_vars))
    b = np.zeros(n)
    b[0] = battery.energy_kwh
    return a, b


def _energy_bounds(battery: Battery) -> tuple[float, float]:
    """Stored-energy bounds; a battery read outside them (deep discharged, overfull) may stay
    where it is but never goes further out."""
    return min(battery.min_kwh, battery.energy_kwh), max(battery.max_kwh, battery.energy_kwh)


def dispatch(
    battery: Battery,
    load_kw: FloatArray,
    weight: FloatArray,
    ceiling_kw: FloatArray | None = None,
    slot_hours: float = SLOT_HOURS,
    time_limit: float = 10.0,
) -> Schedule:
    """The cheapest schedule (by ``weight``, GBP per kWh) for ``load_kw`` per slot under
    ``ceiling_kw`` (inf or None: no ceiling); see the module docstring for the model."""
    load = np.asarray(load_kw, dtype=np.float64)
    n = int(load.size)
    w = np.asarray(weight, dtype=np.float64)
    if w.size != n:
        raise PlanningError(f"battery: {w.size} weights for {n} slots")
    if not np.isfinite(load).all() or (load < 0).any():
        raise PlanningError("battery: the site load must be finite and >= 0 in every slot")
    cap = np.full(n, np.inf) if ceiling_kw is None else np.asarray(ceiling_kw, dtype=np.float64)
    if cap.size != n:
        raise PlanningError(f"battery: {cap.size} ceilings for {n} slots")
    if n == 0:
        empty = np.zeros(0)
        return Schedule(empty, empty, empty, empty, empty, empty, empty, 0.0, 0.0, "lp", battery.soc)
    h = slot_hours
    usable = np.isfinite(w)
    wz = np.where(usable, w, 0.0)
    big = OVER_PENALTY * max(1.0, float(np.abs(wz).max(initial=0.0)))
    terminal = 2.0 * float(np.abs(wz).max(initial=0.0)) / battery.efficiency + 1e-3
    # variables: c (n), d (n), e (n), over (n), u (1)
    n_vars = 4 * n + 1
    cost = np.concatenate(
        [h * wz + THROUGHPUT_TIE * h, -h * wz + THROUGHPUT_TIE * h, np.zeros(n), np.full(n, big * h), [terminal]]
    )
    a_eq, b_eq = _dynamics(battery, n, h, n_vars)
    t = np.arange(n)
    finite = np.isfinite(cap)
    k = t[finite]
    m = int(k.size)
    # no export: d - c <= load; ceiling: c - d - over <= cap - load; terminal: -e[n-1] - u <= -e0
    rows = np.concatenate([t, t, n + np.arange(m), n + np.arange(m), n + np.arange(m), [n + m, n + m]])
    cols = np.concatenate([n + t, t, k, n + k, 3 * n + k, [3 * n - 1, 4 * n]])
    vals = np.concatenate([np.ones(n), -np.ones(n), np.ones(m), -np.ones(m), -np.ones(m), [-1.0, -1.0]])
    a_ub = sparse.csr_matrix((vals, (rows, cols)), shape=(n + m + 1, n_vars))
    lo_e, hi_e = _energy_bounds(battery)
    target = battery.target_kwh
    b_ub = np.concatenate([load, cap[finite] - load[finite], [-target]])
    lower = np.concatenate([np.zeros(2 * n), np.full(n, lo_e), np.zeros(n + 1)])
    upper = np.concatenate(
        [
            np.where(usable, battery.max_charge_kw, 0.0),
            np.full(n, battery.max_discharge_kw),
            np.full(n, hi_e),
            np.full(n + 1, np.inf),
        ]
    )
    res = linprog(
        cost,
        A_ub=a_ub,
        b_ub=b_ub,
        A_eq=a_eq,
        b_eq=b_eq,
        bounds=np.column_stack([lower, upper]),
        method="highs",
        options={"time_limit": time_limit},
    )
    if res.status != 0 or res.x is None:
        raise PlanningError(f"battery: the dispatch LP was not solved ({res.message})")
    x = np.asarray(res.x, dtype=np.float64)
    method: Literal["lp", "milp"] = "lp"
    if (np.minimum(x[:n], x[n : 2 * n]) > SIMULTANEOUS_KW).any():
        x = _one_direction(cost, a_ub, b_ub, a_eq, b_eq, lower, upper, battery, n, time_limit)
        method = "milp"
    return _schedule(battery, x, n, load, cap, wz, h, method)


def _one_direction(
    cost: FloatArray,
    a_ub: sparse.csr_matrix,
    b_ub: FloatArray,
    a_eq: sparse.csr_matrix,
    b_eq: FloatArray,
    lower: FloatArray,
    upper: FloatArray,
    battery: Battery,
    n: int,
    time_limit: float,
) -> FloatArray:
    """The dispatch model with a binary z[t] per slot: c[t] <= max_charge * z[t] and
    d[t] <= max_discharge * (1 - z[t])."""
    n_lp = cost.size
    t = np.arange(n)
    link = sparse.csr_matrix(
        (
            np.concatenate(
                [np.ones(n), -np.full(n, battery.max_charge_kw), np.ones(n), np.full(n, battery.max_discharge_kw)]
            ),
            (np.concatenate([t, t, n + t, n + t]), np.concatenate([t, n_lp + t, n + t, n_lp + t])),
        ),
        shape=(2 * n, n_lp + n),
    )
    widen = sparse.hstack([a_ub, sparse.csr_matrix((a_ub.shape[0], n))]).tocsr()
    widen_eq = sparse.hstack([a_eq, sparse.csr_matrix((a_eq.shape[0], n))]).tocsr()
    constraints = [
        LinearConstraint(widen, -np.inf, b_ub),
        LinearConstraint(widen_eq, b_eq, b_eq),
        LinearConstraint(link, -np.inf, np.concatenate([np.zeros(n), np.full(n, battery.max_discharge_kw)])),
    ]
    res = milp(
        np.concatenate([cost, np.zeros(n)]),
        constraints=constraints,
        integrality=np.concatenate([np.zeros(n_lp), np.ones(n)]),
        bounds=Bounds(np.concatenate([lower, np.zeros(n)]), np.concatenate([upper, np.ones(n)])),
        options={"time_limit": time_limit},
    )
    if res.x is None:
        raise PlanningError(f"battery: the dispatch MILP was not solved ({res.message})")
    return np.asarray(res.x[:n_lp], dtype=np.float64)


def _schedule(
    battery: Battery,
    x: FloatArray,
    n: int,
    load: FloatArray,
    cap: FloatArray,
    wz: FloatArray,
    h: float,
    method: Literal["lp", "milp"],
) -> Schedule:
    charge = np.clip(x[:n], 0.0, battery.max_charge_kw)
    discharge = np.clip(x[n : 2 * n], 0.0, battery.max_discharge_kw)
    # Solver noise below a watt is no command.
    charge[charge < 1e-6] = 0.0
    discharge[discharge < 1e-6] = 0.0
    energy = battery.energy_kwh + np.cumsum(battery.efficiency * h * charge - h * discharge / battery.efficiency)
    grid = load + charge - discharge
    unmet = np.where(np.isfinite(cap), np.maximum(0.0, grid - cap), 0.0)
    unmet[unmet < 1e-6] = 0.0
    return Schedule(
        charge_kw=charge,
        discharge_kw=discharge,
        soc=energy / battery.capacity_kwh,
        load_kw=load,
        grid_kw=grid,
        ceiling_kw=cap,
        unmet_kw=unmet,
        cost=float((wz * h * grid).sum()),
        cost_without=float((wz * h * load).sum()),
        method=method,
        soc_start=battery.soc,
    )


def deliverable(
    battery: Battery,
    ceiling_kw: FloatArray,
    weight: FloatArray | None = None,
    slot_hours: float = SLOT_HOURS,
    time_limit: float = 10.0,
) -> FloatArray:
    """kW the battery can surely discharge in each slot with a ceiling (finite ``ceiling_kw``;
    0 elsewhere): the highest level it can hold in all of them, from the energy it has and what
    it can charge in the slots without a ceiling before them, then what is left where it can
    still give more. The schedule these kW come from is feasible for :func:`dispatch`, and so is
    any schedule that discharges less in some slots (it then stores more, and charges less), so
    a plan that needs no more than these kW over its ceilings can always be covered. With
    ``weight``, it charges only where :func:`dispatch` may (slots with a finite weight)."""
    cap = np.asarray(ceiling_kw, dtype=np.float64)
    n = int(cap.size)
    capped = np.isfinite(cap)
    out = np.zeros(n)
    if not capped.any() or battery.max_discharge_kw <= 0:
        return out
    h = slot_hours
    can_charge = np.ones(n, dtype=bool) if weight is None else np.isfinite(np.asarray(weight, dtype=np.float64))
    k = np.flatnonzero(capped)
    m = int(k.size)
    # variables: c (n), d (n), e (n), level (1); maximise 10 * m * level + sum(d)
    n_vars = 3 * n + 1
    cost = np.concatenate([np.zeros(n), -np.ones(n), np.zeros(n), [-10.0 * m]])
    a_eq, b_eq = _dynamics(battery, n, h, n_vars)
    a_ub = sparse.csr_matrix(
        (
            np.concatenate([np.ones(m), -np.ones(m)]),
            (np.concatenate([np.arange(m)] * 2), np.concatenate([np.full(m, 3 * n), n + k])),
        ),
        shape=(m, n_vars),
    )
    lo_e, hi_e = _energy_bounds(battery)
    lower = np.concatenate([np.zeros(2 * n), np.full(n, lo_e), [0.0]])
    upper = np.concatenate(
        [
            np.where(capped | ~can_charge, 0.0, battery.max_charge_kw),
            np.where(capped, battery.max_discharge_kw, 0.0),
            np.full(n, hi_e),
            [battery.max_discharge_kw],
        ]
    )
    res = linprog(
        cost,
        A_ub=a_ub,
        b_ub=np.zeros(m),
        A_eq=a_eq,
        b_eq=b_eq,
        bounds=np.column_stack([lower, upper]),
        method="highs",
        options={"time_limit": time_limit},
    )
    if res.status != 0 or res.x is None:
        raise PlanningError(f"battery: the deliverable-discharge LP was not solved ({res.message})")
    out[k] = np.clip(np.asarray(res.x, dtype=np.float64)[n + k], 0.0, battery.max_discharge_kw)
    return out
