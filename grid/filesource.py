"""Forecast source backed by a local file, for offline demos, simulations and tests.

Accepted formats (chosen by suffix):

* CSV with a header, read by :mod:`slurm_flex.grid.csvsignals` (which names the columns it
  knows): a slot start column (``from``), optional ``to`` (checked to be 30 minutes later), a
  carbon column (``carbon_g_per_kwh``, or NESO's ``forecast``) and optionally a price column
  (``price_gbp_per_mwh``). Times are ISO 8601 with an explicit zone (``Z``/``+00:00``).
* JSON, either slurm-flex's own ``{"slots": [{"from":..., "carbon_g_per_kwh":..., "price_gbp_per_mwh":...}]}``
  or a recorded NESO Carbon Intensity API response ``{"data": [{"from":..., "intensity": {"forecast":..}}]}``.

Every problem is reported with the file and line (CSV) or item index (JSON). Slots must be on
half-hour boundaries with no duplicates; gaps become NaN; rows out of order are sorted.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slurm_flex.errors import ForecastError, ForecastFormatError
from slurm_flex.grid.csvsignals import CARBON_COLUMNS, TIME_COLUMNS, read_signal_csv
from slurm_flex.grid.readings import Point, Quantity, Reading, make_reading
from slurm_flex.grid.registry import SignalRequest, register_provider, replay_epoch
from slurm_flex.grid.series import SLOT_SECONDS, Segment, SignalSeries, floor_slot, iso_utc, parse_iso_utc

# Physically plausible bounds: no grid has run above ~1,500 g/kWh; negative intensity is a bug.
MAX_CARBON = 2000.0
MAX_ABS_PRICE = 10000.0
# A file longer than a year of half-hours is almost certainly the wrong file for planning.
MAX_SLOTS = 366 * 48


@dataclass(frozen=True)
class _Row:
    where: str
    start: int
    carbon: float
    price: float


def parse_time(text: str, where: str) -> int:
    """A slot start: ISO 8601 with a zone, on a half-hour boundary."""
    try:
        epoch = parse_iso_utc(text)
    except ValueError as exc:
        raise ForecastFormatError(f"{where}: {exc}") from exc
    if epoch % SLOT_SECONDS:
        raise ForecastFormatError(f"{where}: time {text!r} is not on a half-hour boundary")
    return epoch


def _number(value: Any, where: str, what: str, *, optional: bool) -> float:
    if value is None or (isinstance(value, str) and value.strip() in ("", "null", "NaN", "nan")):
        if optional:
            return math.nan
        raise ForecastFormatError(f"{where}: {what} is missing")
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise ForecastFormatError(f"{where}: {what} {value!r} is not a number") from exc
    if not math.isfinite(number):
        if optional:
            return math.nan
        raise ForecastFormatError(f"{where}: {what} {value!r} is not finite")
    return number


def _carbon(value: Any, where: str) -> float:
    number = _number(value, where, "carbon intensity", optional=False)
    if not 0.0 <= number <= MAX_CARBON:
        raise ForecastFormatError(f"{where}: carbon intensity {number:g} g/kWh is outside 0..{MAX_CARBON:g}")
    return number


def _price(value: Any, where: str) -> float:
    number = _number(value, where, "price", optional=True)
    if abs(number) > MAX_ABS_PRICE:
        raise ForecastFormatError(f"{where}: price {number:g} GBP/MWh is implausible (|price| > {MAX_ABS_PRICE:g})")
    return number


def _check_to(row_from: int, to_text: str | None, where: str) -> None:
    if to_text:
        to = parse_time(to_text, where)
        if to - row_from != SLOT_SECONDS:
            raise ForecastFormatError(f"{where}: slot from..to is {(to - row_from) // 60} min, expected 30")


def _rows_from_csv(path: Path) -> list[_Row]:
    columns, records = read_signal_csv(path)
    if columns.time is None or columns.carbon is None:
        raise ForecastFormatError(
            f"{path}: header {list(columns.header)!r} needs a start column ({'/'.join(TIME_COLUMNS)}) "
            f"and a carbon column ({'/'.join(CARBON_COLUMNS)})"
        )
    rows = []
    for r in records:
        start = parse_time(r.time, r.where)
        _check_to(start, r.end, r.where)
        price = math.nan if columns.price is None else _price(r.price, r.where)
        rows.append(_Row(r.where, start, _carbon(r.carbon, r.where), price))
    return rows


def rows_from_neso(doc: Mapping[str, Any], where: str) -> list[tuple[str, int, float, float]]:
    """(where, start, carbon, price) from a NESO /intensity response (``data`` list or object)."""
    data = doc.get("data")
    if isinstance(data, Mapping):  # regional endpoints wrap the list in an object
        data = data.get("data")
    if not isinstance(data, list):
        raise ForecastFormatError(f"{where}: NESO response without a 'data' list")
    out = []
    for i, item in enumerate(data):
        here = f"{where}: data[{i}]"
        if not isinstance(item, Mapping) or not isinstance(item.get("intensity"), Mapping):
            raise ForecastFormatError(f"{here}: expected an object with 'from' and 'intensity'")
        start = parse_time(str(item.get("from", "")), here)
        _check_to(start, item.get("to"), here)
        out.append((here, start, _carbon(item["intensity"].get("forecast"), here), math.nan))
    return out


def _rows_from_json(path: Path) -> list[_Row]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ForecastFormatError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(doc, Mapping):
        raise ForecastFormatError(f"{path}: expected a JSON object")
    if "data" in doc:
        return [_Row(*r) for r in rows_from_neso(doc, str(path))]
    slots = doc.get("slots")
    if not isinstance(slots, list):
        raise ForecastFormatError(f"{path}: expected a 'slots' list (or a NESO 'data' list)")
    rows = []
    for i, item in enumerate(slots):
        where = f"{path}: slots[{i}]"
        if not isinstance(item, Mapping):
            raise ForecastFormatError(f"{where}: expected an object")
        start = parse_time(str(item.get("from", "")), where)
        _check_to(start, item.get("to"), where)
        rows.append(
            _Row(
                where, start, _carbon(item.get("carbon_g_per_kwh"), where), _price(item.get("price_gbp_per_mwh"), where)
            )
        )
    return rows


def series_from_rows(
    rows: Iterable[_Row] | Iterable[tuple[str, int, float, float]], source: str, where: str | None = None
) -> SignalSeries:
    """A series from validated rows; ``where`` names the input in errors (default: source)."""
    where = where or source
    items = [r if isinstance(r, _Row) else _Row(*r) for r in rows]
    if not items:
        raise ForecastFormatError(f"{where}: no slots")
    items.sort(key=lambda r: r.start)
    seen: dict[int, str] = {}
    for r in items:
        if r.start in seen:
            raise ForecastFormatError(f"{r.where}: duplicate slot (also at {seen[r.start]})")
        seen[r.start] = r.where
    first, last = items[0].start, items[-1].start
    n = (last - first) // SLOT_SECONDS + 1
    if n > MAX_SLOTS:
        raise ForecastFormatError(f"{where}: spans {n} half-hours; more than a year is not a forecast")
    carbon = [math.nan] * n
    price = [math.nan] * n
    for r in items:
        i = (r.start - first) // SLOT_SECONDS
        carbon[i] = r.carbon
        price[i] = r.price
    end = first + n * SLOT_SECONDS
    segments = [Segment("carbon", first, end, "forecast", source)]
    if any(not math.isnan(p) for p in price):
        segments.append(Segment("price", first, end, "forecast", source))
    return SignalSeries(start=first, carbon=tuple(carbon), price=tuple(price), source=source, segments=tuple(segments))


def load_series_file(path: Path) -> SignalSeries:
    """Read and validate a forecast file into a :class:`SignalSeries`."""
    if not path.is_file():
        raise ForecastError(f"forecast file {path} does not exist or is not a file")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        rows = _rows_from_csv(path)
    elif suffix == ".json":
        rows = _rows_from_json(path)
    else:
        raise ForecastFormatError(f"{path}: unknown forecast file type {suffix!r} (use .csv or .json)")
    return series_from_rows(rows, source=f"file:{path.name}", where=str(path))


class FileSource:
    """A forecast from a file, optionally replayed from another moment.

    ``replay_from`` (epoch) moves the file's first slot to that half-hour: demos and tests use a
    recorded real forecast as if it had been issued then. ``None`` keeps the file's own times.
    The file is re-read only when it changes.
    """

    def __init__(self, path: Path, replay_from: int | None = None) -> None:
        self.path = path
        self.replay_from = replay_from
        self._cached: tuple[float, SignalSeries] | None = None

    @property
    def name(self) -> str:
        return f"file:{self.path.name}"

    def forecast(self, now: float) -> SignalSeries:
        try:
            mtime = self.path.stat().st_mtime
        except OSError as exc:
            raise ForecastError(f"forecast file {self.path}: {exc.strerror}") from exc
        if self._cached is None or self._cached[0] != mtime:
            self._cached = (mtime, load_series_file(self.path))
        series = self._cached[1]
        return series if self.replay_from is None else series.shifted(self.replay_from)


class FileProvider:
    """One quantity of a forecast file as a provider (a site may plan on a file: offline
    sites, demos, tests). Its "history" is whatever the file holds before now."""

    def __init__(self, path: Path, quantity: Quantity, replay_from: int | None = None) -> None:
        self._source = FileSource(path, replay_from)
        self._quantity: Quantity = quantity

    @property
    def name(self) -> str:
        return f"{self._source.name}#{self._quantity}"

    @property
    def quantity(self) -> Quantity:
        return self._quantity

    def _reading(self, now: int, start: int, end: int) -> Reading:
        series = self._source.forecast(now)
        values = series.carbon if self._quantity == "carbon" else series.price
        points = [
            Point(series.slot_start(i), v, "forecast")
            for i, v in enumerate(values)
            if math.isfinite(v) and start <= series.slot_start(i) < end
        ]
        return make_reading(self._quantity, points, self.name, series.issued_at or now)

    def fetch(self, now: int) -> Reading:
        reading = self._reading(now, floor_slot(now), 2**62)
        if not reading.points:
            raise ForecastError(f"{self._source.path}: no {self._quantity} values from {iso_utc(now)} on")
        return reading

    def history(self, start: int, end: int) -> Reading:
        return self._reading(end, start, end)


# -- registration -------------------------------------------------------------------------------


# Reading a local file costs nothing: asked every cycle (60 s is the shortest interval).
@register_provider("file", "carbon", "price", needs={"path": ""}, min_interval_seconds=60)
def _build(signal: SignalRequest, settings: None, key: str) -> FileProvider:
    assert signal.path is not None  # checked with the config
    return FileProvider(signal.path, signal.quantity, replay_epoch(signal))
