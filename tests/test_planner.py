"""Planner: the slot-instance contract, the solvers and planning of a live queue."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slurm_flex.errors import PlanningError
from slurm_flex.grid.series import SLOT_SECONDS, SignalSeries
from slurm_flex.planner import (
    FlexJob,
    Instance,
    Policy,
    best_window,
    capacity_profile,
    evaluate,
    instance_from_json,
    instance_to_json,
    load_instance,
    overload,
    plan,
    solve,
)
from slurm_flex.planner.queue import WaitingWork, deadlines_at_risk, queue_capacity
from slurm_flex.planner.risk import HEAD, IN_PLACE, NEXT, at_risk, expedite, first_fit, place_in_order

NOW = 1795251000  # 2026-11-21T08:50Z, mid-slot on purpose
SLOT0 = NOW - NOW % SLOT_SECONDS


def make_instance(
    carbon: list[float],
    jobs: list[dict[str, float]],
    capacity: float | list[float] = math.inf,
    price: list[float] | None = None,
    carbon_price: float = 100.0,
) -> Instance:
    n = len(carbon)
    caps = capacity if isinstance(capacity, list) else [capacity] * n
    doc = {
        "slot_minutes": 30,
        "start": "2026-11-21T08:00:00Z",
        "carbon_price_gbp_per_tonne": carbon_price,
        "slots": [
            {
                "carbon_g_per_kwh": c,
                "price_gbp_per_mwh": None if price is None else price[i],
                "capacity_nodes": None if math.isinf(caps[i]) else caps[i],
                "power_cap_kw": None,
            }
            for i, c in enumerate(carbon)
        ],
        "jobs": [{"id": str(i), **j} for i, j in enumerate(jobs)],
    }
    return instance_from_json(doc)


def brute_force_single(inst: Instance) -> float:
    best = math.inf
    for s in range(int(inst.release[0]), int(inst.deadline[0] - inst.duration[0]) + 1):
        best = min(best, evaluate(inst, np.array([s]))[3])
    return best


@settings(max_examples=200, deadline=None)
@given(
    carbon=st.lists(st.floats(0, 900), min_size=4, max_size=60),
    price=st.floats(-50, 500),
    data=st.data(),
)
def test_single_job_is_exactly_optimal(carbon: list[float], price: float, data: st.DataObject) -> None:
    n = len(carbon)
    duration = data.draw(st.integers(1, n))
    release = data.draw(st.integers(0, n - duration))
    deadline = data.draw(st.integers(release + duration, n))
    inst = make_instance(
        carbon,
        [{"nodes": 1, "power_kw": 2.0, "duration_slots": duration, "release_slot": release, "deadline_slot": deadline}],
        price=[price] * n,
    )
    optimum = brute_force_single(inst)
    for method in ("auto", "greedy", "lagrange"):
        sol = solve(inst, method=method)  # type: ignore[arg-type]
        assert sol.objective_gbp == pytest.approx(optimum, rel=1e-9, abs=1e-12), method
        assert release <= sol.starts["0"] <= deadline - duration
    assert solve(inst).lower_bound_gbp == pytest.approx(optimum, rel=1e-9, abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), method=st.sampled_from(["greedy", "lagrange", "milp", "auto"]))
def test_plans_respect_windows_and_capacity(data: st.DataObject, method: str) -> None:
    n = data.draw(st.integers(4, 40))
    carbon = data.draw(st.lists(st.floats(10, 500), min_size=n, max_size=n))
    capacity = data.draw(st.integers(1, 8))
    jobs = []
    for _ in range(data.draw(st.integers(1, 25))):
        d = data.draw(st.integers(1, min(6, n)))
        r = data.draw(st.integers(0, n - d))
        e = data.draw(st.integers(r + d, n))
        jobs.append(
            {
                "nodes": data.draw(st.integers(1, capacity)),
                "power_kw": data.draw(st.floats(0.1, 5)),
                "duration_slots": d,
                "release_slot": r,
                "deadline_slot": e,
            }
        )
    inst = make_instance(carbon, jobs, capacity=float(capacity))
    sol = solve(inst, method=method, time_limit=5.0)  # type: ignore[arg-type]
    load = np.zeros(n)
    for i, j in enumerate(jobs):
        s = sol.starts[str(i)]
        if str(i) not in sol.late:
            assert j["release_slot"] <= s <= j["deadline_slot"] - j["duration_slots"]
        else:
            assert s == j["release_slot"]
        load[s : s + j["duration_slots"]] += j["nodes"]
    # Late jobs run at release outside the capacity count; every other job fits.
    on_time = np.zeros(n)
    for i, j in enumerate(jobs):
        if str(i) not in sol.late:
            on_time[sol.starts[str(i)] : sol.starts[str(i)] + j["duration_slots"]] += j["nodes"]
    assert (on_time <= capacity + 1e-9).all()
    if not sol.late:
        assert (load <= capacity + 1e-9).all()
    assert sol.lower_bound_gbp is not None and sol.lower_bound_gbp <= sol.objective_gbp + 1e-9


def test_no_thundering_herd_when_capacity_binds() -> None:
    # One green slot pair (6-7) that holds 2 one-node jobs; 6 jobs want it.
    carbon = [300.0] * 6 + [50.0, 50.0] + [120.0] * 4 + [300.0] * 4
    jobs = [{"nodes": 1, "power_kw": 1.0, "duration_slots": 2, "release_slot": 0, "deadline_slot": 16}] * 6
    inst = make_instance(carbon, jobs, capacity=2.0)
    sol = solve(inst)
    starts = sorted(sol.starts.values())
    assert starts.count(6) == 2  # the green window is full...
    assert all(s in (8, 10) for s in starts if s != 6)  # ...and the rest take the next best
    assert not sol.late
    # The per-job "best window" rule puts all six in slot 6: three times the capacity.
    best_window = [int(np.argmin([sum(carbon[s : s + 2]) for s in range(0, 15)])) for _ in jobs]
    assert best_window.count(6) == 6


def test_late_jobs_start_at_release_and_are_reported() -> None:
    carbon = [100.0, 50.0, 50.0, 100.0]
    jobs = [
        {"nodes": 2, "power_kw": 1.0, "duration_slots": 2, "release_slot": 0, "deadline_slot": 2},
        {"nodes": 2, "power_kw": 1.0, "duration_slots": 2, "release_slot": 0, "deadline_slot": 2},
    ]
    for method in ("auto", "greedy", "lagrange", "milp", "lp-rounding", "fast"):
        sol = solve(make_instance(carbon, jobs, capacity=2.0), method=method)  # type: ignore[arg-type]
        assert len(sol.late) == 1 and sol.starts[sol.late[0]] == 0, method
        reason = sol.late_reasons[sol.late[0]]
        # Both windows are slots 0-1, both full with the other job: those are the binding slots.
        assert reason.binding_slots == (0, 1) and reason.resource == "nodes", method
        if method != "fast":
            assert reason.detail.startswith("proven"), (method, reason.detail)
        # The bound is over plans leaving the same job late: here the plan itself.
        assert sol.lower_bound_gbp == pytest.approx(sol.objective_gbp), method
        assert sol.to_json()["late_reasons"][sol.late[0]]["binding_slots"] == [0, 1]


def test_min_saving_only_moves_back_when_there_is_room() -> None:
    carbon = [100.0, 99.0, 98.0, 97.0]
    jobs = [{"nodes": 1, "power_kw": 1.0, "duration_slots": 1, "release_slot": 0, "deadline_slot": 4}] * 2
    # capacity 1 in slot 0: only one of the two can go back to its release slot
    sol = solve(make_instance(carbon, jobs, capacity=[1.0, 1.0, 1.0, 1.0]), min_saving_fraction=0.05)
    assert sorted(sol.starts.values())[0] == 0 and sorted(sol.starts.values())[1] != 0


def test_milp_and_lagrange_against_each_other_on_binding_capacity() -> None:
    rng = np.random.default_rng(7)
    carbon = list(200 + 120 * np.sin(np.arange(48) / 48 * 2 * np.pi) + rng.normal(0, 15, 48))
    jobs = []
    for _ in range(60):
        d = int(rng.integers(1, 6))
        r = int(rng.integers(0, 20))
        jobs.append(
            {
                "nodes": int(rng.integers(1, 4)),
                "power_kw": float(rng.uniform(0.3, 3)),
                "duration_slots": d,
                "release_slot": r,
                "deadline_slot": int(min(48, r + d + rng.integers(4, 30))),
            }
        )
    inst = make_instance(carbon, jobs, capacity=12.0)
    exact = solve(inst, method="milp", time_limit=30.0)
    lag = solve(inst, method="lagrange")
    greedy = solve(inst, method="greedy")
    assert exact.method == "milp" and not exact.late
    assert exact.lower_bound_gbp == pytest.approx(exact.objective_gbp)
    for other in (lag, greedy):
        assert other.objective_gbp >= exact.objective_gbp - 1e-9
    assert lag.lower_bound_gbp is not None and lag.lower_bound_gbp <= exact.objective_gbp + 1e-9
    assert lag.objective_gbp <= greedy.objective_gbp + 1e-9 or lag.objective_gbp <= 1.02 * exact.objective_gbp
    assert overload(inst, best_window(inst)) > 0  # capacity really binds here


def test_min_saving_fraction_avoids_deferring_for_crumbs() -> None:
    carbon = [100.0, 99.0, 98.0, 97.0]
    job = [{"nodes": 1, "power_kw": 1.0, "duration_slots": 1, "release_slot": 0, "deadline_slot": 4}]
    assert solve(make_instance(carbon, job), min_saving_fraction=0.0).starts["0"] == 3
    assert solve(make_instance(carbon, job), min_saving_fraction=0.05).starts["0"] == 0


def test_objective_follows_the_contract_formula() -> None:
    carbon = [200.0, 100.0]
    price = [80.0, 40.0]
    inst = make_instance(
        carbon,
        [{"nodes": 1, "power_kw": 2.0, "duration_slots": 2, "release_slot": 0, "deadline_slot": 2}],
        price=price,
        carbon_price=100.0,
    )
    energy, carbon_kg, cost, objective = evaluate(inst, np.array([0]))
    kwh = 2.0 * 0.5
    assert energy == pytest.approx(2 * kwh)
    assert carbon_kg == pytest.approx(kwh * (200 + 100) / 1000)
    assert cost == pytest.approx(kwh * (80 + 40) / 1000)
    assert objective == pytest.approx(sum(kwh * (p / 1000 + c * 100 / 1e6) for c, p in zip(carbon, price, strict=True)))


def test_instance_json_roundtrip_and_cli_shape() -> None:
    inst = make_instance(
        [100.0, 80.0, 60.0],
        [{"nodes": 1, "power_kw": 1.5, "duration_slots": 1, "release_slot": 0, "deadline_slot": 3}],
        capacity=4.0,
    )
    again = load_instance(json.dumps(instance_to_json(inst)))
    assert again.job_ids == inst.job_ids and (again.carbon == inst.carbon).all()
    assert (again.capacity_nodes == inst.capacity_nodes).all()
    out = solve(again).to_json()
    assert set(out) >= {
        "starts",
        "late",
        "energy_kwh",
        "carbon_kg",
        "cost_gbp",
        "objective_gbp",
        "lower_bound_gbp",
        "solve_seconds",
    }
    assert out["starts"] == {"0": 2}


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(slots=[]), "slots: expected a non-empty list"),
        (lambda d: d.update(slot_minutes=0), "slot_minutes"),
        (lambda d: d.update(carbon_price_gbp_per_tonne=-1), "carbon_price"),
        (lambda d: d["slots"][0].update(carbon_g_per_kwh="x"), r"slots\[0\]: carbon_g_per_kwh must be a number"),
        (lambda d: d["slots"][0].pop("carbon_g_per_kwh"), r"slots\[0\]: missing"),
        (lambda d: d["jobs"][0].update(duration_slots=0), "duration_slots must be >= 1"),
        (lambda d: d["jobs"][0].update(release_slot=9), "release_slot 9 outside"),
        (lambda d: d["jobs"][0].update(duration_slots=3, release_slot=1), "runs past the horizon"),
        (lambda d: d["jobs"].append(dict(d["jobs"][0])), "duplicate id"),
        (lambda d: d.update(start="tomorrow"), "unreadable time"),
    ],
)
def test_instance_validation_names_the_problem(mutate, message) -> None:  # type: ignore[no-untyped-def]
    doc = {
        "slots": [{"carbon_g_per_kwh": 1}, {"carbon_g_per_kwh": 2}, {"carbon_g_per_kwh": 3}],
        "jobs": [{"id": "a", "nodes": 1, "power_kw": 1, "duration_slots": 1, "release_slot": 0, "deadline_slot": 3}],
    }
    mutate(doc)
    with pytest.raises(PlanningError, match=message):
        instance_from_json(doc)


# -- planning a live queue --------------------------------------------------------------------


def _series(carbon: list[float]) -> SignalSeries:
    return SignalSeries(start=SLOT0, carbon=tuple(carbon), price=(math.nan,) * len(carbon), source="test")


def _job(
    job_id: str = "1", *, hours: float = 1.0, deadline_h: float = 12.0, earliest: int = NOW, nodes: int = 1
) -> FlexJob:
    duration = int(hours * 3600)
    deadline = NOW + int(deadline_h * 3600)
    return FlexJob(
        job_id=job_id,
        nodes=nodes,
        power_w=1000.0,
        duration_s=duration,
        earliest=earliest,
        latest_start=deadline - duration - 900,
        deadline=deadline,
    )


POLICY = Policy(safety_margin_seconds=900, min_saving_fraction=0.05)


def test_deferred_into_cleanest_window_before_deadline() -> None:
    carbon = [300.0] * 48
    carbon[10:12] = [60.0, 60.0]
    carbon[30:32] = [10.0, 10.0]  # cleaner, but after the latest safe start
    p = plan([_job(hours=1, deadline_h=12)], _series(carbon), None, POLICY, NOW).jobs[0]
    assert p.deferred and p.start == SLOT0 + 10 * SLOT_SECONDS
    assert p.start <= p.latest_start
    assert p.carbon_planned_g == pytest.approx(60.0)  # 1 kW x 1 h x 60 g
    assert p.carbon_now_g == pytest.approx(300.0)
    assert "cleaner window from" in p.reason and "80% less carbon" in p.reason


def test_start_never_before_user_begin_nor_after_latest_start() -> None:
    carbon = [300.0] * 48
    carbon[2] = 5.0
    begin = SLOT0 + 4 * SLOT_SECONDS + 123
    p = plan([_job(earliest=begin)], _series(carbon), None, POLICY, NOW).jobs[0]
    assert p.start >= begin and p.start <= p.latest_start


def test_impossible_deadline_runs_now_and_is_late() -> None:
    job = _job(hours=3, deadline_h=2)
    p = plan([job], _series([100.0] * 48), None, POLICY, NOW).jobs[0]
    assert p.late and p.start == NOW and not p.deferred
    assert "deadline can no longer be met" in p.reason


def test_deadline_years_away_is_planned_within_the_horizon() -> None:
    carbon = [300.0] * 96
    carbon[40] = carbon[41] = 20.0
    p = plan([_job(deadline_h=24 * 365 * 3)], _series(carbon), None, POLICY, NOW).jobs[0]
    assert p.start == SLOT0 + 40 * SLOT_SECONDS


def test_job_longer_than_forecast_runs_as_submitted() -> None:
    p = plan([_job(hours=30, deadline_h=200)], _series([100.0] * 48), None, POLICY, NOW).jobs[0]
    assert not p.deferred and "longer than the forecast horizon" in p.reason


def test_no_usable_forecast_means_run_as_submitted() -> None:
    jobs = [_job("a"), _job("b")]
    none = plan(jobs, None, None, POLICY, NOW)
    assert all(not p.deferred and "no forecast" in p.reason for p in none.jobs)
    stale = SignalSeries(start=SLOT0 - 10 * SLOT_SECONDS, carbon=(1.0,) * 4, price=(math.nan,) * 4, source="old")
    assert all("does not cover now" in p.reason for p in plan(jobs, stale, None, POLICY, NOW).jobs)


def test_missing_slots_are_never_chosen() -> None:
    carbon = [300.0] * 24
    carbon[5] = math.nan
    carbon[6] = 1.0
    p = plan([_job(hours=1)], _series(carbon), None, POLICY, NOW).jobs[0]
    assert p.start != SLOT0 + 5 * SLOT_SECONDS
    assert p.start == SLOT0 + 6 * SLOT_SECONDS or p.start == SLOT0 + 7 * SLOT_SECONDS


def test_capacity_profile_from_running_and_inflexible_work() -> None:
    free = capacity_profile(4, [(2, NOW + 3600), (1, None)], NOW, 6)
    # NOW is 08:50 and SLOT0 08:30: work until 09:50 still occupies slot 2 (09:30-10:00).
    assert list(free) == [1.0, 1.0, 1.0, 3.0, 3.0, 3.0]


def test_capacity_spreads_queue_jobs() -> None:
    carbon = [300.0] * 24
    carbon[4:6] = [50.0, 50.0]
    jobs = [_job(str(i), hours=1) for i in range(4)]
    cap = capacity_profile(2, [], NOW, 24)
    planned = plan(jobs, _series(carbon), cap, POLICY, NOW)
    starts = sorted(p.start for p in planned.jobs)
    assert starts.count(SLOT0 + 4 * SLOT_SECONDS) == 2


# -- the queue projection and deadlines at risk -------------------------------------------------


def test_first_fit_respects_room_limit_earliest_and_the_grid_end() -> None:
    free = np.array([1.0, 3, 3, 1, 3, 3, 3])
    assert first_fit(free, 2, 2) == 1
    assert first_fit(free, 2, 3) == 4
    assert first_fit(free, 2, 1, limit=0) == -1
    assert first_fit(free, 2, 2, earliest=2) == 4
    assert first_fit(free, 2, 10) == 4  # runs past the grid: only the part inside must fit
    assert first_fit(free, 4, 1) == -1


def test_place_in_order_never_lets_a_later_job_delay_an_earlier_one() -> None:
    free = np.full(6, 2.0)
    starts, left = place_in_order(free, np.array([2.0, 1.0, 1.0]), np.array([2, 3, 1]))
    assert starts.tolist() == [0, 2, 2]  # the second waits for the first; the third fits beside it
    assert left.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 2.0]
    starts, _ = place_in_order(free, np.array([3.0]), np.array([1]))
    assert starts.tolist() == [-1]  # never fits: takes nothing


@given(
    free=st.lists(st.integers(0, 4), min_size=1, max_size=24),
    jobs=st.lists(st.tuples(st.integers(1, 4), st.integers(1, 6), st.integers(0, 30)), max_size=8),
)
@settings(max_examples=200, deadline=None)
def test_jobs_not_at_risk_fit_by_their_latest_start_in_latest_start_order(
    free: list[int], jobs: list[tuple[int, int, int]]
) -> None:
    grid = np.asarray(free, dtype=np.float64)
    sizes = np.asarray([j[0] for j in jobs], dtype=np.float64)
    lengths = np.asarray([j[1] for j in jobs], dtype=np.int64)
    latest = np.asarray([j[2] for j in jobs], dtype=np.int64)
    risky = at_risk(grid, sizes, lengths, latest, margin=0)
    order = np.argsort(latest, kind="stable")
    starts, _ = place_in_order(grid, sizes[order], lengths[order])
    for rank, i in enumerate(order):
        if latest[i] >= grid.size:
            assert not risky[i]  # beyond the grid: judged later
        elif not risky[i]:
            assert 0 <= starts[rank] <= latest[i]


def test_queue_capacity_places_waiting_work_after_running_work() -> None:
    running = [(2, NOW + 3600)]  # until slot 2 (08:50 + 1 h = 09:50, in 09:30-10:00)
    waiting = [WaitingWork(nodes=3, duration_s=3600, earliest=NOW), WaitingWork(nodes=1, duration_s=1800, earliest=NOW)]
    free = queue_capacity(4, running, waiting, NOW, 8)
    # 3 nodes do not fit beside the running 2 until slot 3; the 1-node job fits at once.
    assert free.tolist() == [1.0, 2.0, 2.0, 1.0, 1.0, 4.0, 4.0, 4.0]


def test_deadlines_at_risk_picks_the_jobs_the_queue_could_no_longer_fit() -> None:
    free = np.array([0.0] * 10 + [1.0] * 30)  # the node is busy for 5 h
    soon = _job("soon", hours=1, deadline_h=4)  # latest safe start ~2.75 h: cannot make it
    later = _job("later", hours=1, deadline_h=12)
    far = _job("far", hours=1, deadline_h=40)  # beyond the 20 h grid: judged later
    assert deadlines_at_risk([soon, later, far], free, NOW, margin_slots=1) == frozenset({"soon"})
    two = [_job("a", hours=2, deadline_h=8.5), _job("b", hours=2, deadline_h=8.75)]
    # From slot 10 on one fits at a time: a starts at slot 10, b only at 14, after its latest 13.
    assert deadlines_at_risk(two, free, NOW, margin_slots=0) == frozenset({"b"})


def test_arrival_reserve_phases_in_recent_load_scaled_by_utilisation() -> None:
    from slurm_flex.planner.policy import arrival_reserve

    busy = arrival_reserve(load_nodes=80, total_nodes=100, ramp_slots=4, n_slots=8)
    assert busy.tolist() == pytest.approx([0, 16, 32, 48, 64, 64, 64, 64])  # 80 x 80 % from slot 4
    light = arrival_reserve(load_nodes=20, total_nodes=100, ramp_slots=1, n_slots=3)
    assert light.tolist() == pytest.approx([0, 4, 4])  # a lightly used machine keeps little
    assert arrival_reserve(80, 100, 4, 3, by_utilisation=False).tolist() == pytest.approx([0, 20, 40])
    assert not arrival_reserve(0, 100, 4, 5).any()


def test_expedite_moves_a_queued_job_the_queue_would_start_too_late() -> None:
    # Running work holds all 4 nodes for 2 steps; a 4-node job of 10 steps waits first, then a
    # job with a latest safe start at step 5: in place it starts at 12, first it starts at 2.
    free = np.array([0.0, 0.0] + [4.0] * 30)
    sizes = np.array([4.0, 4.0])
    lengths = np.array([10, 2])
    none = np.zeros(2, bool)
    assert expedite(free, sizes, lengths, np.array([-1, 5]), none, margin=1).tolist() == [IN_PLACE, HEAD]
    # Not a job the queue starts in time.
    assert expedite(free, sizes, lengths, np.array([-1, 13]), none, margin=1).tolist() == [IN_PLACE, IN_PLACE]
    # One that even the head of the queue starts too late (by time limits) queues right behind it.
    assert expedite(free, sizes, lengths, np.array([-1, 1]), none, margin=1).tolist() == [IN_PLACE, NEXT]


def test_expedite_keeps_deadline_order_and_puts_the_hopeless_behind() -> None:
    # Three late jobs of 4 nodes x 2 steps behind a 10-step job; the head of the queue can only
    # save the two with the earliest latest starts.
    free = np.array([0.0, 0.0] + [4.0] * 30)
    sizes = np.array([4.0, 4.0, 4.0, 4.0])
    lengths = np.array([10, 2, 2, 2])
    moved = np.array([False, False, False, True])
    # Job 2 (latest 3) starts at 2, job 3 (latest 4) at 4; job 1 (latest 5) would start at 6.
    tiers = expedite(free, sizes, lengths, np.array([-1, 5, 3, 4]), moved, margin=0)
    assert tiers.tolist() == [IN_PLACE, NEXT, HEAD, HEAD]
    # Job 3's latest start moves to 3: it cannot follow job 2 in time, so job 1 takes its turn.
    tiers = expedite(free, sizes, lengths, np.array([-1, 5, 3, 3]), moved, margin=0)
    assert tiers.tolist() == [IN_PLACE, HEAD, HEAD, NEXT]
    # A moved job with no deadline any more (past its latest start, or opted out) goes back.
    tiers = expedite(free, sizes, lengths, np.array([-1, 5, 3, -1]), moved, margin=0)
    assert tiers.tolist() == [IN_PLACE, HEAD, HEAD, IN_PLACE]
