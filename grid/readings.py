"""What a grid-signal provider says in one answer, in slurm-flex's own units and slots.

Every provider client turns its API's answer into a :class:`Reading` with a pure parser:
half-hour UTC slots (GB settlement periods), carbon intensity in g/kWh or price in GBP/MWh,
each value marked as a forecast or an actual (measured/settled) value, plus when the answer
was issued. Caching, profiles and fallbacks (:mod:`slurm_flex.grid.signals`) work on these.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from slurm_flex.errors import ForecastFormatError
from slurm_flex.grid.series import SLOT_SECONDS, iso_utc, parse_iso_utc

Quantity = Literal["carbon", "price"]
Kind = Literal["forecast", "actual"]

UNITS: dict[str, str] = {"carbon": "g/kWh", "price": "GBP/MWh"}
# Plausible ranges; anything outside is a unit mix-up or garbage, not a signal to plan on.
VALID_RANGE: dict[str, tuple[float, float]] = {"carbon": (0.0, 2000.0), "price": (-10000.0, 10000.0)}


@dataclass(frozen=True)
class Point:
    start: int  # slot start, epoch seconds UTC, on a :00/:30 boundary
    value: float
    kind: Kind


@dataclass(frozen=True)
class Reading:
    """One provider answer for one quantity: points sorted by slot, one per slot.

    ``source`` names the provider and what was asked (e.g. ``neso:regionid=10``);
    ``issued_at`` is when the provider issued the values (the fetch time when it does not say)."""

    quantity: Quantity
    points: tuple[Point, ...]
    source: str
    issued_at: int

    def forecast_points(self) -> tuple[Point, ...]:
        return tuple(p for p in self.points if p.kind == "forecast")

    def actual_points(self) -> tuple[Point, ...]:
        return tuple(p for p in self.points if p.kind == "actual")

    @property
    def end(self) -> int | None:
        """End of the last slot (exclusive), None when empty."""
        return self.points[-1].start + SLOT_SECONDS if self.points else None


def make_reading(quantity: Quantity, points: Iterable[Point], source: str, issued_at: int) -> Reading:
    """A validated reading: slots aligned, values finite and plausible, sorted; where a slot
    appears twice an actual value wins over a forecast, and two different values of the same
    kind are an error (the answer contradicts itself)."""
    low, high = VALID_RANGE[quantity]
    by_slot: dict[int, Point] = {}
    for p in points:
        where = f"{source}: slot {iso_utc(p.start)}"
        if p.start % SLOT_SECONDS:
            raise ForecastFormatError(f"{where}: not on a half-hour boundary")
        if not math.isfinite(p.value) or not low <= p.value <= high:
            raise ForecastFormatError(f"{where}: {quantity} {p.value!r} {UNITS[quantity]} is outside {low:g}..{high:g}")
        seen = by_slot.get(p.start)
        if seen is None or (seen.kind == "forecast" and p.kind == "actual"):
            by_slot[p.start] = p
        elif seen.kind == p.kind and not math.isclose(seen.value, p.value, rel_tol=1e-9, abs_tol=1e-9):
            raise ForecastFormatError(f"{where}: given twice with different values ({seen.value:g}, {p.value:g})")
    return Reading(quantity, tuple(by_slot[k] for k in sorted(by_slot)), source, issued_at)


class Provider(Protocol):
    """A client for one provider and one question (e.g. NESO, region 10, carbon).

    ``fetch(now)`` returns the provider's current view from ``now`` on (its forecast, and any
    recent actuals it includes); it raises ProviderError / ProviderRateLimited when it cannot
    ask or the provider fails, ForecastFormatError when the answer is malformed.
    ``history(start, end)`` returns actual (or, where a provider has no actuals, issued
    forecast) values for past slots [start, end), for building profiles; providers without
    history raise ProviderError."""

    @property
    def name(self) -> str: ...

    @property
    def quantity(self) -> Quantity: ...

    def fetch(self, now: int) -> Reading: ...

    def history(self, start: int, end: int) -> Reading: ...


def time_field(value: Any, where: str, what: str) -> int:
    """An ISO 8601 time field of a provider's answer, as epoch seconds; anything else is a
    format error naming where it was and which field."""
    if not isinstance(value, str):
        raise ForecastFormatError(f"{where}: missing or non-text {what}")
    try:
        return parse_iso_utc(value)
    except ValueError as exc:
        raise ForecastFormatError(f"{where}: {what}: {exc}") from exc
