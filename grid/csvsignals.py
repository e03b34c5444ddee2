"""The one reader of carbon-intensity and price CSV files, and the column names they may use.

Both the daemon's forecast files (:mod:`slurm_flex.grid.filesource`, strict: every slot on a
half-hour boundary, with a zone) and the simulator's history (:mod:`slurm_flex.simulate.signals`,
lenient: any interval, averaged to half-hours) read their CSVs here, so a file one of them
takes, the other finds its columns in too. Values come back as the text in the file; each
caller decides what a valid value is.

Columns, first match wins:

* time: ``from`` (NESO exports, slurm-flex's own files), ``start``, ``period_start_utc``
  (Elexon exports), ``Time``/``time``/``datetime``/``Datetime (UTC)`` (other datasets);
* carbon: ``carbon_g_per_kwh``, ``forecast`` (NESO), else the first column whose name contains
  "carbon" or is "intensity";
* measured carbon: ``actual`` (NESO);
* price: ``price_gbp_per_mwh``, ``market_index_price_gbp_per_mwh`` (Elexon), ``price``;
* ``to``: a slot's end, checked by the forecast reader where present.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from slurm_flex.errors import ForecastFormatError

TIME_COLUMNS = ("from", "start", "period_start_utc", "Time", "time", "datetime", "Datetime (UTC)")
CARBON_COLUMNS = ("carbon_g_per_kwh", "forecast")
ACTUAL_COLUMNS = ("actual",)
PRICE_COLUMNS = ("price_gbp_per_mwh", "market_index_price_gbp_per_mwh", "price")
END_COLUMNS = ("to",)


@dataclass(frozen=True)
class SignalColumns:
    """Which of a file's columns hold what (None: the file has no such column)."""

    header: tuple[str, ...]
    time: str | None
    carbon: str | None
    actual: str | None
    price: str | None
    end: str | None


@dataclass(frozen=True)
class SignalRow:
    """One data line as text (None where the file has no such column); ``where`` is file:line."""

    where: str
    time: str
    carbon: str | None
    actual: str | None
    price: str | None
    end: str | None


def _pick(header: Sequence[str], candidates: Sequence[str]) -> str | None:
    return next((c for c in candidates if c in header), None)


def _cell(record: dict[str, str], column: str | None) -> str | None:
    return None if column is None else record[column]


def signal_columns(header: Sequence[str]) -> SignalColumns:
    time_col = _pick(header, TIME_COLUMNS)
    carbon = _pick(header, CARBON_COLUMNS) or next(
        (c for c in header if c != time_col and ("carbon" in c.lower() or c.lower() == "intensity")), None
    )
    return SignalColumns(
        header=tuple(header),
        time=time_col,
        carbon=carbon,
        actual=_pick(header, ACTUAL_COLUMNS),
        price=_pick(header, PRICE_COLUMNS),
        end=_pick(header, END_COLUMNS),
    )


def read_signal_csv(path: Path) -> tuple[SignalColumns, list[SignalRow]]:
    """The file's columns and its data lines. Raises :class:`ForecastFormatError` (naming the
    file, and the line where there is one) for a file that is not UTF-8 CSV with a header and
    no line longer than it; a missing column is the caller's to judge."""
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            columns = signal_columns(reader.fieldnames or [])
            rows = []
            for record in reader:
                where = f"{path}:{reader.line_num}"
                if None in record:  # more fields than the header
                    raise ForecastFormatError(f"{where}: more fields than the header has")
                if columns.time is None:
                    continue  # the caller says what is missing
                rows.append(
                    SignalRow(
                        where=where,
                        time=record[columns.time] or "",
                        carbon=_cell(record, columns.carbon),
                        actual=_cell(record, columns.actual),
                        price=_cell(record, columns.price),
                        end=_cell(record, columns.end),
                    )
                )
            return columns, rows
    except UnicodeDecodeError as exc:
        raise ForecastFormatError(f"{path}: not UTF-8 text") from exc
    except csv.Error as exc:
        raise ForecastFormatError(f"{path}: malformed CSV: {exc}") from exc
