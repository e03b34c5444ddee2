"""The daemon in production, on the real local cluster: admin controls, modes, the protective
rules, and surviving kill -9 at any moment."""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from slurm_flex.slurm.backend import format_start_time
from slurm_flex.slurm.parsers import parse_squeue_json
from tests.conftest import Env, slurm_epoch, wait_state

pytestmark = pytest.mark.slurm


def test_release_one_job_then_resume(env: Env) -> None:
    job_id = env.submit_flexible(hours=10)
    env.slurmflex("daemon", "--once")
    assert env.cluster.show_job(job_id)["StartTime"] == format_start_time(env.slot0 + 8 * 1800)
    out = env.slurmflex("release", job_id, "--reason", "urgent after all").stdout
    assert f"released 1 job(s): {job_id}" in out
    wait_state(env.cluster, job_id, {"RUNNING", "COMPLETING", "COMPLETED"})
    later = env.submit_flexible(hours=10)
    env.slurmflex("daemon", "--once")
    assert env.status()["jobs"][later]["status"] == "deferred"  # others are still planned
    assert job_id not in [j for j, v in env.status()["jobs"].items() if v["status"] == "deferred"]
    env.slurmflex("resume", job_id)
    with env.store() as store:
        assert store.exemptions().jobs == frozenset()


def test_release_all_is_the_big_red_button(env: Env) -> None:
    jobs = [env.submit_flexible(hours=10, minutes=30) for _ in range(3)]
    env.slurmflex("daemon", "--once")
    starts = {j: env.cluster.show_job(j)["StartTime"] for j in jobs}
    assert set(starts.values()) == {format_start_time(env.slot0 + 8 * 1800)}, starts
    proc = env.slurmflex("release", "--all", "--reason", "grid emergency drill")
    assert "released 3 job(s)" in proc.stdout
    assert '"event": "release"' in proc.stderr and "grid emergency drill" in proc.stderr  # logged
    for j in jobs:
        wait_state(env.cluster, j, {"RUNNING", "COMPLETING", "COMPLETED"})
    new = env.submit_flexible(hours=10)
    env.slurmflex("daemon", "--once")  # nothing is deferred while --all stands
    wait_state(env.cluster, new, {"RUNNING", "COMPLETING", "COMPLETED"})
    env.slurmflex("resume", "--all")
    again = env.submit_flexible(hours=10)
    env.slurmflex("daemon", "--once")
    assert env.cluster.show_job(again)["StartTime"] == format_start_time(env.slot0 + 8 * 1800)


def test_mode_switch_at_runtime(env: Env) -> None:
    env.slurmflex("mode", "shadow")
    job_id = env.submit_flexible(hours=10)
    before = env.cluster.show_job(job_id)["StartTime"]
    env.slurmflex("daemon", "--once")
    assert env.cluster.show_job(job_id)["StartTime"] == before
    assert env.status()["mode"] in ("enforce", "shadow")
    with env.store() as store:
        assert store.last_cycles(1)[0].mode == "shadow"
    env.slurmflex("mode", "--clear")
    env.slurmflex("daemon", "--once")
    assert env.cluster.show_job(job_id)["StartTime"] == format_start_time(env.slot0 + 8 * 1800)


def test_advise_mode_annotates_instead_of_deferring(env: Env) -> None:
    graced = env.submit_flexible(hours=10, minutes=10, sleep=1)  # the hook held it back 2 minutes
    begin = time.time() + 1800
    own = env.cluster.sbatch(
        "--begin",
        format_start_time(int(begin)),
        "--comment",
        "project-x",
        script="#!/bin/bash\n#SBATCH --deadline=now+10hours\n#SBATCH -t 30\nsleep 1\n",
    )
    own_start = env.cluster.show_job(own)["StartTime"]
    env.slurmflex("daemon", "--once", "--mode", "advise")
    wait_state(env.cluster, graced, {"RUNNING", "COMPLETING", "COMPLETED"})  # released, not deferred
    assert env.cluster.show_job(own)["StartTime"] == own_start  # its own --begin, untouched
    planned = format_start_time(env.slot0 + 8 * 1800)
    (job,) = [j for j in parse_squeue_json(env.cluster.run("squeue", "--json").stdout) if j.job_id == own]
    assert job.comment == f"project-x slurmflex-plan={planned}Z"  # the user's text kept
    env.slurmflex("daemon", "--once", "--mode", "advise")
    with env.store() as store:
        assert store.last_cycles(1)[0].updates == 0  # unchanged: no second update


