"""Measured power in the daemon: agents' pushes over real HTTP, the power store, per-job energy
attribution and the calibration of the power model; and the node agent's buffering."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from slurm_flex.daemon.ingest import PowerIngest
from slurm_flex.power.agent import NodeAgent, PushFailed
from slurm_flex.power.attribution import Calibration, attribute, calibrate
from slurm_flex.power.ledger import PowerLedger
from slurm_flex.power.report import build_power_doc, render_power
from slurm_flex.power.sample import PowerSample
from slurm_flex.power.store import JobEnergy, PowerStore
from slurm_flex.power.wire import PushError, parse_push
from slurm_flex.slurm.parsers import SlurmJob, parse_job
from tests.conftest import FIXTURES

TOKEN = "0123456789abcdef0123456789abcdef"
NOW = 1_800_000_000.0


# A real running job record from squeue --json (Slurm 22.05.8), as a template.
TEMPLATE = next(
    j for j in json.loads((FIXTURES / "slurm" / "squeue-22.05.8-mixed.json").read_text())["jobs"] if j["job_id"] == 8
)


def running(job_id: str, allocation: list[tuple[str, int]], user: str = "ada", name: str = "sim") -> SlurmJob:
    raw = {**TEMPLATE, "job_id": int(job_id), "job_state": "RUNNING", "user_name": user, "name": name}
    raw["job_resources"] = {
        "allocated_nodes": [
            {"nodename": node, "sockets": {"0": {"cores": {str(c): "allocated" for c in range(cores)}}}}
            for node, cores in allocation
        ]
    }
    return parse_job(raw)


def sample(
    node: str, watts: float, at: float = NOW, component: str = "system", source: str = "ipmitool"
) -> PowerSample:
    return PowerSample(source, "system", watts, at, node)


def test_a_push_is_taken_whole_or_refused_with_the_reason() -> None:
    good = {"node": "n1", "samples": [{"source": "rapl", "component": "package-0", "watts": 85.5, "at": NOW}]}
    assert parse_push(good, NOW) == [PowerSample("rapl", "package-0", 85.5, NOW, "n1", True)]
    for bad, why in (
        ([], "JSON object"),
        ({"samples": []}, "'node'"),
        ({"node": "n1", "samples": {}}, "'samples' must be a list"),
        ({"node": "n1", "samples": [{"source": "rapl", "component": "p", "watts": "85", "at": NOW}]}, "'watts'"),
        ({"node": "n1", "samples": [{"source": "rapl", "component": "p", "watts": -1, "at": NOW}]}, "outside"),
        ({"node": "n1", "samples": [{"source": "rapl", "component": "p", "watts": 1, "at": NOW - 3600}]}, "'at'"),
        ({"node": "n1", "samples": [{"source": "", "component": "p", "watts": 1, "at": NOW}]}, "'source'"),
    ):
        with pytest.raises(PushError, match=why):
            parse_push(bad, NOW)


def test_shared_nodes_are_split_by_allocated_cores_and_unmeasured_nodes_give_nothing() -> None:
    a = running("1", [("n1", 3), ("n2", 4)])
    b = running("2", [("n1", 1)])
    c = running("3", [("n3", 2)])  # n3 is not measured
    out = {i.job_id: i for i in attribute([a, b, c], {"n1": 400.0, "n2": 200.0}, 10.0, {"1": 500.0})}
    assert out["1"].joules == pytest.approx((400 * 3 / 4 + 200) * 10)
    assert out["2"].joules == pytest.approx(400 / 4 * 10)
    assert out["1"].estimated_watts == 500.0 and out["2"].estimated_watts is None
    assert "3" not in out


@given(
    watts=st.lists(st.floats(0, 2000), min_size=1, max_size=4),
    cores=st.lists(st.integers(1, 64), min_size=1, max_size=6),
)
def test_attribution_conserves_measured_power(watts: list[float], cores: list[int]) -> None:
    """Every watt of a node that runs jobs goes to exactly those jobs."""
    nodes = {f"n{i}": w for i, w in enumerate(watts)}
    jobs = [running(str(k + 1), [(f"n{k % len(watts)}", c)]) for k, c in enumerate(cores)]
    used = {f"n{k % len(watts)}" for k in range(len(cores))}
    total = sum(i.joules for i in attribute(jobs, nodes, 1.0, {}))
    assert total == pytest.approx(sum(nodes[n] for n in used), abs=1e-6)


def finished(job_id: str, mean_w: float, estimate: float, seconds: float = 600.0) -> JobEnergy:
    return JobEnergy(job_id, "ada", "physics", "sim", estimate, mean_w * seconds, seconds, NOW, NOW, True)


def test_calibration_learns_measured_over_estimate_most_specific_first() -> None:
    factors = calibrate({}, [finished("1", 150.0, 300.0), finished("2", 150.0, 300.0)])
    assert Calibration(factors).factor("ada", "physics", "sim") == 1.0  # 2 jobs: not yet trusted
    factors = calibrate(factors, [finished("3", 180.0, 300.0), finished("short", 10.0, 300.0, seconds=5.0)])
    assert factors[("user+name", "ada/sim")][1] == 3  # the 5 s job was too short to count
    factor = Calibration(factors).factor("ada", "physics", "sim")
    assert factor == pytest.approx(0.5 + 0.3 * (0.6 - 0.5))
    assert Calibration(factors).factor("ada", "physics", "other") == pytest.approx(factor)  # user-level
    assert Calibration(factors).factor("bob", "physics", "x") == pytest.approx(factor)  # account-level
    assert Calibration(factors).factor("bob", "chem", "x") == 1.0
    wild = calibrate({}, [finished("9", 5000.0, 100.0)])
    assert wild[("user", "ada")][0] == 5.0  # clipped: one broken reading cannot run away


def test_store_folds_raw_samples_into_half_hour_means(tmp_path: Path) -> None:
    with PowerStore(tmp_path / "power.sqlite3") as store:
        slot = int(NOW) // 1800 * 1800
        store.add_samples([sample("n1", w, slot + 60 * i) for i, w in enumerate((100.0, 200.0, 300.0))])
        store.add_samples([sample("n1", 999.0, slot + 1800)])  # next half hour: not folded yet
        assert store.fold(slot + 1800 + 10) == 3
        assert store.halfhours("n1", slot, slot + 3600) == [("n1", "ipmitool", "system", slot, 200.0)]
        store.add_samples([sample("n1", 500.0, slot + 1700)])  # a late sample for a folded slot
        store.fold(slot + 1800)
        assert store.halfhours("n1", slot, slot + 1800)[0][4] == pytest.approx(275.0)
        assert [s.watts for s in store.latest_samples(slot)] == [999.0]


@pytest.fixture
def ingest() -> Iterator[PowerIngest]:
    server = PowerIngest("127.0.0.1:0", TOKEN, max_queued=20)
    server.start()
    yield server
    server.stop()


def test_ingest_takes_authorised_valid_pushes_and_pushes_back_when_full(ingest: PowerIngest) -> None:
    url = f"http://127.0.0.1:{ingest.port}/v1/power"
    body = {"node": "n1", "samples": [{"source": "rapl", "component": "package-0", "watts": 80.0, "at": time.time()}]}
    assert requests.post(url, json=body, timeout=5).status_code == 401
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert requests.post(url, json=body, headers={"Authorization": "Bearer wrong"}, timeout=5).status_code == 401
    bad = requests.post(url, json={"node": "n1", "samples": "x"}, headers=auth, timeout=5)
    assert bad.status_code == 400 and "'samples' must be a list" in bad.json()["error"]
    assert requests.post(url, data=b"{not json", headers=auth, timeout=5).status_code == 400
    statuses = [requests.post(url, json=body, headers=auth, timeout=5).status_code for _ in range(3)]
    assert statuses == [202, 202, 503]  # a queue of 2 pushes (max_queued // 10): the third waits
    assert [s.node for s in ingest.drain()] == ["n1", "n1"]
    assert requests.post(url, json=body, headers=auth, timeout=5).status_code == 202


def test_agent_keeps_what_it_could_not_deliver(ingest: PowerIngest) -> None:
    class Fixed:
        name = "fixed"

        def read(self, now: float) -> list[PowerSample]:
            return [sample("n1", 100.0, now)]

    down = NodeAgent("n1", [Fixed()], "http://127.0.0.1:9", TOKEN, buffer_samples=3, timeout_seconds=1)
    for _ in range(4):
        down.sample(time.time())
    with pytest.raises(PushFailed, match="cannot reach the daemon"):
        down.push()
    assert len(down.buffer) == 3 and down.dropped == 1  # bounded, and the loss is counted
    up = NodeAgent("n1", [Fixed()], f"http://127.0.0.1:{ingest.port}", TOKEN)
    up.buffer.extend(down.buffer)
    assert up.push() == 3 and not up.buffer
    assert len(ingest.drain()) == 3


def test_ledger_attributes_energy_and_calibrates_when_jobs_finish(tmp_path: Path, ingest: PowerIngest) -> None:
    store = PowerStore(tmp_path / "power.sqlite3")
    ledger = PowerLedger(store, ingest=ingest, max_age_seconds=60, max_interval_seconds=600)
    job = running("7", [("n1", 2)])
    for k in range(5):  # 5 cycles of 100 s, the node drawing 240 W, the job estimated at 400 W
        t = NOW + 100 * k
        ingest.offer([sample("n1", 240.0, t)])
        step = ledger.step(t, [job], {"7": 400.0})
        assert step.nodes_measured == 1 and step.cluster_watts == 240.0
    [energy] = store.job_energy()
    assert energy.joules == pytest.approx(240.0 * 400) and energy.mean_watts == pytest.approx(240.0)
    assert not energy.finished
    ledger.step(NOW + 500, [], {})  # the job left the queue
    assert store.job_energy()[0].finished
    assert store.calibration()[("user+name", "ada/sim")] == (pytest.approx(0.6), 1)
    # Stale readings are not current power.
    assert ledger.step(NOW + 700, [dataclasses.replace(job, job_id="8")], {}).nodes_measured == 0
    store.close()


def test_power_report_shows_sources_ages_staleness_and_jobs_against_estimates() -> None:
    samples = [
        PowerSample("rapl", "package-0", 80.0, NOW - 5, "n1"),
        PowerSample("rapl", "dram-0", 10.0, NOW - 5, "n1"),
        PowerSample("rapl", "core-0", 60.0, NOW - 5, "n1", top_level=False),
        PowerSample("ipmitool", "system", 350.0, NOW - 500, "n2"),
        PowerSample("meter", "site", 42_000.0, NOW - 20, "site"),
    ]
    doc = build_power_doc(samples, [finished("5", 150.0, 300.0)], {("user", "ada"): (0.5, 3)}, NOW, 60)
    assert doc["nodes"]["n1"] == {
        "watts": 90.0,
        "sources": ["rapl"],
        "components": {"core-0": 60.0, "dram-0": 10.0, "package-0": 80.0},
        "age_seconds": 5.0,
        "fresh": True,
    }
    assert doc["nodes"]["n2"]["fresh"] is False and doc["cluster_watts"] == 90.0  # stale n2 not counted
    assert doc["site"] == {"watts": 42000.0, "source": "meter", "age_seconds": 20.0}
    assert doc["jobs"][0]["measured_over_estimate"] == 0.5 and doc["jobs"][0]["energy_kwh"] == 0.025
    console = Console(record=True, width=200)
    render_power(doc, console)
    text = console.export_text()
    assert "500 STALE" in text and "Site meter: 42000 W" in text and "0.50" in text
