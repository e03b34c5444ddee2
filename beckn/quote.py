"""Quoting a buyer's need, for both roles (the endpoint's select/init/confirm/update and the
aggregator's answer to a published need): a reduction is checked by
:func:`flexibility.deliverable`, an increase (negative PRICE) by :func:`flexibility.absorbable`,
each against the plan with the contracts already confirmed carried out (:func:`committed_by`),
so that a second contract overlapping a first is not sold the same flexibility again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from slurm_flex.beckn.activation import power_cap, power_floor
from slurm_flex.beckn.contract import Need
from slurm_flex.beckn.flexibility import (
    Commitments,
    Delivery,
    RunningLoad,
    absorbable,
    baseline,
    deliverable,
    free_nodes,
    movables,
    pin,
    pull_forward,
    running_kw,
)
from slurm_flex.beckn.inputs import FlexInput
from slurm_flex.beckn.store import ABSORB, Contract
from slurm_flex.grid.series import SLOT_SECONDS, SignalSeries, floor_slot
from slurm_flex.planner.policy import Policy
from slurm_flex.planner.queue import PlanningSnapshot


def _slots(c: Contract, slot0: int, n_slots: int) -> list[int]:
    """The slots (from ``slot0``) a contract's window touches, within the horizon."""
    first = (floor_slot(c.window_start) - slot0) // SLOT_SECONDS
    return [first + k for k in range(len(c.baseline)) if 0 <= first + k < n_slots]


def committed_by(
    contracts: Sequence[Contract],
    snapshot: PlanningSnapshot,
    forecast: SignalSeries | None,
    policy: Policy,
    running: Sequence[RunningLoad],
    n_slots: int,
    other_kw: Sequence[float] = (),
) -> tuple[Commitments, PlanningSnapshot]:
    """What the ACTIVE contracts whose window is not over take from the queue, and the snapshot
    with the jobs their increases pull forward pinned where they go (pure). Reductions give the
    ceiling on planned work (:func:`activation.power_cap`, as the daemon applies it) and the
    suspended jobs, whose power is off in their windows; increases are pulled in window order,
    each against the plan with the ones before it applied, as the daemon will pull them.
    ``other_kw``: what the site's other parts plan to draw (part of every baseline and floor)."""
    now = snapshot.now
    slot0 = floor_slot(now)
    live = [c for c in contracts if c.status == "ACTIVE" and c.window_end > now]
    shed = [c for c in live if c.direction != ABSORB]
    absorb = sorted((c for c in live if c.direction == ABSORB), key=lambda c: (c.window_start, c.id))
    by_id = {r.job_id: r for r in running}
    paused_kw = np.zeros(n_slots)
    paused: set[str] = set()
    for c in shed:
        slots = _slots(c, slot0, n_slots)
        for job in c.suspend:
            r = by_id.get(job)
            if r is None or not slots:
                continue
            paused.add(job)
            kw = running_kw([r], slot0, n_slots)
            paused_kw[slots[0] : slots[-1] + 1] += kw[slots[0] : slots[-1] + 1]
    committed = Commitments(
        cap_kw=power_cap(shed, now, n_slots, running),
        paused_kw=paused_kw if paused else None,
        paused=frozenset(paused),
        shed_slots=frozenset(t for c in shed for t in _slots(c, slot0, n_slots)),
        absorb_slots=frozenset(t for c in absorb for t in _slots(c, slot0, n_slots)),
        other_kw=np.asarray(other_kw, dtype=np.float64) if len(other_kw) else None,
    )
    others = np.zeros(n_slots)
    k = min(n_slots, len(other_kw))
    others[:k] = np.asarray(other_kw[:k], dtype=np.float64)
    for c in absorb:
        # As the daemon will: what its floor asks of pending work beyond what the plan already
        # runs in each half-hour (jobs it has pulled so far run now, and count as running).
        floor = power_floor([c, *shed], now, n_slots, running)
        if floor is None:
            continue
        base = baseline(snapshot, forecast, policy, running, n_slots, committed)
        movs = movables(snapshot, base.plan)
        free, waiting = free_nodes(snapshot, movs, n_slots)
        draw = others.copy()  # the other sites' planned work counts toward the floor
        for m in movs:
            if m.job_id not in waiting:
                draw[max(0, m.start) : min(n_slots, m.start + m.slots)] += m.power_kw
        wants = [(t, float(floor[t] - draw[t])) for t in _slots(c, slot0, n_slots) if floor[t] > draw[t] + 1e-9]
        pulls, _ = pull_forward(movs, free, wants, committed.shed_slots)
        snapshot = pin(snapshot, pulls)
    return committed, snapshot


def slot_requests(need: Need) -> tuple[int, list[float], list[int]]:
    """The buyer's intervals on the planner's half-hours: the first slot's start, the most asked
    in each slot, and the slot of each interval."""
    first = floor_slot(need.window_start)
    slot_of = [(need.window_start + i * need.interval_s - first) // SLOT_SECONDS for i in range(len(need.requested))]
    per_slot = [0.0] * (max(slot_of) + 1 if slot_of else 0)
    for s, r in zip(slot_of, need.requested, strict=True):
        per_slot[s] = max(per_slot[s], r)
    return first, per_slot, slot_of


def quote_need(
    flex: FlexInput,
    need: Need,
    policy: Policy,
    margin_s: int,
    contracts: Sequence[Contract],
    exclude: str | None = None,
) -> tuple[Delivery, tuple[float, ...], str]:
    """What can be offered per interval of ``need`` (its direction by the sign of PRICE), with
    the other confirmed ``contracts`` (all but ``exclude``, the one being re-quoted) applied.
    Returns the check, the kW offered per interval and why it is less than asked (or "")."""
    snapshot = flex.snapshot
    first, per_slot, slot_of = slot_requests(need)
    n_slots = max(snapshot.free_by_limits.size, (first - floor_slot(snapshot.now)) // SLOT_SECONDS + len(per_slot) + 1)
    others = [c for c in contracts if c.id != exclude]
    committed, pinned = committed_by(others, snapshot, flex.forecast, policy, flex.running, n_slots, flex.other_kw)
    start = max(first, need.window_start)
    if need.direction == ABSORB:
        d = absorbable(pinned, flex.forecast, policy, flex.running, start, per_slot, committed)
    else:
        d = deliverable(pinned, flex.forecast, policy, flex.running, start, per_slot, margin_s, committed)
    offered = tuple(min(r, d.offered[s]) for r, s in zip(need.requested, slot_of, strict=True))
    return d, offered, d.reason


def with_commitments(
    flex: FlexInput, policy: Policy, contracts: Sequence[Contract], n_slots: int
) -> tuple[Commitments, FlexInput]:
    """The confirmed contracts applied to the daemon's planning input (for on_discover)."""
    committed, pinned = committed_by(
        contracts, flex.snapshot, flex.forecast, policy, flex.running, n_slots, flex.other_kw
    )
    return committed, replace(flex, snapshot=pinned)
