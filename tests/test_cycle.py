"""The daemon's logic, cycle by cycle, on the fake Slurm (slurm_flex/slurm/fake.py): modes,
admin controls, the protective rules, expediting queued jobs, per-job failures, a dead
controller and a crash part-way through a batch of updates. The CLI and the daemon are the
production code; only the Slurm backend is the fake, so each test runs in a fraction of a
second. tests/test_slurm_contract.py proves the fake answers as the real cluster does."""

from __future__ import annotations

import time

import pytest

from slurm_flex.daemon.service import make_cycle
from slurm_flex.grid.series import SLOT_SECONDS, floor_slot
from slurm_flex.slurm.backend import format_start_time
from slurm_flex.slurm.fake import NOT_PENDING, FakeCrash
from slurm_flex.tag import parse_tag
from tests.conftest import log_events
from tests.fake_cluster import FakeEnv
from tests.helpers import write_forecast

HOUR = 3600


def start(env: FakeEnv, job_id: str) -> int | None:
    """A pending job's StartTime as Slurm shows it (its begin time)."""
    return env.slurm.job(job_id).start_time


def clean(env: FakeEnv, slot: int = 8) -> int:
    return env.slot0 + slot * SLOT_SECONDS


# -- planning ----------------------------------------------------------------------------------


def test_daemon_defers_into_the_cleanest_window_before_the_deadline(fake_env: FakeEnv) -> None:
    env = fake_env
    job_id = env.submit_flexible(hours=10, minutes=60)
    env.slurmflex("daemon", "--once")
    job = env.slurm.job(job_id)
    assert job.pending and job.eligible_time == clean(env) == job.start_time
    assert job.deadline is not None and clean(env) <= job.deadline - HOUR - 900
    entry = env.status()["jobs"][job_id]
    assert entry["status"] == "deferred" and entry["planned_start"] == format_start_time(clean(env)) + "Z"
    assert "cleaner window" in entry["reason"] and entry["carbon_saved_kg"] > 0
    env.slurmflex("daemon", "--once")  # only changed jobs are updated
    with env.store() as store:
        assert [a.kind for a in store.actions(job_id)] == ["defer"]
        assert store.last_cycles(1)[0].updates == 0
    # One squeue and one sinfo a cycle, one scontrol for the deferral.
    assert env.slurm.command_counts() == {"squeue": 2, "sinfo": 2, "scontrol": 1}


def test_job_without_deadline_is_never_touched(fake_env: FakeEnv) -> None:
    env = fake_env
    job_id = env.submit(time_limit_s=300)
    assert parse_tag(env.slurm.job(job_id).admin_comment).flex == "no"  # type: ignore[union-attr]
    env.slurmflex("daemon", "--once")
    with env.store() as store:
        assert store.jobs() == {} and store.actions() == []
    assert env.slurm.schedule() == [job_id]


def test_daemon_releases_the_grace_when_now_is_cleanest(fake_env: FakeEnv) -> None:
    env = fake_env
    write_forecast(env.forecast, env.slot0 - SLOT_SECONDS, [50.0, 50.0] + [300.0] * 95)
    job_id = env.submit_flexible(hours=10, minutes=10)
    assert env.slurm.job(job_id).state_reason == "BeginTime"
    env.slurmflex("daemon", "--once")
    assert env.slurm.schedule() == [job_id]
    with env.store() as store:
        (action,) = store.actions(job_id)
        assert action.kind == "release" and action.outcome == "applied"


def test_job_array_is_deferred_as_a_whole(fake_env: FakeEnv) -> None:
    env = fake_env
    job_id = env.submit_flexible(hours=10, minutes=30, array="1-4")
    env.slurmflex("daemon", "--once")
    (job,) = env.slurm.read_jobs()
    assert job.update_id == f"{job_id}_[1-4]" and job.array_tasks == 4
    assert job.pending and job.start_time == clean(env)


