"""Grid-stress events at one site of a federation (daemon/stress.py), on the fake Slurm with two
clusters (tests/fake_federation.py) and the simulated SunSpec battery in its own process: the
stressed site's pending portable work moves to the other site (never arrays or jobs with
unfulfilled dependencies), opted-in running jobs are suspended (a checkpointing portable one
requeued and carried on at the other site) and resumed after the window, the battery covers
what the work that stays draws above the site's ceiling, no job is moved to the stressed site
while it lasts, and the report gives the kW moved across sites per half-hour."""

from __future__ import annotations

import json
import time
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from slurm_flex.cli import main
from slurm_flex.config import Config, load_config
from slurm_flex.daemon.cycle import Cycle
from slurm_flex.daemon.service import make_sources, open_grid_cache
from slurm_flex.daemon.stress import StressError, parse_when
from slurm_flex.grid.series import SLOT_SECONDS, floor_slot, parse_iso_utc
from slurm_flex.state import StateStore
from slurm_flex.tag import parse_tag
from tests.fake_cluster import hook_submit
from tests.fake_federation import FakeFederation
from tests.helpers import write_config, write_forecast
from tests.sunspec_fixtures import sunspec_battery

HOUR = 3600
BOTH = ("cambridge", "manchester")


def _config(tmp: Path, battery_port: int | None) -> Path:
    slot0 = floor_slot(time.time())
    sites: dict[str, dict[str, object]] = {}
    # Cambridge cleaner all day: outside a stress event the mover would bring work there.
    for name, carbon in (("cambridge", [60.0] * 96), ("manchester", [300.0] * 96)):
        path = write_forecast(tmp / f"{name}.csv", slot0, carbon)
        sites[f"sites.{name}"] = {"cluster": name, "carbon": {"provider": "file", "path": str(path)}}
    sections: dict[str, dict[str, object]] = {
        "daemon": {"state_dir": str(tmp / "state"), "log_format": "json", "mode": "enforce"},
        "policy": {"safety_margin_seconds": 300, "min_saving_fraction": 0.05, "use_price": False},
        "flex": {"grace_seconds": 0},
        "power": {"cpus_per_node": 2},
        "federation": {"enabled": True, "move_threshold": 0.1},
        **sites,
    }
    if battery_port is not None:
        sections["battery"] = {
            "enabled": True,
            "site": "cambridge",
            "port": battery_port,
            "capacity_kwh": 2.0,
            "max_charge_kw": 1.0,
            "max_discharge_kw": 1.0,
            "timeout_seconds": 1.0,
        }
    return write_config(tmp / "slurmflex.toml", sections)


