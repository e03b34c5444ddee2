"""Jobs and battery in one plan: how a site's planning step uses an on-site battery.

First a **two-stage decision** (the job planner is a time-indexed integer program with its own
heuristics and bounds, ``planner.solve``; the battery is a small LP beside it), then, where the
instance is small enough, **one joint model** of both that replaces it when strictly better:

1. *Headroom.* Where a flexibility activation puts a ceiling on the site
   (``PlanningSnapshot.power_cap_kw``, kW the planned flexible work may draw), the battery's
   deliverable discharge in each capped slot (:func:`dispatch.deliverable`: the most it can hold
   evenly over the capped slots, from its state of charge and what it can charge before them)
   is added to the ceiling the job planner plans against. The job plan is then made exactly as
   without a battery (:func:`planner.queue.plan_step`), on that raised ceiling.
2. *Dispatch.* For the load that plan gives (the planned flexible jobs per slot, plus the
   site's other load where the caller knows it), :func:`dispatch.dispatch` chooses charge and
   discharge per slot under the original ceiling, minimising the planner's own objective. The
   stage-1 schedule is one of its feasible points (discharging less than that is feasible too),
   so wherever the job plan kept to the raised ceiling the battery covers the gap exactly and
   the grid meter stays within the original ceiling; anything it could not cover (jobs the
   planner had to leave late, which run outside its capacity rows) is reported as
   ``unmet_kw``, never hidden.
3. *Joint.* Where the job plan left no job late and the instance is small enough
   (``joint_max_starts`` candidate starts, ``[battery] joint_max_starts``), one MILP places the jobs' starts
   and the battery's charge and discharge together (:func:`joint.joint_plan`): it sees the
   battery's arbitrage value and may put more of its energy in some capped slots than in
   others. The two-stage plan is a feasible point of that model, and it is kept unless the
   joint plan, dispatched again for its own load, is strictly cheaper by :func:`joint.site_cost`:
   so the plan made with the joint model is never worse than the two-stage one. Larger
   instances (and a joint MILP that finds nothing in the time limit) keep the two-stage plan.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import structlog

from slurm_flex.battery.dispatch import Schedule, deliverable, dispatch, grid_weight
from slurm_flex.battery.joint import JOINT_MAX_STARTS, joint_plan, site_cost
from slurm_flex.battery.model import Battery
from slurm_flex.errors import PlanningError
from slurm_flex.grid.series import SLOT_SECONDS, SignalSeries, floor_slot
from slurm_flex.planner.instance import FloatArray, fit_slots
from slurm_flex.planner.policy import Policy
from slurm_flex.planner.queue import Plan, PlanningSnapshot, placed_kw, plan_step, with_starts

log = structlog.get_logger(__name__)

# The raised ceiling keeps this margin below what the battery can give (solver tolerances).
HEADROOM_MARGIN_KW = 1e-6


@dataclass(frozen=True)
class BatteryPlan:
    """What planning a site with its battery decided: the schedule per slot from
    floor_slot(now), the ceiling the activation set (kW of planned flexible work; None: none)
    and the discharge the job plan was allowed to count on over it."""

    start: int  # epoch of the schedule's first slot
    schedule: Schedule
    ceiling_kw: FloatArray | None
    headroom_kw: FloatArray
    # "two-stage" or "joint" (module docstring), and each one's cost by joint.site_cost (None:
    # the joint model was not solved).
    method: str = "two-stage"
    two_stage_cost: float | None = None
    joint_cost: float | None = None

    def setpoint_kw(self, now: int) -> float:
        """The command for the slot ``now`` is in: positive charges, negative discharges."""
        k = (floor_slot(now) - self.start) // SLOT_SECONDS
        net = self.schedule.net_kw
        return float(net[k]) if 0 <= k < net.size else 0.0

    def to_json(self) -> dict[str, object]:
        return {
            **self.schedule.to_json(self.start),
            "planner_ceiling_kw": None
            if self.ceiling_kw is None
            else [float(x) if math.isfinite(x) else None for x in self.ceiling_kw],
            "headroom_kw": [round(float(x), 4) for x in self.headroom_kw],
            "plan_method": self.method,
            "two_stage_cost": None if self.two_stage_cost is None else round(self.two_stage_cost, 6),
            "joint_cost": None if self.joint_cost is None else round(self.joint_cost, 6),
        }


def _weights(forecast: SignalSeries, slot0: int, n: int, policy: Policy) -> FloatArray:
    """The planner's weights per slot from slot0 (NaN past the forecast)."""
    out = np.full(n, np.nan)
    if not forecast.covers(slot0):
        return out
    k = min(n, (forecast.end - slot0) // SLOT_SECONDS)
    window = forecast.window(slot0, k)
    out[:k] = grid_weight(window.carbon_array(), window.price_array(), policy)
    return out


def planned_load_kw(plan_: Plan, n_slots: int) -> FloatArray:
    """kW of the plan's flexible jobs per slot from floor_slot(plan.now): those in its instance
    at their planned starts (what the power ceiling bounds), and those that run as submitted
    from their start for as long as their energy lasts at their power."""
    slot0 = floor_slot(plan_.now)
    kw = placed_kw(plan_, n_slots)
    in_instance = set(plan_.instance.job_ids) if plan_.instance is not None and plan_.solution is not None else set()
    for p in plan_.jobs:
        if p.job_id in in_instance or p.power_w <= 0:
            continue
        hours = p.energy_kwh / (p.power_w / 1000.0)
        s = (floor_slot(p.start) - slot0) // SLOT_SECONDS
        e = s + max(1, math.ceil(hours * 3600 / SLOT_SECONDS))
        kw[max(0, s) : max(0, e)] += p.power_w / 1000.0
    return kw


def plan_step_with_battery(
    snapshot: PlanningSnapshot,
    forecast: SignalSeries | None,
    policy: Policy,
    battery: Battery,
    other_load_kw: Sequence[float] | FloatArray | None = None,
    meter_ceiling_kw: Sequence[float] | FloatArray | None = None,
    joint_max_starts: int = JOINT_MAX_STARTS,
) -> tuple[Plan, frozenset[str], PlanningSnapshot, BatteryPlan | None]:
    """:func:`planner.queue.plan_step` with the battery (the two stages of the module
    docstring). Returns the plan, the jobs found at risk, the snapshot the jobs were planned on
    (its ceiling raised by the battery's headroom: the one to record for a replay) and the
    battery's plan (None without a usable forecast: the battery is then left alone).
    ``other_load_kw``: the rest of the site's load per slot from floor_slot(now) (running jobs,
    idle nodes), which the battery may also cover; the ceiling stays on the planned work.
    ``meter_ceiling_kw``: a ceiling on the whole site's meter per slot (a stress event's,
    daemon.stress), which the other load may exceed: the battery is dispatched to cover that
    gap first, so none of its energy is promised to planned work in slots where there is one.
    ``joint_max_starts``: the most candidate starts the joint model is built for (0: two-stage
    only)."""
    slot0 = floor_slot(snapshot.now)
    n = int(policy.max_horizon_hours * 3600) // SLOT_SECONDS + 1
    if forecast is not None and forecast.covers(snapshot.now):
        n = max(1, min(n, (forecast.end - slot0) // SLOT_SECONDS))
    else:
        plan_, risky = plan_step(snapshot, forecast, policy)
        return plan_, risky, snapshot, None
    weight = _weights(forecast, slot0, n, policy)
    ceiling = None if snapshot.power_cap_kw is None else fit_slots(snapshot.power_cap_kw, n, np.inf)
    headroom = np.zeros(n)
    planned_on = snapshot
    other = fit_slots(other_load_kw, n, 0.0)
    other = np.maximum(other, 0.0)
    meter_cap = None if meter_ceiling_kw is None else fit_slots(meter_ceiling_kw, n, np.inf)
    gap = meter_cap is not None and bool((other > meter_cap + 1e-9).any())
    if ceiling is not None and np.isfinite(ceiling).any() and not gap:
        try:
            headroom = deliverable(battery, ceiling, weight, time_limit=policy.solve_time_limit)
        except PlanningError as exc:  # the jobs are planned as without a battery
            log.warning("battery_headroom_failed", error=str(exc))
        headroom = np.maximum(0.0, headroom - HEADROOM_MARGIN_KW)
        raised = ceiling + headroom
        if snapshot.power_cap_kw is not None and len(snapshot.power_cap_kw) > n:
            raised = np.concatenate([raised, np.asarray(snapshot.power_cap_kw[n:], dtype=np.float64)])
        planned_on = replace(snapshot, power_cap_kw=raised)
    plan_, risky = plan_step(planned_on, forecast, policy)
    flexible = planned_load_kw(plan_, n)
    # The ceiling bounds planned flexible work; at the meter it sits on top of the other load.
    meter_ceiling = None if ceiling is None else ceiling + other
    if meter_cap is not None:
        meter_ceiling = meter_cap if meter_ceiling is None else np.minimum(meter_ceiling, meter_cap)
    try:
        schedule = dispatch(battery, flexible + other, weight, meter_ceiling, time_limit=policy.solve_time_limit)
    except PlanningError as exc:  # the job plan stands; the battery is left to itself
        log.warning("battery_dispatch_failed", error=str(exc))
        return plan_, risky, planned_on, None
    two_stage = BatteryPlan(slot0, schedule, ceiling, headroom)
    if joint_max_starts <= 0 or plan_.instance is None or plan_.solution is None or plan_.solution.late:
        return plan_, risky, planned_on, two_stage
    fixed = flexible - placed_kw(plan_, n) + other
    joint = joint_plan(
        plan_.instance,
        battery,
        weight,
        fixed,
        meter_ceiling,
        time_limit=policy.solve_time_limit,
        max_starts=joint_max_starts,
    )
    cost_two = site_cost(schedule, battery, weight)
    if joint is None:
        return plan_, risky, planned_on, replace(two_stage, two_stage_cost=cost_two)
    joint_jobs = with_starts(plan_, snapshot.jobs, joint.starts, forecast, "joint-battery")
    try:
        joint_schedule = dispatch(
            battery, planned_load_kw(joint_jobs, n) + other, weight, meter_ceiling, time_limit=policy.solve_time_limit
        )
    except PlanningError as exc:
        log.warning("battery_joint_dispatch_failed", error=str(exc))
        return plan_, risky, planned_on, replace(two_stage, two_stage_cost=cost_two)
    cost_joint = site_cost(joint_schedule, battery, weight)
    # Strictly cheaper beyond solver noise, or the two-stage plan stands.
    if cost_joint < cost_two - 1e-9 * max(1.0, abs(cost_two)):
        log.info("battery_joint_plan", two_stage_cost=round(cost_two, 6), joint_cost=round(cost_joint, 6))
        return (
            joint_jobs,
            risky,
            planned_on,
            BatteryPlan(slot0, joint_schedule, ceiling, headroom, "joint", cost_two, cost_joint),
        )
    return plan_, risky, planned_on, replace(two_stage, two_stage_cost=cost_two, joint_cost=cost_joint)
