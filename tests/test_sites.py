"""Two sites in different GB regions, planned from live-shaped NESO regional and Octopus Agile
answers (a real HTTP server on 127.0.0.1, grid/replayserver.py) on the fake Slurm, then kept
planning through a 24 h outage of every provider.

The daemon's clock is stepped through the outage (``Cycle.run(now=...)``): the cycle, the
providers' calling discipline and the cache all take ``now`` from it, so a day passes in
seconds while the jobs (on the fake Slurm) and the HTTP server stay put."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import closing
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from slurm_flex.config import load_config
from slurm_flex.daemon.service import make_cycle, open_grid_cache
from slurm_flex.grid.replayserver import DAY, GridStandIn, RecordedGrid, serving
from slurm_flex.grid.series import SLOT_SECONDS, floor_slot, parse_iso_utc
from slurm_flex.state import SIGNALS_SETTING, StateStore
from tests.fake_cluster import FakeEnv

HOUR = 3600
SITES: dict[str, dict[str, Any]] = {
    # East England (NESO region 10) with Agile's Eastern region; North West England (region 3,
    # its recorded series lagged a day so its clean windows differ) with Agile's North West.
    "cambridge": {"partitions": ["debug"], "region_id": 10, "agile": "A", "lag": 0},
    "manchester": {"partitions": ["batch"], "region_id": 3, "agile": "G", "lag": 24},
}


@pytest.fixture
def stand_in() -> Iterator[tuple[GridStandIn, str, list[float]]]:
    offset = [0.0]  # how far the daemon's (and the stand-in's) clock runs ahead of real time
    grid = RecordedGrid.bundled(floor_slot(time.time()) - DAY)
    server = GridStandIn(
        grid,
        lag_hours={s["region_id"]: s["lag"] for s in SITES.values()},
        clock=lambda: time.time() + offset[0],
    )
    with serving(server) as url:
        yield server, url, offset


def _configure(env: FakeEnv, url: str) -> None:
    sites: dict[str, object] = {
        name: {
            "partitions": s["partitions"],
            "carbon": {"provider": "neso", "region_id": s["region_id"]},
            "price": {"provider": "octopus-agile", "region": s["agile"]},
        }
        for name, s in SITES.items()
    }
    env.reconfigure(
        sites=sites,  # type: ignore[arg-type]
        providers={"neso": {"base_url": url, "retries": 0}, "octopus": {"base_url": url, "retries": 0}},
        signals={"max_forecast_age_hours": 6},
    )


def _signals(env: FakeEnv) -> dict[str, Any]:
    with closing(StateStore(env.tmp / "state" / "state.sqlite3")) as store:
        return json.loads(store.setting(SIGNALS_SETTING) or "{}")  # type: ignore[no-any-return]


def _origins(sig: dict[str, Any], quantity: str) -> dict[str, float]:
    return {p["origin"]: p["hours"] for p in sig["parts"] if p["quantity"] == quantity}


def _served_mean(server: GridStandIn, site: str, start: int) -> float:
    """Mean intensity the stand-in serves for a site's region over a 1 h job from ``start``."""
    region_id, lag_slots = SITES[site]["region_id"], SITES[site]["lag"] * 2
    return sum(server.grid.carbon_at(start + i * SLOT_SECONDS, region_id, lag_slots) for i in (0, 1)) / 2


def _agile_forecast_calls(server: GridStandIn, region: str) -> int:
    """Agile requests for the coming 48 h (the forecast fetch, not history)."""
    calls = 0
    for path in server.requests:
        query = parse_qs(urlsplit(path).query)
        if f"-{region}/standard-unit-rates/" in path and "period_from" in query:
            span = parse_iso_utc(query["period_to"][0]) - parse_iso_utc(query["period_from"][0])
            calls += span == 2 * DAY  # the fetch horizon; history asks other spans
    return calls


