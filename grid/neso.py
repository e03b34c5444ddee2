"""NESO Carbon Intensity API (https://api.carbonintensity.org.uk): GB carbon intensity, g/kWh.

No authentication. Times in requests are ``YYYY-MM-DDThh:mmZ``. Parsers follow the formats
and quirks in ``shared/specs/grid/FORMAT.md`` §1: national ``intensity`` carries a forecast
and, once measured, an ``actual`` (null until then); regional answers carry forecasts only
and wrap one region in an *object* (``data: {regionid, data: [...]}``) although the docs
show a list; ``/generation`` is keyed by fuel, never by position.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from slurm_flex.errors import ForecastFormatError
from slurm_flex.grid.http import HttpClient
from slurm_flex.grid.readings import Point, Quantity, Reading, make_reading
from slurm_flex.grid.registry import ProviderSettings, SignalRequest, http_client, register_provider
from slurm_flex.grid.series import SLOT_SECONDS, floor_slot, parse_iso_utc

BASE_URL = "https://api.carbonintensity.org.uk"
REGION_IDS = range(1, 19)
# England, Scotland, Wales and GB: sums of DNO regions, not a "local" region (FORMAT.md quirk 6).
AGGREGATE_REGION_IDS = frozenset({15, 16, 17, 18})
# The API answers at most 14 days per from/to request.
MAX_RANGE_SECONDS = 14 * 86400
# Asking at exactly HH:00Z returns the half hour *ending* then first (quirk 4); one minute
# past the slot start returns the current half hour first.
FROM_OFFSET_SECONDS = 60
# An outward code: area letters, district digit(s), optional letter (RG10, CB3, EC1A, W1A, M1).
_OUTWARD_CODE = re.compile(r"^[A-Z]{1,2}[0-9][A-Z0-9]?$")


def is_aggregate_region(region_id: int) -> bool:
    """True for 15-18 (England, Scotland, Wales, GB), which are not DNO areas."""
    return region_id in AGGREGATE_REGION_IDS


def check_region_id(region_id: int) -> None:
    """Raise ValueError unless ``region_id`` is a NESO region id (1..18)."""
    if isinstance(region_id, bool) or not isinstance(region_id, int) or region_id not in REGION_IDS:
        raise ValueError(f"NESO region id {region_id!r} is not one of 1..18 (15-18 are England, Scotland, Wales, GB)")


def check_postcode(postcode: str) -> str:
    """The outward code (``RG10``, ``CB3``, ``EC1A``) in upper case; ValueError otherwise."""
    code = postcode.strip().upper()
    if not _OUTWARD_CODE.match(code):
        raise ValueError(
            f"postcode {postcode!r} is not an outward code such as RG10, CB3 or EC1A (drop the inward part)"
        )
    return code


def api_time(epoch: int) -> str:
    """A time as the API's path parameters want it: ``YYYY-MM-DDThh:mmZ``."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%MZ")


def forecast_from(now: float) -> int:
    """The ``{from}`` for a forward request made at ``now``: one minute past the current slot's
    start, so the first window returned is the current half hour."""
    return floor_slot(now) + FROM_OFFSET_SECONDS


# -- pure parsers -------------------------------------------------------------------------------


