"""``slurmflex status``: what is deferred, to when, why, and what it saved.

Built from the state store only, so it answers even when slurmctld is down. ``build_status``
is pure (records in, JSON-ready dict out); ``render_status`` draws it with rich.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from slurm_flex.grid.series import iso_utc
from slurm_flex.state import FINAL_STATUSES, PENDING_STATUSES, Control, CycleRecord, JobRecord


def _iso(epoch: float | None) -> str | None:
    return None if epoch is None else iso_utc(epoch)


def _kg(grams: float) -> float:
    return round(grams / 1000.0, 3) + 0.0  # no "-0.000"


def build_status(
    records: Mapping[str, JobRecord],
    cycles: Sequence[CycleRecord],
    mode: str,
    now: float | None = None,
    include_finished: bool = False,
    mode_set_at_runtime: bool = False,
    controls: Sequence[Control] = (),
    signals: Mapping[str, Any] | None = None,
    shaping: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The status document; ``signals`` and ``shaping`` are the last cycle's per-site summaries
    of the signals planned with and of load shaping (daemon.records.shaping_summary)."""
    now = time.time() if now is None else now
    shown = PENDING_STATUSES + (FINAL_STATUSES if include_finished else ())
    jobs: dict[str, Any] = {}
    for r in sorted(records.values(), key=lambda r: (r.planned_start or 0, r.job_id)):
        if r.status not in shown:
            continue
        jobs[r.job_id] = {
            "display_id": r.display_id,
            "user": r.user,
            "partition": r.partition,
            "status": r.status,
            "planned_start": _iso(r.planned_start),
            "latest_safe_start": _iso(r.latest_start),
            "deadline": _iso(r.deadline),
            "power_w": None if r.power_w is None else round(r.power_w, 1),
            "energy_kwh": None if r.energy_kwh is None else round(r.energy_kwh, 3),
            "carbon_intensity_baseline_g_per_kwh": None if r.mean_ci_baseline is None else round(r.mean_ci_baseline, 1),
            "carbon_intensity_planned_g_per_kwh": None if r.mean_ci_planned is None else round(r.mean_ci_planned, 1),
            "carbon_saved_kg": _kg(r.carbon_saved_g),
            "cost_saved_gbp": round(r.cost_saved_gbp, 4) + 0.0,
            "reason": r.reason,
        }
    pending = [r for r in records.values() if r.status in PENDING_STATUSES]
    started = [r for r in records.values() if r.status == "started"]
    last = cycles[0] if cycles else None
    return {
        "generated_at": _iso(now),
        "mode": mode,
        "mode_set_at_runtime": mode_set_at_runtime,
        "released_by_admin": [
            {"kind": c.kind, "target": c.target, "by": c.by, "since": _iso(c.ts), "reason": c.reason} for c in controls
        ],
        "last_cycle": None
        if last is None
        else {
            "id": last.id,
            "started_at": _iso(last.started_at),
            "age_seconds": round(now - last.started_at, 1),
            "duration_seconds": None if last.duration_s is None else round(last.duration_s, 3),
            "ok": last.ok,
            "jobs_seen": last.jobs_seen,
            "updates": last.updates,
            "slurm_commands": last.commands,
            "errors": last.errors,
            "forecast_source": last.forecast_source,
            "message": last.message,
        },
        "signals": dict(signals or {}),
        "shaping": dict(shaping or {}),
        "jobs": jobs,
        "totals": {
            "deferred": sum(1 for r in pending if r.status == "deferred"),
            "runs_now": sum(1 for r in pending if r.status == "runs-now"),
            "held_back": sum(1 for r in pending if r.status == "shaped"),
            "moved_up": sum(1 for r in pending if r.priority_before is not None),
            "left_alone": sum(1 for r in pending if r.status in ("manual", "held", "waiting", "ineligible")),
            "late": sum(1 for r in pending if r.status == "late"),
            "started": len(started),
            "carbon_saved_kg_planned": _kg(sum(r.carbon_saved_g for r in pending)),
            "carbon_saved_kg_started": _kg(sum(r.carbon_saved_g for r in started)),
            "cost_saved_gbp_planned": round(sum(r.cost_saved_gbp for r in pending), 4) + 0.0,
            "cost_saved_gbp_started": round(sum(r.cost_saved_gbp for r in started), 4) + 0.0,
            "energy_kwh_deferred": round(sum(r.energy_kwh or 0.0 for r in pending if r.status == "deferred"), 3),
        },
    }


def _short(iso: str | None) -> str:
    return "-" if iso is None else iso.replace("T", " ")[:16]


def _note_beyond_signals(message: str, signals: Mapping[str, Any]) -> str:
    """The cycle's message without what the per-site signal lines already say."""
    said = [n for sig in signals.values() for n in sig.get("notes", ())]
    said += [sig["error"] for sig in signals.values() if sig.get("error")]
    for text in said:
        message = message.replace(text, "")
    parts = [p.strip() for p in message.split("; ")]
    return "; ".join(p for p in parts if p and not p.endswith("running jobs as submitted:"))


