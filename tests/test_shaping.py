"""Load shaping (planner.shaping) in the daemon: the step's inputs as a recorded snapshot, the
objective it weighs slots by, and what the daemon does with a hold: flexible jobs beyond the
start budget wait until just after the next cycle (their StartTime), and go when the hold is
lifted; work without a deadline, and jobs near their latest safe start, are never held. On the
fake Slurm (fast) and once on the real cluster."""

from __future__ import annotations

import json
import math
import time
from typing import Any

import numpy as np
import pytest

from slurm_flex.config import load_config
from slurm_flex.daemon.site_planning import HOLD_OVERLAP_S, SHAPED, WINDOWS_OFF
from slurm_flex.grid.series import SLOT_SECONDS, iso_utc
from slurm_flex.planner.policy import Policy, with_objective
from slurm_flex.planner.shaping import (
    BEHIND,
    BUDGET,
    Hold,
    QueuedWork,
    ShapingSnapshot,
    arrival_due_slots,
    cumulative_due,
    hold_from_snapshot,
    hold_to_json,
    holds_in_order,
    planned_hold,
    shape_load,
    shaping_from_json,
    shaping_to_json,
    slot_weight,
)
from tests.conftest import Env, slurm_epoch, wait_state
from tests.fake_cluster import FakeEnv
from tests.helpers import forecast_from_now

HOUR = 3600
INTERVAL = 300  # the daemon's default cycle interval ([daemon] interval_seconds)
# Dirty for this half-hour and the next (still dirty now if a cycle runs in the next one), then
# clean: with nothing else to come, every flexible job can wait.
DIRTY_NOW = [300.0, 300.0] + [40.0] * 94


# -- pure parts -----------------------------------------------------------------------------------


def _snapshot() -> ShapingSnapshot:
    weight = np.asarray([300.0, math.nan, 40.0, 40.0, 250.5])
    return ShapingSnapshot(
        now=1_800_000_123,
        weight=weight,
        running_planned=np.asarray([2.0, 1.0, 0.0, 0.0, 0.0]),
        running_limits=np.asarray([2.0, 2.0, 1.0, 0.0, 0.0]),
        capacity=4.0,
        queue=QueuedWork(
            procs=np.asarray([1.0, 2.0, 1.0]),
            planned_steps=np.asarray([1, 2, 3], dtype=np.int64),
            limit_steps=np.asarray([2, 2, 4], dtype=np.int64),
            latest_step=np.asarray([3, 2**40, 1], dtype=np.int64),
            has_deadline=np.asarray([True, False, True]),
        ),
        arrival_load=1.25,
        arrival_due_slots=7,
        arrival_run_slots=2,
        margin_slots=2,
        steps_per_slot=1,
        job_ids=("11", "12", "13_[1-2]"),
    )


def test_shaping_snapshot_survives_a_json_round_trip() -> None:
    snapshot = _snapshot()
    doc = json.loads(json.dumps(shaping_to_json(snapshot)))  # as written to the plan file
    assert doc["weight"][1] is None  # an unknown forecast value is null, not NaN (invalid JSON)
    back = shaping_from_json(doc)
    assert back.now == snapshot.now and back.capacity == snapshot.capacity and back.job_ids == snapshot.job_ids
    np.testing.assert_array_equal(back.weight, snapshot.weight)  # NaN where it was
    for name in ("running_planned", "running_limits"):
        np.testing.assert_array_equal(getattr(back, name), getattr(snapshot, name))
    for name in ("procs", "planned_steps", "limit_steps", "latest_step", "has_deadline"):
        got, want = getattr(back.queue, name), getattr(snapshot.queue, name)
        np.testing.assert_array_equal(got, want)
        assert got.dtype == want.dtype, name
    assert (back.arrival_load, back.arrival_due_slots, back.arrival_run_slots, back.margin_slots) == (1.25, 7, 2, 2)
    # The same step from the copy: same hold, budget and reason.
    policy = Policy()
    assert hold_to_json(hold_from_snapshot(back, policy)) == hold_to_json(hold_from_snapshot(snapshot, policy))