def test_a_start_time_changed_by_an_admin_is_left_alone(fake_env: FakeEnv) -> None:
    env = fake_env
    job_id = env.submit_flexible(hours=10)
    env.slurmflex("daemon", "--once")
    admin_time = floor_slot(time.time()) + 5 * HOUR + 60
    env.slurm.set_start_times({job_id: admin_time})  # scontrol update StartTime=... by an admin
    env.slurmflex("daemon", "--once")
    assert start(env, job_id) == admin_time
    entry = env.status()["jobs"][job_id]
    assert entry["status"] == "manual" and "changed outside slurm-flex" in entry["reason"]


def test_impossible_and_far_deadlines(fake_env: FakeEnv) -> None:
    env = fake_env
    now = env.slurm.now()
    # 60 min of work from the user's --begin in 3 min, deadline in 65 min: the latest safe start
    # (deadline - time limit - 15 min margin) has already passed.
    tight = env.submit(deadline=now + 65 * 60, time_limit_s=HOUR, begin=now + 180)
    tight_begin = start(env, tight)
    # A command-line --deadline the hook could not see (Slurm 22.05), with the user's own --begin.
    far = env.submit(deadline=1906502400, time_limit_s=HOUR, begin=now + 600, hook_sees_deadline=False)
    env.slurmflex("daemon", "--once")
    doc = env.status()
    assert doc["jobs"][tight]["status"] == "late"
    assert "deadline can no longer be met" in doc["jobs"][tight]["reason"]
    assert start(env, tight) == tight_begin  # not deferred: the user's own begin kept
    assert start(env, far) == clean(env, 30)


def test_malformed_forecast_keeps_the_daemon_running_and_releases(fake_env: FakeEnv) -> None:
    env = fake_env
    env.forecast.write_text("from,carbon_g_per_kwh\n2026-11-21T08:00Z,not-a-number\n")
    job_id = env.submit_flexible(hours=10, minutes=10)
    events = log_events(env.slurmflex("daemon", "--cycles", "2", "--interval", "1"))
    warnings = [e for e in events if e["event"] == "forecast_unavailable"]
    assert len(warnings) == 2 and "is not a number" in warnings[0]["error"]
    assert sum(1 for e in events if e["event"] == "cycle") == 2
    assert env.slurm.schedule() == [job_id]
    assert "forecast unavailable" in env.status()["last_cycle"]["message"]


def test_empty_queue(fake_env: FakeEnv) -> None:
    env = fake_env
    (cycle,) = [e for e in log_events(env.slurmflex("daemon", "--once")) if e["event"] == "cycle"]
    assert cycle["ok"] is True and cycle["jobs"] == 0 and cycle["updates"] == 0
    assert "No flexible jobs pending" in env.slurmflex("status").stdout


# -- modes and admin controls ------------------------------------------------------------------


def test_shadow_mode_changes_nothing(fake_env: FakeEnv) -> None:
    env = fake_env
    job_id = env.submit_flexible(hours=10)
    before = start(env, job_id)
    env.slurmflex("daemon", "--once", "--mode", "shadow")
    assert start(env, job_id) == before
    assert env.status()["jobs"][job_id]["status"] == "deferred"  # what it would do
    with env.store() as store:
        assert store.actions() == []


def test_mode_switch_at_runtime(fake_env: FakeEnv) -> None:
    env = fake_env
    env.slurmflex("mode", "shadow")
    job_id = env.submit_flexible(hours=10)
    before = start(env, job_id)
    env.slurmflex("daemon", "--once")
    assert start(env, job_id) == before
    with env.store() as store:
        assert store.last_cycles(1)[0].mode == "shadow"
    env.slurmflex("mode", "--clear")
    env.slurmflex("daemon", "--once")
    assert start(env, job_id) == clean(env)


