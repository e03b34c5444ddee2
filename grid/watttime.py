"""WattTime v3 marginal emissions (optional provider; needs a WattTime account), g/kWh.

Note: WattTime's ``co2_moer`` is a *marginal* operating emissions rate (the emissions of the
generator that responds to a change in load), not the average intensity of the grid mix
that NESO and Electricity Maps report. It is the better signal for "does shifting this load
help", but its numbers are not comparable with average intensities.

``GET /login`` with HTTP basic auth returns ``{"token": ...}``, valid for 30 minutes; data
requests send ``Authorization: Bearer <token>``. ``GET /v3/forecast?region&signal_type``
and ``GET /v3/historical?region&start&end&signal_type`` (at most 32 days, end inclusive)
return ``{data: [{point_time, value}], meta: {units: "lbs_co2_per_mwh",
data_point_period_seconds: 300, generated_at, ...}}``. Five-minute points are averaged into
half-hour slots; a slot needs at least half its points (3 of 6) to count.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from slurm_flex.errors import ConfigError, ForecastFormatError, ProviderError
from slurm_flex.grid.http import HttpClient
from slurm_flex.grid.readings import Kind, Point, Quantity, Reading, make_reading
from slurm_flex.grid.registry import ProviderSettings, SignalRequest, http_client, register_provider, secret
from slurm_flex.grid.series import SLOT_SECONDS, floor_slot, parse_iso_utc

BASE_URL = "https://api.watttime.org"
LBS_PER_MWH_TO_G_PER_KWH = 0.45359237  # 453.59237 g per lb, 1000 kWh per MWh
UNITS = "lbs_co2_per_mwh"
DEFAULT_PERIOD_SECONDS = 300
TOKEN_LIFETIME_SECONDS = 30 * 60
TOKEN_MARGIN_SECONDS = 60  # log in again a little before the token runs out
HISTORY_CHUNK_SECONDS = 30 * 86400  # the API allows 32 days per request
FORECAST_HORIZON_HOURS = 48


def moer_points(doc: Any, source: str) -> tuple[dict[int, float], int, int | None]:
    """Raw points of one answer: {point_time: lbs/MWh}, the point period in seconds, and
    ``meta.generated_at`` (None when absent)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise ForecastFormatError(f"{source}: expected an object with a 'data' list")
    meta: dict[str, Any] = doc["meta"] if isinstance(doc.get("meta"), dict) else {}
    units = meta.get("units", UNITS)
    if units != UNITS:
        raise ForecastFormatError(f"{source}: units {units!r}, expected {UNITS}")
    period = meta.get("data_point_period_seconds", DEFAULT_PERIOD_SECONDS)
    if isinstance(period, bool) or not isinstance(period, int) or period <= 0:
        raise ForecastFormatError(f"{source}: data_point_period_seconds {period!r} is not a positive integer")
    generated_at: int | None = None
    if isinstance(meta.get("generated_at"), str):
        try:
            generated_at = parse_iso_utc(meta["generated_at"])
        except ValueError as exc:
            raise ForecastFormatError(f"{source}: meta.generated_at: {exc}") from exc
    points: dict[int, float] = {}
    for i, item in enumerate(doc["data"]):
        where = f"{source}: data[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("point_time"), str):
            raise ForecastFormatError(f"{where}: expected {{point_time, value}}")
        try:
            when = parse_iso_utc(item["point_time"])
        except ValueError as exc:
            raise ForecastFormatError(f"{where}: point_time: {exc}") from exc
        value = item.get("value")
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ForecastFormatError(f"{where}: value {value!r} is not a number")
        if when in points and points[when] != float(value):
            raise ForecastFormatError(f"{where}: {item['point_time']} given twice with different values")
        points[when] = float(value)
    return points, period, generated_at


