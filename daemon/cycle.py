"""One daemon cycle: read the queue, plan, move start times, record what happened.

Side effects are confined to the backend (Slurm), the forecast source and the state store, all
passed in. Soft failures (controller down, forecast broken, a job that finished between read
and update) are logged and counted; the cycle still records itself and returns.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Protocol

import structlog

from slurm_flex.config import Config, NodeType, PowerConfig
from slurm_flex.daemon.decide import Assessment, Intent, assess, reconcile
from slurm_flex.errors import ForecastError, SlurmError, SlurmFlexError
from slurm_flex.grid.series import SLOT_SECONDS, SignalSeries, iso_utc
from slurm_flex.planner.instance import instance_to_json
from slurm_flex.planner.queue import Plan, PlannedJob, Policy, capacity_profile, plan
from slurm_flex.powermodel import NodePower, PowerModel
from slurm_flex.slurm.backend import SlurmBackend
from slurm_flex.slurm.parsers import SlurmJob, SlurmNode
from slurm_flex.state import PENDING_STATUSES, JobRecord, StateStore

log = structlog.get_logger(__name__)

# How many per-cycle plan files to keep in <state_dir>/plans.
PLAN_FILES_KEPT = 200


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


def policy_from(config: Config) -> Policy:
    p = config.policy
    return Policy(
        safety_margin_seconds=p.safety_margin_seconds,
        min_saving_fraction=p.min_saving_fraction,
        carbon_price_gbp_per_tonne=p.carbon_price_gbp_per_tonne,
        max_horizon_hours=p.max_horizon_hours,
        use_price=p.use_price,
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


def _busy(jobs: tuple[SlurmJob, ...], planned_ids: set[str], now: int) -> list[tuple[int, int | None]]:
    """(nodes, until) of work that occupies nodes whatever slurm-flex does."""
    busy: list[tuple[int, int | None]] = []
    for j in jobs:
        if j.update_id in planned_ids:
            continue
        if j.state in ("RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED"):
            busy.append((j.nodes, j.end_time))
        elif j.pending:
            until = None if j.time_limit_s is None else now + j.time_limit_s
            busy.append((j.nodes * j.array_tasks, until))
    return busy


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
    )


class Cycle:
    """Runs cycles against one backend, forecast source and state store."""

    def __init__(self, config: Config, backend: SlurmBackend, source: ForecastSource, store: StateStore) -> None:
        self.config = config
        self.backend = backend
        self.source = source
        self.store = store
        self.policy = policy_from(config)
        self.power = power_model_from(config)
        self.rules = config.flex
        self.plans_dir = config.daemon.state_dir / "plans"

    def run(self, now: float | None = None) -> CycleResult:
        started = time.time() if now is None else now
        t0 = time.monotonic()
        commands_before = sum(self.backend.command_counts().values())
        mode = self.config.daemon.mode
        cycle_id = self.store.start_cycle(started, mode)
        errors = 0
        message = ""
        ok = False
        jobs_seen = flexible = deferred = updates = 0
        forecast_name = self.source.name
        try:
            jobs = self.backend.read_jobs()
            nodes = self.backend.read_nodes()
            jobs_seen = len(jobs)
            forecast: SignalSeries | None
            try:
                forecast = self.source.forecast(started)
                forecast_name = forecast.source
            except ForecastError as exc:
                errors += 1
                forecast = None
                message = f"forecast unavailable, running jobs as submitted: {exc}"
                log.warning("forecast_unavailable", error=str(exc), source=self.source.name)
            plan_, intents, records = self._decide(jobs, nodes, forecast, int(started))
            flexible = sum(1 for r in records.values() if r.status in ("deferred", "runs-now", "late"))
            applied, failed_errors = self._apply(cycle_id, intents, records, mode)
            errors += failed_errors
            updates = applied
            deferred = sum(1 for r in records.values() if r.status == "deferred")
            self._write_plan(cycle_id, plan_)
            ok = True
        except SlurmError as exc:
            errors += 1
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
        return CycleResult(cycle_id, ok, jobs_seen, flexible, deferred, updates, errors, commands, duration, message)

    # -- decide: pure apart from reading the store ------------------------------------------
    def _decide(
        self, jobs: tuple[SlurmJob, ...], nodes: tuple[SlurmNode, ...], forecast: SignalSeries | None, now: int
    ) -> tuple[Plan, list[Intent], dict[str, JobRecord]]:
        previous = self.store.jobs()
        pending_targets: dict[str, list[int | None]] = defaultdict(list)
        for action in self.store.pending_intents():
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
            )
            if a is not None:
                assessments.append(a)
        flex_jobs = [a.flex for a in assessments if a.flex is not None]
        n_slots = int(self.policy.max_horizon_hours * 3600) // SLOT_SECONDS + 1
        usable = sum(1 for n in nodes if n.usable)
        capacity = capacity_profile(usable, _busy(jobs, {f.job_id for f in flex_jobs}, now), now, n_slots)
        plan_ = plan(flex_jobs, forecast, capacity, self.policy, now)
        intents = reconcile(assessments, plan_, now)
        by_intent = {i.job_id: i for i in intents}
        planned = plan_.by_id()
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
        return plan_, intents, records

    # -- act ----------------------------------------------------------------------------------
    def _apply(self, cycle_id: int, intents: list[Intent], records: dict[str, JobRecord], mode: str) -> tuple[int, int]:
        """Apply intents (enforce mode); returns (updates applied, per-job failures)."""
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
        if mode != "enforce" or not intents:
            if mode != "enforce":
                # Shadow mode: remember what Slurm really has, not what we would have set.
                for i in intents:
                    rec = records[i.job_id]
                    records[i.job_id] = rec.evolve(expected_begin=i.old_begin, applied_begin=None)
            self.store.save_jobs(records.values())
            return 0, 0
        ids = self.store.record_intents(
            cycle_id, [(i.job_id, i.old_begin, i.new_begin, i.kind, i.reason) for i in intents]
        )
        report = self.backend.set_start_times({i.job_id: i.new_begin for i in intents})
        outcomes: dict[int, str] = {}
        for action_id, i in zip(ids, intents, strict=True):
            if i.job_id in report.failed:
                outcomes[action_id] = f"failed: {report.failed[i.job_id]}"
                log.warning("update_failed", job=i.job_id, error=report.failed[i.job_id])
                rec = records[i.job_id]
                # Most often the job started or ended between our read and our update.
                records[i.job_id] = rec.evolve(expected_begin=i.old_begin, applied_begin=None)
            else:
                outcomes[action_id] = "applied"
        self.store.settle_intents(outcomes)
        self.store.save_jobs(records.values())
        return len(report.applied), len(report.failed)

    def _write_plan(self, cycle_id: int, plan_: Plan) -> None:
        """Keep each cycle's instance and solution so a decision can be replayed and explained."""
        try:
            self.plans_dir.mkdir(parents=True, exist_ok=True)
            doc = {
                "cycle": cycle_id,
                "now": iso_utc(plan_.now),
                "forecast_source": plan_.forecast_source,
                "instance": instance_to_json(plan_.instance) if plan_.instance is not None else None,
                "solution": plan_.solution.to_json() if plan_.solution is not None else None,
                "jobs": [
                    {"id": p.job_id, "start": iso_utc(p.start), "reason": p.reason, "late": p.late} for p in plan_.jobs
                ],
            }
            path = self.plans_dir / f"cycle-{cycle_id:08d}.json"
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(doc, indent=1))
            tmp.replace(path)
            for old in sorted(self.plans_dir.glob("cycle-*.json"))[:-PLAN_FILES_KEPT]:
                old.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("plan_not_written", error=str(exc), dir=str(self.plans_dir))


def _iso(epoch: int | None) -> str | None:
    return None if epoch is None else iso_utc(epoch)
