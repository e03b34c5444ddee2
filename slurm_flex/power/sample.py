"""What every power reader returns, and the interface it implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class PowerSample:
    """One power reading.

    ``component`` names what was measured: ``package-0``, ``dram-0``, ``core-0`` (RAPL),
    ``system`` (BMC), ``gpu-0``, ``node`` (Slurm's own energy accounting) or ``site`` (meter).
    ``top_level`` is false for components whose power is already inside another reported
    component of the same source (a RAPL ``core`` zone is inside its package), so summing the
    top-level samples of one source never double counts. ``at`` is when the reading applies,
    in epoch seconds.
    """

    source: str
    component: str
    watts: float
    at: float
    node: str
    top_level: bool = True


@runtime_checkable
class PowerReader(Protocol):
    """A source of power samples. ``read`` raises :class:`~slurm_flex.power.errors.PowerReadError`
    (or a subclass) when it cannot read this time; it may return an empty list when it has
    nothing yet (a RAPL reader's first call, which only sets the energy baseline)."""

    @property
    def name(self) -> str: ...

    def read(self, now: float) -> list[PowerSample]: ...
