"""Load shaping: how much of the machine the waiting queue may use, slot by slot.

Deferring single jobs moves little on a busy machine: the queue is already the machine's own
deferral, a released job waits behind work that came after it, and the rules that keep a big
job from being overtaken stop most deferrals (see bench/results/simulate.txt). The clairvoyant
bound does something else: it leaves processors idle in dirty hours and fills the clean hours
with the backlog, every job still in time. This module plans that directly, as a fluid model of
the queue:

* ``u[t]``, the processor-slots of queued (not yet started) work the machine may run in slot t,
  at most what running work leaves free;
* by the end of each slot, at least the work that is due by then has run (``due``: cumulative,
  the queued jobs' work by their latest start plus run time, and the work expected to arrive,
  by its deadline);
* the least carbon (or cost) over the forecast.

The queue keeps its own order (no job overtakes another because of slurm-flex); only how much of
it may start changes. ``u`` in the current slot is the **start budget**: jobs with deadlines start
in queue order while they fit in it (the simulator's scheduler; the daemon gives the flexible jobs
beyond it a begin time just after its next cycle), and a queue projection (by predicted run times,
and by time limits for jobs wider than half the machine) refuses any hold that would make a job
late (the fluid model does not pack jobs). Past a job's latest safe start the risk guard
(planner.risk, by time limits) moves it up the queue whatever was held. Pure; one small LP
(HiGHS) per planning step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.optimize import linprog

from slurm_flex.grid.series import SLOT_SECONDS
from slurm_flex.planner.instance import FloatArray, fit_slots
from slurm_flex.planner.policy import Policy
from slurm_flex.planner.risk import first_fit

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

# Per slot later, so that among equal forecasts work runs earlier (less delay, less risk).
_EARLIER = 1e-6
# The fluid plan looks this many half-hours ahead (two days: past the slack of most flexible
# work, and about as far as day-ahead prices and carbon forecasts reach).
HORIZON_SLOTS = 96
# The latest safe start of a queued job without a deadline (never read: such work is not held).
NO_LATEST = 2**40


def slot_weight(carbon: FloatArray, price: FloatArray, policy: Policy) -> FloatArray:
    """What the fluid plan minimises, per slot and kWh, by the policy's objective (as the window
    planner's, planner.instance): the carbon forecast (g/kWh) when price does not count; the price
    (GBP/MWh) when carbon has no price; otherwise price plus carbon at its price (g/kWh x GBP/t /
    1000 is GBP/MWh). A forecast with no price at all is weighed by carbon, as
    :func:`planner.policy.with_objective` plans without a price series. A single slot of unknown
    price stays NaN: :func:`shape_load` counts it as the dearest slot, so no work is planned
    into it on a guess."""
    carbon = np.asarray(carbon, dtype=np.float64)
    price = np.asarray(price, dtype=np.float64)
    if not policy.use_price or not np.isfinite(price).any():
        return carbon.copy()
    if policy.carbon_price_gbp_per_tonne == 0:
        return price.copy()
    return np.asarray(price + carbon * (policy.carbon_price_gbp_per_tonne / 1000.0), dtype=np.float64)


def arrival_due_slots(slack_s: Sequence[float] | FloatArray, default_slack_s: float, slot_seconds: int) -> int:
    """Slots after it arrives by which the coming work is due: the median slack (latest safe
    start less arrival) of the flexible work seen, or ``default_slack_s`` when none was seen.
    0 leaves arrivals out of the plan (see :func:`cumulative_due`)."""
    slack = np.asarray(slack_s, dtype=np.float64)
    slack = slack[np.isfinite(slack) & (slack > 0)]
    if slack.size == 0:
        return max(0, int(default_slack_s // slot_seconds))
    return int(float(np.median(slack)) // slot_seconds)


def cumulative_due(
    horizon: int,
    work: FloatArray,
    due_slot: FloatArray,
    arrival_rate: float = 0.0,
    arrival_due_slots: int = 0,
) -> FloatArray:
    """The work (processor-slots) that must have run by the end of each slot: each queued job's
    ``work[i]`` from slot ``due_slot[i]`` on (clipped into the horizon), plus ``arrival_rate``
    per slot arriving from now on, each due ``arrival_due_slots`` after it arrives."""
    due = np.zeros(horizon)
    if work.size:
        k = np.clip(np.floor(due_slot).astype(np.int64), 0, horizon - 1)
        np.add.at(due, k, work)
    cum = np.cumsum(due)
    if arrival_rate > 0 and arrival_due_slots > 0:
        arrived_due = np.maximum(0, np.arange(horizon) - arrival_due_slots + 1)
        cum = cum + arrival_rate * arrived_due
    return np.asarray(cum, dtype=np.float64)


def shape_load(weight: FloatArray, free: FloatArray, due: FloatArray) -> FloatArray | None:
    """Processor-slots of queued work to run in each slot: the least ``weight`` (carbon or
    cost per processor-slot, the forecast) within ``free`` per slot, with at least ``due[t]``
    run by the end of slot t (cumulative). None when even running all of ``free`` cannot meet
    ``due`` (nothing may be held back)."""
    n = weight.size
    if n == 0:
        return np.zeros(0)
    free = np.maximum(np.asarray(free, dtype=np.float64), 0.0)
    if (np.cumsum(free) < due - 1e-6).any():
        return None
    cost = np.nan_to_num(weight, nan=float(np.nanmax(weight)) if np.isfinite(weight).any() else 0.0)
    cost = cost + _EARLIER * np.arange(n) * max(1.0, float(np.abs(cost).max()))
    # sum_{s<=t} u_s >= due_t, written as -L u <= -due (L lower-triangular ones).
    lower = np.tril(np.ones((n, n)))
    result = linprog(
        cost,
        A_ub=-lower,
        b_ub=-due,
        bounds=list(zip(np.zeros(n), free, strict=True)),
        method="highs",
    )
    if result.status != 0:
        return None
    return np.asarray(result.x, dtype=np.float64)


@dataclass(frozen=True)
class QueuedWork:
    """The waiting queue, in its priority order, on a step grid (the simulator's 5-minute ticks,
    the daemon's half-hour slots)."""

    procs: FloatArray
    planned_steps: IntArray  # the run time it is planned with (planner.runtime), in steps
    limit_steps: IntArray  # its time limit, in steps
    latest_step: IntArray  # its latest safe start, steps from now
    has_deadline: BoolArray


@dataclass(frozen=True)
class Hold:
    """What to hold back from the queue until the next planning step, and why."""

    procs: float
    reason: str
    served: FloatArray | None = None  # the fluid plan: queued work to run per slot

    # Whether the start budget applies (nothing may be kept idle when the machine is full now, yet
    # what frees up may still have to wait for cleaner hours).
    limited: bool = False

    @property
    def holding(self) -> bool:
        return self.limited and self.served is not None

    @property
    def start_budget(self) -> float:
        """Processors of queued work that may start until the next step (inf: any)."""
        if not self.holding or self.served is None:
            return math.inf
        return float(max(0.0, self.served[0]))


def planned_hold(
    weight: FloatArray,
    running_planned: FloatArray,
    running_limits: FloatArray,
    capacity: float,
    queue: QueuedWork,
    arrival_load: float,
    arrival_due_slots: int,
    arrival_run_slots: int,
    steps_per_slot: int,
    margin_slots: int,
    headroom: float = 0.95,
    max_span_slots: int = 96,
    exempt_steps: int = 0,
    max_queue: int = 0,
    guard_predicted: bool = False,
    guard_wide_share: float = 0.5,
) -> Hold:
    """Processors to keep from the queue this slot.

    ``weight`` is the forecast per slot from the current one (carbon, cost or both per kWh); ``running_planned`` and
    ``running_limits`` the processors running work holds per step, by predicted run times and by time limits. The
    fluid plan (:func:`shape_load`) runs the queued work, and the work expected to arrive (``arrival_load``
    processors, each due ``arrival_due_slots`` after it arrives, typically running ``arrival_run_slots``), in the
    cleanest slots before it is due; a job started in a slot runs on, so a slot is weighed by the mean forecast over
    the queue's typical run time from it (at most ``max_span_slots``). What the plan leaves unused of this slot is
    held back, if the queue in its order (by predicted run times with ``guard_predicted``, and by time limits for
    jobs wider than ``guard_wide_share`` of the machine; else by time limits), with that held back this slot and
    nothing from the next one, still starts every job by its latest safe start less ``margin_slots``: each step is
    checked the same way, so the queue stays able to meet every deadline. Work the start budget never holds (no
    deadline, or a latest safe start within ``exempt_steps``) is projected without the hold: it may use what is
    held back."""
    h = weight.size
    if h == 0:
        return Hold(0.0, "no forecast")
    steps = h * steps_per_slot
    planned = fit_slots(running_planned, steps, 0.0)
    free = np.maximum(capacity - planned.reshape(h, steps_per_slot).mean(axis=1), 0.0)
    work = queue.procs * queue.planned_steps / steps_per_slot
    # Work without a deadline is not held back: it runs as it can, now.
    latest_slot = np.where(queue.has_deadline, queue.latest_step / steps_per_slot, margin_slots)
    due_slot = latest_slot - margin_slots + queue.planned_steps / steps_per_slot
    if work.sum() > 0:
        span = float((work * queue.planned_steps).sum() / work.sum()) / steps_per_slot
    else:
        span = float(arrival_run_slots)  # nothing queued: a typical job of the coming work
    span_slots = int(min(max(1, round(span)), h, max_span_slots))
    window = np.pad(weight, (0, span_slots - 1), mode="edge")
    weighed = np.convolve(window, np.ones(span_slots) / span_slots, mode="valid")[:h]
    served = shape_load(weighed, free * headroom, cumulative_due(h, work, due_slot, arrival_load, arrival_due_slots))
    if served is None:
        return Hold(0.0, "the queue needs every free processor to meet its deadlines")
    # The machine full now (by predicted run times): nothing to keep idle, but what frees up this
    # step waits unless the plan fills the first step with room.
    full_now = free[0] < 1
    room = np.flatnonzero(free >= 1)
    first = int(room[0]) if full_now and room.size else 0
    if served[first] >= free[first] * headroom - 1e-6:
        return Hold(0.0, "now is among the cleanest hours the queue's deadlines allow", served)
    hold = max(0.0, float(free[0] - served[0]))
    budget = max(0.0, float(served[0]))
    if hold < 1 and not full_now:
        return Hold(0.0, "less than a processor to hold back", served)
    # The guard places every queued job as if each had a reservation; Slurm's backfill plans only
    # the first bf_max_job_test, and behind a deeper queue holding back is not safe (LLNL-Thunder,
    # next-workday deadlines: 892 new misses in 42 days without this limit, 71 with 100).
    if max_queue and int(queue.has_deadline.sum()) > max_queue:
        return Hold(0.0, f"more than {max_queue} queued jobs with deadlines: too deep to hold back safely", served)
    exempt = ~queue.has_deadline | (queue.latest_step <= exempt_steps)
    limit = queue.latest_step - steps_per_slot * margin_slots

    def made_late(running: FloatArray, lengths: IntArray) -> BoolArray:
        """The jobs the hold makes late, with the queue projected by ``lengths`` and running
        work by ``running``. A job near its latest safe start that the queue starts too late
        anyway (one already due, say) is the risk guard's business and not held; any other job
        late with the hold counts (late anyway or not: on CEA-Curie, holding past such jobs
        missed deadlines)."""
        free_steps = capacity - fit_slots(running, steps, 0.0)

        def late(start_budget: float) -> BoolArray:
            starts = _place_holding(free_steps, queue, exempt, start_budget, steps_per_slot, lengths)
            return queue.has_deadline & (((starts < 0) & (limit < steps)) | (starts > limit))

        return late(budget) & ~(late(math.inf) & exempt)

    if guard_predicted:
        pushed = made_late(running_planned, queue.planned_steps)
        # Wide jobs wait for most of the machine: a projection that frees it too early (by
        # predictions) starved KTH's near-whole-machine jobs, so they are held to time limits too.
        wide = queue.procs > guard_wide_share * capacity
        if wide.any() and not pushed.any():
            pushed = wide & made_late(running_limits, queue.limit_steps)
    else:
        pushed = made_late(running_limits, queue.limit_steps)
    if pushed.any():
        return Hold(0.0, "holding back would push a queued job past its latest safe start", served)
    return Hold(hold, "cleaner hours ahead can run the queue before its deadlines", served, limited=True)


def _place_holding(
    free: FloatArray, queue: QueuedWork, exempt: BoolArray, budget: float, budget_steps: int, lengths: IntArray
) -> IntArray:
    """The queue placed in its order at first fits (planner.risk.place_in_order), each job for
    ``lengths`` steps, where jobs other than the ``exempt`` ones start within the first
    ``budget_steps`` only while their processors fit in what is left of ``budget`` (as the
    start budget lets them)."""
    left = np.array(free, dtype=np.float64, copy=True)
    starts = np.full(queue.procs.size, -1, dtype=np.int64)
    for i in range(queue.procs.size):
        size, length = float(queue.procs[i]), int(lengths[i])
        k = first_fit(left, size, length)
        if 0 <= k < budget_steps and not exempt[i]:
            if size <= budget + 1e-9:
                budget -= size
            else:
                k = first_fit(left, size, length, earliest=budget_steps)
        if k >= 0:
            left[k : k + max(1, length)] -= size
            starts[i] = k
    return starts


@dataclass(frozen=True)
class ShapingSnapshot:
    """Everything one load-shaping step decides from (the inputs of :func:`planned_hold`): the
    daemon records it with each cycle's plan (``<state_dir>/plans``) and the simulator builds one
    every half-hour, and both hand it to :func:`hold_from_snapshot`, so the same snapshot holds
    back the same in either (tests/test_policy_parity.py replays the daemon's)."""

    now: int
    weight: FloatArray  # per slot from the current one: the forecast objective (slot_weight)
    running_planned: FloatArray  # processors running work holds per step, by predicted run times
    running_limits: FloatArray  # the same by time limits
    capacity: float  # usable processors (the daemon: nodes)
    queue: QueuedWork  # the waiting queue, in priority order
    arrival_load: float  # processors the work arriving keeps busy (the last day's mean)
    arrival_due_slots: int  # slots after arrival the coming work is due (arrival_due_slots)
    arrival_run_slots: int  # the coming work's typical run, in slots
    margin_slots: int  # deadline-risk margin (policy margin plus a planning interval)
    steps_per_slot: int = 1  # 1 for the daemon's half-hour grid, 6 for the simulator's ticks
    job_ids: tuple[str, ...] = ()  # the queue's jobs, in its order (to explain; may be empty)


def exempt_steps(policy: Policy, step_seconds: float) -> int:
    """Steps before its latest safe start from which a job is never held back
    (``shape_exempt_hours``), on a grid of ``step_seconds``."""
    return round(policy.shape_exempt_hours * 3600 / step_seconds)


def hold_from_snapshot(snapshot: ShapingSnapshot, policy: Policy) -> Hold:
    """One load-shaping step: what to hold back from the queue until the next one."""
    s = snapshot
    return planned_hold(
        s.weight,
        s.running_planned,
        s.running_limits,
        s.capacity,
        s.queue,
        s.arrival_load,
        s.arrival_due_slots,
        s.arrival_run_slots,
        s.steps_per_slot,
        s.margin_slots,
        policy.shape_headroom,
        policy.shape_span_slots,
        exempt_steps=exempt_steps(policy, SLOT_SECONDS / s.steps_per_slot),
        max_queue=policy.shape_max_queue,
        guard_predicted=policy.shape_guard_runtime == "predicted",
        guard_wide_share=policy.shape_guard_wide_share,
    )


BUDGET = "budget"  # held: beyond the start budget
BEHIND = "behind"  # held: it would take the processors of a job held ahead of it


def holds_in_order(
    sizes: Sequence[float], budgeted: Sequence[bool], holdable: Sequence[bool], free: float, budget: float
) -> list[str | None]:
    """Which queued jobs (in queue order) to hold until the next step, and why (None: not held).

    ``free`` is what is idle now; ``holdable``, the jobs slurm-flex may hold (with a deadline,
    not moved up for it); ``budgeted``, those of them the start ``budget`` applies to (not within
    ``shape_exempt_hours`` of their latest safe start). A budgeted job beyond what is left of the
    budget is held (:data:`BUDGET`), whether it fits now or not (it could by the next step), and
    a smaller one behind it may still start. The first held job keeps its place: a claim on its
    processors, as a backfill reservation at its place would keep, so that a holdable job behind
    it (budgeted or exempt) that fits now only by taking those processors is held too
    (:data:`BEHIND`). Only the first job that cannot start gets a reservation (the scheduler's
    own, when that job is not held): after it there is no claim to keep. Without the claim the
    held head of the queue is overtaken, and a wide job can wait behind smaller work past its
    deadline (simulated on KTH-SP2, 42 days, 24 h: 31 % of the bound instead of 37 %, and 3 new
    misses). The simulator's backfill (simulate.engine._easy) gives the first held job that
    reservation; the daemon keeps the claim by holding those behind it."""
    held: list[str | None] = []
    claim = 0.0
    reserved = False  # the one reservation (a held job's claim, or the scheduler's) is taken
    for size, in_budget, may_hold in zip(sizes, budgeted, holdable, strict=True):
        fits = size <= free + 1e-9
        if may_hold and in_budget and size > budget + 1e-9:
            if not reserved and fits:
                claim += size
            reserved = True
            held.append(BUDGET)
            continue
        if not fits:
            reserved = True
            if may_hold and in_budget:
                budget -= size  # it may start within the step, as nodes come free
            held.append(None)
            continue
        if may_hold and size > free - claim + 1e-9:
            held.append(BEHIND)
            continue
        free -= size  # it starts now (the scheduler's, if slurm-flex may not hold it)
        if may_hold and in_budget:
            budget -= size
        held.append(None)
    return held


def _floats(values: FloatArray) -> list[float | None]:
    return [float(x) if math.isfinite(x) else None for x in np.asarray(values, dtype=np.float64)]


def _array(values: Sequence[float | None]) -> FloatArray:
    return np.asarray([math.nan if x is None else x for x in values], dtype=np.float64)


def shaping_to_json(snapshot: ShapingSnapshot) -> dict[str, Any]:
    """A snapshot as JSON (NaN, an unknown forecast value, as null)."""
    q = snapshot.queue
    return {
        "now": snapshot.now,
        "weight": _floats(snapshot.weight),
        "running_planned": _floats(snapshot.running_planned),
        "running_limits": _floats(snapshot.running_limits),
        "capacity": snapshot.capacity,
        "queue": {
            "procs": _floats(q.procs),
            "planned_steps": [int(x) for x in q.planned_steps],
            "limit_steps": [int(x) for x in q.limit_steps],
            "latest_step": [int(x) for x in q.latest_step],
            "has_deadline": [bool(x) for x in q.has_deadline],
        },
        "arrival_load": snapshot.arrival_load,
        "arrival_due_slots": snapshot.arrival_due_slots,
        "arrival_run_slots": snapshot.arrival_run_slots,
        "margin_slots": snapshot.margin_slots,
        "steps_per_slot": snapshot.steps_per_slot,
        "job_ids": list(snapshot.job_ids),
    }


def shaping_from_json(doc: Mapping[str, Any]) -> ShapingSnapshot:
    q = doc["queue"]
    return ShapingSnapshot(
        now=int(doc["now"]),
        weight=_array(doc["weight"]),
        running_planned=_array(doc["running_planned"]),
        running_limits=_array(doc["running_limits"]),
        capacity=float(doc["capacity"]),
        queue=QueuedWork(
            procs=_array(q["procs"]),
            planned_steps=np.asarray(q["planned_steps"], dtype=np.int64),
            limit_steps=np.asarray(q["limit_steps"], dtype=np.int64),
            latest_step=np.asarray(q["latest_step"], dtype=np.int64),
            has_deadline=np.asarray(q["has_deadline"], dtype=np.bool_),
        ),
        arrival_load=float(doc["arrival_load"]),
        arrival_due_slots=int(doc["arrival_due_slots"]),
        arrival_run_slots=int(doc["arrival_run_slots"]),
        margin_slots=int(doc["margin_slots"]),
        steps_per_slot=int(doc.get("steps_per_slot", 1)),
        job_ids=tuple(str(j) for j in doc.get("job_ids", ())),
    )


def hold_to_json(hold: Hold) -> dict[str, Any]:
    """What a step held back: processors (nodes), the start budget (null: none) and why."""
    budget = hold.start_budget
    return {
        "nodes": hold.procs,
        "budget": budget if math.isfinite(budget) else None,
        "reason": hold.reason,
        "served": None if hold.served is None else _floats(hold.served),
    }
