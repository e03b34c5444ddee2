"""The daemon with an on-site battery ([battery]), on the fake Slurm (slurm_flex/slurm/fake.py)
and a simulated SunSpec battery in its own process (tests.sunspec_battery): under a flexibility
activation's ceiling the battery carries a job through its clean window, its schedule is in the
cycle's plan file and in ``slurmflex status``, and it is commanded for the current slot; a
battery that does not answer or reports a fault is dropped with one log line while the jobs are
planned as without it."""

from __future__ import annotations

import json
import time

import pytest

from slurm_flex.battery.sunspec import SunSpecStorage
from slurm_flex.beckn.store import BecknStore
from slurm_flex.grid.series import SLOT_SECONDS
from tests.conftest import log_events
from tests.fake_cluster import FakeEnv
from tests.sunspec_fixtures import free_port, sunspec_battery
from tests.test_beckn_activation import contract

HOUR = 3600


def battery_config(port: int, **extra: object) -> dict[str, object]:
    return {
        "enabled": True,
        "port": port,
        "capacity_kwh": 2.0,
        "max_charge_kw": 1.0,
        "max_discharge_kw": 1.0,
        "timeout_seconds": 1.0,
        **extra,
    }


def ceiling_over_the_clean_window(env: FakeEnv) -> int:
    """A contract leaving no room for planned work in slots 8-9 (the clean window)."""
    clean = env.slot0 + 8 * SLOT_SECONDS
    BecknStore(env.load().daemon.state_dir).put_contract(contract("c1", clean, 2, SLOT_SECONDS, (0.0, 0.0), ()))
    return clean


def last_plan(env: FakeEnv) -> dict[str, object]:
    plans = sorted((env.load().daemon.state_dir / "plans").glob("cycle-*.json"))
    return json.loads(plans[-1].read_text())  # type: ignore[no-any-return]


def test_battery_carries_a_job_through_a_ceiling(fake_env: FakeEnv) -> None:
    env = fake_env
    with sunspec_battery("--soc", "60", "--capacity-kwh", "2", "--max-kw", "1", "--speedup", "1") as port:
        env.reconfigure(beckn={"subscriber_id": "hpc.test"}, battery=battery_config(port))
        job_id = env.submit_flexible(hours=10, minutes=60)
        clean = ceiling_over_the_clean_window(env)
        proc = env.slurmflex("daemon", "--once")
        assert proc.returncode == 0
        # without a battery the ceiling moves the job out (test_beckn_activation); here it stays
        assert env.slurm.job(job_id).start_time == clean
        site = next(iter(last_plan(env)["sites"].values()))  # type: ignore[attr-defined]
        plan = site["battery"]
        kw = site["instance"]["jobs"][0]["power_kw"]
        net = plan["net_kw"]
        first = (clean - plan["start"]) // SLOT_SECONDS
        # it discharges exactly the job's draw in the capped slots: the meter stays at the ceiling
        assert net[first] == pytest.approx(-kw, abs=1e-4) and net[first + 1] == pytest.approx(-kw, abs=1e-4)
        for grid, ceiling in zip(plan["grid_kw"], plan["ceiling_kw"], strict=True):
            assert ceiling is None or grid <= ceiling + 1e-6
        assert all(0.1 - 1e-6 <= s <= 0.95 + 1e-6 for s in plan["soc"])
        assert max(plan["unmet_kw"]) == 0
        # commanded for the current slot: the device's limits pin it to the plan's setpoint
        with SunSpecStorage("127.0.0.1", port) as storage:
            status = storage.read()
        assert status.control_mode == 3 and status.net_kw == pytest.approx(net[0], abs=2e-3)
        events = [e["event"] for e in log_events(proc)]
        assert "battery_commanded" in events and "battery_dropped" not in events
        shown = env.slurmflex("status").stdout
        line = next(x for x in shown.splitlines() if "battery 127.0.0.1" in x)
        assert "60% (10%-95%)" in line and "(commanded)" in line and "over ceilings" in line
        doc = env.status()
        assert doc["battery"]["ok"] and doc["battery"]["over_ceiling_kwh"] == pytest.approx(kw, abs=1e-3)


def test_shadow_mode_plans_with_the_battery_but_never_commands_it(fake_env: FakeEnv) -> None:
    env = fake_env
    with sunspec_battery("--soc", "60") as port:
        env.reconfigure(battery=battery_config(port), daemon={"mode": "shadow"})
        env.submit_flexible(hours=10, minutes=60)
        env.slurmflex("daemon", "--once")
        with SunSpecStorage("127.0.0.1", port) as storage:
            assert storage.read().control_mode == 0  # never written
        summary = env.status()["battery"]
        assert summary["planned"] and summary["commanded"] is False and "shadow" in summary["why_not_commanded"]


@pytest.mark.parametrize("case", ["silent", "alarm"])
def test_a_failing_battery_is_dropped_and_planning_goes_on(fake_env: FakeEnv, case: str) -> None:
    env = fake_env

    def run(port: int) -> tuple[list[dict[str, object]], str]:
        env.reconfigure(beckn={"subscriber_id": "hpc.test"}, battery=battery_config(port))
        job_id = env.submit_flexible(hours=10, minutes=60)
        clean = ceiling_over_the_clean_window(env)
        proc = env.slurmflex("daemon", "--once")
        job = env.slurm.job(job_id)
        # planned as without a battery: out of the capped window, deadline kept
        moved = job.start_time if job.start_time is not None else int(time.time())
        assert not (clean - HOUR < moved < clean + 2 * SLOT_SECONDS)
        assert job.deadline is not None and moved + HOUR <= job.deadline
        return log_events(proc), env.slurmflex("status").stdout

    if case == "silent":
        events, shown = run(free_port())
    else:
        with sunspec_battery("--fault", case) as port:
            events, shown = run(port)
    dropped = [e for e in events if e["event"] == "battery_dropped"]
    assert len(dropped) == 1 and dropped[0]["level"] == "warning"
    cycle = next(e for e in events if e["event"] == "cycle")
    assert cycle["ok"] is True and cycle["errors"] >= 1  # a soft failure, counted
    assert "DROPPED from the plan" in shown
    assert "battery" not in last_plan(env)["sites"][next(iter(last_plan(env)["sites"]))]  # type: ignore[index]