def test_advise_mode_annotates_instead_of_deferring(fake_env: FakeEnv) -> None:
    env = fake_env
    graced = env.submit_flexible(hours=10, minutes=10)  # the hook held it back 2 minutes
    now = env.slurm.now()
    own = env.submit(deadline=now + 10 * HOUR, time_limit_s=30 * 60, begin=now + 1800, comment="project-x")
    own_start = start(env, own)
    env.slurmflex("daemon", "--once", "--mode", "advise")
    assert env.slurm.schedule() == [graced]  # released, not deferred
    assert start(env, own) == own_start  # its own --begin, untouched
    assert env.slurm.job(own).comment == f"project-x slurmflex-plan={format_start_time(clean(env))}Z"
    env.slurmflex("daemon", "--once", "--mode", "advise")
    with env.store() as store:
        assert store.last_cycles(1)[0].updates == 0  # unchanged: no second update


def test_advise_mode_records_releases_at_the_cycle_time(fake_env: FakeEnv) -> None:
    env = fake_env
    graced = env.submit_flexible(hours=10, minutes=10)  # held back 2 minutes by the hook
    cycle_now = env.slurm.now() + 60  # the cycle's clock, not the wall clock
    with env.store() as store:
        store.set_setting("mode", "advise", by="test")
        result = make_cycle(env.load(), store).run(now=cycle_now)
        assert result.ok and env.slurm.schedule() == [graced]  # released, as advise mode does
        assert store.jobs()[graced].applied_begin == cycle_now


def test_release_one_job_then_resume(fake_env: FakeEnv) -> None:
    env = fake_env
    job_id = env.submit_flexible(hours=10)
    env.slurmflex("daemon", "--once")
    assert start(env, job_id) == clean(env)
    out = env.slurmflex("release", job_id, "--reason", "urgent after all").stdout
    assert f"released 1 job(s): {job_id}" in out
    assert env.slurm.schedule() == [job_id]
    later = env.submit_flexible(hours=10)
    env.slurmflex("daemon", "--once")
    assert env.status()["jobs"][later]["status"] == "deferred"  # others are still planned
    assert job_id not in [j for j, v in env.status()["jobs"].items() if v["status"] == "deferred"]
    env.slurmflex("resume", job_id)
    with env.store() as store:
        assert store.exemptions().jobs == frozenset()


def test_release_all_is_the_big_red_button(fake_env: FakeEnv) -> None:
    env = fake_env
    jobs = [env.submit_flexible(hours=10, minutes=30) for _ in range(3)]
    env.slurmflex("daemon", "--once")
    assert {start(env, j) for j in jobs} == {clean(env)}
    proc = env.slurmflex("release", "--all", "--reason", "grid emergency drill")
    assert "released 3 job(s)" in proc.stdout
    assert '"event": "release"' in proc.stderr and "grid emergency drill" in proc.stderr  # logged
    assert sorted(env.slurm.schedule()) == sorted(jobs)
    new = env.submit_flexible(hours=10)
    env.slurmflex("daemon", "--once")  # nothing is deferred while --all stands
    assert env.slurm.schedule() == [new]
    env.slurmflex("resume", "--all")
    again = env.submit_flexible(hours=10)
    env.slurmflex("daemon", "--once")
    assert start(env, again) == clean(env)


# -- protective rules and the queue -------------------------------------------------------------


def test_no_deferral_while_jobs_wait_for_resources(fake_env: FakeEnv) -> None:
    env = fake_env
    filler = [env.submit(time_limit_s=600, cpus=2) for _ in range(4)]
    waiting = env.submit(time_limit_s=600, cpus=2)
    assert sorted(env.slurm.schedule()) == sorted(filler)
    assert env.slurm.job(waiting).state_reason == "Resources"
    job_id = env.submit_flexible(hours=10)
    env.slurmflex("daemon", "--once")
    entry = env.status()["jobs"][job_id]
    assert entry["status"] == "runs-now" and "waiting for resources" in entry["reason"]
    assert env.slurm.job(job_id).eligible_time <= time.time() + 5  # the hook's grace released