def test_two_sites_plan_on_their_own_regions_and_survive_a_day_without_providers(
    fake_env: FakeEnv, stand_in: tuple[GridStandIn, str, list[float]]
) -> None:
    env = fake_env
    server, url, offset = stand_in
    _configure(env, url)
    config = load_config(env.config, environ={})
    jobs = {
        "cambridge": env.submit_flexible(hours=40, minutes=60, partition="debug"),
        "manchester": env.submit_flexible(hours=40, minutes=60, partition="batch"),
    }
    store = StateStore(config.state_db)
    grid = open_grid_cache(config)
    assert grid is not None
    cycle = make_cycle(config, store, grid)

    def run_at(hours: float) -> dict[str, Any]:
        offset[0] = hours * HOUR
        result = cycle.run(now=time.time() + offset[0])
        assert result.ok, result.message
        return env.status()

    try:
        # -- providers up: each site plans on its own region's forecast and prices ------------
        status = run_at(0)
        signals = _signals(env)
        for name, s in SITES.items():
            assert server.count(rf"/fw48h/regionid/{s['region_id']}$") == 1
            assert server.count(rf"E-1R-AGILE-24-10-01-{s['agile']}/standard-unit-rates/\?.*period_from") >= 1
            assert _origins(signals[name], "carbon")["forecast"] >= 47.5  # fw48h, then profile
            assert "forecast" in _origins(signals[name], "price")
            assert not signals[name]["fallback"] and not signals[name]["notes"]
            job = status["jobs"][jobs[name]]
            assert job["status"] == "deferred", job
            assert job["partition"] == s["partitions"][0]
            # The planned window's intensity is this region's, as the stand-in served it.
            planned = _served_mean(server, name, parse_iso_utc(job["planned_start"]))
            assert job["carbon_intensity_planned_g_per_kwh"] == pytest.approx(planned, abs=0.06)
            assert job["carbon_intensity_planned_g_per_kwh"] < job["carbon_intensity_baseline_g_per_kwh"]
            # Running now means from the job's eligible slot: this one, or the next when the
            # hook's grace crossed a slot boundary.
            now_slot = floor_slot(time.time())
            baselines = [round(_served_mean(server, name, now_slot + k * SLOT_SECONDS), 1) for k in (0, 1)]
            assert job["carbon_intensity_baseline_g_per_kwh"] in baselines
        # Agile follows one national wholesale price, so both sites may well pick the same cheap
        # window; what differs is the carbon each saves there.
        cambridge, manchester = (status["jobs"][jobs[n]] for n in SITES)
        assert cambridge["carbon_intensity_baseline_g_per_kwh"] != manchester["carbon_intensity_baseline_g_per_kwh"]
        text = env.slurmflex("status").stdout
        assert "signals, site cambridge: carbon neso:regionid=10 forecast" in text

        asked_before = len(server.requests)
        run_at(0.1)  # within the providers' minimum intervals: nobody is asked again
        assert len(server.requests) == asked_before

        # -- every provider down for a day: last good forecast, then profile ----------------
        server.down = True
        outage_cycles = 0
        for hours in (1, 3, 5, 7, 10, 14, 18, 22, 24):
            status = run_at(hours)
            outage_cycles += 1
            signals = _signals(env)
            for name in SITES:
                sig = signals[name]
                assert sig["ok"] and sig["fallback"], sig
                carbon = _origins(sig, "carbon")
                if hours <= 6:
                    assert "last good forecast" in carbon and "forecast" not in carbon, sig
                    assert any("using its forecast from" in n for n in sig["notes"])
                else:
                    assert set(carbon) == {"profile"}, sig
                    assert any("planning on a profile from history" in n for n in sig["notes"])
                job = status["jobs"][jobs[name]]
                assert job["status"] in ("deferred", "runs-now"), job
                assert parse_iso_utc(job["planned_start"]) <= parse_iso_utc(job["latest_safe_start"])
        text = env.slurmflex("status").stdout
        assert "fallback: neso:regionid=3" in text and "PROFILE" in text
        # Never more than one forecast call per provider per cycle (the outage's cycles are hours
        # apart, longer than the feeds' backoff, so each one asks once).
        forecast_calls = [
            server.count(r"/fw48h/regionid/10$"),
            server.count(r"/fw48h/regionid/3$"),
            _agile_forecast_calls(server, "A"),
            _agile_forecast_calls(server, "G"),
        ]
        assert forecast_calls == [1 + outage_cycles] * 4, forecast_calls

        # -- providers back: fresh forecasts again, no fallback ------------------------------
        server.down = False
        status = run_at(25)
        signals = _signals(env)
        for name in SITES:
            assert not signals[name]["fallback"], signals[name]
            assert "forecast" in _origins(signals[name], "carbon")
            assert status["jobs"][jobs[name]]["status"] in ("deferred", "runs-now")
    finally:
        store.close()
        grid.close()
