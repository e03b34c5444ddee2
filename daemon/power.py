"""Measured power in the daemon: node agents' pushes, Slurm's own energy counters, per-job
energy and the calibration of the power model.

Pure parts: :func:`attribute` (node watts and job placement -> each running job's energy),
:func:`calibrate` (finished jobs' measured against estimated power -> factors) and
:func:`parse_push` (an agent's JSON -> samples). The side effects are the ingest HTTP server
(:class:`PowerIngest`) and :class:`PowerLedger`, which the cycle calls once per cycle.
"""

from __future__ import annotations

import hmac
import json
import math
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog

from slurm_flex.errors import SlurmFlexError
from slurm_flex.power.collect import collect, node_watts
from slurm_flex.power.sample import PowerReader, PowerSample
from slurm_flex.powerstore import EnergyIncrement, JobEnergy, PowerStore
from slurm_flex.slurm.parsers import SlurmJob

log = structlog.get_logger(__name__)

MAX_SAMPLES_PER_PUSH = 1000
MAX_BODY_BYTES = 1 << 20
MAX_PLAUSIBLE_WATTS = 100_000.0  # one node (or a meter's site figure) above 100 kW is garbage
# A factor is used for planning once this many finished jobs back it; ratios are clipped so
# one broken measurement cannot make a job look free or enormous.
CALIBRATION_MIN_JOBS = 3
CALIBRATION_ALPHA = 0.3
RATIO_LIMITS = (0.2, 5.0)
MIN_MEASURED_SECONDS = 60.0


class PushError(SlurmFlexError):
    """An agent's push that cannot be taken (its message goes back to the agent)."""


# -- pure ---------------------------------------------------------------------------------------
def parse_push(doc: Any, received_at: float, max_skew: float = 300.0) -> list[PowerSample]:
    """Samples from one agent push ``{"node": ..., "samples": [{"source", "component", "watts",
    "at", "top_level"}]}``. Anything malformed rejects the whole push with the reason."""
    if not isinstance(doc, Mapping):
        raise PushError("body must be a JSON object")
    node = doc.get("node")
    if not isinstance(node, str) or not node or len(node) > 128:
        raise PushError("'node' must be a non-empty string")
    raw = doc.get("samples")
    if not isinstance(raw, list):
        raise PushError("'samples' must be a list")
    if len(raw) > MAX_SAMPLES_PER_PUSH:
        raise PushError(f"at most {MAX_SAMPLES_PER_PUSH} samples per push")
    out = []
    for i, item in enumerate(raw):
        where = f"samples[{i}]"
        if not isinstance(item, Mapping):
            raise PushError(f"{where} must be an object")
        source, component = item.get("source"), item.get("component")
        if not isinstance(source, str) or not source or not isinstance(component, str) or not component:
            raise PushError(f"{where}: 'source' and 'component' must be non-empty strings")
        watts, at = item.get("watts"), item.get("at")
        if isinstance(watts, bool) or not isinstance(watts, int | float) or not math.isfinite(watts):
            raise PushError(f"{where}: 'watts' must be a number")
        if not 0.0 <= watts <= MAX_PLAUSIBLE_WATTS:
            raise PushError(f"{where}: {watts} W is outside 0..{MAX_PLAUSIBLE_WATTS:g}")
        if isinstance(at, bool) or not isinstance(at, int | float) or abs(at - received_at) > max_skew:
            raise PushError(f"{where}: 'at' must be an epoch time within {max_skew:g} s of the daemon's clock")
        out.append(PowerSample(source, component, float(watts), float(at), node, bool(item.get("top_level", True))))
    return out


def attribute(
    jobs: Iterable[SlurmJob],
    watts_by_node: Mapping[str, float],
    seconds: float,
    estimates: Mapping[str, float | None],
) -> list[EnergyIncrement]:
    """Each running job's energy over ``seconds``: on every node it runs on, the node's power
    times its share of the cores allocated there (shared nodes are split by allocated cores;
    a node's idle draw goes to whoever runs on it). A job with any unmeasured node gets nothing
    this interval: a partial figure would read as a job that uses less than it does."""
    running = [j for j in jobs if j.state == "RUNNING" and j.allocation]
    cores_on: dict[str, int] = defaultdict(int)
    for job in running:
        for node, cores in job.allocation:
            cores_on[node] += cores
    out = []
    for job in running:
        if seconds <= 0 or any(node not in watts_by_node for node, _ in job.allocation):
            continue
        watts = sum(watts_by_node[node] * cores / cores_on[node] for node, cores in job.allocation)
        out.append(
            EnergyIncrement(
                job.job_id, job.user, job.account, job.name, estimates.get(job.job_id), watts * seconds, seconds
            )
        )
    return out


