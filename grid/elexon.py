"""Elexon Insights Market Index Data (MID): settled GB short-term wholesale price, GBP/MWh.

``GET /balancing/pricing/market-index?from=...&to=...&dataProviders=APXMIDP`` (no auth)
returns ``{data: [{startTime, dataProvider, settlementDate, settlementPeriod, price, volume}]}``
(FORMAT.md §2.1). These are actuals only: MID has no forecast; the profile builder uses its
history. N2EX rows come back with price and volume 0 (quirk 4), so zero-volume rows are
dropped, and we ask for APX only. ``startTime`` is trusted when present (any RFC 3339 form);
otherwise the slot is computed from the GB settlement date and period, which follow local
Europe/London days: 46 periods on the spring-forward day, 50 on the fall-back day.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import Field

from slurm_flex.errors import ForecastFormatError
from slurm_flex.grid.http import HttpClient
from slurm_flex.grid.readings import Point, Quantity, Reading, make_reading
from slurm_flex.grid.registry import ProviderSettings, SignalRequest, http_client, register_provider
from slurm_flex.grid.series import SLOT_SECONDS, floor_slot, iso_utc, parse_iso_utc

BASE_URL = "https://data.elexon.co.uk/bmrs/api/v1"
MARKET_INDEX_PATH = "/balancing/pricing/market-index"
DEFAULT_DATA_PROVIDER = "APXMIDP"
HISTORY_CHUNK_SECONDS = 7 * 86400
FETCH_LOOKBACK_SECONDS = 24 * 3600
LONDON = ZoneInfo("Europe/London")


def _local_midnight(day: dt.date) -> int:
    # GB clocks change at 01:00 UTC, so local midnight always exists and is unambiguous.
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=LONDON).timestamp())


def periods_in_day(day: dt.date) -> int:
    """Settlement periods in a GB settlement day: 48, or 46 / 50 on clock-change days."""
    return (_local_midnight(day + dt.timedelta(days=1)) - _local_midnight(day)) // SLOT_SECONDS


def settlement_period_start(day: dt.date, period: int) -> int:
    """UTC epoch at which settlement period ``period`` (1-based) of GB settlement ``day`` starts.

    Period 1 starts at local midnight (23:00Z the day before during BST). Raises ValueError
    for a period that does not exist that day."""
    count = periods_in_day(day)
    if isinstance(period, bool) or not isinstance(period, int) or not 1 <= period <= count:
        raise ValueError(f"settlement period {period!r} does not exist on {day.isoformat()} (1..{count})")
    return _local_midnight(day) + (period - 1) * SLOT_SECONDS


def _row_start(row: dict[str, Any], where: str) -> int:
    text = row.get("startTime")
    if text is not None:
        if not isinstance(text, str):
            raise ForecastFormatError(f"{where}: startTime {text!r} is not text")
        try:
            return parse_iso_utc(text)
        except ValueError as exc:
            raise ForecastFormatError(f"{where}: startTime: {exc}") from exc
    date_text, period = row.get("settlementDate"), row.get("settlementPeriod")
    if not isinstance(date_text, str) or not isinstance(period, int):
        raise ForecastFormatError(f"{where}: neither startTime nor settlementDate + settlementPeriod")
    try:
        return settlement_period_start(dt.date.fromisoformat(date_text), period)
    except ValueError as exc:
        raise ForecastFormatError(f"{where}: {exc}") from exc


def _number(value: Any, where: str, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ForecastFormatError(f"{where}: {what} {value!r} is not a number")
    return float(value)


def parse_market_index(
    doc: Any, source: str, issued_at: int, *, data_provider: str | None = DEFAULT_DATA_PROVIDER
) -> Reading:
    """MID rows as actual prices; rows of other data providers and zero-volume rows dropped."""
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise ForecastFormatError(f"{source}: expected an object with a 'data' list")
    points: list[Point] = []
    for i, row in enumerate(doc["data"]):
        where = f"{source}: data[{i}]"
        if not isinstance(row, dict):
            raise ForecastFormatError(f"{where}: expected an object")
        if data_provider is not None and row.get("dataProvider") not in (None, data_provider):
            continue
        volume = row.get("volume")
        if volume is not None and _number(volume, where, "volume") == 0.0:
            continue  # no trades: the index defaults to 0, which is not a price
        points.append(Point(_row_start(row, where), _number(row.get("price"), where, "price"), "actual"))
    return make_reading("price", points, source, issued_at)


class ElexonMarketIndex:
    """APX market index prices (actuals only; ``fetch`` returns the last 24 hours)."""

    def __init__(
        self,
        http: HttpClient,
        *,
        data_provider: str = DEFAULT_DATA_PROVIDER,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._http = http
        self._clock = clock
        self.data_provider = data_provider

    @property
    def name(self) -> str:
        return "elexon:mid"

    @property
    def quantity(self) -> Quantity:
        return "price"

    def _points(self, start: int, end: int, issued_at: int) -> list[Point]:
        # from/to filter on startTime inclusively, so the slot at `end` may come back too.
        params = {"from": iso_utc(start), "to": iso_utc(end), "dataProviders": self.data_provider}
        doc = self._http.get_json(MARKET_INDEX_PATH, params)
        reading = parse_market_index(doc, self.name, issued_at, data_provider=self.data_provider)
        return [p for p in reading.points if start <= p.start < end]

    def fetch(self, now: int) -> Reading:
        end = floor_slot(now)
        return make_reading("price", self._points(end - FETCH_LOOKBACK_SECONDS, end, int(now)), self.name, int(now))

    def history(self, start: int, end: int) -> Reading:
        issued_at = int(self._clock())
        points: list[Point] = []
        chunk = floor_slot(start)
        while chunk < end:
            chunk_end = min(chunk + HISTORY_CHUNK_SECONDS, end)
            points.extend(self._points(chunk, chunk_end, issued_at))
            chunk = chunk_end
        return make_reading("price", points, self.name, issued_at)


# -- registration -------------------------------------------------------------------------------


class ElexonSettings(ProviderSettings):
    base_url: str = BASE_URL
    min_interval_seconds: int = Field(3600, ge=60, le=86400)


@register_provider("elexon-mid", "price", settings=ElexonSettings, table="elexon")
def _build(signal: SignalRequest, settings: ElexonSettings, key: str) -> ElexonMarketIndex:
    return ElexonMarketIndex(http_client("elexon", settings, settings.base_url))
