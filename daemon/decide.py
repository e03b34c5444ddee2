"""Pure decisions of one daemon cycle: which jobs are flexible, and which start times to change.

Safety rules live here, where they can be tested without Slurm:

* only flexible jobs are touched: a deadline (or a slack the submit hook granted from the
  user's flex= keyword or the site's policy), in a managed partition, not exempt, not opted out.
  A job slurm-flex deferred that stops being flexible is handed back (released);
* held jobs, jobs waiting on dependencies and jobs whose start time someone else changed are
  left alone (the last one for good: slurm-flex never fights an admin or the job's owner);
* a start time is never set later than the job's latest safe start
  (deadline - time limit - safety margin).
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from slurm_flex.config import FlexConfig
from slurm_flex.grid.series import SLOT_SECONDS, floor_slot, iso_utc
from slurm_flex.planner.instance import FloatArray
from slurm_flex.planner.policy import Policy
from slurm_flex.planner.policy import plan_latest as policy_plan_latest
from slurm_flex.planner.queue import FlexJob, Plan
from slurm_flex.planner.risk import IN_PLACE, expedite
from slurm_flex.power.model import PowerModel, Request, gpus
from slurm_flex.slurm.parsers import SlurmJob, first_partition
from slurm_flex.state import Exemptions, JobRecord
from slurm_flex.tag import HookTag

NO_EXEMPTIONS = Exemptions()

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


def power_request(job: SlurmJob) -> Request:
    """The power-relevant part of a job's request, from squeue's view of it."""
    if job.memory_per_node_mb:
        memory = float(job.memory_per_node_mb * job.nodes)
    elif job.memory_per_cpu_mb:
        memory = float(job.memory_per_cpu_mb * job.cpus)
    else:
        memory = 0.0
    per_job = gpus(job.tres_per_job)
    for model, n in gpus(job.tres_per_task).items():
        per_job[model] = per_job.get(model, 0) + n * job.tasks
    return Request(
        nodes=job.nodes, cpus=job.cpus, memory_mb=memory, gpus_per_node=gpus(job.tres_per_node), gpus_per_job=per_job
    )


def _why_not_flexible(job: SlurmJob, tag: HookTag | None, rules: FlexConfig) -> str | None:
    """Why slurm-flex may not move this job at all, or None if it may."""
    if not rules.manages(job.partition):
        return "partition not managed"
    if job.user in rules.exempt_users or job.account in rules.exempt_accounts:
        return "exempt"
    if tag is not None and tag.opted_out:
        return f"not flexible ({tag.why or 'flex=no'})"
    if job.deadline is None and (tag is None or not (tag.deadline or tag.slack)):
        return "no deadline"
    return None


def assess(
    job: SlurmJob,
    record: JobRecord | None,
    pending_targets: Sequence[int | None],
    policy: Policy,
    rules: FlexConfig,
    power: PowerModel,
    now: int,
    exempt: Exemptions = NO_EXEMPTIONS,
    power_factor: float = 1.0,
) -> Assessment | None:
    """Classify a pending job; None when slurm-flex has nothing to do with it.

    ``power_factor`` corrects the submit-time power estimate by what similar jobs measured."""
    tag = job.tag
    # Deferred to a window, or held back by load shaping: a begin time of slurm-flex's own.
    we_deferred = record is not None and record.applied_begin is not None and record.status in ("deferred", "shaped")
    not_flexible = _why_not_flexible(job, tag, rules)
    if not_flexible is None and exempt.covers(job.update_id, job.user):
        not_flexible = "exempted by an admin"
    if not_flexible is None and job.array_job_id and exempt.covers(str(job.array_job_id), job.user):
        not_flexible = "exempted by an admin"
    if not_flexible is not None:
        # Hand back what slurm-flex made the job wait for: its deferral, or the hook's grace.
        graced = (
            tag is not None
            and tag.grace is not None
            and job.eligible_time is not None
            and (abs(job.eligible_time - tag.grace) <= BEGIN_TOLERANCE_S)
        )
        if we_deferred or (graced and job.eligible_time is not None and job.eligible_time > now):
            return Assessment(job, "released", f"released: {not_flexible}", must_release=True)
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
    if record is not None and record.earliest is not None:
        earliest = record.earliest
    elif tag is not None:
        earliest = tag.begin or job.submit_time
    else:
        earliest = current or job.submit_time
    # The latest start: the deadline (Slurm's, or the hook's if earlier) less the time limit and
    # margin; the job's own slack; and the site's maximum slack for its partition/QOS.
    _, max_slack_hours = rules.slack_limits(first_partition(job.partition), job.qos)
    limits = [earliest + int(max_slack_hours * 3600)]
    deadlines = [d for d in (job.deadline, tag.deadline if tag else None) if d]
    if deadlines:
        limits.append(min(deadlines) - job.time_limit_s - policy.safety_margin_seconds)
    if tag is not None and tag.slack:
        limits.append(earliest + tag.slack)
    latest_start = min(limits)
    # The planner uses only the first share of the slack; the rest absorbs queueing and work that
    # arrives later with the same deadline. The true latest safe start still bounds everything.
    plan_latest = policy_plan_latest(earliest, latest_start, policy)
    if tag is not None and tag.power_w is not None:
        power_w = tag.power_w
    else:
        power_w = power.estimate(power_request(job), job.partition)
    power_w *= power_factor
    flex = FlexJob(
        job_id=job.update_id,
        nodes=job.nodes * job.array_tasks,
        power_w=power_w * job.array_tasks,
        duration_s=job.time_limit_s,
        earliest=earliest,
        latest_start=latest_start,
        deadline=min(deadlines) if deadlines else latest_start + job.time_limit_s,
        plan_latest=min(plan_latest, latest_start),
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


def shape_intents(
    intents: Iterable[Intent], assessments: Iterable[Assessment], held: Mapping[str, tuple[int, str]]
) -> list[Intent]:
    """The plan's start-time changes with load shaping's holds (planner.shaping) in force:
    each held job (job id -> (begin time, why)) waits until that begin time instead of what the
    plan would do with it (which is to run now: load shaping holds only such jobs). The others
    keep the plan's changes, so a job held last cycle and not now is released (StartTime=now)."""
    out = [i for i in intents if i.job_id not in held]
    for a in assessments:
        job_id = a.job.update_id
        if job_id not in held:
            continue
        until, reason = held[job_id]
        current = a.job.eligible_time
        if current is None or abs(current - until) > BEGIN_TOLERANCE_S:
            out.append(Intent(job_id, current, until, "shape", reason))
    return out