def to_slots(points: Mapping[int, float], period: int, source: str, issued_at: int, kind: Kind) -> Reading:
    """Average points (lbs/MWh, each covering ``period`` seconds) into half-hour slots in g/kWh.

    With sub-half-hour points a slot needs at least half of its points; points of a half hour
    or longer cover every slot in their period."""
    slots: list[Point] = []
    if period < SLOT_SECONDS:
        if SLOT_SECONDS % period:
            raise ForecastFormatError(f"{source}: a {period} s point period does not divide a half hour")
        needed = math.ceil(SLOT_SECONDS // period / 2)
        groups: dict[int, list[float]] = {}
        for when, value in points.items():
            groups.setdefault(floor_slot(when), []).append(value)
        for start, values in groups.items():
            if len(values) >= needed:
                slots.append(Point(start, sum(values) / len(values) * LBS_PER_MWH_TO_G_PER_KWH, kind))
    else:
        if period % SLOT_SECONDS:
            raise ForecastFormatError(f"{source}: a {period} s point period is not whole half hours")
        for when, value in points.items():
            for start in range(floor_slot(when), when + period, SLOT_SECONDS):
                slots.append(Point(start, value * LBS_PER_MWH_TO_G_PER_KWH, kind))
    return make_reading("carbon", slots, source, issued_at)


def parse_moer(doc: Any, source: str, issued_at: int, kind: Kind) -> Reading:
    """One forecast or historical answer as half-hour slots (issued at ``meta.generated_at``
    when given)."""
    points, period, generated_at = moer_points(doc, source)
    return to_slots(points, period, source, generated_at if generated_at is not None else issued_at, kind)


class WattTimeCarbon:
    """WattTime marginal CO2 (``co2_moer``) for one region, e.g. ``CAISO_NORTH``."""

    def __init__(
        self,
        http: HttpClient,
        region: str,
        username: str,
        password: str,
        *,
        signal_type: str = "co2_moer",
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not region or not region.replace("_", "").isalnum():
            raise ValueError(f"WattTime region {region!r} should look like CAISO_NORTH")
        if not username or not password:
            raise ValueError("WattTime needs a username and password")
        self._http = http
        self._credentials = (username, password)
        self._clock = clock
        self._token: str | None = None
        self._token_expires = 0.0
        self.region = region
        self.signal_type = signal_type
        self.logins = 0  # how often we logged in (tests and metrics read it)

    @property
    def name(self) -> str:
        return f"watttime:{self.region}"

    @property
    def quantity(self) -> Quantity:
        return "carbon"

    def _login(self) -> str:
        doc = self._http.get_json("/login", auth=self._credentials)
        token = doc.get("token") if isinstance(doc, dict) else None
        if not isinstance(token, str) or not token:
            raise ForecastFormatError(f"{self.name}: login answer has no token")
        self.logins += 1
        self._token = token
        self._token_expires = self._clock() + TOKEN_LIFETIME_SECONDS - TOKEN_MARGIN_SECONDS
        return token

    def _get(self, path: str, params: Mapping[str, str]) -> Any:
        """GET with the cached token; on 401 (token revoked or expired early) log in once more."""
        token = self._token if self._token and self._clock() < self._token_expires else self._login()
        try:
            return self._http.get_json(path, params, headers={"Authorization": f"Bearer {token}"})
        except ProviderError as exc:
            if exc.status != 401:
                raise
        self._token = None
        token = self._login()
        return self._http.get_json(path, params, headers={"Authorization": f"Bearer {token}"})

    def fetch(self, now: int) -> Reading:
        params = {"region": self.region, "signal_type": self.signal_type, "horizon_hours": str(FORECAST_HORIZON_HOURS)}
        return parse_moer(self._get("/v3/forecast", params), self.name, int(now), "forecast")

    def history(self, start: int, end: int) -> Reading:
        points: dict[int, float] = {}
        period = DEFAULT_PERIOD_SECONDS
        chunk = floor_slot(start)
        while chunk < end:
            chunk_end = min(chunk + HISTORY_CHUNK_SECONDS, end)
            params = {
                "region": self.region,
                "signal_type": self.signal_type,
                "start": _api_time(chunk),
                "end": _api_time(chunk_end),
            }
            chunk_points, period, _ = moer_points(self._get("/v3/historical", params), self.name)
            # Gather every chunk's points before averaging: a slot can straddle two answers.
            points.update(_within(chunk_points.items(), chunk, chunk_end))
            chunk = chunk_end
        reading = to_slots(points, period, self.name, int(self._clock()), "actual")
        return make_reading(
            "carbon", [p for p in reading.points if start <= p.start < end], self.name, reading.issued_at
        )


def _within(points: Iterable[tuple[int, float]], start: int, end: int) -> dict[int, float]:
    # The API's end is inclusive; the point at `end` belongs to the next chunk.
    return {when: value for when, value in points if start <= when < end}


def _api_time(epoch: int) -> str:
    """ISO 8601 with an explicit +00:00 zone, as WattTime's docs write it (v3 requires a zone)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(epoch))


# -- registration -------------------------------------------------------------------------------


class WattTimeSettings(ProviderSettings):
    base_url: str = BASE_URL
    username: str = ""
    password_file: Path | None = None
    password: str = ""


@register_provider("watttime", "carbon", settings=WattTimeSettings, needs={"region": 'region = "CAISO_NORTH"'})
def _build(signal: SignalRequest, settings: WattTimeSettings, key: str) -> WattTimeCarbon:
    if not settings.username:
        raise ConfigError("config", "providers.watttime.username", f"{key} uses watttime: needs a username")
    password = secret(settings.password, settings.password_file, "providers.watttime.password", f"{key} uses watttime")
    client = http_client("watttime", settings, settings.base_url)
    return WattTimeCarbon(client, signal.region or "", settings.username, password)
