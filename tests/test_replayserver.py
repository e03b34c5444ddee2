"""The NESO/Agile stand-in (grid/replayserver.py) speaks the shapes the real clients parse."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from slurm_flex.errors import ProviderError
from slurm_flex.grid.http import HttpClient
from slurm_flex.grid.neso import NesoCarbon
from slurm_flex.grid.octopus import AgilePrice
from slurm_flex.grid.replayserver import REGIONS, GridStandIn, RecordedGrid, agile_published_until, serving
from slurm_flex.grid.series import SLOT_SECONDS

NOW = int(datetime(2026, 1, 15, 10, 7, tzinfo=UTC).timestamp())  # GMT: UK time = UTC


def test_regional_forecast_is_the_recording_scaled_and_lagged_per_region() -> None:
    grid = RecordedGrid.bundled(NOW)
    stand_in = GridStandIn(grid, lag_hours={3: 24}, clock=lambda: NOW)
    with serving(stand_in) as url:
        east = NesoCarbon(HttpClient("neso", url), region_id=10).fetch(NOW)
        north_west = NesoCarbon(HttpClient("neso", url), postcode="M1").fetch(NOW)
    slot0 = NOW // SLOT_SECONDS * SLOT_SECONDS
    assert east.points[0].start == slot0 and len(east.points) >= 96
    assert east.points[0].value == round(grid.carbon[0] * REGIONS[10][2])
    # North West (postcode M1 -> region 3) runs the recording a day late.
    assert north_west.points[0].value == round(grid.carbon[len(grid.carbon) - 48] * REGIONS[3][2])
    assert stand_in.count(r"/fw48h/postcode/M1$") == 1


def test_agile_rates_appear_at_four_pm_uk_time_for_the_next_day() -> None:
    morning = int(datetime(2026, 1, 15, 10, 0, tzinfo=UTC).timestamp())
    evening = int(datetime(2026, 1, 15, 16, 30, tzinfo=UTC).timestamp())
    assert agile_published_until(morning) == int(datetime(2026, 1, 15, 23, 0, tzinfo=UTC).timestamp())
    assert agile_published_until(evening) == int(datetime(2026, 1, 16, 23, 0, tzinfo=UTC).timestamp())
    stand_in = GridStandIn(RecordedGrid.bundled(morning), clock=lambda: morning)
    with serving(stand_in) as url:
        reading = AgilePrice(HttpClient("octopus", url), "C").fetch(morning)
    assert [p.start for p in reading.points] == list(range(morning, agile_published_until(morning), SLOT_SECONDS))
    grid = stand_in.grid
    for p in reading.points:  # p/kWh excluding VAT -> GBP/MWh; the peak adder only 16:00-19:00
        assert p.value == pytest.approx(grid.agile_at(p.start, "C") * 10)
        wholesale = grid.price[(p.start - grid.anchor) // SLOT_SECONDS % len(grid.price)] / 10
        in_peak = datetime.fromtimestamp(p.start, UTC).hour in (16, 17, 18)
        expected = min(100.0, wholesale * 2.0 + (12.0 if in_peak else 0.0))  # region C: x2.0, +12p
        assert grid.agile_at(p.start, "C") == pytest.approx(expected, abs=0.005)


def test_down_means_http_503_for_every_request() -> None:
    stand_in = GridStandIn(RecordedGrid.bundled(NOW), clock=lambda: NOW, down=True)
    with serving(stand_in) as url, pytest.raises(ProviderError, match="HTTP 503"):
        NesoCarbon(HttpClient("neso", url, retries=0), region_id=10).fetch(NOW)
