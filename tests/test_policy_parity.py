"""The daemon and the simulator decide alike: a queue snapshot the daemon recorded (with the
forecast it planned on) replayed through the simulator's decision function gives the same jobs
deferred, to the same starts; and the load-shaping snapshot it recorded replays through the
simulator's shaping step (planner.shaping.hold_from_snapshot) to the same hold, start budget and
reason. Once on the fake Slurm (fast), once on the real cluster."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from slurm_flex.config import load_config
from slurm_flex.grid.series import iso_utc
from slurm_flex.planner.policy import Policy
from slurm_flex.planner.queue import plan_step, series_from_json, snapshot_from_json
from slurm_flex.planner.shaping import hold_from_snapshot, hold_to_json, shaping_from_json
from slurm_flex.simulate.engine import release_now
from tests.conftest import Env, slurm_epoch
from tests.fake_cluster import FakeEnv
from tests.helpers import forecast_from_now


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


def _replay_shaping(state_dir: Path, config: Path) -> dict[str, dict[str, Any]]:
    """Each site's load-shaping step of the last cycle replayed from its recorded snapshot:
    asserts the simulator's step gives the hold the daemon recorded (nodes, start budget,
    reason, the plan per slot); returns the recorded step per site."""
    plan_file = sorted((state_dir / "plans").glob("cycle-*.json"))[-1]
    doc = json.loads(plan_file.read_text())
    policy = Policy.from_mapping(load_config(config, environ={}).policy.model_dump())
    steps: dict[str, dict[str, Any]] = {}
    for name, site in doc["sites"].items():
        if "shaping" not in site:
            continue
        recorded = site["shaping"]
        replayed = hold_to_json(hold_from_snapshot(shaping_from_json(recorded["snapshot"]), policy))
        assert replayed["reason"] == recorded["hold"]["reason"]
        assert replayed["nodes"] == pytest.approx(recorded["hold"]["nodes"], abs=1e-9)
        if recorded["hold"]["budget"] is None:
            assert replayed["budget"] is None
        else:
            assert replayed["budget"] == pytest.approx(recorded["hold"]["budget"], abs=1e-9)
        assert replayed["served"] == pytest.approx(recorded["hold"]["served"], abs=1e-9)
        # Only flexible jobs of the queue are held, and only while something is held back.
        queue = recorded["snapshot"]
        flexible = {j for j, dl in zip(queue["job_ids"], queue["queue"]["has_deadline"], strict=True) if dl}
        assert set(recorded["held"]) <= flexible and (recorded["hold"]["nodes"] > 0 or not recorded["held"])
        steps[name] = recorded
    return steps


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
    (step,) = _replay_shaping(config.daemon.state_dir, fake_env.config).values()
    # Jobs deferred to their windows are not in the queue load shaping plans this step.
    assert set(step["snapshot"]["job_ids"]) == released


def test_fake_shaping_snapshot_replays_to_the_daemons_hold(fake_env: FakeEnv) -> None:
    fake_env.reconfigure(policy={"defer_to_windows": False})
    forecast_from_now(fake_env.forecast, [300.0, 300.0] + [40.0] * 94)  # dirty now, clean later
    fake_env.load_history(0.0)
    ids = [fake_env.submit_flexible(hours=h, minutes=60) for h in (10, 20, 8)]  # all beyond shape_exempt_hours
    other = fake_env.submit(time_limit_s=3600)
    fake_env.slurmflex("daemon", "--once")
    (step,) = _replay_shaping(fake_env.load().daemon.state_dir, fake_env.config).values()
    assert step["snapshot"]["job_ids"] == [*ids, other]
    assert step["hold"]["nodes"] > 0 and step["held"] == sorted(ids)


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
    (step,) = _replay_shaping(state_dir, env.config).values()
    assert set(step["snapshot"]["job_ids"]) <= released
    # What Slurm holds now is what the replay decided: deferred jobs begin at their planned start.
    for job_id in deferred:
        assert iso_utc(slurm_epoch(env.cluster.show_job(job_id)["StartTime"])) == starts[job_id]


@pytest.mark.slurm
def test_real_cluster_shaping_snapshot_replays_to_the_daemons_hold(env: Env) -> None:
    env.reconfigure(policy={"defer_to_windows": False})
    forecast_from_now(env.forecast, [300.0, 300.0] + [40.0] * 94)  # dirty now, clean later
    env.load_history(0.0)  # a quiet day: no work to come that needs the clean hours
    ids = [env.submit_flexible(hours=h, minutes=60) for h in (10, 20)]
    env.slurmflex("daemon", "--once")
    state_dir = load_config(env.config, environ={}).daemon.state_dir
    (step,) = _replay_shaping(state_dir, env.config).values()
    assert step["snapshot"]["job_ids"] == ids and step["hold"]["nodes"] > 0 and step["held"] == sorted(ids)
    # What Slurm holds now is what the replay decided: the held jobs begin just after the next cycle.
    for job_id in ids:
        assert iso_utc(slurm_epoch(env.cluster.show_job(job_id)["StartTime"])) == step["until"]
