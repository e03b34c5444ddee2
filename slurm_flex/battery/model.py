"""The battery as the planner sees it: a frozen value, validated on construction."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from slurm_flex.errors import PlanningError


@dataclass(frozen=True)
class Battery:
    """An on-site battery behind the site's grid meter.

    ``soc`` (state of charge), ``min_soc`` and ``max_soc`` are fractions of ``capacity_kwh``;
    ``round_trip_efficiency`` is split evenly between charging and discharging (each way its
    square root), so that a kWh stored and given back returns ``round_trip_efficiency`` kWh."""

    capacity_kwh: float
    max_charge_kw: float
    max_discharge_kw: float
    round_trip_efficiency: float = 0.9
    min_soc: float = 0.1
    max_soc: float = 0.95
    soc: float = 0.5
    # The state of charge a plan should end its horizon with at least (None: the one now). A
    # fixed target keeps a plan made every cycle from drifting: anchored on the state of charge
    # now, each cycle's plan may end lower than the last one's.
    target_soc: float | None = None

    def __post_init__(self) -> None:
        checks = (
            (self.capacity_kwh > 0, "capacity_kwh must be > 0"),
            (self.max_charge_kw >= 0, "max_charge_kw must be >= 0"),
            (self.max_discharge_kw >= 0, "max_discharge_kw must be >= 0"),
            (0 < self.round_trip_efficiency <= 1, "round_trip_efficiency must be in (0, 1]"),
            (0 <= self.min_soc < self.max_soc <= 1, "need 0 <= min_soc < max_soc <= 1"),
            (0 <= self.soc <= 1, "soc must be in [0, 1]"),
            (
                self.target_soc is None or self.min_soc <= self.target_soc <= self.max_soc,
                "target_soc must be within [min_soc, max_soc]",
            ),
        )
        values = (self.capacity_kwh, self.max_charge_kw, self.max_discharge_kw, self.round_trip_efficiency, self.soc)
        if not all(math.isfinite(v) for v in values):
            raise PlanningError(f"battery: every value must be finite: {self}")
        for ok, problem in checks:
            if not ok:
                raise PlanningError(f"battery: {problem} ({self})")

    @property
    def efficiency(self) -> float:
        """One way (charge or discharge) efficiency: the square root of the round trip."""
        return math.sqrt(self.round_trip_efficiency)

    @property
    def energy_kwh(self) -> float:
        """Energy stored now."""
        return self.soc * self.capacity_kwh

    @property
    def min_kwh(self) -> float:
        return self.min_soc * self.capacity_kwh

    @property
    def max_kwh(self) -> float:
        return self.max_soc * self.capacity_kwh

    @property
    def target_kwh(self) -> float:
        """The energy a plan should end with at least (within the bounds)."""
        kwh = self.energy_kwh if self.target_soc is None else self.target_soc * self.capacity_kwh
        return min(max(kwh, self.min_kwh), self.max_kwh)

    def with_soc(self, soc: float) -> Battery:
        """The same battery at another state of charge (as read from the device)."""
        return replace(self, soc=min(1.0, max(0.0, soc)))
