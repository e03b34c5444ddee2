"""The ``[battery]`` table: the battery's ratings and how to reach its controller.

Validated with the rest of the config (slurm_flex.config): an unknown key or a bad value is a
``ConfigError`` naming the file, ``battery.<key>`` and the valid values."""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from slurm_flex.battery.model import Battery


class BatteryConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    # The site whose meter the battery is behind ([sites]); empty: the first site planned.
    site: str = ""
    capacity_kwh: float = Field(300.0, gt=0)
    max_charge_kw: float = Field(150.0, ge=0)
    max_discharge_kw: float = Field(150.0, ge=0)
    round_trip_efficiency: float = Field(0.9, gt=0, le=1)
    # State of charge kept within these fractions of capacity (min: a reserve for outages).
    min_soc: float = Field(0.1, ge=0, lt=1)
    max_soc: float = Field(0.95, gt=0, le=1)
    # Each plan ends its horizon with at least this state of charge (ready for the next
    # activation, and no drift from planning every cycle afresh).
    target_soc: float = Field(0.5, ge=0, le=1)
    # The controller: Modbus TCP, SunSpec (common model 1, storage model 124).
    host: str = "127.0.0.1"
    port: int = Field(502, ge=1, le=65535)
    unit_id: int = Field(1, ge=0, le=255)
    # Where the SunSpec map starts ("SunS"): 40000 by the standard; 0 and 50000 are also tried.
    base_address: int = Field(40000, ge=0, le=65535)
    timeout_seconds: float = Field(3.0, gt=0, le=60)
    # Command the battery each cycle in enforce mode; false: plan with it, read it, never write.
    control: bool = True
    # Seconds after which the battery reverts to its own mode if no new command comes
    # (InOutWRte_RvrtTms): if the daemon stops, the battery does not hold a stale setpoint.
    revert_seconds: int = Field(900, ge=0, le=65535)
    # Jobs and battery in one MILP (slurm_flex.battery.joint) for queues with at most this many
    # candidate starts (kept only when cheaper than the two-stage plan); 0: two-stage only.
    joint_max_starts: int = Field(20_000, ge=0)

    @model_validator(mode="after")
    def _soc_range(self) -> Self:
        if self.min_soc >= self.max_soc:
            raise ValueError(f"min_soc ({self.min_soc}) must be below max_soc ({self.max_soc})")
        if not self.min_soc <= self.target_soc <= self.max_soc:
            raise ValueError(f"target_soc ({self.target_soc}) must be within min_soc and max_soc")
        return self

    def battery(self, soc: float) -> Battery:
        """The battery at state of charge ``soc`` (a fraction, as read from the device)."""
        return Battery(
            capacity_kwh=self.capacity_kwh,
            max_charge_kw=self.max_charge_kw,
            max_discharge_kw=self.max_discharge_kw,
            round_trip_efficiency=self.round_trip_efficiency,
            min_soc=self.min_soc,
            max_soc=self.max_soc,
            soc=min(1.0, max(0.0, soc)),
            target_soc=self.target_soc,
        )
