"""One daemon cycle: read the queue, plan, move start times, record what happened.

:class:`Cycle` orchestrates; the jobs it hands out have modules of their own: which jobs are
flexible and what to change (``decide``), planning each site (``site_planning``), making the
changes in Slurm (``actions``) and keeping records and plan files (``records``).

Side effects are confined to the backend (Slurm), the forecast source and the state store, all
passed in. Soft failures (controller down, forecast broken, a job that finished between read
and update) are logged and counted; the cycle still records itself and returns.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import structlog

from slurm_flex.battery.model import Battery
from slurm_flex.battery.planning import BatteryPlan
from slurm_flex.beckn.activation import AbsorbPull, Activation, planned_draw, with_pulls
from slurm_flex.config import Config, NodeType, PowerConfig
from slurm_flex.daemon import runs
from slurm_flex.daemon.actions import Actions
from slurm_flex.daemon.battery import BATTERY_SETTING, BatteryControl, running_load_kw
from slurm_flex.daemon.decide import (
    BEGIN_TOLERANCE_S,
    PRIORITY_KINDS,
    Assessment,
    Intent,
    PriorityChange,
    assess,
    power_request,
    reconcile,
    shape_intents,
)
from slurm_flex.daemon.moves import Mover
from slurm_flex.daemon.records import job_records, planned_kw, shaping_summary, write_plan_file
from slurm_flex.daemon.site_planning import SitePlanner, SiteShaping, busy_nodes, managed_nodes
from slurm_flex.daemon.stress import Pause, StressShed
from slurm_flex.errors import ForecastError, SlurmError, SlurmFlexError
from slurm_flex.grid.report import signal_summary
from slurm_flex.grid.series import ForecastSource, SignalSeries
from slurm_flex.ledger import events
from slurm_flex.ledger.log import Ledger
from slurm_flex.ledger.site import open_site_ledger
from slurm_flex.planner.policy import Policy
from slurm_flex.planner.queue import Plan, PlanningSnapshot, merge_plans, placed_kw
from slurm_flex.power.ledger import PowerLedger, PowerStep
from slurm_flex.power.model import NodePower, PowerModel
from slurm_flex.power.readers.slurm_energy import SlurmEnergyReader
from slurm_flex.power.sample import PowerReader
from slurm_flex.slurm.backend import SlurmBackend
from slurm_flex.slurm.federation import FederationBackend
from slurm_flex.slurm.parsers import SlurmJob, SlurmNode
from slurm_flex.state import PENDING_STATUSES, SHAPING_SETTING, SIGNALS_SETTING, JobRecord, StateStore

log = structlog.get_logger(__name__)

# What the ledger last recorded of the mode and the config (state store settings), so that a
# change is logged once, by the first cycle that runs with it.
LEDGER_MODE_SETTING = "ledger.mode"
LEDGER_CONFIG_SETTING = "ledger.config"
# Records kept in memory while the ledger cannot be written (about a day of busy cycles).
UNLOGGED_MAX = 50_000
# Record kinds a cycle derives from what the ledger last logged (state settings written only
# after a successful write): after a failed write the next cycle makes them again.
REMADE_AFTER_A_FAILED_WRITE = frozenset({"config", "mode", "job-started", "job-ended"})

# A window that opens less than this after the next cycle is due is prepared for now too
# (pulled jobs get its opening as their begin time): cycles run late by their own duration.
PREPARE_OVERLAP_S = 60

DEFAULT_SITE = "default"
NO_SITE = "(no site)"


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
    """The planning policy (planner.policy) from the ``[policy]`` table: the simulator builds
    its own from the same table, so both plan by the same rules."""
    return Policy.from_mapping(config.policy.model_dump())


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
        self.site_planner = SitePlanner(self.policy, self.rules, store, config.daemon.interval_seconds)
        self.actions = Actions(backend, store)
        # The site dimension ([federation]): moves portable jobs between clusters before each
        # site is planned; None outside a federation.
        self.mover: Mover | None = (
            Mover(backend, config, store, self.policy)
            if isinstance(backend, FederationBackend) and config.federation.enabled
            else None
        )
        # Each site's last planning snapshot and forecast, kept with the cycle's plan file.
        self._snapshots: dict[str, tuple[PlanningSnapshot, SignalSeries | None]] = {}
        # Each site's last load-shaping step (None: the policy does not shape), kept likewise.
        self._shaping: dict[str, SiteShaping | None] = {}
        # The verifiable record ([ledger]); opened at the first cycle, and again after a failure.
        self.ledger: Ledger | None = None
        # Records of cycles whose ledger write failed, written first by the next one that
        # succeeds (bounded: beyond UNLOGGED_MAX the oldest go, and a ledger.gap record says
        # how many).
        self._unlogged: list[events.Entry] = []
        self._unlogged_dropped = 0
        # Flexibility contracts sold over Beckn ([beckn] subscriber_id set): their power ceilings,
        # suspensions and delivery records, and the planning input the endpoint quotes from.
        self.activation: Activation | None = None
        if config.beckn.subscriber_id:
            self.activation = Activation(
                config.daemon.state_dir,
                config.beckn.suspendable_comment,
                config.beckn.resume_margin_seconds,
                backend.read_output,
                config.beckn.requeue_comment,
                # The next cycle is due within an interval (and a cycle's run) of this one.
                lookahead_s=config.daemon.interval_seconds + PREPARE_OVERLAP_S,
            )
        # Jobs this cycle pulls forward for an increase contract (recorded once made in Slurm).
        self._pulls: tuple[AbsorbPull, ...] = ()
        # An on-site battery ([battery]): read each cycle, planned with its site's jobs and
        # commanded for the current slot; None: no battery.
        self.battery: BatteryControl | None = BatteryControl(config.battery) if config.battery.enabled else None
        self._battery_now: Battery | None = None
        self._battery_plans: dict[str, BatteryPlan | None] = {}
        # Grid-stress events at one site (daemon.stress): its load shed there and carried on at
        # the other site; None without sites.
        self.stress: StressShed | None = (
            StressShed(
                store,
                config.site_clusters,
                config.beckn.suspendable_comment,
                config.beckn.requeue_comment,
                config.beckn.resume_margin_seconds,
                backend.read_output,
            )
            if config.sites
            else None
        )
        self._stress_entries: list[events.Entry] = []
        self._stress_jobs: tuple[SlurmJob, ...] = ()
        self._stress_pauses: list[Pause] = []

    def next_edge(self, now: float) -> int | None:
        """When a contract in force (beckn.activation) or a stress event (daemon.stress) next
        changes what the site is to do: the daemon's loop runs a cycle just after it."""
        edges = [self.activation.next_edge(now) if self.activation is not None else None]
        if self.stress is not None:
            edges.append(self.stress.next_edge(now))
        return min((e for e in edges if e is not None), default=None)

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
        power_planned: tuple[float, ...] = ()
        saved_kg = 0.0
        fallback: tuple[tuple[str, bool], ...] = ()
        measured_kw: float | None = None
        entries: list[events.Entry] = []  # for the ledger, written once at the end of the cycle
        running: dict[str, runs.Running] | None = None  # saved once the ledger holds its records
        try:
            jobs = self.backend.read_jobs()
            nodes = self.backend.read_nodes()
            self._record_load(nodes, int(started))
            self.store.observe_running(
                ((j.update_id, j.user, float(j.start_time or started)) for j in jobs if j.state == "RUNNING"),
                started,
            )
            if self.config.ledger.enabled:
                started_ended, running = self._observe_runs(jobs, int(started))
                entries.extend(started_ended)
            jobs_seen = len(jobs)
            site_kw: float | None = None  # the site's measured power, for flexibility contracts
            if self.measured is not None:
                measured_kw, site_kw, power_errors = self._measure(started, jobs, nodes)
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
            entries.extend(events.forecast(site, forecasts[site], source.name) for site, source in self.sources.items())
            # What each site planned with, for `slurmflex status` (fallbacks are visible there).
            self.store.set_setting(SIGNALS_SETTING, json.dumps(signals), by="daemon")
            fallback = tuple((site, bool(sig["fallback"])) for site, sig in signals.items())
            forecast_name = ", ".join(
                f.source if f is not None else src.name
                for f, src in zip(forecasts.values(), self.sources.values(), strict=True)
            )
            message = "; ".join(notes)
            self._battery_now, self._battery_plans = None, {}
            if self.battery is not None:
                self._battery_now, battery_errors = self.battery.read()
                errors += battery_errors
            self._stress_entries, self._stress_jobs = [], jobs
            try:
                plans, intents, records, priorities = self._decide(jobs, nodes, forecasts, int(started))
            finally:  # what was done in Slurm for a stress event is recorded even if the cycle fails
                entries.extend(self._stress_entries)
            plan_ = merge_plans(plans.values(), int(started))
            flexible = sum(1 for r in records.values() if r.status in ("deferred", "shaped", "runs-now", "late"))
            made: list[tuple[str, int | None, int | None, str, str, str]] = []
            try:
                applied, failed_errors = self.actions.apply(
                    cycle_id, intents, records, mode, plan_, jobs, priorities, int(started)
                )
            finally:  # what was made in Slurm is recorded even if the cycle fails after it
                made = list(self.actions.made)
                entries.extend(events.action(cycle_id, *m) for m in made)
                self.actions.made.clear()
            errors += failed_errors
            updates = applied
            if self.stress is not None:
                # After the moves and start-time changes: a suspended job's CPUs are free at once.
                entries.extend(self._stress_pause(self._stress_jobs, mode, int(started)))
            # Every cycle, pulls or none: a pull to a window still ahead that this cycle did not
            # make again is forgotten.
            if self.activation is not None and mode == "enforce":
                failed = frozenset(m[0] for m in made if m[5] != "applied")
                entries.extend(self.activation.record_pulls(self._pulls, started, failed))
            if self.activation is not None:
                # The endpoint quotes from the first site's queue; the others' planned work is
                # part of the site's baseline.
                first = next(iter(self._snapshots.values()), (None, None))
                n_slots = first[0].free_by_limits.size if first[0] is not None else 0
                other_kw = sum((placed_kw(p, n_slots) for p in list(plans.values())[1:]), start=np.zeros(n_slots))
                entries.extend(
                    self.activation.step(
                        jobs,
                        started,
                        lambda j: _estimate(j, self.power) * self._power_factor(j),
                        site_kw,
                        first[0],
                        first[1],
                        mode,
                        tuple(float(x) for x in other_kw) if len(plans) > 1 else (),
                    )
                )
            if self.battery is not None:
                errors += self._command_battery(int(started), mode)
            if self.stress is not None:
                errors += self._stress_sample(int(started))
            deferred = sum(1 for r in records.values() if r.status == "deferred")
            expedited = sum(
                1 for r in records.values() if r.priority_before is not None and r.status in PENDING_STATUSES
            )
            power_planned = planned_kw(plans.values())
            saved_kg = sum(r.carbon_saved_g for r in records.values() if r.status in PENDING_STATUSES) / 1000
            plan_file = write_plan_file(
                self.plans_dir,
                cycle_id,
                plans,
                self._snapshots,
                self.policy.max_horizon_hours,
                int(started),
                self._shaping,
                battery={site: p.to_json() if p is not None else None for site, p in self._battery_plans.items()},
            )
            # Whether each site holds nodes back now, and why, for `slurmflex status`.
            self.store.set_setting(
                SHAPING_SETTING, json.dumps(shaping_summary(self._shaping, int(started))), by="daemon"
            )
            if plan_file is not None:
                entries.append(events.plan(cycle_id, plan_file, self.config.daemon.state_dir))
            ok = True
        except SlurmError as exc:
            errors += 1
            slurm_ok = False
            if self.battery is not None:
                self.battery.close()
            message = f"Slurm unavailable, nothing changed this cycle: {exc}"
            log.error("slurm_unavailable", error=str(exc))
        except SlurmFlexError as exc:
            errors += 1
            message = f"cycle failed: {exc}"
            log.error("cycle_failed", error=str(exc))
            if self.battery is not None:
                self.battery.close()
        entries.append(
            events.cycle_done(
                cycle_id,
                ok,
                jobs_seen,
                deferred,
                updates,
                errors,
                message,
                running=len(running) if running is not None else None,
            )
        )
        errors += self._record(mode, entries, running)
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
            planned_kw=power_planned,
            carbon_saved_kg=saved_kg,
            signal_fallback=fallback,
            measured_kw=measured_kw,
            expedited=expedited,
        )

    def _stress_sample(self, now: int) -> int:
        """Record this cycle's sample of each open stress event and keep what was done; a soft
        failure (returns 1) if it cannot be kept."""
        assert self.stress is not None
        discharge = {site: max(0.0, -p.setpoint_kw(now)) for site, p in self._battery_plans.items() if p is not None}
        try:
            self.stress.sample(self._stress_jobs, self._estimate_w, self._job_site, now, discharge)
            self.stress.save()
        except SlurmFlexError as exc:
            log.error("stress_record_failed", error=str(exc))
            return 1
        return 0

    def _estimate_w(self, job: SlurmJob) -> float:
        return _estimate(job, self.power) * self._power_factor(job)

    def _stress_shed(
        self, assessments: list[Assessment], jobs: tuple[SlurmJob, ...], now: int
    ) -> tuple[list[Assessment], tuple[SlurmJob, ...], frozenset[str]]:
        """Stress events (daemon.stress), before the sites are planned: resume what a closed
        window paused, choose the opted-in running jobs to pause at a stressed site (planned as
        paused; :meth:`_stress_pause` pauses them once the cycle's moves and start-time changes
        are made: Slurm may give a suspended job's CPUs to pending work at once), and move the
        site's pending portable work to the other site. Returns the assessments and jobs as they
        now are, and the stressed sites (no job is moved to them)."""
        assert self.stress is not None
        mode = self.mode()
        stress = self.stress
        stress.load(now)
        site = self.config.federation.beckn_stress_site
        if site and self.activation is not None:
            stress.adopt(self.activation.contracts(now), site, now)
        stress.fix_baselines(
            jobs, self._estimate_w, self._job_site, now, self.config.daemon.interval_seconds + PREPARE_OVERLAP_S
        )
        self._stress_entries.extend(stress.resume(jobs, now, mode))
        self._stress_pauses = stress.to_pause(jobs, self._job_site, now, self._estimate_w) if mode == "enforce" else []
        pausing = {p.job_id for p in self._stress_pauses}
        if pausing:  # not drawing once paused: planned as such this cycle
            jobs = tuple(replace(j, state="SUSPENDED") if j.update_id in pausing else j for j in jobs)
        stressed = stress.stressed_sites(now)
        if self.mover is None or not stressed:
            return assessments, jobs, stressed
        moved = self._stress_moves(jobs, stressed, now, mode, stress.requeued())
        if not moved:
            return assessments, jobs, stressed
        return (
            [replace(a, job=_at(a.job, moved)) for a in assessments],
            tuple(_at(j, moved) for j in jobs),
            stressed,
        )

    def _stress_moves(
        self, jobs: tuple[SlurmJob, ...], stressed: frozenset[str], now: int, mode: str, requeued: frozenset[str]
    ) -> dict[str, str]:
        """Move the stressed sites' pending portable jobs (and ``requeued``: jobs requeued held
        for an event, released once moved) to another site; returns job id -> target cluster."""
        assert self.stress is not None and self.mover is not None
        stress = self.stress
        kw = {j.update_id: self._estimate_w(j) / 1000.0 for j in jobs}
        moved: dict[str, str] = {}
        for event in stress.open_events(now):
            outcomes = self.mover.shed(event.site, event.describe(), jobs, stressed, now, mode, requeued)
            stress.note_moves(outcomes, event, kw, now)
            for o in outcomes:
                if o.status != "moved":
                    continue
                moved[o.job_id] = self.config.site_clusters[o.target]
                detail: dict[str, object] = {"event": event.id, "job": o.job_id, "from": o.source, "to": o.target}
                detail["kw"] = round(kw.get(o.job_id, 0.0), 6)
                self._stress_entries.append(("stress.move", detail))
                if o.job_id in requeued:
                    self._stress_entries.extend(stress.carried_on(o.job_id, o.target, now))
        return moved

    def _stress_pause(self, jobs: tuple[SlurmJob, ...], mode: str, now: int) -> list[events.Entry]:
        """Pause the jobs :meth:`_stress_shed` chose; a requeued one allowed at another site is
        moved there and released at once (it carries on there)."""
        assert self.stress is not None
        self._stress_entries = []
        try:
            self._stress_entries.extend(self.stress.pause(self._stress_pauses, now, mode))
            requeued = frozenset(p.job_id for p in self._stress_pauses if p.how == "requeue") & self.stress.requeued()
            stressed = self.stress.stressed_sites(now)
            if requeued and self.mover is not None and stressed:
                as_held = tuple(replace(j, state="PENDING") if j.update_id in requeued else j for j in jobs)
                moved = self._stress_moves(as_held, stressed, now, mode, requeued)
                self._stress_jobs = tuple(_at(j, moved) for j in self._stress_jobs)
        except SlurmFlexError as exc:  # soft: what was not paused runs on
            log.error("stress_failed", error=str(exc))
        finally:
            self._stress_pauses = []
        return self._stress_entries

    def _command_battery(self, now: int, mode: str) -> int:
        """Command the battery for the current slot and record its summary for status; returns
        the soft failures."""
        assert self.battery is not None
        site, plan = next(iter(self._battery_plans.items()), ("", None))
        if self._battery_now is not None and site:
            self.battery.planned(site, plan, now)
        elif self._battery_now is not None:
            self.battery.summary.update(planned=False, why=f"its site {self.config.battery.site!r} was not planned")
        failed = self.battery.command(plan, now, mode)
        self.battery.close()
        self.store.set_setting(BATTERY_SETTING, json.dumps(self.battery.summary), by="daemon")
        return failed

    def _observe_runs(self, jobs: tuple[SlurmJob, ...], now: int) -> tuple[list[events.Entry], dict[str, runs.Running]]:
        """``job-started`` / ``job-ended`` records since the jobs the ledger last logged as
        running (a setting the daemon wrote; unreadable, it starts afresh and says so)."""
        try:
            previous = runs.load(self.store.setting(runs.RUNNING_SETTING))
        except SlurmFlexError as exc:
            log.warning("ledger_running_reset", error=str(exc))
            previous = {}
        return runs.observe(previous, jobs, now, lambda job: _estimate(job, self.power))

    def _record(self, mode: str, entries: list[events.Entry], running: dict[str, runs.Running] | None = None) -> int:
        """Append the cycle's records (and a change of mode or config since the last ones) to the
        ledger in one write, then sign a checkpoint. A ledger that cannot be written is a soft
        failure (returns 1): Slurm keeps being managed, and the error is logged every cycle."""
        if not self.config.ledger.enabled:
            return 0
        digest = events.config_digest(self.config)
        logged_config = self.store.setting(LEDGER_CONFIG_SETTING)
        logged_mode = self.store.setting(LEDGER_MODE_SETTING)
        first: list[events.Entry] = []
        if digest != logged_config:
            first.append(events.config_changed(self.config, logged_config))
        if mode != logged_mode:
            first.append(events.mode_changed(logged_mode, mode, self.store.setting("mode") is not None))
        batch = [*self._unlogged, *first, *entries]
        if self._unlogged_dropped:
            gap = {"dropped": self._unlogged_dropped, "why": "the ledger could not be written for a while"}
            batch.insert(0, ("ledger.gap", gap))
        appended = False
        try:
            if self.ledger is None:
                self.ledger = open_site_ledger(self.config)
                assert self.ledger is not None
            self.ledger.append_many(batch)
            appended = True
            self.ledger.checkpoint()
            if self.config.ledger.keep_files:
                self.ledger.retain(self.config.ledger.keep_files)
        except (SlurmFlexError, OSError) as exc:
            self.ledger = None  # reopened (and re-read) next cycle
            log.error("ledger_failed", error=str(exc), unlogged=0 if appended else len(batch))
            if not appended:
                # Kept for the next cycle: a decision made while the ledger was down is still
                # logged once it is back (first, in the order made). Not the records the next
                # cycle makes again from settings saved only after a write (config, mode, job
                # starts and ends): kept too, they would be logged twice.
                kept = [e for e in entries if e[0] not in REMADE_AFTER_A_FAILED_WRITE]
                self._unlogged = [*self._unlogged, *kept]
                if len(self._unlogged) > UNLOGGED_MAX:
                    self._unlogged_dropped += len(self._unlogged) - UNLOGGED_MAX
                    self._unlogged = self._unlogged[-UNLOGGED_MAX:]
            else:
                self._unlogged, self._unlogged_dropped = [], 0
            return 1
        self._unlogged, self._unlogged_dropped = [], 0
        self.store.set_setting(LEDGER_CONFIG_SETTING, digest, by="daemon")
        self.store.set_setting(LEDGER_MODE_SETTING, mode, by="daemon")
        if running is not None:
            self.store.set_setting(runs.RUNNING_SETTING, runs.dump(running), by="daemon")
        return 0

    def _measure(
        self, now: float, jobs: tuple[SlurmJob, ...], nodes: tuple[SlurmNode, ...]
    ) -> tuple[float | None, float | None, int]:
        """Ingest measured power and attribute it to running jobs; failures are soft. Returns
        the measured nodes' kW, the site's measured kW (:func:`site_kw`) and the errors."""
        assert self.measured is not None
        estimates = {j.job_id: _estimate(j, self.power) for j in jobs if j.state == "RUNNING"}
        try:
            step = self.measured.step(now, jobs, estimates, also_read=self.slurm_energy)
        except SlurmFlexError as exc:
            log.warning("power_failed", error=str(exc))
            return None, None, 1
        nodes_kw = step.cluster_watts / 1000 if step.nodes_measured else None
        return nodes_kw, site_kw(step, nodes), len(step.errors)

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
        self._shaping = {}
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
        stressed: frozenset[str] = frozenset()
        if self.stress is not None:
            try:
                assessments, jobs, stressed = self._stress_shed(assessments, jobs, now)
            except SlurmFlexError as exc:  # soft: the sites are planned as without the event
                log.error("stress_failed", error=str(exc))
            self._stress_jobs = jobs
        if self.mover is not None:
            assessments, jobs = self.mover.apply(assessments, jobs, nodes, forecasts, now, self.mode(), stressed)
        # Jobs pulled forward for an increase whose window is open stay released.
        kept = self.activation.kept(now) if self.activation is not None else {}
        if kept:
            assessments = [
                replace(a, flex=replace(a.flex, no_defer=kept[a.flex.job_id]))
                if a.flex is not None and a.flex.job_id in kept
                else a
                for a in assessments
            ]
        # Each site is planned on its own signals and its own nodes; jobs of partitions no site
        # names have no signal and run as submitted.
        sites: dict[str | None, list[Assessment]] = defaultdict(list)
        for a in assessments:
            sites[self._job_site(a.job)].append(a)
        plans: dict[str, Plan] = {}
        planned_assessments: list[Assessment] = []
        priority_changes: list[PriorityChange] = []
        # A contract's ceiling (and floor) is the whole site's, over all its sites: each site is
        # planned under what the sites before it leave of the ceiling, and pulls forward what
        # they leave of the floor.
        n_slots = int(self.policy.max_horizon_hours * 3600) // 1800 + 1

        def estimate(job: SlurmJob) -> float:
            return _estimate(job, self.power) * self._power_factor(job)

        cap = self.activation.cap(now, n_slots, jobs, estimate) if self.activation is not None else None
        contract = self.activation.in_force(now) if self.activation is not None else ""
        drawn = np.zeros(n_slots)  # what the sites planned so far draw, per slot from now
        self._pulls = ()
        order = [*forecasts, *(s for s in sites if s not in forecasts)]
        first_site_name = (order[0] or NO_SITE) if order else NO_SITE
        for site in order:
            site_jobs = tuple(j for j in jobs if self._job_site(j) == site)
            site_nodes = self._nodes_of(site, nodes)
            forecast = forecasts.get(site or "")
            # The site's flexible jobs of the last day: the slack coming work has (load shaping).
            seen = [r for r in previous.values() if r.last_seen >= now - 86400 and self._site_of(r.partition) == site]
            # The battery is planned with the site it is behind (the first site by default).
            battery = None
            if self._battery_now is not None and (self.config.battery.site or first_site_name) == (site or NO_SITE):
                battery = self._battery_now
            # A stress event at the site: its own ceiling over the window, on top of a contract's.
            site_cap, meter = cap, None
            if self.stress is not None and site is not None:
                staying = running_load_kw(site_jobs, estimate, now, n_slots)
                ceilings = self.stress.ceilings(site, staying, now, n_slots)
                if ceilings is not None:
                    site_cap = ceilings.planned_kw if cap is None else np.minimum(cap, ceilings.planned_kw)
                    meter = ceilings.meter_kw
            planned_site = self.site_planner.plan(
                site or NO_SITE,
                sites.get(site, []),
                site_jobs,
                site_nodes,
                forecast,
                previous,
                now,
                site_cap,
                seen,
                contract,
                battery=battery,
                other_load_kw=running_load_kw(site_jobs, estimate, now, n_slots) if battery is not None else None,
                meter_ceiling_kw=meter,
                battery_joint_max_starts=self.config.battery.joint_max_starts,
            )
            if planned_site.battery is not None or battery is not None:
                self._battery_plans[site or NO_SITE] = planned_site.battery
            if cap is not None:
                cap = np.where(np.isfinite(cap), np.maximum(0.0, cap - placed_kw(planned_site.plan, n_slots)), cap)
            if self.activation is not None and contract:
                # An increase in force: deferred work is pulled forward to the contract's floor.
                pulls = self.activation.pulls(now, jobs, estimate, planned_site.snapshot, planned_site.plan, drawn)
                if pulls:
                    planned_site = replace(planned_site, plan=with_pulls(planned_site.plan, pulls, now))
                    self._pulls = (*self._pulls, *pulls)
                drawn = drawn + planned_draw(planned_site.snapshot, planned_site.plan, n_slots)
            plans[site or NO_SITE] = planned_site.plan
            self._snapshots[site or NO_SITE] = (planned_site.snapshot, forecast)
            self._shaping[site or NO_SITE] = planned_site.shaping
            planned_assessments.extend(planned_site.assessments)
            priority_changes.extend(planned_site.priorities)
        assessments = planned_assessments
        merged = merge_plans(plans.values(), now)
        # Load shaping holds some of the jobs the plan would run now until just after the next cycle.
        held = {
            job_id: (s.until, reason)
            for s in self._shaping.values()
            if s is not None
            for job_id, reason in s.held.items()
        }
        intents = shape_intents(reconcile(assessments, merged, now), assessments, held)
        intents = _pull_intents(intents, assessments, self._pulls, kept, now)
        records = job_records(assessments, merged, intents, previous, jobs, now, held)
        return plans, intents, records, [c for c in priority_changes if c.job_id in records]

    def _job_site(self, job: SlurmJob) -> str | None:
        """A job's site: the one that is its federation cluster, else by its partition."""
        if job.cluster and (site := self.config.site_of_cluster(job.cluster)) is not None:
            return site
        return self._site_of(job.partition)

    def _nodes_of(self, site: str | None, nodes: tuple[SlurmNode, ...]) -> tuple[SlurmNode, ...]:
        return tuple(
            n
            for n in nodes
            if (self.config.site_of_cluster(n.cluster) == site if n.cluster else False)
            or (not n.cluster and any(self._site_of(p) == site for p in n.partitions))
        )

    def _record_load(self, nodes: tuple[SlurmNode, ...], now: int) -> None:
        """Each site's busy nodes this cycle: the history the arrival reserve is built from."""
        for site in self.sources:
            self.store.record_load(site, now, busy_nodes(managed_nodes(self._nodes_of(site, nodes), self.rules)))


