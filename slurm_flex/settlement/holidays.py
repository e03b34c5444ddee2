"""Bank holidays of England and Wales, computed: like-day baselines treat them as non-working
days, as Elexon's baselining does (a bank holiday Monday's usage looks like a Sunday's).

The regular ones follow the Banking and Financial Dealings Act 1971 and the usual proclamations:
New Year's Day, Good Friday, Easter Monday, the first Monday of May, the last Monday of May, the
last Monday of August, Christmas Day and Boxing Day, a day falling at a weekend carried to the
next weekday that is not already a holiday. Easter is the Gregorian computus (the anonymous
algorithm in Meeus, *Astronomical Algorithms*), not a table. What no rule gives are the
one-off proclamations (jubilees, royal weddings and funerals, the coronation) and the moved May
holidays; :data:`PROCLAIMED` lists those since 1995, from GOV.UK's bank holiday pages. A future
proclamation has to be added there.

No dependency: the ``holidays`` package (0.109) gives the same weekdays for 1995-2060 (checked
when this was written; it also lists the weekend dates the substitute days replace), but a
settlement should not change with a package upgrade.
"""

from __future__ import annotations

from datetime import date, timedelta
from functools import cache

# Regular holidays moved by proclamation: (year, the rule's name) -> the day it fell on instead.
MOVED: dict[tuple[int, str], date] = {
    (1995, "early may"): date(1995, 5, 8),  # VE Day's 50th anniversary
    (2002, "spring"): date(2002, 6, 4),  # Golden Jubilee
    (2012, "spring"): date(2012, 6, 4),  # Diamond Jubilee
    (2020, "early may"): date(2020, 5, 8),  # VE Day's 75th anniversary
    (2022, "spring"): date(2022, 6, 2),  # Platinum Jubilee
}

# Extra one-off bank holidays.
PROCLAIMED: frozenset[date] = frozenset(
    {
        date(1999, 12, 31),  # the millennium
        date(2002, 6, 3),  # Golden Jubilee
        date(2011, 4, 29),  # royal wedding
        date(2012, 6, 5),  # Diamond Jubilee
        date(2022, 6, 3),  # Platinum Jubilee
        date(2022, 9, 19),  # the Queen's state funeral
        date(2023, 5, 8),  # the coronation
    }
)


def easter_sunday(year: int) -> date:
    """Gregorian Easter Sunday (Meeus/Jones/Butcher)."""
    a, b, c = year % 19, year // 100, year % 100
    d, e = b // 4, b % 4
    g = (8 * b + 13) // 25
    h = (19 * a + b - d - g + 15) % 30
    i, k = c // 4, c % 4
    l = (32 + 2 * e + 2 * i - h - k) % 7  # noqa: E741 (the algorithm's own name)
    m = (a + 11 * h + 19 * l) // 433
    month = (h + l - 7 * m + 90) // 25
    return date(year, month, (h + l - 7 * m + 33 * month + 19) % 32)


def _monday_on_or_after(day: date) -> date:
    return day + timedelta(days=(7 - day.weekday()) % 7)


def _last_monday(year: int, month: int) -> date:
    last = (date(year + month // 12, month % 12 + 1, 1)) - timedelta(days=1)
    return last - timedelta(days=last.weekday())


@cache
def bank_holidays(year: int) -> frozenset[date]:
    """The bank holidays of England and Wales in ``year``."""
    easter = easter_sunday(year)
    days = {
        easter - timedelta(days=2),
        easter + timedelta(days=1),
        MOVED.get((year, "early may"), _monday_on_or_after(date(year, 5, 1))),
        MOVED.get((year, "spring"), _last_monday(year, 5)),
        _last_monday(year, 8),
    }
    # New Year's Day, Christmas and Boxing Day: one at a weekend moves to the next weekday that
    # is not taken (Christmas on a Saturday: Monday 27th, Boxing Day then Tuesday 28th).
    for fixed in (date(year, 1, 1), date(year, 12, 25), date(year, 12, 26)):
        day = fixed
        while day.weekday() >= 5 or day in days:
            day += timedelta(days=1)
        days.add(day)
    days.update(d for d in PROCLAIMED if d.year == year)
    return frozenset(days)


def is_bank_holiday(day: date) -> bool:
    return day in bank_holidays(day.year)
