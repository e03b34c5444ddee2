"""Increase (absorb) contracts and overlapping contracts, as pure functions: the power floor an
absorb contract puts on the site, the jobs the daemon pulls forward to reach it, the quote
limit (never more than the deferred work and the free nodes can add), quotes made against the
contracts already confirmed, and the delivery report's sign for an increase."""

from __future__ import annotations

import math
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from slurm_flex.beckn import contract as shapes
from slurm_flex.beckn.activation import (
    absorb_moments,
    absorb_pulls,
    next_edge,
    power_cap,
    power_floor,
    with_pulls,
)
from slurm_flex.beckn.errors import BecknError
from slurm_flex.beckn.flexibility import RunningLoad, absorbable, baseline
from slurm_flex.beckn.inputs import FlexInput
from slurm_flex.beckn.quote import quote_need
from slurm_flex.beckn.report import delivery_report
from slurm_flex.beckn.store import ABSORB, SHED, BecknStore, Contract
from slurm_flex.daemon.cycle import site_kw
from slurm_flex.grid.series import SLOT_SECONDS, SignalSeries
from slurm_flex.planner.queue import FlexJob, PlanningSnapshot
from slurm_flex.power.ledger import PowerStep
from slurm_flex.slurm.parsers import SlurmNode
from tests.test_beckn_flexibility import NOW, POLICY, N, forecast, job, snapshot


def contract(
    cid: str,
    direction: str,
    first_slot: int,
    baseline: tuple[float, ...],
    offered: tuple[float, ...],
    interval_s: int = SLOT_SECONDS,
    suspend: tuple[str, ...] = (),
    status: str = "ACTIVE",
) -> Contract:
    return Contract(
        id=cid,
        transaction_id=f"tx-{cid}",
        counterparty="grid",
        callback_uri="http://127.0.0.1:1",
        status=status,
        window_start=NOW + first_slot * SLOT_SECONDS,
        interval_s=interval_s,
        requested=offered,
        offered=offered,
        baseline=baseline,
        pending_cap=(),
        suspend=suspend,
        price=-0.2 if direction == ABSORB else 0.3,
        penalty=0.1,
        currency="GBP",
        baseline_method={},
        quote_expires=NOW + 600,
        reason="",
        doc={},
        direction=direction,
    )


def at(kw: np.ndarray, slots: range) -> list[float]:
    return [round(float(kw[t]), 6) for t in slots]


# -- the floor ----------------------------------------------------------------------------------


def test_power_floor_is_baseline_plus_committed_less_the_running_work() -> None:
    running = [
        RunningLoad("r1", 1.0, NOW + 8 * SLOT_SECONDS, None, False),
        RunningLoad("r-paused", 0.5, NOW + 8 * SLOT_SECONDS, None, True),
    ]
    up = contract("up", ABSORB, 2, baseline=(1.5, 2.5), offered=(2.0, 2.0))
    # a reduction elsewhere suspends r-paused: it draws nothing toward the floor
    down = contract("down", SHED, 5, baseline=(3.0,), offered=(1.0,), suspend=("r-paused",))
    floor = power_floor([up, down], NOW, N, running)
    assert floor is not None
    # site floor 3.5 and 4.5 kW; the 1 kW running job counts toward it, the rest is pending work's
    assert at(floor, range(0, 6)) == [0.0, 0.0, 2.5, 3.5, 0.0, 0.0]
    # the reduction is a ceiling, never a floor; the increase never a ceiling
    assert power_floor([down], NOW, N, running) is None
    cap = power_cap([up, down], NOW, N, running)
    assert cap is not None and np.isinf(cap[2]) and np.isinf(cap[3]) and cap[5] == pytest.approx(1.0)
    assert power_cap([up], NOW, N, running) is None
    # ended, cancelled or over: no floor
    assert power_floor([contract("x", ABSORB, 2, (1.0,), (1.0,), status="CANCELLED")], NOW, N, running) is None
    assert power_floor([up], NOW + 4 * SLOT_SECONDS, N, running) is None