def _number(value: Any, where: str, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ForecastFormatError(f"{where}: {what} {value!r} is not a number")
    return float(value)


def _window_start(item: Mapping[str, Any], where: str) -> int:
    text = item.get("from")
    if not isinstance(text, str):
        raise ForecastFormatError(f"{where}: missing or non-text 'from'")
    try:
        start = parse_iso_utc(text)
    except ValueError as exc:
        raise ForecastFormatError(f"{where}: {exc}") from exc
    if start % SLOT_SECONDS:
        raise ForecastFormatError(f"{where}: 'from' {text!r} is not on a half-hour boundary")
    end_text = item.get("to")
    if end_text is not None:
        try:
            end = parse_iso_utc(end_text) if isinstance(end_text, str) else None
        except ValueError as exc:
            raise ForecastFormatError(f"{where}: {exc}") from exc
        if end != start + SLOT_SECONDS:
            raise ForecastFormatError(f"{where}: window {text!r}..{end_text!r} is not one half hour")
    return start


def _items(value: Any, where: str) -> list[Mapping[str, Any]]:
    if not isinstance(value, list):
        raise ForecastFormatError(f"{where}: expected a list of half-hour windows, got {type(value).__name__}")
    return value


def _intensity_points(windows: Iterable[Any], source: str, path: str, *, actuals: bool) -> list[Point]:
    points: list[Point] = []
    for i, item in enumerate(windows):
        where = f"{source}: {path}[{i}]"
        if not isinstance(item, dict):
            raise ForecastFormatError(f"{where}: expected an object, got {type(item).__name__}")
        start = _window_start(item, where)
        intensity = item.get("intensity")
        if not isinstance(intensity, dict):
            raise ForecastFormatError(f"{where}: missing 'intensity' object")
        forecast = _number(intensity.get("forecast"), where, "intensity.forecast")
        if forecast is not None:
            points.append(Point(start, forecast, "forecast"))
        if actuals:
            actual = _number(intensity.get("actual"), where, "intensity.actual")
            if actual is not None:
                points.append(Point(start, actual, "actual"))
    return points


def _document(doc: Any, source: str) -> Any:
    if not isinstance(doc, dict) or "data" not in doc:
        raise ForecastFormatError(f"{source}: expected an object with 'data', got {type(doc).__name__}")
    return doc["data"]


def parse_intensity(doc: Any, source: str, issued_at: int) -> Reading:
    """National ``/intensity/...`` (fw48h, pt24h, from/to): forecasts, plus actuals where
    measured (an actual replaces the forecast of its slot). Null forecasts are skipped."""
    data = _items(_document(doc, source), f"{source}: data")
    return make_reading("carbon", _intensity_points(data, source, "data", actuals=True), source, issued_at)


def parse_regional(doc: Any, source: str, issued_at: int, *, expected_region_id: int | None = None) -> Reading:
    """One region's ``/regional/intensity/.../regionid/{id}`` or ``.../postcode/{pc}`` answer
    (forecasts only), in its object form or the documented one-element list form."""
    data = _document(doc, source)
    if isinstance(data, list):
        if data and all(isinstance(w, dict) and "regions" in w for w in data):
            raise ForecastFormatError(f"{source}: this is the all-regions answer; ask for one region id or postcode")
        if len(data) != 1:
            raise ForecastFormatError(f"{source}: expected one region in 'data', got {len(data)}")
        data = data[0]
    if not isinstance(data, dict):
        raise ForecastFormatError(f"{source}: 'data' is neither a region object nor a list")
    region_id = data.get("regionid")
    if expected_region_id is not None and region_id != expected_region_id:
        raise ForecastFormatError(f"{source}: answer is for region {region_id!r}, not {expected_region_id}")
    windows = _items(data.get("data"), f"{source}: data.data")
    return make_reading("carbon", _intensity_points(windows, source, "data.data", actuals=False), source, issued_at)


def parse_generation_mix(doc: Any) -> dict[str, float]:
    """Fuel -> percent for ``/generation``. ``data`` may be one window or a list of windows;
    from a list the latest window is used."""
    source = "neso:generation"
    data = _document(doc, source)
    if isinstance(data, list):
        if not data:
            raise ForecastFormatError(f"{source}: 'data' is an empty list")
        starts = [_window_start(w, f"{source}: data[{i}]") if isinstance(w, dict) else None for i, w in enumerate(data)]
        if any(s is None for s in starts):
            raise ForecastFormatError(f"{source}: 'data' holds something other than windows")
        data = data[max(range(len(data)), key=lambda i: starts[i] or 0)]
    if not isinstance(data, dict):
        raise ForecastFormatError(f"{source}: 'data' is neither a window object nor a list")
    mix = data.get("generationmix")
    if not isinstance(mix, list) or not mix:
        raise ForecastFormatError(f"{source}: missing or empty 'generationmix'")
    out: dict[str, float] = {}
    for i, entry in enumerate(mix):
        where = f"{source}: generationmix[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("fuel"), str):
            raise ForecastFormatError(f"{where}: expected {{fuel, perc}}")
        fuel = entry["fuel"]
        perc = _number(entry.get("perc"), where, "perc")
        if perc is None or not 0.0 <= perc <= 100.0:
            raise ForecastFormatError(f"{where}: perc {entry.get('perc')!r} for {fuel} is not a percentage")
        if fuel in out:
            raise ForecastFormatError(f"{where}: fuel {fuel!r} listed twice")
        out[fuel] = perc
    return out


# -- client -------------------------------------------------------------------------------------


class NesoCarbon:
    """NESO carbon intensity for GB (national), one region id, or one outward postcode.

    ``fetch`` makes one request (fw48h). ``history`` uses the from/to endpoints in requests of
    at most 14 days; for a region those hold the issued *forecasts* (regional data has no
    actuals), for GB national the actual where measured and the forecast otherwise."""

    def __init__(
        self,
        http: HttpClient,
        *,
        region_id: int | None = None,
        postcode: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if region_id is not None and postcode is not None:
            raise ValueError("give a NESO region id or a postcode, not both")
        if region_id is not None:
            check_region_id(region_id)
        self._http = http
        self._clock = clock
        self.region_id = region_id
        self.postcode = check_postcode(postcode) if postcode is not None else None

    @property
    def name(self) -> str:
        if self.region_id is not None:
            return f"neso:regionid={self.region_id}"
        if self.postcode is not None:
            return f"neso:postcode={self.postcode}"
        return "neso:national"

    @property
    def quantity(self) -> Quantity:
        return "carbon"

    def _regional_suffix(self) -> str:
        return f"regionid/{self.region_id}" if self.region_id is not None else f"postcode/{self.postcode}"

    @property
    def _national(self) -> bool:
        return self.region_id is None and self.postcode is None

    def _parse(self, doc: Any, issued_at: int) -> Reading:
        if self._national:
            return parse_intensity(doc, self.name, issued_at)
        return parse_regional(doc, self.name, issued_at, expected_region_id=self.region_id)

    def fetch(self, now: int) -> Reading:
        start = api_time(forecast_from(now))
        if self._national:
            path = f"/intensity/{start}/fw48h"
        else:
            path = f"/regional/intensity/{start}/fw48h/{self._regional_suffix()}"
        return self._parse(self._http.get_json(path), int(now))

    def history(self, start: int, end: int) -> Reading:
        first = floor_slot(start)
        points: list[Point] = []
        chunk = first
        while chunk < end:
            chunk_end = min(chunk + MAX_RANGE_SECONDS, end)
            # From one minute past the slot start for the same reason as fetch (quirk 4).
            span = f"{api_time(chunk + FROM_OFFSET_SECONDS)}/{api_time(chunk_end)}"
            path = f"/intensity/{span}" if self._national else f"/regional/intensity/{span}/{self._regional_suffix()}"
            reading = self._parse(self._http.get_json(path), int(self._clock()))
            points.extend(p for p in reading.points if first <= p.start < end)
            chunk = chunk_end
        return make_reading("carbon", points, self.name, int(self._clock()))


# -- registration -------------------------------------------------------------------------------


class NesoSettings(ProviderSettings):
    base_url: str = BASE_URL


def _check_site(signal: SignalRequest) -> None:
    if signal.region_id is not None and signal.postcode is not None:
        raise ValueError("neso: give region_id or postcode, not both")
    if signal.region_id is not None:
        check_region_id(signal.region_id)
    if signal.postcode is not None:
        check_postcode(signal.postcode)


@register_provider("neso", "carbon", settings=NesoSettings, check=_check_site)
def _build(signal: SignalRequest, settings: NesoSettings, key: str) -> NesoCarbon:
    client = http_client("neso", settings, settings.base_url)
    return NesoCarbon(client, region_id=signal.region_id, postcode=signal.postcode)
