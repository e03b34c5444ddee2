"""Measured power end to end on the real local cluster: two node agents (the real CLI, reading
fake RAPL trees whose counters climb at a known rate) push to the daemon's ingest endpoint; the
cycle attributes the nodes' power to the job Slurm placed on them; `slurmflex power` shows it."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from slurm_flex.config import load_config
from slurm_flex.daemon.service import make_cycle, open_power
from slurm_flex.state import StateStore
from tests.conftest import Env, wait_state

pytestmark = pytest.mark.slurm

TOKEN = "agent-token-0123456789abcdef"
WATTS = {"node1": (60.0, 15.0), "node2": (90.0, 20.0)}  # package, dram


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _zone(root: Path, entry: str, name: str) -> Path:
    zone = root / "sys" / "class" / "powercap" / entry
    zone.mkdir(parents=True)
    (zone / "name").write_text(f"{name}\n")
    (zone / "energy_uj").write_text("0\n")
    (zone / "max_energy_range_uj").write_text("262143328850\n")
    return zone / "energy_uj"


@pytest.fixture
def climbing_counters(tmp_path: Path) -> Iterator[dict[str, Path]]:
    """A fake sysfs per node whose package and DRAM counters climb at WATTS."""
    roots, counters = {}, []
    for node, (package, dram) in WATTS.items():
        root = tmp_path / f"sysfs-{node}"
        counters.append((_zone(root, "intel-rapl:0", "package-0"), package))
        counters.append((_zone(root, "intel-rapl:0:0", "dram"), dram))
        roots[node] = root
    stop = threading.Event()
    t0 = time.monotonic()

    def climb() -> None:
        while not stop.wait(0.02):
            elapsed = time.monotonic() - t0
            for path, watts in counters:
                tmp = path.with_suffix(".tmp")
                tmp.write_text(f"{int(watts * elapsed * 1e6)}\n")
                tmp.replace(path)  # atomic, as the kernel's counter is

    thread = threading.Thread(target=climb, daemon=True)
    thread.start()
    yield roots
    stop.set()
    thread.join()


def test_agents_push_node_power_and_the_daemon_attributes_it_to_the_running_job(
    env: Env, climbing_counters: dict[str, Path]
) -> None:
    port = _free_port()
    token = env.tmp / "agent.token"
    token.write_text(TOKEN + "\n")
    env.reconfigure(
        measure={
            "enabled": True,
            "listen": f"127.0.0.1:{port}",
            "token_file": str(token),
            "slurm_energy": True,
            "max_age_seconds": 120,
        },
        agent={"push_url": f"http://127.0.0.1:{port}", "token_file": str(token), "interval_seconds": 1.0},
    )
    config = load_config(env.config, environ={})
    job_id = env.cluster.sbatch("-N2", "-n2", "-J", "climate", "--wrap", "sleep 60")
    wait_state(env.cluster, job_id, {"RUNNING"})
    power = open_power(config)
    assert power is not None and power.ingest is not None
    store = StateStore(config.state_db)
    cycle = make_cycle(config, store, None, power)
    try:

        def agents() -> None:
            procs = [
                subprocess.Popen(
                    [sys.executable, "-m", "slurm_flex.cli", "--config", str(env.config), "node-agent", "--once"],
                    env={
                        **env.cluster.env(),
                        "SLURMFLEX_AGENT__NODE": node,
                        "SLURMFLEX_AGENT__ROOT": str(root),
                    },
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                for node, root in climbing_counters.items()
            ]
            for proc in procs:
                _, err = proc.communicate(timeout=60)
                assert proc.returncode == 0, err
                assert '"event": "pushed"' in err and '"sent": 2' in err, err

        agents()
        t0 = time.time()
        first = cycle.run(now=t0)
        assert first.ok and first.errors == 0, first.message
        assert first.measured_kw == pytest.approx(sum(sum(w) for w in WATTS.values()) / 1000, rel=0.15)
        agents()
        second = cycle.run(now=t0 + 60)  # the daemon's clock steps a minute
        assert second.ok and second.errors == 0, second.message
        [energy] = power.store.job_energy()
        assert energy.job_id == job_id and energy.name == "climate" and not energy.finished
        # The job has every allocated core on both nodes: both nodes' power for 60 s.
        expected = sum(sum(w) for w in WATTS.values()) * 60
        assert energy.joules == pytest.approx(expected, rel=0.15)
        assert energy.estimated_watts is not None and energy.estimated_watts > 0
        doc = json.loads(env.slurmflex("power", "--json").stdout)
        assert set(doc["nodes"]) == {"node1", "node2"}
        node1 = doc["nodes"]["node1"]
        assert node1["sources"] == ["rapl"] and node1["fresh"]
        assert node1["watts"] == pytest.approx(sum(WATTS["node1"]), rel=0.15)
        assert node1["components"]["package-0"] == pytest.approx(WATTS["node1"][0], rel=0.15)
        assert doc["jobs"][0]["job_id"] == job_id and doc["jobs"][0]["running"]
        text = env.slurmflex("power").stdout
        assert "node2" in text and "climate" in text
        status = env.status()["power"]
        assert status["nodes_measured"] == 2
        assert status["cluster_watts"] == pytest.approx(sum(sum(w) for w in WATTS.values()), rel=0.15)
        assert re.search(r"measured power: 0\.\d\d kW on 2 nodes", env.slurmflex("status").stdout)
        # The job ends: its measured power against the estimate calibrates the model.
        env.cluster.run("scancel", job_id)
        wait_state(env.cluster, job_id, {"CANCELLED", "COMPLETED", "GONE"})
        third = cycle.run(now=t0 + 90)
        assert third.ok
        assert power.store.job_energy(job_id=job_id)[0].finished
        assert ("user+name", f"{energy.user}/climate") in power.store.calibration()
    finally:
        power.close()
        store.close()
