"""The daemon as a service: systemd notification and watchdog, backoff, metrics, admin controls."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from slurm_flex.beckn.store import BecknStore
from slurm_flex.cli import main
from slurm_flex.config import load_config
from slurm_flex.daemon.cycle import CycleResult
from slurm_flex.daemon.service import EDGE_DELAY_S, EDGE_SETTLE_S, Daemon
from slurm_flex.metrics import Metrics
from slurm_flex.sdnotify import Notifier
from slurm_flex.state import StateStore
from tests.conftest import REPO
from tests.helpers import write_config
from tests.test_beckn_activation import absorb_contract


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    yield sock, path
    sock.close()


def messages(sock: socket.socket) -> list[str]:
    out = []
    sock.settimeout(0.2)
    try:
        while True:
            out.append(sock.recv(4096).decode())
    except TimeoutError:
        return out


def test_notifier_speaks_sd_notify(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())})
    assert n.enabled and n.watchdog_seconds == 2.0
    assert n.ready("starting") and n.watchdog() and n.reloading() and n.stopping() and n.status("3 deferred")
    assert messages(sock) == [
        "READY=1\nSTATUS=starting",
        "WATCHDOG=1",
        "RELOADING=1",
        "STOPPING=1",
        "STATUS=3 deferred",
    ]


def test_notifier_outside_systemd_and_foreign_watchdog() -> None:
    assert not Notifier({}).enabled and Notifier({}).ready() is False
    foreign = Notifier({"NOTIFY_SOCKET": "/nonexistent", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"})
    assert foreign.watchdog_seconds is None  # the watchdog belongs to another process
    assert foreign.notify(ready=1) is False  # a dead socket is logged, not raised


def _config(tmp_path: Path, **daemon: object) -> Path:
    dead = tmp_path / "slurm.conf"  # no controller behind it: cycles fail fast and are counted
    dead.write_text("ClusterName=none\nSlurmctldHost=localhost\nSlurmctldPort=1\nMessageTimeout=1\n")
    return write_config(
        tmp_path / "c.toml",
        {
            "daemon": {
                "state_dir": str(tmp_path / "state"),
                "interval_seconds": 10,
                "max_backoff_seconds": 60,
                **daemon,
            },
            "slurm": {"slurm_conf": str(dead), "command_timeout_seconds": 5},
        },
    )


def test_backoff_doubles_while_slurm_is_away_and_resets(tmp_path: Path) -> None:
    d = Daemon(load_config(_config(tmp_path), environ={}))
    assert d.next_wait() == 10
    d._failures_in_a_row = 1
    assert d.next_wait() == 10
    d._failures_in_a_row = 3
    assert d.next_wait() == 40
    d._failures_in_a_row = 9
    assert d.next_wait() == 60  # capped
    d.store.close()


def test_the_loop_runs_a_cycle_as_a_contract_window_opens_not_an_interval_later(tmp_path: Path) -> None:
    d = Daemon(load_config(_config(tmp_path, interval_seconds=300), environ={}))
    assert d._until_edge(300.0) == 300.0  # no Beckn: the interval
    d.store.close()
    config = _config(tmp_path, interval_seconds=300)
    with config.open("a") as fh:
        fh.write('\n[beckn]\nsubscriber_id = "hpc.test"\n')
    d = Daemon(load_config(config, environ={}))
    assert d._until_edge(300.0) == 300.0  # no contract
    opens = int(time.time()) + 120
    BecknStore(tmp_path / "state").put_contract(absorb_contract("up", opens, 60, 2, 0.0, 1.0))
    # the next cycle runs just after the window opens (not up to 300 s later), ...
    wait = d._until_edge(300.0)
    assert opens - time.time() < wait <= opens + EDGE_DELAY_S - time.time() + 0.01
    # ... the one after it soon after that, once the work it released draws, ...
    assert d._until_edge(300.0) == EDGE_SETTLE_S
    # ... and never later than the interval would have it
    assert d._until_edge(30.0) == 30.0
    d.store.close()


@pytest.mark.skipif(shutil.which("squeue") is None, reason="needs Slurm's client commands")
def test_a_cycle_against_an_absent_controller_counts_and_backs_off(tmp_path: Path) -> None:
    d = Daemon(load_config(_config(tmp_path), environ={}))
    result = d.run_once()
    assert result is not None and not result.slurm_ok and not result.ok
    assert d.stats.failed_cycles == 1 and d.next_wait() == 10
    d.run_once()
    assert d.next_wait() == 20
    d.store.close()


def test_sleep_feeds_the_watchdog(tmp_path: Path, notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"})
    d = Daemon(load_config(_config(tmp_path), environ={}), notifier=notifier)
    t0 = time.monotonic()
    assert d._sleep(0.55) is False
    assert time.monotonic() - t0 >= 0.55
    assert messages(sock).count("WATCHDOG=1") >= 4  # every 0.1 s
    d.stop()
    assert d._sleep(5) is True  # a stop request wakes it at once
    d.store.close()


def test_metrics_endpoint(tmp_path: Path) -> None:
    m = Metrics()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    m.serve(f"127.0.0.1:{port}")
    result = CycleResult(
        cycle_id=1,
        ok=True,
        jobs_seen=10,
        flexible=4,
        deferred=3,
        updates=2,
        errors=1,
        commands=3,
        duration_s=0.2,
        message="",
        mode="advise",
        forecast_age_s=120.0,
        planned_kw=(1.5, 2.0),
        carbon_saved_kg=0.7,
        signal_fallback=(("cambridge", False), ("manchester", True)),
        expedited=2,
    )
    m.observe(result, 1_800_000_000.0)
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    for line in (
        "slurmflex_deferred_jobs 3.0",
        "slurmflex_expedited_jobs 2.0",
        'slurmflex_mode{mode="advise"} 1.0',
        'slurmflex_mode{mode="enforce"} 0.0',
        'slurmflex_planned_power_kw{slot="1"} 2.0',
        'slurmflex_planned_power_kw{slot="47"} 0.0',
        "slurmflex_forecast_age_seconds 120.0",
        "slurmflex_cycle_errors_total 1.0",
        "slurmflex_carbon_saved_planned_kg 0.7",
        "slurmflex_up 1.0",
        "slurmflex_cycle_duration_seconds_count 1.0",
        'slurmflex_signal_fallback{site="cambridge"} 0.0',
        'slurmflex_signal_fallback{site="manchester"} 1.0',
    ):
        assert line in text, line
    m.observe(CycleResult(2, False, 0, 0, 0, 0, 1, 1, 9.0, "down", slurm_ok=False), 1_800_000_300.0)
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    assert "slurmflex_up 0.0" in text and "slurmflex_failed_cycles_total 1.0" in text
    assert "slurmflex_deferred_jobs 3.0" in text  # a failed cycle leaves the last known values


def test_mode_release_and_resume_are_recorded(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    run = CliRunner().invoke
    assert "mode: enforce (from the config)" in run(main, ["--config", str(cfg), "mode"]).output
    assert "mode: shadow (set at runtime)" in run(main, ["--config", str(cfg), "mode", "shadow"]).output
    assert "mode: enforce (from the config)" in run(main, ["--config", str(cfg), "mode", "--clear"]).output
    out = run(main, ["--config", str(cfg), "release", "42", "--user", "bob", "--reason", "maintenance"])
    assert out.exit_code == 0 and "no job is deferred" in out.output
    out = run(main, ["--config", str(cfg), "release", "--all"])
    assert out.exit_code == 0
    with StateStore(tmp_path / "state" / "state.sqlite3") as store:
        ex = store.exemptions()
        assert ex.everything and ex.jobs == {"42"} and ex.users == {"bob"}
        assert store.controls()[0].reason == "maintenance"
    assert "lifted 3" in run(main, ["--config", str(cfg), "resume", "--all"]).output
    with StateStore(tmp_path / "state" / "state.sqlite3") as store:
        assert store.exemptions().covers("42", "bob") is False
    assert run(main, ["--config", str(cfg), "release"]).exit_code == 2  # nothing named


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
@pytest.mark.parametrize(
    ("name", "needs"),
    [
        (
            "slurmflexd.service",
            (
                "Type=notify",
                "WatchdogSec=",
                "ExecReload=/bin/kill -HUP $MAINPID",
                "After=network-online.target munge.service slurmctld.service",
                "User=slurmflex",
                "ProtectSystem=strict",
                "ReadWritePaths=/var/lib/slurm-flex",
                "NoNewPrivileges=yes",
            ),
        ),
        ("slurmflex-node-agent.service", ("ExecStart=/usr/local/bin/slurmflex node-agent", "CPUQuota=", "MemoryMax=")),
    ],
)
def test_systemd_units_verify(tmp_path: Path, name: str, needs: tuple[str, ...]) -> None:
    unit = (REPO / "systemd" / name).read_text()
    for needed in needs:
        assert needed in unit, needed
    # verify checks that ExecStart exists: point it at this checkout's entry point.
    local = tmp_path / name
    local.write_text(
        unit.replace("/usr/local/bin/slurmflex", shutil.which("slurmflex") or str(REPO / ".venv/bin/slurmflex"))
    )
    proc = subprocess.run(["systemd-analyze", "verify", str(local)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_grafana_dashboard_uses_only_exported_metrics() -> None:
    import json
    import re

    dash = json.loads((REPO / "conf" / "grafana-dashboard.json").read_text())
    exported = {m.name for m in Metrics().registry.collect()}
    exported |= {f"{n}_total" for n in exported} | {f"{n}_bucket" for n in exported}
    used = set()
    for panel in dash["panels"]:
        for target in panel["targets"]:
            used |= set(re.findall(r"slurmflex_[a-z_]+", target["expr"]))
    assert used and used <= exported, used - exported


def test_sighup_reloads_and_a_bad_file_keeps_the_old_config(tmp_path: Path) -> None:
    import json
    import signal
    import sys

    cfg = _config(tmp_path, mode="shadow", log_format="json")
    log_path = tmp_path / "daemon.log"

    def events() -> list[dict[str, object]]:
        return [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]

    def wait_for(event: str, count: int = 1) -> dict[str, object]:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            found = [e for e in events() if e.get("event") == event]
            if len(found) >= count:
                return found[count - 1]
            time.sleep(0.1)
        raise AssertionError(f"no {event} event in:\n{log_path.read_text()}")

    with log_path.open("w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "slurm_flex.cli", "--config", str(cfg), "daemon", "--interval", "1"],
            stderr=log_file,
            stdout=subprocess.DEVNULL,
        )
    try:
        wait_for("daemon_start")
        good = cfg.read_text()
        cfg.write_text(good.replace('mode = "shadow"', 'mode = "sometimes"'))
        proc.send_signal(signal.SIGHUP)
        rejected = wait_for("reload_rejected")
        assert "daemon.mode" in str(rejected["error"]) and "enforce" in str(rejected["error"])
        assert str(cfg) in str(rejected["error"]) and rejected["kept"] == "previous config"
        assert proc.poll() is None  # a bad file never stops the service

        cfg.write_text(good.replace('mode = "shadow"', 'mode = "advise"'))
        proc.send_signal(signal.SIGHUP)
        reloaded = wait_for("reloaded")
        assert reloaded["mode"] == "advise" and reloaded["interval"] == 1  # the CLI's --interval survives
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert wait_for("daemon_stop")["cycles"] >= 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
