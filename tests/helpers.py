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


def write_config(path: Path, sections: dict[str, dict[str, object]]) -> Path:
    """A TOML config from nested dicts (strings, numbers, booleans and lists only)."""
    out = []
    for section, values in sections.items():
        out.append(f"[{section}]")
        for key, value in values.items():
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, (int, float)):
                text = repr(value)
            elif isinstance(value, (list, tuple)):
                text = "[" + ", ".join(f'"{v}"' for v in value) + "]"
            else:
                text = f'"{value}"'
            out.append(f"{key} = {text}")
        out.append("")
    path.write_text("\n".join(out))
    return path