def site_kw(step: PowerStep, nodes: Sequence[SlurmNode]) -> float | None:
    """The site's power as measured, for the delivery proof of flexibility contracts: the site
    meter's reading when there is one, else the sum of the nodes' when every node Slurm reports
    was measured. None (the delivery proof then uses the power model's figure, labelled
    ``modelled``) when only some nodes were: part of the site measured, the rest left out,
    would read as the site drawing less than it does."""
    if step.site_watts is not None:
        return step.site_watts / 1000
    names = {n.name for n in nodes}
    if not names or not names <= set(step.node_watts):
        if step.node_watts:
            log.info("site_power_not_measured", measured=len(names & set(step.node_watts)), nodes=len(names))
        return None
    return sum(step.node_watts[n] for n in names) / 1000


def _pull_intents(
    intents: list[Intent],
    assessments: list[Assessment],
    pulls: Sequence[AbsorbPull],
    kept: Mapping[str, str],
    now: int,
) -> list[Intent]:
    """The start-time changes for jobs pulled for an increase, made exact: a job pulled to a
    window opening gets that moment as its begin time (the plan's rounding would release one
    due within a minute at once, before the window), and a pulled job whose begin time has come
    while Slurm has not looked at it yet (pending for "BeginTime": its scheduler passes are up
    to a minute apart) is released again (StartTime=now), which makes Slurm schedule at once."""
    ahead = {p.job_id: p for p in pulls if p.start > now}
    started = {**kept, **{p.job_id: p.reason for p in pulls if p.start <= now}}
    out = [i for i in intents if i.job_id not in ahead]
    changed = {i.job_id for i in out}
    for a in assessments:
        job = a.job
        if not job.pending:
            continue
        current = job.eligible_time
        if (pull := ahead.get(job.update_id)) is not None:
            if current is None or abs(current - pull.start) > BEGIN_TOLERANCE_S:
                kind = "defer" if current is None or pull.start > current else "advance"
                out.append(Intent(job.update_id, current, pull.start, kind, pull.reason))
        elif (
            job.update_id in started
            and job.update_id not in changed
            and job.state_reason == "BeginTime"
            and current is not None
            and current <= now
        ):
            out.append(Intent(job.update_id, current, None, "release", started[job.update_id]))
    return out


def _at(job: SlurmJob, moved: Mapping[str, str]) -> SlurmJob:
    """The job at the cluster it was moved to (a requeued one released there: pending)."""
    target = moved.get(job.update_id)
    if target is None:
        return job
    state = "PENDING" if job.state == "SUSPENDED" else job.state
    return replace(job, cluster=target, siblings_viable=(target,), state=state)


def _estimate(job: SlurmJob, model: PowerModel) -> float:
    """A running job's submit-time power estimate (the hook's tag, else the model), per task."""
    tag = job.tag
    if tag is not None and tag.power_w is not None:
        return tag.power_w
    return model.estimate(power_request(job), job.partition)
