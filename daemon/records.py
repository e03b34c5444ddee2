"""What a cycle keeps: each job's record (status, planned start, carbon and cost as submitted
and as planned) and the per-cycle plan file, which holds each site's planning instance,
solution, snapshot and forecast so that a decision can be replayed and explained.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from slurm_flex.daemon.decide import Assessment, Intent
from slurm_flex.daemon.site_planning import SiteShaping
from slurm_flex.grid.series import SLOT_SECONDS, SignalSeries, floor_slot, iso_utc
from slurm_flex.planner.instance import instance_to_json
from slurm_flex.planner.queue import Plan, PlannedJob, PlanningSnapshot, placed_kw, series_to_json, snapshot_to_json
from slurm_flex.planner.shaping import hold_to_json, shaping_to_json
from slurm_flex.slurm.parsers import SlurmJob
from slurm_flex.state import PENDING_STATUSES, JobRecord

log = structlog.get_logger(__name__)

# How many per-cycle plan files to keep in <state_dir>/plans.
PLAN_FILES_KEPT = 200


def job_records(
    assessments: Iterable[Assessment],
    plan_: Plan,
    intents: Iterable[Intent],
    previous: Mapping[str, JobRecord],
    jobs: Iterable[SlurmJob],
    now: int,
    shaped: Mapping[str, tuple[int, str]] | None = None,
) -> dict[str, JobRecord]:
    """This cycle's records: of every assessed job, with the start time the intents give it, and
    of the jobs tracked before that are no longer pending (started, gone, or no longer flexible).
    ``shaped``: the jobs load shaping holds back (job id -> (begin time, why)), status "shaped"."""
    by_intent = {i.job_id: i for i in intents}
    planned = plan_.by_id()
    records: dict[str, JobRecord] = {}
    for a in assessments:
        job_id = a.job.update_id
        prev = previous.get(job_id)
        intent = by_intent.get(job_id)
        if intent is None:
            expected, applied = a.job.eligible_time, prev.applied_begin if prev else None
        else:
            expected, applied = intent.new_begin, intent.new_begin if intent.new_begin is not None else now
        records[job_id] = _record_for(a.job, a, prev, planned.get(job_id), expected, applied, now)
        if shaped and job_id in shaped:
            until, reason = shaped[job_id]
            records[job_id] = records[job_id].evolve(status="shaped", reason=reason, planned_start=until)
    # Jobs we tracked that are no longer pending: started (savings realised) or gone.
    active = {j.update_id: j for j in jobs}
    for job_id, prev in previous.items():
        if job_id in records or prev.status not in PENDING_STATUSES:
            continue
        still = active.get(job_id)
        if still is None:
            final, reason = "gone", "left the queue before starting"
        elif still.pending:
            final, reason = "unmanaged", "no longer flexible; left as it is"
        else:
            final, reason = "started", prev.reason
        records[job_id] = prev.evolve(status=final, reason=reason, last_seen=now, updated_at=now)
    return records


def _record_for(
    job: SlurmJob,
    a: Assessment,
    prev: JobRecord | None,
    p: PlannedJob | None,
    expected_begin: int | None,
    applied_begin: int | None,
    now: int,
) -> JobRecord:
    base = prev or JobRecord(
        job_id=job.update_id,
        display_id=job.display_id,
        user=job.user,
        partition=job.partition,
        first_seen=now,
        last_seen=now,
        deadline=job.deadline,
        latest_start=None,
        earliest=None,
        power_w=None,
        energy_kwh=None,
        expected_begin=None,
        applied_begin=None,
        planned_start=None,
        status="new",
        reason="",
        baseline_carbon_g=None,
        planned_carbon_g=None,
        mean_ci_baseline=None,
        mean_ci_planned=None,
        updated_at=now,
    )
    rec = base.evolve(
        last_seen=now,
        updated_at=now,
        deadline=job.deadline,
        status=a.status,
        reason=a.reason,
        expected_begin=expected_begin,
        applied_begin=applied_begin,
    )
    if p is None or a.flex is None:
        return rec
    status = "late" if p.late else ("deferred" if p.deferred else "runs-now")
    baseline = rec.baseline_carbon_g if rec.baseline_carbon_g is not None else p.carbon_now_g
    ci_base = rec.mean_ci_baseline if rec.mean_ci_baseline is not None else p.mean_ci_now
    cost_base = rec.baseline_cost_gbp if rec.baseline_cost_gbp is not None else p.cost_now_gbp
    return rec.evolve(
        status=status,
        reason=p.reason,
        latest_start=a.flex.latest_start,
        earliest=a.flex.earliest,
        power_w=p.power_w,
        energy_kwh=p.energy_kwh,
        planned_start=p.start,
        baseline_carbon_g=baseline,
        planned_carbon_g=p.carbon_planned_g,
        mean_ci_baseline=ci_base,
        mean_ci_planned=p.mean_ci_planned,
        baseline_cost_gbp=cost_base,
        planned_cost_gbp=p.cost_planned_gbp,
    )


def planned_kw(plans: Iterable[Plan]) -> tuple[float, ...]:
    """Power of the planned flexible jobs per half-hour slot from now, over every site."""
    total = np.zeros(0)
    for p in plans:
        if p.instance is None or p.solution is None:
            continue
        kw = placed_kw(p, p.instance.n_slots)
        if kw.size > total.size:
            total = np.pad(total, (0, kw.size - total.size))
        total[: kw.size] += kw
    return tuple(float(x) for x in total)


def write_plan_file(
    plans_dir: Path,
    cycle_id: int,
    plans: Mapping[str, Plan],
    snapshots: Mapping[str, tuple[PlanningSnapshot, SignalSeries | None]],
    horizon_hours: float,
    now: int,
    shaping: Mapping[str, SiteShaping | None] | None = None,
    battery: Mapping[str, Any] | None = None,
) -> Path | None:
    """Keep each cycle's instances and solutions so a decision can be replayed and explained:
    ``<plans_dir>/cycle-<id>.json``, the last :data:`PLAN_FILES_KEPT` of them. A site's entry
    also holds its planning snapshot and forecast (up to ``horizon_hours``) where it has one,
    and its load-shaping snapshot, what that held back and the jobs it held, where it shaped,
    and its battery's schedule (``battery``: site -> BatteryPlan.to_json(), None where the
    battery was read but left unplanned), where it has one.
    Returns the file written (None: it could not be; the cycle goes on)."""
    shaping = shaping or {}
    try:
        plans_dir.mkdir(parents=True, exist_ok=True)
        doc = {
            "cycle": cycle_id,
            "now": iso_utc(now),
            "sites": {
                site: {
                    "forecast_source": p.forecast_source,
                    "instance": instance_to_json(p.instance) if p.instance is not None else None,
                    "solution": p.solution.to_json() if p.solution is not None else None,
                    "jobs": [
                        {"id": j.job_id, "start": iso_utc(j.start), "reason": j.reason, "late": j.late} for j in p.jobs
                    ],
                    **(_snapshot_doc(*snapshots[site], horizon_hours) if site in snapshots else {}),
                    **({"shaping": _shaping_doc(s)} if (s := shaping.get(site)) is not None else {}),
                    **({"battery": battery[site]} if battery and site in battery else {}),
                }
                for site, p in plans.items()
            },
        }
        path = plans_dir / f"cycle-{cycle_id:08d}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, separators=(",", ":")))
        tmp.replace(path)
        for old in sorted(plans_dir.glob("cycle-*.json"))[:-PLAN_FILES_KEPT]:
            old.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("plan_not_written", error=str(exc), dir=str(plans_dir))
        return None
    return path


def _snapshot_doc(snapshot: PlanningSnapshot, forecast: SignalSeries | None, horizon_hours: float) -> dict[str, Any]:
    """A site's planning snapshot and forecast: what `slurmflex simulate`'s planning step needs
    to replay this cycle's decisions (planner.queue.plan_step)."""
    doc: dict[str, Any] = {"snapshot": snapshot_to_json(snapshot), "forecast": None}
    if forecast is not None and forecast.covers(snapshot.now):
        slot0 = floor_slot(snapshot.now)
        n_slots = min(int(horizon_hours * 3600) // SLOT_SECONDS + 1, (forecast.end - slot0) // SLOT_SECONDS)
        doc["forecast"] = series_to_json(forecast.window(slot0, n_slots), n_slots)
    return doc


def _shaping_doc(shaping: SiteShaping) -> dict[str, Any]:
    """A site's load-shaping step: its snapshot (what planner.shaping.hold_from_snapshot replays),
    what it held back (nodes, start budget, why) and the jobs it held until when."""
    return {
        "snapshot": shaping_to_json(shaping.snapshot),
        "hold": hold_to_json(shaping.hold),
        "held": sorted(shaping.held),
        "until": iso_utc(shaping.until),
    }


def shaping_summary(shaping: Mapping[str, SiteShaping | None], now: int) -> dict[str, dict[str, Any]]:
    """Per site, for `slurmflex status`: whether load shaping holds nodes back now, how many,
    the start budget it leaves, why, and how many jobs it holds until when ({"enabled": false}:
    the policy does not shape)."""
    out: dict[str, dict[str, Any]] = {}
    for site, s in shaping.items():
        if s is None:
            out[site] = {"enabled": False}
            continue
        budget = s.hold.start_budget
        out[site] = {
            "enabled": True,
            "at": iso_utc(now),
            "holding": s.hold.holding,
            "held_nodes": round(s.hold.procs, 2),
            "start_budget_nodes": round(budget, 2) if math.isfinite(budget) else None,
            "reason": s.hold.reason,
            "jobs_held": len(s.held),
            "until": iso_utc(s.until) if s.held else None,
        }
    return out
