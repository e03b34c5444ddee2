"""Grid signals: carbon intensity and price forecasts as half-hourly series."""

from slurm_flex.grid.filesource import FileSource, load_series_file
from slurm_flex.grid.series import SLOT_SECONDS, SignalSeries, floor_slot, iso_utc

__all__ = ["SLOT_SECONDS", "FileSource", "SignalSeries", "floor_slot", "iso_utc", "load_series_file"]
