"""The daemon's side of an on-site battery ([battery]): each cycle it reads the battery
(SunSpec over Modbus TCP, slurm_flex.battery.sunspec), hands it to its site's planning (jobs and
battery in one plan, slurm_flex.battery.planning), commands the current slot's setpoint in
enforce mode, and records what it did for the plan file and ``slurmflex status``.

A battery that does not answer, does not speak SunSpec storage, or reports a fault is dropped
from this cycle's plan with one log line (``battery_dropped``); the jobs are planned without
it and the cycle counts a soft failure. A command that fails is a soft failure too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import structlog

from slurm_flex.battery.config import BatteryConfig
from slurm_flex.battery.model import Battery
from slurm_flex.battery.planning import BatteryPlan
from slurm_flex.battery.sunspec import StorageStatus, SunSpecStorage
from slurm_flex.grid.series import SLOT_SECONDS, floor_slot, iso_utc
from slurm_flex.planner.instance import FloatArray
from slurm_flex.slurm.parsers import SlurmJob

log = structlog.get_logger(__name__)

# The state store setting holding the last cycle's battery summary (JSON), for status.
BATTERY_SETTING = "battery"
RUNNING_STATES = ("RUNNING", "COMPLETING", "CONFIGURING")


class StorageLink(Protocol):
    """What the daemon needs of a battery controller (SunSpecStorage is the real one)."""

    def read(self) -> StorageStatus: ...

    def set_rate(self, kw: float, revert_seconds: int = 900) -> None: ...

    def close(self) -> None: ...


def sunspec_link(config: BatteryConfig) -> StorageLink:
    return SunSpecStorage(config.host, config.port, config.unit_id, config.base_address, config.timeout_seconds)


@dataclass(frozen=True)
class BatteryReading:
    battery: Battery
    status: StorageStatus


def running_load_kw(
    jobs: Iterable[SlurmJob], estimate: Callable[[SlurmJob], float], now: int, n_slots: int
) -> FloatArray:
    """kW of the running jobs per slot from floor_slot(now), by their estimates, until their end
    time (beyond the horizon when they have none)."""
    slot0 = floor_slot(now)
    kw = np.zeros(n_slots)
    for j in jobs:
        if j.state not in RUNNING_STATES:
            continue
        end = n_slots if j.end_time is None else max(0, min(n_slots, math.ceil((j.end_time - slot0) / SLOT_SECONDS)))
        kw[:end] += estimate(j) / 1000.0
    return kw


class BatteryControl:
    """Reads, plans with and commands one battery; every failure is soft."""

    def __init__(self, config: BatteryConfig, connect: Callable[[BatteryConfig], StorageLink] = sunspec_link) -> None:
        self.config = config
        self.connect = connect
        self.where = f"{config.host}:{config.port}"
        self._link: StorageLink | None = None
        self.summary: dict[str, Any] = {}

    def read(self) -> tuple[Battery | None, int]:
        """The battery as it is now (None: dropped from this cycle's plan) and the soft
        failures (0 or 1)."""
        self.close()
        try:
            link = self.connect(self.config)
            self._link = link
            status = link.read()
        except Exception as exc:  # BatteryError, or anything unforeseen: never stops planning
            self.close()
            log.warning("battery_dropped", battery=self.where, error=str(exc), kind=type(exc).__name__)
            self.summary = {"ok": False, "battery": self.where, "error": str(exc)}
            return None, 1
        battery = self.config.battery(status.soc)
        self.summary = {
            "ok": True,
            "battery": self.where,
            "soc": round(status.soc, 4),
            "charge_status": status.charge_status,
            "device": " ".join(p for p in (status.manufacturer, status.model, status.serial) if p),
            "min_soc": self.config.min_soc,
            "max_soc": self.config.max_soc,
        }
        return battery, 0

    def planned(self, site: str, plan: BatteryPlan | None, now: int) -> None:
        """Record the site's battery plan in the summary (before it is commanded)."""
        if not self.summary.get("ok"):
            return
        self.summary["site"] = site
        if plan is None:
            self.summary.update(planned=False, why="no usable forecast for its site: left to itself")
            return
        s = plan.schedule
        day = min(s.net_kw.size, 48)
        self.summary.update(
            planned=True,
            setpoint_kw=round(plan.setpoint_kw(now), 3),
            slot=iso_utc(floor_slot(now)),
            charge_kwh_24h=round(float(s.charge_kw[:day].sum() * SLOT_SECONDS / 3600), 3),
            discharge_kwh_24h=round(float(s.discharge_kw[:day].sum() * SLOT_SECONDS / 3600), 3),
            over_ceiling_kwh=round(float(_over(s.load_kw, s.ceiling_kw).sum() * SLOT_SECONDS / 3600), 3),
            unmet_kwh=round(float(s.unmet_kw.sum() * SLOT_SECONDS / 3600), 3),
            saving=round(s.saving, 4),
        )

    def command(self, plan: BatteryPlan | None, now: int, mode: str) -> int:
        """Set the current slot's rate in enforce mode (with ``control``); returns the soft
        failures (0 or 1). Without a plan nothing is written: the device's revert timer hands
        it back to its own mode."""
        if plan is None or self._link is None:
            return 0
        if mode != "enforce" or not self.config.control:
            why = f"{mode} mode" if mode != "enforce" else "control = false"
            self.summary.update(commanded=False, why_not_commanded=why)
            return 0
        kw = plan.setpoint_kw(now)
        try:
            self._link.set_rate(kw, self.config.revert_seconds)
        except Exception as exc:  # BatteryError, or anything unforeseen: a soft failure
            log.warning("battery_command_failed", battery=self.where, kw=round(kw, 3), error=str(exc))
            self.summary.update(commanded=False, why_not_commanded=str(exc))
            return 1
        finally:
            self.close()
        log.info("battery_commanded", battery=self.where, kw=round(kw, 3), soc=self.summary.get("soc"))
        self.summary.update(commanded=True)
        return 0

    def close(self) -> None:
        if self._link is not None:
            link, self._link = self._link, None
            try:
                link.close()
            except Exception as exc:  # closing a broken link must not fail the cycle
                log.debug("battery_close_failed", battery=self.where, error=str(exc))


def _over(load: FloatArray, ceiling: FloatArray) -> FloatArray:
    """kW of load above the ceiling per slot (what the battery has to cover)."""
    finite = np.isfinite(ceiling)
    return np.where(finite, np.maximum(0.0, load - np.where(finite, ceiling, 0.0)), 0.0)


def battery_line(summary: dict[str, Any]) -> str:
    """One line for ``slurmflex status``, e.g. ``battery 10.0.0.5:502 (site cambridge): 60 %
    (10-95 %), discharging 40.0 kW now (commanded); next 24 h +120.0/-95.0 kWh, 60.0 kWh over
    ceilings; saves 12.30 GBP``."""
    where = f"battery {summary.get('battery', '')}" + (f" (site {summary['site']})" if summary.get("site") else "")
    if not summary.get("ok"):
        return f"{where}: DROPPED from the plan ({summary.get('error', 'unknown error')})"
    soc = f"{summary['soc']:.0%} ({summary['min_soc']:.0%}-{summary['max_soc']:.0%})"
    if not summary.get("planned"):
        return f"{where}: {soc}; not planned: {summary.get('why', '')}"
    kw = summary["setpoint_kw"]
    now = f"charging {kw:.1f} kW" if kw > 1e-3 else f"discharging {-kw:.1f} kW" if kw < -1e-3 else "holding"
    done = "commanded" if summary.get("commanded") else f"not commanded: {summary.get('why_not_commanded', '')}"
    unmet = f", {summary['unmet_kwh']:.1f} kWh it cannot cover" if summary.get("unmet_kwh") else ""
    return (
        f"{where}: {soc}, {now} now ({done}); next 24 h +{summary['charge_kwh_24h']:.1f}/"
        f"-{summary['discharge_kwh_24h']:.1f} kWh, {summary['over_ceiling_kwh']:.1f} kWh over ceilings{unmet}; "
        f"saves {summary['saving']:.2f} GBP"
    )
