"""Octopus Energy Agile unit rates (public REST API, no auth), as GBP/MWh.

``GET /v1/products/{product}/electricity-tariffs/E-1R-{product}-{region}/standard-unit-rates/``
with ``period_from`` (inclusive) and ``period_to`` (exclusive) returns pages of
``{count, next, previous, results: [{value_exc_vat, value_inc_vat, valid_from, valid_to,
payment_method}]}``, newest first. Prices are pence/kWh; we use the price *excluding* VAT
(x10 = GBP/MWh) since a wholesale-like signal is what the planner compares. Agile publishes
the next day's rates each afternoon and never revises them, so a rate is an "actual" once
its half hour has passed and a "forecast" (a published future price) before. Negative rates
(Agile "plunge pricing") are real and kept.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from pydantic import Field

from slurm_flex.errors import ForecastFormatError, ProviderError
from slurm_flex.grid.http import HttpClient
from slurm_flex.grid.readings import Kind, Point, Quantity, Reading, make_reading, time_field
from slurm_flex.grid.registry import ProviderSettings, SignalRequest, http_client, register_provider
from slurm_flex.grid.series import SLOT_SECONDS, floor_slot, iso_utc

BASE_URL = "https://api.octopus.energy"
DEFAULT_PRODUCT = "AGILE-24-10-01"  # "Agile Octopus October 2024 v1"
# Grid supply point groups (the letter ending a tariff code). There is no I or O.
REGIONS: dict[str, str] = {
    "A": "Eastern England",
    "B": "East Midlands",
    "C": "London",
    "D": "Merseyside and Northern Wales",
    "E": "West Midlands",
    "F": "North Eastern England",
    "G": "North Western England",
    "H": "Southern England",
    "J": "South Eastern England",
    "K": "Southern Wales",
    "L": "South Western England",
    "M": "Yorkshire",
    "N": "Southern Scotland",
    "P": "Northern Scotland",
}
REGION_LETTERS = tuple(REGIONS)
PENCE_PER_KWH_TO_GBP_PER_MWH = 10.0
MAX_PAGES = 10
PAGE_SIZE = 1500  # the API's largest page: 31 days of half hours fit in one
HISTORY_CHUNK_SECONDS = 28 * 86400
FETCH_HORIZON_SECONDS = 48 * 3600
_PRODUCT_CODE = re.compile(r"^[A-Z0-9]+(?:-[A-Z0-9]+)*$")


def check_region(region: str) -> str:
    """The region letter in upper case; ValueError if it is not one of A..P (no I, O)."""
    letter = region.strip().upper()
    if letter not in REGIONS:
        raise ValueError(f"Octopus region {region!r} is not one of {', '.join(REGION_LETTERS)}")
    return letter


def check_product(product: str) -> str:
    code = product.strip().upper()
    if not _PRODUCT_CODE.match(code):
        raise ValueError(f"Octopus product code {product!r} should look like AGILE-24-10-01")
    return code


@dataclass(frozen=True)
class Rate:
    """One published rate: [start, end) in epoch seconds (end None when open-ended), GBP/MWh."""

    start: int
    end: int | None
    value: float


@dataclass(frozen=True)
class RatesPage:
    rates: tuple[Rate, ...]
    next: str | None


def parse_rates_page(doc: Any, source: str) -> RatesPage:
    """One page of ``standard-unit-rates``: its rates (GBP/MWh excluding VAT) and next link."""
    if not isinstance(doc, dict) or not isinstance(doc.get("results"), list):
        raise ForecastFormatError(f"{source}: expected an object with a 'results' list")
    next_link = doc.get("next")
    if next_link is not None and not isinstance(next_link, str):
        raise ForecastFormatError(f"{source}: 'next' is not a link")
    rates: list[Rate] = []
    for i, row in enumerate(doc["results"]):
        where = f"{source}: results[{i}]"
        if not isinstance(row, dict):
            raise ForecastFormatError(f"{where}: expected an object")
        start = time_field(row.get("valid_from"), where, "valid_from")
        # Agile rows always end; other tariffs' current rate can be open-ended (null).
        end = None if row.get("valid_to") is None else time_field(row.get("valid_to"), where, "valid_to")
        value = row.get("value_exc_vat")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ForecastFormatError(f"{where}: value_exc_vat {value!r} is not a number")
        if end is not None and end <= start:
            raise ForecastFormatError(f"{where}: valid_to is not after valid_from")
        rates.append(Rate(start, end, float(value) * PENCE_PER_KWH_TO_GBP_PER_MWH))
    return RatesPage(tuple(rates), next_link or None)


def rates_to_reading(
    rates: Iterable[Rate], source: str, issued_at: int, *, now: float, start: int, end: int
) -> Reading:
    """Half-hour points in [start, end): rates longer than 30 minutes are split into half
    hours (an open-ended rate runs to ``end``); slots already over at ``now`` are actuals."""
    points: list[Point] = []
    for rate in rates:
        if rate.start % SLOT_SECONDS or (rate.end is not None and rate.end % SLOT_SECONDS):
            raise ForecastFormatError(f"{source}: rate {iso_utc(rate.start)} is not on half-hour boundaries")
        slot = max(rate.start, floor_slot(start))
        stop = min(rate.end if rate.end is not None else end, end)
        while slot < stop:
            kind: Kind = "actual" if slot + SLOT_SECONDS <= now else "forecast"
            points.append(Point(slot, rate.value, kind))
            slot += SLOT_SECONDS
    return make_reading("price", points, source, issued_at)


class AgilePrice:
    """Agile day-ahead unit rates for one product and region (GBP/MWh, excluding VAT)."""

    def __init__(
        self,
        http: HttpClient,
        region: str,
        product: str = DEFAULT_PRODUCT,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._http = http
        self._clock = clock
        self.region = check_region(region)
        self.product = check_product(product)

    @property
    def name(self) -> str:
        return f"octopus-agile:{self.product}/{self.region}"

    @property
    def quantity(self) -> Quantity:
        return "price"

    @property
    def path(self) -> str:
        tariff = f"E-1R-{self.product}-{self.region}"
        return f"/v1/products/{self.product}/electricity-tariffs/{tariff}/standard-unit-rates/"

    def _rates(self, start: int, end: int) -> list[Rate]:
        """Every rate in [start, end), following ``next`` links (at most MAX_PAGES pages)."""
        path = self.path
        params: dict[str, str] = {"period_from": iso_utc(start), "period_to": iso_utc(end), "page_size": str(PAGE_SIZE)}
        rates: list[Rate] = []
        for _ in range(MAX_PAGES):
            page = parse_rates_page(self._http.get_json(path, params), self.name)
            rates.extend(page.rates)
            if page.next is None:
                return rates
            # Ask our own base URL for the link's path and query: a page link can never send
            # the client to another host.
            link = urlsplit(page.next)
            if not link.path.startswith("/v1/"):
                raise ForecastFormatError(f"{self.name}: unexpected 'next' link path {link.path!r}")
            path, params = link.path, dict(parse_qsl(link.query))
        raise ProviderError(self.name, f"more than {MAX_PAGES} pages of rates for {iso_utc(start)}..{iso_utc(end)}")

    def fetch(self, now: int) -> Reading:
        start = floor_slot(now)
        end = start + FETCH_HORIZON_SECONDS
        return rates_to_reading(self._rates(start, end), self.name, int(now), now=now, start=start, end=end)

    def history(self, start: int, end: int) -> Reading:
        now = self._clock()
        rates: list[Rate] = []
        chunk = floor_slot(start)
        while chunk < end:
            chunk_end = min(chunk + HISTORY_CHUNK_SECONDS, end)
            rates.extend(self._rates(chunk, chunk_end))
            chunk = chunk_end
        return rates_to_reading(rates, self.name, int(now), now=now, start=start, end=end)


# -- registration -------------------------------------------------------------------------------


class OctopusSettings(ProviderSettings):
    base_url: str = BASE_URL
    # The Agile product whose unit rates are the price signal (Octopus publishes new versions).
    product: str = DEFAULT_PRODUCT
    min_interval_seconds: int = Field(3600, ge=60, le=86400)


def _check_site(signal: SignalRequest) -> None:
    check_region(signal.region or "")


@register_provider(
    "octopus-agile",
    "price",
    settings=OctopusSettings,
    table="octopus",
    needs={"region": f'region = "A" (one of {", ".join(REGION_LETTERS)})'},
    check=_check_site,
)
def _build(signal: SignalRequest, settings: OctopusSettings, key: str) -> AgilePrice:
    return AgilePrice(http_client("octopus", settings, settings.base_url), signal.region or "", settings.product)
