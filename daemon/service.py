"""The daemon's main loop: build the adapters from config, run cycles on an interval.

SIGTERM/SIGINT stop it after the current cycle; SIGHUP reloads the config file (a bad file is
reported and the old config kept). Nothing a cycle raises stops the loop: it is logged, counted
and retried next interval.
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
from slurm_flex.daemon.cycle import Cycle, CycleResult, ForecastSource
from slurm_flex.errors import ConfigError, SlurmFlexError
from slurm_flex.grid.filesource import FileSource
from slurm_flex.slurm.backend import make_backend
from slurm_flex.state import StateStore

log = structlog.get_logger(__name__)


def make_source(config: Config) -> ForecastSource:
    f = config.forecast
    replay = None if f.replay_from is None else int(f.replay_from.timestamp())
    return FileSource(f.path, replay_from=replay)


def make_cycle(config: Config, store: StateStore) -> Cycle:
    backend = make_backend(
        config.slurm.backend,
        bin_dir=config.slurm.bin_dir,
        slurm_conf=config.slurm.slurm_conf,
        timeout_seconds=config.slurm.command_timeout_seconds,
    )
    return Cycle(config, backend, make_source(config), store)


@dataclass
class LoopStats:
    cycles: int = 0
    failed_cycles: int = 0
    soft_errors: int = 0


class Daemon:
    def __init__(self, config: Config, reload: Callable[[], Config] | None = None) -> None:
        self.config = config
        self._reload = reload
        self._stop = threading.Event()
        self._reload_requested = False
        self.stats = LoopStats()
        self.store = StateStore(config.state_db)
        self.cycle = make_cycle(config, self.store)

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
        try:
            new = self._reload()
        except ConfigError as exc:
            log.error("reload_rejected", error=str(exc), kept="previous config")
            return
        if new.daemon.state_dir != self.config.daemon.state_dir:
            log.error("reload_rejected", error="state_dir cannot change at runtime", kept="previous config")
            return
        self.config = new
        self.cycle = make_cycle(new, self.store)
        log.info("reloaded", mode=new.daemon.mode, interval=new.daemon.interval_seconds)

    def run_once(self) -> CycleResult | None:
        try:
            result = self.cycle.run()
        except SlurmFlexError as exc:
            # The store itself failed: count it and try again next time.
            self.stats.failed_cycles += 1
            log.error("cycle_crashed", error=str(exc))
            return None
        self.stats.cycles += 1
        self.stats.soft_errors += result.errors
        if not result.ok:
            self.stats.failed_cycles += 1
        return result

    def run(self, max_cycles: int | None = None) -> LoopStats:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        log.info(
            "daemon_start",
            mode=self.config.daemon.mode,
            interval=self.config.daemon.interval_seconds,
            state_dir=str(self.config.daemon.state_dir),
        )
        done = 0
        while True:
            started = time.monotonic()
            self.run_once()
            done += 1
            if max_cycles is not None and done >= max_cycles:
                break
            remaining = self.config.daemon.interval_seconds - (time.monotonic() - started)
            if self._stop.wait(max(0.0, remaining)):
                if self._reload_requested:
                    self._do_reload()
                    continue
                break
        log.info("daemon_stop", cycles=self.stats.cycles, failed=self.stats.failed_cycles)
        self.store.close()
        return self.stats
