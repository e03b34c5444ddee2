"""Pure decisions of one daemon cycle: which jobs are flexible, and which start times to change.

Safety rules live here, where they can be tested without Slurm:

* a job without a deadline is never touched (unless slurm-flex itself deferred it earlier and
  must now hand it back);
* held jobs, jobs waiting on dependencies and jobs whose start time someone else changed are
  left alone (the last one for good: slurm-flex never fights an admin or the job's owner);
* a start time is never set later than the job's latest safe start
  (deadline - time limit - safety margin).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from slurm_flex.planner.queue import FlexJob, Plan, Policy
from slurm_flex.powermodel import PowerModel, gpus_per_node
from slurm_flex.slurm.parsers import SlurmJob
from slurm_flex.state import JobRecord

# scontrol takes and reports StartTime with one-second resolution.
BEGIN_TOLERANCE_S = 2
# A planned start this close to now is "now": release instead of deferring by seconds.
RELEASE_SLACK_S = 60
_DEPENDENCY_REASONS = frozenset({"Dependency", "DependencyNeverSatisfied"})


@dataclass(frozen=True)
class Assessment:
    """What slurm-flex makes of one pending job this cycle."""

    job: SlurmJob
    status: str
    reason: str
    flex: FlexJob | None = None
    earliest: int | None = None
    must_release: bool = False


@dataclass(frozen=True)
class Intent:
    """A start-time change to make: ``new_begin`` None means release (StartTime=now)."""

    job_id: str
    old_begin: int | None
    new_begin: int | None
    kind: str
    reason: str


def _ours(current: int | None, record: JobRecord | None, pending: Iterable[int | None]) -> bool:
    """Is the job's current begin time the one slurm-flex expects (its own doing or untouched)?"""
    if record is None or current is None:
        return True
    candidates = [record.expected_begin, *pending]
    if None in candidates:  # after a release ("now") any begin Slurm recorded is ours
        return True
    return any(c is not None and abs(current - c) <= BEGIN_TOLERANCE_S for c in candidates)


def assess(
    job: SlurmJob,
    record: JobRecord | None,
    pending_targets: Sequence[int | None],
    policy: Policy,
    power: PowerModel,
    partitions: frozenset[str],
    now: int,
) -> Assessment | None:
    """Classify a pending job; None when slurm-flex has nothing to do with it."""
    we_deferred = record is not None and record.applied_begin is not None and record.status == "deferred"
    in_scope = not partitions or job.partition in partitions
    if job.deadline is None or not in_scope:
        if we_deferred:
            why = "no longer has a deadline" if job.deadline is None else "partition no longer managed"
            return Assessment(job, "released", f"released: {why}", must_release=True)
        return None
    current = job.eligible_time
    if record is not None and record.status == "manual":
        return Assessment(job, "manual", record.reason)
    if not _ours(current, record, pending_targets):
        return Assessment(job, "manual", "left alone: its start time was changed outside slurm-flex")
    if job.held:
        return Assessment(job, "held", "left alone: held")
    if job.het_job_id is not None:
        return Assessment(job, "ineligible", "left alone: heterogeneous jobs are not planned yet")
    if job.state_reason in _DEPENDENCY_REASONS:
        return Assessment(job, "waiting", "left alone: waiting on a dependency")
    if job.time_limit_s is None:
        return Assessment(job, "ineligible", "left alone: no time limit, so no latest safe start")
    tag = job.tag
    if record is not None and record.earliest is not None:
        earliest = record.earliest
    elif tag is not None:
        earliest = tag.begin or job.submit_time
    else:
        earliest = current or job.submit_time
    latest_start = job.deadline - job.time_limit_s - policy.safety_margin_seconds
    if tag is not None and tag.power_w is not None:
        power_w = tag.power_w
    else:
        power_w = power.estimate(job.nodes, job.cpus, gpus_per_node(job.tres_per_node))
    flex = FlexJob(
        job_id=job.update_id,
        nodes=job.nodes * job.array_tasks,
        power_w=power_w * job.array_tasks,
        duration_s=job.time_limit_s,
        earliest=earliest,
        latest_start=latest_start,
        deadline=job.deadline,
    )
    return Assessment(job, "planned", "", flex=flex, earliest=earliest)


def reconcile(assessments: Iterable[Assessment], plan: Plan, now: int) -> list[Intent]:
    """Start-time changes that bring Slurm in line with the plan; only changed jobs appear."""
    planned = plan.by_id()
    intents: list[Intent] = []
    for a in assessments:
        job_id = a.job.update_id
        current = a.job.eligible_time
        waiting_on_begin = current is not None and current > now + BEGIN_TOLERANCE_S
        if a.must_release:
            if waiting_on_begin:
                intents.append(Intent(job_id, current, None, "release", a.reason))
            continue
        p = planned.get(job_id)
        if a.flex is None or p is None:
            continue
        # Never later than the latest safe start, whatever the planner said, and never before
        # the user's own --begin.
        bound = max(a.flex.latest_start, now)
        target = p.start if p.start <= bound else max(bound, a.flex.earliest)
        if target <= now + RELEASE_SLACK_S:
            if waiting_on_begin:
                intents.append(Intent(job_id, current, None, "release", p.reason))
            continue
        if current is None or abs(current - target) > BEGIN_TOLERANCE_S:
            kind = "defer" if current is None or target > current else "advance"
            intents.append(Intent(job_id, current, target, kind, p.reason))
    return intents
