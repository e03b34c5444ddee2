"""One site's plan each cycle: its planning inputs, built from what squeue and sinfo report,
gathered into a :class:`planner.queue.PlanningSnapshot` and planned by
:func:`planner.queue.plan_step` (the step the simulator replays), and the priority changes that
keep its queued jobs' deadlines.

The inputs are the site's flexible jobs (as large as their waves, for arrays, and not deferred
where the policy says they may not wait), the work that occupies its nodes whatever slurm-flex
does, and the room kept for work not submitted yet. The rules themselves live in
``planner.policy`` and ``planner.queue``, shared with the simulator.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from slurm_flex.battery.joint import JOINT_MAX_STARTS
from slurm_flex.battery.model import Battery
from slurm_flex.battery.planning import BatteryPlan, plan_step_with_battery
from slurm_flex.config import FlexConfig
from slurm_flex.daemon.decide import (
    _DEPENDENCY_REASONS,
    RELEASE_SLACK_S,
    Assessment,
    PriorityChange,
    queue_priorities,
)
from slurm_flex.grid.series import SLOT_SECONDS, SignalSeries, floor_slot, iso_utc
from slurm_flex.planner.instance import FloatArray
from slurm_flex.planner.policy import (
    WINDOWS_OFF,
    Policy,
    arrival_reserve,
    no_defer_reason,
    planned_seconds,
    reserve_ramp_slots,
    risk_margin_slots,
)
from slurm_flex.planner.queue import (
    AT_RISK,
    FlexJob,
    Plan,
    PlannedJob,
    PlanningSnapshot,
    WaitingWork,
    capacity_profile,
    plan_step,
    queue_capacity,
)
from slurm_flex.planner.shaping import (
    BEHIND,
    BUDGET,
    HORIZON_SLOTS,
    NO_LATEST,
    Hold,
    QueuedWork,
    ShapingSnapshot,
    arrival_due_slots,
    hold_from_snapshot,
    holds_in_order,
    slot_weight,
)
from slurm_flex.slurm.parsers import SlurmJob, SlurmNode
from slurm_flex.state import JobRecord, StateStore

# Tasks of one pending array placed in the queue projection (beyond that they are far off).
MAX_PROJECTED_TASKS = 1000
# Pending reasons of jobs that wait for the machine (not for a dependency, a hold or a time).
_WAITING_REASONS = frozenset({"Resources", "Priority"})
# Pending reasons of jobs the scheduler has not looked at since they could start: just queued
# ("None"), or their begin time has passed since its last pass ("BeginTime" stays until then).
_NOT_YET_SCHEDULED = frozenset({"None", "", "BeginTime"})
# Why a flexible job is not planned into a window of its own when the policy says so.
# What a job held back by load shaping is told.
SHAPED = "held back by load shaping"
# A job held back by load shaping waits until this long after the next cycle is due, so that
# the next cycle decides again (holds it on or releases it) before Slurm may start it: a cycle
# reads, plans and updates in seconds, and a scheduler pass in that gap would start a job whose
# begin time had just passed, whatever the plan. If the daemon stops, it goes a minute later.
HOLD_OVERLAP_S = 60


@dataclass(frozen=True)
class SiteShaping:
    """One site's load-shaping step: what it decided from (recorded with the cycle's plan), what
    it holds back, and the jobs held back (job id -> why) with their begin time."""

    snapshot: ShapingSnapshot
    hold: Hold
    held: Mapping[str, str]
    until: int  # the held jobs' begin time: just after the next cycle


@dataclass(frozen=True)
class SitePlan:
    """What planning one site gives the cycle."""

    plan: Plan
    assessments: list[Assessment]  # the site's, as planned (waves, no-defer reasons, risk)
    priorities: list[PriorityChange]  # for its queue (planner.risk), when expedite_at_risk
    snapshot: PlanningSnapshot  # the planning step's input, kept in the cycle's plan file
    shaping: SiteShaping | None = None  # load shaping (planner.shaping), when the policy shapes
    battery: BatteryPlan | None = None  # the site's battery schedule (slurm_flex.battery), if it has one


class SitePlanner:
    """Plans one site at a time by the policy, with what the state store remembers (run times,
    busy nodes over the last day)."""

    def __init__(self, policy: Policy, rules: FlexConfig, store: StateStore, interval_seconds: int) -> None:
        self.policy = policy
        self.rules = rules
        self.store = store
        self.interval_seconds = interval_seconds

    def plan(
        self,
        site: str,
        assessments: list[Assessment],
        jobs: tuple[SlurmJob, ...],
        nodes: tuple[SlurmNode, ...],
        forecast: SignalSeries | None,
        previous: dict[str, JobRecord],
        now: int,
        power_cap: FloatArray | None = None,
        seen: Iterable[JobRecord] = (),
        contract: str = "",
        battery: Battery | None = None,
        other_load_kw: FloatArray | None = None,
        meter_ceiling_kw: FloatArray | None = None,
        battery_joint_max_starts: int = JOINT_MAX_STARTS,
    ) -> SitePlan:
        """One site's plan (its jobs, on its nodes, with its signals), the priority changes that
        keep its queued deadlines and, when the policy shapes the load, the jobs held back until
        the next cycle; ``power_cap`` (kW per slot from now) bounds the planned flexible work,
        where a flexibility contract is in force (slurm_flex.beckn.activation); ``seen`` are the
        records of the site's flexible jobs of the last day (their slack: when coming work is due).
        ``contract``: "shed" or "absorb" while a flexibility contract's window is ahead or open
        (its window is then planned job by job; no load is shaped while an increase is asked).
        ``battery``: the site's battery as read this cycle, planned with the jobs
        (slurm_flex.battery.planning: its deliverable discharge raises ``power_cap`` for the job
        plan, then its schedule covers the gap); ``other_load_kw`` the rest of the site's load
        per slot (running work), which its schedule may also cover; ``meter_ceiling_kw`` a
        ceiling on the site's meter (a stress event's), the battery covering the gap under it;
        ``battery_joint_max_starts``: the largest queue (candidate starts) planned with the battery
        in one joint model (slurm_flex.battery.joint; 0: two-stage only)."""
        usable = len(managed_nodes(nodes, self.rules))
        # A flexibility contract's window is planned job by job whatever defer_to_windows says.
        windows = bool(contract) or (power_cap is not None and bool(np.isfinite(power_cap).any()))
        assessments = self._limit_deferral(assessments, jobs, previous, usable, windows=windows)
        # The store is read only when plans use predicted run times (planner.runtime).
        history = self.store.runtime_history() if self.policy.plan_runtime == "predicted" else None

        def predict(job: SlurmJob) -> float | None:
            if history is None or not job.time_limit_s:
                return None
            return history.predict(job.user, float(job.time_limit_s))

        assessments = [
            replace(a, flex=replace(a.flex, predicted_s=_int_or_none(predict(a.job))))
            if a.flex is not None and a.job.array_tasks <= 1
            else a
            for a in assessments
        ]
        flex_jobs = [a.flex for a in assessments if a.flex is not None]
        n_slots = int(self.policy.max_horizon_hours * 3600) // SLOT_SECONDS + 1
        planned_ids = {f.job_id for f in flex_jobs}
        running, waiting = _queue_work(jobs, planned_ids, now, self.rules.manages)
        # Deadlines are guarded by time limits; plans are made on predicted run times.
        free = queue_capacity(usable, running, waiting, now, n_slots)
        free_planned = free
        running_planned = running
        if self.policy.plan_runtime == "predicted":
            running_planned, waiting_planned = _queue_work(jobs, planned_ids, now, self.rules.manages, predict)
            free_planned = queue_capacity(usable, running_planned, waiting_planned, now, n_slots)
        # Jobs the queue could no longer start in time if they waited another cycle go now.
        margin = risk_margin_slots(self.policy, self.interval_seconds, SLOT_SECONDS)
        snapshot = PlanningSnapshot(
            now=now,
            jobs=tuple(flex_jobs),
            free_by_limits=free,
            free_planned=free_planned,
            usable_nodes=float(usable),
            reserve=self._reserve(site, jobs, nodes, now, free.size),
            margin_slots=margin,
            power_cap_kw=power_cap,
        )
        battery_plan = None
        if battery is None:
            plan_, risky = plan_step(snapshot, forecast, self.policy)
        else:
            plan_, risky, snapshot, battery_plan = plan_step_with_battery(
                snapshot, forecast, self.policy, battery, other_load_kw, meter_ceiling_kw, battery_joint_max_starts
            )
        if risky:
            assessments = [
                replace(a, flex=replace(a.flex, no_defer=AT_RISK))
                if a.flex is not None and a.flex.job_id in risky
                else a
                for a in assessments
            ]
        changes: list[PriorityChange] = []
        if self.policy.expedite_at_risk:
            free_running = capacity_profile(usable, running, now, n_slots)
            changes = self._expedite(jobs, assessments, plan_, previous, free_running, now, margin)
        shaping = None
        # While an increase is asked (an absorb contract's window), holding work back would work
        # against it: its floor pulls deferred work forward instead (beckn.activation).
        if self.policy.shape_load and contract != "absorb":
            shaping = self._shape(
                ShapingInputs(site, jobs, nodes, assessments, plan_, forecast, running, running_planned, usable, now),
                margin,
                predict,
                changes,
                previous,
                seen,
            )
        return SitePlan(plan_, assessments, changes, snapshot, shaping, battery_plan)

    def _limit_deferral(
        self,
        assessments: list[Assessment],
        jobs: tuple[SlurmJob, ...],
        previous: dict[str, JobRecord],
        usable: int,
        windows: bool = False,
    ) -> list[Assessment]:
        """Jobs that may not be deferred this cycle run as soon as possible: those too big for a
        planned window to be safe, new work while others already wait for resources, and every
        flexible job when single-job windows are off (unless ``windows``: a contract is in force)."""
        waiting = any(
            j.pending and j.state_reason in _WAITING_REASONS and self.rules.manages(j.partition) for j in jobs
        )
        out = []
        for assessed in assessments:
            a = _as_waves(assessed, usable * self.policy.capacity_headroom, self.policy.safety_margin_seconds)
            if a.flex is not None:
                deferred_already = (rec := previous.get(a.flex.job_id)) is not None and rec.status == "deferred"
                # Without single-job windows only load shaping moves flexible work (as the
                # simulator queues every job on arrival then).
                reason = WINDOWS_OFF if not (self.policy.defer_to_windows or windows) else ""
                reason = reason or no_defer_reason(a.job.nodes, usable, waiting, deferred_already, self.policy)
                if reason:
                    a = replace(a, flex=replace(a.flex, no_defer=reason))
            out.append(a)
        return out

    def _expedite(
        self,
        jobs: tuple[SlurmJob, ...],
        assessments: list[Assessment],
        plan_: Plan,
        previous: dict[str, JobRecord],
        free_running: FloatArray,
        now: int,
        margin: int,
    ) -> list[PriorityChange]:
        """Priority changes for the site's queue: the jobs this cycle leaves waiting (not those
        deferred to later), with the deadlines of those slurm-flex plans."""
        planned = plan_.by_id()
        later = {job_id for job_id, p in planned.items() if p.start > now + RELEASE_SLACK_S}
        flex = {
            a.flex.job_id: a.flex
            for a in assessments
            if a.flex is not None and a.flex.job_id in planned and a.flex.job_id not in later
        }
        waiting = [
            j
            for j in jobs
            if j.pending
            and not j.held
            and self.rules.manages(j.partition)
            and j.state_reason not in _DEPENDENCY_REASONS
        ]
        queue = [j for j in waiting if j.update_id not in later]
        others_top = max((j.priority for j in waiting if j.update_id in later), default=0)
        return queue_priorities(queue, flex, previous, free_running, now, margin, others_top)

    def _reserve(
        self, site: str, jobs: tuple[SlurmJob, ...], nodes: tuple[SlurmNode, ...], now: int, n_slots: int
    ) -> FloatArray:
        """Room for work not submitted yet: the site's busy nodes over the last day (recorded
        every cycle by the cycle, from :func:`busy_nodes`), phased in over its jobs' typical time
        limit (planner.policy.arrival_reserve)."""
        if not self.policy.arrival_reserve:
            return np.zeros(n_slots)
        managed = managed_nodes(nodes, self.rules)
        return arrival_reserve(self._recent_load(site, nodes, now), len(managed), self._ramp_slots(jobs), n_slots)

    def _recent_load(self, site: str, nodes: tuple[SlurmNode, ...], now: int, days: int = 1) -> float:
        """The site's mean busy nodes over the last ``days`` (what arriving work keeps busy)."""
        load = self.store.mean_load(site, now - days * 86400)
        if load is None:  # no history (jobs of partitions no site names): this moment's load
            load = busy_nodes(managed_nodes(nodes, self.rules))
        return load

    def _coming_load(self, site: str, nodes: tuple[SlurmNode, ...], now: int) -> float:
        """Load shaping's coming work: what the last day's arrivals kept busy, or the last week's
        when that is more (one day can understate what comes: see the simulator, simulate.engine,
        which takes the same)."""
        return max(self._recent_load(site, nodes, now), self._recent_load(site, nodes, now, days=7))

    def _ramp_slots(self, jobs: tuple[SlurmJob, ...]) -> int:
        """The typical run of the site's work, in slots: the median time limit of its jobs."""
        limits = [float(j.time_limit_s) for j in jobs if j.time_limit_s and self.rules.manages(j.partition)]
        return reserve_ramp_slots(limits, SLOT_SECONDS)

    def _shape(
        self,
        given: ShapingInputs,
        margin: int,
        predict: Callable[[SlurmJob], float | None],
        changes: Sequence[PriorityChange],
        previous: Mapping[str, JobRecord],
        seen: Iterable[JobRecord],
    ) -> SiteShaping:
        """Load shaping for one site (planner.shaping, as the simulator applies it): the fluid
        plan of its queue over the forecast says how many nodes of queued work with deadlines
        may start until the next cycle; its flexible jobs that Slurm could start now get that
        budget in queue order, the others wait until just after the next cycle. Never held: work
        without a deadline, jobs within the risk margin or ``shape_exempt_hours`` of their latest
        safe start, those the
        queue projection found at risk and those moved up the queue for their deadlines."""
        snapshot = self._shaping_snapshot(given, margin, predict, seen)
        hold = hold_from_snapshot(snapshot, self.policy)
        until = given.now + self.interval_seconds + HOLD_OVERLAP_S
        if not hold.holding:
            return SiteShaping(snapshot, hold, {}, until)
        flex = {a.flex.job_id: a.flex for a in given.assessments if a.flex is not None}
        restored = {c.job_id for c in changes if c.kind == "restore"}
        moved = {c.job_id for c in changes if c.kind == "expedite"} | {
            job_id for job_id, rec in previous.items() if rec.priority_before is not None and job_id not in restored
        }
        exempt_s = max(margin * SLOT_SECONDS, self.policy.shape_exempt_hours * 3600)
        order = list(dict.fromkeys(snapshot.job_ids))  # an array's tasks: once, at its place
        nodes_of = {j.update_id: float(j.nodes) for j in given.jobs}
        sizes, budgeted, holdable = [], [], []
        for job_id in order:
            f = flex.get(job_id)
            may_hold = f is not None and f.no_defer != AT_RISK and job_id not in moved
            sizes.append(float(f.nodes) if f is not None else nodes_of.get(job_id, 1.0))
            holdable.append(may_hold and f is not None and until <= f.latest_start)
            # As in the simulator: a job this close to its latest safe start gathers its nodes
            # as they come free, whatever the plan holds back ([policy] shape_exempt_hours); it
            # still keeps behind a job held ahead of it.
            budgeted.append(may_hold and f is not None and f.latest_start - given.now > exempt_s)
        budget = hold.start_budget
        why = {
            BUDGET: f"{SHAPED} until {iso_utc(until)[11:16]} UTC: {hold.reason} ({hold.procs:.1f} nodes kept idle, "
            f"{budget:.1f} nodes of queued work with deadlines may start)",
            BEHIND: f"{SHAPED} until {iso_utc(until)[11:16]} UTC: keeps its place behind a job held ahead of it "
            f"({hold.reason})",
        }
        idle = float(sum(1 for n in managed_nodes(given.nodes, self.rules) if n.alloc_cpus == 0))
        kinds = holds_in_order(sizes, budgeted, holdable, idle, budget)
        held = {job_id: why[kind] for job_id, kind in zip(order, kinds, strict=True) if kind is not None}
        return SiteShaping(snapshot, hold, held, until)

    def _shaping_snapshot(
        self,
        given: ShapingInputs,
        margin: int,
        predict: Callable[[SlurmJob], float | None],
        seen: Iterable[JobRecord],
    ) -> ShapingSnapshot:
        """The load-shaping step's input on the half-hour grid from floor_slot(now): the
        forecast objective, the nodes running work holds (by predicted run times and by time
        limits), the queue in Slurm's priority order and the work expected to arrive."""
        now, usable = given.now, given.usable
        slot0 = floor_slot(now)
        weight = np.zeros(0)
        if given.forecast is not None and given.forecast.covers(now):
            window = given.forecast.window(slot0, HORIZON_SLOTS)
            weight = slot_weight(window.carbon_array(), window.price_array(), self.policy)
        h = int(weight.size)
        flex = {a.flex.job_id: a.flex for a in given.assessments if a.flex is not None}
        planned = given.plan.by_id()
        queued = sorted(
            (j for j in given.jobs if _in_shaping_queue(j, flex, planned, now, self.rules.manages)),
            key=lambda j: (-j.priority, j.submit_time),
        )
        rows: list[tuple[str, float, int, int, int, bool]] = []
        for j in queued:
            f = flex.get(j.update_id)
            limit = j.time_limit_s
            limit_steps = max(1, h) if not limit else max(1, math.ceil(limit / SLOT_SECONDS))
            run = planned_seconds(limit, predict(j), self.policy) if limit else None
            planned_steps = limit_steps if run is None else max(1, math.ceil(run / SLOT_SECONDS))
            latest = NO_LATEST if f is None else (f.latest_start - slot0) // SLOT_SECONDS
            row = (j.update_id, float(j.nodes), planned_steps, limit_steps, latest, f is not None)
            # An array's tasks queue one after another, as in the queue projection.
            rows.extend(row for _ in range(min(j.array_tasks, MAX_PROJECTED_TASKS)))
        queue = QueuedWork(
            procs=np.asarray([r[1] for r in rows], dtype=np.float64),
            planned_steps=np.asarray([r[2] for r in rows], dtype=np.int64),
            limit_steps=np.asarray([r[3] for r in rows], dtype=np.int64),
            latest_step=np.asarray([r[4] for r in rows], dtype=np.int64),
            has_deadline=np.asarray([r[5] for r in rows], dtype=np.bool_),
        )
        # When the coming work is due: the median slack of the flexible work seen (today's and
        # what is queued now), as the simulator takes its trace's. Not [flex] default_slack_hours:
        # that is what jobs without a deadline of their own get, 0 at most sites, and would
        # leave the arrivals out of the plan even where most work comes with a day of slack.
        slack = {r.job_id: _slack(r) for r in seen}
        slack.update({f.job_id: f.latest_start - f.earliest for f in flex.values()})
        return ShapingSnapshot(
            now=now,
            weight=weight,
            running_planned=usable - capacity_profile(usable, given.running_planned, now, h),
            running_limits=usable - capacity_profile(usable, given.running_limits, now, h),
            capacity=float(usable),
            queue=queue,
            arrival_load=self._coming_load(given.site, given.nodes, now),
            arrival_due_slots=arrival_due_slots(
                [x for x in slack.values() if x is not None], self.rules.default_slack_hours * 3600, SLOT_SECONDS
            ),
            arrival_run_slots=self._ramp_slots(given.jobs),
            margin_slots=margin,
            steps_per_slot=1,
            job_ids=tuple(r[0] for r in rows),
        )


