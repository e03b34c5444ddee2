"""Settlement periods as Elexon numbers them: the half hours of the Europe/London settlement day,
1 from local midnight, so 48 on most days, 46 on the day clocks go forward (March) and 50 on the
day they go back (October). Computed with ``zoneinfo`` (the IANA database), never a hand table.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from slurm_flex.ledger.errors import SettlementError

LONDON = ZoneInfo("Europe/London")
PERIOD = timedelta(minutes=30)


@dataclass(frozen=True)
class Period:
    day: date  # the settlement day (local date)
    number: int  # 1..46/48/50
    start: datetime  # UTC
    end: datetime  # UTC

    @property
    def local_start(self) -> datetime:
        return self.start.astimezone(LONDON)

    @property
    def label(self) -> str:
        return f"{self.day.isoformat()}/{self.number}"


def _midnight_utc(day: date) -> datetime:
    return datetime.combine(day, time(0), LONDON).astimezone(UTC)


def periods_of(day: date) -> list[Period]:
    """The settlement periods of a settlement day, in order."""
    start, end = _midnight_utc(day), _midnight_utc(day + timedelta(days=1))
    n = int((end - start) / PERIOD)
    return [Period(day, k + 1, start + k * PERIOD, start + (k + 1) * PERIOD) for k in range(n)]


def period_count(day: date) -> int:
    return len(periods_of(day))


def period_at(t: datetime) -> Period:
    """The settlement period holding the instant ``t`` (aware)."""
    if t.tzinfo is None:
        raise SettlementError(f"{t.isoformat()} has no time zone")
    day = t.astimezone(LONDON).date()
    start = _midnight_utc(day)
    k = int((t.astimezone(UTC) - start) / PERIOD)
    return periods_of(day)[k]


def parse_day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise SettlementError(f"{text!r} is not a date (YYYY-MM-DD)") from exc


def parse_period(text: str) -> Period:
    """``YYYY-MM-DD/N``: settlement period N of that day; a period the day does not have (47-48
    on a 46-period day) is an error that says it is a clock-change day."""
    day_text, sep, number = text.partition("/")
    if not sep or not number.isdigit():
        raise SettlementError(f"{text!r} is not a settlement period (YYYY-MM-DD/N, N from 1)")
    day = parse_day(day_text)
    periods = periods_of(day)
    k = int(number)
    if not 1 <= k <= len(periods):
        why = ""
        if len(periods) != 48:
            change = "clocks go forward" if len(periods) == 46 else "clocks go back"
            why = f" ({day} is a clock-change day: {change}, so it has {len(periods)} settlement periods)"
        raise SettlementError(f"{text}: settlement period {k} does not exist; {day} has 1..{len(periods)}{why}")
    return periods[k - 1]


def parse_range(text: str) -> tuple[date, date]:
    """A reporting period: ``YYYY-MM-DD`` (a day), ``YYYY-MM`` (a month) or ``FROM..TO`` (days,
    inclusive). Returns the first and last settlement day."""
    if ".." in text:
        first, _, last = text.partition("..")
        a, b = parse_day(first), parse_day(last)
        if b < a:
            raise SettlementError(f"{text!r}: the period ends before it starts")
        return a, b
    if len(text) == 7:
        try:
            first_day = date.fromisoformat(text + "-01")
        except ValueError as exc:
            raise SettlementError(f"{text!r} is not a month (YYYY-MM)") from exc
        nxt = (first_day.replace(day=28) + timedelta(days=4)).replace(day=1)
        return first_day, nxt - timedelta(days=1)
    day = parse_day(text)
    return day, day