def test_power_floor_takes_the_most_committed_in_each_half_hour_and_overlaps_by_the_highest() -> None:
    # 10-minute intervals: 1, 3 and 2 kW in one half-hour; the floor holds the 3 kW all of it
    short = contract("short", ABSORB, 1, baseline=(0.5,), offered=(1.0, 3.0, 2.0), interval_s=600)
    other = contract("other", ABSORB, 1, baseline=(0.0, 0.0), offered=(1.0, 5.0))
    floor = power_floor([short, other], NOW, N)
    assert floor is not None
    assert at(floor, range(0, 4)) == [0.0, 3.5, 5.0, 0.0]


# -- what the daemon pulls forward --------------------------------------------------------------


def pull_snapshot() -> tuple[PlanningSnapshot, SignalSeries]:
    """Three 1-node 1 kW jobs and a 4-node 3 kW one, all planned into the clean slots 6-7; only
    2 nodes are idle until slot 4 (running work holds the rest)."""
    free = np.full(N * 4, 10.0)
    free[:4] = 2.0
    jobs = (
        job("x", 1.0, 2, 20),
        job("y", 1.0, 2, 12),
        job("z", 1.0, 2, 16),
        FlexJob("big", 4, 3000.0, 2 * SLOT_SECONDS, NOW, NOW + 8 * SLOT_SECONDS, NOW + 10 * SLOT_SECONDS),
    )
    return PlanningSnapshot(NOW + 60, jobs, free, free, 10.0, np.zeros(N * 4), 0), forecast(range(6, 8))