def test_slot_weight_is_the_policys_objective() -> None:
    carbon = np.asarray([200.0, 100.0, 50.0])
    price = np.asarray([80.0, math.nan, 20.0])
    combined = Policy(use_price=True, carbon_price_gbp_per_tonne=250.0)
    # GBP/MWh: price plus g/kWh x GBP/t / 1000; a slot of unknown price stays unknown.
    np.testing.assert_allclose(slot_weight(carbon, price, combined), [80.0 + 50.0, math.nan, 20.0 + 12.5])
    np.testing.assert_array_equal(slot_weight(carbon, price, with_objective(combined, "carbon")), carbon)
    np.testing.assert_array_equal(slot_weight(carbon, price, with_objective(combined, "cost")), price)
    # No price at all: carbon decides (as planning without a price series does).
    no_price = np.full(3, math.nan)
    np.testing.assert_array_equal(slot_weight(carbon, no_price, combined), carbon)
    # Dirtier is heavier, so the fluid plan leaves the dirty slot for last.
    assert list(np.argsort(slot_weight(carbon, np.asarray([50.0, 50.0, 50.0]), combined))) == [2, 1, 0]


def test_the_budget_is_spent_in_queue_order() -> None:
    every = [True] * 4
    # Room for all now: beyond the budget a job is held, a smaller one behind it may still start.
    assert holds_in_order([1.0, 2.0, 1.0, 1.0], every, every, 10.0, 2.5) == [None, BUDGET, None, BUDGET]
    assert holds_in_order([2.0, 2.0], [True] * 2, [True] * 2, 10.0, 0.0) == [BUDGET, BUDGET]
    assert holds_in_order([8.0, 8.0], [True] * 2, [True] * 2, 16.0, math.inf) == [None, None]


def test_a_held_job_keeps_its_place() -> None:
    # 10 idle, budget 2: the 6-wide job at the head is held, and keeps its 6; the exempt 5-wide
    # job behind it (not budgeted) would take them, so it is held too; a 3-wide exempt one fits
    # in what is left beside the claim and starts; a job without a deadline (not holdable) is
    # the scheduler's and starts whatever the claim.
    sizes = [6.0, 5.0, 3.0, 1.0]
    budgeted = [True, False, False, False]
    holdable = [True, True, True, False]
    assert holds_in_order(sizes, budgeted, holdable, 10.0, 2.0) == [BUDGET, BEHIND, None, None]
    # Only the first held job keeps a claim: the second (4 wide) does not, so the exempt 4-wide
    # job behind both still starts in the 4 left beside the first claim.
    assert holds_in_order([6.0, 4.0, 4.0], [True, True, False], [True] * 3, 10.0, 0.0) == [BUDGET, BUDGET, None]
    # A job that cannot start now takes the scheduler's reservation: a held job behind it keeps
    # no claim, and an exempt job behind them starts where it fits.
    assert holds_in_order([12.0, 6.0, 5.0], [False, True, False], [True] * 3, 10.0, 0.0) == [None, BUDGET, None]
    # A budgeted job beyond the budget is held even when it does not fit now (it could by the
    # next step) and then keeps no claim.
    assert holds_in_order([12.0, 9.0], [True, False], [True, True], 10.0, 1.0) == [BUDGET, None]


def test_arrival_due_slots_is_the_median_slack_else_the_default() -> None:
    assert arrival_due_slots([5 * HOUR, 10 * HOUR, 20 * HOUR, 0.0], 0.0, SLOT_SECONDS) == 20
    assert arrival_due_slots([], 6 * HOUR, SLOT_SECONDS) == 12
    assert arrival_due_slots([], 0.0, SLOT_SECONDS) == 0  # nothing known: arrivals left out


def test_hold_budget_is_what_the_plan_runs_now() -> None:
    # Dirty now, clean later, deadlines far: everything waits, nothing may start this step.
    weight = np.full(48, 40.0)
    weight[0] = 300.0
    queue = QueuedWork(
        np.ones(3), np.full(3, 2, dtype=np.int64), np.full(3, 2, dtype=np.int64), np.full(3, 30, dtype=np.int64),
        np.ones(3, dtype=bool),
    )  # fmt: skip
    hold = planned_hold(weight, np.zeros(48), np.zeros(48), 4.0, queue, 0.0, 0, 2, 1, 2)
    assert hold.procs == pytest.approx(4.0) and hold.start_budget == pytest.approx(0.0)
    assert Hold(0.0, "none").start_budget == math.inf


# -- the daemon on the fake Slurm ----------------------------------------------------------------


def _last_plan(env: FakeEnv | Env) -> dict[str, Any]:
    state = load_config(env.config, environ={}).daemon.state_dir
    return json.loads(sorted((state / "plans").glob("cycle-*.json"))[-1].read_text())  # type: ignore[no-any-return]


