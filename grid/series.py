"""The one internal grid-signal type: UTC half-hour slots of carbon intensity and price.

Slots are GB settlement-period aligned (start on :00 or :30 UTC). Missing values are NaN so a
gap in the data is visible to the planner instead of silently filled.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Protocol

import numpy as np
import numpy.typing as npt

SLOT_SECONDS = 1800


def floor_slot(epoch: float) -> int:
    """Start of the half-hour slot containing ``epoch``."""
    return int(epoch // SLOT_SECONDS) * SLOT_SECONDS


def parse_iso_utc(text: str) -> int:
    """Epoch of an ISO 8601 time that names its zone (``Z`` or an offset).

    Raises ValueError saying what is wrong; callers add where the text came from."""
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ValueError(f"unreadable time {text!r} (use ISO 8601, e.g. 2026-11-21T08:00Z)") from exc
    if dt.tzinfo is None:
        raise ValueError(f"time {text!r} has no zone; write it in UTC with Z or +00:00")
    return int(dt.timestamp())


def iso_utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Segment:
    """Where a run of slots of one quantity came from: ``origin`` is ``forecast``, ``actual``,
    ``last good forecast`` (the provider failed this cycle; an earlier answer is used) or
    ``profile`` (typical values from history, past the provider's horizon)."""

    quantity: str
    start: int
    end: int  # exclusive
    origin: str
    source: str
    issued_at: int | None = None

    def clipped(self, start: int, end: int) -> Segment | None:
        lo, hi = max(self.start, start), min(self.end, end)
        return None if lo >= hi else replace(self, start=lo, end=hi)


@dataclass(frozen=True)
class SignalSeries:
    """Half-hourly carbon intensity (g/kWh) and price (GBP/MWh) from ``start`` on.

    ``carbon`` and ``price`` are tuples of equal length; NaN marks a missing value (a price
    series that is entirely absent is all-NaN). ``source`` says where the values came from,
    ``issued_at`` when they were issued (epoch, None if unknown).
    """

    start: int
    carbon: tuple[float, ...]
    price: tuple[float, ...]
    source: str
    issued_at: int | None = None
    segments: tuple[Segment, ...] = ()
    # What went wrong getting it (fallbacks in use), for the status and the logs.
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.start % SLOT_SECONDS:
            raise ValueError(f"series start {iso_utc(self.start)} is not on a half-hour boundary")
        if len(self.carbon) != len(self.price):
            raise ValueError("carbon and price series differ in length")

    def __len__(self) -> int:
        return len(self.carbon)

    @property
    def end(self) -> int:
        """End of the last slot (exclusive)."""
        return self.start + len(self.carbon) * SLOT_SECONDS

    def slot_start(self, index: int) -> int:
        return self.start + index * SLOT_SECONDS

    def index_of(self, epoch: float) -> int:
        return (floor_slot(epoch) - self.start) // SLOT_SECONDS

    def carbon_array(self) -> npt.NDArray[np.float64]:
        return np.asarray(self.carbon, dtype=np.float64)

    def price_array(self) -> npt.NDArray[np.float64]:
        return np.asarray(self.price, dtype=np.float64)

    @property
    def has_price(self) -> bool:
        return bool(np.isfinite(self.price_array()).any())

    def window(self, from_epoch: float, n_slots: int | None = None) -> SignalSeries:
        """The slots from the one containing ``from_epoch`` on (at most ``n_slots`` of them)."""
        first = max(self.index_of(from_epoch), 0)
        last = len(self) if n_slots is None else min(len(self), first + n_slots)
        lo, hi = self.slot_start(first), self.slot_start(last)
        return replace(
            self,
            start=lo,
            carbon=self.carbon[first:last],
            price=self.price[first:last],
            segments=tuple(c for seg in self.segments if (c := seg.clipped(lo, hi)) is not None),
        )

    def shifted(self, new_start: int) -> SignalSeries:
        """The same values replayed from another slot (for demos and simulations)."""
        delta = floor_slot(new_start) - self.start
        return replace(
            self,
            start=floor_slot(new_start),
            source=f"{self.source} (replayed from {iso_utc(self.start)})",
            issued_at=None if self.issued_at is None else self.issued_at + delta,
            segments=tuple(
                replace(
                    seg,
                    start=seg.start + delta,
                    end=seg.end + delta,
                    issued_at=None if seg.issued_at is None else seg.issued_at + delta,
                )
                for seg in self.segments
            ),
        )

    def covers(self, epoch: float) -> bool:
        return self.start <= epoch < self.end


class ForecastSource(Protocol):
    """Where a site's signals come from: a file (:class:`~slurm_flex.grid.filesource.FileSource`)
    or live providers (:class:`~slurm_flex.grid.signals.SiteSignals`). ``forecast(now)`` raises
    :class:`~slurm_flex.errors.ForecastError` when there is nothing usable."""

    @property
    def name(self) -> str: ...

    def forecast(self, now: float) -> SignalSeries: ...
