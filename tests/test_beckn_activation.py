"""A confirmed contract carried out by the daemon, on the fake Slurm: its window's ceiling keeps
pending flexible work out (deadline kept), opted-in running jobs are suspended for the window
and resumed when it ends or is cancelled, and power is recorded for the delivery report."""

from __future__ import annotations

import time

from slurm_flex.beckn.store import BecknStore, Contract
from slurm_flex.grid.series import SLOT_SECONDS
from tests.fake_cluster import FakeEnv


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
