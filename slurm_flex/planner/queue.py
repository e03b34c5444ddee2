"""Planning a real queue: from flexible jobs, a forecast and free capacity to planned start times.

``plan(jobs, forecast, capacity, policy, now) -> Plan`` is pure. It builds a slot instance
(see :mod:`slurm_flex.planner.instance`), solves it, and turns slot numbers back into start
times that are never earlier than a job's earliest start nor later than its latest safe start.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from slurm_flex.grid.series import SLOT_SECONDS, SignalSeries, floor_slot, iso_utc
from slurm_flex.planner.instance import FloatArray, Instance, Solution, fit_slots
from slurm_flex.planner.policy import Policy, occupancy, planned_seconds, planning_capacity
from slurm_flex.planner.risk import at_risk, place_in_order
from slurm_flex.planner.solve import evaluate, solve


@dataclass(frozen=True)
class FlexJob:
    """A pending job slurm-flex may move: everything the planner needs, nothing else."""

    job_id: str
    nodes: int
    power_w: float
    duration_s: int
    earliest: int
    latest_start: int
    deadline: int
    # The latest start the planner may choose (at most latest_start); None: latest_start.
    plan_latest: int | None = None
    # Why the job must not be deferred this time (it runs as soon as possible), or "".
    no_defer: str = ""
    # Its predicted run time (planner.runtime), planned with when the policy says so; None: none.
    predicted_s: int | None = None


@dataclass(frozen=True)
class PlannedJob:
    job_id: str
    start: int
    deferred: bool
    latest_start: int
    deadline: int
    power_w: float
    energy_kwh: float
    carbon_now_g: float | None
    carbon_planned_g: float | None
    mean_ci_now: float | None
    mean_ci_planned: float | None
    late: bool
    reason: str
    cost_now_gbp: float | None = None
    cost_planned_gbp: float | None = None

    @property
    def carbon_saved_g(self) -> float:
        if self.carbon_now_g is None or self.carbon_planned_g is None:
            return 0.0
        return self.carbon_now_g - self.carbon_planned_g


@dataclass(frozen=True)
class Plan:
    now: int
    jobs: tuple[PlannedJob, ...]
    instance: Instance | None
    solution: Solution | None
    forecast_source: str

    def by_id(self) -> dict[str, PlannedJob]:
        return {p.job_id: p for p in self.jobs}


def _hhmm(epoch: int) -> str:
    return iso_utc(epoch)[11:16]


def _mean(values: FloatArray, first: int, count: int) -> float | None:
    window = values[first : first + count]
    if window.size == 0 or not np.isfinite(window).all():
        return None
    return float(window.mean())


def _deferral_reason(
    start: int, ci_now: float | None, ci_plan: float | None, price_now: float | None, price_plan: float | None
) -> str:
    """Say which signal made the later window better, with the numbers behind it."""
    parts = []
    cleaner = ci_now is not None and ci_plan is not None and ci_plan < ci_now
    cheaper = price_now is not None and price_plan is not None and price_plan < price_now
    if ci_now is not None and ci_plan is not None:
        change = f", {(1 - ci_plan / ci_now) * 100:.0f}% less carbon" if cleaner and ci_now > 0 else ""
        parts.append(f"{ci_plan:.0f} vs {ci_now:.0f} g/kWh now{change}")
    if price_now is not None and price_plan is not None:
        parts.append(f"{price_plan:.0f} vs {price_now:.0f} GBP/MWh")
    kind = (
        "cleaner and cheaper" if cleaner and cheaper else "cleaner" if cleaner else "cheaper" if cheaper else "better"
    )
    return f"{kind} window from {_hhmm(start)} UTC: " + "; ".join(parts)


def _run_now(job: FlexJob, now: int, reason: str, late: bool = False) -> PlannedJob:
    return PlannedJob(
        job_id=job.job_id,
        start=max(now, job.earliest),
        deferred=job.earliest > now,
        latest_start=job.latest_start,
        deadline=job.deadline,
        power_w=job.power_w,
        energy_kwh=job.power_w / 1000.0 * job.duration_s / 3600.0,
        carbon_now_g=None,
        carbon_planned_g=None,
        mean_ci_now=None,
        mean_ci_planned=None,
        late=late,
        reason=reason,
    )


def _planned_job(
    job: FlexJob,
    slot: int,
    duration: int,
    release: int,
    late: bool,
    carbon: FloatArray,
    price: FloatArray,
    now: int,
) -> PlannedJob:
    """A job the solver placed at ``slot`` (of the instance from floor_slot(now)), with the
    carbon and cost of its planned window against running at release, and why."""
    slot0 = floor_slot(now)
    start = max(slot0 + slot * SLOT_SECONDS, now, job.earliest)
    energy = job.power_w / 1000.0 * job.duration_s / 3600.0
    ci_now = _mean(carbon, release, duration)
    ci_plan = _mean(carbon, slot, duration)
    price_now = _mean(price, release, duration)
    price_plan = _mean(price, slot, duration)
    deferred = start > max(now, job.earliest)
    if late:
        # The planned capacity (free nodes less headroom and the room kept for new work) has
        # no window for it: it is not deferred. Whether the queue itself would make it late
        # is judged by deadlines_at_risk, not here.
        reason = "runs as soon as possible: no room to defer it into before its latest safe start"
    elif deferred:
        reason = _deferral_reason(start, ci_now, ci_plan, price_now, price_plan)
    elif job.earliest > now:
        reason = "runs at its requested begin time: no better window before its latest safe start"
    else:
        reason = "runs now: no better window before its latest safe start"
    return PlannedJob(
        job_id=job.job_id,
        start=start,
        deferred=deferred,
        latest_start=job.latest_start,
        deadline=job.deadline,
        power_w=job.power_w,
        energy_kwh=energy,
        carbon_now_g=None if ci_now is None else ci_now * energy,
        carbon_planned_g=None if ci_plan is None else ci_plan * energy,
        mean_ci_now=ci_now,
        mean_ci_planned=ci_plan,
        late=False,
        reason=reason,
        cost_now_gbp=None if price_now is None else price_now * energy / 1000,
        cost_planned_gbp=None if price_plan is None else price_plan * energy / 1000,
    )


def with_starts(
    plan_: Plan, jobs: Sequence[FlexJob], starts: Mapping[str, int], forecast: SignalSeries, method: str
) -> Plan:
    """``plan_`` with its instance's jobs at other start slots (``starts``, one per job of the
    instance, each within its window: e.g. a joint model's), its solution's figures evaluated
    for them and ``method`` appended to the solution's; the jobs outside the instance stay."""
    inst, sol = plan_.instance, plan_.solution
    if inst is None or sol is None:
        return plan_
    slot0 = floor_slot(plan_.now)
    series = forecast.window(slot0, inst.n_slots)
    carbon, price = series.carbon_array(), series.price_array()
    by_id = {j.job_id: j for j in jobs}
    index = {job_id: k for k, job_id in enumerate(inst.job_ids)}
    slots = np.asarray([int(starts[job_id]) for job_id in inst.job_ids], dtype=np.int64)
    energy, carbon_kg, cost, objective = evaluate(inst, slots)
    solution = replace(
        sol,
        starts=dict(zip(inst.job_ids, (int(s) for s in slots), strict=True)),
        energy_kwh=energy,
        carbon_kg=carbon_kg,
        cost_gbp=cost,
        objective_gbp=objective,
        method=f"{sol.method}+{method}" if sol.method else method,
    )
    out: list[PlannedJob] = []
    for p in plan_.jobs:
        if p.job_id not in index:
            out.append(p)
            continue
        k = index[p.job_id]
        out.append(
            _planned_job(
                by_id[p.job_id],
                int(slots[k]),
                int(inst.duration[k]),
                int(inst.release[k]),
                False,
                carbon,
                price,
                plan_.now,
            )
        )
    return Plan(plan_.now, tuple(out), inst, solution, plan_.forecast_source)