def test_absorb_pulls_the_most_urgent_deferred_jobs_that_fit_until_the_floor() -> None:
    snap, fc = pull_snapshot()
    plan_ = baseline(snap, fc, POLICY, [], N).plan
    assert {p.job_id: (p.start - NOW) // SLOT_SECONDS for p in plan_.jobs} == {"x": 6, "y": 6, "z": 6, "big": 6}
    running = [RunningLoad("r1", 0.5, NOW + 4 * SLOT_SECONDS, None, False)]
    # site floor 0.5 + 2 kW in the half-hour now: 2 kW to find in pending work
    up = contract("up", ABSORB, 0, baseline=(0.5,), offered=(2.0,))
    pulls = absorb_pulls([up], NOW + 60, running, snap, plan_)
    # big is the most urgent but needs 4 nodes (2 idle): never started on nodes that are not
    # free; then y and z (latest safe starts before x's), and no more than the floor asks
    assert [p.job_id for p in pulls] == ["y", "z"]
    assert all(p.contract_id == "up" and "absorb contract up" in p.reason for p in pulls)
    assert "2.500 kW" in pulls[0].reason
    # the cycle's plan then starts them now, claiming no saving for them
    pulled = with_pulls(plan_, pulls, NOW + 60).by_id()
    assert pulled["y"].start == NOW + 60 and not pulled["y"].deferred and "absorb contract up" in pulled["y"].reason
    assert pulled["y"].carbon_planned_g == pulled["y"].carbon_now_g
    assert pulled["x"].start == plan_.by_id()["x"].start  # never moved later, nor touched
    # the floor already met by running work: nothing pulled; nor before the window, nor after
    assert absorb_pulls([up], NOW + 60, [RunningLoad("r1", 3.0, None, None, False)], snap, plan_) == ()
    later = contract("later", ABSORB, 1, baseline=(0.5,), offered=(2.0,))
    assert absorb_pulls([later], NOW + 60, running, snap, plan_) == ()
    assert absorb_pulls([up], NOW + SLOT_SECONDS + 60, running, snap, plan_) == ()
    # a reduction contract is no reason to pull anything
    assert absorb_pulls([contract("down", SHED, 0, (0.5,), (0.5,))], NOW + 60, running, snap, plan_) == ()


def test_absorb_never_pulls_a_job_before_its_own_begin_time() -> None:
    snap, fc = pull_snapshot()
    # y and z may not start before slot 3 (their --begin): only x can be pulled now
    jobs = tuple(
        FlexJob(j.job_id, j.nodes, j.power_w, j.duration_s, NOW + 3 * SLOT_SECONDS, j.latest_start, j.deadline)
        if j.job_id in ("y", "z")
        else j
        for j in snap.jobs
    )
    snap = PlanningSnapshot(snap.now, jobs, snap.free_by_limits, snap.free_planned, 10.0, snap.reserve, 0)
    plan_ = baseline(snap, fc, POLICY, [], N).plan
    up = contract("up", ABSORB, 0, baseline=(0.0,), offered=(2.0,))
    assert [p.job_id for p in absorb_pulls([up], NOW + 60, [], snap, plan_)] == ["x"]


# -- the quote limit ----------------------------------------------------------------------------


def test_absorb_quote_never_exceeds_what_deferred_work_and_free_nodes_add() -> None:
    snap, fc = pull_snapshot()
    # slot 2: 2 idle nodes, so two 1 kW jobs; slot 5: 10 idle nodes, all four jobs (6 kW)
    d = absorbable(snap, fc, POLICY, [], NOW + 2 * SLOT_SECONDS, [5.0])
    assert d.direction == ABSORB and not d.full
    assert d.offered == (2.0,)
    assert "adds at most 2.000 kW" in d.reason
    d = absorbable(snap, fc, POLICY, [], NOW + 5 * SLOT_SECONDS, [9.0])
    assert d.offered == (6.0,)
    # a two-slot window: the jobs pulled into slot 4 run through slot 5 as well
    d = absorbable(snap, fc, POLICY, [], NOW + 4 * SLOT_SECONDS, [6.0, 6.0])
    assert d.offered == (6.0, 6.0) and d.full and d.reason == ""
    # within what is there: full, and the baseline is the plan's draw in the window
    d = absorbable(snap, fc, POLICY, [], NOW + 2 * SLOT_SECONDS, [1.5])
    assert d.offered == (1.5,) and d.full and d.baseline_kw == (0.0,)
    # in the clean window itself nothing is deferred past it to pull in
    d = absorbable(snap, fc, POLICY, [], NOW + 6 * SLOT_SECONDS, [1.0])
    assert d.offered == (0.0,) and not d.full


def test_absorb_quote_with_no_forecast_offers_nothing_and_says_why() -> None:
    snap, _ = pull_snapshot()
    d = absorbable(snap, None, POLICY, [], NOW + 2 * SLOT_SECONDS, [1.0])
    assert d.offered == (0.0,) and "nothing can start earlier" in d.reason


def test_need_direction_is_the_sign_of_price() -> None:
    def need(price: float) -> dict[str, object]:
        return shapes.need_contract(
            buyer_id="grid",
            resource_id="e",
            window_start=NOW,
            requested=[1.0, 1.0],
            price=price,
            penalty=0.1,
            currency="GBP",
            seller_id=None,
        )

    assert shapes.parse_need(need(0.3)).direction == SHED
    assert shapes.parse_need(need(-0.3)).direction == ABSORB
    mixed = need(-0.3)
    payloads = mixed["commitments"][0]["resources"][0]["resourceAttributes"]["intervals"][1]["payloads"]  # type: ignore[index]
    payloads[1]["values"] = [0.3]
    with pytest.raises(BecknError) as err:
        shapes.parse_need(mixed)  # type: ignore[arg-type]
    assert err.value.code == "BIZ_FULFILLMENT_UNAVAILABLE"


# -- quotes against the contracts already confirmed ---------------------------------------------


def flex_input(snap: PlanningSnapshot, fc: SignalSeries, running: tuple[RunningLoad, ...] = ()) -> FlexInput:
    return FlexInput(snap, fc, running, float(NOW))


def shapes_need(first_slot: int, kw: list[float], price: float) -> shapes.Need:
    return shapes.parse_need(
        shapes.need_contract(
            buyer_id="grid",
            resource_id="e2",
            window_start=NOW + first_slot * SLOT_SECONDS,
            requested=kw,
            price=price,
            penalty=0.1,
            currency="GBP",
            seller_id=None,
        )
    )


def test_second_reduction_is_quoted_against_the_first_ones_ceiling() -> None:
    # two 1 kW jobs planned into the clean slots 2-3, a suspendable running job
    snap = snapshot([job("a", 1.0, 2, 12), job("b", 1.0, 2, 12)])
    fc = forecast(range(2, 4))
    opt_in = (RunningLoad("r-opt-in", 1.0, NOW + 8 * SLOT_SECONDS, NOW + 20 * SLOT_SECONDS, True),)
    flex = flex_input(snap, fc, opt_in)
    need = shapes_need(2, [3.0, 3.0], 0.3)
    alone, offered, _ = quote_need(flex, need, POLICY, 600, [])
    assert offered == (3.0, 3.0) and alone.baseline_kw == (3.0, 3.0) and alone.suspend == ("r-opt-in",)
    # the first contract took all of it: the planned work out of slots 2-3 and the opted-in job
    first = contract("c1", SHED, 2, baseline=(3.0, 3.0), offered=(3.0, 3.0), suspend=("r-opt-in",))
    d, offered, reason = quote_need(flex, need, POLICY, 600, [first])
    assert d.baseline_kw == (0.0, 0.0)  # what the site draws there with the first carried out
    assert offered == (0.0, 0.0) and d.suspend == () and reason
    # half taken: the second gets the rest, never the same kW twice
    half = contract("c1", SHED, 2, baseline=(3.0, 3.0), offered=(1.0, 1.0))
    d, offered, _ = quote_need(flex, need, POLICY, 600, [half])
    assert d.baseline_kw == (2.0, 2.0) and offered == (2.0, 2.0)
    # the contract being re-quoted does not count against itself; nor a cancelled one
    assert quote_need(flex, need, POLICY, 600, [first], exclude="c1")[1] == (3.0, 3.0)
    cancelled = contract("c1", SHED, 2, (3.0, 3.0), (3.0, 3.0), status="CANCELLED")
    assert quote_need(flex, need, POLICY, 600, [cancelled])[1] == (3.0, 3.0)


def test_second_increase_is_quoted_against_the_work_the_first_pulls() -> None:
    snap, fc = pull_snapshot()
    flex = flex_input(snap, fc)
    need = shapes_need(5, [9.0], -0.2)
    assert quote_need(flex, need, POLICY, 600, [])[1] == (6.0,)
    # the first increase took 4 kW of it in the same half-hour: what is left is 2 kW, on a
    # baseline that already holds the first's 4
    first = contract("c1", ABSORB, 5, baseline=(0.0,), offered=(4.0,))
    d, offered, reason = quote_need(flex, need, POLICY, 600, [first])
    assert d.baseline_kw == (4.0,)
    assert offered == (2.0,) and "at most 2.000 kW" in reason


def test_an_increase_under_way_counts_the_jobs_already_pulled_not_more() -> None:
    # the first increase's window is open and its floor met: the two jobs the daemon pulled
    # run now; x is still deferred to slot 6
    free = np.full(N * 4, 10.0)
    snap = PlanningSnapshot(NOW + 60, (job("x", 1.0, 2, 20),), free, free, 10.0, np.zeros(N * 4), 0)
    running = (
        RunningLoad("r1", 0.5, None, None, False),
        RunningLoad("y", 1.0, NOW + 2 * SLOT_SECONDS, None, False),
        RunningLoad("z", 1.0, NOW + 2 * SLOT_SECONDS, None, False),
    )
    flex = flex_input(snap, forecast(range(6, 8)), running)
    first = contract("c1", ABSORB, 0, baseline=(0.5,), offered=(2.0,))
    # x is not pinned to the first (it needs nothing more): a second increase can have it
    assert quote_need(flex, shapes_need(1, [5.0], -0.2), POLICY, 600, [first])[1] == (1.0,)


def test_opposite_directions_never_share_a_half_hour() -> None:
    snap, fc = pull_snapshot()
    flex = flex_input(snap, fc)
    # the planned work in slot 6 could be moved out of it, but an increase there is confirmed
    assert quote_need(flex, shapes_need(6, [1.0], 0.3), POLICY, 600, [])[1] == (1.0,)
    up = contract("up", ABSORB, 6, baseline=(6.0,), offered=(1.0,))
    _, offered, reason = quote_need(flex, shapes_need(6, [1.0], 0.3), POLICY, 600, [up])
    assert offered == (0.0,) and "confirmed increase" in reason
    assert quote_need(flex, shapes_need(4, [1.0], -0.2), POLICY, 600, [])[1] == (1.0,)
    down = contract("down", SHED, 4, baseline=(0.0, 0.0), offered=(0.0, 0.0))
    _, offered, reason = quote_need(flex, shapes_need(4, [1.0], -0.2), POLICY, 600, [down])
    assert offered == (0.0,) and "confirmed reduction" in reason
    # a pulled job would run into the reduction's window: it is not pulled (slot 3's jobs would
    # run through slot 4)
    assert quote_need(flex, shapes_need(3, [1.0], -0.2), POLICY, 600, [])[1] == (1.0,)
    assert quote_need(flex, shapes_need(3, [1.0], -0.2), POLICY, 600, [down])[1] == (0.0,)


# -- the delivery report --------------------------------------------------------------------------


def test_delivery_report_counts_an_increase_above_the_baseline(tmp_path: Path) -> None:
    store = BecknStore(tmp_path)
    start = NOW
    up = contract("up", ABSORB, 0, baseline=(1.0,), offered=(1.0, 1.0), interval_s=600)
    store.record_usage(start + 60, 2.5, "modelled")  # interval 0: 1.5 kW above the baseline
    store.record_usage(start + 660, 1.5, "modelled")  # interval 1: 0.5 kW above it
    report = delivery_report(store, up, start + 1200, "hpc")
    assert report.delivered_kw == (1.5, 0.5)
    perf = report.performance
    assert perf["status"]["code"] == "DELIVERY_COMPLETE_PARTIAL"
    assert "USAGE - BASELINE" in perf["status"]["longDesc"]
    rows = perf["performanceAttributes"]["meters"][0]["telemetry"]["intervals"]
    # BASELINE and USAGE stay the site's power (positive kW), as DEG's meters report it
    assert [{p["type"]: p["values"][0] for p in r["payloads"]} for r in rows] == [
        {"BASELINE": 1.0, "USAGE": 2.5},
        {"BASELINE": 1.0, "USAGE": 1.5},
    ]
    # the same figures for a reduction deliver nothing
    down = contract("down", SHED, 0, baseline=(1.0,), offered=(1.0, 1.0), interval_s=600)
    assert delivery_report(store, down, start + 1200, "hpc").delivered_kw == (0.0, 0.0)


def test_store_made_before_directions_reads_its_contracts_as_reductions(tmp_path: Path) -> None:
    path = tmp_path / "beckn" / "beckn.sqlite3"
    path.parent.mkdir()
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE contracts (id TEXT PRIMARY KEY, transaction_id TEXT NOT NULL, counterparty TEXT NOT NULL, "
        "callback_uri TEXT NOT NULL, status TEXT NOT NULL, window_start INTEGER NOT NULL, interval_s INTEGER NOT "
        "NULL, requested TEXT NOT NULL, offered TEXT NOT NULL, baseline TEXT NOT NULL, pending_cap TEXT NOT NULL, "
        "suspend TEXT NOT NULL, price REAL NOT NULL, penalty REAL NOT NULL, currency TEXT NOT NULL, "
        "baseline_method TEXT NOT NULL, quote_expires REAL NOT NULL, reason TEXT NOT NULL, doc TEXT NOT NULL, "
        "final_report_sent INTEGER NOT NULL DEFAULT 0, role TEXT NOT NULL DEFAULT 'bpp', created REAL NOT NULL, "
        "updated REAL NOT NULL)"
    )
    db.execute(
        "INSERT INTO contracts VALUES ('old', 't', 'g', 'u', 'ACTIVE', 0, 1800, '[1]', '[1]', '[2]', '[1]', '[]', "
        "0.3, 0.1, 'GBP', '{}', 0, '', '{}', 0, 'bpp', ?, ?)",
        (time.time(), time.time()),
    )
    db.commit()
    db.close()
    store = BecknStore(tmp_path)
    old = store.contract("old")
    assert old is not None and old.direction == SHED
    store.put_contract(contract("new", ABSORB, 0, (1.0,), (1.0,)))
    new = store.contract("new")
    assert new is not None and new.direction == ABSORB


def test_pulls_are_kept_once(tmp_path: Path) -> None:
    store = BecknStore(tmp_path)
    store.mark_pulled("up", "7", 10.0, 1.0, "why")
    store.mark_pulled("up", "7", 20.0, 1.0, "again")
    assert store.pulled() == [("up", "7", 10.0, 1.0, "why")]
    assert store.pulled("other") == []
    assert math.isclose(store.pulled("up")[0][3], 1.0)


# -- on time: a window opening before the next cycle is prepared for ---------------------------


def test_a_window_opening_before_the_next_cycle_gets_its_pulls_as_begin_times() -> None:
    snap, fc = pull_snapshot()
    plan_ = baseline(snap, fc, POLICY, [], N).plan
    running = [RunningLoad("r1", 0.5, NOW + 4 * SLOT_SECONDS, None, False)]
    # the window opens 2 minutes into the next half-hour; the cycle runs 3 minutes before that
    opens = NOW + SLOT_SECONDS + 120
    up = contract("up", ABSORB, 1, baseline=(0.5,), offered=(2.0,))
    up = Contract(**{**up.__dict__, "window_start": opens})
    now = opens - 180
    # no lookahead (the daemon as it was): nothing until the first cycle in the window
    assert absorb_pulls([up], now, running, snap, plan_) == ()
    pulls = absorb_pulls([up], now, running, snap, plan_, lookahead_s=240)
    # the same jobs the first cycle in the window would pull, to start as it opens
    late = absorb_pulls([up], opens + 200, running, snap, plan_)
    assert [p.job_id for p in pulls] == [p.job_id for p in late] == ["y", "z"]
    assert all(p.start == opens for p in pulls) and "starts as the window opens" in pulls[0].reason
    # not when the opening is beyond the lookahead
    assert absorb_pulls([up], now, running, snap, plan_, lookahead_s=120) == ()
    # the cycle's plan defers them to the opening (their begin time), never earlier
    pulled = with_pulls(plan_, pulls, now).by_id()
    assert pulled["y"].start == opens and pulled["y"].deferred
    assert pulled["x"].start == plan_.by_id()["x"].start


def test_each_half_hour_of_an_increase_window_is_prepared_for_and_a_cycle_runs_at_each_edge() -> None:
    snap, fc = pull_snapshot()
    plan_ = baseline(snap, fc, POLICY, [], N).plan
    # two half-hours from slot 1: 1 kW asked in the first, 3 kW in the second
    up = contract("up", ABSORB, 1, baseline=(0.0, 0.0), offered=(1.0, 3.0))
    now = NOW + SLOT_SECONDS - 60
    assert absorb_moments([up], now, 0) == []
    assert absorb_moments([up], now, 120) == [NOW + SLOT_SECONDS]
    inside = NOW + 2 * SLOT_SECONDS - 30
    assert absorb_moments([up], inside, 120) == [inside, NOW + 2 * SLOT_SECONDS]
    pulls = absorb_pulls([up], inside, [], snap, plan_, lookahead_s=120)
    # one job now for the first half-hour; for the second, one more as it opens (the one pulled
    # now runs on into it, and the two idle nodes are then taken: x would find none)
    assert [(p.job_id, p.start) for p in pulls] == [("y", inside), ("z", NOW + 2 * SLOT_SECONDS)]
    # the daemon wakes at every edge: the opening, the half-hour inside, the end
    assert next_edge([up], now) == NOW + SLOT_SECONDS
    assert next_edge([up], NOW + SLOT_SECONDS) == NOW + 2 * SLOT_SECONDS
    assert next_edge([up], NOW + 2 * SLOT_SECONDS) == NOW + 3 * SLOT_SECONDS
    assert next_edge([up], NOW + 3 * SLOT_SECONDS) is None
    down = contract("down", SHED, 5, baseline=(1.0,), offered=(1.0,))
    assert next_edge([down], now) == NOW + 5 * SLOT_SECONDS
    assert next_edge([Contract(**{**down.__dict__, "status": "CANCELLED"})], now) is None


def test_pulls_to_a_window_ahead_are_decided_again_until_it_opens(tmp_path: Path) -> None:
    store = BecknStore(tmp_path)
    store.mark_pulled("up", "7", 100.0, 1.0, "to the opening")
    store.forget_pulls_after(50.0)  # a cycle before the opening: decided again
    assert store.pulled() == []
    store.mark_pulled("up", "7", 100.0, 1.0, "to the opening")
    store.forget_pulls_after(100.0)  # the opening has come: it stands
    assert [j for _, j, *_ in store.pulled()] == ["7"]


# -- delivery proved with measured power --------------------------------------------------------


def test_measured_power_proves_delivery_on_the_measured_footing_and_modelled_only_where_none(
    tmp_path: Path,
) -> None:
    store = BecknStore(tmp_path)
    up = contract("up", ABSORB, 0, baseline=(1.0,), offered=(1.0, 1.0, 1.0), interval_s=600)
    start = up.window_start
    # before the window: the site measured 0.3 kW above the modelled jobs (idle nodes)
    for ts, modelled, measured in ((start - 600, 1.0, 1.25), (start - 300, 1.0, 1.35)):
        store.record_usage(ts, modelled, "modelled")
        store.record_usage(ts, measured, "measured")
    # interval 0 measured; interval 1 modelled only (the meter was down); interval 2 both
    store.record_usage(start + 60, 2.2, "modelled")
    store.record_usage(start + 60, 2.5, "measured")
    store.record_usage(start + 660, 2.0, "modelled")
    store.record_usage(start + 1260, 2.1, "modelled")
    store.record_usage(start + 1260, 2.4, "measured")
    report = delivery_report(store, up, start + 1800, "hpc")
    assert report.bases == ("measured", "modelled", "measured")
    assert report.basis == "measured+modelled"
    assert report.offset_kw == pytest.approx(0.3)
    # measured intervals: the plan's 1 kW baseline on the measured footing (1.3 kW)
    assert report.baseline_kw == pytest.approx((1.3, 1.0, 1.3))
    assert report.usage_kw == pytest.approx((2.5, 2.0, 2.4))
    assert report.delivered_kw == pytest.approx((1.2, 1.0, 1.1))
    # one meter per basis, each with its intervals, every interval in exactly one
    meters = report.performance["performanceAttributes"]["meters"]
    assert {m["meterId"]: [iv["id"] for iv in m["telemetry"]["intervals"]] for m in meters} == {
        "hpc:site:measured": [0, 2],
        "hpc:site:modelled": [1],
    }
    text = report.performance["status"]["longDesc"]
    assert "measured (site meter or every node) in intervals 0, 2" in text and "modelled" in text
    assert "plus 0.300 kW" in text


def test_measured_power_without_history_before_the_window_says_its_baseline_is_not_adjusted(
    tmp_path: Path,
) -> None:
    store = BecknStore(tmp_path)
    down = contract("down", SHED, 0, baseline=(3.0,), offered=(1.0,), interval_s=1800)
    store.record_usage(down.window_start + 60, 2.5, "modelled")
    store.record_usage(down.window_start + 60, 1.8, "measured")
    report = delivery_report(store, down, down.window_start + 1800, "hpc")
    assert report.bases == ("measured",) and report.basis == "measured" and report.offset_kw is None
    assert report.delivered_kw == pytest.approx((1.2,))
    assert "nothing was measured before the window" in report.performance["status"]["longDesc"]
    # nothing recorded at all: the interval says so
    empty = delivery_report(BecknStore(tmp_path / "empty"), down, down.window_start + 60, "hpc")
    assert empty.bases == ("none",) and empty.basis == "none"
    assert [m["meterId"] for m in empty.performance["performanceAttributes"]["meters"]] == ["hpc:site:none"]


def test_the_site_is_measured_by_its_meter_or_by_every_node_never_by_some() -> None:
    def node(name: str) -> SlurmNode:
        return SlurmNode(name, "IDLE", (), 2, 0, 1000, "", ("debug",))

    nodes = [node("n1"), node("n2")]

    def step(watts: dict[str, float], site: float | None = None) -> PowerStep:
        return PowerStep(len(watts), len(watts), sum(watts.values()), site, 0, (), watts)

    # every node measured: their sum (a node Slurm does not report, e.g. a login node, left out)
    assert site_kw(step({"n1": 300.0, "n2": 500.0, "login": 90.0}), nodes) == pytest.approx(0.8)
    # only one of the two: not the site's power (the proof falls back to the model)
    assert site_kw(step({"n1": 300.0}), nodes) is None
    assert site_kw(step({}), nodes) is None
    # a site meter is the site's power, whatever the nodes say
    assert site_kw(step({"n1": 300.0}, site=2500.0), nodes) == pytest.approx(2.5)


def test_the_other_sites_planned_draw_is_part_of_every_quotes_baseline_never_moved() -> None:
    # two 1 kW jobs planned into slots 2-3 at the site quoted from; the site's other part
    # plans 0.5 kW throughout
    snap = snapshot([job("a", 1.0, 2, 12), job("b", 1.0, 2, 12)])
    fc = forecast(range(2, 4))
    alone = flex_input(snap, fc)
    both = FlexInput(snap, fc, (), float(NOW), other_kw=(0.5,) * N)
    need = shapes_need(2, [2.0, 2.0], 0.3)
    d1, offered1, _ = quote_need(alone, need, POLICY, 600, [])
    d2, offered2, _ = quote_need(both, need, POLICY, 600, [])
    assert d2.baseline_kw == pytest.approx(tuple(b + 0.5 for b in d1.baseline_kw))
    assert offered2 == offered1 == (2.0, 2.0)  # what the quoted site can shed, no more
    # an increase: the floor (baseline + committed) holds the other part's draw, which the
    # pulls need not make up
    snap, fc = pull_snapshot()
    up_need = shapes_need(5, [6.0], -0.2)
    d, offered, _ = quote_need(FlexInput(snap, fc, (), float(NOW), other_kw=(0.5,) * N), up_need, POLICY, 600, [])
    assert offered == (6.0,) and d.baseline_kw == (0.5,)
    first = contract("c1", ABSORB, 5, baseline=(0.5,), offered=(4.0,))
    _, offered, _ = quote_need(FlexInput(snap, fc, (), float(NOW), other_kw=(0.5,) * N), up_need, POLICY, 600, [first])
    assert offered == (2.0,)


def test_usage_is_the_time_mean_of_the_samples_each_held_until_the_next_cycle(tmp_path: Path) -> None:
    store = BecknStore(tmp_path)
    up = contract("up", ABSORB, 0, baseline=(0.0,), offered=(1.0, 1.0), interval_s=600)
    start = up.window_start
    # interval 0: the cycle just after the opening saw nothing yet drawing; the one 15 s later
    # (the settle cycle) and the rest saw the pulled work
    for dt, kw in ((1, 0.0), (16, 2.0), (316, 2.0)):
        store.record_usage(start + dt, kw, "modelled")
    # interval 1: measured, with a meter outage in the middle (modelled only at +300 s)
    for dt, kw, basis in (
        (600, 1.0, "measured"),
        (600, 0.9, "modelled"),
        (900, 3.0, "modelled"),
        (1100, 2.0, "measured"),
    ):
        store.record_usage(start + dt, kw, basis)
    report = delivery_report(store, up, start + 1200, "hpc")
    usage = report.usage_kw
    assert usage[0] == pytest.approx((0.0 * 15 + 2.0 * 584) / 599)
    # measured 1.0 held 300 s (to the next cycle), 2.0 held 100 s; the outage's 200 s left out
    assert usage[1] == pytest.approx((1.0 * 300 + 2.0 * 100) / 400)
    assert report.bases == ("modelled", "measured")
