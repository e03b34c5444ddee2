"""What the cluster can shed or absorb, per half-hour, from the live queue and its plan.

One pure function feeds both roles (offers as a provider, commitments as an aggregator):

- **shed** in slot t: the planned power of pending flexible jobs that can be moved out of t
  (another start in their window that avoids t, deadline kept), plus the power of running jobs
  whose owners opted in to suspension (``--comment=flex=suspendable``) and whose deadline
  leaves room for a half-hour's pause;
- **absorb** in slot t: the power of planned (deferred) jobs that could start in t instead,
  within the nodes free in t.

The per-slot figures are each for a half-hour activation on its own. A multi-slot window is
checked as a whole by :func:`deliverable`: the planner re-plans the queue with the power
ceiling the order implies, and only what it can deliver with no job late is offered.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from slurm_flex.grid.series import SLOT_SECONDS, SignalSeries, floor_slot
from slurm_flex.planner.instance import FloatArray
from slurm_flex.planner.policy import WINDOWS_OFF, Policy
from slurm_flex.planner.queue import Plan, PlanningSnapshot, plan_step

# Offers are in steps of this many kW (a quote of 1.2345 kW promises precision nobody measures).
KW_STEP = 0.001


@dataclass(frozen=True)
class RunningLoad:
    """A running job as flexibility sees it."""

    job_id: str
    power_kw: float
    end: int | None  # expected end (time limit); None: unknown
    deadline: int | None  # latest finish allowed; None: none beyond its time limit
    suspendable: bool  # the owner opted in (--comment=flex=suspendable, or flex=requeue)
    # "suspend" (scontrol suspend/resume) or "requeue" (a checkpointing job: scontrol
    # requeuehold, released after the window, restarting from its checkpoint)
    how: str = "suspend"
    time_limit_s: int | None = None

    def can_pause(self, seconds: int, margin_s: int) -> bool:
        """Paused for ``seconds``, the job's end moves that much later (suspended), or it runs
        again whole after them (requeued: the worst case, no checkpoint): it must still end
        ``margin_s`` before its deadline."""
        if not self.suspendable:
            return False
        if self.deadline is None or self.end is None:
            return self.deadline is None
        if self.how == "requeue":
            if self.time_limit_s is None:
                return False
            # Paused only while it would run, the window ends before end + seconds; from there a
            # full rerun (the worst case: no checkpoint written) must still meet the deadline.
            return self.end + seconds + self.time_limit_s + margin_s <= self.deadline
        return self.end + seconds + margin_s <= self.deadline


@dataclass(frozen=True)
class FlexSlot:
    start: int  # epoch of the half-hour
    shed_kw: float
    absorb_kw: float
    shed_deferrable_kw: float  # of which pending flexible work
    shed_suspendable_kw: float  # of which opted-in running work
    baseline_kw: float  # what the plan draws in the slot (running + planned flexible jobs)
    price_per_kwh: float


@dataclass(frozen=True)
class Baseline:
    """The plan without any order: power per slot of the planned flexible jobs and of running work."""

    plan: Plan
    planned_kw: FloatArray
    running_kw: FloatArray

    @property
    def total_kw(self) -> FloatArray:
        return self.planned_kw + self.running_kw


def running_kw(running: Sequence[RunningLoad], slot0: int, n_slots: int) -> FloatArray:
    out = np.zeros(n_slots)
    for r in running:
        end = n_slots if r.end is None else max(0, min(n_slots, math.ceil((r.end - slot0) / SLOT_SECONDS)))
        out[:end] += r.power_kw
    return out


def _planned_kw(plan_: Plan, n_slots: int) -> FloatArray:
    out = np.zeros(n_slots)
    inst, sol = plan_.instance, plan_.solution
    if inst is None or sol is None:
        return out
    for j, job_id in enumerate(inst.job_ids):
        s = int(sol.starts[job_id])
        out[max(0, s) : min(n_slots, s + int(inst.duration[j]))] += float(inst.power_kw[j])
    return out


def _windows_on(snapshot: PlanningSnapshot) -> PlanningSnapshot:
    """The snapshot with single-job windows allowed: where load shaping alone moves work
    ([policy] defer_to_windows = false), a contract still moves pending work out of its window
    job by job (the daemon plans windows while a contract is in force)."""
    jobs = tuple(replace(j, no_defer="") if j.no_defer == WINDOWS_OFF else j for j in snapshot.jobs)
    return replace(snapshot, jobs=jobs)


def baseline(
    snapshot: PlanningSnapshot,
    forecast: SignalSeries | None,
    policy: Policy,
    running: Sequence[RunningLoad],
    n_slots: int,
) -> Baseline:
    plan_, _ = plan_step(replace(_windows_on(snapshot), power_cap_kw=None), forecast, policy)
    slot0 = floor_slot(snapshot.now)
    return Baseline(plan_, _planned_kw(plan_, n_slots), running_kw(running, slot0, n_slots))


def flex_slots(
    snapshot: PlanningSnapshot,
    forecast: SignalSeries | None,
    policy: Policy,
    running: Sequence[RunningLoad],
    n_slots: int,
    price_per_kwh: float,
    margin_s: int,
) -> list[FlexSlot]:
    """Per half-hour from floor_slot(now): shed and absorb kW (see the module docstring)."""
    base = baseline(snapshot, forecast, policy, running, n_slots)
    slot0 = floor_slot(snapshot.now)
    shed_pending = np.zeros(n_slots)
    absorb = np.zeros(n_slots)
    inst, sol = base.plan.instance, base.plan.solution
    if inst is not None and sol is not None:
        used_nodes = np.zeros(n_slots)
        for j, job_id in enumerate(inst.job_ids):
            s, d = int(sol.starts[job_id]), int(inst.duration[j])
            used_nodes[max(0, s) : min(n_slots, s + d)] += float(inst.nodes[j])
        free = np.full(n_slots, np.inf)
        if snapshot.free_planned.size:
            k = min(n_slots, snapshot.free_planned.size)
            free[:k] = snapshot.free_planned[:k] - used_nodes[:k]
        for j, job_id in enumerate(inst.job_ids):
            s, d = int(sol.starts[job_id]), int(inst.duration[j])
            release, last = int(inst.release[j]), int(inst.deadline[j]) - d
            kw = float(inst.power_kw[j])
            for t in range(max(0, s), min(n_slots, s + d)):
                # Movable out of t: a start in its window that ends by t or begins after t.
                if release + d <= t or last >= t + 1:
                    shed_pending[t] += kw
            # Pulled earlier: it could start in any t before its planned start, nodes allowing.
            for t in range(max(0, release), min(s, n_slots)):
                if t + d <= int(inst.deadline[j]) and free[t] >= inst.nodes[j]:
                    absorb[t] += kw
    shed_suspend = np.zeros(n_slots)
    for r in running:
        if not r.can_pause(SLOT_SECONDS, margin_s):
            continue
        end = n_slots if r.end is None else max(0, min(n_slots, math.ceil((r.end - slot0) / SLOT_SECONDS)))
        shed_suspend[:end] += r.power_kw
    return [
        FlexSlot(
            start=slot0 + t * SLOT_SECONDS,
            shed_kw=_kw(shed_pending[t] + shed_suspend[t]),
            absorb_kw=_kw(absorb[t]),
            shed_deferrable_kw=_kw(shed_pending[t]),
            shed_suspendable_kw=_kw(shed_suspend[t]),
            baseline_kw=_kw(base.total_kw[t]),
            price_per_kwh=price_per_kwh,
        )
        for t in range(n_slots)
    ]


def _kw(x: float) -> float:
    return math.floor(float(x) / KW_STEP + 1e-9) * KW_STEP


@dataclass(frozen=True)
class Delivery:
    """What an order for ``requested`` kW per slot of a window can get: ``offered`` kW per slot,
    the running jobs to suspend for it, and the power ceiling the planner keeps pending work under."""

    first_slot: int  # index from floor_slot(now)
    requested: tuple[float, ...]
    offered: tuple[float, ...]
    suspend: tuple[str, ...]
    pending_cap_kw: tuple[float, ...]  # per slot of the window
    baseline_kw: tuple[float, ...]  # per slot of the window: running + planned, without the order
    reason: str  # why less than requested, or ""

    @property
    def full(self) -> bool:
        return all(o + 1e-9 >= r for o, r in zip(self.offered, self.requested, strict=True))


def deliverable(
    snapshot: PlanningSnapshot,
    forecast: SignalSeries | None,
    policy: Policy,
    running: Sequence[RunningLoad],
    window_start: int,
    requested: Sequence[float],
    margin_s: int,
) -> Delivery:
    """Check a reduction of ``requested[i]`` kW in the half-hours from ``window_start`` with the
    planner itself: suspensions first (opted-in jobs whose deadline allows the whole window),
    the rest by capping pending flexible work; cut down until the plan has no late job."""
    slot0 = floor_slot(snapshot.now)
    first = (floor_slot(window_start) - slot0) // SLOT_SECONDS
    n = len(requested)
    if first < 0 or n == 0:
        return Delivery(first, tuple(requested), (0.0,) * n, (), (), (), "the window has started or is empty")
    horizon = first + n + 1
    base = baseline(snapshot, forecast, policy, running, horizon)
    window_s = n * SLOT_SECONDS + max(0, window_start - (slot0 + first * SLOT_SECONDS))
    paused = [r for r in running if r.can_pause(window_s, margin_s) and (r.end is None or r.end > window_start)]
    # A paused job sheds, in each slot, what it would have drawn there without the order.
    pause_kw = running_kw(paused, slot0, horizon)[first : first + n]
    planned = base.planned_kw[first : first + n]
    # Suspension covers what it can; the rest comes out of the planned flexible work. Less than
    # the planned power of the slot can never be asked of the planner.
    want_pending = np.clip(np.asarray(requested, dtype=np.float64) - pause_kw, 0.0, None)
    scale = 1.0
    reason = ""
    if base.plan.instance is None and want_pending.any():
        want_pending[:] = 0.0
        reason = "no flexible pending work is planned (or no forecast): only suspension can deliver"
    for _ in range(12):
        take = np.minimum(want_pending * scale, planned)
        cap = np.full(horizon, np.inf)
        cap[first : first + n] = planned - take
        plan_, _ = plan_step(replace(_windows_on(snapshot), power_cap_kw=cap), forecast, policy)
        late = plan_.solution.late if plan_.solution is not None else ()
        if not late:
            break
        reason = f"deadlines of {', '.join(sorted(late)[:5])} would be missed at the full reduction"
        scale *= 0.8
    else:
        take = np.zeros(n)
        cap = np.full(horizon, np.inf)
        cap[first : first + n] = planned
    offered = tuple(_kw(min(r, float(p) + float(t))) for r, p, t in zip(requested, pause_kw, take, strict=True))
    if not reason and any(o + 1e-9 < r for o, r in zip(offered, requested, strict=True)):
        reason = f"the queue can shed at most {max(offered, default=0.0):.3f} kW in the window with every deadline kept"
    return Delivery(
        first_slot=first,
        requested=tuple(float(r) for r in requested),
        offered=offered,
        suspend=tuple(r.job_id for r in paused),
        pending_cap_kw=tuple(float(x) for x in cap[first : first + n]),
        baseline_kw=tuple(float(x) for x in base.total_kw[first : first + n]),
        reason=reason,
    )
