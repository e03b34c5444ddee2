"""The file forecast source: real recorded data in, clear errors for every malformed input."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from slurm_flex.config import bundled_forecast
from slurm_flex.errors import ForecastError, ForecastFormatError
from slurm_flex.grid.filesource import FileSource, load_series_file
from slurm_flex.grid.series import SLOT_SECONDS, SignalSeries, floor_slot
from tests.conftest import FIXTURES

ALIGNED = floor_slot(1795250400)  # 2026-11-21T08:30Z


def test_bundled_real_forecast_loads() -> None:
    series = load_series_file(bundled_forecast())
    assert len(series) == 144
    assert series.start == 1700240400  # 2023-11-17T17:00Z
    assert series.carbon[:3] == (289.0, 290.0, 284.0)
    assert series.has_price and not any(math.isnan(c) for c in series.carbon)
    assert min(series.carbon) < 80 < 250 < max(series.carbon)


def test_recorded_neso_national_response() -> None:
    series = load_series_file(FIXTURES / "grid" / "intensity_fw48h__2024-01-12T0601Z.json")
    assert series.start == 1705039200  # 2024-01-12T06:00Z
    assert series.carbon == (293.0, 301.0, 304.0, 306.0, 305.0, 305.0, 308.0, 309.0)
    assert not series.has_price


def test_recorded_neso_regional_response_with_object_data() -> None:
    series = load_series_file(
        FIXTURES / "grid" / "regional_intensity_fw48h_regionid_13__2023-03-13T1201Z__first-3-windows.json"
    )
    assert len(series) == 3 and all(c > 0 for c in series.carbon)


def _csv(tmp_path: Path, body: str, name: str = "f.csv") -> Path:
    p = tmp_path / name
    p.write_text(body)
    return p


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("when,carbon\n", "needs a start column"),
        ("from,carbon_g_per_kwh\n", "no slots"),
        ("from,carbon_g_per_kwh\n2026-11-21T08:00,100\n", "has no zone"),
        ("from,carbon_g_per_kwh\n2026-11-21T08:10Z,100\n", "not on a half-hour boundary"),
        ("from,carbon_g_per_kwh\nyesterday,100\n", "unreadable time"),
        ("from,carbon_g_per_kwh\n2026-11-21T08:00Z,abc\n", "is not a number"),
        ("from,carbon_g_per_kwh\n2026-11-21T08:00Z,\n", "carbon intensity is missing"),
        ("from,carbon_g_per_kwh\n2026-11-21T08:00Z,-4\n", "outside 0..2000"),
        ("from,carbon_g_per_kwh\n2026-11-21T08:00Z,inf\n", "not finite"),
        ("from,carbon_g_per_kwh,price_gbp_per_mwh\n2026-11-21T08:00Z,100,99999\n", "implausible"),
        ("from,carbon_g_per_kwh\n2026-11-21T08:00Z,100\n2026-11-21T08:00Z,120\n", "duplicate slot"),
        ("from,to,carbon_g_per_kwh\n2026-11-21T08:00Z,2026-11-21T09:00Z,100\n", "expected 30"),
        ("from,carbon_g_per_kwh\n2026-11-21T08:00Z,100,7\n", "more fields than the header"),
        ("from,carbon_g_per_kwh\n2026-01-01T00:00Z,100\n2027-06-01T00:00Z,100\n", "more than a year"),
    ],
)
def test_malformed_csv_names_file_and_line(tmp_path: Path, body: str, message: str) -> None:
    path = _csv(tmp_path, body)
    with pytest.raises(ForecastFormatError, match=message) as info:
        load_series_file(path)
    assert str(path) in str(info.value)


def test_truncated_and_wrong_json(tmp_path: Path) -> None:
    for body, message in [
        ('{"data": [{"from": "2024-01-12T06:00Z", "intens', "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"rows": []}', "expected a 'slots' list"),
        ('{"data": [{"from": "2024-01-12T06:00Z"}]}', "expected an object with 'from' and 'intensity'"),
        ('{"data": [{"from": "2024-01-12T06:00Z", "intensity": {"forecast": null}}]}', "missing"),
        ('{"slots": [{"from": "2024-01-12T06:00Z", "carbon_g_per_kwh": "x"}]}', "not a number"),
    ]:
        path = _csv(tmp_path, body, "f.json")
        with pytest.raises(ForecastFormatError, match=message):
            load_series_file(path)


def test_unknown_suffix_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ForecastFormatError, match="unknown forecast file type"):
        load_series_file(_csv(tmp_path, "x", "f.txt"))
    with pytest.raises(ForecastError, match="does not exist"):
        load_series_file(tmp_path / "nope.csv")
    with pytest.raises(ForecastError, match="No such file"):
        FileSource(tmp_path / "nope.csv").forecast(0)


def test_out_of_order_rows_are_sorted_and_gaps_are_nan(tmp_path: Path) -> None:
    body = (
        "from,carbon_g_per_kwh,price_gbp_per_mwh\n"
        "2026-11-21T09:00Z,300,\n2026-11-21T08:00Z,100,50\n2026-11-21T08:30Z,200,60.5\n2026-11-21T10:30Z,50,1\n"
    )
    series = load_series_file(_csv(tmp_path, body))
    assert series.start == 1795248000
    assert series.carbon[:3] == (100.0, 200.0, 300.0)
    assert math.isnan(series.carbon[3]) and math.isnan(series.carbon[4]) and series.carbon[5] == 50.0
    assert series.price[1] == 60.5 and math.isnan(series.price[2])


def test_own_json_slots_format(tmp_path: Path) -> None:
    body = '{"slots": [{"from": "2026-11-21T08:00Z", "carbon_g_per_kwh": 120, "price_gbp_per_mwh": 80.5}]}'
    series = load_series_file(_csv(tmp_path, body, "f.json"))
    assert series.carbon == (120.0,) and series.price == (80.5,)


def test_replay_moves_the_series_and_window_crops() -> None:
    src = FileSource(bundled_forecast(), replay_from=ALIGNED + 600)
    series = src.forecast(ALIGNED + 1000)
    assert series.start == ALIGNED and series.carbon[0] == 289.0
    assert "replayed from 2023-11-17T17:00:00Z" in series.source
    later = series.window(ALIGNED + 3 * SLOT_SECONDS + 5, 2)
    assert later.start == ALIGNED + 3 * SLOT_SECONDS and later.carbon == series.carbon[3:5]
    assert series.covers(ALIGNED + 1) and not series.covers(series.end)


def test_file_source_rereads_a_changed_file(tmp_path: Path) -> None:
    path = _csv(tmp_path, "from,carbon_g_per_kwh\n2026-11-21T08:00Z,100\n")
    src = FileSource(path)
    assert src.forecast(0).carbon == (100.0,)
    path.write_text("from,carbon_g_per_kwh\n2026-11-21T08:00Z,150\n")
    os.utime(path, (1, 1))
    assert src.forecast(0).carbon == (150.0,)


def test_series_rejects_misaligned_start() -> None:
    with pytest.raises(ValueError, match="half-hour"):
        SignalSeries(start=ALIGNED + 60, carbon=(1.0,), price=(math.nan,), source="x")


def test_forecast_files_and_simulation_history_are_read_with_the_same_columns(tmp_path: Path) -> None:
    """One CSV reader (grid/csvsignals.py) behind both: the bundled forecast (from, to,
    carbon_g_per_kwh, price_gbp_per_mwh) is simulation history too, and a dataset's Time /
    Carbon Intensity columns are a forecast file too."""
    from slurm_flex.simulate.signals import load_signals

    bundled = load_series_file(bundled_forecast())
    history = load_signals(bundled_forecast(), bundled_forecast())
    assert history.start == bundled.start and list(history.forecast) == list(bundled.carbon)
    assert list(history.price) == list(bundled.price) and history.perfect_foresight
    other = _csv(tmp_path, "Time,Carbon Intensity,price\n2026-11-21T08:00Z,100,50\n2026-11-21T08:30Z,120,60\n")
    series = load_series_file(other)
    assert series.carbon == (100.0, 120.0) and series.price == (50.0, 60.0)
    assert list(load_signals(other, other).actual) == [100.0, 120.0]
