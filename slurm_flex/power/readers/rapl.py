"""CPU and memory power from RAPL energy counters (Intel and AMD) and AMD's ``amd_energy`` hwmon.

The kernel exposes cumulative energy counters, not power: each read returns the energy in
microjoules since some arbitrary origin, wrapping at ``max_energy_range_uj``. The reader keeps
each zone's previous counter and turns the difference over the elapsed (monotonic) time into
watts, so its first read only sets the baseline and returns nothing for that zone;
:meth:`RaplReader.measure` does two reads a short interval apart when a caller needs a figure
at once.

Zones are rediscovered on every read (one directory listing and a few tiny files), so a zone
that disappears (CPU hot-unplug, driver reload) is simply dropped and a new one gets its
baseline; neither is an error.

Layout under ``<root>/sys/class/powercap``: flat entries ``intel-rapl:0`` (package 0),
``intel-rapl:0:0`` (a sub-zone of package 0), ... each with ``name`` and ``energy_uj``;
on AMD the kernel uses the same ``intel-rapl`` control type, newer or patched kernels may
name it ``amd-rapl``. ``intel-rapl-mmio:*`` zones are skipped: they are the same package
energy read through MMIO, and counting them would double the package.

What is ``top_level`` (summable): package zones and DRAM zones (DRAM is a sub-zone in sysfs
but its energy is *not* part of the package domain), but not ``core``/``uncore`` (inside the
package). If a ``psys`` (platform) zone exists it covers package and DRAM, so it alone is
top-level.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from slurm_flex.power.readers.errors import PowerParseError, PowerPermissionError, PowerReadError, PowerUnsupportedError
from slurm_flex.power.sample import PowerSample

log = structlog.get_logger(__name__)

ReadText = Callable[[Path], str]

_POWERCAP_ZONE = re.compile(r"^(intel-rapl|amd-rapl):(\d+)(?::(\d+))?$")
_AMD_ENERGY_INPUT = re.compile(r"^energy(\d+)_input$")
_AMD_LABEL = re.compile(r"^E(core|socket)(\d+)$")

PERMISSION_FIX = (
    "energy_uj is readable by root only since Linux 5.10 (CVE-2020-8694); run the reader as root, "
    "or grant read access with a udev rule or systemd-tmpfiles (e.g. "
    "'z /sys/class/powercap/intel-rapl:*/energy_uj 0440 root slurmflex')"
)


def _read_path(path: Path) -> str:
    with open(path, encoding="ascii") as fh:
        return fh.read()


@dataclass(frozen=True)
class EnergyZone:
    """One energy counter: ``key`` is stable across reads (the sysfs entry), ``component``
    the reported name, ``max_range_uj`` the wrap point (None when the counter does not wrap
    in practice, as for ``amd_energy``'s 64-bit accumulators)."""

    key: str
    component: str
    energy_path: Path
    max_range_uj: int | None
    top_level: bool
    source: str


def energy_delta_uj(previous: int, current: int, max_range_uj: int | None) -> int | None:
    """Energy used between two counter values, handling one wraparound.

    Returns None when the counter went backwards and cannot have wrapped (no known range):
    a reset, whose interval has no trustworthy energy.
    """
    delta = current - previous
    if delta >= 0:
        return delta
    if max_range_uj is None or max_range_uj <= 0:
        return None
    # The counter passed max_range_uj and restarted from zero once; a reader that polls more
    # often than the wrap period (about 60 s at 4 kW per package, minutes for real parts)
    # never sees two wraps.
    return delta + max_range_uj


def watts_from_energy(delta_uj: int, seconds: float) -> float:
    return delta_uj / 1e6 / seconds


def _int_file(read_text: ReadText, path: Path) -> int:
    text = read_text(path).strip()
    try:
        return int(text)
    except ValueError as exc:
        raise PowerParseError(f"{path}: expected an integer, got {text[:40]!r}") from exc


def discover_powercap(root: Path, read_text: ReadText = _read_path) -> list[EnergyZone]:
    """RAPL zones under ``<root>/sys/class/powercap`` (empty when there are none)."""
    base = root / "sys" / "class" / "powercap"
    try:
        entries = sorted(os.listdir(base))
    except FileNotFoundError:
        return []
    zones: list[EnergyZone] = []
    for entry in entries:
        match = _POWERCAP_ZONE.match(entry)
        if not match:
            continue
        zdir = base / entry
        try:
            name = read_text(zdir / "name").strip()
        except FileNotFoundError:
            continue  # vanished while we listed it
        package = int(match.group(2))
        sub = match.group(3)
        try:
            max_range: int | None = _int_file(read_text, zdir / "max_energy_range_uj")
        except (FileNotFoundError, PowerParseError):
            max_range = None
        zones.append(
            EnergyZone(
                key=entry,
                component=_zone_component(name, package, sub is not None),
                energy_path=zdir / "energy_uj",
                max_range_uj=max_range,
                top_level=sub is None or name.startswith("dram"),
                source="rapl",
            )
        )
    if any(z.component.startswith("psys") for z in zones):
        zones = [
            EnergyZone(z.key, z.component, z.energy_path, z.max_range_uj, z.component.startswith("psys"), z.source)
            for z in zones
        ]
    return zones


def _zone_component(name: str, package: int, is_sub: bool) -> str:
    # Package zones are already named "package-N"; sub-zones are named "dram", "core", "uncore"
    # on every package, so they take their package's number to stay unique per node.
    if re.search(r"-\d+$", name):
        return name
    if name == "psys":
        return "psys"  # the one platform domain; it sits at intel-rapl:1 on real laptops
    return f"{name}-{package}" if is_sub else name


def discover_amd_energy(root: Path, read_text: ReadText = _read_path) -> list[EnergyZone]:
    """``amd_energy`` hwmon counters: ``Esocket<N>`` per socket (top-level) and ``Ecore<NNN>``
    per core (inside its socket)."""
    base = root / "sys" / "class" / "hwmon"
    try:
        hwmons = sorted(os.listdir(base))
    except FileNotFoundError:
        return []
    zones: list[EnergyZone] = []
    for hw in hwmons:
        hdir = base / hw
        try:
            if read_text(hdir / "name").strip() != "amd_energy":
                continue
            files = sorted(os.listdir(hdir))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for fname in files:
            match = _AMD_ENERGY_INPUT.match(fname)
            if not match:
                continue
            idx = match.group(1)
            try:
                label = read_text(hdir / f"energy{idx}_label").strip()
            except FileNotFoundError:
                label = f"energy{idx}"
            lmatch = _AMD_LABEL.match(label)
            if lmatch and lmatch.group(1) == "socket":
                component, top = f"package-{int(lmatch.group(2))}", True
            elif lmatch:
                component, top = f"core-{int(lmatch.group(2))}", False
            else:
                component, top = label, False
            zones.append(
                EnergyZone(
                    key=f"{hw}/{fname}",
                    component=component,
                    energy_path=hdir / fname,
                    max_range_uj=None,
                    top_level=top,
                    source="amd_energy",
                )
            )
    return zones


class RaplReader:
    """Reads RAPL powercap zones and ``amd_energy`` hwmon counters under ``root``.

    ``clock`` (monotonic seconds) times the interval between reads; ``read_text`` opens the
    counter files (injectable because tests run as root and cannot meet a real EACCES).
    When both powercap and ``amd_energy`` are present, powercap wins and ``amd_energy`` is not
    read: both measure the same sockets.
    """

    name = "rapl"

    def __init__(
        self,
        node: str,
        root: Path = Path("/"),
        *,
        clock: Callable[[], float] = time.monotonic,
        read_text: ReadText = _read_path,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.node = node
        self.root = root
        self._clock = clock
        self._read_text = read_text
        self._sleep = sleep
        self._previous: dict[str, tuple[int, float]] = {}

    def zones(self) -> list[EnergyZone]:
        return discover_powercap(self.root, self._read_text) or discover_amd_energy(self.root, self._read_text)

    def read(self, now: float) -> list[PowerSample]:
        zones = self.zones()
        if not zones:
            raise PowerUnsupportedError(
                f"no RAPL zones under {self.root / 'sys/class/powercap'} and no amd_energy hwmon under "
                f"{self.root / 'sys/class/hwmon'} (load intel_rapl_common / amd_energy?)"
            )
        samples: list[PowerSample] = []
        seen: set[str] = set()
        for zone in zones:
            try:
                energy = _int_file(self._read_text, zone.energy_path)
            except FileNotFoundError:
                log.info("rapl_zone_vanished", zone=zone.key)
                continue
            except PermissionError as exc:
                raise PowerPermissionError(f"{zone.energy_path}: permission denied; {PERMISSION_FIX}") from exc
            except OSError as exc:
                raise PowerReadError(f"{zone.energy_path}: {exc.strerror or exc}") from exc
            at = self._clock()
            seen.add(zone.key)
            previous = self._previous.get(zone.key)
            self._previous[zone.key] = (energy, at)
            if previous is None:
                continue  # first sight of this zone: baseline only
            delta = energy_delta_uj(previous[0], energy, zone.max_range_uj)
            seconds = at - previous[1]
            if delta is None or seconds <= 0:
                log.info("rapl_counter_reset", zone=zone.key, previous=previous[0], current=energy)
                continue
            samples.append(
                PowerSample(
                    source=zone.source,
                    component=zone.component,
                    watts=watts_from_energy(delta, seconds),
                    at=now,
                    node=self.node,
                    top_level=zone.top_level,
                )
            )
        for gone in set(self._previous) - seen:
            del self._previous[gone]
        return samples

    def measure(self, interval: float, now: float | None = None) -> list[PowerSample]:
        """Two reads ``interval`` seconds apart; the second one's samples."""
        self.read(time.time() if now is None else now)
        self._sleep(interval)
        return self.read(time.time() if now is None else now + interval)