def calibration_keys(user: str, account: str, name: str) -> list[tuple[str, str]]:
    """Most specific first: this user's jobs of this name, this user, this account."""
    return [("user+name", f"{user}/{name}"), ("user", user), ("account", account)]


def calibrate(
    factors: Mapping[tuple[str, str], tuple[float, int]], finished: Iterable[JobEnergy]
) -> dict[tuple[str, str], tuple[float, int]]:
    """Factors (measured / estimated power, an exponential average, and how many jobs back it)
    updated with finished jobs that were measured for long enough."""
    out = dict(factors)
    for job in finished:
        mean = job.mean_watts
        if mean is None or not job.estimated_watts or job.measured_seconds < MIN_MEASURED_SECONDS:
            continue
        ratio = min(max(mean / job.estimated_watts, RATIO_LIMITS[0]), RATIO_LIMITS[1])
        for key in calibration_keys(job.user, job.account, job.name):
            old, n = out.get(key, (ratio, 0))
            out[key] = (ratio if n == 0 else old + CALIBRATION_ALPHA * (ratio - old), n + 1)
    return out


@dataclass(frozen=True)
class Calibration:
    """How the planner's power estimate for a job is corrected by measurement."""

    factors: Mapping[tuple[str, str], tuple[float, int]]
    min_jobs: int = CALIBRATION_MIN_JOBS

    def factor(self, user: str, account: str, name: str) -> float:
        for key in calibration_keys(user, account, name):
            found = self.factors.get(key)
            if found is not None and found[1] >= self.min_jobs:
                return found[0]
        return 1.0


# -- the ingest endpoint ------------------------------------------------------------------------
class PowerIngest:
    """``POST /v1/power`` for node agents, with a shared bearer token. Pushes are validated and
    queued; the cycle drains the queue. A full queue answers 503 so agents keep their samples
    and try again, rather than the daemon growing without bound."""

    def __init__(self, listen: str, token: str, max_queued: int = 200_000) -> None:
        host, _, port = listen.rpartition(":")
        self._token = token.encode()
        self._queue: queue.Queue[list[PowerSample]] = queue.Queue(maxsize=max(1, max_queued // 10))
        self.rejected = 0
        handler = _ingest_handler(self)
        self._server = ThreadingHTTPServer((host or "0.0.0.0", int(port)), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="power-ingest", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def authorised(self, header: str | None) -> bool:
        if not header or not header.startswith("Bearer "):
            return False
        return hmac.compare_digest(header[7:].strip().encode(), self._token)

    def offer(self, samples: list[PowerSample]) -> bool:
        try:
            self._queue.put_nowait(samples)
        except queue.Full:
            return False
        return True

    def drain(self) -> list[PowerSample]:
        out: list[PowerSample] = []
        while True:
            try:
                out.extend(self._queue.get_nowait())
            except queue.Empty:
                return out


class _IngestServer(ThreadingHTTPServer):
    # A thousand agents connect within the same second or two: the default backlog (5) resets them.
    request_queue_size = 1024
    daemon_threads = True


def _ingest_handler(ingest: PowerIngest) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: an agent reuses its connection every interval

        def _answer(self, status: int, doc: Mapping[str, Any]) -> None:
            body = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            if self.path.rstrip("/") != "/v1/power":
                self._answer(404, {"error": "unknown path; agents POST to /v1/power"})
                return
            if not ingest.authorised(self.headers.get("Authorization")):
                ingest.rejected += 1
                self._answer(401, {"error": "missing or wrong bearer token"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 < length <= MAX_BODY_BYTES:
                self._answer(413 if length else 411, {"error": f"body must be 1..{MAX_BODY_BYTES} bytes"})
                return
            try:
                samples = parse_push(json.loads(self.rfile.read(length)), time.time())
            except (ValueError, PushError) as exc:
                ingest.rejected += 1
                self._answer(400, {"error": str(exc)})
                return
            if not ingest.offer(samples):
                self._answer(503, {"error": "daemon is behind; keep the samples and retry"})
                return
            self._answer(202, {"accepted": len(samples)})

        def log_message(self, format: str, *args: Any) -> None:
            pass  # rejections are counted; the cycle logs what it ingested

    return Handler


# -- per cycle ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class PowerStep:
    ingested: int
    nodes_measured: int
    cluster_watts: float
    site_watts: float | None
    jobs_attributed: int
    errors: tuple[str, ...]


class PowerLedger:
    """What the cycle does with measured power, once per cycle."""

    def __init__(
        self,
        store: PowerStore,
        *,
        ingest: PowerIngest | None = None,
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
