"""What the daemon's cycle does with measured power, once per cycle (:class:`PowerLedger`):
take what agents pushed, read the pulled sources, store the samples, attribute node power to
running jobs, and recalibrate the power model when jobs finish."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from slurm_flex.power.attribution import Calibration, attribute, calibrate
from slurm_flex.power.readers.collect import collect
from slurm_flex.power.sample import PowerReader, PowerSample, node_watts
from slurm_flex.power.store import PowerStore
from slurm_flex.slurm.parsers import SlurmJob

log = structlog.get_logger(__name__)


class Inbox(Protocol):
    """Where agents' pushes wait for the cycle (the daemon's ingest endpoint)."""

    def drain(self) -> list[PowerSample]: ...

    def stop(self) -> None: ...


@dataclass(frozen=True)
class PowerStep:
    ingested: int
    nodes_measured: int
    cluster_watts: float
    site_watts: float | None
    jobs_attributed: int
    errors: tuple[str, ...]
    # Each measured node's power (W), by node name.
    node_watts: Mapping[str, float] = field(default_factory=dict)


class PowerLedger:
    """Measured power across cycles: the store, the inbox of pushes, the pulled readers."""

    def __init__(
        self,
        store: PowerStore,
        *,
        ingest: Inbox | None = None,
        pull: Sequence[PowerReader] = (),
        max_age_seconds: float = 60.0,
        raw_retention_seconds: float = 2 * 86400,
        retention_seconds: float = 90 * 86400,
        max_interval_seconds: float = 600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.ingest = ingest
        self.pull = list(pull)
        self.max_age = max_age_seconds
        self.raw_retention = raw_retention_seconds
        self.retention = retention_seconds
        self.max_interval = max_interval_seconds
        self._last_step: float | None = None
        self._last_fold = 0.0
        self.calibration = Calibration(store.calibration())

    def close(self) -> None:
        if self.ingest is not None:
            self.ingest.stop()
        self.store.close()

    def step(
        self,
        now: float,
        jobs: Sequence[SlurmJob],
        estimates: Mapping[str, float | None],
        also_read: Sequence[PowerReader] = (),
    ) -> PowerStep:
        """``also_read``: readers that belong to the caller this cycle (the cycle's own Slurm
        backend for Slurm's energy counters, so its command is counted with the cycle's)."""
        errors: list[str] = []
        samples = self.ingest.drain() if self.ingest is not None else []
        readers = [*self.pull, *also_read]
        if readers:
            pulled = collect(readers, now)
            samples.extend(pulled.samples)
            errors.extend(pulled.errors)
        self.store.add_samples(samples)
        latest = self.store.latest_samples(now - self.max_age)
        watts = node_watts(latest)
        site = [s.watts for s in latest if s.component == "site"]
        seconds = 0.0 if self._last_step is None else min(now - self._last_step, self.max_interval)
        self._last_step = now
        increments = attribute(jobs, watts, seconds, estimates)
        self.store.add_job_energy(increments, now)
        running = {j.job_id for j in jobs if j.state == "RUNNING"}
        finished = self.store.finish_jobs(self.store.open_jobs() - running)
        if finished:
            factors = calibrate(self.store.calibration(), finished)
            self.store.save_calibration(factors, now)
            self.calibration = Calibration(factors)
        if now - self._last_fold >= 3600:
            self.store.fold(now - self.raw_retention)
            self.store.prune(now - self.retention, now - self.retention)
            self._last_fold = now
        step = PowerStep(
            ingested=len(samples),
            nodes_measured=len(watts),
            cluster_watts=sum(watts.values()),
            site_watts=site[0] if site else None,
            jobs_attributed=len(increments),
            errors=tuple(errors),
            node_watts=watts,
        )
        log.info(
            "power",
            ingested=step.ingested,
            nodes=step.nodes_measured,
            cluster_kw=round(step.cluster_watts / 1000, 3),
            jobs=step.jobs_attributed,
            errors=len(errors),
        )
        return step