def test_a_deferred_job_goes_as_soon_as_the_queue_puts_its_deadline_at_risk(fake_env: FakeEnv) -> None:
    env = fake_env
    job_id = env.submit_flexible(hours=10, minutes=60)
    env.slurmflex("daemon", "--once")
    assert env.status()["jobs"][job_id]["status"] == "deferred"
    # Work that holds every node for up to 10 h (by its time limit) arrives while it waits:
    # waiting for the clean window now could cost the deadline (latest safe start ~8.75 h).
    filler = [env.submit(time_limit_s=600 * 60, cpus=2) for _ in range(4)]
    assert sorted(env.slurm.schedule()) == sorted(filler)
    env.slurmflex("daemon", "--once")
    entry = env.status()["jobs"][job_id]
    assert entry["status"] == "runs-now" and "could no longer start it" in entry["reason"], entry
    assert env.slurm.job(job_id).eligible_time <= time.time() + 5  # queued now


def test_queued_jobs_the_queue_would_make_late_move_up_and_back_when_opted_out(fake_env: FakeEnv) -> None:
    env = fake_env
    # Every node is busy for up to 2 h (by time limits), then two whole-machine jobs of 5 h
    # queue ahead. A 1 h job due in 6 h (latest safe start 4.75 h) would start at 12 h in its
    # place and at 2 h first; one due in 2.5 h (latest 1.25 h) is not saved even first by time
    # limits, but work often ends early: it queues right behind, still before the long jobs.
    filler = [env.submit(time_limit_s=120 * 60, cpus=2) for _ in range(4)]
    assert sorted(env.slurm.schedule()) == sorted(filler)
    ahead = [env.submit(time_limit_s=300 * 60, nodes=4) for _ in range(2)]
    urgent = env.submit_flexible(hours=6)
    tight = env.submit_flexible(hours=2.5)
    env.slurm.schedule()
    own = env.slurm.job(urgent).priority
    env.slurmflex("daemon", "--once")

    def priorities() -> dict[str, int]:
        return {j: env.slurm.job(j).priority for j in [*ahead, urgent, tight]}

    p = priorities()
    assert p[urgent] > p[tight] > max(p[a] for a in ahead), p
    assert p[ahead[0]] > p[ahead[1]]  # the rest keep Slurm's order
    doc = env.status()["jobs"]
    assert "moved up the queue" in doc[urgent]["reason"] and "moved up the queue" in doc[tight]["reason"]
    with env.store() as store:
        assert (urgent, "expedite", "applied") in [(a.job_id, a.kind, a.outcome) for a in store.actions()]
    env.slurmflex("daemon", "--once")  # in order already: nothing to change
    assert priorities() == p
    # `scontrol release` (or hold then release) resets an admin priority: to 1 under Slurm 24.11's
    # default multifactor with zero weights (seen on the 24.11 cluster, tests/fixtures/slurm/
    # PROVENANCE.md). The next cycle moves the job up again, and still knows its own priority.
    env.slurm.set_priorities({urgent: 1})
    env.slurmflex("daemon", "--once")
    again = priorities()
    assert again[urgent] > again[tight] > max(again[a] for a in ahead), again
    # The owner opts out (scontrol update Comment=flex=no; the hook's job_modify marks the tag):
    # no deadline to keep, so the job gets its own priority back.
    env.opt_out(urgent)
    env.slurmflex("daemon", "--once")
    assert priorities()[urgent] == own
    with env.store() as store:
        assert (urgent, "restore", "applied") in [(a.job_id, a.kind, a.outcome) for a in store.actions()]


def test_big_jobs_are_not_deferred(fake_env: FakeEnv) -> None:
    env = fake_env
    # The window rules alone: load shaping (tests/test_shaping.py) would hold the big job back
    # until the next cycle on this forecast, which is not a window of its own.
    env.reconfigure(policy={"shape_load": False})
    big = env.submit_flexible(hours=10, nodes=3, cpus=3)  # 3 of 4 nodes
    small = env.submit_flexible(hours=10)
    env.slurmflex("daemon", "--once")
    doc = env.status()["jobs"]
    assert doc[big]["status"] == "runs-now" and "more than 50% of the nodes" in doc[big]["reason"]
    assert doc[small]["status"] == "deferred"


# -- failures ------------------------------------------------------------------------------------


