"""Prometheus metrics of the daemon: one registry, passed in, updated after every cycle.

Served by prometheus_client's own HTTP server on the configured ``host:port``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from slurm_flex.daemon.cycle import CycleResult

# Slots of planned power exported (the next 24 hours of half-hours).
PLANNED_SLOTS = 48


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.up = Gauge("slurmflex_up", "1 when the last cycle read Slurm, else 0", registry=r)
        self.mode = Gauge("slurmflex_mode", "The mode in force (1 for the current one)", ["mode"], registry=r)
        self.deferred = Gauge("slurmflex_deferred_jobs", "Jobs slurm-flex has deferred", registry=r)
        self.flexible = Gauge("slurmflex_flexible_jobs", "Pending flexible jobs planned", registry=r)
        self.expedited = Gauge(
            "slurmflex_expedited_jobs", "Queued jobs moved up the queue to keep their deadlines", registry=r
        )
        self.planned_kw = Gauge(
            "slurmflex_planned_power_kw",
            "Planned power of flexible jobs per half-hour slot from now",
            ["slot"],
            registry=r,
        )
        self.forecast_age = Gauge("slurmflex_forecast_age_seconds", "Age of the forecast planned with", registry=r)
        self.cycle_seconds = Histogram(
            "slurmflex_cycle_duration_seconds",
            "Wall time of a cycle",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
            registry=r,
        )
        self.last_cycle = Gauge("slurmflex_last_cycle_timestamp_seconds", "When the last cycle ended", registry=r)
        self.errors = Counter("slurmflex_cycle_errors_total", "Soft failures counted by cycles", registry=r)
        self.failed_cycles = Counter("slurmflex_failed_cycles_total", "Cycles that could not read Slurm", registry=r)
        self.updates = Counter("slurmflex_job_updates_total", "Start-time (and comment) changes applied", registry=r)
        self.commands = Counter("slurmflex_slurm_commands_total", "Slurm commands run by cycles", registry=r)
        self.signal_fallback = Gauge(
            "slurmflex_signal_fallback",
            "1 when a site plans on a fallback (last good forecast, profile or no signal)",
            ["site"],
            registry=r,
        )
        self.measured_kw = Gauge(
            "slurmflex_measured_power_kw", "Measured power of the nodes with fresh readings", registry=r
        )
        self.saved = Gauge("slurmflex_carbon_saved_planned_kg", "Planned carbon saving of pending jobs", registry=r)

    def observe(self, result: CycleResult, ended_at: float) -> None:
        self.up.set(1 if result.slurm_ok else 0)
        for m in ("shadow", "advise", "enforce"):
            self.mode.labels(m).set(1 if m == result.mode else 0)
        self.cycle_seconds.observe(result.duration_s)
        self.last_cycle.set(ended_at)
        self.errors.inc(result.errors)
        self.commands.inc(result.commands)
        if not result.ok:
            self.failed_cycles.inc()
            return
        self.deferred.set(result.deferred)
        self.flexible.set(result.flexible)
        self.expedited.set(result.expedited)
        self.updates.inc(result.updates)
        self.saved.set(result.carbon_saved_kg)
        for site, fallback in result.signal_fallback:
            self.signal_fallback.labels(site).set(1 if fallback else 0)
        if result.measured_kw is not None:
            self.measured_kw.set(result.measured_kw)
        if result.forecast_age_s is not None:
            self.forecast_age.set(result.forecast_age_s)
        kw = list(result.planned_kw[:PLANNED_SLOTS]) + [0.0] * max(0, PLANNED_SLOTS - len(result.planned_kw))
        for slot, value in enumerate(kw):
            self.planned_kw.labels(str(slot)).set(value)

    def serve(self, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        start_http_server(int(port), addr=host, registry=self.registry)
