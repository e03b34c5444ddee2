"""Grid-signal provider clients against a real local HTTP server replaying recorded answers.

No network and no Slurm: every client gets an HttpClient pointed at the replay server.
Fixtures and their provenance: tests/fixtures/grid/PROVENANCE.md.
"""

from __future__ import annotations

import base64
import datetime as dt
import itertools
import json
from collections.abc import Callable
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slurm_flex.errors import ForecastFormatError, ProviderError, ProviderRateLimited
from slurm_flex.grid.electricitymaps import ElectricityMapsCarbon, parse_carbon_intensity
from slurm_flex.grid.elexon import ElexonMarketIndex, parse_market_index, periods_in_day, settlement_period_start
from slurm_flex.grid.http import DEFAULT_USER_AGENT, HttpClient, parse_retry_after
from slurm_flex.grid.neso import (
    NesoCarbon,
    api_time,
    check_postcode,
    check_region_id,
    forecast_from,
    is_aggregate_region,
    parse_generation_mix,
    parse_intensity,
    parse_regional,
)
from slurm_flex.grid.octopus import (
    REGION_LETTERS,
    AgilePrice,
    check_region,
    parse_rates_page,
    rates_to_reading,
)
from slurm_flex.grid.readings import Provider, Reading
from slurm_flex.grid.series import SLOT_SECONDS, floor_slot, parse_iso_utc
from slurm_flex.grid.watttime import LBS_PER_MWH_TO_G_PER_KWH, WattTimeCarbon, parse_moer
from tests import grid_replay
from tests.grid_replay import FIXTURES, ReplayServer, Reply, fixture

# The fixture lives with the server in tests/grid_replay.py; binding it here makes pytest see it.
replay_server = grid_replay.replay_server

LONDON = ZoneInfo("Europe/London")


def at(text: str) -> int:
    return parse_iso_utc(text)


def load(name: str) -> object:
    return json.loads((FIXTURES / name).read_text())


def http(server: ReplayServer, provider: str = "test", *, timeout: float = 2.0, retries: int = 2) -> HttpClient:
    return HttpClient(provider, server.url, timeout_seconds=timeout, retries=retries, backoff_seconds=0.0)


def values(reading: Reading) -> dict[str, float]:
    return {dt.datetime.fromtimestamp(p.start, dt.UTC).strftime("%Y-%m-%dT%H:%MZ"): p.value for p in reading.points}


def assert_sorted_slots(reading: Reading) -> None:
    starts = [p.start for p in reading.points]
    assert starts == sorted(set(starts))
    assert all(s % SLOT_SECONDS == 0 for s in starts)


