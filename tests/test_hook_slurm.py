"""The submit hook inside the real slurmctld: each flag combination, asserted on Slurm's own view
(scontrol show job) and on what sbatch tells the user."""

from __future__ import annotations

import os
import pwd
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from slurm_flex.job_submit.install import mark_changed
from slurm_flex.tag import parse_tag
from tests.conftest import FLEX_SCRIPT, Env, slurm_epoch, wait_state

pytestmark = pytest.mark.slurm

OTHER_USER = "sfxtestuser"


def tag_of(env: Env, job_id: str) -> dict[str, str]:
    token = next(t for t in env.cluster.show_job(job_id)["AdminComment"].split() if t.startswith("slurmflex:v1"))
    return dict(part.split("=", 1) for part in token.split(";")[1:])


def submit(env: Env, *args: str, script: str | None = None) -> tuple[str, str]:
    """(job id, what sbatch told the user)."""
    argv = ["sbatch", "--parsable", *args]
    if script is None:
        argv += ["--wrap", "sleep 1"]
    proc = env.cluster.run(*argv, input=script, cwd=env.cluster.dir)
    return proc.stdout.strip().split(";")[0], proc.stderr


def test_command_line_deadline_reaches_the_hook_through_the_cli_filter(env: Env) -> None:
    now = int(time.time())
    job_id, told = submit(env, "--deadline", "now+6hours", "-t", "30")
    job = env.cluster.show_job(job_id)
    tag = tag_of(env, job_id)
    assert tag["flex"] == "deadline" and int(tag["deadline"]) == slurm_epoch(job["Deadline"])
    assert now + 110 <= slurm_epoch(job["StartTime"]) <= now + 135  # the grace period
    assert "job is flexible until its deadline" in told and "latest start" in told


def test_export_none_keeps_the_environment_empty_and_falls_back_to_the_daemon(env: Env) -> None:
    job_id, _ = submit(env, "--deadline", "now+6hours", "-t", "30", "--export", "NONE", "--begin", "now+1hour")
    tag = tag_of(env, job_id)
    assert tag["flex"] == "no" and tag["why"] == "none"  # the hook could not see the deadline...
    assert parse_tag(env.cluster.show_job(job_id)["AdminComment"]).opted_out is False  # type: ignore[union-attr]
    env.slurmflex("daemon", "--once")  # ...but the daemon reads Slurm's and plans the job
    assert env.status()["jobs"][job_id]["status"] in ("deferred", "runs-now")


def test_user_begin_is_kept_and_recorded(env: Env) -> None:
    job_id, _ = submit(env, "--begin", "now+1hour", "--deadline", "now+10hours", "-t", "60")
    job = env.cluster.show_job(job_id)
    tag = tag_of(env, job_id)
    assert int(tag["begin"]) == slurm_epoch(job["EligibleTime"]) and tag["grace"] == "0"


def test_flex_no_opts_out_and_the_daemon_leaves_the_job_alone(env: Env) -> None:
    job_id, told = submit(
        env, "--comment", "urgent flex=no", "--begin", "now+30minutes", "--deadline", "now+10hours", "-t", "30"
    )
    before = env.cluster.show_job(job_id)["StartTime"]
    assert tag_of(env, job_id)["why"] == "optout" and "flex=no: this job will not be moved" in told
    env.slurmflex("daemon", "--once")
    assert env.cluster.show_job(job_id)["StartTime"] == before
    assert job_id not in env.status()["jobs"]


def test_flex_duration_opts_in_without_a_deadline_and_is_planned_within_it(env: Env) -> None:
    job_id, told = submit(env, "--comment", "flex=6h", "-t", "60")
    tag = tag_of(env, job_id)
    assert tag["flex"] == "keyword" and tag["slack"] == "21600" and "may wait up to 6h" in told
    submitted = slurm_epoch(env.cluster.show_job(job_id)["SubmitTime"])
    env.slurmflex("daemon", "--once")
    start = slurm_epoch(env.cluster.show_job(job_id)["StartTime"])
    assert start == env.slot0 + 8 * 1800  # the clean window 4 h ahead, inside the 6 h allowed
    assert start <= submitted + 21600


def test_garbage_keyword_is_accepted_as_inflexible_with_a_clear_message(env: Env) -> None:
    job_id, told = submit(env, "--comment", "flex=whenever", "-t", "5")
    assert tag_of(env, job_id)["why"] == "invalid"
    assert "cannot read flex=whenever" in told and "will not be moved" in told
    wait_state(env.cluster, job_id, {"RUNNING", "COMPLETING", "COMPLETED"})


