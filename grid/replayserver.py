"""A local stand-in for the NESO Carbon Intensity and Octopus Agile APIs, for demos, trials of
a ``[sites]`` config without network, and the daemon's integration tests.

It answers the same paths, in the same JSON shapes (and with NESO's from-on-the-boundary
quirk) as the live services, at any time asked, from a real recorded series replayed around
the current time:

* carbon: the recorded GB national forecast (``grid/data``, NESO, 72 h) repeated end to end,
  anchored so that its first slot falls on ``anchor``. A region's series is the national one
  scaled by that region's real ratio to GB in a recorded all-regions answer (2024-01-12 06:00Z)
  and lagged by ``lag_hours`` per region, so that two regions do not share clean windows.
* price: Octopus Agile unit rates computed from the recorded Elexon market index price with
  Agile's published formula shape (``min(cap, D x multiplier + peak adder 16-19h UK time)``
  plus 5 % VAT); rates for the next UK day appear at 16:00 UK time, as Octopus publishes them.

It is not a forecast of anything: values repeat every 72 h. ``down`` makes every request fail
with HTTP 503 (an outage); every request is kept in ``requests`` so callers can count calls.

Run it alone with ``python -m slurm_flex.grid.replayserver --port 8089`` and point
``[providers.neso] base_url`` / ``[providers.octopus] base_url`` at it.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

from slurm_flex.grid.filesource import load_series_file
from slurm_flex.grid.series import SLOT_SECONDS, floor_slot, iso_utc, parse_iso_utc

UK = ZoneInfo("Europe/London")
DAY = 86400

# Real NESO regional forecasts at 2024-01-12T06:00Z (tests/fixtures/grid, regional first
# window), divided by GB's 293 g/kWh: (short name, DNO region, ratio).
REGIONS: Mapping[int, tuple[str, str, float]] = {
    1: ("North Scotland", "Scottish Hydro Electric Power Distribution", 314 / 293),
    2: ("South Scotland", "SP Distribution", 198 / 293),
    3: ("North West England", "Electricity North West", 188 / 293),
    4: ("North East England", "NPG North East", 158 / 293),
    5: ("Yorkshire", "NPG Yorkshire", 215 / 293),
    6: ("North Wales & Merseyside", "SP Manweb", 266 / 293),
    7: ("South Wales", "WPD South Wales", 364 / 293),
    8: ("West Midlands", "WPD West Midlands", 390 / 293),
    9: ("East Midlands", "WPD East Midlands", 403 / 293),
    10: ("East England", "UKPN East", 182 / 293),
    11: ("South West England", "WPD South West", 388 / 293),
    12: ("South England", "SSE South", 392 / 293),
    13: ("London", "UKPN London", 266 / 293),
    14: ("South East England", "UKPN South East", 303 / 293),
}
# Outward postcodes this stand-in knows, by the first letters (the live API knows them all).
POSTCODE_AREAS: Mapping[str, int] = {"CB": 10, "M": 3, "EC": 13, "W": 13, "EH": 2, "AB": 1, "B": 8, "LS": 5}
# Agile's per-region multiplier and 16:00-19:00 peak adder, p/kWh (the published formula's shape).
AGILE_REGION_FACTORS: Mapping[str, tuple[float, float]] = {
    "A": (2.10, 13.0),
    "B": (2.00, 14.0),
    "C": (2.00, 12.0),
    "D": (2.20, 13.0),
    "E": (2.10, 11.0),
    "F": (2.10, 12.0),
    "G": (2.10, 12.0),
    "H": (2.10, 12.0),
    "J": (2.20, 12.0),
    "K": (2.20, 12.0),
    "L": (2.30, 11.0),
    "M": (2.00, 13.0),
    "N": (2.10, 13.0),
    "P": (2.40, 12.0),
}
AGILE_CAP_P_PER_KWH = 100.0
VAT = 1.05
AGILE_PATH = re.compile(r"/v1/products/(?P<p>[^/]+)/electricity-tariffs/E-1R-(?P=p)-(?P<r>[A-P])/standard-unit-rates/?")
NESO_FORWARD_SLOTS = 96  # fw48h
MAX_RANGE_DAYS = 14  # NESO refuses longer {from}/{to} ranges


def _intensity_index(value: float) -> str:
    for limit, name in ((50, "very low"), (130, "low"), (210, "moderate"), (310, "high")):
        if value < limit:
            return name
    return "very high"


@dataclass(frozen=True)
class RecordedGrid:
    """The recorded series, repeated end to end from ``anchor``: pure lookups by slot."""

    carbon: tuple[float, ...]
    price: tuple[float, ...]  # GBP/MWh
    anchor: int

    @classmethod
    def bundled(cls, anchor: int) -> RecordedGrid:
        from slurm_flex.config import bundled_forecast  # config imports grid: import late

        series = load_series_file(bundled_forecast())
        return cls(series.carbon, series.price, floor_slot(anchor))

    def _index(self, slot: int) -> int:
        return ((slot - self.anchor) // SLOT_SECONDS) % len(self.carbon)

    def carbon_at(self, slot: int, region_id: int | None = None, lag_slots: int = 0) -> float:
        ratio = 1.0 if region_id is None else REGIONS[region_id][2]
        return round(self.carbon[self._index(slot - lag_slots * SLOT_SECONDS)] * ratio)

    def agile_at(self, slot: int, region: str) -> float:
        """Agile unit rate, p/kWh excluding VAT."""
        multiplier, peak = AGILE_REGION_FACTORS[region]
        wholesale = self.price[self._index(slot)] / 10.0  # GBP/MWh -> p/kWh
        if math.isnan(wholesale):
            wholesale = 0.0
        local_hour = datetime.fromtimestamp(slot, UK).hour
        adder = peak if 16 <= local_hour < 19 else 0.0
        return round(min(AGILE_CAP_P_PER_KWH, wholesale * multiplier + adder), 2)


def agile_published_until(now: float) -> int:
    """End of the last Agile slot published at ``now``: 23:00 UK time tomorrow once today's
    16:00 UK publication is out, else 23:00 UK time today."""
    local = datetime.fromtimestamp(now, UK)
    day = local.date() + (timedelta(days=1) if local.hour >= 16 else timedelta(0))
    return int(datetime(day.year, day.month, day.day, 23, tzinfo=UK).timestamp())


@dataclass
class GridStandIn:
    """What the server answers; mutable on purpose so a test can take it down and up."""

    grid: RecordedGrid
    lag_hours: Mapping[int, float] = field(default_factory=dict)  # region id -> lag
    clock: Callable[[], float] = time.time
    down: bool = False
    requests: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, pattern: str) -> int:
        with self._lock:
            return sum(1 for r in self.requests if re.search(pattern, r))

    def record(self, path: str) -> None:
        with self._lock:
            self.requests.append(path)

    # -- NESO --------------------------------------------------------------------------------
    def _windows(self, first: int, last: int, region_id: int | None) -> list[dict[str, Any]]:
        lag = round(self.lag_hours.get(region_id or 0, 0.0) * 2)
        out = []
        for slot in range(first, last, SLOT_SECONDS):
            value = self.grid.carbon_at(slot, region_id, lag)
            intensity: dict[str, Any] = {"forecast": value, "index": _intensity_index(value)}
            if region_id is None:  # national: measured once the half hour is over
                intensity = {
                    "forecast": value,
                    "actual": value if slot + SLOT_SECONDS <= self.clock() else None,
                    "index": intensity["index"],
                }
            out.append({"from": _neso_time(slot), "to": _neso_time(slot + SLOT_SECONDS), "intensity": intensity})
        return out

    def neso(self, path: str) -> tuple[int, Any]:
        m = re.fullmatch(
            r"(?P<regional>/regional)?/intensity/(?P<from>[^/]+)/(?:(?P<fw>fw48h)|(?P<to>[^/]+))"
            r"(?:/(?P<kind>regionid|postcode)/(?P<key>[^/]+))?",
            path,
        )
        if m is None or bool(m["regional"]) != bool(m["kind"]):
            return 400, {"error": {"code": "400 Bad Request", "message": f"unknown path {path}"}}
        try:
            start = parse_iso_utc(m["from"])
            end = start + NESO_FORWARD_SLOTS * SLOT_SECONDS if m["fw"] else parse_iso_utc(m["to"])
        except ValueError as exc:
            return 400, {"error": {"code": "400 Bad Request", "message": str(exc)}}
        if end - start > MAX_RANGE_DAYS * DAY:
            return 400, {"error": {"code": "400 Bad Request", "message": "Date range must be 14 days or less"}}
        # Quirk: from exactly on a boundary returns the half hour ending then first.
        first = floor_slot(start) - (SLOT_SECONDS if start % SLOT_SECONDS == 0 else 0)
        region_id: int | None = None
        if m["kind"] == "regionid":
            region_id = int(m["key"]) if m["key"].isdigit() else 0
        elif m["kind"] == "postcode":
            area = re.match(r"[A-Z]+", m["key"].upper())
            region_id = POSTCODE_AREAS.get(area[0] if area else "", 0)
        if region_id is not None and region_id not in REGIONS:
            return 400, {"error": {"code": "400 Bad Request", "message": "Please enter a valid region id"}}
        windows = self._windows(first, end, region_id)
        if region_id is None:
            return 200, {"data": windows}
        short, dno, _ = REGIONS[region_id]
        # The per-region endpoints answer `data` as an object (FORMAT.md quirk 2).
        return 200, {"data": {"regionid": region_id, "dnoregion": dno, "shortname": short, "data": windows}}

    # -- Octopus ------------------------------------------------------------------------------
    def agile(self, path: str, query: Mapping[str, list[str]]) -> tuple[int, Any]:
        m = AGILE_PATH.fullmatch(path)
        if m is None or m["r"] not in AGILE_REGION_FACTORS:
            return 404, {"detail": "Not found."}
        try:
            start = floor_slot(parse_iso_utc(query["period_from"][0]))
            end = parse_iso_utc(query["period_to"][0])
        except (KeyError, ValueError):
            return 400, {"detail": "period_from and period_to are required ISO 8601 times"}
        end = min(end, agile_published_until(self.clock()))
        results = [
            {
                "value_exc_vat": (v := self.grid.agile_at(slot, m["r"])),
                "value_inc_vat": round(v * VAT, 4),
                "valid_from": iso_utc(slot),
                "valid_to": iso_utc(slot + SLOT_SECONDS),
                "payment_method": None,
            }
            for slot in range(start, end, SLOT_SECONDS)
        ]
        results.reverse()  # newest first, as the live API lists them
        return 200, {"count": len(results), "next": None, "previous": None, "results": results}

    def answer(self, raw_path: str) -> tuple[int, Any]:
        parts = urlsplit(raw_path)
        self.record(raw_path)
        if self.down:
            return 503, {"error": "service unavailable (simulated outage)"}
        if parts.path.startswith("/v1/products/"):
            return self.agile(parts.path, parse_qs(parts.query))
        return self.neso(parts.path)


def _neso_time(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%MZ")


def _handler(stand_in: GridStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, doc = stand_in.answer(self.path)
            body = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # requests are kept in stand_in.requests

    return Handler


@contextmanager
def serving(stand_in: GridStandIn, port: int = 0) -> Iterator[str]:
    """Serve on 127.0.0.1 in a thread; yields the base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", port), _handler(stand_in))
    thread = threading.Thread(target=server.serve_forever, name="grid-stand-in", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument(
        "--lag",
        action="append",
        default=[],
        metavar="REGION=HOURS",
        help="lag a region's series, e.g. --lag 3=24 (repeatable)",
    )
    parser.add_argument("--data", type=Path, help="a forecast file instead of the bundled recording")
    args = parser.parse_args(argv)
    anchor = floor_slot(time.time()) - DAY
    if args.data is not None:
        series = load_series_file(args.data)
        grid = RecordedGrid(series.carbon, series.price, anchor)
    else:
        grid = RecordedGrid.bundled(anchor)
    lags = {int(k): float(v) for k, v in (item.split("=", 1) for item in args.lag)}
    with serving(GridStandIn(grid, lags), args.port) as url:
        print(f"NESO and Agile stand-in on {url} (Ctrl-C to stop)", flush=True)
        with suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