def test_dirty_now_holds_flexible_jobs_beyond_the_budget_until_the_next_cycle(fake_env: FakeEnv) -> None:
    env = fake_env
    # Load shaping alone moves work; the jobs have 5 h of slack, inside the default 6 h in which a
    # job is never held back, so that exemption is off here (it is tested below).
    env.reconfigure(policy={"defer_to_windows": False, "shape_exempt_hours": 0.0})
    # Dirty now and clean for the next 28 hours. The machine has been busy (2.34 of 4 nodes over
    # the last day): with that much work still to come, the clean hours are just short of room
    # for it all, so the plan runs a little of the queue now and holds the rest back.
    forecast_from_now(env.forecast, [200.0] + [40.0] * 56 + [300.0] * 39)
    env.load_history(2.34)
    flexible = [env.submit_flexible(hours=6.25, minutes=60) for _ in range(4)]  # 5 h of slack each
    other = env.submit(time_limit_s=HOUR)  # no deadline: queued, never held
    other_begin = env.slurm.job(other).eligible_time
    env.slurmflex("daemon", "--once")

    site = _last_plan(env)["sites"]["default"]["shaping"]
    hold, snapshot = site["hold"], site["snapshot"]
    assert snapshot["job_ids"] == [*flexible, other]  # the queue in Slurm's priority order
    assert snapshot["queue"]["has_deadline"] == [True, True, True, True, False]
    assert hold["nodes"] >= 1 and hold["reason"] == "cleaner hours ahead can run the queue before its deadlines"
    budget = hold["budget"]
    assert 1 <= budget < len(flexible), budget  # some may start now, not all
    # Four idle nodes: each job fits now, so the ones beyond the budget are held.
    kinds = holds_in_order([1.0] * len(flexible), [True] * len(flexible), [True] * len(flexible), 4.0, budget)
    kept = [j for j, kind in zip(flexible, kinds, strict=True) if kind is None]
    held = [j for j, kind in zip(flexible, kinds, strict=True) if kind is not None]
    assert kept == flexible[: len(kept)] and held and site["held"] == sorted(held)  # the first ones stay
    until = snapshot["now"] + INTERVAL + HOLD_OVERLAP_S  # just after the next cycle
    assert site["until"] == iso_utc(until)

    now = time.time()
    jobs = env.status()["jobs"]
    for job_id in held:
        assert env.slurm.job(job_id).start_time == until
        assert jobs[job_id]["status"] == "shaped" and jobs[job_id]["reason"].startswith(SHAPED)
        assert jobs[job_id]["planned_start"] == iso_utc(until)
    for job_id in kept:
        assert env.slurm.job(job_id).eligible_time <= now + 5  # the hook's grace released: may start
        assert jobs[job_id]["status"] == "runs-now" and WINDOWS_OFF in jobs[job_id]["reason"]
    assert env.slurm.job(other).eligible_time == other_begin and other not in jobs
    with env.store() as store:
        actions = {(a.job_id, a.kind) for a in store.actions()}
    assert {(j, "shape") for j in held} <= actions and not any(j == other for j, _ in actions)
    # `slurmflex status` says that the site holds nodes back, how many and why.
    shape = env.status()["shaping"]["default"]
    assert shape["holding"] and shape["held_nodes"] == round(hold["nodes"], 2) and shape["jobs_held"] == len(held)
    text = env.slurmflex("status").stdout
    assert "load shaping, site default: holding" in text and "cleaner hours ahead" in text

    # Still dirty at the next cycle: the held jobs keep their place in the queue (their begin
    # time is slurm-flex's own) and are held on, to just after the cycle after.
    env.slurmflex("daemon", "--once")
    site = _last_plan(env)["sites"]["default"]["shaping"]
    assert site["snapshot"]["job_ids"] == [*flexible, other] and site["held"] == sorted(held)
    later = site["snapshot"]["now"] + INTERVAL + HOLD_OVERLAP_S
    # (to the second: the cycle's clock and the snapshot's may straddle a second boundary)
    assert all(abs(env.slurm.job(j).start_time - later) <= 1 for j in held)

    # The forecast turns clean now: nothing is held back any more, the held jobs go now.
    forecast_from_now(env.forecast, [40.0] * 96)
    env.slurmflex("daemon", "--once")
    site = _last_plan(env)["sites"]["default"]["shaping"]
    assert site["hold"]["nodes"] == 0 and site["held"] == []
    assert site["hold"]["reason"] == "now is among the cleanest hours the queue's deadlines allow"
    now = time.time()
    jobs = env.status()["jobs"]
    for job_id in held:
        assert env.slurm.job(job_id).eligible_time <= now + 5
        assert jobs[job_id]["status"] == "runs-now"
    with env.store() as store:
        assert {(j, "release", "applied") for j in held} <= {(a.job_id, a.kind, a.outcome) for a in store.actions()}
    assert env.slurm.job(other).eligible_time == other_begin
    assert "not holding nodes back" in env.slurmflex("status").stdout


