"""The daemon and the simulator decide alike: a queue snapshot the daemon recorded (with the
forecast it planned on) replayed through the simulator's decision function gives the same jobs
deferred, to the same starts. Once on the fake Slurm (fast), once on the real cluster."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slurm_flex.config import load_config
from slurm_flex.grid.series import iso_utc
from slurm_flex.planner.policy import Policy
from slurm_flex.planner.queue import plan_step, series_from_json, snapshot_from_json
from slurm_flex.simulate.engine import release_now
from tests.conftest import Env, slurm_epoch
from tests.fake_cluster import FakeEnv


def _replay(state_dir: Path, config: Path) -> tuple[dict[str, str], set[str], set[str]]:
    """(planned start per job as the daemon wrote it, jobs it deferred, jobs the simulator's
    decision function releases now) from the last cycle's plan file."""
    plan_file = sorted((state_dir / "plans").glob("cycle-*.json"))[-1]
    doc = json.loads(plan_file.read_text())
    policy = Policy.from_mapping(load_config(config, environ={}).policy.model_dump())
    daemon_starts: dict[str, str] = {}
    deferred: set[str] = set()
    released: set[str] = set()
    for site in doc["sites"].values():
        snapshot = snapshot_from_json(site["snapshot"])
        forecast = None if site["forecast"] is None else series_from_json(site["forecast"])
        replayed, _ = plan_step(snapshot, forecast, policy)
        for job in site["jobs"]:
            daemon_starts[job["id"]] = job["start"]
        # Same starts, job by job, through the simulator's own entry point too.
        assert {p.job_id: iso_utc(p.start) for p in replayed.jobs} == {j["id"]: j["start"] for j in site["jobs"]}
        deferred |= {p.job_id for p in replayed.jobs if p.deferred}
        released |= set(release_now(snapshot, forecast, policy))
    return daemon_starts, deferred, released


def test_fake_queue_snapshot_replays_to_the_daemons_decisions(fake_env: FakeEnv) -> None:
    ids = [
        fake_env.submit_flexible(hours=10, minutes=60),
        fake_env.submit_flexible(hours=20, minutes=120),
        fake_env.submit_flexible(hours=3, minutes=150),  # 15 min to move, no cleaner window in reach: runs now
    ]
    fake_env.slurmflex("daemon", "--once")
    config = fake_env.load()
    starts, deferred, released = _replay(config.daemon.state_dir, fake_env.config)
    assert set(starts) == set(ids)
    assert deferred and released and deferred.isdisjoint(released) and deferred | released == set(ids)


@pytest.mark.slurm
def test_real_cluster_snapshot_replays_to_the_daemons_decisions(env: Env) -> None:
    ids = [
        env.submit_flexible(hours=10, minutes=60),
        env.submit_flexible(hours=20, minutes=120),
        env.submit_flexible(hours=3, minutes=150),  # 15 min to move, no cleaner window in reach: runs now
    ]
    env.slurmflex("daemon", "--once")
    state_dir = load_config(env.config, environ={}).daemon.state_dir
    starts, deferred, released = _replay(state_dir, env.config)
    assert set(starts) == set(ids)
    assert deferred and released and deferred | released == set(ids)
    # What Slurm holds now is what the replay decided: deferred jobs begin at their planned start.
    for job_id in deferred:
        assert iso_utc(slurm_epoch(env.cluster.show_job(job_id)["StartTime"])) == starts[job_id]
