"""A confirmed contract carried out by the daemon, on the fake Slurm: its window's ceiling keeps
pending flexible work out (deadline kept), opted-in running jobs are suspended for the window
and resumed when it ends or is cancelled, an increase pulls deferred work into its window, and
power is recorded for the delivery report."""

from __future__ import annotations

import json
import time

import pytest

from slurm_flex.beckn.inputs import read_flex_input
from slurm_flex.beckn.report import delivery_report
from slurm_flex.beckn.store import ABSORB, BecknStore, Contract
from slurm_flex.daemon.cycle import Cycle, power_model_from
from slurm_flex.daemon.service import slurm_backend
from slurm_flex.grid.filesource import FileSource
from slurm_flex.grid.series import SLOT_SECONDS, floor_slot
from slurm_flex.power.model import Request
from slurm_flex.state import StateStore
from tests.fake_cluster import FakeEnv
from tests.helpers import forecast_from_now


def contract(
    cid: str, start: int, slots: int, interval_s: int, cap: tuple[float, ...], suspend: tuple[str, ...]
) -> Contract:
    return Contract(
        id=cid,
        transaction_id="tx",
        counterparty="grid",
        callback_uri="http://127.0.0.1:1",
        status="ACTIVE",
        window_start=start,
        interval_s=interval_s,
        requested=(1.0,) * slots,
        offered=(1.0,) * slots,
        baseline=(1.0,) * len(cap),  # ceiling: baseline less the 1 kW committed = 0
        pending_cap=cap,
        suspend=suspend,
        price=0.3,
        penalty=0.1,
        currency="GBP",
        baseline_method={},
        quote_expires=time.time() + 600,
        reason="",
        doc={},
    )


def test_ceiling_moves_pending_work_out_of_the_window(fake_env: FakeEnv) -> None:
    env = fake_env
    env.reconfigure(beckn={"subscriber_id": "hpc.test"})
    job_id = env.submit_flexible(hours=10, minutes=60)
    env.slurmflex("daemon", "--once")
    clean = env.slot0 + 8 * SLOT_SECONDS
    assert env.slurm.job(job_id).start_time == clean
    # a contract over slots 8-9 (the clean window) with no room for planned work
    store = BecknStore(env.load().daemon.state_dir)
    store.put_contract(contract("c1", clean, 2, SLOT_SECONDS, (0.0, 0.0), ()))
    env.slurmflex("daemon", "--once")
    job = env.slurm.job(job_id)
    entry = env.status()["jobs"][job_id]
    # planned out of the window (here: to the next-best time, before it), deadline kept
    moved = job.start_time if job.start_time is not None else int(time.time())
    assert not (clean - 3600 < moved < clean + 2 * SLOT_SECONDS), entry
    assert job.deadline is not None and moved + 3600 <= job.deadline
    # cancelled: the plan goes back to the clean window
    c = store.contract("c1")
    assert c is not None
    store.put_contract(Contract(**{**c.__dict__, "status": "CANCELLED"}))
    env.slurmflex("daemon", "--once")
    assert env.slurm.job(job_id).start_time == clean
    # the daemon wrote the endpoint's planning input and power samples
    assert (env.load().daemon.state_dir / "beckn" / "flex-input.json").exists()
    assert store.usage(0, time.time() + 10)


def test_opted_in_running_job_is_suspended_then_resumed(fake_env: FakeEnv) -> None:
    env = fake_env
    env.reconfigure(beckn={"subscriber_id": "hpc.test"})
    runner = env.submit(time_limit_s=7200, deadline=int(time.time()) + 8 * 3600, comment="flex=suspendable")
    fixed = env.submit(time_limit_s=7200)
    env.slurm.start(runner)
    env.slurm.start(fixed)
    now = int(time.time())
    store = BecknStore(env.load().daemon.state_dir)
    store.put_contract(contract("c2", now - now % 60, 5, 60, (0.0,), (runner, fixed)))
    env.slurmflex("daemon", "--once")
    assert env.slurm.job(runner).state == "SUSPENDED"
    assert env.slurm.job(fixed).state == "RUNNING"  # not opted in: never suspended
    assert [row[1] for row in store.open_suspensions()] == [runner]
    env.slurmflex("daemon", "--once")  # still in the window: nothing more happens
    assert env.slurm.job(runner).state == "SUSPENDED"
    c = store.contract("c2")
    assert c is not None
    store.put_contract(Contract(**{**c.__dict__, "status": "CANCELLED"}))
    env.slurmflex("daemon", "--once")
    assert env.slurm.job(runner).state == "RUNNING"
    assert store.open_suspensions() == []