def test_per_job_failures_are_recorded_and_retried_while_the_rest_of_the_batch_applies(fake_env: FakeEnv) -> None:
    env = fake_env
    a, b, c = (env.submit_flexible(hours=10) for _ in range(3))
    grace = start(env, b)
    env.slurm.fail_updates({b: NOT_PENDING})
    (cycle,) = [e for e in log_events(env.slurmflex("daemon", "--once")) if e["event"] == "cycle"]
    assert cycle["ok"] is True and cycle["updates"] == 2 and cycle["errors"] == 1
    assert start(env, a) == start(env, c) == clean(env) and start(env, b) == grace
    with env.store() as store:
        outcomes = {x.job_id: x.outcome for x in store.actions()}
        assert outcomes == {a: "applied", b: f"failed: {NOT_PENDING}", c: "applied"}
        assert store.jobs()[b].expected_begin == grace  # what Slurm really has
    env.slurm.fail_updates({})
    env.slurmflex("daemon", "--once")  # the next cycle tries again
    assert start(env, b) == clean(env)


def test_a_dead_controller_is_counted_and_the_plan_survives_it(fake_env: FakeEnv) -> None:
    env = fake_env
    job_id = env.submit_flexible(hours=10)
    env.slurmflex("daemon", "--once")
    planned = start(env, job_id)
    env.slurm.down = True
    proc = env.slurmflex("daemon", "--cycles", "2", "--interval", "1")
    assert proc.returncode == 2
    failures = [e for e in log_events(proc) if e["event"] == "slurm_unavailable"]
    assert len(failures) == 2 and "Failed while looking for jobs" in failures[0]["error"]
    doc = env.status()  # status still answers from the state store
    assert doc["last_cycle"]["ok"] is False and "Slurm unavailable" in doc["last_cycle"]["message"]
    assert doc["jobs"][job_id]["status"] == "deferred"
    env.slurm.down = False
    assert start(env, job_id) == planned  # deferral is a begin time: it stands without the daemon
    env.slurmflex("daemon", "--once")
    assert env.status()["last_cycle"]["ok"] is True


@pytest.mark.parametrize("crash_after", [0, 1, 3, 5])
def test_a_crash_part_way_through_a_batch_is_settled_by_the_next_cycle(fake_env: FakeEnv, crash_after: int) -> None:
    """The daemon dies after some of a batch's updates (the journal holds them as pending); the
    restarted daemon settles them, nothing is lost, late or moved twice in one cycle."""
    env = fake_env
    deadlines = [6, 10, 20, 10, 6, 20]
    jobs = [env.submit_flexible(hours=h, minutes=30 * (1 + i % 3)) for i, h in enumerate(deadlines)]
    env.slurm.crash_after(crash_after)
    with pytest.raises(FakeCrash):
        env.slurmflex("daemon", "--once")
    with env.store() as store:
        in_flight = [a for a in store.actions() if a.outcome == "pending"]
    assert len(in_flight) >= 1  # recorded before acting, not settled: the process died
    env.slurmflex("daemon", "--once")  # restarted
    now = time.time()
    with env.store() as store:
        actions = store.actions()
        records = store.jobs()
    assert [a for a in actions if a.outcome == "pending"] == []
    assert {a.id for a in in_flight} <= {a.id for a in actions if a.outcome == "unknown"}
    for job_id in jobs:
        job = env.slurm.job(job_id)
        assert job.pending and not job.held and records[job_id].status in ("deferred", "runs-now")
        assert job.deadline is not None and job.time_limit_s is not None and job.eligible_time is not None
        assert job.eligible_time <= max(job.deadline - job.time_limit_s - 900, now + 5), job_id
        if records[job_id].status == "deferred":
            assert job.eligible_time == records[job_id].planned_start  # where the plan wants it
    moved: dict[tuple[int, str], int] = {}
    for a in actions:
        moved[(a.cycle_id, a.job_id)] = moved.get((a.cycle_id, a.job_id), 0) + 1
    assert max(moved.values()) == 1  # no start time moved twice in one cycle
