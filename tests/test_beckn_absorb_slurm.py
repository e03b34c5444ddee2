"""An increase (absorb) contract carried out on the real local cluster, its delivery proved with
measured power: the grid-operator agent (its own process and key) confirms "draw 1.2 kW more"
for three 30-second intervals; the daemon (its loop, as the service runs it) pulls the
deferred flexible jobs forward so that Slurm starts them as the window opens, not at the first
cycle in it; node agents (the real readers, on fake RAPL trees whose counters climb with what
Slurm has allocated on each node) push every node's power, so the proof uses measured power,
on the measured footing (idle nodes included), and falls back to modelled power, labelled so,
in the last interval, where the agents are stopped; every deadline is kept."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from slurm_flex.beckn.keys import write_keypair
from slurm_flex.beckn.store import BecknStore
from slurm_flex.grid.series import iso_utc
from slurm_flex.power.agent import NodeAgent
from slurm_flex.power.readers.rapl import RaplReader
from tests.conftest import Cluster, Env, slurm_epoch, wait_state
from tests.test_beckn_protocol import free_port, wait_port

pytestmark = pytest.mark.slurm

HOG = "#!/bin/bash\n#SBATCH -c 2\n#SBATCH -t 60\n#SBATCH --deadline=now+10hours\nsleep 1200\n"
TOKEN = "agent-token-0123456789abcdef"
IDLE_W, BUSY_W = 40.0, 1000.0  # a node's draw idle, and above idle with both CPUs allocated
INTERVAL_S = 30
ASKED_KW = 1.2


class Wattmeter:
    """Each dev node's fake RAPL package counter climbing at IDLE_W plus BUSY_W times the share
    of its CPUs Slurm has allocated (as sinfo says): measured power that
    follows what the real cluster runs. Node agents read the trees with the real RAPL reader."""

    def __init__(self, cluster: Cluster, tmp: Path) -> None:
        self.cluster = cluster
        out = cluster.run("sinfo", "-N", "-h", "-o", "%N").stdout.split()
        self.nodes = sorted(set(out))
        self.roots = {n: tmp / f"sysfs-{n}" for n in self.nodes}
        self.energy_uj = dict.fromkeys(self.nodes, 0.0)
        for root in self.roots.values():
            zone = root / "sys" / "class" / "powercap" / "intel-rapl:0"
            zone.mkdir(parents=True)
            (zone / "name").write_text("package-0\n")
            (zone / "max_energy_range_uj").write_text("262143328850\n")
            (zone / "energy_uj").write_text("0\n")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._climb, daemon=True)

    def _alloc(self) -> dict[str, float]:
        share = {}
        for line in self.cluster.run("sinfo", "-N", "-h", "-o", "%N %C", check=False).stdout.splitlines():
            name, cpus = line.split()
            alloc, _idle, _other, total = (int(x) for x in cpus.split("/"))
            share[name] = alloc / total if total else 0.0
        return share

    def _climb(self) -> None:
        last = polled = time.monotonic()
        share = self._alloc()
        # Counters move every 50 ms (a reader's 2 s sees no step error); sinfo is asked every 0.5 s.
        while not self._stop.wait(0.05):
            now = time.monotonic()
            for node in self.nodes:
                self.energy_uj[node] += (IDLE_W + BUSY_W * share.get(node, 0.0)) * (now - last) * 1e6
                path = self.roots[node] / "sys" / "class" / "powercap" / "intel-rapl:0" / "energy_uj"
                tmp = path.with_suffix(".tmp")
                tmp.write_text(f"{int(self.energy_uj[node])}\n")
                tmp.replace(path)  # atomic, as the kernel's counter is
            last = now
            if now - polled >= 0.5:
                share, polled = self._alloc(), now

    def __enter__(self) -> Wattmeter:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture
def agents_on(env: Env, tmp_path: Path) -> Iterator[tuple[Wattmeter, list[NodeAgent], int]]:
    """The wattmeter and one node agent per dev node (in threads: the agent's own class and
    reader), pushing every 2 s to the daemon's ingest port."""
    port = free_port()
    with Wattmeter(env.cluster, tmp_path) as meter:
        agents = [
            NodeAgent(node, [RaplReader(node, meter.roots[node])], f"http://127.0.0.1:{port}", TOKEN)
            for node in meter.nodes
        ]
        threads = [threading.Thread(target=a.run, args=(2.0,), daemon=True) for a in agents]
        for t in threads:
            t.start()
        try:
            yield meter, agents, port
        finally:
            for a in agents:
                a.stop()
            for t in threads:
                t.join()


