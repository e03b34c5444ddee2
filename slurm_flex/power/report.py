"""``slurmflex power``: each node's measured watts with source and age, the site meter, and what
running and recent jobs drew against their submit-time estimates. ``build_power_doc`` is pure;
``render_power`` draws it with rich."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from slurm_flex.grid.series import iso_utc
from slurm_flex.power.sample import PowerSample, node_watts
from slurm_flex.power.store import JobEnergy


def _r(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits) + 0.0


def build_power_doc(
    samples: Sequence[PowerSample],
    jobs: Iterable[JobEnergy],
    calibration: Mapping[tuple[str, str], tuple[float, int]],
    now: float,
    max_age_seconds: float,
) -> dict[str, Any]:
    by_node: dict[str, list[PowerSample]] = defaultdict(list)
    for s in samples:
        by_node[s.node].append(s)
    watts = node_watts(samples)
    nodes: dict[str, dict[str, Any]] = {}
    fresh_watts = 0.0
    for node in sorted(n for n in by_node if n in watts):
        own = by_node[node]
        newest = max(s.at for s in own)
        nodes[node] = {
            "watts": _r(watts[node]),
            "sources": sorted({s.source for s in own}),
            "components": {s.component: _r(s.watts) for s in sorted(own, key=lambda s: s.component)},
            "age_seconds": _r(now - newest),
            "fresh": now - newest <= max_age_seconds,
        }
        if now - newest <= max_age_seconds:
            fresh_watts += watts[node]
    site = [s for s in samples if s.component == "site"]
    return {
        "generated_at": iso_utc(now),
        "nodes": nodes,
        "cluster_watts": _r(fresh_watts),
        "site": None
        if not site
        else {"watts": _r(site[0].watts), "source": site[0].source, "age_seconds": _r(now - site[0].at)},
        "jobs": [
            {
                "job_id": j.job_id,
                "user": j.user,
                "name": j.name,
                "running": not j.finished,
                "measured_seconds": _r(j.measured_seconds, 0),
                "energy_kwh": _r(j.joules / 3.6e6, 4),
                "mean_watts": _r(j.mean_watts),
                "estimated_watts": _r(j.estimated_watts),
                "measured_over_estimate": None
                if j.mean_watts is None or not j.estimated_watts
                else _r(j.mean_watts / j.estimated_watts, 3),
            }
            for j in jobs
        ],
        "calibration": [
            {"kind": kind, "key": key, "factor": _r(factor, 3), "jobs": n}
            for (kind, key), (factor, n) in sorted(calibration.items())
        ],
    }


def render_power(doc: Mapping[str, Any], console: Console) -> None:
    if not doc["nodes"]:
        console.print("No measured node power yet (is [measure] enabled, and are node agents pushing?).")
    else:
        table = Table(title=f"Node power ({doc['cluster_watts']:g} W from fresh readings)", title_justify="left")
        for col in ("Node", "Watts", "Source", "Age s", "Components"):
            table.add_column(col, justify="right" if col in ("Watts", "Age s") else "left")
        for node, n in doc["nodes"].items():
            age = f"{n['age_seconds']:g}" + ("" if n["fresh"] else " STALE")
            parts = ", ".join(f"{c} {w:g}" for c, w in n["components"].items())
            table.add_row(node, f"{n['watts']:g}", "+".join(n["sources"]), age, parts)
        console.print(table)
    if doc["site"]:
        s = doc["site"]
        console.print(f"Site meter: {s['watts']:g} W ({s['source']}, {s['age_seconds']:g} s ago)")
    if doc["jobs"]:
        table = Table(title="Jobs: measured against the submit-time estimate", title_justify="left")
        for col in ("Job", "User", "Name", "State", "kWh", "Mean W", "Estimate W", "Measured/estimate"):
            table.add_column(col)
        for j in doc["jobs"]:
            ratio = j["measured_over_estimate"]
            table.add_row(
                j["job_id"],
                j["user"],
                j["name"],
                "running" if j["running"] else "finished",
                f"{j['energy_kwh']:.4f}",
                "-" if j["mean_watts"] is None else f"{j['mean_watts']:g}",
                "-" if j["estimated_watts"] is None else f"{j['estimated_watts']:g}",
                "-" if ratio is None else f"{ratio:.2f}",
            )
        console.print(table)
