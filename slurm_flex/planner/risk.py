"""Where would the queue put a job? Projections that keep deferral from costing a deadline.

A deferred job is invisible to Slurm's backfill: work that arrives while it waits for its clean
window can take the processors it was planned into. So every cycle the deferred jobs are tested
as if they were queued now, behind the work already waiting, in order of their latest safe
start: a job that would not start by its latest safe start (less a margin) even then is
released at once, while the queue can still make room for it. Slurm's backfill reserves
processors for the jobs it plans (``bf_max_job_test`` of them), so a released job keeps its
place against later arrivals; the projection below places jobs the same way.

All functions are pure and work on any time grid (the daemon's half-hour slots, the
simulator's 5-minute ticks): ``free`` is capacity left per step, in any unit jobs are sized in.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from slurm_flex.planner.instance import FloatArray

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

_EPS = 1e-9


def first_fit(free: FloatArray, size: float, length: int, limit: int | None = None, earliest: int = 0) -> int:
    """The first step from ``earliest`` on from which ``size`` fits in ``free`` for ``length``
    steps (searching starts up to ``limit``, default all); -1 when it never fits. Beyond the
    grid nothing is known, so a job running past its end only needs room for the part inside."""
    n = free.size
    if n == 0 or earliest >= n:
        return -1
    length = max(1, int(length))
    ok_step = np.concatenate((free >= size - _EPS, np.ones(min(length, n) - 1, dtype=bool)))
    # fits[k]: every step k .. k+length-1 has room (no False in that run).
    bad = np.concatenate(([0], np.cumsum(~ok_step)))
    span = min(length, n)
    fits = (bad[span : span + n] - bad[:n]) == 0
    if limit is not None:
        fits = fits[: max(0, limit + 1)]
    fits = fits[max(0, earliest) :]
    return int(np.argmax(fits)) + max(0, earliest) if fits.any() else -1


def place_in_order(
    free: FloatArray, sizes: FloatArray, lengths: IntArray, earliest: IntArray | None = None
) -> tuple[IntArray, FloatArray]:
    """Place jobs in the given order, each at its first fit from its earliest step (conservative
    backfilling: a later job never delays an earlier one). Returns each job's start step (-1:
    not within the grid) and the capacity left afterwards. A job that does not fit is charged
    nothing."""
    left = np.array(free, dtype=np.float64, copy=True)
    starts = np.full(len(sizes), -1, dtype=np.int64)
    for i, (size, length) in enumerate(zip(sizes, lengths, strict=True)):
        k = first_fit(left, float(size), int(length), earliest=0 if earliest is None else int(earliest[i]))
        if k >= 0:
            left[k : k + max(1, int(length))] -= size
            starts[i] = k
    return starts, left


def at_risk(
    free: FloatArray,
    sizes: FloatArray,
    lengths: IntArray,
    latest: IntArray,
    margin: int,
    earliest: IntArray | None = None,
) -> BoolArray:
    """Which jobs would miss their latest safe start (step ``latest[i]``, less ``margin`` steps)
    if every one of them were queued now, behind the work already in ``free``, in order of
    latest safe start. Those must be released now; the others may still wait. A job whose
    latest safe start lies beyond the grid is judged later, when the grid reaches it."""
    n = len(sizes)
    risky = np.zeros(n, dtype=bool)
    if n == 0:
        return risky
    left = np.array(free, dtype=np.float64, copy=True)
    for i in np.argsort(latest, kind="stable"):
        length = max(1, int(lengths[i]))
        size = float(sizes[i])
        deadline = int(latest[i]) - margin
        first = 0 if earliest is None else int(earliest[i])
        k = first_fit(left, size, length, limit=deadline, earliest=first) if deadline >= 0 else -1
        if k < 0:
            risky[i] = deadline < left.size
            k = first_fit(left, size, length, earliest=first)  # still takes room in the projection
        if k >= 0:
            left[k : k + length] -= size
    return risky


#: Tiers :func:`expedite` gives queued jobs: left in place, moved to the head of the queue,
#: moved right behind those (at risk, but not saved even at the head by time limits).
IN_PLACE, HEAD, NEXT = 0, 1, 2


def expedite(
    free: FloatArray,
    sizes: FloatArray,
    lengths: IntArray,
    latest: IntArray,
    moved: BoolArray,
    margin: int,
    earliest: IntArray | None = None,
) -> IntArray:
    """Where queued jobs with deadlines should wait: :data:`IN_PLACE`, :data:`HEAD` or
    :data:`NEXT` (each tier in order of latest safe start).

    The jobs are the waiting queue in its priority order (those already moved first);
    ``latest[i] < 0`` marks a job with no deadline, never moved. ``free`` is what the running
    work leaves. A job is at risk when the queue, placed in order, would not start it by its
    latest safe start less ``margin`` (the projection is redone before the margin runs out).
    The jobs at risk (with those moved before) are placed first in order of latest safe start:
    those that start in time there go to the head. The others would miss even there by their
    time limits; putting them first would only make others miss too (the domino effect of
    earliest-deadline-first under overload), so they queue right behind, where work ending
    before its time limit can still save them."""
    n = len(sizes)
    tier = np.zeros(n, dtype=np.int64)
    if n == 0:
        return tier
    first = np.zeros(n, dtype=np.int64) if earliest is None else earliest
    starts, _ = place_in_order(free, sizes, lengths, first)
    has_deadline = latest >= 0
    late = has_deadline & ~moved & ((starts < 0) | (starts > latest - margin))
    candidates = np.flatnonzero(late | (moved & has_deadline))
    left = np.array(free, dtype=np.float64, copy=True)
    for i in candidates[np.argsort(latest[candidates], kind="stable")]:
        length = max(1, int(lengths[i]))
        k = first_fit(left, float(sizes[i]), length, limit=int(latest[i]), earliest=int(first[i]))
        if k >= 0:
            left[k : k + length] -= sizes[i]
            tier[i] = HEAD
        else:
            tier[i] = NEXT
    return tier
