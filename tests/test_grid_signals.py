"""Grid signals for planning: the cache of issued forecasts, profiles past the horizon, and the
fallback chain (fresh forecast -> last good forecast -> profile -> no signal)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from slurm_flex.errors import ForecastError, ProviderError, ProviderRateLimited
from slurm_flex.grid.cache import GridCache
from slurm_flex.grid.profile import DAY, WEEK, profile
from slurm_flex.grid.readings import Point, Quantity, Reading, make_reading
from slurm_flex.grid.report import signal_summary
from slurm_flex.grid.series import SLOT_SECONDS
from slurm_flex.grid.signals import ProviderFeed, SignalPolicy, SiteSignals
from slurm_flex.status import build_status, render_status

T0 = 1_700_000_000 // SLOT_SECONDS * SLOT_SECONDS  # a slot start (2023-11-14T22:00Z)


class ScriptedProvider:
    """A provider whose answers a test scripts: a reading, or an exception, per call."""

    def __init__(self, name: str, quantity: Quantity) -> None:
        self._name = name
        self._quantity: Quantity = quantity
        self.answers: list[Reading | Exception] = []
        self.history_answer: Reading | Exception = ProviderError(name, "no history")
        self.calls: list[int] = []

    @property
    def name(self) -> str:
        return self._name

    @property
    def quantity(self) -> Quantity:
        return self._quantity

    def fetch(self, now: int) -> Reading:
        self.calls.append(now)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def history(self, start: int, end: int) -> Reading:
        if isinstance(self.history_answer, Exception):
            raise self.history_answer
        return self.history_answer


def forecast(name: str, start: int, values: list[float], quantity: Quantity = "carbon") -> Reading:
    points = [Point(start + i * SLOT_SECONDS, v, "forecast") for i, v in enumerate(values)]
    return make_reading(quantity, points, name, start)


@pytest.fixture
def cache(tmp_path: Path) -> GridCache:
    return GridCache(tmp_path / "grid.sqlite3")


# -- readings -------------------------------------------------------------------------------------


def test_a_reading_prefers_actuals_and_rejects_contradictions_and_garbage() -> None:
    r = make_reading(
        "carbon",
        [Point(T0 + SLOT_SECONDS, 100, "forecast"), Point(T0, 90, "forecast"), Point(T0, 95, "actual")],
        "x",
        T0,
    )
    assert [(p.start - T0, p.value, p.kind) for p in r.points] == [(0, 95, "actual"), (SLOT_SECONDS, 100, "forecast")]
    with pytest.raises(ForecastError, match="given twice"):
        make_reading("carbon", [Point(T0, 1, "forecast"), Point(T0, 2, "forecast")], "x", T0)
    with pytest.raises(ForecastError, match="outside"):
        make_reading("carbon", [Point(T0, -5, "forecast")], "x", T0)
    with pytest.raises(ForecastError, match="half-hour"):
        make_reading("price", [Point(T0 + 60, 5, "forecast")], "x", T0)
    assert make_reading("price", [Point(T0, -12.5, "forecast")], "x", T0).points[0].value == -12.5  # plunge pricing


# -- profiles -------------------------------------------------------------------------------------


def test_profile_uses_the_same_half_hour_of_past_weeks_then_of_past_days() -> None:
    history = {T0 - k * WEEK: 100.0 + k for k in (1, 2, 3)}
    history.update({T0 + SLOT_SECONDS - k * DAY: 50.0 for k in (1, 2)})
    out = profile(history, [T0, T0 + SLOT_SECONDS, T0 + 2 * SLOT_SECONDS])
    assert out[T0] == 102.0  # median of 101, 102, 103
    assert out[T0 + SLOT_SECONDS] == 50.0  # no weekly history: daily
    assert T0 + 2 * SLOT_SECONDS not in out  # nothing known


def test_profile_never_uses_values_from_the_period_it_stands_in_for() -> None:
    history = {T0 + k * SLOT_SECONDS: 999.0 for k in range(48 * 8)}  # "future" values
    history[T0 - DAY] = 10.0
    assert profile(history, [T0, T0 + 3 * DAY]) == {T0: 10.0, T0 + 3 * DAY: 10.0}


@given(offset=st.integers(0, 48 * 30), known=st.lists(st.integers(1, 48 * 60), max_size=40))
@settings(max_examples=100, deadline=None)
def test_profile_values_come_from_strictly_earlier_slots(offset: int, known: list[int]) -> None:
    start = T0 + offset * SLOT_SECONDS
    history = {start - k * SLOT_SECONDS: float(k) for k in known}
    for t, v in profile(history, [start, start + 5 * DAY]).items():
        assert t % SLOT_SECONDS == 0
        # A median of past values: within their range (the mean of the middle two when even).
        assert min(history.values()) <= v <= max(history.values())


# -- the cache ------------------------------------------------------------------------------------


def test_cache_keeps_readings_as_issued_and_the_best_history(cache: GridCache) -> None:
    cache.store(forecast("neso", T0, [100, 110, 120]), fetched_at=T0)
    later = make_reading(
        "carbon", [Point(T0, 105, "actual"), Point(T0 + SLOT_SECONDS, 111, "forecast")], "neso", T0 + SLOT_SECONDS
    )
    cache.store(later, fetched_at=T0 + SLOT_SECONDS)
    latest = cache.latest("neso")
    assert latest is not None and latest.fetched_at == T0 + SLOT_SECONDS and latest.reading == later
    # Actual beats forecast; of forecasts, the one issued last before the slot began wins.
    assert cache.history("neso", T0, T0 + 3 * SLOT_SECONDS) == {
        T0: 105.0,
        T0 + SLOT_SECONDS: 111.0,
        T0 + 2 * SLOT_SECONDS: 120.0,
    }
    assert [r.issued_at for r in cache.issued_forecasts("neso", T0, T0 + DAY)] == [T0, T0 + SLOT_SECONDS]
    assert cache.prune(T0 + 1) == 1 and cache.latest("neso") == latest


def test_cache_survives_reopening(tmp_path: Path) -> None:
    with GridCache(tmp_path / "g.sqlite3") as c:
        c.store(forecast("a", T0, [1.0]), fetched_at=T0)
        c.record_fetch("a", "forecast", T0, True, 0.1)
    with GridCache(tmp_path / "g.sqlite3") as c:
        stored = c.latest("a")
        last = c.last_fetch("a")
        assert stored is not None and stored.reading.points[0].value == 1.0
        assert last is not None and last.ok


# -- the fallback chain ---------------------------------------------------------------------------

POLICY = SignalPolicy(horizon_hours=24, max_forecast_age_seconds=6 * 3600)


def site(cache: GridCache, carbon: ScriptedProvider, price: ScriptedProvider | None = None) -> SiteSignals:
    feeds = [ProviderFeed(p, cache, 900, POLICY) for p in (carbon, price) if p is not None]
    return SiteSignals("cam", feeds[0], feeds[1] if price else None, POLICY)


def test_fresh_forecast_then_profile_past_its_end(cache: GridCache) -> None:
    neso = ScriptedProvider("neso", "carbon")
    neso.answers = [forecast("neso", T0, [200.0] * 96)]
    neso.history_answer = forecast("neso", T0 - 7 * DAY, [80.0] * (7 * 48))
    series = site(cache, neso).forecast(T0 + 60)
    assert len(series) == 48 and series.carbon[0] == 200.0 and not series.notes
    assert [(s.origin, s.start - T0, s.end - T0) for s in series.segments] == [("forecast", 0, 24 * 3600)]
    longer = SiteSignals("cam", ProviderFeed(neso, cache, 900, POLICY), None, SignalPolicy(horizon_hours=72))
    series = longer.forecast(T0 + 60)
    assert [s.origin for s in series.segments] == ["forecast", "profile"]
    assert series.carbon[96] == 80.0 and len(series) == 144


def test_provider_is_asked_at_most_once_per_interval_and_per_cycle(cache: GridCache) -> None:
    neso = ScriptedProvider("neso", "carbon")
    neso.answers = [forecast("neso", T0, [200.0] * 96)]
    shared = ProviderFeed(neso, cache, 900, POLICY)
    a, b = SiteSignals("a", shared, None, POLICY), SiteSignals("b", shared, None, POLICY)
    a.forecast(T0), b.forecast(T0)
    a.forecast(T0 + 600)
    assert neso.calls == [T0]  # two sites in one cycle, then within min_interval: one call
    a.forecast(T0 + 900)
    assert neso.calls == [T0, T0 + 900]


def test_outage_last_good_forecast_then_profile_then_no_signal(cache: GridCache) -> None:
    neso = ScriptedProvider("neso", "carbon")
    neso.answers = [forecast("neso", T0, [150.0] * 96), ProviderError("neso", "HTTP 503", 503)]
    neso.history_answer = forecast("neso", T0 - 14 * DAY, [90.0] * (14 * 48))
    s = site(cache, neso)
    assert s.forecast(T0).notes == ()
    # 2 h into the outage: the last good forecast, said so.
    two_h = s.forecast(T0 + 2 * 3600)
    assert two_h.carbon[0] == 150.0 and {seg.origin for seg in two_h.segments} >= {"last good forecast"}
    assert any("HTTP 503" in n and "2.0 h ago" in n for n in two_h.notes)
    # 12 h in: too old; a profile from history.
    twelve_h = s.forecast(T0 + 12 * 3600)
    assert twelve_h.carbon[0] == 90.0 and {seg.origin for seg in twelve_h.segments} == {"profile"}
    assert any("profile" in n for n in twelve_h.notes)
    # With no history either, there is no signal: the daemon runs jobs as submitted.
    bare = GridCache(cache.path.with_name("bare.sqlite3"))
    down = ScriptedProvider("down", "carbon")
    down.answers = [ProviderError("down", "connection refused")]
    with pytest.raises(ForecastError, match=r"no carbon signal.*connection refused"):
        site(bare, down).forecast(T0)


def test_failing_provider_backs_off_and_429_is_honoured(cache: GridCache) -> None:
    neso = ScriptedProvider("neso", "carbon")
    neso.answers = [ProviderError("neso", "timed out")]
    feed = ProviderFeed(neso, cache, 900, POLICY)
    for t in range(0, 3600, 30):
        feed.refresh(T0 + t)
    # Retried after 1, 2, 4, 8, 16, 32 minutes: not every 30 s, not only every 15 min.
    gaps = [b - a for a, b in zip(neso.calls, neso.calls[1:], strict=False)]
    assert gaps[:5] == [60, 120, 240, 480, 960] and len(neso.calls) <= 8
    agile = ScriptedProvider("agile", "price")
    agile.answers = [ProviderRateLimited("agile", 1800)]
    limited = ProviderFeed(agile, cache, 60, POLICY)
    for t in range(0, 1800, 60):
        limited.refresh(T0 + t)
    assert agile.calls == [T0]  # nothing until Retry-After has passed
    limited.refresh(T0 + 1800)
    assert agile.calls == [T0, T0 + 1800]


def test_a_provider_bug_is_a_soft_failure(cache: GridCache) -> None:
    buggy = ScriptedProvider("buggy", "carbon")
    buggy.answers = [KeyError("intensity")]
    status = ProviderFeed(buggy, cache, 900, POLICY).refresh(T0)
    assert status.asked and not status.ok and "intensity" in status.error


def test_price_gaps_stay_nan_and_do_not_cut_the_carbon_horizon(cache: GridCache) -> None:
    neso = ScriptedProvider("neso", "carbon")
    neso.answers = [forecast("neso", T0, [150.0] * 96)]
    agile = ScriptedProvider("agile", "price")
    agile.answers = [forecast("agile", T0, [20.0] * 10, "price")]
    series = site(cache, neso, agile).forecast(T0)
    assert len(series) == 48 and series.price[9] == 20.0 and math.isnan(series.price[10])
    assert {(s.quantity, s.origin) for s in series.segments} == {("carbon", "forecast"), ("price", "forecast")}


def test_status_shows_each_sites_signals_and_fallbacks_once(cache: GridCache) -> None:
    neso = ScriptedProvider("neso", "carbon")
    neso.answers = [forecast("neso", T0, [150.0] * 96), ProviderError("neso", "HTTP 503", 503)]
    neso.history_answer = forecast("neso", T0 - 14 * DAY, [90.0] * (14 * 48))
    s = site(cache, neso)
    fresh = signal_summary(s.forecast(T0), s.name)
    assert not fresh["fallback"]
    assert [(p["origin"], p["hours"]) for p in fresh["parts"]] == [("forecast", 24.0)]  # the policy horizon
    outage = s.forecast(T0 + 12 * 3600)
    later = signal_summary(outage, s.name)
    assert later["fallback"] and later["notes"] == list(outage.notes)
    none = signal_summary(None, "site x: down", "site x: no carbon signal for now")
    doc = build_status({}, [], "enforce", now=T0, signals={"lab": later, "x": none})
    console = Console(record=True, width=300)
    render_status(doc, console)
    text = console.export_text()
    assert "signals, site lab: carbon neso PROFILE 24 h" in text
    assert "signals, site x: NONE, jobs run as submitted (site x: no carbon signal for now)" in text
    assert text.count("HTTP 503") == 1 and "fallback: neso: last good answer is 12.0 h old" in text
