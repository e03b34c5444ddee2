"""Metered usage per settlement period, and where it came from: the site meter where there is
one, else the sum of the nodes' own readings (node agents, Slurm's energy counters), from the
power store's half-hour means ([measure]); or a CSV of a meter's half-hourly readings. Periods
nothing measured are absent (settlement reports them rather than guess); a CSV may label its
rows ``modelled``, and then every row it settles carries that label."""

from __future__ import annotations

import csv
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

from slurm_flex.ledger.errors import SettlementError
from slurm_flex.power.store import PowerStore
from slurm_flex.settlement.compute import Usage

WHOLE_NODE = ("system", "node")


def from_power_store(store: PowerStore, start: datetime, end: datetime) -> dict[datetime, Usage]:
    rows = store.halfhours(None, int(start.timestamp()), int(end.timestamp()))
    site: dict[int, float] = {}
    # Whole-node readings only (the BMC's system power, else Slurm's node energy): CPU or GPU
    # counters alone would understate a node.
    nodes: dict[int, dict[str, tuple[int, float, str]]] = defaultdict(dict)
    for node, source, component, slot, watts in rows:
        if component == "site":
            site[slot] = watts
        elif component in WHOLE_NODE:
            rank = WHOLE_NODE.index(component)
            if node not in nodes[slot] or rank < nodes[slot][node][0]:
                nodes[slot][node] = (rank, watts, source)
    out: dict[datetime, Usage] = {}
    for slot in set(site) | set(nodes):
        t = datetime.fromtimestamp(slot, UTC)
        if slot in site:
            out[t] = Usage(site[slot] / 1000, "site meter")
        else:
            sources = sorted({src for _, _, src in nodes[slot].values()})
            kw = sum(w for _, w, _ in nodes[slot].values()) / 1000
            out[t] = Usage(kw, f"node readings ({', '.join(sources)}; {len(nodes[slot])} nodes)")
    return out


def from_csv(path: Path) -> dict[datetime, Usage]:
    """``start,kw[,basis]`` rows: the period's start (ISO 8601 with a zone) and mean kW."""
    out: dict[datetime, Usage] = {}
    try:
        with open(path, newline="", encoding="utf-8") as f:
            for n, row in enumerate(csv.DictReader(f), start=2):
                try:
                    t = datetime.fromisoformat(row["start"].replace("Z", "+00:00"))
                    if t.tzinfo is None:
                        raise ValueError("start needs a time zone")
                    out[t.astimezone(UTC)] = Usage(float(row["kw"]), (row.get("basis") or "meter file").strip())
                except (KeyError, ValueError) as exc:
                    raise SettlementError(f"{path} line {n}: {exc}") from exc
    except OSError as exc:
        raise SettlementError(f"{path}: cannot read: {exc.strerror}") from exc
    return out