class Clock:
    """A settable clock for clients that read the time themselves."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- the HTTP adapter ---------------------------------------------------------------------------


def test_http_retries_a_500_then_succeeds(replay_server: ReplayServer) -> None:
    replay_server.add("/x", [Reply(status=500, body=b"oops"), fixture("intensity_fw48h__2024-01-12T0601Z.json")])
    doc = http(replay_server).get_json("/x")
    assert doc["data"][0]["intensity"]["forecast"] == 293
    assert len(replay_server.requests_to("/x")) == 2


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_http_gives_up_after_retries_on_persistent_5xx(replay_server: ReplayServer, status: int) -> None:
    replay_server.add("/x", Reply(status=status, body=b'{"error":{"code":"500","message":"database unavailable"}}'))
    with pytest.raises(ProviderError) as caught:
        http(replay_server, "neso", retries=2).get_json("/x")
    assert caught.value.status == status
    assert f"HTTP {status} from /x" in str(caught.value)
    assert "database unavailable" in str(caught.value)
    assert str(caught.value).startswith("neso: ")
    assert len(replay_server.requests_to("/x")) == 3  # first try + 2 retries


def test_http_timeout_is_a_provider_error_and_not_retried(replay_server: ReplayServer) -> None:
    replay_server.add("/slow", fixture("intensity_fw48h__2024-01-12T0601Z.json", delay=1.0))
    with pytest.raises(ProviderError) as caught:
        http(replay_server, timeout=0.3).get_json("/slow")
    assert "timed out after 0.3 s" in str(caught.value)
    assert caught.value.status is None
    assert len(replay_server.requests_to("/slow")) == 1


def test_http_429_raises_rate_limited_with_retry_after_and_is_not_retried(replay_server: ReplayServer) -> None:
    replay_server.add("/x", Reply(status=429, body=b"slow down", headers={"Retry-After": "120"}))
    with pytest.raises(ProviderRateLimited) as caught:
        http(replay_server).get_json("/x")
    assert caught.value.retry_after == 120.0
    assert caught.value.status == 429
    assert len(replay_server.requests_to("/x")) == 1


def test_http_429_with_an_http_date(replay_server: ReplayServer) -> None:
    future = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=90)
    stamp = future.strftime("%a, %d %b %Y %H:%M:%S GMT")
    replay_server.add("/x", Reply(status=429, headers={"Retry-After": stamp}))
    with pytest.raises(ProviderRateLimited) as caught:
        http(replay_server).get_json("/x")
    assert caught.value.retry_after is not None
    assert 80 <= caught.value.retry_after <= 91


def test_parse_retry_after_forms() -> None:
    now = at("2015-10-21T07:28:00Z")
    assert parse_retry_after("30") == 30.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:30:00 GMT", now) == 120.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now) == 0.0  # already past
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("-5") == 0.0


def test_http_truncated_json_is_a_format_error(replay_server: ReplayServer) -> None:
    replay_server.add("/intensity", fixture("derived_intensity_fw48h__truncated.json"))
    with pytest.raises(ForecastFormatError) as caught:
        http(replay_server, "neso").get_json("/intensity")
    assert "neso" in str(caught.value)
    assert "/intensity" in str(caught.value)
    assert "not valid JSON" in str(caught.value)


def test_http_transfer_cut_short_is_a_format_error(replay_server: ReplayServer) -> None:
    replay_server.add("/x", fixture("intensity_fw48h__2024-01-12T0601Z.json", cut_at=300))
    with pytest.raises(ForecastFormatError, match=r"test: answer to /x was cut off"):
        http(replay_server).get_json("/x")


def test_http_html_error_page_with_200_is_a_format_error(replay_server: ReplayServer) -> None:
    replay_server.add("/x", Reply(body=b"<html><body>Service maintenance</body></html>"))
    with pytest.raises(ForecastFormatError, match="not valid JSON"):
        http(replay_server).get_json("/x")


def test_http_error_message_never_shows_the_token(replay_server: ReplayServer) -> None:
    token = "sekrit-token-0123456789"
    replay_server.add("/x", Reply(status=401, body=f"invalid auth-token {token} for zone".encode()))
    with pytest.raises(ProviderError) as caught:
        http(replay_server).get_json("/x", {"zone": "DE"}, headers={"auth-token": token})
    assert token not in str(caught.value)
    assert "***" in str(caught.value)
    assert "zone=DE" not in str(caught.value)  # no query strings in messages
    assert caught.value.status == 401


def test_http_sends_user_agent_and_accept(replay_server: ReplayServer) -> None:
    replay_server.add("/x", Reply(body=b"{}"))
    assert http(replay_server).get_json("/x") == {}
    sent = replay_server.requests_to("/x")[0].headers
    assert sent["user-agent"] == DEFAULT_USER_AGENT
    assert sent["user-agent"].startswith("slurm-flex/")
    assert sent["accept"] == "application/json"


def test_http_does_not_follow_redirects(replay_server: ReplayServer) -> None:
    replay_server.add("/x", Reply(status=302, headers={"Location": "http://203.0.113.9/steal"}))
    with pytest.raises(ProviderError, match="HTTP 302 redirect from /x not followed") as caught:
        http(replay_server).get_json("/x", headers={"auth-token": "tok"})
    assert caught.value.status == 302
    assert len(replay_server.requests) == 1


def test_http_unreachable_host_is_a_provider_error() -> None:
    server = ReplayServer().start()
    url = server.url
    server.stop()  # nothing listens on that port any more
    client = HttpClient("neso", url, timeout_seconds=1.0, retries=1, backoff_seconds=0.0)
    with pytest.raises(ProviderError, match=r"neso: cannot reach 127\.0\.0\.1"):
        client.get_json("/x")


# -- NESO ---------------------------------------------------------------------------------------


def test_neso_national_fetch_asks_one_minute_past_the_slot(replay_server: ReplayServer) -> None:
    replay_server.add("/intensity/2024-01-12T06:01Z/fw48h", fixture("intensity_fw48h__2024-01-12T0601Z.json"))
    neso = NesoCarbon(http(replay_server))
    now = at("2024-01-12T06:17:42Z")
    reading = neso.fetch(now)
    assert [r.path for r in replay_server.requests] == ["/intensity/2024-01-12T06:01Z/fw48h"]
    assert neso.name == "neso:national" and neso.quantity == "carbon"
    assert reading.source == "neso:national" and reading.issued_at == now
    assert reading.quantity == "carbon"
    assert len(reading.points) == 8
    assert reading.points[0].start == at("2024-01-12T06:00Z")
    assert values(reading)["2024-01-12T06:00Z"] == 293
    assert values(reading)["2024-01-12T09:30Z"] == 309
    assert all(p.kind == "forecast" for p in reading.points)  # actual is null in fw48h
    assert_sorted_slots(reading)


def test_neso_fetch_exactly_on_the_hour_still_asks_for_hh01(replay_server: ReplayServer) -> None:
    replay_server.add(
        "/regional/intensity/2023-03-13T12:01Z/fw48h/regionid/13",
        fixture("regional_intensity_fw48h_regionid_13__2023-03-13T1201Z__first-3-windows.json"),
    )
    neso = NesoCarbon(http(replay_server), region_id=13)
    reading = neso.fetch(at("2023-03-13T12:00:00Z"))
    assert neso.name == "neso:regionid=13"
    assert values(reading) == {"2023-03-13T12:00Z": 130, "2023-03-13T12:30Z": 129, "2023-03-13T13:00Z": 129}
    assert {p.kind for p in reading.points} == {"forecast"}


def test_neso_regional_answer_for_another_region_is_rejected(replay_server: ReplayServer) -> None:
    replay_server.add(
        "/regional/intensity/2023-03-13T12:01Z/fw48h/regionid/10",
        fixture("regional_intensity_fw48h_regionid_13__2023-03-13T1201Z__first-3-windows.json"),
    )
    with pytest.raises(ForecastFormatError, match="region 13, not 10"):
        NesoCarbon(http(replay_server), region_id=10).fetch(at("2023-03-13T12:10:00Z"))


def test_neso_postcode_fetch_and_list_form(replay_server: ReplayServer) -> None:
    replay_server.add(
        "/regional/intensity/2023-03-13T12:31Z/fw48h/postcode/CB3",
        fixture("derived_regional_regionid_13__list_form.json"),
    )
    neso = NesoCarbon(http(replay_server), postcode="cb3")
    reading = neso.fetch(at("2023-03-13T12:45:00Z"))
    assert neso.name == "neso:postcode=CB3"
    assert len(reading.points) == 3 and reading.points[0].value == 130


def test_neso_pt24h_actual_replaces_forecast() -> None:
    reading = parse_intensity(load("intensity_pt24h__2024-01-12T0601Z.json"), "neso:national", 0)
    assert len(reading.points) == 8
    assert reading.points[0].start == at("2024-01-11T06:00Z")
    assert reading.points[0].value == 271 and reading.points[0].kind == "actual"  # forecast was 264
    assert values(reading)["2024-01-11T08:00Z"] == 282  # forecast 287
    assert reading.actual_points() == reading.points


def test_neso_null_forecast_skipped_duplicates_merged_order_fixed() -> None:
    reading = parse_intensity(load("derived_intensity_fw48h__null_duplicate_reversed.json"), "neso:national", 0)
    assert_sorted_slots(reading)
    assert len(reading.points) == 7
    assert "2024-01-12T07:00Z" not in values(reading)
    assert values(reading)["2024-01-12T06:00Z"] == 293


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("derived_intensity_fw48h__conflicting_duplicate.json", r"08:30:00Z: given twice with different values"),
        ("derived_intensity_fw48h__garbage_value.json", r"data\[3\]: intensity\.forecast 'very high' is not a number"),
        ("derived_intensity_fw48h__missing_from.json", r"data\[1\]: missing or non-text 'from'"),
    ],
)
def test_neso_malformed_answers_name_the_item(name: str, message: str) -> None:
    with pytest.raises(ForecastFormatError, match=message):
        parse_intensity(load(name), "neso:national", 0)


def test_neso_truncated_answer_over_http(replay_server: ReplayServer) -> None:
    replay_server.add("/intensity/2024-01-12T06:01Z/fw48h", fixture("derived_intensity_fw48h__truncated.json"))
    with pytest.raises(ForecastFormatError, match="/intensity/2024-01-12T06:01Z/fw48h"):
        NesoCarbon(http(replay_server, "neso:national")).fetch(at("2024-01-12T06:05:00Z"))


def test_neso_other_shape_errors() -> None:
    with pytest.raises(ForecastFormatError, match="all-regions answer"):
        parse_regional(load("regional_intensity_fw48h__2024-01-12T0601Z__first-window.json"), "neso:regionid=1", 0)
    with pytest.raises(ForecastFormatError, match="expected an object with 'data'"):
        parse_intensity([1, 2], "neso:national", 0)
    with pytest.raises(ForecastFormatError, match=r"data\[0\]: missing 'intensity' object"):
        parse_intensity({"data": [{"from": "2024-01-12T06:00Z", "to": "2024-01-12T06:30Z"}]}, "neso:national", 0)
    with pytest.raises(ForecastFormatError, match="not one half hour"):
        parse_intensity(
            {"data": [{"from": "2024-01-12T06:00Z", "to": "2024-01-12T07:00Z", "intensity": {"forecast": 1}}]},
            "neso:national",
            0,
        )


def test_neso_generation_mix_keyed_by_fuel() -> None:
    current = parse_generation_mix(load("derived_generation__current_object_form.json"))
    assert current["gas"] == 59.5 and current["wind"] == 16 and current["solar"] == 2.8
    assert set(current) == {"biomass", "coal", "imports", "gas", "nuclear", "other", "hydro", "solar", "wind"}
    assert parse_generation_mix(load("generation_pt24h__2024-01-12T0601Z.json")) == current  # latest window
    shuffled = load("derived_generation__current_object_form.json")
    assert isinstance(shuffled, dict)
    shuffled["data"]["generationmix"].reverse()
    assert parse_generation_mix(shuffled) == current
    with pytest.raises(ForecastFormatError, match="listed twice"):
        doc = load("derived_generation__current_object_form.json")
        assert isinstance(doc, dict)
        doc["data"]["generationmix"].append({"fuel": "gas", "perc": 1})
        parse_generation_mix(doc)


def test_neso_region_ids_and_postcodes() -> None:
    for good in range(1, 19):
        check_region_id(good)
    for bad in (0, 19, -1, True, "3", 3.0):
        with pytest.raises(ValueError, match=r"not one of 1\.\.18"):
            check_region_id(bad)  # type: ignore[arg-type]
    assert [r for r in range(1, 19) if is_aggregate_region(r)] == [15, 16, 17, 18]
    assert check_postcode("rg10") == "RG10" and check_postcode(" EC1A ") == "EC1A" and check_postcode("M1") == "M1"
    for bad in ("CB3 0AP", "123", "", "RG10X1"):
        with pytest.raises(ValueError, match="outward code"):
            check_postcode(bad)
    with pytest.raises(ValueError, match="not both"):
        NesoCarbon(HttpClient("neso", "http://127.0.0.1:9"), region_id=1, postcode="RG10")


def test_neso_national_history_splits_into_14_day_requests(replay_server: ReplayServer) -> None:
    replay_server.add(
        "/intensity/2024-01-11T06:01Z/2024-01-25T06:00Z", fixture("intensity_pt24h__2024-01-12T0601Z.json")
    )
    replay_server.add("/intensity/2024-01-25T06:01Z/2024-01-31T06:00Z", Reply(body=b'{"data": []}'))
    neso = NesoCarbon(http(replay_server), clock=Clock(at("2024-02-01T00:00Z")))
    reading = neso.history(at("2024-01-11T06:00Z"), at("2024-01-31T06:00Z"))
    assert [r.path for r in replay_server.requests] == [
        "/intensity/2024-01-11T06:01Z/2024-01-25T06:00Z",
        "/intensity/2024-01-25T06:01Z/2024-01-31T06:00Z",
    ]
    assert len(reading.points) == 8 and {p.kind for p in reading.points} == {"actual"}
    assert reading.issued_at == at("2024-02-01T00:00Z")


def test_neso_history_filters_to_the_range_and_regional_is_forecast(replay_server: ReplayServer) -> None:
    replay_server.add(
        "/regional/intensity/2023-03-13T12:31Z/2023-03-13T13:30Z/regionid/13",
        fixture("regional_intensity_fw48h_regionid_13__2023-03-13T1201Z__first-3-windows.json"),
    )
    reading = NesoCarbon(http(replay_server), region_id=13).history(at("2023-03-13T12:30Z"), at("2023-03-13T13:30Z"))
    assert values(reading) == {"2023-03-13T12:30Z": 129, "2023-03-13T13:00Z": 129}  # 12:00 is outside
    assert {p.kind for p in reading.points} == {"forecast"}


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=at("2020-01-01T00:00Z"), max_value=at("2030-12-31T23:59Z")))
def test_neso_from_is_always_01_or_31_past_within_the_current_slot(now: int) -> None:
    start = forecast_from(now)
    assert floor_slot(start) == floor_slot(now)
    assert start - floor_slot(now) == 60
    assert api_time(start).endswith((":01Z", ":31Z"))


# -- Octopus Agile ------------------------------------------------------------------------------

AGILE_PATH = "/v1/products/AGILE-24-10-01/electricity-tariffs/E-1R-AGILE-24-10-01-C/standard-unit-rates/"


def agile_routes(server: ReplayServer) -> None:
    server.add(AGILE_PATH, fixture("octopus_agile_C__page1.json"))
    server.add(AGILE_PATH, fixture("octopus_agile_C__page2.json"), query={"page": "2"})


def test_agile_fetch_follows_next_and_converts_units(replay_server: ReplayServer) -> None:
    agile_routes(replay_server)
    agile = AgilePrice(http(replay_server), "c")
    reading = agile.fetch(at("2025-05-13T10:05:00Z"))
    first, second = replay_server.requests
    assert first.path == AGILE_PATH and second.path == AGILE_PATH
    assert first.param("period_from") == "2025-05-13T10:00:00Z"
    assert first.param("period_to") == "2025-05-15T10:00:00Z"
    assert first.param("page") is None and second.param("page") == "2"
    assert second.param("period_from") == "2025-05-13T10:00:00Z"  # carried in the next link
    assert agile.name == "octopus-agile:AGILE-24-10-01/C" and reading.quantity == "price"
    assert len(reading.points) == 10
    assert_sorted_slots(reading)  # the API lists newest first
    got = values(reading)
    assert got["2025-05-13T10:00Z"] == pytest.approx(160.2)  # 16.02 p/kWh exc VAT
    assert got["2025-05-13T14:30Z"] == pytest.approx(-21.0)  # plunge pricing stays negative
    assert got["2025-05-13T13:30Z"] == 0.0
    assert {p.kind for p in reading.points} == {"forecast"}  # nothing is over at 10:05 yet


def test_agile_history_marks_past_slots_actual(replay_server: ReplayServer) -> None:
    agile_routes(replay_server)
    agile = AgilePrice(http(replay_server), "C", clock=Clock(at("2025-05-13T12:10:00Z")))
    reading = agile.history(at("2025-05-13T10:00Z"), at("2025-05-13T15:00Z"))
    assert replay_server.requests[0].param("period_to") == "2025-05-13T15:00:00Z"
    kinds = {dt.datetime.fromtimestamp(p.start, dt.UTC).strftime("%H:%M"): p.kind for p in reading.points}
    assert kinds["11:30"] == "actual" and kinds["12:00"] == "forecast" and kinds["14:30"] == "forecast"
    assert len(reading.actual_points()) == 4


def test_agile_long_rows_become_half_hours() -> None:
    page = parse_rates_page(load("octopus_rates__hourly_row_and_negative.json"), "octopus")
    reading = rates_to_reading(
        page.rates, "octopus", 0, now=0, start=at("2025-05-13T10:00Z"), end=at("2025-05-13T12:00Z")
    )
    assert values(reading) == {"2025-05-13T10:30Z": -32.5, "2025-05-13T11:00Z": 205.0, "2025-05-13T11:30Z": 205.0}


def test_agile_page_limit(replay_server: ReplayServer) -> None:
    replay_server.add(AGILE_PATH, fixture("octopus_agile_C__page1.json"))  # always says there is a next page
    with pytest.raises(ProviderError, match="more than 10 pages"):
        AgilePrice(http(replay_server), "C").fetch(at("2025-05-13T10:05:00Z"))
    assert len(replay_server.requests) == 10


def test_agile_bad_answers() -> None:
    row = {"value_exc_vat": 10, "valid_from": "2025-05-13T10:00:00Z", "valid_to": "2025-05-13T10:30:00Z"}
    clash = {"results": [row, {**row, "value_exc_vat": 11}], "next": None}
    page = parse_rates_page(clash, "octopus")
    with pytest.raises(ForecastFormatError, match="given twice with different values"):
        rates_to_reading(page.rates, "octopus", 0, now=0, start=at("2025-05-13T10:00Z"), end=at("2025-05-13T11:00Z"))
    with pytest.raises(ForecastFormatError, match=r"results\[0\]: value_exc_vat None is not a number"):
        parse_rates_page({"results": [{**row, "value_exc_vat": None}]}, "octopus")
    with pytest.raises(ForecastFormatError, match=r"results\[0\]: missing or non-text valid_from"):
        parse_rates_page({"results": [{"value_exc_vat": 1.0}]}, "octopus")
    with pytest.raises(ForecastFormatError, match="'results' list"):
        parse_rates_page({"count": 0}, "octopus")


def test_agile_regions() -> None:
    assert REGION_LETTERS == ("A", "B", "C", "D", "E", "F", "G", "H", "J", "K", "L", "M", "N", "P")
    assert check_region(" p ") == "P"
    for bad in ("I", "O", "Q", "", "AB"):
        with pytest.raises(ValueError, match="not one of"):
            check_region(bad)
    with pytest.raises(ValueError, match="product code"):
        AgilePrice(HttpClient("o", "http://127.0.0.1:9"), "C", product="../../accounts")


# -- Elexon market index ------------------------------------------------------------------------


def test_elexon_fall_back_day_without_start_times() -> None:
    reading = parse_market_index(
        load("elexon_mid__2024-10-27__fall-back_50_periods__no_startTime.json"), "elexon:mid", 0
    )
    assert len(reading.points) == 50  # the N2EX zero rows are gone
    assert reading.points[0].start == at("2024-10-26T23:00Z")  # local midnight in BST
    assert reading.points[-1].start == at("2024-10-27T23:30Z")
    assert_sorted_slots(reading)
    assert reading.points[0].value == 61.25
    assert {p.kind for p in reading.points} == {"actual"}


def test_elexon_spring_forward_day_without_start_times() -> None:
    reading = parse_market_index(
        load("elexon_mid__2024-03-31__spring-forward_46_periods__no_startTime.json"), "elexon:mid", 0
    )
    assert len(reading.points) == 46
    assert reading.points[0].start == at("2024-03-31T00:00Z")  # local midnight in GMT
    assert reading.points[-1].start == at("2024-03-31T22:30Z")  # ends at 23:00Z = midnight BST


def test_elexon_start_time_forms_and_zero_rows() -> None:
    reading = parse_market_index(load("elexon_mid__startTime_forms_and_zero_rows.json"), "elexon:mid", 0)
    assert values(reading) == {"2024-06-01T10:00Z": 71.5, "2024-06-01T10:30Z": -4.02, "2024-06-01T11:00Z": 66.1}


def test_elexon_official_example() -> None:
    doc = load("elexon_market_index__official_example.json")
    assert parse_market_index(doc, "elexon:mid", 0).points == ()  # its row is N2EX
    every = parse_market_index(doc, "elexon:mid", 0, data_provider=None)
    assert values(every) == {"2022-09-26T01:00Z": 678.12}  # 7 fractional digits parsed


def test_elexon_bad_rows() -> None:
    with pytest.raises(ForecastFormatError, match=r"data\[0\]: settlement period 47 does not exist on 2024-03-31"):
        parse_market_index({"data": [{"settlementDate": "2024-03-31", "settlementPeriod": 47, "price": 1}]}, "e", 0)
    with pytest.raises(ForecastFormatError, match=r"data\[0\]: price None is not a number"):
        parse_market_index({"data": [{"startTime": "2024-03-31T00:00:00Z", "price": None, "volume": 3}]}, "e", 0)
    with pytest.raises(ForecastFormatError, match=r"data\[0\]: neither startTime nor"):
        parse_market_index({"data": [{"price": 5}]}, "e", 0)


def test_elexon_fetch_asks_for_the_last_24_hours_of_apx(replay_server: ReplayServer) -> None:
    replay_server.add("/balancing/pricing/market-index", fixture("elexon_mid__startTime_forms_and_zero_rows.json"))
    mid = ElexonMarketIndex(http(replay_server))
    reading = mid.fetch(at("2024-06-01T12:10:00Z"))
    (request,) = replay_server.requests
    assert request.param("from") == "2024-05-31T12:00:00Z"
    assert request.param("to") == "2024-06-01T12:00:00Z"
    assert request.param("dataProviders") == "APXMIDP"
    assert mid.name == "elexon:mid" and mid.quantity == "price"
    assert len(reading.points) == 3 and reading.issued_at == at("2024-06-01T12:10:00Z")


def test_elexon_history_in_7_day_chunks(replay_server: ReplayServer) -> None:
    replay_server.add("/balancing/pricing/market-index", fixture("elexon_mid__startTime_forms_and_zero_rows.json"))
    mid = ElexonMarketIndex(http(replay_server), clock=Clock(at("2024-06-20T00:00Z")))
    reading = mid.history(at("2024-05-28T00:00Z"), at("2024-06-07T00:00Z"))
    spans = [(r.param("from"), r.param("to")) for r in replay_server.requests]
    assert spans == [
        ("2024-05-28T00:00:00Z", "2024-06-04T00:00:00Z"),
        ("2024-06-04T00:00:00Z", "2024-06-07T00:00:00Z"),
    ]
    assert len(reading.points) == 3  # the served rows lie in the first chunk only


def test_elexon_settlement_periods_on_known_days() -> None:
    assert periods_in_day(dt.date(2024, 3, 31)) == 46
    assert periods_in_day(dt.date(2024, 10, 27)) == 50
    assert periods_in_day(dt.date(2024, 6, 1)) == 48
    assert settlement_period_start(dt.date(2024, 6, 1), 1) == at("2024-05-31T23:00Z")
    assert settlement_period_start(dt.date(2024, 1, 15), 1) == at("2024-01-15T00:00Z")
    assert settlement_period_start(dt.date(2024, 10, 27), 4) == at("2024-10-27T00:30Z")  # 01:30 BST
    assert settlement_period_start(dt.date(2024, 10, 27), 5) == at("2024-10-27T01:00Z")  # 01:00 GMT again
    for day, bad in ((dt.date(2024, 3, 31), 47), (dt.date(2024, 6, 1), 49), (dt.date(2024, 6, 1), 0)):
        with pytest.raises(ValueError, match="does not exist"):
            settlement_period_start(day, bad)


@settings(max_examples=300, deadline=None)
@given(st.dates(min_value=dt.date(2020, 1, 1), max_value=dt.date(2030, 12, 31)))
def test_elexon_settlement_periods_tile_the_day(day: dt.date) -> None:
    count = periods_in_day(day)
    starts = [settlement_period_start(day, p) for p in range(1, count + 1)]
    assert count in (46, 48, 50)
    assert count == 48 or (count == 46 and day.month == 3) or (count == 50 and day.month == 10)
    assert all(b - a == SLOT_SECONDS for a, b in itertools.pairwise(starts))
    midnight = dt.datetime.fromtimestamp(starts[0], LONDON)
    assert (midnight.date(), midnight.hour, midnight.minute) == (day, 0, 0)
    assert starts[-1] + SLOT_SECONDS == settlement_period_start(day + dt.timedelta(days=1), 1)
    assert all(s % SLOT_SECONDS == 0 for s in starts)
    with pytest.raises(ValueError):
        settlement_period_start(day, count + 1)


# -- Electricity Maps ---------------------------------------------------------------------------


def test_electricitymaps_forecast_sends_token_and_fills_half_hours(replay_server: ReplayServer) -> None:
    replay_server.add(
        "/v3/carbon-intensity/forecast", fixture("derived_em_forecast__DK-DK2.json"), query={"zone": "DK-DK2"}
    )
    em = ElectricityMapsCarbon(http(replay_server), "DK-DK2", "tok-abcdef123")
    reading = em.fetch(at("2024-03-18T01:50:00Z"))
    (request,) = replay_server.requests
    assert request.headers["auth-token"] == "tok-abcdef123"
    assert request.param("zone") == "DK-DK2"
    assert em.name == "electricitymaps:DK-DK2"
    assert values(reading) == {
        "2024-03-18T02:00Z": 161,
        "2024-03-18T02:30Z": 161,
        "2024-03-18T03:00Z": 167,
        "2024-03-18T03:30Z": 167,
    }
    assert {p.kind for p in reading.points} == {"forecast"}
    assert reading.issued_at == at("2024-03-18T01:47:12Z")  # updatedAt


def test_electricitymaps_history_is_actual_and_filtered(replay_server: ReplayServer) -> None:
    replay_server.add("/v3/carbon-intensity/history", fixture("derived_em_history__DK-DK2.json"))
    em = ElectricityMapsCarbon(http(replay_server), "DK-DK2", "tok", clock=Clock(at("2024-03-18T05:00Z")))
    reading = em.history(at("2024-03-18T02:30Z"), at("2024-03-18T04:00Z"))
    assert values(reading) == {"2024-03-18T02:30Z": 161, "2024-03-18T03:00Z": 167, "2024-03-18T03:30Z": 167}
    assert {p.kind for p in reading.points} == {"actual"}


def test_electricitymaps_recorded_past_range_and_nulls() -> None:
    reading = parse_carbon_intensity(load("em_past_range__DK-DK2__if-electricitymaps.json"), "em", 5, "actual")
    assert len(reading.points) == 4 and reading.points[0].value == 161 and reading.issued_at == 5
    doc = {
        "zone": "DE",
        "forecast": [
            {"carbonIntensity": 300, "datetime": "2024-03-18T00:00:00.000Z"},
            {"carbonIntensity": None, "datetime": "2024-03-18T01:00:00.000Z"},
            {"carbonIntensity": 280, "datetime": "2024-03-18T02:00:00.000Z"},
        ],
    }
    gapped = parse_carbon_intensity(doc, "em", 0, "forecast")
    assert "2024-03-18T01:00Z" not in values(gapped) and values(gapped)["2024-03-18T00:30Z"] == 300
    with pytest.raises(ForecastFormatError, match=r"forecast\[0\]: carbonIntensity 'high' is not a number"):
        parse_carbon_intensity(
            {"forecast": [{"carbonIntensity": "high", "datetime": "2024-03-18T00:00Z"}]}, "em", 0, "forecast"
        )
    with pytest.raises(ForecastFormatError, match="no forecast/history/data list"):
        parse_carbon_intensity({"zone": "DE"}, "em", 0, "forecast")


def test_electricitymaps_auth_failure(replay_server: ReplayServer) -> None:
    replay_server.add(
        "/v3/carbon-intensity/forecast", Reply(status=401, body=b'{"message":"Invalid token bad-token-123"}')
    )
    with pytest.raises(ProviderError) as caught:
        ElectricityMapsCarbon(http(replay_server, "electricitymaps:DE"), "DE", "bad-token-123").fetch(0)
    assert caught.value.status == 401 and "bad-token-123" not in str(caught.value)
    with pytest.raises(ValueError, match="token"):
        ElectricityMapsCarbon(http(replay_server), "DE", " ")


# -- WattTime -----------------------------------------------------------------------------------


def login_reply(token: str) -> Reply:
    return Reply(body=json.dumps({"token": token}).encode(), headers={"Content-Type": "application/json"})


def watttime(server: ReplayServer, clock: Callable[[], float]) -> WattTimeCarbon:
    return WattTimeCarbon(http(server, "watttime:CAISO_NORTH"), "CAISO_NORTH", "user", "pa55word", clock=clock)


def test_watttime_logs_in_once_and_averages_to_half_hours(replay_server: ReplayServer) -> None:
    replay_server.add("/login", fixture("watttime_login__synthetic.json"))
    replay_server.add("/v3/forecast", fixture("watttime_forecast__synthetic.json"))
    clock = Clock(at("2022-07-15T00:01:00Z"))
    wt = watttime(replay_server, clock)
    reading = wt.fetch(at("2022-07-15T00:01:00Z"))
    wt.fetch(at("2022-07-15T00:06:00Z"))
    assert wt.logins == 1
    login = replay_server.requests_to("/login")
    assert len(login) == 1
    assert login[0].headers["authorization"] == "Basic " + base64.b64encode(b"user:pa55word").decode()
    forecasts = replay_server.requests_to("/v3/forecast")
    assert all(r.headers["authorization"] == "Bearer eyJhbGciOiJIUzI1NiJ9.synthetic-token-1" for r in forecasts)
    assert forecasts[0].param("region") == "CAISO_NORTH" and forecasts[0].param("signal_type") == "co2_moer"
    first = (1048.4131919701972 + 1051.0880801214637 + 4 * 1000.0) / 6
    assert values(reading) == {
        "2022-07-15T00:00Z": pytest.approx(first * LBS_PER_MWH_TO_G_PER_KWH),
        "2022-07-15T00:30Z": pytest.approx(925.0 * 0.45359237),
    }  # 01:00 has only 2 of 6 points: dropped
    assert reading.issued_at == at("2022-07-15T00:00:00Z")  # meta.generated_at
    assert {p.kind for p in reading.points} == {"forecast"}


def test_watttime_logs_in_again_when_the_token_is_old(replay_server: ReplayServer) -> None:
    replay_server.add("/login", [login_reply("t1"), login_reply("t2")])
    replay_server.add("/v3/forecast", fixture("watttime_forecast__synthetic.json"))
    clock = Clock(at("2022-07-15T00:00:00Z"))
    wt = watttime(replay_server, clock)
    wt.fetch(int(clock.now))
    clock.now += 31 * 60
    wt.fetch(int(clock.now))
    assert wt.logins == 2
    assert [r.headers["authorization"] for r in replay_server.requests_to("/v3/forecast")] == ["Bearer t1", "Bearer t2"]


def test_watttime_relogs_in_once_on_401(replay_server: ReplayServer) -> None:
    replay_server.add("/login", [login_reply("t1"), login_reply("t2")])
    replay_server.add(
        "/v3/forecast", [Reply(status=401, body=b"token expired"), fixture("watttime_forecast__synthetic.json")]
    )
    wt = watttime(replay_server, Clock(at("2022-07-15T00:00:00Z")))
    reading = wt.fetch(at("2022-07-15T00:00:00Z"))
    assert len(reading.points) == 2
    assert wt.logins == 2
    assert [r.headers["authorization"] for r in replay_server.requests_to("/v3/forecast")] == ["Bearer t1", "Bearer t2"]


def test_watttime_persistent_401_is_an_error(replay_server: ReplayServer) -> None:
    replay_server.add("/login", [login_reply("t1"), login_reply("t2")])
    replay_server.add("/v3/forecast", Reply(status=401, body=b"no access to region"))
    wt = watttime(replay_server, Clock(0))
    with pytest.raises(ProviderError) as caught:
        wt.fetch(0)
    assert caught.value.status == 401
    assert len(replay_server.requests_to("/v3/forecast")) == 2 and wt.logins == 2


def test_watttime_history_needs_half_the_points_per_slot(replay_server: ReplayServer) -> None:
    replay_server.add("/login", login_reply("t1"))
    replay_server.add("/v3/historical", fixture("watttime_historical__synthetic.json"))
    wt = watttime(replay_server, Clock(at("2022-07-16T00:00Z")))
    reading = wt.history(at("2022-07-14T22:00Z"), at("2022-07-14T23:00Z"))
    (request,) = replay_server.requests_to("/v3/historical")
    assert request.param("start") == "2022-07-14T22:00:00+00:00"
    assert request.param("end") == "2022-07-14T23:00:00+00:00"
    assert values(reading) == {
        "2022-07-14T22:00Z": pytest.approx(700 * LBS_PER_MWH_TO_G_PER_KWH),
        "2022-07-14T22:30Z": pytest.approx(720 * LBS_PER_MWH_TO_G_PER_KWH),  # 3 of 6 points is enough
    }
    assert {p.kind for p in reading.points} == {"actual"}


def test_watttime_units_and_conversion() -> None:
    assert pytest.approx(453.59237) == 1000 * LBS_PER_MWH_TO_G_PER_KWH
    doc = load("watttime_forecast__synthetic.json")
    assert isinstance(doc, dict)
    doc["meta"]["units"] = "kg_co2_per_mwh"
    with pytest.raises(ForecastFormatError, match="units 'kg_co2_per_mwh'"):
        parse_moer(doc, "watttime", 0, "forecast")


# -- every client is a Provider -----------------------------------------------------------------


def test_clients_satisfy_the_provider_protocol() -> None:
    client = HttpClient("p", "http://127.0.0.1:9")
    providers: list[Provider] = [
        NesoCarbon(client),
        AgilePrice(client, "C"),
        ElexonMarketIndex(client),
        ElectricityMapsCarbon(client, "GB", "token"),
        WattTimeCarbon(client, "CAISO_NORTH", "u", "p"),
    ]
    assert [p.quantity for p in providers] == ["carbon", "price", "price", "carbon", "carbon"]
    assert len({p.name for p in providers}) == 5
