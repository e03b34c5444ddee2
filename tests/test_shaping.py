"""Load shaping (planner.shaping): the fluid plan of the queue, and what it holds back."""

from __future__ import annotations

import math

import numpy as np

from slurm_flex.planner.shaping import QueuedWork, cumulative_due, planned_hold, shape_load


def _queue(procs: list[float], planned: list[int], limit: list[int], latest: list[int]) -> QueuedWork:
    return QueuedWork(
        procs=np.asarray(procs, dtype=np.float64),
        planned_steps=np.asarray(planned, dtype=np.int64),
        limit_steps=np.asarray(limit, dtype=np.int64),
        latest_step=np.asarray(latest, dtype=np.int64),
        has_deadline=np.ones(len(procs), dtype=bool),
    )


def test_cumulative_due_counts_queued_work_by_its_due_slot_and_arrivals_after_their_slack() -> None:
    due = cumulative_due(6, np.array([4.0, 2.0]), np.array([1.0, 3.5]), arrival_rate=1.0, arrival_due_slots=4)
    # 4 due from slot 1, 2 more from slot 3; arrivals from slot 0 on are due 4 slots later.
    assert list(due) == [0.0, 4.0, 4.0, 6.0, 7.0, 8.0]
    # A due slot beyond the horizon counts in the last slot (the horizon's end is a deadline too).
    assert list(cumulative_due(3, np.array([5.0]), np.array([9.0]))) == [0.0, 0.0, 5.0]


def test_shape_load_runs_work_in_the_cleanest_slots_before_it_is_due() -> None:
    weight = np.array([300.0, 100.0, 200.0, 50.0])
    free = np.array([10.0, 10.0, 10.0, 10.0])
    served = shape_load(weight, free, np.array([0.0, 0.0, 15.0, 15.0]))
    assert served is not None
    # 15 due by slot 2: 10 in the cleanest slot before it (1), 5 in the next cleanest (2); none
    # in the dirtiest, none needed in the last.
    assert np.allclose(served, [0.0, 10.0, 5.0, 0.0], atol=1e-6)
    # Equal forecasts: earlier first (less delay, less risk).
    even = shape_load(np.full(3, 100.0), np.full(3, 10.0), np.array([0.0, 0.0, 10.0]))
    assert even is not None and even[0] > 9.99


def test_shape_load_says_when_the_deadlines_need_more_than_the_machine() -> None:
    assert shape_load(np.array([1.0, 2.0]), np.array([5.0, 5.0]), np.array([6.0, 6.0])) is None


def test_planned_hold_holds_back_in_a_dirty_hour_with_clean_hours_ahead() -> None:
    weight = np.array([400.0, 400.0] + [50.0] * 10)
    queue = _queue([4.0], planned=[2], limit=[2], latest=[10])
    hold = planned_hold(
        weight,
        running_planned=np.zeros(12),
        running_limits=np.zeros(12),
        capacity=8.0,
        queue=queue,
        arrival_load=0.0,
        arrival_due_slots=0,
        arrival_run_slots=1,
        steps_per_slot=1,
        margin_slots=1,
        max_span_slots=2,
    )
    assert hold.procs == 8.0 and hold.start_budget == 0.0 and "cleaner hours ahead" in hold.reason


def test_planned_hold_holds_nothing_when_now_is_the_cleanest() -> None:
    weight = np.array([50.0] * 2 + [400.0] * 10)
    hold = planned_hold(
        weight, np.zeros(12), np.zeros(12), 8.0, _queue([4.0], [2], [2], [10]), 0.0, 0, 1, 1, 1, max_span_slots=2
    )
    assert hold.procs == 0.0 and math.isinf(hold.start_budget)


def test_planned_hold_never_pushes_a_job_past_its_latest_safe_start() -> None:
    weight = np.array([400.0] * 2 + [50.0] * 10)
    # Running work holds 4 of 8 processors for 3 slots by its time limit; an 8-processor job must
    # start by slot 3 (latest 4, margin 1). Held back this slot, it still starts at 3: held.
    # With the running work's limit at 6 slots the queue already starts it too late: nothing is
    # held back while any deadline is in danger.
    fits = planned_hold(
        weight,
        np.zeros(12),
        np.array([4.0] * 3 + [0.0] * 9),
        8.0,
        _queue([8.0], [2], [2], [4]),
        0.0,
        0,
        1,
        1,
        1,
        max_span_slots=2,
    )
    assert fits.procs > 0
    too_late = planned_hold(
        weight,
        np.zeros(12),
        np.array([4.0] * 6 + [0.0] * 6),
        8.0,
        _queue([8.0], [2], [2], [4]),
        0.0,
        0,
        1,
        1,
        1,
        max_span_slots=2,
    )
    assert too_late.procs == 0.0 and "past its latest safe start" in too_late.reason


def test_planned_hold_releases_what_the_deadlines_need_now() -> None:
    # 16 processor-slots due by the end of slot 1 on an 8-processor machine: both slots are full.
    weight = np.array([400.0] * 2 + [50.0] * 10)
    hold = planned_hold(
        weight, np.zeros(12), np.zeros(12), 8.0, _queue([8.0, 8.0], [1, 1], [1, 1], [1, 1]), 0.0, 0, 1, 1, 0, 1.0, 1
    )
    assert hold.procs == 0.0 and math.isinf(hold.start_budget)