def plan(
    jobs: Sequence[FlexJob],
    forecast: SignalSeries | None,
    capacity_nodes: FloatArray | None,
    policy: Policy,
    now: int,
    power_cap_kw: FloatArray | None = None,
) -> Plan:
    """Plan ``jobs`` over ``forecast``; ``capacity_nodes[i]`` is free nodes in slot i from
    floor_slot(now) (None: unlimited) and ``power_cap_kw[i]`` the most the planned jobs may draw
    in it (None or inf: no cap; a flexibility activation sets it for its window). With no
    usable forecast every job runs as submitted."""
    slot0 = floor_slot(now)
    if forecast is None or not forecast.covers(now):
        why = "no forecast" if forecast is None else "forecast does not cover now"
        return Plan(
            now,
            tuple(_run_now(j, now, f"runs as submitted: {why}") for j in jobs),
            None,
            None,
            "" if forecast is None else forecast.source,
        )
    horizon_end = min(forecast.end, slot0 + int(policy.max_horizon_hours * 3600))
    # Slots after every job's deadline can hold none of them: leave them out (a smaller model).
    last_deadline = max((j.deadline for j in jobs), default=horizon_end)
    horizon_end = max(slot0 + SLOT_SECONDS, min(horizon_end, floor_slot(last_deadline) + SLOT_SECONDS))
    series = forecast.window(slot0, (horizon_end - slot0) // SLOT_SECONDS)
    n_slots = len(series)
    planned: list[PlannedJob] = []
    rows: list[tuple[FlexJob, int, int, int]] = []  # job, duration slots, release, last start
    planned_s: list[float] = []
    for job in jobs:
        earliest = max(now, job.earliest)
        run_s = planned_seconds(job.duration_s, job.predicted_s, policy)
        duration = max(1, math.ceil(run_s / SLOT_SECONDS))
        release = (floor_slot(earliest) - slot0) // SLOT_SECONDS
        if job.latest_start < earliest:
            planned.append(_run_now(job, now, "runs as soon as possible: deadline can no longer be met", late=True))
            continue
        if job.no_defer:
            planned.append(_run_now(job, now, f"runs as submitted: {job.no_defer}"))
            continue
        if release + duration > n_slots:
            planned.append(_run_now(job, now, "runs as submitted: longer than the forecast horizon"))
            continue
        latest_plan = job.latest_start if job.plan_latest is None else min(job.plan_latest, job.latest_start)
        last = min((floor_slot(max(latest_plan, earliest)) - slot0) // SLOT_SECONDS, n_slots - duration)
        rows.append((job, duration, release, last))
        planned_s.append(run_s)
    if not rows:
        return Plan(now, tuple(planned), None, None, series.source)
    cap = (
        np.full(n_slots, np.inf)
        if capacity_nodes is None
        else np.resize(np.asarray(capacity_nodes, dtype=np.float64), n_slots)
    )
    inst = Instance(
        slot_minutes=SLOT_SECONDS // 60,
        start=slot0,
        carbon_price_gbp_per_tonne=policy.carbon_price_gbp_per_tonne,
        carbon=series.carbon_array(),
        price=series.price_array() if policy.use_price else np.full(n_slots, np.nan),
        capacity_nodes=cap,
        power_cap_kw=fit_slots(power_cap_kw, n_slots, np.inf),
        job_ids=tuple(r[0].job_id for r in rows),
        nodes=occupancy(
            np.asarray([r[0].nodes for r in rows], dtype=np.float64),
            np.asarray(planned_s, dtype=np.float64),
            np.asarray([r[1] for r in rows], dtype=np.int64),
            SLOT_SECONDS,
            policy,
        ),
        power_kw=np.asarray([r[0].power_w / 1000.0 for r in rows], dtype=np.float64),
        duration=np.asarray([r[1] for r in rows], dtype=np.int64),
        release=np.asarray([r[2] for r in rows], dtype=np.int64),
        deadline=np.asarray([r[3] + r[1] for r in rows], dtype=np.int64),
    )
    solution = solve(
        inst,
        method=policy.solver,
        min_saving_fraction=policy.min_saving_fraction,
        time_limit=policy.solve_time_limit,
    )
    carbon = series.carbon_array()
    price = series.price_array()
    late_ids = set(solution.late)
    for job, duration, release, _last in rows:
        planned.append(
            _planned_job(
                job, solution.starts[job.job_id], duration, release, job.job_id in late_ids, carbon, price, now
            )
        )
    return Plan(now, tuple(planned), inst, solution, series.source)


def placed_kw(plan_: Plan, n_slots: int) -> FloatArray:
    """kW per slot from floor_slot(now) of the jobs the solver placed (what a power ceiling on
    planned flexible work bounds)."""
    out = np.zeros(n_slots)
    inst, sol = plan_.instance, plan_.solution
    if inst is None or sol is None:
        return out
    for j, job_id in enumerate(inst.job_ids):
        s = int(sol.starts[job_id])
        out[max(0, s) : min(n_slots, s + int(inst.duration[j]))] += float(inst.power_kw[j])
    return out


def capacity_profile(
    total_nodes: float,
    busy: Sequence[tuple[int, int | None]],
    now: int,
    n_slots: int,
) -> FloatArray:
    """Free nodes per slot from floor_slot(now): ``busy`` lists (nodes, until) of work that is
    running or will run regardless of slurm-flex (until None = beyond the horizon)."""
    slot0 = floor_slot(now)
    free = np.full(n_slots, float(total_nodes))
    for nodes, until in busy:
        end = n_slots if until is None else max(0, min(n_slots, math.ceil((until - slot0) / SLOT_SECONDS)))
        free[:end] -= nodes
    return free


@dataclass(frozen=True)
class WaitingWork:
    """A pending job slurm-flex does not plan, as the queue will place it."""

    nodes: float
    duration_s: int | None  # its time limit; None: unlimited
    earliest: int  # epoch it may start from (its begin time, or now)


def queue_capacity(
    total_nodes: float,
    running: Sequence[tuple[int, int | None]],
    waiting: Sequence[WaitingWork],
    now: int,
    n_slots: int,
) -> FloatArray:
    """Free nodes per slot from floor_slot(now) once running work (nodes, until) holds its nodes
    and the waiting work, in priority order, takes its first fit after it (as Slurm's backfill
    would plan it, by time limits)."""
    free = capacity_profile(total_nodes, running, now, n_slots)
    if not waiting:
        return free
    slot0 = floor_slot(now)
    sizes = np.asarray([w.nodes for w in waiting], dtype=np.float64)
    lengths = np.asarray(
        [n_slots if w.duration_s is None else max(1, math.ceil(w.duration_s / SLOT_SECONDS)) for w in waiting],
        dtype=np.int64,
    )
    earliest = np.asarray([max(0, (floor_slot(w.earliest) - slot0) // SLOT_SECONDS) for w in waiting], dtype=np.int64)
    _, left = place_in_order(free, sizes, lengths, earliest)
    return left


def deadlines_at_risk(jobs: Sequence[FlexJob], free: FloatArray, now: int, margin_slots: int) -> frozenset[str]:
    """The jobs that must not wait any longer: queued now, behind the waiting work (``free`` is
    what it leaves) and in order of latest safe start, they would not start by their latest
    safe start less ``margin_slots``. See :mod:`slurm_flex.planner.risk`."""
    if not jobs:
        return frozenset()
    slot0 = floor_slot(now)
    risky = at_risk(
        free,
        np.asarray([j.nodes for j in jobs], dtype=np.float64),
        np.asarray([max(1, math.ceil(j.duration_s / SLOT_SECONDS)) for j in jobs], dtype=np.int64),
        np.asarray([(j.latest_start - slot0) // SLOT_SECONDS for j in jobs], dtype=np.int64),
        margin_slots,
        np.asarray([max(0, (floor_slot(max(j.earliest, now)) - slot0) // SLOT_SECONDS) for j in jobs], dtype=np.int64),
    )
    return frozenset(j.job_id for j, r in zip(jobs, risky, strict=True) if r)


def merge_plans(plans: Iterable[Plan], now: int) -> Plan:
    """Several sites' plans as one (for reconciling with Slurm): their jobs together; the
    instances and solutions stay with the per-site plans."""
    parts = list(plans)
    jobs = tuple(j for p in parts for j in p.jobs)
    source = ", ".join(p.forecast_source for p in parts if p.forecast_source)
    if len(parts) == 1:
        return parts[0]
    return Plan(now, jobs, None, None, source)


AT_RISK = "the queue could no longer start it by its latest safe start if it waited longer"


@dataclass(frozen=True)
class PlanningSnapshot:
    """Everything one planning step decides from: the daemon records it with each cycle's plan
    (``<state_dir>/plans``) and the simulator builds one every half-hour, and both hand it to
    :func:`plan_step`, so the same snapshot gives the same decisions in either."""

    now: int
    jobs: tuple[FlexJob, ...]
    free_by_limits: FloatArray  # free nodes per slot from floor_slot(now), running/queued work by time limits
    free_planned: FloatArray  # the same by planned (predicted) run times
    usable_nodes: float
    reserve: FloatArray  # nodes per slot kept for work not submitted yet
    margin_slots: int  # deadline-risk margin (policy margin plus the cycle interval)
    # Most the planned jobs may draw per slot from floor_slot(now), kW (flexibility activations);
    # None: no cap.
    power_cap_kw: FloatArray | None = None


def plan_step(snapshot: PlanningSnapshot, forecast: SignalSeries | None, policy: Policy) -> tuple[Plan, frozenset[str]]:
    """One planning step: deferred jobs the queue could no longer start in time (by time limits)
    run now; the rest are planned within the capacity the policy allows. Returns the plan and
    the jobs found at risk."""
    jobs = list(snapshot.jobs)
    candidates = [j for j in jobs if not j.no_defer]
    risky = deadlines_at_risk(candidates, snapshot.free_by_limits, snapshot.now, snapshot.margin_slots)
    if risky:
        jobs = [replace(j, no_defer=AT_RISK) if j.job_id in risky else j for j in jobs]
    capacity = planning_capacity(snapshot.free_planned, snapshot.usable_nodes, snapshot.reserve, policy)
    return plan(jobs, forecast, capacity, policy, snapshot.now, snapshot.power_cap_kw), risky


def snapshot_to_json(snapshot: PlanningSnapshot) -> dict[str, Any]:
    return {
        "now": snapshot.now,
        "jobs": [asdict(j) for j in snapshot.jobs],
        "free_by_limits": [float(x) for x in snapshot.free_by_limits],
        "free_planned": [float(x) for x in snapshot.free_planned],
        "usable_nodes": snapshot.usable_nodes,
        "reserve": [float(x) for x in snapshot.reserve],
        "margin_slots": snapshot.margin_slots,
        **(
            {"power_cap_kw": [None if not math.isfinite(x) else float(x) for x in snapshot.power_cap_kw]}
            if snapshot.power_cap_kw is not None
            else {}
        ),
    }


def snapshot_from_json(doc: Mapping[str, Any]) -> PlanningSnapshot:
    def floats(key: str) -> FloatArray:
        return np.asarray(doc[key], dtype=np.float64)

    return PlanningSnapshot(
        now=int(doc["now"]),
        jobs=tuple(FlexJob(**j) for j in doc["jobs"]),
        free_by_limits=floats("free_by_limits"),
        free_planned=floats("free_planned"),
        usable_nodes=float(doc["usable_nodes"]),
        reserve=floats("reserve"),
        margin_slots=int(doc["margin_slots"]),
        power_cap_kw=(
            None
            if doc.get("power_cap_kw") is None
            else np.asarray([math.inf if x is None else x for x in doc["power_cap_kw"]], dtype=np.float64)
        ),
    )


def series_to_json(series: SignalSeries, n_slots: int) -> dict[str, Any]:
    """The first ``n_slots`` of a forecast, as recorded with a snapshot."""
    return {
        "start": series.start,
        "carbon": [None if math.isnan(x) else x for x in series.carbon[:n_slots]],
        "price": [None if math.isnan(x) else x for x in series.price[:n_slots]],
        "source": series.source,
    }


def series_from_json(doc: Mapping[str, Any]) -> SignalSeries:
    return SignalSeries(
        start=int(doc["start"]),
        carbon=tuple(math.nan if x is None else float(x) for x in doc["carbon"]),
        price=tuple(math.nan if x is None else float(x) for x in doc["price"]),
        source=str(doc["source"]),
    )