def test_checkpointing_job_is_requeued_held_and_released_after(fake_env: FakeEnv) -> None:
    env = fake_env
    env.reconfigure(beckn={"subscriber_id": "hpc.test"})
    ckpt = env.submit(time_limit_s=3600, deadline=int(time.time()) + 8 * 3600, comment="flex=no,flex=requeue")
    env.slurm.start(ckpt)
    now = int(time.time())
    store = BecknStore(env.load().daemon.state_dir)
    store.put_contract(contract("c3", now - now % 60, 5, 60, (0.0,), (ckpt,)))
    env.slurmflex("daemon", "--once")
    job = env.slurm.job(ckpt)
    assert job.pending and job.held  # back in the queue, held for the window
    assert [(row[1], row[4]) for row in store.suspended()] == [(ckpt, "requeue")]
    c = store.contract("c3")
    assert c is not None
    store.put_contract(Contract(**{**c.__dict__, "status": "CANCELLED"}))
    env.slurmflex("daemon", "--once")
    assert not env.slurm.job(ckpt).held
    assert store.open_suspensions() == []


def absorb_contract(cid: str, start: int, interval_s: int, slots: int, baseline_kw: float, kw: float) -> Contract:
    """An ACTIVE increase: ``kw`` above ``baseline_kw`` in each interval of its window."""
    end = start + slots * interval_s
    half_hours = (floor_slot(end - 1) - floor_slot(start)) // SLOT_SECONDS + 1
    return Contract(
        **{
            **contract(cid, start, slots, interval_s, (), ()).__dict__,
            "offered": (kw,) * slots,
            "requested": (kw,) * slots,
            "baseline": (baseline_kw,) * half_hours,
            "price": -0.2,
            "direction": ABSORB,
        }
    )


def test_absorb_contract_pulls_deferred_work_into_its_window(fake_env: FakeEnv) -> None:
    env = fake_env
    env.reconfigure(beckn={"subscriber_id": "hpc.test"})
    config = env.load()
    kw_one = power_model_from(config).estimate(Request(nodes=1, cpus=1), None) / 1000
    # three of the four nodes busy with work slurm-flex does not move
    fixed = [env.submit(time_limit_s=7200) for _ in range(3)]
    for job_id in fixed:
        env.slurm.start(job_id)
    # deferred to later windows (the clean one 4 h ahead): the most urgent needs two nodes, one is free
    big = env.submit_flexible(hours=9, minutes=60, nodes=2, cpus=2)
    urgent = env.submit_flexible(hours=9.5, minutes=60)
    relaxed = env.submit_flexible(hours=10, minutes=60)
    env.slurmflex("daemon", "--once")
    planned = {j: env.slurm.job(j).start_time for j in (big, urgent, relaxed)}
    assert all(t is not None and t > time.time() + 3600 for t in planned.values()), planned
    # the utility asks the site to draw one job's power more than the plan (the fixed jobs) now
    now = int(time.time())
    store = BecknStore(config.daemon.state_dir)
    up = absorb_contract("up", now - now % 60, 60, 5, 3 * kw_one, kw_one)
    store.put_contract(up)
    env.slurmflex("daemon", "--once")
    # the most urgent job that fits is released now; the big one (no nodes for it) and the one
    # beyond the floor stay deferred
    begin = env.slurm.job(urgent).start_time  # None: eligible now
    assert begin is None or begin <= time.time() + 2
    assert all((env.slurm.job(j).start_time or 0) > time.time() + 3600 for j in (big, relaxed))
    entry = env.status()["jobs"][urgent]
    assert entry["status"] == "runs-now" and "absorb contract up" in entry["reason"], entry
    assert [(c, j) for c, j, *_ in store.pulled()] == [("up", urgent)]
    # not started yet, the next cycle keeps it released (a pulled job never goes back) and
    # counts it toward the floor: nothing more is pulled
    env.slurmflex("daemon", "--once")
    begin = env.slurm.job(urgent).start_time
    assert begin is None or begin <= time.time() + 2
    assert all((env.slurm.job(j).start_time or 0) > time.time() + 3600 for j in (big, relaxed))
    assert env.slurm.schedule() == [urgent]
    # in the window still: the floor is met by the pulled job, running now; nothing else is
    # pulled (the planner may still move the others among later windows, as ever)
    env.slurmflex("daemon", "--once")
    assert all((env.slurm.job(j).start_time or 0) > time.time() + 3600 for j in (big, relaxed))
    assert [j for _, j, *_ in store.pulled()] == [urgent]
    # the delivery report shows the power drawn above the baseline (the last sample: 4 jobs)
    c = store.contract("up")
    assert c is not None
    samples = store.usage(c.window_start, c.window_end)
    assert samples[-1][1] == pytest.approx(4 * kw_one)
    report = delivery_report(store, c, time.time(), "hpc.test")
    measured = [d for d in report.delivered_kw if d is not None]
    assert measured and max(measured) > 0
    assert "USAGE - BASELINE" in report.performance["status"]["longDesc"]
    # the contract over: the pulled job keeps running, the others keep their windows
    store.put_contract(Contract(**{**c.__dict__, "status": "CANCELLED"}))
    env.slurmflex("daemon", "--once")
    assert env.slurm.job(urgent).state == "RUNNING"
    assert all((env.slurm.job(j).start_time or 0) > time.time() + 3600 for j in (big, relaxed))


