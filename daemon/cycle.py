"""One daemon cycle: read the queue, plan, move start times, record what happened.

Side effects are confined to the backend (Slurm), the forecast source and the state store, all
passed in. Soft failures (controller down, forecast broken, a job that finished between read
and update) are logged and counted; the cycle still records itself and returns.
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np
import structlog

from slurm_flex.config import Config, FlexConfig, NodeType, PowerConfig
from slurm_flex.daemon.decide import (
    _DEPENDENCY_REASONS,
    EXPEDITED,
    PRIORITY_KINDS,
    RELEASE_SLACK_S,
    Assessment,
    Intent,
    PriorityChange,
    annotate_comment,
    assess,
    power_request,
    queue_priorities,
    reconcile,
)
from slurm_flex.daemon.power import PowerLedger
from slurm_flex.errors import ForecastError, SlurmError, SlurmFlexError
from slurm_flex.grid.report import signal_summary
from slurm_flex.grid.series import SLOT_SECONDS, SignalSeries, iso_utc
from slurm_flex.planner.instance import FloatArray, instance_to_json
from slurm_flex.planner.queue import (
    Plan,
    PlannedJob,
    Policy,
    WaitingWork,
    arrival_reserve,
    capacity_profile,
    deadlines_at_risk,
    merge_plans,
    plan,
    queue_capacity,
)
from slurm_flex.power.sample import PowerReader
from slurm_flex.power.slurm_energy import SlurmEnergyReader
from slurm_flex.powermodel import NodePower, PowerModel
from slurm_flex.slurm.backend import SlurmBackend, UpdateReport
from slurm_flex.slurm.parsers import SlurmJob, SlurmNode
from slurm_flex.state import PENDING_STATUSES, SIGNALS_SETTING, JobRecord, StateStore

log = structlog.get_logger(__name__)

# How many per-cycle plan files to keep in <state_dir>/plans.
PLAN_FILES_KEPT = 200
# Tasks of one pending array placed in the queue projection (beyond that they are far off).
MAX_PROJECTED_TASKS = 1000
AT_RISK = "the queue could no longer start it by its latest safe start if it waited longer"
DEFAULT_SITE = "default"
NO_SITE = "(no site)"


class ForecastSource(Protocol):
    @property
    def name(self) -> str: ...

    def forecast(self, now: float) -> SignalSeries: ...


@dataclass(frozen=True)
class CycleResult:
    cycle_id: int
    ok: bool
    jobs_seen: int
    flexible: int
    deferred: int
    updates: int
    errors: int
    commands: int
    duration_s: float
    message: str
    mode: str = "enforce"
    slurm_ok: bool = True  # False: Slurm could not be read (the loop backs off)
    forecast_age_s: float | None = None  # now - when the forecast was issued, where known
    planned_kw: tuple[float, ...] = ()  # per half-hour slot from now: power of the planned flexible jobs
    carbon_saved_kg: float = 0.0  # planned, on pending jobs
    # Per site: True when it planned on a fallback (last good forecast, profile, or no signal).
    signal_fallback: tuple[tuple[str, bool], ...] = ()
    measured_kw: float | None = None  # measured power of the nodes with fresh readings
    expedited: int = 0  # queued jobs slurm-flex holds moved up the queue


def policy_from(config: Config) -> Policy:
    p = config.policy
    return Policy(
        safety_margin_seconds=p.safety_margin_seconds,
        min_saving_fraction=p.min_saving_fraction,
        carbon_price_gbp_per_tonne=p.carbon_price_gbp_per_tonne,
        max_horizon_hours=p.max_horizon_hours,
        use_price=p.use_price,
        capacity_headroom=p.capacity_headroom,
        slack_use_fraction=p.slack_use_fraction,
    )


def _node_power(t: NodeType | PowerConfig, default_gpu: float) -> NodePower:
    gpu = t.gpu_watts if t.gpu_watts is not None else default_gpu
    return NodePower(t.node_idle_watts, t.node_max_watts, t.cpus_per_node, gpu)


def power_model_from(config: Config) -> PowerModel:
    p = config.power
    return PowerModel(
        default=_node_power(p, p.gpu_watts),
        memory_watts_per_gb=p.memory_watts_per_gb,
        node_types={name: _node_power(t, p.gpu_watts) for name, t in p.node_types.items()},
        partition_node_types=dict(p.partition_node_types),
        gpu_model_watts=dict(p.gpu_model_watts),
    )


def _queue_work(
    jobs: tuple[SlurmJob, ...], planned_ids: set[str], now: int, managed: Callable[[str], bool]
) -> tuple[list[tuple[int, int | None]], list[WaitingWork]]:
    """Work that occupies the managed nodes whatever slurm-flex does: running jobs (nodes,
    until) and the pending jobs it does not plan, in Slurm's priority order (held jobs wait for
    a person)."""
    running: list[tuple[int, int | None]] = []
    waiting: list[tuple[int, int, WaitingWork]] = []
    for j in jobs:
        if j.update_id in planned_ids or not managed(j.partition):
            continue
        if j.state in ("RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED"):
            running.append((j.nodes, j.end_time))
        elif j.pending and not j.held:
            work = WaitingWork(j.nodes, j.time_limit_s, max(now, j.eligible_time or now))
            # An array's tasks queue one after another in the projection, not as one block.
            waiting.extend((-j.priority, j.submit_time, work) for _ in range(min(j.array_tasks, MAX_PROJECTED_TASKS)))
    waiting.sort(key=lambda w: (w[0], w[1]))
    return running, [w for _, _, w in waiting]


def _record_for(
    job: SlurmJob,
    a: Assessment,
    prev: JobRecord | None,
    p: PlannedJob | None,
    expected_begin: int | None,
    applied_begin: int | None,
    now: int,
) -> JobRecord:
    base = prev or JobRecord(
        job_id=job.update_id,
        display_id=job.display_id,
        user=job.user,
        partition=job.partition,
        first_seen=now,
        last_seen=now,
        deadline=job.deadline,
        latest_start=None,
        earliest=None,
        power_w=None,
        energy_kwh=None,
        expected_begin=None,
        applied_begin=None,
        planned_start=None,
        status="new",
        reason="",
        baseline_carbon_g=None,
        planned_carbon_g=None,
        mean_ci_baseline=None,
        mean_ci_planned=None,
        updated_at=now,
    )
    rec = base.evolve(
        last_seen=now,
        updated_at=now,
        deadline=job.deadline,
        status=a.status,
        reason=a.reason,
        expected_begin=expected_begin,
        applied_begin=applied_begin,
    )
    if p is None or a.flex is None:
        return rec
    status = "late" if p.late else ("deferred" if p.deferred else "runs-now")
    baseline = rec.baseline_carbon_g if rec.baseline_carbon_g is not None else p.carbon_now_g
    ci_base = rec.mean_ci_baseline if rec.mean_ci_baseline is not None else p.mean_ci_now
    cost_base = rec.baseline_cost_gbp if rec.baseline_cost_gbp is not None else p.cost_now_gbp
    return rec.evolve(
        status=status,
        reason=p.reason,
        latest_start=a.flex.latest_start,
        earliest=a.flex.earliest,
        power_w=p.power_w,
        energy_kwh=p.energy_kwh,
        planned_start=p.start,
        baseline_carbon_g=baseline,
        planned_carbon_g=p.carbon_planned_g,
        mean_ci_baseline=ci_base,
        mean_ci_planned=p.mean_ci_planned,
        baseline_cost_gbp=cost_base,
        planned_cost_gbp=p.cost_planned_gbp,
    )


class Cycle:
    """Runs cycles against one backend, forecast source and state store."""

    def __init__(
        self,
        config: Config,
        backend: SlurmBackend,
        sources: ForecastSource | Mapping[str, ForecastSource],
        store: StateStore,
        power: PowerLedger | None = None,
    ) -> None:
        self.config = config
        # Measured power ([measure]); None: the planner relies on the power model alone.
        self.measured = power
        self.slurm_energy: list[PowerReader] = []
        if power is not None and config.measure.slurm_energy:
            self.slurm_energy.append(
                SlurmEnergyReader(backend.read_output, json_output=config.measure.slurm_energy_json)
            )
        self.backend = backend
        # One forecast source per site; without [sites] one site plans every job.
        self.sources: dict[str, ForecastSource] = (
            dict(sources) if isinstance(sources, Mapping) else {DEFAULT_SITE: sources}
        )
        self.store = store
        self.policy = policy_from(config)
        self.power = power_model_from(config)
        self.rules = config.flex
        self.plans_dir = config.daemon.state_dir / "plans"

    def mode(self) -> str:
        """The mode in force: an admin's runtime choice (``slurmflex mode``) over the config."""
        return self.store.setting("mode") or self.config.daemon.mode

    def run(self, now: float | None = None) -> CycleResult:
        started = time.time() if now is None else now
        t0 = time.monotonic()
        commands_before = sum(self.backend.command_counts().values())
        mode = self.mode()
        cycle_id = self.store.start_cycle(started, mode)
        errors = 0
        message = ""
        ok = False
        slurm_ok = True
        jobs_seen = flexible = deferred = updates = expedited = 0
        forecast_name = ", ".join(src.name for src in self.sources.values())
        forecast_age: float | None = None
        planned_kw: tuple[float, ...] = ()
        saved_kg = 0.0
        fallback: tuple[tuple[str, bool], ...] = ()
        measured_kw: float | None = None
        try:
            jobs = self.backend.read_jobs()
            nodes = self.backend.read_nodes()
            self._record_load(nodes, int(started))
            jobs_seen = len(jobs)
            if self.measured is not None:
                measured_kw, power_errors = self._measure(started, jobs)
                errors += power_errors
            forecasts: dict[str, SignalSeries | None] = {}
            notes: list[str] = []
            signals: dict[str, dict[str, Any]] = {}
            for site, source in self.sources.items():
                try:
                    forecasts[site] = series = source.forecast(started)
                    notes.extend(series.notes)
                    signals[site] = signal_summary(series, source.name)
                    if series.issued_at is not None:
                        age = started - series.issued_at
                        forecast_age = age if forecast_age is None else max(forecast_age, age)
                except ForecastError as exc:
                    errors += 1
                    forecasts[site] = None
                    notes.append(f"forecast unavailable, running jobs as submitted: {exc}")
                    signals[site] = signal_summary(None, source.name, str(exc))
                    log.warning("forecast_unavailable", error=str(exc), source=source.name, site=site)
            # What each site planned with, for `slurmflex status` (fallbacks are visible there).
            self.store.set_setting(SIGNALS_SETTING, json.dumps(signals), by="daemon")
            fallback = tuple((site, bool(sig["fallback"])) for site, sig in signals.items())
            forecast_name = ", ".join(
                f.source if f is not None else src.name
                for f, src in zip(forecasts.values(), self.sources.values(), strict=True)
            )
            message = "; ".join(notes)
            plans, intents, records, priorities = self._decide(jobs, nodes, forecasts, int(started))
            plan_ = merge_plans(plans.values(), int(started))
            flexible = sum(1 for r in records.values() if r.status in ("deferred", "runs-now", "late"))
            applied, failed_errors = self._apply(cycle_id, intents, records, mode, plan_, jobs, priorities)
            errors += failed_errors
            updates = applied
            deferred = sum(1 for r in records.values() if r.status == "deferred")
            expedited = sum(
                1 for r in records.values() if r.priority_before is not None and r.status in PENDING_STATUSES
            )
            planned_kw = _planned_kw(plans.values())
            saved_kg = sum(r.carbon_saved_g for r in records.values() if r.status in PENDING_STATUSES) / 1000
            self._write_plan(cycle_id, plans, int(started))
            ok = True
        except SlurmError as exc:
            errors += 1
            slurm_ok = False
            message = f"Slurm unavailable, nothing changed this cycle: {exc}"
            log.error("slurm_unavailable", error=str(exc))
        except SlurmFlexError as exc:
            errors += 1
            message = f"cycle failed: {exc}"
            log.error("cycle_failed", error=str(exc))
        duration = time.monotonic() - t0
        commands = sum(self.backend.command_counts().values()) - commands_before
        self.store.finish_cycle(
            cycle_id,
            duration_s=duration,
            ok=int(ok),
            jobs_seen=jobs_seen,
            flexible=flexible,
            deferred=deferred,
            updates=updates,
            commands=commands,
            errors=errors,
            forecast_source=forecast_name,
            message=message,
        )
        log.info(
            "cycle",
            cycle=cycle_id,
            ok=ok,
            jobs=jobs_seen,
            flexible=flexible,
            deferred=deferred,
            updates=updates,
            commands=commands,
            errors=errors,
            seconds=round(duration, 3),
            mode=mode,
        )
        return CycleResult(
            cycle_id,
            ok,
            jobs_seen,
            flexible,
            deferred,
            updates,
            errors,
            commands,
            duration,
            message,
            mode=mode,
            slurm_ok=slurm_ok,
            forecast_age_s=forecast_age,
            planned_kw=planned_kw,
            carbon_saved_kg=saved_kg,
            signal_fallback=fallback,
            measured_kw=measured_kw,
            expedited=expedited,
        )

    def _measure(self, now: float, jobs: tuple[SlurmJob, ...]) -> tuple[float | None, int]:
        """Ingest measured power and attribute it to running jobs; failures are soft."""
        assert self.measured is not None
        estimates = {j.job_id: _estimate(j, self.power) for j in jobs if j.state == "RUNNING"}
        try:
            step = self.measured.step(now, jobs, estimates, also_read=self.slurm_energy)
        except SlurmFlexError as exc:
            log.warning("power_failed", error=str(exc))
            return None, 1
        return (step.cluster_watts / 1000 if step.nodes_measured else None), len(step.errors)

    def _power_factor(self, job: SlurmJob) -> float:
        if self.measured is None or not self.config.measure.calibrate:
            return 1.0
        return self.measured.calibration.factor(job.user, job.account, job.name)

    # -- decide: pure apart from reading the store ------------------------------------------
    def _site_of(self, partition: str) -> str | None:
        if not self.config.sites:
            return DEFAULT_SITE
        return self.config.site_of(partition)

    def _decide(
        self,
        jobs: tuple[SlurmJob, ...],
        nodes: tuple[SlurmNode, ...],
        forecasts: Mapping[str, SignalSeries | None],
        now: int,
    ) -> tuple[dict[str, Plan], list[Intent], dict[str, JobRecord], list[PriorityChange]]:
        previous = self.store.jobs()
        exempt = self.store.exemptions()
        pending_targets: dict[str, list[int | None]] = defaultdict(list)
        for action in self.store.pending_intents():
            if action.kind not in PRIORITY_KINDS:
                pending_targets[action.job_id].append(action.new_begin)
        assessments: list[Assessment] = []
        for job in jobs:
            if not job.pending:
                continue
            a = assess(
                job,
                previous.get(job.update_id),
                pending_targets.get(job.update_id, ()),
                self.policy,
                self.rules,
                self.power,
                now,
                exempt,
                power_factor=self._power_factor(job),
            )
            if a is not None:
                assessments.append(a)
        # Each site is planned on its own signals and its own nodes; jobs of partitions no site
        # names have no signal and run as submitted.
        sites: dict[str | None, list[Assessment]] = defaultdict(list)
        for a in assessments:
            sites[self._site_of(a.job.partition)].append(a)
        plans: dict[str, Plan] = {}
        planned_assessments: list[Assessment] = []
        priority_changes: list[PriorityChange] = []
        for site in [*forecasts, *(s for s in sites if s not in forecasts)]:
            site_jobs = tuple(j for j in jobs if self._site_of(j.partition) == site)
            site_nodes = self._nodes_of(site, nodes)
            plan_, site_assessments, site_changes = self._plan_site(
                site or NO_SITE, sites.get(site, []), site_jobs, site_nodes, forecasts.get(site or ""), previous, now
            )
            plans[site or NO_SITE] = plan_
            planned_assessments.extend(site_assessments)
            priority_changes.extend(site_changes)
        assessments = planned_assessments
        merged = merge_plans(plans.values(), now)
        intents = reconcile(assessments, merged, now)
        by_intent = {i.job_id: i for i in intents}
        planned = merged.by_id()
        records: dict[str, JobRecord] = {}
        for a in assessments:
            job_id = a.job.update_id
            prev = previous.get(job_id)
            intent = by_intent.get(job_id)
            if intent is None:
                expected, applied = a.job.eligible_time, prev.applied_begin if prev else None
            else:
                expected, applied = intent.new_begin, intent.new_begin if intent.new_begin is not None else now
            records[job_id] = _record_for(a.job, a, prev, planned.get(job_id), expected, applied, now)
        # Jobs we tracked that are no longer pending: started (savings realised) or gone.
        active = {j.update_id: j for j in jobs}
        for job_id, prev in previous.items():
            if job_id in records or prev.status not in PENDING_STATUSES:
                continue
            still = active.get(job_id)
            if still is None:
                final, reason = "gone", "left the queue before starting"
            elif still.pending:
                final, reason = "unmanaged", "no longer flexible; left as it is"
            else:
                final, reason = "started", prev.reason
            records[job_id] = prev.evolve(status=final, reason=reason, last_seen=now, updated_at=now)
        return plans, intents, records, [c for c in priority_changes if c.job_id in records]

    def _plan_site(
        self,
        site: str,
        assessments: list[Assessment],
        jobs: tuple[SlurmJob, ...],
        nodes: tuple[SlurmNode, ...],
        forecast: SignalSeries | None,
        previous: dict[str, JobRecord],
        now: int,
    ) -> tuple[Plan, list[Assessment], list[PriorityChange]]:
        """One site's plan (its jobs, on its nodes, with its signals) and the priority changes
        that keep its queued deadlines."""
        usable = sum(1 for n in nodes if n.usable and _managed_node(n, self.rules))
        assessments = self._limit_deferral(assessments, jobs, previous, usable)
        flex_jobs = [a.flex for a in assessments if a.flex is not None]
        n_slots = int(self.policy.max_horizon_hours * 3600) // SLOT_SECONDS + 1
        running, waiting = _queue_work(jobs, {f.job_id for f in flex_jobs}, now, self.rules.manages)
        free = queue_capacity(usable, running, waiting, now, n_slots)
        # Jobs the queue could no longer start in time if they waited another cycle go now.
        margin = 1 + math.ceil(self.config.daemon.interval_seconds / SLOT_SECONDS)
        risky = deadlines_at_risk([f for f in flex_jobs if not f.no_defer], free, now, margin)
        if risky:
            flex_jobs = [replace(f, no_defer=AT_RISK) if f.job_id in risky else f for f in flex_jobs]
            assessments = [
                replace(a, flex=replace(a.flex, no_defer=AT_RISK))
                if a.flex is not None and a.flex.job_id in risky
                else a
                for a in assessments
            ]
        capacity = np.maximum(
            free - (1.0 - self.policy.capacity_headroom) * usable - self._reserve(site, jobs, nodes, now, free.size),
            0.0,
        )
        plan_ = plan(flex_jobs, forecast, capacity, self.policy, now)
        changes: list[PriorityChange] = []
        if self.config.policy.expedite_at_risk:
            free_running = capacity_profile(usable, running, now, n_slots)
            changes = self._expedite(jobs, assessments, plan_, previous, free_running, now, margin)
        return plan_, assessments, changes

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
        every cycle by _record_load), phased in over its jobs' typical time limit
        (planner.queue.arrival_reserve)."""
        if not self.config.policy.arrival_reserve:
            return np.zeros(n_slots)
        managed = [n for n in nodes if n.usable and _managed_node(n, self.rules)]
        load = self.store.mean_load(site, now - 86400)
        if load is None:  # no history (jobs of partitions no site names): this moment's load
            load = _busy_nodes(managed)
        limits = [j.time_limit_s for j in jobs if j.time_limit_s and self.rules.manages(j.partition)]
        ramp = max(1, math.ceil(float(np.median(limits)) / SLOT_SECONDS)) if limits else 1
        return arrival_reserve(load, len(managed), ramp, n_slots)

    def _nodes_of(self, site: str | None, nodes: tuple[SlurmNode, ...]) -> tuple[SlurmNode, ...]:
        return tuple(n for n in nodes if any(self._site_of(p) == site for p in n.partitions))

    def _record_load(self, nodes: tuple[SlurmNode, ...], now: int) -> None:
        """Each site's busy nodes this cycle: the history the arrival reserve is built from."""
        for site in self.sources:
            managed = [n for n in self._nodes_of(site, nodes) if n.usable and _managed_node(n, self.rules)]
            self.store.record_load(site, now, _busy_nodes(managed))

    def _limit_deferral(
        self, assessments: list[Assessment], jobs: tuple[SlurmJob, ...], previous: dict[str, JobRecord], usable: int
    ) -> list[Assessment]:
        """Jobs that may not be deferred this cycle run as soon as possible: those too big for a
        planned window to be safe, and new work while others already wait for resources."""
        p = self.config.policy
        waiting = p.defer_only_when_queue_idle and any(
            j.pending and j.state_reason in _WAITING_REASONS and self.rules.manages(j.partition) for j in jobs
        )
        out = []
        for assessed in assessments:
            a = _as_waves(assessed, usable * self.policy.capacity_headroom, self.policy.safety_margin_seconds)
            if a.flex is not None:
                deferred_already = (rec := previous.get(a.flex.job_id)) is not None and rec.status == "deferred"
                reason = ""
                if a.job.nodes > p.max_deferred_share * max(usable, 1):
                    reason = f"needs more than {p.max_deferred_share:.0%} of the nodes"
                elif waiting and not deferred_already:
                    reason = "jobs are waiting for resources, so deferring would only lengthen the queue"
                if reason:
                    a = replace(a, flex=replace(a.flex, no_defer=reason))
            out.append(a)
        return out

    # -- act ----------------------------------------------------------------------------------
    def _apply(
        self,
        cycle_id: int,
        intents: list[Intent],
        records: dict[str, JobRecord],
        mode: str,
        plan_: Plan,
        jobs: tuple[SlurmJob, ...],
        priorities: list[PriorityChange],
    ) -> tuple[int, int]:
        """Act on the intents as the mode says; returns (jobs updated, per-job failures).

        shadow: nothing; advise: release jobs (the hook's grace) and write each deferred job's
        planned start into its comment instead of deferring it; enforce: move start times and
        put queued jobs at risk first."""
        # Settle intents left pending by a crash: the records just computed reflect Slurm's
        # real state, which is what matters now.
        stale = {a.id: "unknown" for a in self.store.pending_intents()}
        if stale:
            self.store.settle_intents(stale)
        for i in intents:
            log.info(
                "decision",
                job=i.job_id,
                kind=i.kind,
                old_begin=_iso(i.old_begin),
                new_begin=_iso(i.new_begin) if i.new_begin is not None else "now",
                reason=i.reason,
                mode=mode,
            )
        now = int(time.time())
        if mode == "enforce":
            acting = intents
        elif mode == "advise":
            acting = _advise_only(intents, records, now)
        else:
            acting = []
        acted = {i.job_id: i for i in acting}
        for i in intents:
            if i.job_id not in acted:
                # Remember what Slurm really has, not what we would have set.
                records[i.job_id] = records[i.job_id].evolve(expected_begin=i.old_begin, applied_begin=None)
            elif acted[i.job_id] is not i:  # advise mode turned a deferral into a release
                new = acted[i.job_id].new_begin
                records[i.job_id] = records[i.job_id].evolve(expected_begin=new, applied_begin=new or now)
        applied = failed = 0
        if acting:
            applied, failed = self._set_start_times(cycle_id, acting, records)
        for c in priorities:
            log.info("decision", job=c.job_id, kind=c.kind, priority=f"{c.old} -> {c.new}", reason=c.reason, mode=mode)
        if mode == "enforce" and priorities:
            a, f = self._set_priorities(cycle_id, priorities, records)
            applied += a
            failed += f
        for job_id, rec in records.items():
            if rec.priority_before is not None and rec.status in PENDING_STATUSES:
                records[job_id] = rec.evolve(reason=EXPEDITED)
        if mode == "advise":
            a, f = self._annotate(plan_, jobs)
            applied += a
            failed += f
        self.store.save_jobs(records.values())
        return applied, failed

    def _journalled(
        self,
        cycle_id: int,
        rows: list[tuple[str, int | None, int | None, str, str]],
        update: Callable[[], UpdateReport],
    ) -> UpdateReport:
        """Make changes journalled: (job_id, old_begin, new_begin, kind, reason) recorded as pending
        actions first (a crash leaves them for the next cycle to settle), then made, then each
        action settled as applied or failed."""
        ids = self.store.record_intents(cycle_id, rows)
        report = update()
        outcomes: dict[int, str] = {}
        for action_id, (job_id, _, _, kind, _) in zip(ids, rows, strict=True):
            error = report.failed.get(job_id)
            outcomes[action_id] = "applied" if error is None else f"failed: {error}"
            if error is not None:
                log.warning("update_failed", job=job_id, kind=kind, error=error)
        self.store.settle_intents(outcomes)
        return report

    def _set_priorities(
        self, cycle_id: int, changes: list[PriorityChange], records: dict[str, JobRecord]
    ) -> tuple[int, int]:
        """Set priorities; a moved job's record keeps the priority to give back."""
        report = self._journalled(
            cycle_id,
            [(c.job_id, None, None, c.kind, f"priority {c.old} -> {c.new}: {c.reason}") for c in changes],
            lambda: self.backend.set_priorities({c.job_id: c.new for c in changes}),
        )
        for c in changes:
            if c.job_id in report.failed:
                continue
            rec = records[c.job_id]
            before = None if c.kind == "restore" else (c.old if rec.priority_before is None else rec.priority_before)
            records[c.job_id] = rec.evolve(priority_before=before)
        return len(report.applied), len(report.failed)

    def _set_start_times(self, cycle_id: int, intents: list[Intent], records: dict[str, JobRecord]) -> tuple[int, int]:
        report = self._journalled(
            cycle_id,
            [(i.job_id, i.old_begin, i.new_begin, i.kind, i.reason) for i in intents],
            lambda: self.backend.set_start_times({i.job_id: i.new_begin for i in intents}),
        )
        for i in intents:
            if i.job_id in report.failed:
                # Most often the job started or ended between our read and our update.
                records[i.job_id] = records[i.job_id].evolve(expected_begin=i.old_begin, applied_begin=None)
        return len(report.applied), len(report.failed)

    def _annotate(self, plan_: Plan, jobs: tuple[SlurmJob, ...]) -> tuple[int, int]:
        """Advise mode: each planned job's comment carries ``slurmflex-plan=<UTC time>`` for a
        later start it would have been given (the user's own text kept); changed ones only."""
        planned = plan_.by_id()
        changes: dict[str, str] = {}
        for job in jobs:
            p = planned.get(job.update_id)
            if p is None or not job.pending:
                continue
            wanted = annotate_comment(job.comment, p.start if p.deferred else None)
            if wanted != job.comment:
                changes[job.update_id] = wanted
        if not changes:
            return 0, 0
        report = self.backend.set_comments(changes)
        for job_id, error in report.failed.items():
            log.warning("annotate_failed", job=job_id, error=error)
        return len(report.applied), len(report.failed)

    def _write_plan(self, cycle_id: int, plans: Mapping[str, Plan], now: int) -> None:
        """Keep each cycle's instances and solutions so a decision can be replayed and explained."""
        try:
            self.plans_dir.mkdir(parents=True, exist_ok=True)
            doc = {
                "cycle": cycle_id,
                "now": iso_utc(now),
                "sites": {
                    site: {
                        "forecast_source": p.forecast_source,
                        "instance": instance_to_json(p.instance) if p.instance is not None else None,
                        "solution": p.solution.to_json() if p.solution is not None else None,
                        "jobs": [
                            {"id": j.job_id, "start": iso_utc(j.start), "reason": j.reason, "late": j.late}
                            for j in p.jobs
                        ],
                    }
                    for site, p in plans.items()
                },
            }
            path = self.plans_dir / f"cycle-{cycle_id:08d}.json"
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(doc, separators=(",", ":")))
            tmp.replace(path)
            for old in sorted(self.plans_dir.glob("cycle-*.json"))[:-PLAN_FILES_KEPT]:
                old.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("plan_not_written", error=str(exc), dir=str(self.plans_dir))