def _signal_line(sig: Mapping[str, Any]) -> str:
    """E.g. ``carbon neso:regionid=10 forecast 48.0 h + profile 120.0 h; price ...``."""
    if not sig.get("ok"):
        return f"NONE, jobs run as submitted ({sig.get('error')})"
    by_quantity: dict[str, list[str]] = {}
    for part in sig.get("parts", ()):
        label = part["origin"].upper() if part["origin"] in ("last good forecast", "profile") else part["origin"]
        issued = f" issued {_short(part['issued_at'])[11:]}" if part.get("issued_at") else ""
        by_quantity.setdefault(f"{part['quantity']} {part['source']}", []).append(
            f"{label} {part['hours']:g} h{issued}"
        )
    return "; ".join(f"{k} " + " + ".join(v) for k, v in by_quantity.items()) or "empty"


def _shaping_line(shape: Mapping[str, Any]) -> str:
    """E.g. ``holding 3 nodes back (1 node of queued work may start), 2 jobs until 12:35 UTC:
    cleaner hours ahead ...``; or that it holds nothing back, and why."""
    if not shape.get("enabled"):
        return "off (shape_load = false)"
    if not shape.get("holding"):
        return f"not holding nodes back: {shape.get('reason', '')}"
    budget = shape.get("start_budget_nodes")
    may = "" if budget is None else f" ({budget:g} nodes of queued work with deadlines may start)"
    jobs = f", {shape['jobs_held']} jobs until {_short(shape['until'])[11:]} UTC" if shape.get("jobs_held") else ""
    return f"holding {shape['held_nodes']:g} nodes back{may}{jobs}: {shape.get('reason', '')}"


def render_status(doc: Mapping[str, Any], console: Console) -> None:
    last = doc["last_cycle"]
    mode = doc["mode"] + (", set at runtime" if doc.get("mode_set_at_runtime") else "")
    if last is None:
        console.print(f"slurm-flex ({mode} mode): no cycle has run yet.")
    else:
        health = "ok" if last["ok"] else "FAILED"
        console.print(
            f"slurm-flex ({mode} mode): last cycle #{last['id']} at {_short(last['started_at'])} UTC "
            f"({last['age_seconds']:.0f}s ago, {health}, {last['duration_seconds']}s, "
            f"{last['slurm_commands']} Slurm commands); forecast: {last['forecast_source']}"
        )
        note = _note_beyond_signals(last["message"], doc.get("signals", {}))
        if note:
            console.print(f"  note: {note}")
    power = doc.get("power")
    if power:
        site = f"; site meter {power['site']['watts'] / 1000:.1f} kW" if power.get("site") else ""
        console.print(
            f"  measured power: {power['cluster_watts'] / 1000:.2f} kW on {power['nodes_measured']} nodes{site}"
            " (slurmflex power for details)"
        )
    for site, sig in doc.get("signals", {}).items():
        console.print(f"  signals, site {site}: {_signal_line(sig)}")
        for note in sig.get("notes", ()):
            console.print(f"    fallback: {note}")
    for site, shape in doc.get("shaping", {}).items():
        console.print(f"  load shaping, site {site}: {_shaping_line(shape)}")
    for c in doc.get("released_by_admin", ()):
        what = "every job" if c["kind"] == "all" else f"{c['kind']} {c['target']}"
        why = f": {c['reason']}" if c["reason"] else ""
        console.print(f"  released by {c['by']} since {_short(c['since'])}: {what}{why} (slurmflex resume to lift)")
    table = Table(title="Flexible jobs (times UTC)", title_justify="left")
    for col, kw in (
        ("Job", {}),
        ("User", {}),
        ("Status", {}),
        ("Planned start", {}),
        ("Latest safe start", {}),
        ("Deadline", {}),
        ("Power W", {"justify": "right"}),
        ("CO2 saved kg", {"justify": "right"}),
        ("Why", {"overflow": "fold"}),
    ):
        table.add_column(col, **kw)  # type: ignore[arg-type]
    for job in doc["jobs"].values():
        table.add_row(
            job["display_id"],
            job["user"],
            job["status"],
            _short(job["planned_start"]),
            _short(job["latest_safe_start"]),
            _short(job["deadline"]),
            "-" if job["power_w"] is None else f"{job['power_w']:.0f}",
            f"{job['carbon_saved_kg']:.3f}",
            job["reason"],
        )
    if doc["jobs"]:
        console.print(table)
    else:
        console.print("No flexible jobs pending.")
    t = doc["totals"]
    held = f"held back by load shaping: {t['held_back']}, " if t.get("held_back") else ""
    console.print(
        f"Deferred: {t['deferred']} jobs ({t['energy_kwh_deferred']:.1f} kWh), {held}to run now: {t['runs_now']} "
        f"({t['moved_up']} moved up the queue for their deadlines), "
        f"left alone: {t['left_alone']}, late: {t['late']}, started: {t['started']}. "
        f"Saved vs running at submission: {t['carbon_saved_kg_planned']:.2f} kg CO2 and "
        f"{t['cost_saved_gbp_planned']:.2f} GBP planned, {t['carbon_saved_kg_started']:.2f} kg and "
        f"{t['cost_saved_gbp_started']:.2f} GBP on jobs already started."
    )