def test_no_deferral_while_jobs_wait_for_resources(env: Env) -> None:
    filler = [env.cluster.sbatch("-t", "10", "-n", "2", "--wrap", "sleep 300") for _ in range(4)]
    waiting = env.cluster.sbatch("-t", "10", "-n", "2", "--wrap", "sleep 1")
    for j in filler:
        wait_state(env.cluster, j, {"RUNNING"})
    deadline = time.monotonic() + 20
    while env.cluster.show_job(waiting)["Reason"] not in ("Resources", "Priority") and time.monotonic() < deadline:
        time.sleep(0.5)
    job_id = env.submit_flexible(hours=10)
    env.slurmflex("daemon", "--once")
    entry = env.status()["jobs"][job_id]
    assert entry["status"] == "runs-now" and "waiting for resources" in entry["reason"]
    assert slurm_epoch(env.cluster.show_job(job_id)["EligibleTime"]) <= time.time() + 5  # the hook's grace released


def test_a_deferred_job_goes_as_soon_as_the_queue_puts_its_deadline_at_risk(env: Env) -> None:
    job_id = env.submit_flexible(hours=10, minutes=60)
    env.slurmflex("daemon", "--once")
    assert env.status()["jobs"][job_id]["status"] == "deferred"
    # Work that holds every node for up to 10 h (by its time limit) arrives while it waits:
    # waiting for the clean window now could cost the deadline (latest safe start ~8.75 h).
    filler = [env.cluster.sbatch("-t", "600", "-n", "2", "--wrap", "sleep 300") for _ in range(4)]
    for j in filler:
        wait_state(env.cluster, j, {"RUNNING"})
    env.slurmflex("daemon", "--once")
    entry = env.status()["jobs"][job_id]
    assert entry["status"] == "runs-now" and "could no longer start it" in entry["reason"], entry
    assert slurm_epoch(env.cluster.show_job(job_id)["EligibleTime"]) <= time.time() + 5  # queued now


def test_queued_jobs_the_queue_would_make_late_move_up_and_back_when_opted_out(env: Env) -> None:
    # Every node is busy for up to 2 h (by time limits), then two whole-machine jobs of 5 h
    # queue ahead. A 1 h job due in 6 h (latest safe start 4.75 h) would start at 12 h in its
    # place and at 2 h first; one due in 2.5 h (latest 1.25 h) is not saved even first by time
    # limits, but work often ends early: it queues right behind, still before the long jobs.
    filler = [env.cluster.sbatch("-t", "120", "-n", "2", "--wrap", "sleep 300") for _ in range(4)]
    for j in filler:
        wait_state(env.cluster, j, {"RUNNING"})
    ahead = [env.cluster.sbatch("-t", "300", "-N", "4", "--wrap", "sleep 1") for _ in range(2)]
    urgent = env.submit_flexible(hours=6)
    tight = env.submit_flexible(hours=2.5)
    own = int(env.cluster.show_job(urgent)["Priority"])
    env.slurmflex("daemon", "--once")

    def priorities() -> dict[str, int]:
        return {j: int(env.cluster.show_job(j)["Priority"]) for j in [*ahead, urgent, tight]}

    p = priorities()
    assert p[urgent] > p[tight] > max(p[a] for a in ahead), p
    assert p[ahead[0]] > p[ahead[1]]  # the rest keep Slurm's order
    doc = env.status()["jobs"]
    assert "moved up the queue" in doc[urgent]["reason"] and "moved up the queue" in doc[tight]["reason"]
    assert (urgent, "expedite", "applied") in [(a.job_id, a.kind, a.outcome) for a in env.store().actions()]
    env.slurmflex("daemon", "--once")  # in order already: nothing to change
    assert priorities() == p
    # The owner opts out: no deadline to keep, so the job gets its own priority back.
    env.cluster.run("scontrol", "update", f"JobId={urgent}", "Comment=flex=no")
    env.slurmflex("daemon", "--once")
    assert priorities()[urgent] == own
    assert (urgent, "restore", "applied") in [(a.job_id, a.kind, a.outcome) for a in env.store().actions()]


