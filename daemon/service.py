"""The daemon's main loop: build the adapters from config, run cycles on an interval.

SIGTERM/SIGINT stop it after the current cycle; SIGHUP reloads the config file (a bad file is
reported and the old config kept). Nothing a cycle raises stops the loop: it is logged, counted
and retried next interval (later, while Slurm stays unreachable). Under systemd it reports
READY/RELOADING/STOPPING/STATUS and feeds the watchdog (Type=notify, WatchdogSec=).
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

import structlog

from slurm_flex.config import Config
from slurm_flex.daemon.cycle import DEFAULT_SITE, Cycle, CycleResult
from slurm_flex.daemon.ingest import PowerIngest
from slurm_flex.errors import ConfigError, SlurmFlexError
from slurm_flex.grid.cache import GridCache
from slurm_flex.grid.factory import build_sites, grid_cache_path, signal_policy
from slurm_flex.grid.filesource import FileSource
from slurm_flex.grid.series import ForecastSource
from slurm_flex.grid.signals import prune
from slurm_flex.metrics import Metrics
from slurm_flex.power.ledger import PowerLedger
from slurm_flex.power.readers.meter import CommandMeter, HttpMeter
from slurm_flex.power.sample import PowerReader
from slurm_flex.power.store import POWER_DB, PowerStore
from slurm_flex.power.wire import read_token
from slurm_flex.sdnotify import Notifier
from slurm_flex.slurm.backend import SlurmBackend, make_backend
from slurm_flex.slurm.federation import FederationBackend
from slurm_flex.slurm.runner import SlurmRunner
from slurm_flex.state import StateStore

log = structlog.get_logger(__name__)

PRUNE_EVERY_SECONDS = 86400
# A cycle for a contract's window edge runs this long after it (Slurm's clock and ours may
# differ a little; a begin time set for the edge has then passed).
EDGE_DELAY_S = 1.0
# ... and another this long after that one (work it released has started by then).
EDGE_SETTLE_S = 15.0


def make_sources(config: Config, grid: GridCache | None) -> dict[str, ForecastSource]:
    """The forecast source of every site: live providers for [sites.*], else the [forecast] file."""
    if config.sites:
        if grid is None:
            raise ConfigError("config", "sites", "live sites need the grid cache (daemon.state_dir)")
        return dict(build_sites(config, grid))
    f = config.forecast
    replay = None if f.replay_from is None else int(f.replay_from.timestamp())
    return {DEFAULT_SITE: FileSource(f.path, replay_from=replay)}


def open_grid_cache(config: Config) -> GridCache | None:
    return GridCache(grid_cache_path(config)) if config.sites else None


def slurm_backend(config: Config) -> SlurmBackend:
    """The Slurm backend the ``[slurm]`` table names (over every cluster of the federation
    when ``[federation]`` is enabled)."""
    if config.federation.enabled and config.site_clusters:
        runner = SlurmRunner(
            bin_dir=config.slurm.bin_dir,
            slurm_conf=config.slurm.slurm_conf,
            chroot=config.slurm.chroot,
            timeout_seconds=config.slurm.command_timeout_seconds,
        )
        return FederationBackend(runner, tuple(config.site_clusters.values()))
    return make_backend(
        config.slurm.backend,
        bin_dir=config.slurm.bin_dir,
        slurm_conf=config.slurm.slurm_conf,
        chroot=config.slurm.chroot,
        timeout_seconds=config.slurm.command_timeout_seconds,
    )


def make_cycle(
    config: Config, store: StateStore, grid: GridCache | None = None, power: PowerLedger | None = None
) -> Cycle:
    return Cycle(config, slurm_backend(config), make_sources(config, grid), store, power=power)


def open_power(config: Config) -> PowerLedger | None:
    """The measured-power ledger ([measure]); starts the agents' ingest endpoint when listening."""
    m = config.measure
    if not m.enabled:
        return None
    # Slurm's own energy counters are read by the cycle, through its backend (daemon/cycle.py).
    pull: list[PowerReader] = []
    if m.site_meter_command:
        pull.append(CommandMeter(list(m.site_meter_command), unit=m.site_meter_unit))
    if m.site_meter_url:
        pull.append(HttpMeter(m.site_meter_url, unit=m.site_meter_unit))
    ingest = None
    if m.listen:
        try:
            ingest = PowerIngest(m.listen, read_token(m.token_file, "measure.token_file"))
        except OSError as exc:
            raise ConfigError("config", "measure.listen", f"cannot listen on {m.listen}: {exc.strerror}") from exc
        ingest.start()
        log.info("power_ingest", listen=m.listen, port=ingest.port)
    return PowerLedger(
        PowerStore(config.daemon.state_dir / POWER_DB),
        ingest=ingest,
        pull=pull,
        max_age_seconds=m.max_age_seconds,
        raw_retention_seconds=m.raw_retention_hours * 3600,
        retention_seconds=m.retention_days * 86400,
        max_interval_seconds=2 * config.daemon.interval_seconds,
    )


@dataclass
class LoopStats:
    cycles: int = 0
    failed_cycles: int = 0
    soft_errors: int = 0


