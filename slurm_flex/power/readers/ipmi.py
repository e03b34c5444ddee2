"""Whole-system power from the BMC: IPMI DCMI "Get Power Reading".

Two tools can ask it, locally (in-band, ``/dev/ipmi0``) or over the network:

* ipmitool: ``ipmitool [-I lanplus -H host [-p port] -U user -f passwordfile [-C suite]]
  dcmi power reading``
* FreeIPMI: ``ipmi-dcmi [-h host -u user --config-file file] --get-system-power-statistics``.
  FreeIPMI has no password-file option, so over LAN the password goes in a FreeIPMI config
  file (a line ``password ...``), never on the command line where ``ps`` would show it.

The parsers are pure functions over the tools' text. A BMC without DCMI power management
answers with an error ("Invalid command (c1)", "command invalid or unsupported", "bad
completion code"); one that has it but is not measuring says "Power reading state is:
deactivated" / "Power Measurement : Not Available". Both raise
:class:`~slurm_flex.power.readers.errors.PowerUnsupportedError`, so they are counted, not reported as 0 W.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import structlog

from slurm_flex.power.readers.command import RunFn, run_command
from slurm_flex.power.readers.errors import PowerCommandError, PowerError, PowerParseError, PowerUnsupportedError
from slurm_flex.power.sample import PowerSample

log = structlog.get_logger(__name__)

Tool = Literal["ipmitool", "freeipmi"]

# Text fragments by which ipmitool, FreeIPMI and BMCs say "this BMC cannot do DCMI power reading".
_UNSUPPORTED_MARKERS = (
    "invalid command",
    "not supported",
    "unsupported",
    "bad completion code",
    "dcmi request failed",
    "error discovering platform capabilities",
)


@dataclass(frozen=True)
class DcmiReading:
    """A parsed DCMI power reading, in watts. ``active`` is the BMC's "power measurement
    active" flag (None when the output did not say)."""

    current: float
    minimum: float | None
    maximum: float | None
    average: float | None
    active: bool | None


@dataclass(frozen=True)
class IpmiLan:
    """Out-of-band access to a BMC. ``password_file`` is for ipmitool (``-f``);
    ``freeipmi_config`` is a FreeIPMI config file holding the password, for ipmi-dcmi.
    ``cipher_suite`` is ipmitool's ``-C`` (ipmitool 1.8.19 defaults to 17, which older BMCs and
    OpenIPMI's simulator refuse; 3 is the classic choice)."""

    host: str
    user: str
    password_file: Path | None = None
    freeipmi_config: Path | None = None
    port: int | None = None
    cipher_suite: int | None = None
    interface: str = "lanplus"


def ipmitool_argv(lan: IpmiLan | None = None, binary: str = "ipmitool") -> list[str]:
    argv = [binary]
    if lan is not None:
        if lan.password_file is None:
            raise PowerError(f"ipmitool over LAN to {lan.host} needs a password_file (never a password argument)")
        argv += ["-I", lan.interface, "-H", lan.host]
        if lan.port is not None:
            argv += ["-p", str(lan.port)]
        argv += ["-U", lan.user, "-f", str(lan.password_file)]
        if lan.cipher_suite is not None:
            argv += ["-C", str(lan.cipher_suite)]
    return [*argv, "dcmi", "power", "reading"]


def ipmi_dcmi_argv(lan: IpmiLan | None = None, binary: str = "ipmi-dcmi") -> list[str]:
    argv = [binary]
    if lan is not None:
        if lan.freeipmi_config is None:
            raise PowerError(
                f"ipmi-dcmi over LAN to {lan.host} needs freeipmi_config (a FreeIPMI config file with the password)"
            )
        host = lan.host if lan.port is None else f"{lan.host}:{lan.port}"
        argv += ["-h", host, "-u", lan.user, "--config-file", str(lan.freeipmi_config), "-D", "LAN_2_0"]
    return [*argv, "--get-system-power-statistics"]


def _refusal(text: str) -> str | None:
    lowered = text.lower()
    for marker in _UNSUPPORTED_MARKERS:
        if marker in lowered:
            line = next((ln.strip() for ln in text.splitlines() if marker in ln.lower()), marker)
            return line
    return None