def test_a_site_may_reject_invalid_requests(env: Env) -> None:
    env.reconfigure(flex={"invalid_request": "reject"})
    proc = env.cluster.run("sbatch", "--deadline", "now+30minutes", "-t", "60", "--wrap", "sleep 1", check=False)
    assert proc.returncode != 0
    assert (
        "slurm-flex: the deadline" in proc.stderr
        and "earlier than the earliest start plus the time limit" in proc.stderr
    )
    assert env.cluster.run("squeue", "-h").stdout.strip() == ""
    ok, _ = submit(env, "--deadline", "now+3hours", "-t", "60")  # a valid request still goes through
    assert tag_of(env, ok)["flex"] == "deadline"


def test_invalid_deadline_accepted_by_default(env: Env) -> None:
    if env.cluster.slurm == "24.11":
        # Slurm 24.11 itself refuses a deadline before the time limit could run out, after the
        # hook has tagged the job and told the user why.
        argv = ("sbatch", "--deadline", "now+30minutes", "-t", "60", "--wrap", "sleep 1")
        proc = env.cluster.run(*argv, check=False)
        assert proc.returncode != 0 and "Requested time limit is invalid" in proc.stderr
        assert "Slurm cancels a job that cannot finish" in proc.stderr
        return
    job_id, told = submit(env, "--deadline", "now+30minutes", "-t", "60")
    assert tag_of(env, job_id)["why"] == "invalid" and "Slurm cancels a job that cannot finish" in told


def test_partition_flexible_by_default_with_opt_out(env: Env) -> None:
    env.reconfigure(flex={"partition": {"batch": {"default_slack_hours": 4.0}}})
    job_id, told = submit(env, "-p", "batch", "-t", "30")
    tag = tag_of(env, job_id)
    assert tag["flex"] == "policy" and tag["slack"] == "14400" and "flex=no to opt out" in told
    out, _ = submit(env, "-p", "batch", "-t", "30", "--comment", "flex=no")
    assert tag_of(env, out)["why"] == "optout"
    debug, told_debug = submit(env, "-p", "debug", "-t", "30")
    assert tag_of(env, debug)["flex"] == "no" and told_debug == ""


def test_max_slack_caps_a_far_deadline(env: Env) -> None:
    env.reconfigure(flex={"max_slack_hours": 2.0})
    job_id, told = submit(env, "--deadline", "now+2days", "-t", "30")
    assert tag_of(env, job_id)["slack"] == "7200" and "at most 2h" in told
    env.slurmflex("daemon", "--once")
    planned = env.status()["jobs"][job_id]
    submitted = slurm_epoch(env.cluster.show_job(job_id)["SubmitTime"])
    assert slurm_epoch(planned["latest_safe_start"].rstrip("Z")) == submitted + 7200


def test_excluded_partition_is_untouched(env: Env) -> None:
    env.reconfigure(flex={"exclude_partitions": ["batch"]})
    job_id, told = submit(env, "-p", "batch", "--deadline", "now+6hours", "-t", "30")
    assert "AdminComment" not in env.cluster.show_job(job_id) and told == ""  # scontrol omits it when empty


@pytest.fixture(scope="module")
def other_user() -> Iterator[str]:
    try:
        pwd.getpwnam(OTHER_USER)
    except KeyError:
        if os.geteuid() != 0:
            pytest.skip("needs root to create a test user")
        subprocess.run(["useradd", "--no-create-home", "--shell", "/bin/sh", OTHER_USER], check=True)
    yield OTHER_USER


