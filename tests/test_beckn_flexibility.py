"""Flexibility from the plan: per-slot shed/absorb, and whole-window delivery checked by the
planner with a power ceiling (never more than the queue can deliver with every deadline kept)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from slurm_flex.beckn.flexibility import RunningLoad, deliverable, flex_slots
from slurm_flex.grid.series import SLOT_SECONDS, SignalSeries
from slurm_flex.planner.policy import Policy
from slurm_flex.planner.queue import FlexJob, PlanningSnapshot

NOW = 1_800_000_000 - (1_800_000_000 % SLOT_SECONDS)
POLICY = Policy(min_saving_fraction=0.0, arrival_reserve=False, plan_runtime="limit", solver="fast")
N = 16


def forecast(clean: range) -> SignalSeries:
    carbon = tuple(50.0 if i in clean else 300.0 for i in range(48))
    return SignalSeries(NOW, carbon, (math.nan,) * 48, "test")


def job(job_id: str, kw: float, slots: int, deadline_slots: int) -> FlexJob:
    deadline = NOW + deadline_slots * SLOT_SECONDS
    return FlexJob(job_id, 1, kw * 1000, slots * SLOT_SECONDS, NOW, deadline - slots * SLOT_SECONDS, deadline)


def snapshot(jobs: list[FlexJob], nodes: float = 10) -> PlanningSnapshot:
    free = np.full(N * 4, nodes)
    return PlanningSnapshot(NOW, tuple(jobs), free, free, nodes, np.zeros(N * 4), 0)


RUNNING = [
    RunningLoad("r-opt-in", 1.0, NOW + 8 * SLOT_SECONDS, NOW + 20 * SLOT_SECONDS, True),
    RunningLoad("r-fixed", 0.5, NOW + 8 * SLOT_SECONDS, None, False),
    RunningLoad("r-tight", 0.7, NOW + 8 * SLOT_SECONDS, NOW + 8 * SLOT_SECONDS + 60, True),
]


def test_flex_slots_shed_and_absorb() -> None:
    # Two 1 kW jobs planned into the clean slots 2-3; both could also run later (deadline 12).
    snap = snapshot([job("a", 1.0, 2, 12), job("b", 1.0, 2, 12)])
    slots = flex_slots(snap, forecast(range(2, 4)), POLICY, RUNNING, N, 0.3, margin_s=600)
    assert [s.start for s in slots[:2]] == [NOW, NOW + SLOT_SECONDS]
    # slot 2: both planned jobs movable; the opted-in job can pause (deadline far), the tight one cannot
    assert slots[2].shed_deferrable_kw == 2.0
    assert slots[2].shed_suspendable_kw == 1.0
    assert slots[2].shed_kw == 3.0
    assert slots[2].baseline_kw == 2.0 + 2.2
    # slot 0: nothing planned there, but both jobs could start then instead
    assert slots[0].shed_deferrable_kw == 0.0 and slots[0].absorb_kw == 2.0
    assert slots[10].shed_kw == 0.0 and slots[10].baseline_kw == 0.0
    assert all(s.price_per_kwh == 0.3 for s in slots)


def test_deliverable_full_window_with_every_deadline_kept() -> None:
    snap = snapshot([job("a", 1.0, 2, 12), job("b", 1.0, 2, 12)])
    d = deliverable(snap, forecast(range(2, 4)), POLICY, RUNNING, NOW + 2 * SLOT_SECONDS, [2.0, 2.0], margin_s=600)
    assert d.full and d.reason == ""
    assert d.offered == (2.0, 2.0)
    assert d.suspend == ("r-opt-in",)  # 1 kW by suspension, 1 kW out of pending work
    assert d.pending_cap_kw == (1.0, 1.0)
    assert d.baseline_kw == (4.2, 4.2)


def test_deliverable_says_when_a_deadline_forbids_it() -> None:
    # "c" can only run in slots 0-3 (deadline at slot 4): a 4-slot window over it cannot move it.
    snap = snapshot([job("c", 2.0, 4, 4)])
    d = deliverable(snap, forecast(range(0, 4)), POLICY, [], NOW, [2.0, 2.0, 2.0, 2.0], margin_s=600)
    assert not d.full
    assert max(d.offered) < 2.0
    assert "deadline" in d.reason or "at most" in d.reason


def test_named_baseline_best_5_of_10_like_days(tmp_path: Path) -> None:
    from slurm_flex.beckn.report import delivery_report
    from slurm_flex.beckn.store import BecknStore, Contract

    store = BecknStore(tmp_path)
    start = 1_800_000_000 - 1_800_000_000 % SLOT_SECONDS  # a weekday
    c = Contract(
        id="c",
        transaction_id="t",
        counterparty="g",
        callback_uri="",
        status="ACTIVE",
        window_start=start,
        interval_s=SLOT_SECONDS,
        requested=(1.0,),
        offered=(1.0,),
        baseline=(3.0,),
        pending_cap=(2.0,),
        suspend=(),
        price=0.3,
        penalty=0.1,
        currency="GBP",
        baseline_method={"bestOf": 5, "outOf": 10},
        quote_expires=0.0,
        reason="",
        doc={},
    )
    report = delivery_report(store, c, start + 3600, "hpc")
    assert report.named_baseline_kw is None and "0 of 10" in report.named_note
    # 14 days back: the weekdays among them carry 1..N kW at the same clock time
    kw = 0.0
    for d in range(1, 15):
        t = start - d * 86400
        if time.gmtime(t).tm_wday < 5:
            kw += 1.0
            store.record_usage(t + 60, kw, "modelled")
    store.record_usage(start + 60, 1.5, "modelled")
    report = delivery_report(store, c, start + 3600, "hpc")
    # the 10 most recent weekdays have 1..10 kW; the best 5 of them average 8 kW
    assert report.named_baseline_kw == (8.0,)
    assert report.named_performance is not None
    assert report.named_performance["performanceAttributes"]["methodology"] == "5of10"
    assert report.usage_kw == (1.5,) and report.delivered_kw == (1.5,)
