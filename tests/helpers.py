"""Small builders shared by tests: forecast files, config files, and the slurm-flex environment
the daemon tests drive (on the local cluster or on the fake one)."""

from __future__ import annotations

import json
import math
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slurm_flex.grid.series import SLOT_SECONDS, floor_slot, iso_utc
from slurm_flex.state import StateStore


def write_forecast(path: Path, start: int, carbon: Sequence[float], price: Sequence[float] | None = None) -> Path:
    """A CSV forecast in the file-source format, one row per half-hour from ``start``."""
    lines = ["from,to,carbon_g_per_kwh,price_gbp_per_mwh"]
    for i, c in enumerate(carbon):
        t = start + i * SLOT_SECONDS
        p = "" if price is None or math.isnan(price[i]) else f"{price[i]}"
        lines.append(f"{iso_utc(t)},{iso_utc(t + SLOT_SECONDS)},{c},{p}")
    path.write_text("\n".join(lines) + "\n")
    return path


def forecast_from_now(path: Path, carbon: Sequence[float]) -> int:
    """A carbon forecast from the current slot, written just before the cycle that reads it (a
    fixture's slot may have ended by then); returns that slot."""
    slot0 = floor_slot(time.time())
    write_forecast(path, slot0, carbon)
    return slot0


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


def clean_windows_forecast(tmp: Path) -> tuple[Path, int]:
    """A forecast from the current slot whose clean windows sit 4 h (slots 8-9, 40 g/kWh) and
    15 h (slots 30-33, 5 g/kWh) later; returns (file, first slot)."""
    slot0 = floor_slot(time.time())
    carbon = [300.0] * 96
    carbon[8:10] = [40.0, 40.0]
    carbon[30:34] = [5.0] * 4
    return write_forecast(tmp / "forecast.csv", slot0, carbon), slot0


def write_env_config(
    tmp: Path,
    forecast: Path,
    slurm_conf: Path | None = None,
    chroot: Path | None = None,
    **sections: dict[str, object],
) -> Path:
    """The config the daemon tests run with (against a local cluster, in its chroot if it has
    one, or the fake one)."""
    slurm: dict[str, object] = {"slurm_conf": str(slurm_conf)} if slurm_conf is not None else {}
    if chroot is not None:
        slurm["chroot"] = str(chroot)
    base: dict[str, dict[str, object]] = {
        "daemon": {"state_dir": str(tmp / "state"), "log_format": "json"},
        "slurm": slurm,
        "forecast": {"path": str(forecast)},
        # Single-job windows on (not the default): most daemon tests follow one job into its
        # window; tests/test_shaping.py turns them off to test load shaping alone.
        "policy": {"safety_margin_seconds": 900, "min_saving_fraction": 0.05, "defer_to_windows": True},
        "flex": {"grace_seconds": 120},
        "power": {"cpus_per_node": 2},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return write_config(tmp / "slurmflex.toml", base)


@dataclass
class FlexEnv:
    """A slurm-flex config (state dir, forecast) and its CLI: what tests.conftest.Env (the local
    cluster) and tests.fake_cluster.FakeEnv (the fake Slurm) have in common."""

    tmp: Path
    config: Path
    forecast: Path
    slot0: int  # the forecast's first slot: its clean windows sit at fixed times from here

    def slurmflex(self, *args: str) -> subprocess.CompletedProcess[str]:
        raise NotImplementedError

    def load_history(self, nodes: float, site: str = "default", interval: int = 300) -> None:
        """A day of the site's busy nodes, as the daemon records them every cycle: what it takes
        the work still to come to be (the arrival reserve, load shaping), whatever a cluster that
        other tests just used shows at the moment."""
        now = int(time.time())
        with self.store() as store:
            for k in range(86400 // interval, 0, -1):
                store.record_load(site, now - interval * k, nodes)

    def status(self) -> dict[str, Any]:
        return json.loads(self.slurmflex("status", "--json", "--all").stdout)  # type: ignore[no-any-return]

    def store(self) -> StateStore:
        return StateStore(self.tmp / "state" / "state.sqlite3")