def test_an_increase_window_opening_before_the_next_cycle_gets_its_jobs_as_it_opens(fake_env: FakeEnv) -> None:
    env = fake_env
    env.reconfigure(beckn={"subscriber_id": "hpc.test"}, daemon={"interval_seconds": 60})
    config = env.load()
    kw_one = power_model_from(config).estimate(Request(nodes=1, cpus=1), None) / 1000
    jobs = [env.submit_flexible(hours=h, minutes=60) for h in (9.5, 10)]
    env.slurmflex("daemon", "--once")
    assert all((env.slurm.job(j).start_time or 0) > time.time() + 3600 for j in jobs)
    # an increase of one job's power opens a few seconds from now: before the next cycle is due
    opens = int(time.time()) + 6
    store = BecknStore(config.daemon.state_dir)
    store.put_contract(absorb_contract("up", opens, 60, 2, 0.0, kw_one))
    env.slurmflex("daemon", "--once")
    # the most urgent job's begin time is the opening (Slurm starts it then), the other stays
    urgent, relaxed = jobs
    assert env.slurm.job(urgent).start_time == opens
    assert (env.slurm.job(relaxed).start_time or 0) > time.time() + 3600
    entry = env.status()["jobs"][urgent]
    assert entry["status"] == "deferred" and "starts as the window opens" in entry["reason"], entry
    # in the window, Slurm has not looked at it yet (pending for BeginTime, its begin time
    # past): the cycle releases it again, which makes Slurm schedule at once
    while time.time() < opens + 1:
        time.sleep(0.2)
    env.slurm._find(urgent).reason = "BeginTime"
    env.slurmflex("daemon", "--once")
    assert (env.slurm.job(urgent).eligible_time or 0) > opens
    assert [(c, j, at) for c, j, at, *_ in store.pulled()] == [("up", urgent, opens)]
    assert env.slurm.schedule() == [urgent]
    assert (env.slurm.job(relaxed).start_time or 0) > time.time() + 3600


def test_a_pull_to_a_window_ahead_is_decided_again_until_it_opens(fake_env: FakeEnv) -> None:
    env = fake_env
    env.reconfigure(beckn={"subscriber_id": "hpc.test"}, daemon={"interval_seconds": 60})
    config = env.load()
    kw_one = power_model_from(config).estimate(Request(nodes=1, cpus=1), None) / 1000
    job_id = env.submit_flexible(hours=9.5, minutes=60)
    env.slurmflex("daemon", "--once")
    deferred_to = env.slurm.job(job_id).start_time
    assert deferred_to is not None and deferred_to > time.time() + 3600
    opens = int(time.time()) + 30
    store = BecknStore(config.daemon.state_dir)
    up = absorb_contract("up", opens, 60, 2, 0.0, kw_one)
    store.put_contract(up)
    env.slurmflex("daemon", "--once")
    assert env.slurm.job(job_id).start_time == opens
    assert [j for _, j, *_ in store.pulled()] == [job_id]
    # the buyer cancels before the window opens: the next cycle no longer pulls it, forgets the
    # pull and puts the job back where the plan has it
    store.put_contract(Contract(**{**up.__dict__, "status": "CANCELLED"}))
    env.slurmflex("daemon", "--once")
    assert store.pulled() == []
    assert (env.slurm.job(job_id).start_time or 0) > time.time() + 3600


