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

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import numpy as np

from slurm_flex.config import FlexConfig
from slurm_flex.daemon.decide import (
    _DEPENDENCY_REASONS,
    RELEASE_SLACK_S,
    Assessment,
    PriorityChange,
    queue_priorities,
)
from slurm_flex.grid.series import SLOT_SECONDS, SignalSeries
from slurm_flex.planner.instance import FloatArray
from slurm_flex.planner.policy import (
    Policy,
    arrival_reserve,
    no_defer_reason,
    reserve_ramp_slots,
    risk_margin_slots,
)
from slurm_flex.planner.queue import (
    AT_RISK,
    Plan,
    PlanningSnapshot,
    WaitingWork,
    capacity_profile,
    plan_step,
    queue_capacity,
)
from slurm_flex.slurm.parsers import SlurmJob, SlurmNode
from slurm_flex.state import JobRecord, StateStore

# Tasks of one pending array placed in the queue projection (beyond that they are far off).
MAX_PROJECTED_TASKS = 1000
# Pending reasons of jobs that wait for the machine (not for a dependency, a hold or a time).
_WAITING_REASONS = frozenset({"Resources", "Priority"})


@dataclass(frozen=True)
class SitePlan:
    """What planning one site gives the cycle."""

    plan: Plan
    assessments: list[Assessment]  # the site's, as planned (waves, no-defer reasons, risk)
    priorities: list[PriorityChange]  # for its queue (planner.risk), when expedite_at_risk
    snapshot: PlanningSnapshot  # the planning step's input, kept in the cycle's plan file


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
    ) -> SitePlan:
        """One site's plan (its jobs, on its nodes, with its signals) and the priority changes
        that keep its queued deadlines; ``power_cap`` (kW per slot from now) bounds the planned
        flexible work, where a flexibility contract is in force (slurm_flex.beckn.activation)."""
        usable = len(managed_nodes(nodes, self.rules))
        assessments = self._limit_deferral(assessments, jobs, previous, usable)
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
        if self.policy.plan_runtime == "predicted":
            free_planned = queue_capacity(
                usable, *_queue_work(jobs, planned_ids, now, self.rules.manages, predict), now, n_slots
            )
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
        plan_, risky = plan_step(snapshot, forecast, self.policy)
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
        return SitePlan(plan_, assessments, changes, snapshot)

    def _limit_deferral(
        self, assessments: list[Assessment], jobs: tuple[SlurmJob, ...], previous: dict[str, JobRecord], usable: int
    ) -> list[Assessment]:
        """Jobs that may not be deferred this cycle run as soon as possible: those too big for a
        planned window to be safe, and new work while others already wait for resources."""
        waiting = any(
            j.pending and j.state_reason in _WAITING_REASONS and self.rules.manages(j.partition) for j in jobs
        )
        out = []
        for assessed in assessments:
            a = _as_waves(assessed, usable * self.policy.capacity_headroom, self.policy.safety_margin_seconds)
            if a.flex is not None:
                deferred_already = (rec := previous.get(a.flex.job_id)) is not None and rec.status == "deferred"
                reason = no_defer_reason(a.job.nodes, usable, waiting, deferred_already, self.policy)
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
        load = self.store.mean_load(site, now - 86400)
        if load is None:  # no history (jobs of partitions no site names): this moment's load
            load = busy_nodes(managed)
        limits = [float(j.time_limit_s) for j in jobs if j.time_limit_s and self.rules.manages(j.partition)]
        return arrival_reserve(load, len(managed), reserve_ramp_slots(limits, SLOT_SECONDS), n_slots)


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
