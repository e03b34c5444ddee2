"""Small builders shared by tests: forecast files and config files."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from slurm_flex.grid.series import SLOT_SECONDS, iso_utc


def write_forecast(path: Path, start: int, carbon: Sequence[float], price: Sequence[float] | None = None) -> Path:
    """A CSV forecast in the file-source format, one row per half-hour from ``start``."""
    lines = ["from,to,carbon_g_per_kwh,price_gbp_per_mwh"]
    for i, c in enumerate(carbon):
        t = start + i * SLOT_SECONDS
        p = "" if price is None or math.isnan(price[i]) else f"{price[i]}"
        lines.append(f"{iso_utc(t)},{iso_utc(t + SLOT_SECONDS)},{c},{p}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _toml_table(name: str, values: dict[str, object], out: list[str]) -> None:
    out.append(f"[{name}]")
    tables = {k: v for k, v in values.items() if isinstance(v, dict)}
    for key, value in values.items():
        if key not in tables:
            out.append(f"{key} = {_toml_value(value)}")
    out.append("")
    for key, value in tables.items():
        _toml_table(f"{name}.{key}", value, out)  # type: ignore[arg-type]


def write_config(path: Path, sections: dict[str, dict[str, object]]) -> Path:
    """A TOML config from nested dicts (tables nest; strings, numbers, booleans and lists)."""
    out: list[str] = []
    for section, values in sections.items():
        _toml_table(section, values, out)
    path.write_text("\n".join(out))
    return path
