"""The daemon's planning inputs as the Beckn endpoint reads them: each cycle the daemon writes
``<state_dir>/beckn/flex-input.json`` (planning snapshot, forecast and running jobs of the
site, and with several sites what the others plan to draw), so the endpoint quotes from the
live plan without reading Slurm itself, and keeps answering (with what it last knew, and
saying how old that is) while the daemon is down."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from slurm_flex.beckn.flexibility import RunningLoad
from slurm_flex.grid.series import SignalSeries
from slurm_flex.planner.queue import (
    PlanningSnapshot,
    series_from_json,
    series_to_json,
    snapshot_from_json,
    snapshot_to_json,
)

FILE = "flex-input.json"


@dataclass(frozen=True)
class FlexInput:
    snapshot: PlanningSnapshot
    forecast: SignalSeries | None
    running: tuple[RunningLoad, ...]
    written_at: float
    # kW per slot from floor_slot(snapshot.now) the site's other parts plan to draw (with
    # several [sites]: those after the first, whose snapshot this is); () with one site.
    other_kw: tuple[float, ...] = ()


def write_flex_input(
    state_dir: Path,
    snapshot: PlanningSnapshot,
    forecast: SignalSeries | None,
    running: Sequence[RunningLoad],
    written_at: float,
    other_kw: Sequence[float] = (),
) -> None:
    folder = state_dir / "beckn"
    folder.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {
        "written_at": written_at,
        "snapshot": snapshot_to_json(snapshot),
        "forecast": None if forecast is None else series_to_json(forecast, len(forecast)),
        "running": [asdict(r) for r in running],
        "other_kw": [round(float(x), 6) for x in other_kw],
    }
    tmp = folder / f".{FILE}.{os.getpid()}"
    tmp.write_text(json.dumps(doc, separators=(",", ":")))
    tmp.replace(folder / FILE)


def read_flex_input(state_dir: Path) -> FlexInput | None:
    path = state_dir / "beckn" / FILE
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return FlexInput(
        snapshot=snapshot_from_json(doc["snapshot"]),
        forecast=None if doc["forecast"] is None else series_from_json(doc["forecast"]),
        running=tuple(RunningLoad(**r) for r in doc["running"]),
        written_at=float(doc["written_at"]),
        other_kw=tuple(float(x) for x in doc.get("other_kw", ())),
    )
