"""The battery's errors, rooted in :class:`slurm_flex.errors.SlurmFlexError` (always raised
``from`` their cause): the daemon drops a battery that raises any of them from the plan, logs
one line and plans the jobs without it."""

from __future__ import annotations

from slurm_flex.errors import SlurmFlexError


class BatteryError(SlurmFlexError):
    """The battery could not be read, understood or commanded."""


class BatteryUnavailableError(BatteryError):
    """The battery's controller did not answer (connection refused, timeout, Modbus exception)."""


class BatteryProtocolError(BatteryError):
    """The device answered, but not as a SunSpec storage device (no "SunS" marker, no storage
    model 124, a value out of its range)."""


class BatteryFaultError(BatteryError):
    """The device reports a fault (inverter state FAULT, an alarm bit in its event register, or
    storage status OFF): it must not be planned with."""
