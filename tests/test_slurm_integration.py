"""End to end on the real local Slurm cluster: the hook tags and postpones, the daemon moves
StartTime into the cleanest window before the deadline, and Slurm's own view confirms it."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from slurm_flex.grid.series import SLOT_SECONDS, floor_slot
from slurm_flex.slurm.backend import CommandBackend, format_start_time
from slurm_flex.slurm.runner import SlurmRunner
from tests.conftest import FLEX_SCRIPT, Cluster, Env, log_events, slurm_epoch, wait_state
from tests.helpers import write_forecast

pytestmark = pytest.mark.slurm


def test_hook_tags_and_postpones_a_flexible_job(env: Env) -> None:
    submitted = int(time.time())
    proc = env.cluster.run(
        "sbatch", "--parsable", input=FLEX_SCRIPT.format(deadline_minutes=600, minutes=60, sleep=1), cwd=env.cluster.dir
    )
    job_id = proc.stdout.strip()
    assert "it may start later to use cleaner power" in proc.stderr
    job = env.cluster.show_job(job_id)
    assert job["JobState"] == "PENDING" and job["Reason"] == "BeginTime"
    assert submitted + 110 <= slurm_epoch(job["StartTime"]) <= submitted + 135
    assert job["AdminComment"].startswith("slurmflex:v1;power_w=285;basis=req;begin=0;grace=")
    tag_deadline = int(job["AdminComment"].split("deadline=")[1].split(";")[0])
    assert tag_deadline == slurm_epoch(job["Deadline"])  # the hook read the same deadline Slurm did
    assert job["TimeLimit"] == "01:00:00"  # everything else untouched


def test_job_without_deadline_is_tagged_but_never_touched(env: Env) -> None:
    job_id = env.cluster.sbatch("-t", "5", "--wrap", "sleep 2")
    job = env.cluster.show_job(job_id)
    assert "flex=no" in job["AdminComment"] and "grace=0" in job["AdminComment"]
    env.slurmflex("daemon", "--once")
    with env.store() as store:
        assert store.jobs() == {} and store.actions() == []
    wait_state(env.cluster, job_id, {"RUNNING", "COMPLETED"})


def test_daemon_defers_into_the_cleanest_window_before_the_deadline(env: Env) -> None:
    job_id = env.submit_flexible(hours=10, minutes=60)
    env.slurmflex("daemon", "--once")
    expected = env.slot0 + 8 * SLOT_SECONDS
    job = env.cluster.show_job(job_id)
    # (Reason reads "None" until the scheduler's next pass re-evaluates the job.)
    assert job["JobState"] == "PENDING" and job["EligibleTime"] == format_start_time(expected)
    assert job["StartTime"] == format_start_time(expected)
    latest_safe = slurm_epoch(job["Deadline"]) - 3600 - 900
    assert expected <= latest_safe
    doc = env.status()
    entry = doc["jobs"][job_id]  # type: ignore[index]
    assert entry["status"] == "deferred" and entry["planned_start"] == format_start_time(expected) + "Z"
    assert "cleaner window" in entry["reason"] and entry["carbon_saved_kg"] > 0
    assert doc["totals"]["deferred"] == 1  # type: ignore[index]
    # A second cycle changes nothing: only changed jobs are updated.
    env.slurmflex("daemon", "--once")
    with env.store() as store:
        assert [a.kind for a in store.actions(job_id)] == ["defer"]
        assert store.last_cycles(1)[0].updates == 0
    human = env.slurmflex("status").stdout
    assert job_id in human and "deferred" in human and "Saved vs running" in human


def test_daemon_releases_the_grace_when_now_is_cleanest(env: Env, tmp_path: Path) -> None:
    write_forecast(env.forecast, env.slot0 - SLOT_SECONDS, [50.0, 50.0] + [300.0] * 95)
    job_id = env.submit_flexible(hours=10, minutes=10, sleep=1)
    assert env.cluster.show_job(job_id)["Reason"] == "BeginTime"
    env.slurmflex("daemon", "--once")
    wait_state(env.cluster, job_id, {"RUNNING", "COMPLETING", "COMPLETED"})
    with env.store() as store:
        (action,) = store.actions(job_id)
        assert action.kind == "release" and action.outcome == "applied"


def test_job_array_is_deferred_as_a_whole(env: Env) -> None:
    job_id = env.submit_flexible(hours=10, minutes=30, extra=("--array", "1-4"))
    env.slurmflex("daemon", "--once")
    expected = format_start_time(env.slot0 + 8 * SLOT_SECONDS)
    out = env.cluster.run("squeue", "-r", "-h", "-j", job_id, "-o", "%i %T %S").stdout.split("\n")[:-1]
    assert len(out) == 4
    assert all(line.endswith(f"PENDING {expected}") for line in out), out


def test_a_start_time_changed_by_an_admin_is_left_alone(env: Env) -> None:
    job_id = env.submit_flexible(hours=10)
    env.slurmflex("daemon", "--once")
    admin_time = floor_slot(time.time()) + 5 * 3600 + 60
    env.cluster.run("scontrol", "update", f"JobId={job_id}", f"StartTime={format_start_time(admin_time)}")
    env.slurmflex("daemon", "--once")
    assert env.cluster.show_job(job_id)["StartTime"] == format_start_time(admin_time)
    entry = env.status()["jobs"][job_id]  # type: ignore[index]
    assert entry["status"] == "manual" and "changed outside slurm-flex" in entry["reason"]


def test_impossible_and_far_deadlines(env: Env) -> None:
    # 60 min of work from the user's --begin in 3 min, deadline in 65 min: Slurm accepts it, but
    # the latest safe start (deadline - time limit - 15 min margin) has already passed.
    tight = env.submit_flexible(hours=65 / 60, minutes=60, sleep=1, extra=("--begin", "now+3minutes"))
    tight_begin = env.cluster.show_job(tight)["StartTime"]
    # Command-line --deadline (invisible to the hook on 22.05) with the user's own --begin.
    far = env.cluster.sbatch(
        "--begin", "now+10minutes", "--deadline", "2029-06-01T00:00:00", "-t", "60", "--wrap", "sleep 1"
    )
    env.slurmflex("daemon", "--once")
    doc = env.status()
    assert doc["jobs"][tight]["status"] == "late"  # type: ignore[index]
    assert "deadline can no longer be met" in doc["jobs"][tight]["reason"]  # type: ignore[index]
    # Not deferred: it keeps the user's own begin time, the earliest it may start.
    assert env.cluster.show_job(tight)["StartTime"] == tight_begin
    far_start = env.cluster.show_job(far)["StartTime"]
    assert far_start == format_start_time(env.slot0 + 30 * SLOT_SECONDS)


def test_malformed_forecast_keeps_the_daemon_running_and_releases(env: Env) -> None:
    env.forecast.write_text("from,carbon_g_per_kwh\n2026-11-21T08:00Z,not-a-number\n")
    job_id = env.submit_flexible(hours=10, minutes=10, sleep=1)
    events = log_events(env.slurmflex("daemon", "--cycles", "2", "--interval", "1"))
    warnings = [e for e in events if e["event"] == "forecast_unavailable"]
    assert len(warnings) == 2 and "is not a number" in warnings[0]["error"]
    assert sum(1 for e in events if e["event"] == "cycle") == 2
    wait_state(env.cluster, job_id, {"RUNNING", "COMPLETING", "COMPLETED"})
    doc = env.status()
    assert "forecast unavailable" in doc["last_cycle"]["message"]  # type: ignore[index]


def test_empty_queue(env: Env) -> None:
    (cycle,) = [e for e in log_events(env.slurmflex("daemon", "--once")) if e["event"] == "cycle"]
    assert cycle["ok"] is True and cycle["jobs"] == 0 and cycle["updates"] == 0
    assert "No flexible jobs pending" in env.slurmflex("status").stdout


def test_shadow_mode_changes_nothing(env: Env) -> None:
    job_id = env.submit_flexible(hours=10)
    before = env.cluster.show_job(job_id)["StartTime"]
    env.slurmflex("daemon", "--once", "--mode", "shadow")
    assert env.cluster.show_job(job_id)["StartTime"] == before
    entry = env.status()["jobs"][job_id]  # type: ignore[index]
    assert entry["status"] == "deferred"  # what it would do
    with env.store() as store:
        assert store.actions() == []


def test_batched_updates_report_per_job_failures(env: Env) -> None:
    running = env.cluster.sbatch("-t", "5", "--wrap", "sleep 30")
    wait_state(env.cluster, running, {"RUNNING"})
    pending = [env.cluster.sbatch("-t", "5", "--begin", "now+1hour", "--wrap", "sleep 1") for _ in range(3)]
    backend = CommandBackend(SlurmRunner(slurm_conf=env.cluster.conf))
    target = floor_slot(time.time()) + 4 * SLOT_SECONDS
    report = backend.set_start_times({**{p: target for p in pending}, running: target, "999999": target})
    assert report.commands == 1
    assert sorted(report.applied) == sorted(pending)
    assert report.failed == {running: "Job is no longer pending execution", "999999": "Invalid job id specified"}
    assert all(env.cluster.show_job(p)["StartTime"] == format_start_time(target) for p in pending)
    assert backend.command_counts() == {"scontrol": 1}


def test_slurmctld_down_then_back(env: Env) -> None:
    job_id = env.submit_flexible(hours=10)
    env.slurmflex("daemon", "--once")
    planned = env.cluster.show_job(job_id)["StartTime"]
    pid = int((env.cluster.dir / "run" / "slurmctld.pid").read_text())
    os.kill(pid, signal.SIGTERM)
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    try:
        proc = env.slurmflex("daemon", "--cycles", "2", "--interval", "1", check=False)
        assert proc.returncode == 2
        failures = [e for e in log_events(proc) if e["event"] == "slurm_unavailable"]
        assert len(failures) == 2 and "Failed while looking for jobs" in failures[0]["error"]
        doc = env.status()  # status still answers from the state store
        assert doc["last_cycle"]["ok"] is False  # type: ignore[index]
        assert "Slurm unavailable" in doc["last_cycle"]["message"]  # type: ignore[index]
        assert doc["jobs"][job_id]["status"] == "deferred"  # type: ignore[index]
    finally:
        env.cluster.devcluster("up")
    # The controller recovered the job with the start time we set; the daemon carries on.
    assert env.cluster.show_job(job_id)["StartTime"] == planned
    env.slurmflex("daemon", "--once")
    assert env.status()["last_cycle"]["ok"] is True  # type: ignore[index]


def test_runner_raises_typed_errors(tmp_path: Path, cluster: Cluster) -> None:
    from slurm_flex.errors import (
        SlurmCommandError,
        SlurmError,
        SlurmQueryError,
        SlurmTimeoutError,
        SlurmUnavailableError,
    )

    dead = tmp_path / "slurm.conf"
    text = cluster.conf.read_text().replace(
        f"SlurmctldPort={cluster.conf.read_text().split('SlurmctldPort=')[1].split()[0]}", "SlurmctldPort=1"
    )
    dead.write_text(text + "MessageTimeout=2\n")
    with pytest.raises(SlurmUnavailableError, match="Unable to contact slurm controller"):
        SlurmRunner(slurm_conf=dead, timeout_seconds=60).run(["squeue"])
    # squeue --json on 22.05 exits 0 and reports the failure inside the JSON instead.
    with pytest.raises(SlurmQueryError, match="Failed while looking for jobs"):
        CommandBackend(SlurmRunner(slurm_conf=dead, timeout_seconds=60)).read_jobs()
    live = SlurmRunner(slurm_conf=cluster.conf)
    with pytest.raises(SlurmCommandError) as info:
        live.run(["scontrol", "update", "JobId=notanumber", "StartTime=now"])
    assert not isinstance(info.value, SlurmUnavailableError) and info.value.returncode != 0
    with pytest.raises(SlurmError, match="cannot run"):
        SlurmRunner(bin_dir=tmp_path / "nowhere").run(["squeue"])
    slow = tmp_path / "bin"
    slow.mkdir()
    (slow / "sinfo").write_text("#!/bin/sh\nsleep 5\n")
    (slow / "sinfo").chmod(0o755)
    with pytest.raises(SlurmTimeoutError):
        SlurmRunner(bin_dir=slow, timeout_seconds=0.5).run(["sinfo"])
    assert live.calls["scontrol"] == 1
