"""What the cluster can shed or absorb, per half-hour, from the live queue and its plan.

One pure function feeds both roles (offers as a provider, commitments as an aggregator):

- **shed** in slot t: the planned power of pending flexible jobs that can be moved out of t
  (another start in their window that avoids t, deadline kept), plus the power of running jobs
  whose owners opted in to suspension (``--comment=flex=suspendable``) and whose deadline
  leaves room for a half-hour's pause;
- **absorb** in slot t: the power of planned (deferred) jobs that could start in t instead,
  within the nodes free in t.

The per-slot figures are each for a half-hour activation on its own. A multi-slot window is
checked as a whole: a reduction by :func:`deliverable` (the planner re-plans the queue with the
power ceiling the order implies, and only what it can deliver with no job late is offered), an
increase by :func:`absorbable` (deferred jobs pulled into the window, most urgent first, only
where their nodes are free for their whole run, as the daemon will pull them).

Contracts already confirmed are passed in as :class:`Commitments`: a new quote is made against
the plan with their ceilings, suspensions and pulled jobs applied, so two commitments never
count the same flexibility.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from slurm_flex.beckn.store import ABSORB, SHED
from slurm_flex.grid.series import SLOT_SECONDS, SignalSeries, floor_slot
from slurm_flex.planner.instance import FloatArray, fit_slots
from slurm_flex.planner.policy import WINDOWS_OFF, Policy
from slurm_flex.planner.queue import FlexJob, Plan, PlanningSnapshot, placed_kw, plan_step

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
class Commitments:
    """What confirmed contracts already take from the queue, per slot from floor_slot(now): the
    ceiling their reductions put on planned flexible work, the running jobs they suspend (and
    the power that takes off in their windows), and the half-hours each direction covers. The
    jobs confirmed increases pull forward are pinned in the snapshot instead (:func:`pin`)."""

    cap_kw: FloatArray | None = None
    paused_kw: FloatArray | None = None
    paused: frozenset[str] = frozenset()
    shed_slots: frozenset[int] = frozenset()
    absorb_slots: frozenset[int] = frozenset()
    # What the site's other parts (the sites planned after the one quoted from) plan to draw,
    # per slot: part of every baseline, never moved by a quote.
    other_kw: FloatArray | None = None


NO_COMMITMENTS = Commitments()


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
    committed: Commitments = NO_COMMITMENTS,
) -> Baseline:
    """The plan without the order being quoted, but with the confirmed ones (``committed``)
    carried out: their ceiling on planned work, their suspended jobs off in their windows; the
    site's other parts' planned draw (``committed.other_kw``) counts as running. (The snapshot's
    own cap is the daemon's, from the contracts it knew when it wrote it: not used.)"""
    plan_, _ = plan_step(replace(_windows_on(snapshot), power_cap_kw=committed.cap_kw), forecast, policy)
    slot0 = floor_slot(snapshot.now)
    run = running_kw(running, slot0, n_slots) - fit_slots(committed.paused_kw, n_slots, 0.0)
    run = np.maximum(run, 0.0) + fit_slots(committed.other_kw, n_slots, 0.0)
    return Baseline(plan_, placed_kw(plan_, n_slots), run)


def flex_slots(
    snapshot: PlanningSnapshot,
    forecast: SignalSeries | None,
    policy: Policy,
    running: Sequence[RunningLoad],
    n_slots: int,
    price_per_kwh: float,
    margin_s: int,
    committed: Commitments = NO_COMMITMENTS,
) -> list[FlexSlot]:
    """Per half-hour from floor_slot(now): shed and absorb kW (see the module docstring)."""
    base = baseline(snapshot, forecast, policy, running, n_slots, committed)
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
        if r.job_id in committed.paused or not r.can_pause(SLOT_SECONDS, margin_s):
            continue
        end = n_slots if r.end is None else max(0, min(n_slots, math.ceil((r.end - slot0) / SLOT_SECONDS)))
        shed_suspend[:end] += r.power_kw
    # A half-hour a confirmed contract already covers offers nothing the other way.
    for t in committed.absorb_slots:
        if 0 <= t < n_slots:
            shed_pending[t] = shed_suspend[t] = 0.0
    for t in committed.shed_slots:
        if 0 <= t < n_slots:
            absorb[t] = 0.0
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
    pending_cap_kw: tuple[float, ...]  # per slot of the window (a reduction's; () for an increase)
    baseline_kw: tuple[float, ...]  # per slot of the window: running + planned, without the order
    reason: str  # why less than requested, or ""
    direction: str = SHED
    pulls: tuple[str, ...] = ()  # an increase: the jobs the quote counts on pulling forward

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
    committed: Commitments = NO_COMMITMENTS,
) -> Delivery:
    """Check a reduction of ``requested[i]`` kW in the half-hours from ``window_start`` with the
    planner itself: suspensions first (opted-in jobs whose deadline allows the whole window),
    the rest by capping pending flexible work; cut down until the plan has no late job. Against
    the plan with the ``committed`` contracts carried out; none in a half-hour a confirmed
    increase covers."""
    slot0 = floor_slot(snapshot.now)
    first = (floor_slot(window_start) - slot0) // SLOT_SECONDS
    n = len(requested)
    if first < 0 or n == 0:
        return Delivery(first, tuple(requested), (0.0,) * n, (), (), (), "the window has started or is empty")
    horizon = first + n + 1
    base = baseline(snapshot, forecast, policy, running, horizon, committed)
    blocked = np.asarray([first + i in committed.absorb_slots for i in range(n)], dtype=bool)
    window_s = n * SLOT_SECONDS + max(0, window_start - (slot0 + first * SLOT_SECONDS))
    # Nobody is suspended into a half-hour where the site must draw more; a job another
    # contract suspends is that contract's.
    paused = [
        r
        for r in running
        if not blocked.any()
        and r.job_id not in committed.paused
        and r.can_pause(window_s, margin_s)
        and (r.end is None or r.end > window_start)
    ]
    # A paused job sheds, in each slot, what it would have drawn there without the order.
    pause_kw = running_kw(paused, slot0, horizon)[first : first + n]
    planned = base.planned_kw[first : first + n]
    # Suspension covers what it can; the rest comes out of the planned flexible work. Less than
    # the planned power of the slot can never be asked of the planner.
    want_pending = np.clip(np.asarray(requested, dtype=np.float64) - pause_kw, 0.0, None)
    want_pending[blocked] = 0.0
    scale = 1.0
    reason = ""
    if blocked.any():
        reason = "a confirmed increase covers part of the window: nothing is offered there"
    if base.plan.instance is None and want_pending.any():
        want_pending[:] = 0.0
        reason = "no flexible pending work is planned (or no forecast): only suspension can deliver"
    # Outside the window the confirmed contracts' ceiling still holds.
    outside = fit_slots(committed.cap_kw, horizon, np.inf)
    for _ in range(12):
        take = np.minimum(want_pending * scale, planned)
        cap = outside.copy()
        cap[first : first + n] = planned - take
        plan_, _ = plan_step(replace(_windows_on(snapshot), power_cap_kw=cap), forecast, policy)
        late = plan_.solution.late if plan_.solution is not None else ()
        if not late:
            break
        reason = f"deadlines of {', '.join(sorted(late)[:5])} would be missed at the full reduction"
        scale *= 0.8
    else:
        take = np.zeros(n)
        cap = outside.copy()
        cap[first : first + n] = planned
    offered = tuple(
        0.0 if b else _kw(min(r, float(p) + float(t)))
        for r, p, t, b in zip(requested, pause_kw, take, blocked, strict=True)
    )
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


