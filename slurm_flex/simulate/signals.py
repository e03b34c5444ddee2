"""Historical grid signals for simulation: what was forecast (to plan with) and what happened
(to charge), half-hourly.

CSV files are read by :mod:`slurm_flex.grid.csvsignals`, the reader forecast files use too
(it names the columns). Carbon: NESO exports (``from``, ``forecast``, ``actual``) give both;
files with a single intensity column (e.g. "Let's Wait Awhile": ``Time``, ``Carbon Intensity``)
are used as both forecast and actual, i.e. planning with perfect foresight. Finer data (15 min)
is averaged to half-hours; naive timestamps are UTC. Price: Elexon exports
(``period_start_utc``, ``market_index_price_gbp_per_mwh``) or any file with a time column and a
price column.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd

from slurm_flex.errors import ForecastFormatError, SignalsError
from slurm_flex.grid.csvsignals import PRICE_COLUMNS, TIME_COLUMNS, SignalColumns, SignalRow, read_signal_csv
from slurm_flex.grid.series import SLOT_SECONDS

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class SimSignals:
    start: int  # epoch of slot 0
    forecast: FloatArray  # carbon g/kWh the planner sees
    actual: FloatArray  # carbon g/kWh that is charged
    price: FloatArray  # GBP/MWh (NaN when unknown)
    source: str
    perfect_foresight: bool

    @property
    def n_slots(self) -> int:
        return int(self.actual.shape[0])


def _read(path: Path, what: str) -> tuple[SignalColumns, list[SignalRow]]:
    """The columns and rows of a signal CSV that has a time column."""
    if not path.is_file():
        raise SignalsError(f"{what} file {path} does not exist")
    try:
        columns, rows = read_signal_csv(path)
    except ForecastFormatError as exc:
        raise SignalsError(str(exc)) from exc
    if columns.time is None:
        raise SignalsError(f"{path}: no time column (looked for {', '.join(TIME_COLUMNS)})")
    return columns, rows


def _half_hourly(
    rows: list[SignalRow], values: dict[str, list[str | None]], columns: SignalColumns, path: Path
) -> pd.DataFrame:
    try:
        t = pd.to_datetime(pd.Series([r.time for r in rows], dtype=object), utc=True)
    except (ValueError, TypeError) as exc:
        raise SignalsError(f"{path}: unreadable times in column {columns.time!r}") from exc
    frame = pd.DataFrame(
        {name: pd.to_numeric(pd.Series(col, dtype=object), errors="coerce") for name, col in values.items()}
    )
    frame.index = pd.DatetimeIndex(t)
    frame = frame[~frame.index.duplicated(keep="last")].sort_index()
    return frame.resample(f"{SLOT_SECONDS}s").mean()


def load_signals(carbon_path: Path, price_path: Path | None = None) -> SimSignals:
    columns, rows = _read(carbon_path, "carbon")
    if columns.carbon is None:
        raise SignalsError(f"{carbon_path}: needs forecast+actual columns or one carbon intensity column")
    forecast_values = [r.carbon for r in rows]
    perfect = columns.actual is None
    actual_values = forecast_values if perfect else [r.actual for r in rows]
    frame = _half_hourly(rows, {"forecast": forecast_values, "actual": actual_values}, columns, carbon_path)
    if not perfect:
        # An outturn of 0 g/kWh next to a positive forecast is a recording error, not a clean
        # half-hour (the NESO 2023 export has four, "very low", beside forecasts of 89-185):
        # charged as 0, it would hand the bound and the plan free energy. Missing instead.
        glitch = (frame["actual"] <= 0) & (frame["forecast"] > 0)
        frame.loc[glitch, "actual"] = np.nan
    # Short gaps are interpolated (the planner needs a value); actuals missing where a forecast
    # exists fall back to the forecast, and the other way round.
    frame["actual"] = frame["actual"].fillna(frame["forecast"])
    frame["forecast"] = frame["forecast"].fillna(frame["actual"])
    frame = frame.interpolate(limit_direction="both")
    if frame.empty or not np.isfinite(frame["actual"].to_numpy()).any():
        raise SignalsError(f"{carbon_path}: no carbon values")
    price = np.full(len(frame), np.nan)
    source = carbon_path.name
    if price_path is not None:
        price_columns, price_rows = _read(price_path, "price")
        if price_columns.price is None:
            raise SignalsError(f"{price_path}: no price column ({', '.join(PRICE_COLUMNS)})")
        price_values: dict[str, list[str | None]] = {"price": [r.price for r in price_rows]}
        prices = _half_hourly(price_rows, price_values, price_columns, price_path)["price"]
        price = prices.reindex(frame.index).interpolate(limit=4).to_numpy(dtype=float)
        source += f" + {price_path.name}"
    return SimSignals(
        start=int(frame.index[0].timestamp()),
        forecast=frame["forecast"].to_numpy(dtype=float),
        actual=frame["actual"].to_numpy(dtype=float),
        price=price,
        source=source,
        perfect_foresight=perfect,
    )