@dataclass(frozen=True)
class ShapingInputs:
    """What one site's planning hands its load-shaping step."""

    site: str
    jobs: tuple[SlurmJob, ...]
    nodes: tuple[SlurmNode, ...]
    assessments: list[Assessment]  # as planned: no-defer reasons, risk
    plan: Plan
    forecast: SignalSeries | None
    running_limits: list[tuple[int, int | None]]  # running work (nodes, until), by time limits
    running_planned: list[tuple[int, int | None]]  # the same by predicted run times
    usable: int
    now: int


def _slack(record: JobRecord) -> float | None:
    """A flexible job's slack: its latest safe start less its earliest (None: not known)."""
    if record.latest_start is None or record.earliest is None:
        return None
    return float(record.latest_start - record.earliest)


def _in_shaping_queue(
    job: SlurmJob,
    flex: Mapping[str, FlexJob],
    planned: Mapping[str, PlannedJob],
    now: int,
    managed: Callable[[str], bool],
) -> bool:
    """Is the job in the queue load shaping plans (waiting for the machine in a managed
    partition)? A flexible job is when this cycle's plan starts it now, whatever begin time it
    waits for: that one is slurm-flex's own (the hook's grace, or load shaping's hold last
    cycle), released or held on this cycle. Another job is when it waits for resources or
    priority, or could start and the scheduler has not looked at it yet; not when it waits for
    a dependency, a hold or its own begin time."""
    if not job.pending or job.held or not managed(job.partition) or job.state_reason in _DEPENDENCY_REASONS:
        return False
    if job.update_id in flex:
        p = planned.get(job.update_id)
        return p is not None and p.start <= now + RELEASE_SLACK_S
    if job.state_reason in _WAITING_REASONS:
        return True
    return job.state_reason in _NOT_YET_SCHEDULED and (job.eligible_time is None or job.eligible_time <= now)