def test_a_job_near_its_latest_safe_start_is_never_held(fake_env: FakeEnv) -> None:
    env = fake_env
    env.reconfigure(policy={"defer_to_windows": False})
    forecast_from_now(env.forecast, DIRTY_NOW)
    # Latest safe start in 50 minutes (deadline less the hour it may run less the 15-minute
    # margin): within the risk margin (the policy's half-hour plus a cycle, rounded up to a
    # half-hour: an hour), so it may not wait.
    near = env.submit_flexible(hours=2.08, minutes=60)
    far = [env.submit_flexible(hours=20, minutes=60) for _ in range(2)]
    env.slurmflex("daemon", "--once")
    site = _last_plan(env)["sites"]["default"]["shaping"]
    assert site["snapshot"]["job_ids"] == [near, *far]
    # It may use what is held back (the budget never holds it, and the projection counts it so):
    # the others are held, it is not.
    assert site["hold"]["nodes"] > 0 and site["held"] == sorted(far)
    assert env.slurm.job(near).eligible_time <= time.time() + 5
    assert env.status()["jobs"][near]["status"] == "runs-now"


def test_a_job_within_the_exempt_hours_is_never_held(fake_env: FakeEnv) -> None:
    env = fake_env
    env.reconfigure(policy={"defer_to_windows": False})  # shape_exempt_hours: the default 6 h
    forecast_from_now(env.forecast, DIRTY_NOW)
    soon = env.submit_flexible(hours=6.25, minutes=60)  # latest safe start in 5 h
    far = [env.submit_flexible(hours=20, minutes=60) for _ in range(2)]
    env.slurmflex("daemon", "--once")
    site = _last_plan(env)["sites"]["default"]["shaping"]
    assert site["hold"]["nodes"] > 0 and site["held"] == sorted(far)
    assert env.slurm.job(soon).eligible_time <= time.time() + 5


def test_a_job_within_the_exempt_hours_keeps_its_place_behind_a_held_one(fake_env: FakeEnv) -> None:
    env = fake_env
    env.reconfigure(policy={"defer_to_windows": False})  # shape_exempt_hours: the default 6 h
    forecast_from_now(env.forecast, DIRTY_NOW)
    # Four idle nodes. The 3-node job at the head of the queue is held for cleaner hours and
    # keeps its place; the 2-node job behind it is within the exempt hours, yet would start only
    # on the nodes the held one needs, and so it waits too (a 1-node one fits beside them).
    wide = env.submit_flexible(hours=20, minutes=60, nodes=3)
    soon = env.submit_flexible(hours=6.25, minutes=60, nodes=2)  # latest safe start in 5 h
    small = env.submit_flexible(hours=6.25, minutes=60, nodes=1)
    env.slurmflex("daemon", "--once")
    site = _last_plan(env)["sites"]["default"]["shaping"]
    assert site["snapshot"]["job_ids"] == [wide, soon, small]
    assert site["hold"]["budget"] == 0 and site["held"] == sorted([wide, soon])
    jobs = env.status()["jobs"]
    assert "keeps its place behind a job held ahead of it" in jobs[soon]["reason"]
    assert jobs[wide]["status"] == jobs[soon]["status"] == "shaped"
    assert env.slurm.job(small).eligible_time <= time.time() + 5


def test_the_coming_work_is_the_last_weeks_after_a_quiet_day(fake_env: FakeEnv) -> None:
    env = fake_env
    env.reconfigure(policy={"defer_to_windows": False})
    forecast_from_now(env.forecast, DIRTY_NOW)
    # Six busy days (3 of 4 nodes), then a quiet one (half a node): the work expected to arrive
    # is the week's, not the quiet day's, as in the simulator.
    now = int(time.time())
    with env.store() as store:
        for k in range(7 * 288, 0, -1):
            store.record_load("default", now - 300 * k, 0.5 if k <= 288 else 3.0)
    env.submit_flexible(hours=20, minutes=60)
    env.slurmflex("daemon", "--once")
    snapshot = _last_plan(env)["sites"]["default"]["shaping"]["snapshot"]
    assert snapshot["arrival_load"] == pytest.approx((6 * 3.0 + 0.5) / 7, rel=0.01)