def test_exempt_users(env: Env, other_user: str, tmp_path: Path) -> None:
    env.reconfigure(flex={"exempt_users": [other_user]})
    if env.cluster.spec.root is not None:  # the user must exist where sbatch and slurmctld run
        add = f"useradd --no-create-home --shell /bin/sh {other_user}"
        env.cluster.run("sh", "-c", f"getent passwd {other_user} || {add}")
    work = env.cluster.dir / "work-exempt"  # where the cluster's clients see it too
    work.mkdir(exist_ok=True)
    work.chmod(0o1777)
    proc = subprocess.run(
        env.cluster.argv(
            "runuser",
            "-u",
            other_user,
            "--",
            "sbatch",
            "--parsable",
            "--deadline",
            "now+6hours",
            "-t",
            "30",
            "--chdir",
            str(work),
            "--wrap",
            "sleep 1",
        ),
        env=env.cluster.env(),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    job_id = proc.stdout.strip()
    assert tag_of(env, job_id)["why"] == "exempt" and env.cluster.show_job(job_id)["UserId"].startswith(other_user)
    mine, _ = submit(env, "--deadline", "now+6hours", "-t", "30")
    assert tag_of(env, mine)["flex"] == "deadline"
    env.cluster.run("scancel", job_id, check=False)


def test_array_heterogeneous_and_interactive_jobs(env: Env) -> None:
    array, _ = submit(
        env, "--array", "1-5%2", "-t", "30", script=FLEX_SCRIPT.format(deadline_minutes=600, minutes=30, sleep=1)
    )
    assert tag_of(env, array)["flex"] == "deadline"
    tasks = env.cluster.run("scontrol", "-o", "show", "job", array).stdout.splitlines()
    assert len(tasks) >= 1 and all("flex=deadline" in t for t in tasks)  # pending tasks share one record
    assert "ArrayTaskId=1-5%2" in tasks[0]
    het_script = "#!/bin/bash\n#SBATCH -n1\n#SBATCH hetjob\n#SBATCH -n1\nsleep 1\n"
    het, told = submit(env, "--deadline", "now+6hours", "-t", "10", script=het_script)
    components = env.cluster.run("scontrol", "-o", "show", "job", het).stdout.splitlines()
    assert len(components) == 2 and all("why=hetjob" in c for c in components)
    assert told.count("heterogeneous") == 1
    # A name of this run only: finished jobs of an earlier run stay listed for MinJobAge (300 s).
    name = f"interactive-{time.time_ns()}"
    proc = env.cluster.run("srun", "--deadline", "now+6hours", "-t", "5", "-J", name, "true")
    assert proc.returncode == 0 and "flexible" not in proc.stderr  # started at once, nothing to say
    (record,) = [
        j for j in env.cluster.run("scontrol", "-o", "show", "job").stdout.splitlines() if f"JobName={name} " in j
    ]
    assert "flex=no;why=interactive" in record


def test_updating_the_comment_opts_out_and_the_daemon_hands_the_job_back(env: Env) -> None:
    job_id = env.submit_flexible(hours=10, minutes=30)
    env.slurmflex("daemon", "--once")
    assert slurm_epoch(env.cluster.show_job(job_id)["StartTime"]) == env.slot0 + 8 * 1800
    env.cluster.run("scontrol", "update", f"JobId={job_id}", "Comment=flex=no")
    assert tag_of(env, job_id)["why"] == "optout"
    env.slurmflex("daemon", "--once")
    assert slurm_epoch(env.cluster.show_job(job_id)["EligibleTime"]) <= time.time() + 5
    assert env.status()["jobs"][job_id]["status"] in ("unmanaged", "started", "released")


def test_only_admin_comment_and_start_change(env: Env, tmp_path: Path) -> None:
    """Everything the user asked for reaches Slurm unchanged: compare with a job submitted
    through a pass-through job_submit.lua."""
    args = (
        "-J",
        "same",
        "-t",
        "45",
        "-N",
        "2",
        "-n",
        "3",
        "--mem=100",
        "--comment",
        "mine",
        "--deadline",
        "now+8hours",
        "--begin",
        "now+20minutes",
    )
    ours, _ = submit(env, *args)
    script = env.cluster.etc / "job_submit.lua"
    previous = script.stat().st_mtime
    script.write_text(
        "function slurm_job_submit(j, p, u) return slurm.SUCCESS end\n"
        "function slurm_job_modify(j, r, p, u) return slurm.SUCCESS end\nreturn slurm.SUCCESS\n"
    )
    mark_changed(script, previous)
    plain, _ = submit(env, *args)
    a, b = env.cluster.show_job(ours), env.cluster.show_job(plain)
    assert a["AdminComment"].startswith("slurmflex:v1") and "AdminComment" not in b
    varying = {
        "JobId",
        "AdminComment",
        "SubmitTime",
        "EligibleTime",
        "StartTime",
        "EndTime",
        "Deadline",
        "LastSchedEval",
        "Priority",
        "StdOut",
        "StdErr",
        "AccrueTime",
        "Reason",
    }
    differ = {k for k in a.keys() | b.keys() if k not in varying and a.get(k) != b.get(k)}
    assert differ == set(), {k: (a.get(k), b.get(k)) for k in differ}
    # Times agree to the second or so (the two submissions are a moment apart).
    for key in ("Deadline", "EligibleTime"):
        assert abs(slurm_epoch(a[key]) - slurm_epoch(b[key])) <= 5