def _cli(config: Path, *args: str) -> Any:
    result = CliRunner().invoke(main, ["--config", str(config), *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def _kw(fed: FakeFederation, job_id: str) -> float:
    job = fed.fakes[fed.where(job_id)]._find(job_id)
    tag = parse_tag(job.admin_comment)
    assert tag is not None and tag.power_w is not None
    return tag.power_w / 1000.0


def _submit(fed: FakeFederation, cfg: Config, cluster: str, viable: tuple[str, ...], **job: Any) -> str:
    return fed.submit(hook_submit(fed.fakes[cluster], cfg, **job), cluster, viable)


def test_parse_when() -> None:
    now = 1_800_000_000
    assert parse_when("now", now) == now
    assert parse_when("now+30min", now) == now + 1800
    assert parse_when("now+2h", now) == now + 7200
    assert parse_when("2027-01-15T14:00Z", now) == parse_when("2027-01-15T14:00:00+00:00", now)
    with pytest.raises(StressError):
        parse_when("tomorrow-ish", now)


def test_a_stress_event_sheds_the_site_onto_the_other_one(tmp_path: Path) -> None:
    with sunspec_battery("--soc", "80", "--capacity-kwh", "2", "--max-kw", "1", "--speedup", "1") as port:
        config_path = _config(tmp_path, port)
        cfg = load_config(config_path, environ={})
        fed = FakeFederation()
        now = int(time.time())
        far = now + 20 * HOUR
        cam = fed.fakes["cambridge"]
        # Running at Cambridge: an opted-in job pinned there, a checkpointing portable one, and
        # one that is not opted in (it stays, and draws above the ceiling).
        r_suspend = _submit(fed, cfg, "cambridge", ("cambridge",), deadline=far, cpus=2, comment="flex=suspendable")
        r_requeue = _submit(fed, cfg, "cambridge", BOTH, deadline=far, cpus=1, comment="flex=requeue")
        r_stays = _submit(fed, cfg, "cambridge", ("cambridge",), cpus=1)
        for j in (r_suspend, r_requeue, r_stays):
            cam.start(j)
        # Pending at Cambridge: portable flexible work, an array and a job with a dependency.
        pending = _submit(fed, cfg, "cambridge", BOTH, deadline=now + 10 * HOUR, time_limit_s=HOUR)
        array = _submit(fed, cfg, "cambridge", BOTH, deadline=now + 10 * HOUR, time_limit_s=HOUR, array="1-3")
        child = _submit(fed, cfg, "cambridge", BOTH, deadline=now + 10 * HOUR, time_limit_s=HOUR,
                        dependency=f"afterok:{r_stays}")  # fmt: skip
        # Pending at Manchester, portable: Cambridge is cleaner, but stressed.
        at_man = _submit(fed, cfg, "manchester", BOTH, deadline=now + 10 * HOUR, time_limit_s=HOUR)
        kw = {j: _kw(fed, j) for j in (r_suspend, r_requeue, r_stays, pending)}
        # The site draws its running jobs; shed all but half of what the job that stays draws:
        # the battery is to cover the other half.
        baseline = kw[r_suspend] + kw[r_requeue] + kw[r_stays]
        shed = baseline - kw[r_stays] / 2
        end = now + HOUR
        _cli(config_path, "stress", "--site", "cambridge", "--kw", f"{shed:.6f}", "--from", "now", "--to", "now+1h",
             "--reason", "grid stress (test)")  # fmt: skip
        with closing(StateStore(cfg.state_db)) as store:
            grid = open_grid_cache(cfg)
            assert grid is not None
            cycle = Cycle(cfg, fed, make_sources(cfg, grid), store)
            # The daemon's loop runs a cycle as the window closes.
            event_end = json.loads(_cli(config_path, "stress", "list", "--json").stdout)["events"][0]["end"]
            assert cycle.next_edge(now + 1) == parse_when(event_end, now)
            result = cycle.run(now=now + 1)
            assert result.ok, result.message

            # Pending portable work went to Manchester; the array and the child stayed.
            assert fed.where(pending) == "manchester" and (pending, "manchester") in fed.moves
            assert fed.where(array) == "cambridge" and fed.where(child) == "cambridge"
            # Nothing was moved to the stressed site, cleaner as it is.
            assert fed.where(at_man) == "manchester"
            # Opted-in running work: suspended; the checkpointing portable job requeued and
            # released at Manchester; the job not opted in still runs.
            assert cam._find(r_suspend).state == "SUSPENDED"
            assert fed.where(r_requeue) == "manchester"
            requeued = fed.fakes["manchester"]._find(r_requeue)
            assert requeued.state == "PENDING" and not requeued.held
            assert cam._find(r_stays).state == "RUNNING"

            # The battery covers what the job that stays draws above the ceiling.
            plan = json.loads(sorted((cfg.daemon.state_dir / "plans").glob("cycle-*.json"))[-1].read_text())
            battery = plan["sites"]["cambridge"]["battery"]
            k = (floor_slot(now) - battery["start"]) // SLOT_SECONDS
            ceiling = baseline - shed
            load = battery["grid_kw"][k] - battery["net_kw"][k]  # what the site's work draws
            assert load >= kw[r_stays] - 1e-6 and load > ceiling
            # It discharges at least the gap (it may give more: its charge above target_soc is
            # worth as much now as later on this flat forecast), and the meter keeps the ceiling.
            assert -battery["net_kw"][k] >= kw[r_stays] - ceiling - 1e-4
            assert battery["grid_kw"][k] <= ceiling + 1e-6 and max(battery["unmet_kw"]) == pytest.approx(0, abs=1e-6)

            # Status says what moved, what was paused and why.
            doc = json.loads(_cli(config_path, "status", "--json").stdout)
            (event,) = doc["stress"]["events"]
            assert event["phase"] == "open" and event["ceiling_kw"] == pytest.approx(ceiling, abs=1e-5)
            assert event["moved"][pending]["to"] == "manchester" and "shed" in event["moved"][pending]["why"]
            assert event["moved"][r_requeue]["to"] == "manchester"
            assert "array" in event["blocked"][f"{array}_[1-3]"]["why"]
            assert "dependency" in event["blocked"][child]["why"]
            assert event["paused"][r_suspend]["how"] == "suspend"
            assert event["paused"][r_requeue]["moved_to"] == "manchester"
            text = _cli(config_path, "status").stdout
            assert f"job {pending} moved cambridge -> manchester" in text

            # Manchester runs the moved work; the next cycle samples it.
            fed.schedule()
            assert fed.fakes["manchester"]._find(pending).state == "RUNNING"
            assert cycle.run(now=now + 600).ok

            # After the window the suspended job is resumed.
            assert cycle.run(now=end + 60).ok
            assert cam._find(r_suspend).state == "RUNNING"
            doc = json.loads(_cli(config_path, "status", "--json").stdout)
            assert doc["stress"]["events"][0]["paused"][r_suspend]["resumed_why"] == "window over"

        with closing(StateStore(cfg.state_db)) as store:
            samples = json.loads(store.setting("stress.state") or "{}")["samples"]
        # One sample per cycle in the window: the first as the work was moved (pending at
        # Manchester), the second once Manchester ran it; none after the window.
        assert [s["t"] for s in samples] == [now + 1, now + 600]
        assert samples[0]["moved_pending_kw"] == pytest.approx(kw[pending] + kw[r_requeue], abs=1e-5)
        assert samples[1]["moved_kw"] == pytest.approx(kw[pending] + kw[r_requeue], abs=1e-5)
        assert all(s["paused_kw"] == pytest.approx(kw[r_suspend], abs=1e-5) for s in samples)
        assert all(s["battery_kw"] >= kw[r_stays] - (baseline - shed) - 1e-4 for s in samples)
        rows = json.loads(_cli(config_path, "report", "stress", "--format", "json").stdout)["periods"]
        assert rows and all(r["from"] == "cambridge" and r["to"] == "manchester" for r in rows)
        # Per half-hour: the time mean of the samples in it.
        for r in rows:
            inside = [s for s in samples if time.strftime("%Y-%m-%dT%H:%M", time.gmtime(floor_slot(s["t"]))) in
                      r["period_start"]]  # fmt: skip
            assert r["samples"] == len(inside)
            assert r["kw_moved_across_sites"] == pytest.approx(
                sum(s["moved_kw"] for s in inside) / len(inside), abs=1e-3
            )
        assert "Moved kW" in _cli(config_path, "report", "stress").stdout
        # The report of the days around carries the same rows.
        days = "..".join(time.strftime("%Y-%m-%d", time.gmtime(now + d * 86400)) for d in (-1, 1))
        doc = json.loads(_cli(config_path, "report", "--period", days, "--format", "json").stdout)
        assert doc["cross_site"] == rows
        assert "kW moved across sites" in _cli(config_path, "report", "--period", days).stdout


def test_a_beckn_reduction_contract_is_a_stress_event_at_its_site(tmp_path: Path) -> None:
    from slurm_flex.beckn.store import BecknStore
    from tests.test_beckn_activation import contract

    config_path = _config(tmp_path, None)
    text = config_path.read_text().replace("[federation]\n", '[federation]\nbeckn_stress_site = "cambridge"\n')
    config_path.write_text(text + '\n[beckn]\nsubscriber_id = "hpc.test"\n')
    cfg = load_config(config_path, environ={})
    fed = FakeFederation()
    now = int(time.time())
    busy = [_submit(fed, cfg, "cambridge", ("cambridge",), cpus=2) for _ in range(2)]
    for j in busy:
        fed.fakes["cambridge"].start(j)
    pending = _submit(fed, cfg, "cambridge", BOTH, deadline=now + 10 * HOUR, time_limit_s=HOUR)
    # A contract whose window (two half-hours) is open now.
    c = contract("c-stress", floor_slot(now), 2, SLOT_SECONDS, (0.0, 0.0), ())
    BecknStore(cfg.daemon.state_dir).put_contract(c)
    with closing(StateStore(cfg.state_db)) as store:
        grid = open_grid_cache(cfg)
        assert grid is not None
        cycle = Cycle(cfg, fed, make_sources(cfg, grid), store)
        assert cycle.run(now=now).ok
        assert fed.where(pending) == "manchester"
        doc = json.loads(_cli(config_path, "stress", "list", "--json").stdout)
        (event,) = doc["events"]
        assert event["id"] == "beckn:c-stress" and event["site"] == "cambridge"
        assert event["kw"] == max(c.committed_per_slot()) and event["phase"] == "open"
        assert "c-stress" in event["moved"][pending]["why"] or "beckn:c-stress" in event["moved"][pending]["why"]
        # The contract cancelled: so is the event.
        BecknStore(cfg.daemon.state_dir).put_contract(replace(c, status="CANCELLED"))
        assert cycle.run(now=now + 60).ok
        assert json.loads(_cli(config_path, "stress", "list", "--json").stdout)["events"][0]["phase"] == "cancelled"


def test_in_shadow_mode_a_stress_event_changes_nothing_in_slurm(tmp_path: Path) -> None:
    config_path = _config(tmp_path, None)
    config_path.write_text(config_path.read_text().replace('mode = "enforce"', 'mode = "shadow"'))
    cfg = load_config(config_path, environ={})
    fed = FakeFederation()
    now = int(time.time())
    opted = _submit(fed, cfg, "cambridge", ("cambridge",), deadline=now + 20 * HOUR, cpus=2, comment="flex=suspendable")
    fed.fakes["cambridge"].start(opted)
    pending = _submit(fed, cfg, "cambridge", BOTH, deadline=now + 10 * HOUR, time_limit_s=HOUR)
    _cli(config_path, "stress", "--site", "cambridge", "--kw", "0.1", "--from", "now", "--to", "now+1h")
    with closing(StateStore(cfg.state_db)) as store:
        grid = open_grid_cache(cfg)
        assert grid is not None
        assert Cycle(cfg, fed, make_sources(cfg, grid), store).run(now=now + 1).ok
    assert fed.moves == [] and fed.where(pending) == "cambridge"
    assert fed.fakes["cambridge"]._find(opted).state == "RUNNING"
    (event,) = json.loads(_cli(config_path, "status", "--json").stdout)["stress"]["events"]
    assert event["blocked"][pending]["status"] == "would-move" and not event["paused"] and not event["moved"]


def test_beckn_stress_site_must_be_a_site(tmp_path: Path) -> None:
    from slurm_flex.errors import ConfigError

    config_path = _config(tmp_path, None)
    config_path.write_text(
        config_path.read_text().replace("[federation]\n", '[federation]\nbeckn_stress_site = "leeds"\n')
    )
    with pytest.raises(ConfigError, match="leeds"):
        load_config(config_path, environ={})


def test_stress_command_is_checked_and_recorded(tmp_path: Path) -> None:
    config_path = _config(tmp_path, None)
    result = CliRunner().invoke(
        main,
        ["--config", str(config_path), "stress", "--site", "leeds", "--kw", "3", "--from", "now", "--to", "now+1h"],
    )
    assert result.exit_code != 0 and "no site 'leeds'" in result.output
    out = _cli(config_path, "stress", "--site", "cambridge", "--kw", "3", "--from", "now+1h", "--to", "now+2h").stdout
    event_id = out.split("(id ")[1].rstrip(")\n")
    listed = json.loads(_cli(config_path, "stress", "list", "--json").stdout)["events"]
    assert [(e["id"], e["phase"], e["kw"]) for e in listed] == [(event_id, "ahead", 3.0)]
    _cli(config_path, "stress", "cancel", event_id)
    assert json.loads(_cli(config_path, "stress", "list", "--json").stdout)["events"][0]["phase"] == "cancelled"
    ledger = (tmp_path / "state" / "ledger").glob("records-*.jsonl")
    kinds = [json.loads(line).get("kind") for f in ledger for line in f.read_text().splitlines() if line.strip()]
    assert kinds.count("admin.stress") == 1 and kinds.count("admin.stress-cancel") == 1


# -- the real federation (scripts/fedcluster) ---------------------------------------------------


@pytest.mark.slurm
def test_stress_event_on_the_real_federation(federation: Any, tmp_path: Path) -> None:
    """A stress event at Cambridge: a pending portable job moves to Manchester and runs there
    before its deadline; an opted-in running job at Cambridge is suspended in the window and
    resumed after it; a checkpointing one (its partition portable) is requeued and carries on at
    Manchester (Slurm 22.05 takes the move of a held job and makes it at its release)."""
    from tests.test_federation import _daemon, _fed_config

    # Manchester dirtier all day: only the stress event moves work there.
    config = _fed_config(tmp_path, federation, [60.0] * 96, [300.0] * 96, federation={"portable_partitions": ["batch"]})
    running = federation.sbatch(
        "-M", "cambridge", "-t", "10", "--deadline=now+4hours", "--comment=flex=suspendable",
        script="#!/bin/bash\nsleep 300\n",
    )  # fmt: skip
    checkpointing = federation.sbatch(
        "-M", "cambridge", "-t", "10", "--deadline=now+4hours", "--comment=flex=requeue",
        script="#!/bin/bash\nsleep 300\n",
    )  # fmt: skip
    federation.wait(running, "cambridge", {"RUNNING"})
    federation.wait(checkpointing, "cambridge", {"RUNNING"})
    deadline = int(time.time()) + 4 * 3600
    portable = federation.sbatch(
        "--clusters=cambridge,manchester", "--begin=now+1hour", "-t", "10", "--deadline=now+4hours",
        script="#!/bin/bash\nsleep 3\n",
    )  # fmt: skip
    federation.tag_as_hook(portable)
    out = _cli(config, "stress", "--site", "cambridge", "--kw", "0.1", "--from", "now", "--to", "now+30s").stdout
    end = time.time() + 30
    proc = _daemon(config, federation, "--once")
    assert proc.returncode == 0, proc.stderr
    # Moved to Manchester, released there, and run before its deadline.
    federation.wait(portable, "manchester", {"RUNNING", "COMPLETING", "COMPLETED"}, timeout=60)
    rec = federation.records(portable)
    assert rec["cambridge"]["job_state"] == "REVOKED" and rec["manchester"]["start_time"] < deadline
    # The opted-in job is suspended for the window; the checkpointing one goes on at Manchester
    # (pending there after its requeue: Slurm gives a requeued job a begin time a little ahead).
    assert federation.records(running)["cambridge"]["job_state"] == "SUSPENDED"
    federation.wait(checkpointing, "manchester", {"PENDING", "RUNNING", "COMPLETING", "COMPLETED"}, timeout=30)
    assert federation.live_copies(checkpointing).keys() == {"manchester"}
    assert federation.records(checkpointing)["manchester"]["priority"] != 0  # released, not held
    status = json.loads(_cli(config, "status", "--json").stdout)
    (event,) = status["stress"]["events"]
    assert event["id"] in out and event["moved"][portable]["to"] == "manchester"
    assert event["paused"][running]["how"] == "suspend"
    assert event["paused"][checkpointing]["how"] == "requeue"
    assert event["paused"][checkpointing]["moved_to"] == "manchester"
    # After the window the next cycle resumes it.
    time.sleep(max(0.0, end - time.time()) + 1)
    proc = _daemon(config, federation, "--once")
    assert proc.returncode == 0, proc.stderr
    assert federation.records(running)["cambridge"]["job_state"] == "RUNNING"
    status = json.loads(_cli(config, "status", "--json").stdout)
    assert status["stress"]["events"][0]["paused"][running]["resumed_why"] == "window over"


@pytest.mark.slurm
def test_the_battery_covers_a_stress_gap_on_the_real_federation(federation: Any, tmp_path: Path) -> None:
    """A stress event at Cambridge sheds more than it can move or pause there (the one running
    job is neither portable nor opted in): the daemon plans the SunSpec battery (its own process,
    pymodbus's server) to discharge at least the gap above the ceiling, commands it over Modbus,
    and the battery discharges: its pinned rate is the plan's and its state of charge falls."""
    from slurm_flex.battery.sunspec import SunSpecStorage
    from tests.test_federation import _daemon, _fed_config

    # Manchester dirtier all day: nothing moves there but what the event sheds.
    with sunspec_battery("--soc", "80", "--capacity-kwh", "2", "--max-kw", "1", "--speedup", "60") as port:
        battery = {
            "enabled": True,
            "site": "cambridge",
            "port": port,
            "capacity_kwh": 2.0,
            "max_charge_kw": 1.0,
            "max_discharge_kw": 1.0,
            "timeout_seconds": 1.0,
            "revert_seconds": 3600,  # simulated seconds: a minute at --speedup 60
        }
        config = _fed_config(tmp_path, federation, [60.0] * 96, [300.0] * 96, battery=battery)
        stays = federation.sbatch("-M", "cambridge", "-t", "10", script="#!/bin/bash\nsleep 300\n")
        federation.wait(stays, "cambridge", {"RUNNING"})
        federation.tag_as_hook(stays, power_w=400.0)
        _cli(config, "stress", "--site", "cambridge", "--kw", "0.3", "--from", "now", "--to", "now+10min")
        proc = _daemon(config, federation, "--once")
        assert proc.returncode == 0, proc.stderr
        with SunSpecStorage("127.0.0.1", port, timeout_seconds=2.0) as device:
            first = device.read()
            time.sleep(3)
            later = device.read()
        plan = json.loads(sorted((tmp_path / "state" / "plans").glob("cycle-*.json"))[-1].read_text())
        status = json.loads(_cli(config, "status", "--json").stdout)
    (event,) = status["stress"]["events"]
    ceiling = event["ceiling_kw"]
    cam = plan["sites"]["cambridge"]["battery"]
    k = (floor_slot(parse_iso_utc(plan["now"])) - cam["start"]) // SLOT_SECONDS
    load = cam["grid_kw"][k] - cam["net_kw"][k]  # what the site's work draws
    # The job that stays draws its 0.4 kW, which the event's ceiling does not leave room for.
    assert load >= 0.4 - 1e-6 and load > ceiling + 0.1
    assert -cam["net_kw"][k] >= load - ceiling - 1e-4  # the plan discharges at least the gap
    assert cam["grid_kw"][k] <= ceiling + 1e-6 and max(cam["unmet_kw"]) == pytest.approx(0, abs=1e-6)
    # Commanded over Modbus: the battery is pinned to the plan's rate and discharges.
    assert first.net_kw is not None and first.net_kw == pytest.approx(cam["net_kw"][k], abs=2e-3)
    assert first.net_kw < 0 and later.soc < first.soc
    assert first.charge_status == "DISCHARGING"