def test_shaping_off_holds_nothing(fake_env: FakeEnv) -> None:
    env = fake_env
    env.reconfigure(policy={"defer_to_windows": False, "shape_load": False})
    forecast_from_now(env.forecast, DIRTY_NOW)
    job_id = env.submit_flexible(hours=20, minutes=60)
    env.slurmflex("daemon", "--once")
    assert "shaping" not in _last_plan(env)["sites"]["default"]
    assert env.slurm.job(job_id).eligible_time <= time.time() + 5
    assert env.status()["shaping"]["default"] == {"enabled": False}
    assert "load shaping, site default: off" in env.slurmflex("status").stdout


# -- the daemon on the real cluster -----------------------------------------------------------------


@pytest.mark.slurm
def test_real_cluster_holds_a_flexible_job_back_then_releases_it(env: Env) -> None:
    env.reconfigure(policy={"defer_to_windows": False})
    forecast_from_now(env.forecast, DIRTY_NOW)
    env.load_history(0.0)  # a quiet day: no work to come that needs the clean hours
    job_id = env.submit_flexible(hours=10, minutes=60, sleep=2)
    env.slurmflex("daemon", "--once")
    site = _last_plan(env)["sites"]["default"]["shaping"]
    assert site["held"] == [job_id], site["hold"]
    until = site["snapshot"]["now"] + INTERVAL + HOLD_OVERLAP_S
    job = env.cluster.show_job(job_id)
    assert job["JobState"] == "PENDING" and slurm_epoch(job["StartTime"]) == until, job
    assert env.status()["jobs"][job_id]["status"] == "shaped"

    forecast_from_now(env.forecast, [40.0] * 96)  # clean now
    env.slurmflex("daemon", "--once")
    assert _last_plan(env)["sites"]["default"]["shaping"]["held"] == []
    job = env.cluster.show_job(job_id)
    # Released: eligible now (a pending job's StartTime reads Unknown until Slurm plans it).
    assert job["JobState"] != "PENDING" or slurm_epoch(job["EligibleTime"]) <= time.time() + 5, job
    wait_state(env.cluster, job_id, {"RUNNING", "COMPLETING", "COMPLETED", "GONE"}, timeout=40)


# -- the fluid plan and the guard ---------------------------------------------------------------


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
    fits = planned_hold(
        weight, np.zeros(12), np.array([4.0] * 3 + [0.0] * 9), 8.0, _queue([8.0], [2], [2], [4]), 0.0, 0, 1, 1, 1,
        max_span_slots=2,
    )  # fmt: skip
    assert fits.procs > 0
    # It runs a slot (its prediction) of a 4-slot time limit and must start now (latest 1, margin
    # 1). The fluid plan would run it in the next, less dirty slot; by its time limit, held back
    # now it would start too late: nothing is held back.
    pushed = planned_hold(
        np.array([400.0, 300.0] + [50.0] * 10), np.zeros(12), np.zeros(12), 8.0, _queue([8.0], [1], [4], [1]),
        0.0, 0, 1, 1, 1, max_span_slots=1,
    )  # fmt: skip
    assert pushed.served is not None and pushed.served[0] < 1  # the plan alone would hold it
    assert pushed.procs == 0.0 and "past its latest safe start" in pushed.reason

    # With the running work's limit at 6 slots the queue starts it too late whatever is held
    # back. Near its latest safe start (within the exempt steps) that is the risk guard's
    # business (it moves the job up), not a reason to run the rest of the queue now; further
    # off, holding back is refused (a queue already late by time limits is no place to wait).
    def anyway(exempt_steps: int) -> Hold:
        return planned_hold(
            weight, np.zeros(12), np.array([4.0] * 6 + [0.0] * 6), 8.0, _queue([8.0, 1.0], [2, 1], [2, 1], [4, 20]),
            0.0, 0, 1, 1, 1, max_span_slots=2, exempt_steps=exempt_steps,
        )  # fmt: skip

    assert anyway(4).procs > 0
    assert anyway(0).procs == 0.0 and "past its latest safe start" in anyway(0).reason