def test_big_jobs_are_not_deferred(env: Env) -> None:
    big = env.submit_flexible(hours=10, extra=("-N", "3"))  # 3 of 4 nodes
    small = env.submit_flexible(hours=10)
    env.slurmflex("daemon", "--once")
    doc = env.status()["jobs"]
    assert doc[big]["status"] == "runs-now" and "more than 50% of the nodes" in doc[big]["reason"]
    assert doc[small]["status"] == "deferred"


def test_killed_at_any_moment_nothing_is_lost_or_late(env: Env) -> None:
    """kill -9 the daemon at random moments (during reads, planning, updates) and restart it:
    every job is still there, none is deferred past its latest safe start or held, and the
    state store stays intact."""
    rng = random.Random(4)
    jobs = [env.submit_flexible(hours=rng.choice([6, 10, 20]), minutes=rng.choice([30, 60, 90])) for _ in range(12)]
    argv = [sys.executable, "-m", "slurm_flex.cli", "--config", str(env.config), "daemon", "--interval", "1"]
    for _ in range(12):
        proc = subprocess.Popen(argv, env=env.cluster.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.2, 2.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        # More work arrives between restarts.
        if rng.random() < 0.5:
            jobs.append(env.submit_flexible(hours=rng.choice([6, 10]), minutes=30))
    env.slurmflex("daemon", "--once")  # a clean cycle after the last kill
    snapshot = {j.job_id: j for j in parse_squeue_json(env.cluster.run("squeue", "--json").stdout)}
    now = time.time()
    with env.store() as store:
        records = store.jobs()
    for job_id in jobs:
        job = snapshot.get(job_id)
        if job is None:  # finished and purged by Slurm: it must have started, not been lost
            assert records.get(job_id) is None or records[job_id].status == "started", f"job {job_id} lost"
            continue
        assert not job.held
        if job.pending and job.eligible_time and job.deadline and job.time_limit_s:
            latest_safe = job.deadline - job.time_limit_s - 900
            assert job.eligible_time <= max(latest_safe, now + 5), f"job {job_id} deferred past its latest safe start"
    db = sqlite3.connect(env.tmp / "state" / "state.sqlite3")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    pending_intents = db.execute("SELECT COUNT(*) FROM actions WHERE outcome='pending'").fetchone()[0]
    assert pending_intents == 0  # settled by the clean cycle
    doc = env.status()
    assert all(v["status"] in ("deferred", "runs-now", "started") for k, v in doc["jobs"].items() if k in jobs)
    # No start time was moved twice (to conflicting times) in one cycle; a priority change may
    # come with a release.
    rows = db.execute(
        "SELECT cycle_id, job_id, COUNT(*) FROM actions WHERE kind NOT IN ('expedite', 'restore') "
        "GROUP BY cycle_id, job_id HAVING COUNT(*) > 1"
    )
    assert rows.fetchall() == []


def test_a_stopped_daemon_leaves_jobs_to_start_on_their_own(env: Env) -> None:
    job_id = env.submit_flexible(hours=10)
    env.slurmflex("daemon", "--once")
    job = env.cluster.show_job(job_id)
    # Deferral is a begin time, not a hold: with no daemon, Slurm starts it at that time.
    assert job["JobState"] == "PENDING" and "Held" not in job["Reason"] and job["Priority"] != "0"
    assert slurm_epoch(job["EligibleTime"]) <= slurm_epoch(job["Deadline"]) - 3600 - 900
