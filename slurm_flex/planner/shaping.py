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

The queue keeps its own order (no job overtakes another because of slurm-flex); only the number
of processors it may fill changes. The difference ``free - u`` in the current slot is what the
daemon holds back (an idle-node reservation in Slurm), and a queue projection in the caller
checks that no job is pushed past its latest safe start by it (the fluid model does not pack
jobs). Pure; one small LP (HiGHS) per planning step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.optimize import linprog

from slurm_flex.planner.instance import FloatArray
from slurm_flex.planner.risk import place_in_order

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

# Per slot later, so that among equal forecasts work runs earlier (less delay, less risk).
_EARLIER = 1e-6


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

    @property
    def start_budget(self) -> float:
        """Processors of queued work that may start until the next step (inf: any)."""
        if self.procs <= 0 or self.served is None:
            return math.inf
        return float(self.served[0])


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
) -> Hold:
    """Processors to keep from the queue this slot.

    ``weight`` is the forecast per slot from the current one (carbon, cost or both per kWh); ``running_planned`` and
    ``running_limits`` the processors running work holds per step, by predicted run times and by time limits. The
    fluid plan (:func:`shape_load`) runs the queued work, and the work expected to arrive (``arrival_load``
    processors, each due ``arrival_due_slots`` after it arrives, typically running ``arrival_run_slots``), in the
    cleanest slots before it is due; a job started in a slot runs on, so a slot is weighed by the mean forecast over
    the queue's typical run time from it (at most ``max_span_slots``). What the plan leaves unused of this slot is
    held back, if the queue in its order, by time limits, with that held back this slot and nothing from the next
    one, still starts every job by its latest safe start less ``margin_slots``: each step is checked the same way,
    so the queue stays able to meet every deadline."""
    h = weight.size
    if h == 0:
        return Hold(0.0, "no forecast")
    steps = h * steps_per_slot
    planned = _fit(running_planned, steps)
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
    served = shape_load(
        weighed, free * headroom, cumulative_due(h, work, due_slot, arrival_load, arrival_due_slots)
    )
    if served is None:
        return Hold(0.0, "the queue needs every free processor to meet its deadlines")
    if served[0] >= free[0] * headroom - 1e-6:
        return Hold(0.0, "now is among the cleanest hours the queue's deadlines allow", served)
    hold = float(free[0] - served[0])
    if hold < 1:
        return Hold(0.0, "less than a processor to hold back", served)
    left = capacity - _fit(running_limits, steps)
    left[:steps_per_slot] -= hold
    starts, _ = place_in_order(left, queue.procs, queue.limit_steps)
    limit = queue.latest_step - steps_per_slot * margin_slots
    late = queue.has_deadline & (((starts < 0) & (limit < steps)) | (starts > limit))
    if late.any():
        return Hold(0.0, "holding back would push a queued job past its latest safe start", served)
    return Hold(hold, "cleaner hours ahead can run the queue before its deadlines", served)


def _fit(values: FloatArray, n: int) -> FloatArray:
    """``values`` cut or padded with zeros to ``n`` steps (a copy)."""
    out = np.zeros(n)
    k = min(n, values.size)
    out[:k] = values[:k]
    return out