def _labelled(text: str) -> dict[str, str]:
    """``label : value`` lines as a dict with lower-case labels (either tool's layout)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        label, sep, value = line.partition(":")
        if sep and label.strip():
            fields.setdefault(label.strip().lower(), value.strip())
    return fields


_WATTS = re.compile(r"^(\d+(?:\.\d+)?)\s*watts?\b", re.IGNORECASE)


def _watts(fields: dict[str, str], label: str, source: str, required: bool) -> float | None:
    value = fields.get(label)
    if value is None:
        if required:
            raise PowerParseError(f"{source}: no {label!r} line in the output")
        return None
    match = _WATTS.match(value)
    if not match:
        raise PowerParseError(f"{source}: {label!r} is {value!r}, not a number of watts")
    return float(match.group(1))


def _check_refusal(text: str, source: str, state: str | None, active_word: str) -> None:
    """Raise when an output without a reading is a refusal or an inactive-measurement answer."""
    refusal = _refusal(text)
    if refusal:
        raise PowerUnsupportedError(f"{source}: the BMC cannot give a DCMI power reading: {refusal}")
    if state is not None and state.lower() != active_word:
        raise PowerUnsupportedError(f"{source}: power measurement is {state!r} on the BMC")


def parse_ipmitool_dcmi(text: str) -> DcmiReading:
    """Parse ``ipmitool dcmi power reading``."""
    source = "ipmitool dcmi power reading"
    fields = _labelled(text)
    state = fields.get("power reading state is")
    if "instantaneous power reading" not in fields:
        _check_refusal(text, source, state, "activated")
    return DcmiReading(
        current=_watts(fields, "instantaneous power reading", source, True) or 0.0,
        minimum=_watts(fields, "minimum during sampling period", source, False),
        maximum=_watts(fields, "maximum during sampling period", source, False),
        average=_watts(fields, "average power reading over sample period", source, False),
        active=None if state is None else state.lower() == "activated",
    )


def parse_ipmi_dcmi(text: str) -> DcmiReading:
    """Parse FreeIPMI ``ipmi-dcmi --get-system-power-statistics``."""
    source = "ipmi-dcmi --get-system-power-statistics"
    fields = _labelled(text)
    state = fields.get("power measurement")
    if "current power" not in fields:
        _check_refusal(text, source, state, "active")
    return DcmiReading(
        current=_watts(fields, "current power", source, True) or 0.0,
        minimum=_watts(fields, "minimum power over sampling duration", source, False),
        maximum=_watts(fields, "maximum power over sampling duration", source, False),
        average=_watts(fields, "average power over sampling duration", source, False),
        active=None if state is None else state.lower() == "active",
    )


def usable_watts(reading: DcmiReading, source: str, accept_inactive: bool = False) -> float:
    """The reading's current watts, or :class:`PowerUnsupportedError` when the BMC is not
    measuring: state deactivated (unless ``accept_inactive``: some OpenBMC builds report real
    values but never set the flag) or a current reading of 0 W (a powered BMC host draws power;
    0 is what BMCs without a power sensor return)."""
    if reading.active is False and not accept_inactive:
        raise PowerUnsupportedError(
            f"{source}: power measurement is deactivated on the BMC "
            f"(it reported {reading.current:g} W; set accept_inactive for BMCs that never activate it)"
        )
    if reading.current <= 0:
        raise PowerUnsupportedError(f"{source}: the BMC reported 0 W, i.e. it has no power reading")
    return reading.current


class IpmiReader:
    """System power of one node from its BMC, through ipmitool or FreeIPMI's ipmi-dcmi."""

    name = "ipmi"

    def __init__(
        self,
        node: str,
        *,
        tool: Tool = "ipmitool",
        lan: IpmiLan | None = None,
        binary: str | None = None,
        run: RunFn = run_command,
        timeout: float = 10.0,
        accept_inactive: bool = False,
    ) -> None:
        self.node = node
        self.tool = tool
        if tool == "ipmitool":
            self.argv = ipmitool_argv(lan, binary or "ipmitool")
        else:
            self.argv = ipmi_dcmi_argv(lan, binary or "ipmi-dcmi")
        self._run = run
        self.timeout = timeout
        self.accept_inactive = accept_inactive

    def read(self, now: float) -> list[PowerSample]:
        source = " ".join(self.argv)
        try:
            text = self._run(self.argv, self.timeout)
        except PowerCommandError as exc:
            # Both tools exit non-zero when the BMC refuses the command; say so precisely.
            refusal = _refusal(exc.output)
            if refusal:
                raise PowerUnsupportedError(f"{source}: the BMC cannot give a DCMI power reading: {refusal}") from exc
            raise
        parse = parse_ipmitool_dcmi if self.tool == "ipmitool" else parse_ipmi_dcmi
        watts = usable_watts(parse(text), source, self.accept_inactive)
        return [PowerSample(source="ipmi", component="system", watts=watts, at=now, node=self.node)]