# Action kinds of priority changes in the journal (the others move start times).
PRIORITY_KINDS = frozenset({"expedite", "restore"})
# Slurm job priorities are 32-bit unsigned; 0 holds a job.
MAX_PRIORITY = 2**32 - 2
EXPEDITED = "moved up the queue: in its place the queue would start it after its latest safe start"


@dataclass(frozen=True)
class PriorityChange:
    """A priority to set: ``kind`` "expedite" (to the head of the queue) or "restore" (back to
    the priority it had before slurm-flex moved it)."""

    job_id: str
    old: int
    new: int
    kind: str
    reason: str


def queue_priorities(
    queue: Sequence[SlurmJob],
    flex: Mapping[str, FlexJob],
    records: Mapping[str, JobRecord],
    free: FloatArray,
    now: int,
    margin_slots: int,
    others_top: int,
) -> list[PriorityChange]:
    """Priority changes that put the queued jobs at risk first (see planner.risk.expedite).

    ``queue``: the site's waiting jobs as Slurm will run them (not held, not deferred by
    slurm-flex); ``flex``: those with a deadline, as assessed this cycle; ``free``: nodes the
    running work leaves, per slot from floor_slot(now); ``others_top``: the highest priority of
    the pending jobs not in ``queue`` (jobs deferred until later, which meet the queue then).
    Moved jobs get priorities just above every other pending job's: those the head of the queue
    saves first, then the others at risk, each group in order of latest safe start. A moved
    job stays moved while it waits, unless it has no deadline to keep any more (past its latest
    safe start, or opted out): then it gets its own priority back."""
    if not queue:
        return []
    slot0 = floor_slot(now)
    order = sorted(queue, key=lambda j: (-j.priority, j.submit_time, j.update_id))
    sizes = np.asarray([flex[j.update_id].nodes if j.update_id in flex else j.nodes for j in order], dtype=np.float64)
    lengths = np.asarray(
        [max(1, math.ceil((j.time_limit_s or free.size * SLOT_SECONDS) / SLOT_SECONDS)) for j in order], dtype=np.int64
    )
    earliest = np.asarray(
        [max(0, (floor_slot(max(now, j.eligible_time or now)) - slot0) // SLOT_SECONDS) for j in order], dtype=np.int64
    )
    latest = np.asarray(
        [(flex[j.update_id].latest_start - slot0) // SLOT_SECONDS if j.update_id in flex else -1 for j in order],
        dtype=np.int64,
    )
    before = [records[j.update_id].priority_before if j.update_id in records else None for j in order]
    moved = np.asarray([b is not None for b in before], dtype=bool)
    tiers = expedite(free, sizes, lengths, latest, moved, margin_slots, earliest)
    changes: list[PriorityChange] = []
    for j, b, tier in zip(order, before, tiers, strict=True):
        if b is not None and tier == IN_PLACE and j.priority != b:
            reason = "its own priority back: no deadline to keep any more"
            changes.append(PriorityChange(j.update_id, j.priority, b, "restore", reason))
    ahead = [(int(tier), j) for j, tier in zip(order, tiers, strict=True) if tier != IN_PLACE]
    if not ahead:
        return changes
    ahead.sort(key=lambda tj: (tj[0], flex[tj[1].update_id].latest_start, -tj[1].priority))
    top = max([others_top, *(j.priority for j, tier in zip(order, tiers, strict=True) if tier == IN_PLACE)])
    current = [j.priority for _, j in ahead]
    if current[-1] > top and all(a > b for a, b in itertools.pairwise(current)):
        return changes  # already in this order, above the rest
    n = len(ahead)
    for i, (_, j) in enumerate(ahead):
        target = min(top + n - i, MAX_PRIORITY - i)
        if target != j.priority:
            changes.append(PriorityChange(j.update_id, j.priority, target, "expedite", EXPEDITED))
    return changes


_PLAN_TOKEN = re.compile(r"\s*slurmflex-plan=\S*")


def annotate_comment(comment: str, planned_start: int | None) -> str:
    """The job's comment with slurm-flex's ``slurmflex-plan=<UTC time>`` token replaced (or
    removed when ``planned_start`` is None); the user's own text is kept as it is."""
    base = _PLAN_TOKEN.sub("", comment or "").strip()
    if planned_start is None:
        return base
    token = f"slurmflex-plan={iso_utc(planned_start)}"
    return f"{base} {token}" if base else token