# -- increases: pulling deferred work forward ---------------------------------------------------


@dataclass(frozen=True)
class Movable:
    """A pending flexible job as an increase sees it: where the plan runs it, and what it takes."""

    job_id: str
    start: int  # planned start, slot from floor_slot(now)
    slots: int  # planned run, slots
    nodes: float
    power_kw: float
    ready: int  # the first slot it may start in (its earliest start, the user's --begin, allows)
    latest_start: int  # epoch: most urgent first
    # The solver placed it within the planning capacity; else it runs now outside the plan
    # (no_defer, late, ...) and may have to wait for nodes.
    placed: bool = True


def movables(snapshot: PlanningSnapshot, plan_: Plan) -> list[Movable]:
    """The plan's jobs with their slots: those the solver placed (its start, run length and power,
    as the baseline counts them) and those that run now outside it (no_defer, late, ...)."""
    slot0 = floor_slot(snapshot.now)
    flex: dict[str, FlexJob] = {j.job_id: j for j in snapshot.jobs}
    inst, sol = plan_.instance, plan_.solution
    placed = {job_id: j for j, job_id in enumerate(inst.job_ids)} if inst is not None and sol is not None else {}
    late = set(sol.late) if sol is not None else set()
    out = []
    for p in plan_.jobs:
        f = flex.get(p.job_id)
        if f is None:
            continue
        in_plan = p.job_id in placed and p.job_id not in late
        if inst is not None and sol is not None and p.job_id in placed:
            j = placed[p.job_id]
            start, slots, kw = int(sol.starts[p.job_id]), int(inst.duration[j]), float(inst.power_kw[j])
        else:
            start = max(0, (floor_slot(p.start) - slot0) // SLOT_SECONDS)
            slots = max(1, math.ceil(f.duration_s / SLOT_SECONDS))
            kw = f.power_w / 1000.0
        # It may start in the slot holding now only if it may start now; later, from the first
        # slot that begins at or after its earliest start.
        ready = 0 if f.earliest <= snapshot.now else math.ceil((f.earliest - slot0) / SLOT_SECONDS)
        out.append(Movable(p.job_id, start, slots, float(f.nodes), kw, ready, f.latest_start, in_plan))
    return out


def free_nodes(snapshot: PlanningSnapshot, movs: Sequence[Movable], n_slots: int) -> tuple[FloatArray, frozenset[str]]:
    """Nodes free per slot once running and queued work hold theirs (by time limits and by
    planned run times, whichever leaves fewer: never more than really idle) and the planned
    jobs theirs; and the jobs planned to run now outside the plan that find no nodes (they wait:
    they neither draw power nor hold nodes yet). No headroom or arrival reserve is kept: pulled
    work starts on idle nodes now."""
    by_limits, planned = snapshot.free_by_limits, snapshot.free_planned
    k = min(by_limits.size, planned.size)
    base = np.minimum(by_limits[:k], planned[:k]) if k else np.full(1, snapshot.usable_nodes)
    # Beyond the snapshot's horizon, as at its end.
    free = np.concatenate([base, np.full(max(0, n_slots - base.size), base[-1])])[:n_slots].astype(np.float64)
    waiting: set[str] = set()
    # The solver's placements fit its capacity; the others take what is left, most urgent first.
    for m in sorted(movs, key=lambda m: (not m.placed, m.latest_start, m.job_id)):
        run = slice(max(0, m.start), min(n_slots, m.start + m.slots))
        if not m.placed and np.any(free[run] + 1e-9 < m.nodes):
            waiting.add(m.job_id)
            continue
        free[run] -= m.nodes
    return free, frozenset(waiting)


@dataclass(frozen=True)
class Pulled:
    job_id: str
    slot: int  # the slot it is pulled into
    from_slot: int  # where the plan had it
    power_kw: float
    nodes: float


def pull_forward(
    movs: Sequence[Movable],
    free: FloatArray,
    wants: Sequence[tuple[int, float]],
    blocked: frozenset[int] = frozenset(),
) -> tuple[tuple[Pulled, ...], FloatArray]:
    """Pull deferred jobs forward to raise the planned power: for each (slot t, kW) of ``wants``
    in order, jobs the plan starts after t that may start in t, most urgent (earliest latest
    safe start) first, each only where its nodes are free for its whole run from t and that run
    crosses no ``blocked`` slot (a confirmed reduction), until the power in t is up by the kW
    asked. A job only ever moves earlier, so no deadline can suffer; its later slots lose it
    (a later ``wants`` slot makes up for that with other work). Returns the pulls and the rise
    in power per slot (negative where pulled work no longer runs). ``free`` is not changed."""
    n = free.size
    free = free.copy()
    rise = np.zeros(n)
    order = sorted(movs, key=lambda m: (m.latest_start, m.job_id))
    taken: set[str] = set()
    out: list[Pulled] = []
    for t, want in wants:
        if not 0 <= t < n:
            continue
        for m in order:
            if rise[t] + 1e-9 >= want:
                break
            if m.job_id in taken or m.start <= t or m.ready > t:
                continue
            end = min(n, t + m.slots)
            if any(u in blocked for u in range(t, t + m.slots)):
                continue
            # Its own planned slots free up as it moves: count them as its own.
            own = np.zeros(n)
            own[max(0, m.start) : min(n, m.start + m.slots)] = m.nodes
            if np.any(free[t:end] + own[t:end] + 1e-9 < m.nodes):
                continue
            free += own
            free[t:end] -= m.nodes
            rise[max(0, m.start) : min(n, m.start + m.slots)] -= m.power_kw
            rise[t:end] += m.power_kw
            taken.add(m.job_id)
            out.append(Pulled(m.job_id, t, m.start, m.power_kw, m.nodes))
    return tuple(out), rise


def pin(snapshot: PlanningSnapshot, pulls: Sequence[Pulled]) -> PlanningSnapshot:
    """The snapshot with pulled jobs held to the slot they are pulled into (earliest and latest
    planned start both there): how a confirmed increase is carried into another quote's plan."""
    slot0 = floor_slot(snapshot.now)
    at = {p.job_id: max(snapshot.now, slot0 + p.slot * SLOT_SECONDS) for p in pulls}
    if not at:
        return snapshot
    jobs = tuple(
        replace(j, earliest=at[j.job_id], plan_latest=at[j.job_id]) if j.job_id in at else j for j in snapshot.jobs
    )
    return replace(snapshot, jobs=jobs)


def absorbable(
    snapshot: PlanningSnapshot,
    forecast: SignalSeries | None,
    policy: Policy,
    running: Sequence[RunningLoad],
    window_start: int,
    requested: Sequence[float],
    committed: Commitments = NO_COMMITMENTS,
) -> Delivery:
    """Check an increase of ``requested[i]`` kW in the half-hours from ``window_start``: the
    deferred flexible work that can start in the window instead (its earliest start allowing,
    on nodes free for its whole run), pulled in as the daemon will pull it (:func:`pull_forward`),
    against the plan with the ``committed`` contracts carried out. Only what that raises the
    plan's power by is offered; none in a half-hour a confirmed reduction covers."""
    slot0 = floor_slot(snapshot.now)
    first = (floor_slot(window_start) - slot0) // SLOT_SECONDS
    n = len(requested)
    if first < 0 or n == 0:
        return Delivery(
            first, tuple(requested), (0.0,) * n, (), (), (), "the window has started or is empty", direction=ABSORB
        )
    # Far enough for every pulled job's whole run to be checked for free nodes.
    horizon = max(first + n + 1, snapshot.free_by_limits.size)
    base = baseline(snapshot, forecast, policy, running, horizon, committed)
    movs = movables(snapshot, base.plan)
    free, _ = free_nodes(snapshot, movs, horizon)
    blocked = [first + i in committed.shed_slots for i in range(n)]
    wants = [(first + i, 0.0 if b else float(r)) for i, (r, b) in enumerate(zip(requested, blocked, strict=True))]
    pulls, rise = pull_forward(movs, free, wants, committed.shed_slots)
    offered = tuple(
        0.0 if b else _kw(min(float(r), max(0.0, float(rise[first + i]))))
        for i, (r, b) in enumerate(zip(requested, blocked, strict=True))
    )
    reason = ""
    if any(blocked):
        reason = "a confirmed reduction covers part of the window: nothing is offered there"
    elif base.plan.instance is None:
        reason = "no flexible work is deferred (or no forecast): nothing can start earlier"
    elif any(o + 1e-9 < r for o, r in zip(offered, requested, strict=True)):
        reason = (
            f"the deferred work that can start in the window on free nodes adds at most "
            f"{max(offered, default=0.0):.3f} kW"
        )
    return Delivery(
        first_slot=first,
        requested=tuple(float(r) for r in requested),
        offered=offered,
        suspend=(),
        pending_cap_kw=(),
        baseline_kw=tuple(float(x) for x in base.total_kw[first : first + n]),
        reason=reason,
        direction=ABSORB,
        pulls=tuple(p.job_id for p in pulls),
    )
