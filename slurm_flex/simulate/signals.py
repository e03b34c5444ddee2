"""Historical grid signals for simulation: what was forecast (to plan with) and what happened
(to charge), half-hourly.

Carbon CSVs: NESO exports (``from``, ``forecast``, ``actual``) give both; files with a single
intensity column (e.g. "Let's Wait Awhile": ``Time``, ``Carbon Intensity``) are used as both
forecast and actual, i.e. planning with perfect foresight. Finer data (15 min) is averaged to
half-hours; naive timestamps are UTC. Price CSVs: Elexon exports (``period_start_utc``,
``market_index_price_gbp_per_mwh``) or any file with a time column and a ``price`` column.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd

from slurm_flex.errors import SlurmFlexError
from slurm_flex.grid.series import SLOT_SECONDS

FloatArray = npt.NDArray[np.float64]


class SignalsError(SlurmFlexError):
    """Grid data for a simulation could not be read."""


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


_TIME_COLUMNS = ("from", "Time", "time", "period_start_utc", "datetime", "Datetime (UTC)")


def _time_column(df: pd.DataFrame, path: Path) -> str:
    for c in _TIME_COLUMNS:
        if c in df.columns:
            return c
    raise SignalsError(f"{path}: no time column (looked for {', '.join(_TIME_COLUMNS)})")


def _half_hourly(df: pd.DataFrame, time_col: str, value_cols: list[str], path: Path) -> pd.DataFrame:
    try:
        t = pd.to_datetime(df[time_col], utc=True)
    except (ValueError, TypeError) as exc:
        raise SignalsError(f"{path}: unreadable times in column {time_col!r}") from exc
    frame = df[value_cols].apply(pd.to_numeric, errors="coerce")
    frame.index = t
    frame = frame[~frame.index.duplicated(keep="last")].sort_index()
    return frame.resample(f"{SLOT_SECONDS}s").mean()


def load_signals(carbon_path: Path, price_path: Path | None = None) -> SimSignals:
    if not carbon_path.is_file():
        raise SignalsError(f"carbon file {carbon_path} does not exist")
    df = pd.read_csv(carbon_path)
    time_col = _time_column(df, carbon_path)
    if {"forecast", "actual"} <= set(df.columns):
        frame = _half_hourly(df, time_col, ["forecast", "actual"], carbon_path)
        perfect = False
    else:
        value_cols = [c for c in df.columns if c != time_col and ("carbon" in c.lower() or c.lower() == "intensity")]
        if not value_cols:
            raise SignalsError(f"{carbon_path}: needs forecast+actual columns or one carbon intensity column")
        frame = _half_hourly(df, time_col, [value_cols[0]], carbon_path)
        frame.columns = ["actual"]
        frame["forecast"] = frame["actual"]
        perfect = True
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
        if not price_path.is_file():
            raise SignalsError(f"price file {price_path} does not exist")
        pdf = pd.read_csv(price_path)
        ptime = _time_column(pdf, price_path)
        pcols = [c for c in pdf.columns if c in ("market_index_price_gbp_per_mwh", "price_gbp_per_mwh", "price")]
        if not pcols:
            raise SignalsError(
                f"{price_path}: no price column (market_index_price_gbp_per_mwh, price_gbp_per_mwh, price)"
            )
        prices = _half_hourly(pdf, ptime, [pcols[0]], price_path)[pcols[0]]
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
