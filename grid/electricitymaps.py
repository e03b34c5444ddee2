"""Electricity Maps v3 carbon intensity (optional provider; needs an API token), g/kWh.

``GET /v3/carbon-intensity/forecast?zone=XX`` answers ``{zone, forecast: [{carbonIntensity,
datetime}], updatedAt}``; ``GET /v3/carbon-intensity/history?zone=XX`` answers ``{zone,
history: [{carbonIntensity, datetime, updatedAt, isEstimated, ...}]}`` for the last 24 hours
only (longer ranges need the commercial ``/past-range``, whose list is called ``data``; the
parser reads that form too). The token goes in the ``auth-token`` header. Values are
lifecycle grid averages per hour by default; each value covers its hour up to the next
value, so an hourly value fills two half-hour slots. Estimated history values are kept as
actuals (they are Electricity Maps' best estimate of what happened).
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from slurm_flex.errors import ForecastFormatError
from slurm_flex.grid.http import HttpClient
from slurm_flex.grid.readings import Kind, Point, Quantity, Reading, make_reading, time_field
from slurm_flex.grid.registry import ProviderSettings, SignalRequest, http_client, register_provider, secret
from slurm_flex.grid.series import SLOT_SECONDS

BASE_URL = "https://api.electricitymap.org"
FORECAST_PATH = "/v3/carbon-intensity/forecast"
HISTORY_PATH = "/v3/carbon-intensity/history"
LIST_KEYS = ("forecast", "history", "data")
MAX_SPAN_SECONDS = 3600  # a value never stands for more than an hour (the API's coarsest step)
_ZONE = re.compile(r"^[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*$")


def parse_carbon_intensity(doc: Any, source: str, issued_at: int, kind: Kind) -> Reading:
    """A forecast / history / past-range answer as half-hour points of ``kind``.

    ``updatedAt`` at the top level, when present, is taken as the issue time. Null values are
    skipped; values finer than half-hourly are an error (we never ask for them)."""
    if not isinstance(doc, dict):
        raise ForecastFormatError(f"{source}: expected an object, got {type(doc).__name__}")
    key = next((k for k in LIST_KEYS if isinstance(doc.get(k), list)), None)
    if key is None:
        raise ForecastFormatError(f"{source}: no {'/'.join(LIST_KEYS)} list in the answer")
    if isinstance(doc.get("updatedAt"), str):
        issued_at = time_field(doc["updatedAt"], source, "updatedAt")
    values: dict[int, float] = {}
    for i, item in enumerate(doc[key]):
        where = f"{source}: {key}[{i}]"
        if not isinstance(item, dict):
            raise ForecastFormatError(f"{where}: expected an object")
        start = time_field(item.get("datetime"), where, "datetime")
        value = item.get("carbonIntensity")
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ForecastFormatError(f"{where}: carbonIntensity {value!r} is not a number")
        if start % SLOT_SECONDS:
            raise ForecastFormatError(f"{where}: datetime {item['datetime']!r} is not on a half-hour boundary")
        if start in values and values[start] != float(value):
            raise ForecastFormatError(f"{where}: {item['datetime']} given twice with different values")
        values[start] = float(value)
    starts = sorted(values)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    last_span = min([MAX_SPAN_SECONDS, *gaps])
    points: list[Point] = []
    for i, start in enumerate(starts):
        span = min(gaps[i], MAX_SPAN_SECONDS) if i < len(gaps) else last_span
        points.extend(Point(slot, values[start], kind) for slot in range(start, start + span, SLOT_SECONDS))
    return make_reading("carbon", points, source, issued_at)


class ElectricityMapsCarbon:
    """Electricity Maps carbon intensity for one zone (e.g. ``GB``, ``DE``, ``US-CAL-CISO``)."""

    def __init__(self, http: HttpClient, zone: str, token: str, *, clock: Callable[[], float] = time.time) -> None:
        if not _ZONE.match(zone):
            raise ValueError(f"Electricity Maps zone {zone!r} should look like GB, DE or US-CAL-CISO")
        if not token or not token.strip():
            raise ValueError("Electricity Maps needs an API token")
        self._http = http
        self._clock = clock
        self._token = token.strip()
        self.zone = zone

    @property
    def name(self) -> str:
        return f"electricitymaps:{self.zone}"

    @property
    def quantity(self) -> Quantity:
        return "carbon"

    def _get(self, path: str, kind: Literal["forecast", "actual"], issued_at: int) -> Reading:
        doc = self._http.get_json(path, {"zone": self.zone}, headers={"auth-token": self._token})
        return parse_carbon_intensity(doc, self.name, issued_at, kind)

    def fetch(self, now: int) -> Reading:
        return self._get(FORECAST_PATH, "forecast", int(now))

    def history(self, start: int, end: int) -> Reading:
        """The part of the last 24 hours that lies in [start, end) (all the free API has)."""
        reading = self._get(HISTORY_PATH, "actual", int(self._clock()))
        points = [p for p in reading.points if start <= p.start < end]
        return make_reading("carbon", points, self.name, reading.issued_at)


# -- registration -------------------------------------------------------------------------------


class ElectricityMapsSettings(ProviderSettings):
    base_url: str = BASE_URL
    # The API token: a file readable by the service user (preferred), or the value itself.
    token_file: Path | None = None
    token: str = ""


@register_provider("electricitymaps", "carbon", settings=ElectricityMapsSettings, needs={"zone": 'zone = "GB"'})
def _build(signal: SignalRequest, settings: ElectricityMapsSettings, key: str) -> ElectricityMapsCarbon:
    token = secret(
        settings.token, settings.token_file, "providers.electricitymaps.token", f"{key} uses electricitymaps"
    )
    return ElectricityMapsCarbon(http_client("electricitymaps", settings, settings.base_url), signal.zone or "", token)
