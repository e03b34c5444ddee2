"""Planning a real queue: from flexible jobs, a forecast and free capacity to planned start times.

``plan(jobs, forecast, capacity, policy, now) -> Plan`` is pure. It builds a slot instance
(see :mod:`slurm_flex.planner.instance`), solves it, and turns slot numbers back into start
times that are never earlier than a job's earliest start nor later than its latest safe start.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from slurm_flex.grid.series import SLOT_SECONDS, SignalSeries, floor_slot, iso_utc
from slurm_flex.planner.instance import FloatArray, Instance, Solution
from slurm_flex.planner.risk import at_risk, place_in_order
from slurm_flex.planner.solve import solve


@dataclass(frozen=True)
class Policy:
    """Planning knobs (from the ``[policy]`` config section)."""

    safety_margin_seconds: int = 900
    min_saving_fraction: float = 0.05
    capacity_headroom: float = 0.9
    slack_use_fraction: float = 0.8
    carbon_price_gbp_per_tonne: float = 250.0
    max_horizon_hours: float = 168.0
    use_price: bool = True
    solve_time_limit: float = 10.0


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


def plan(
    jobs: Sequence[FlexJob],
    forecast: SignalSeries | None,
    capacity_nodes: FloatArray | None,
    policy: Policy,
    now: int,
) -> Plan:
    """Plan ``jobs`` over ``forecast``; ``capacity_nodes[i]`` is free nodes in slot i from
    floor_slot(now) (None: unlimited). With no usable forecast every job runs as submitted."""
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
    series = forecast.window(slot0, (horizon_end - slot0) // SLOT_SECONDS)
    n_slots = len(series)
    planned: list[PlannedJob] = []
    rows: list[tuple[FlexJob, int, int, int]] = []  # job, duration slots, release, last start
    for job in jobs:
        earliest = max(now, job.earliest)
        duration = max(1, math.ceil(job.duration_s / SLOT_SECONDS))
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
        power_cap_kw=np.full(n_slots, np.inf),
        job_ids=tuple(r[0].job_id for r in rows),
        nodes=np.asarray([r[0].nodes for r in rows], dtype=np.float64),
        power_kw=np.asarray([r[0].power_w / 1000.0 for r in rows], dtype=np.float64),
        duration=np.asarray([r[1] for r in rows], dtype=np.int64),
        release=np.asarray([r[2] for r in rows], dtype=np.int64),
        deadline=np.asarray([r[3] + r[1] for r in rows], dtype=np.int64),
    )
    solution = solve(inst, min_saving_fraction=policy.min_saving_fraction, time_limit=policy.solve_time_limit)
    carbon = series.carbon_array()
    price = series.price_array()
    late_ids = set(solution.late)
    for job, duration, release, _last in rows:
        slot = solution.starts[job.job_id]
        start = max(slot0 + slot * SLOT_SECONDS, now, job.earliest)
        energy = job.power_w / 1000.0 * job.duration_s / 3600.0
        ci_now = _mean(carbon, release, duration)
        ci_plan = _mean(carbon, slot, duration)
        price_now = _mean(price, release, duration)
        price_plan = _mean(price, slot, duration)
        deferred = start > max(now, job.earliest)
        if job.job_id in late_ids:
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
        planned.append(
            PlannedJob(
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
        )
    return Plan(now, tuple(planned), inst, solution, series.source)


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


def arrival_reserve(
    load_nodes: float, total_nodes: float, ramp_slots: int, n_slots: int, by_utilisation: bool = True
) -> FloatArray:
    """Nodes per slot from now to keep for work not submitted yet, so that a planned window is
    not filled by deferred work alone: ``load_nodes`` (what recent arrivals kept busy) phased in
    over ``ramp_slots`` (their typical time limit, as running work hands over to new work).
    Scaled by utilisation: on a lightly used machine work arriving into a full window waits
    little, the backlog drains fast; on a busy one it would queue past its deadline (measured
    with the simulator on the KTH and LLNL traces, see bench/results/simulate.txt)."""
    if load_nodes <= 0 or total_nodes <= 0:
        return np.zeros(n_slots)
    reserve = load_nodes * np.minimum(1.0, np.arange(n_slots) / max(ramp_slots, 1))
    if by_utilisation:
        reserve *= min(1.0, load_nodes / total_nodes)
    return reserve


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