def test_no_load_is_shaped_while_an_increase_is_asked(fake_env: FakeEnv) -> None:
    env = fake_env
    # The defaults: single-job windows off, load shaping alone moves work.
    env.reconfigure(beckn={"subscriber_id": "hpc.test"}, policy={"defer_to_windows": False})
    forecast_from_now(env.forecast, [300.0, 300.0] + [40.0] * 94)  # dirty now, clean later
    jobs = [env.submit_flexible(hours=20, minutes=60) for _ in range(2)]
    env.slurmflex("daemon", "--once")
    state = env.load().daemon.state_dir

    def last_site() -> dict[str, object]:
        doc = json.loads(sorted((state / "plans").glob("cycle-*.json"))[-1].read_text())
        return doc["sites"]["default"]  # type: ignore[no-any-return]

    assert last_site()["shaping"]["held"] == sorted(jobs)  # type: ignore[index]
    # The utility asks for more power now: nothing is held back while it lasts.
    now = int(time.time())
    BecknStore(state).put_contract(absorb_contract("up", now - now % 60, 60, 30, 0.0, 0.5))
    env.slurmflex("daemon", "--once")
    assert "shaping" not in last_site()
    for job_id in jobs:
        assert (env.slurm.job(job_id).start_time or 0) <= time.time() + 2
        assert env.status()["jobs"][job_id]["status"] != "shaped"


def _two_site_cycle(env: FakeEnv) -> tuple[Cycle, StateStore, BecknStore]:
    """A cycle over two sites (partitions debug and batch), each planned on the same flat forecast."""
    env.reconfigure(
        beckn={"subscriber_id": "hpc.test"},
        sites={
            name: {"partitions": [partition], "carbon": {"provider": "neso", "region_id": 1}}
            for name, partition in (("north", "debug"), ("south", "batch"))
        },
    )
    config = env.load()
    source = FileSource(env.forecast)
    store = StateStore(config.state_db)
    return (
        Cycle(config, slurm_backend(config), {"north": source, "south": source}, store),
        store,
        BecknStore(config.daemon.state_dir),
    )


def test_with_two_sites_a_reduction_bounds_the_work_of_both(fake_env: FakeEnv) -> None:
    env = fake_env
    forecast_from_now(env.forecast, [200.0] * 96)  # flat: without an order, work runs now
    cycle, store, beckn = _two_site_cycle(env)
    try:
        # one flexible job at each site, both run now
        jobs = {
            site: env.submit_flexible(hours=9, minutes=60, partition=p)
            for site, p in (("north", "debug"), ("south", "batch"))
        }
        now = int(time.time())
        # no flexible work may run in the next two half-hours (ceiling 0 once the order is carried out)
        slot = floor_slot(now)
        beckn.put_contract(contract("down", slot, 2, SLOT_SECONDS, (0.0, 0.0), ()))
        assert cycle.run().ok
        # both sites keep their flexible work out of the window, not just the first
        for site, job_id in jobs.items():
            begin = env.slurm.job(job_id).start_time
            assert begin is not None and begin >= slot + 2 * SLOT_SECONDS, (site, begin)
        # the endpoint quotes from the first site's queue, with the second's planned draw (its
        # job, after the window) in the baseline
        flex = read_flex_input(env.load().daemon.state_dir)
        assert flex is not None and flex.other_kw[:2] == (0.0, 0.0) and max(flex.other_kw) > 0
    finally:
        store.close()


def test_with_two_sites_an_increase_pulls_what_the_first_leaves_of_its_floor_at_the_second(fake_env: FakeEnv) -> None:
    env = fake_env
    cycle, store, beckn = _two_site_cycle(env)
    config = env.load()
    kw_one = power_model_from(config).estimate(Request(nodes=1, cpus=1), None) / 1000
    try:
        # one flexible job at each site, deferred to the clean window 4 h ahead
        jobs = {
            site: env.submit_flexible(hours=9, minutes=60, partition=p)
            for site, p in (("north", "debug"), ("south", "batch"))
        }
        assert cycle.run().ok
        assert all((env.slurm.job(j).start_time or 0) > time.time() + 3600 for j in jobs.values())
        # the utility asks for one job's power more now: the first site's job is enough
        now = int(time.time())
        beckn.put_contract(absorb_contract("up", now - now % 60, 60, 5, 0.0, kw_one))
        assert cycle.run().ok
        assert [j for _, j, *_ in beckn.pulled()] == [jobs["north"]]
        assert (env.slurm.job(jobs["south"]).start_time or 0) > time.time() + 3600
        # two jobs' power: what the first site leaves of the floor is pulled at the second
        beckn.put_contract(absorb_contract("up", now - now % 60, 60, 5, 0.0, 2 * kw_one))
        assert cycle.run().ok
        for job_id in jobs.values():
            begin = env.slurm.job(job_id).start_time
            assert begin is None or begin <= time.time() + 2
        assert sorted(j for _, j, *_ in beckn.pulled()) == sorted(jobs.values())
    finally:
        store.close()