def test_planned_hold_releases_what_the_deadlines_need_now() -> None:
    # 16 processor-slots due by the end of slot 1 on an 8-processor machine: both slots are full.
    weight = np.array([400.0] * 2 + [50.0] * 10)
    hold = planned_hold(
        weight, np.zeros(12), np.zeros(12), 8.0, _queue([8.0, 8.0], [1, 1], [1, 1], [1, 1]), 0.0, 0, 1, 1, 0, 1.0, 1
    )
    assert hold.procs == 0.0 and math.isinf(hold.start_budget)


def test_a_full_machine_still_keeps_what_frees_up_for_cleaner_hours() -> None:
    # Every processor busy now (by predicted run times) and the next slot dirty too: nothing to
    # keep idle, but what frees up this step waits (a start budget of 0).
    weight = np.array([400.0, 400.0] + [50.0] * 10)
    busy_now = np.array([8.0] + [0.0] * 11)
    hold = planned_hold(weight, busy_now, busy_now, 8.0, _queue([4.0], [2], [2], [10]), 0.0, 0, 1, 1, 1, 0.95, 2)
    assert hold.holding and hold.procs == 0.0 and hold.start_budget == 0.0
    # Full for two slots, then dirty: still held (the plan does not fill the first slot with room).
    busy_two = np.array([8.0, 8.0] + [0.0] * 10)
    weight3 = np.array([400.0, 400.0, 400.0] + [50.0] * 9)
    hold = planned_hold(weight3, busy_two, busy_two, 8.0, _queue([4.0], [2], [2], [10]), 0.0, 0, 1, 1, 1, 0.95, 2)
    assert hold.holding and hold.start_budget == 0.0
    # The next slot clean: no reason to wait.
    clean_next = np.array([400.0] + [50.0] * 11)
    hold = planned_hold(clean_next, busy_now, busy_now, 8.0, _queue([4.0], [2], [2], [10]), 0.0, 0, 1, 1, 1, 0.95, 1)
    assert not hold.holding and math.isinf(hold.start_budget)


def test_nothing_is_held_behind_a_queue_deeper_than_the_backfill_plans() -> None:
    weight = np.array([400.0, 400.0] + [50.0] * 10)
    queue = _queue([1.0] * 3, [1] * 3, [1] * 3, [10] * 3)
    args = (weight, np.zeros(12), np.zeros(12), 8.0, queue, 0.0, 0, 1, 1, 1)
    assert planned_hold(*args, max_queue=3).holding
    deep = planned_hold(*args, max_queue=2)
    assert not deep.holding and "too deep" in deep.reason


def test_the_guard_projects_by_predictions_and_wide_jobs_by_time_limits_too() -> None:
    # Capacity 8, nothing running; the next half-hour is cleaner. A 6-processor job (1 slot
    # predicted, 4 by its time limit, due late) and a 4-processor job due to start by slot 2
    # (latest 3, margin 1). Held this slot by predictions, the first runs in slot 1 and the second
    # in slot 2: in time. By time limits the first holds 6 processors through slot 4 and the
    # second starts at 5: late, so the time-limit guard refuses the hold.
    weight = np.array([400.0, 300.0] + [50.0] * 10)

    def hold(procs: list[float], predicted: bool) -> Hold:
        return planned_hold(
            weight, np.zeros(12), np.zeros(12), 8.0, _queue(procs, [1, 1], [4, 1], [10, 3]), 0.0, 0, 1, 1, 1,
            max_span_slots=1, guard_predicted=predicted, guard_wide_share=0.5,
        )  # fmt: skip

    assert hold([6.0, 4.0], predicted=False).procs == 0.0
    by_predictions = hold([6.0, 4.0], predicted=True)
    # The wide job (6 > half of 8) is checked by its time limit as well: it is not made late.
    assert by_predictions.procs > 0 and by_predictions.start_budget == 0.0
    # A wide job the hold makes late by time limits refuses it, predictions or not: the
    # 5-processor job behind a 4-processor one starts at slot 5 by time limits.
    wide_late = hold([4.0, 5.0], predicted=True)
    assert wide_late.procs == 0.0 and "past its latest safe start" in wide_late.reason
    # Below the wide share it would have been held (by predictions it starts at slot 2).
    narrow = planned_hold(
        weight, np.zeros(12), np.zeros(12), 8.0, _queue([4.0, 5.0], [1, 1], [4, 1], [10, 3]), 0.0, 0, 1, 1, 1,
        max_span_slots=1, guard_predicted=True, guard_wide_share=1.0,
    )  # fmt: skip
    assert narrow.procs > 0