def test_absorb_activation_on_real_slurm_with_measured_power(
    env: Env, tmp_path: Path, agents_on: tuple[Wattmeter, list[NodeAgent], int]
) -> None:
    cluster = env.cluster
    if cluster.slurm == "24.11" and os.environ.get("SLURMFLEX_SLURM", "both") == "both":
        # Three minutes of real time: once per suite (on 22.05); SLURMFLEX_SLURM=24.11 runs it there.
        pytest.skip("the absorb activation runs on 22.05 when both versions are tested; SLURMFLEX_SLURM=24.11 runs it")
    meter, agents, ingest_port = agents_on
    cluster_pub = write_keypair(tmp_path / "cluster")
    grid_pub = write_keypair(tmp_path / "grid")
    port, agent_port = free_port(), free_port()
    trust = {
        "trust-cluster.json": ("grid.local", grid_pub, agent_port),
        "trust-grid.json": ("hpc.local", cluster_pub, port),
    }
    for name, (sub, pub, p) in trust.items():
        (tmp_path / name).write_text(
            json.dumps([{"subscriber_id": sub, "key_id": "k1", "public_key": pub, "uri": f"http://127.0.0.1:{p}"}])
        )
    token = tmp_path / "agent.token"
    token.write_text(TOKEN + "\n")
    env.reconfigure(
        beckn={
            "subscriber_id": "hpc.local",
            "listen": f"127.0.0.1:{port}",
            "private_key_file": str(tmp_path / "cluster" / "signing.key"),
            "trust_file": str(tmp_path / "trust-cluster.json"),
        },
        # 2-CPU jobs on the 2-CPU dev nodes are modelled at 1 kW each (the wattmeter says 1.04
        # kW for a busy node, 0.04 kW for an idle one: the model knows no idle power)
        power={"node_idle_watts": 0.0, "node_max_watts": 1000.0},
        policy={"arrival_reserve": False, "plan_runtime": "limit", "defer_only_when_queue_idle": False},
        measure={
            "enabled": True,
            "listen": f"127.0.0.1:{ingest_port}",
            "token_file": str(token),
            "max_age_seconds": 6,
            "calibrate": False,
        },
    )
    # Two flexible jobs the plan defers to the clean window hours ahead.
    jobs = [cluster.sbatch(script=HOG) for _ in range(2)]
    daemon = subprocess.Popen(
        [sys.executable, "-m", "slurm_flex.cli", "--config", str(env.config), "daemon", "--interval", "5"],
        env=cluster.env(),
        stderr=(tmp_path / "daemon.log").open("w"),
    )
    serve = agent = None
    try:
        deadline = time.monotonic() + 60
        while not all(_begin(cluster, j) > time.time() + 3600 for j in jobs):
            assert time.monotonic() < deadline and daemon.poll() is None, (tmp_path / "daemon.log").read_text()[-3000:]
            time.sleep(1)
        serve = subprocess.Popen(
            [sys.executable, "-m", "slurm_flex.cli", "--config", str(env.config), "beckn", "serve"],
            env=cluster.env(),
            stderr=(tmp_path / "serve.log").open("w"),
        )
        wait_port(port)
        # Time to confirm and for a cycle to prepare the opening (the daemon runs every 5 s).
        t1 = (int(time.time()) + 25) // INTERVAL_S * INTERVAL_S + INTERVAL_S
        agent = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "slurm_flex.cli",
                "beckn",
                "grid-agent",
                "--subscriber-id",
                "grid.local",
                "--key",
                str(tmp_path / "grid" / "signing.key"),
                "--trust",
                str(tmp_path / "trust-grid.json"),
                "--listen",
                f"127.0.0.1:{agent_port}",
                "--bpp-url",
                f"http://127.0.0.1:{port}",
                "--bpp-id",
                "hpc.local",
                "--start",
                iso_utc(t1),
                "--interval-seconds",
                str(INTERVAL_S),
                "--kw",
                ",".join([str(ASKED_KW)] * 3),
                "--price=-0.2",  # negative: an increase (DEG's sign convention)
                "--poll-seconds",
                "5",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert agent.stdout is not None
        lines: list[dict[str, object]] = []
        while not any(line.get("step") == "on_confirm" for line in lines):
            line = agent.stdout.readline()
            assert line, f"agent ended early: {lines}"
            lines.append(json.loads(line))
        offered = next(line for line in lines if line["step"] == "on_init")["offered_kw"]
        assert offered == [ASKED_KW] * 3
        # Before the window opens, the daemon has given both jobs its opening as their begin
        # time (the floor needs both: 1.2 kW of 1 kW jobs): Slurm starts them then.
        while time.time() < t1 - 3:
            if all(_begin(cluster, j) == t1 for j in jobs):
                break
            time.sleep(1)
        assert {j: _begin(cluster, j) for j in jobs} == dict.fromkeys(jobs, t1)
        for j in jobs:
            wait_state(cluster, j, {"RUNNING"}, timeout=t1 + INTERVAL_S - time.time())
            started = slurm_epoch(cluster.show_job(j)["StartTime"])
            assert t1 <= started < t1 + INTERVAL_S, (j, started - t1)  # in the window's first interval
        store = BecknStore(env.tmp / "state")
        (contract,) = [c for c in store.active(time.time()) if c.direction == "absorb"]
        assert sorted(j for _, j, *_ in store.pulled(contract.id)) == sorted(jobs)
        # The last interval: the agents stop (a meter outage), so only the model is left.
        while time.time() < t1 + 2 * INTERVAL_S - 10:
            time.sleep(1)
        for a in agents:
            a.stop()
        final = None
        deadline = time.monotonic() + (t1 + 3 * INTERVAL_S - time.time()) + 120
        while final is None and time.monotonic() < deadline:
            line = agent.stdout.readline()
            if not line:
                break
            doc = json.loads(line)
            lines.append(doc)
            if doc["step"] == "final on_update":
                final = doc
        assert final is not None, lines
        assert final["status"] == "COMPLETE" and final["callbacks_refused"] == []
        rows = final["rows"]
        assert isinstance(rows, list)
        assert [r["basis"] for r in rows] == ["measured", "measured", "modelled"], rows
        for row in rows:
            assert row["delivered_kw"] is not None and row["delivered_kw"] >= row["committed_kw"], rows
        # Measured intervals carry the measured footing: the plan's baseline (nothing ran there)
        # plus the idle nodes' draw the agents measured before the window.
        idle_kw = len(meter.nodes) * IDLE_W / 1000
        assert [r["baseline_kw"] for r in rows[:2]] == [pytest.approx(idle_kw, abs=0.04)] * 2
        assert rows[2]["baseline_kw"] == pytest.approx(0.0)
        for j in jobs:  # every deadline kept
            f = cluster.show_job(j)
            assert f["JobState"] == "RUNNING"
            assert slurm_epoch(f["EndTime"]) <= slurm_epoch(f["Deadline"])
        assert all(r["status"] == "sent" for r in store.outbox_rows())
        print(json.dumps(final))
    finally:
        for proc in (agent, serve, daemon):
            if proc is not None:
                proc.terminate()
                proc.wait(10)


def _begin(cluster: Cluster, job_id: str) -> int:
    """A pending job's begin time (0: none, or it is not pending)."""
    f = cluster.show_job(job_id)
    if f["JobState"] != "PENDING" or f["StartTime"] in ("Unknown", "None"):
        return 0
    return slurm_epoch(f["StartTime"])