_WAITING_REASONS = frozenset({"Resources", "Priority"})


def _advise_only(intents: list[Intent], records: dict[str, JobRecord], now: int) -> list[Intent]:
    """Advise mode defers nothing: every job slurm-flex (or its hook's grace) made wait goes back
    to its own earliest start (its --begin, or now); the plan is only written down."""
    out = []
    for i in intents:
        if i.kind == "release":
            out.append(i)
            continue
        earliest = records[i.job_id].earliest if i.job_id in records else None
        if i.old_begin is None or earliest is None or i.old_begin <= max(earliest, now) + 2:
            continue  # nothing of ours to undo
        target = earliest if earliest > now else None
        out.append(Intent(i.job_id, i.old_begin, target, "release", "advise mode: not deferred"))
    return out


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


def _estimate(job: SlurmJob, model: PowerModel) -> float:
    """A running job's submit-time power estimate (the hook's tag, else the model), per task."""
    tag = job.tag
    if tag is not None and tag.power_w is not None:
        return tag.power_w
    return model.estimate(power_request(job), job.partition)


def _busy_nodes(nodes: Iterable[SlurmNode]) -> float:
    """Nodes' worth of allocated CPUs."""
    return sum(min(1.0, n.alloc_cpus / n.cpus) for n in nodes if n.cpus > 0)


def _managed_node(node: SlurmNode, rules: FlexConfig) -> bool:
    return not rules.partitions or any(rules.manages(p) for p in node.partitions)


def _planned_kw(plans: Iterable[Plan]) -> tuple[float, ...]:
    """Power of the planned flexible jobs per half-hour slot from now, over every site."""
    total = np.zeros(0)
    for p in plans:
        if p.instance is None or p.solution is None:
            continue
        inst, sol = p.instance, p.solution
        kw = np.zeros(inst.n_slots)
        for j, job_id in enumerate(inst.job_ids):
            s = sol.starts[job_id]
            kw[s : s + int(inst.duration[j])] += inst.power_kw[j]
        if kw.size > total.size:
            total = np.pad(total, (0, kw.size - total.size))
        total[: kw.size] += kw
    return tuple(float(x) for x in total)


def _iso(epoch: int | None) -> str | None:
    return None if epoch is None else iso_utc(epoch)