def managed_nodes(nodes: Iterable[SlurmNode], rules: FlexConfig) -> list[SlurmNode]:
    """The usable nodes of the partitions slurm-flex manages (every node when it manages all)."""
    return [n for n in nodes if n.usable and (not rules.partitions or any(rules.manages(p) for p in n.partitions))]


def busy_nodes(nodes: Iterable[SlurmNode]) -> float:
    """Nodes' worth of allocated CPUs."""
    return sum(min(1.0, n.alloc_cpus / n.cpus) for n in nodes if n.cpus > 0)


def _queue_work(
    jobs: tuple[SlurmJob, ...],
    planned_ids: set[str],
    now: int,
    managed: Callable[[str], bool],
    predict: Callable[[SlurmJob], float | None] | None = None,
) -> tuple[list[tuple[int, int | None]], list[WaitingWork]]:
    """Work that occupies the managed nodes whatever slurm-flex does: running jobs (nodes,
    until) and the pending jobs it does not plan, in Slurm's priority order (held jobs wait for
    a person). By time limits; with ``predict``, by predicted run times instead (a running job
    past its prediction is counted until one slot from now, or its time limit if sooner), the
    view plans are made on (planner.policy.plan_runtime), never the one deadlines are guarded by."""
    running: list[tuple[int, int | None]] = []
    waiting: list[tuple[int, int, WaitingWork]] = []
    for j in jobs:
        if j.update_id in planned_ids or not managed(j.partition):
            continue
        guess = predict(j) if predict is not None else None
        if j.state in ("RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED"):
            until = j.end_time
            if guess is not None and j.start_time is not None:
                until = int(j.start_time + guess)
                if until <= now:
                    until = now + SLOT_SECONDS if j.end_time is None else min(j.end_time, now + SLOT_SECONDS)
            running.append((j.nodes, until))
        elif j.pending and not j.held:
            limit = j.time_limit_s if guess is None else int(guess)
            work = WaitingWork(j.nodes, limit, max(now, j.eligible_time or now))
            # An array's tasks queue one after another in the projection, not as one block.
            waiting.extend((-j.priority, j.submit_time, work) for _ in range(min(j.array_tasks, MAX_PROJECTED_TASKS)))
    waiting.sort(key=lambda w: (w[0], w[1]))
    return running, [w for _, _, w in waiting]


def _as_waves(a: Assessment, capacity: float, margin: int) -> Assessment:
    """A job array runs as many tasks at a time as fit (or as its %N throttle allows): plan it as
    that many tasks side by side for as many waves as it takes, and make its latest safe start
    leave time for every wave."""
    job, flex = a.job, a.flex
    if flex is None or job.array_tasks <= 1:
        return a
    per_wave = max(1, int(capacity // max(job.nodes, 1)))
    if job.array_throttle:
        per_wave = min(per_wave, job.array_throttle)
    per_wave = min(per_wave, job.array_tasks)
    waves = -(-job.array_tasks // per_wave)
    if waves == 1:
        return a
    duration = flex.duration_s * waves
    latest = min(flex.latest_start, flex.deadline - duration - margin)
    plan_latest = None if flex.plan_latest is None else min(flex.plan_latest, latest)
    return replace(
        a,
        flex=replace(
            flex,
            nodes=job.nodes * per_wave,
            power_w=flex.power_w / job.array_tasks * per_wave,
            duration_s=duration,
            latest_start=latest,
            plan_latest=plan_latest,
        ),
    )


def _int_or_none(value: float | None) -> int | None:
    return None if value is None else int(value)
