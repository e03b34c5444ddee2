"""Typical values for slots past a provider's horizon, from recent history.

NESO forecasts 48 h ahead and Agile prices are published about a day ahead, but a job may have
a deadline days away. For those later slots the planner gets a profile: the median of the same
half-hour of the week over the last few weeks (weekly rhythms matter for price and demand),
or, with less history, of the same half-hour of the day over the last days. Profile values are
marked as such, and re-planning replaces them as real forecasts arrive.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from statistics import median

from slurm_flex.grid.series import SLOT_SECONDS

DAY = 86400
WEEK = 7 * DAY


def profile(
    history: Mapping[int, float],
    slots: Iterable[int],
    *,
    weeks: int = 4,
    days: int = 14,
    min_weekly_samples: int = 2,
) -> dict[int, float]:
    """A value for each slot in ``slots`` that history supports.

    ``history`` maps slot starts (epoch) to values. For a slot t: the median of history at
    t - k weeks (k = 1..weeks) if at least ``min_weekly_samples`` exist; else the median of
    t - k days (k = 1..days) if any exist; else no value. Only history before the earliest
    requested slot is used, so a profile never peeks at what it stands in for."""
    wanted = sorted(slots)
    if not wanted:
        return {}
    cutoff = wanted[0]
    known = {t: v for t, v in history.items() if t < cutoff}
    out: dict[int, float] = {}
    for t in wanted:
        if t % SLOT_SECONDS:
            raise ValueError(f"slot {t} is not on a half-hour boundary")
        weekly = _lookback(known, t, WEEK, weeks, cutoff)
        if len(weekly) >= min_weekly_samples:
            out[t] = median(weekly)
            continue
        daily = _lookback(known, t, DAY, days, cutoff)
        if daily:
            out[t] = median(daily)
    return out


def _lookback(known: Mapping[int, float], t: int, step: int, count: int, cutoff: int) -> list[float]:
    # Step back far enough to reach history (the slot may lie days after the cutoff), then
    # take up to ``count`` samples.
    first = max(1, -(-(t - cutoff + 1) // step))
    values = []
    for k in range(first, first + count):
        v = known.get(t - k * step)
        if v is not None:
            values.append(v)
    return values