class Daemon:
    """The loop: a cycle, then sleep until the next one, keeping systemd's watchdog fed.

    When Slurm cannot be read, the wait doubles (up to ``max_backoff_seconds``) until it can."""

    def __init__(
        self,
        config: Config,
        reload: Callable[[], Config] | None = None,
        notifier: Notifier | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self._reload = reload
        self._stop = threading.Event()
        self._reload_requested = False
        self.stats = LoopStats()
        self.store = StateStore(config.state_db)
        self.grid = open_grid_cache(config)
        self.power = open_power(config)
        self.cycle = make_cycle(config, self.store, self.grid, self.power)
        self._pruned_at = 0.0
        self.notifier = notifier or Notifier()
        self.metrics = metrics
        self._failures_in_a_row = 0
        self._edge_cycle = False  # the next cycle runs for a contract window's edge

    def stop(self, *_: object) -> None:
        self._stop.set()

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        self._reload_requested = True
        self._stop.set()  # wake the sleep; the loop clears it after reloading

    def _do_reload(self) -> None:
        self._reload_requested = False
        self._stop.clear()
        if self._reload is None:
            return
        self.notifier.reloading()
        try:
            new = self._reload()
            if new.daemon.state_dir != self.config.daemon.state_dir:
                raise ConfigError("config", "daemon.state_dir", "cannot change at runtime (restart the service)")
            grid = self.grid or open_grid_cache(new)
            cycle = make_cycle(new, self.store, grid, self.power)  # agents keep their endpoint
        except ConfigError as exc:
            log.error("reload_rejected", error=str(exc), kept="previous config")
            self.notifier.ready(f"reload rejected, previous config kept: {exc}")
            return
        self.config, self.grid, self.cycle = new, grid, cycle
        log.info("reloaded", mode=new.daemon.mode, interval=new.daemon.interval_seconds)
        self.notifier.ready("reloaded")

    def run_once(self) -> CycleResult | None:
        if self.grid is not None and time.time() - self._pruned_at > PRUNE_EVERY_SECONDS:
            self._pruned_at = time.time()
            prune(self.grid, int(self._pruned_at), signal_policy(self.config))
        try:
            result = self.cycle.run()
        except SlurmFlexError as exc:
            # The store itself failed: count it and try again next time.
            self.stats.failed_cycles += 1
            self._failures_in_a_row += 1
            log.error("cycle_crashed", error=str(exc))
            return None
        self.stats.cycles += 1
        self.stats.soft_errors += result.errors
        if not result.ok:
            self.stats.failed_cycles += 1
        self._failures_in_a_row = 0 if result.slurm_ok else self._failures_in_a_row + 1
        if self.metrics is not None:
            self.metrics.observe(result, time.time())
        self.notifier.status(
            f"{result.mode}: {result.deferred} deferred of {result.flexible} flexible, last cycle "
            f"{'ok' if result.ok else 'failed'} in {result.duration_s:.2f}s"
        )
        return result

    def next_wait(self) -> float:
        """Seconds until the next cycle: the interval, doubled per failed Slurm read in a row."""
        interval = float(self.config.daemon.interval_seconds)
        if self._failures_in_a_row == 0:
            return interval
        backoff = interval * float(2 ** min(self._failures_in_a_row - 1, 20))
        return float(min(max(interval, backoff), float(self.config.daemon.max_backoff_seconds)))

    def _until_edge(self, wait: float) -> float:
        """The wait, cut short to run a cycle just after a flexibility contract's window (or a
        half-hour of an increase's) opens or closes, rather than up to an interval later: its
        suspensions, resumptions and pulls are then on time (beckn.activation)."""
        if self._edge_cycle:
            # The last cycle ran at an edge: one more soon after, once what it released draws
            # (the delivery proof weighs each power sample by the time to the next cycle).
            self._edge_cycle = False
            wait = min(wait, EDGE_SETTLE_S)
        try:
            edge = self.cycle.next_edge(time.time())
        except SlurmFlexError as exc:
            log.warning("contract_edges_unknown", error=str(exc))
            return wait
        if edge is None:
            return wait
        until = max(0.0, edge + EDGE_DELAY_S - time.time())
        if until < wait:
            self._edge_cycle = True
            return until
        return wait

    def _sleep(self, seconds: float) -> bool:
        """Sleep, feeding the watchdog; True when woken by a stop or reload request."""
        deadline = time.monotonic() + seconds
        beat = self.notifier.watchdog_seconds / 2 if self.notifier.watchdog_seconds else None
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self._stop.wait(min(left, beat) if beat else left):
                return True
            self.notifier.watchdog()

    def run(self, max_cycles: int | None = None) -> LoopStats:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        log.info(
            "daemon_start",
            mode=self.cycle.mode(),
            interval=self.config.daemon.interval_seconds,
            state_dir=str(self.config.daemon.state_dir),
        )
        self.notifier.ready("starting")
        done = 0
        while True:
            started = time.monotonic()
            self.run_once()
            self.notifier.watchdog()
            done += 1
            if max_cycles is not None and done >= max_cycles:
                break
            remaining = self.next_wait() - (time.monotonic() - started)
            remaining = self._until_edge(remaining)
            if self._sleep(max(0.0, remaining)):
                if self._reload_requested:
                    self._do_reload()
                    continue
                break
        self.notifier.stopping()
        log.info("daemon_stop", cycles=self.stats.cycles, failed=self.stats.failed_cycles)
        self.store.close()
        if self.grid is not None:
            self.grid.close()
        if self.power is not None:
            self.power.close()
        return self.stats
