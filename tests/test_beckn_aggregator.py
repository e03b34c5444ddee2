"""The cluster as aggregator (BAP) against a utility publishing its need (the devkit's roles),
all real processes on loopback: `slurmflex beckn serve` (our callbacks), the utility
(`slurmflex beckn grid-agent --publish-need`) and `slurmflex beckn aggregate`. The need is
answered with what the queue can deliver, confirmed, carried out by the daemon's store, and the
performance report goes to the utility as an `update` when the event is over."""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import replace
from pathlib import Path

from slurm_flex.beckn import contract as shapes
from slurm_flex.beckn.keys import write_keypair
from slurm_flex.beckn.store import BecknStore
from slurm_flex.grid.series import SLOT_SECONDS, iso_utc
from tests.test_beckn_endpoint import SLURMFLEX, write_plan_input
from tests.test_beckn_protocol import free_port, wait_port

REPO = Path(__file__).resolve().parent.parent


def _requests(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def test_aggregator_answers_a_published_need(tmp_path: Path) -> None:
    cluster_pub = write_keypair(tmp_path / "cluster")
    utility_pub = write_keypair(tmp_path / "utility")
    port, utility_port = free_port(), free_port()
    utility_url = f"http://127.0.0.1:{utility_port}"
    (tmp_path / "trust-cluster.json").write_text(
        json.dumps([{"subscriber_id": "utility.local", "key_id": "k1", "public_key": utility_pub, "uri": utility_url}])
    )
    (tmp_path / "trust-utility.json").write_text(
        json.dumps(
            [
                {
                    "subscriber_id": "hpc.local",
                    "key_id": "k1",
                    "public_key": cluster_pub,
                    "uri": f"http://127.0.0.1:{port}",
                }
            ]
        )
    )
    state = tmp_path / "state"
    slot0 = write_plan_input(state)  # two 1 kW flexible jobs planned into slots 2-3
    conf = tmp_path / "slurmflex.toml"
    conf.write_text(
        f"""[daemon]
state_dir = "{state}"
[ledger]
enabled = false
[beckn]
listen = "127.0.0.1:{port}"
subscriber_id = "hpc.local"
private_key_file = "{tmp_path / "cluster" / "signing.key"}"
trust_file = "{tmp_path / "trust-cluster.json"}"
[policy]
min_saving_fraction = 0.0
arrival_reserve = false
plan_runtime = "limit"
solver = "fast"
"""
    )
    env = {**os.environ, "SLURMFLEX_CONFIG": str(conf)}
    log = tmp_path / "utility.jsonl"
    serve = subprocess.Popen([SLURMFLEX, "beckn", "serve"], env=env, stderr=(tmp_path / "serve.log").open("w"))
    utility = subprocess.Popen(
        [
            SLURMFLEX,
            "beckn",
            "grid-agent",
            "--subscriber-id",
            "utility.local",
            "--key",
            str(tmp_path / "utility" / "signing.key"),
            "--trust",
            str(tmp_path / "trust-utility.json"),
            "--listen",
            f"127.0.0.1:{utility_port}",
            "--start",
            iso_utc(slot0 + 2 * SLOT_SECONDS),
            "--interval-seconds",
            "1800",
            "--kw",
            "3,1",
            "--publish-need",
            str(log),
        ],
        cwd=REPO,
    )
    try:
        wait_port(port)
        wait_port(utility_port)
        out = subprocess.run(
            [SLURMFLEX, "beckn", "aggregate", "--bpp-url", utility_url, "--bpp-id", "utility.local", "--timeout", "20"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        steps = [json.loads(line) for line in out.stdout.splitlines()]
        assert [s["step"] for s in steps] == ["on_discover", "on_select", "on_init", "on_confirm"]
        assert steps[0]["need_kw"] == [3.0, 1.0]
        assert steps[-1]["offered_kw"] == [2.0, 1.0]  # the queue has 2 kW to move in slot 2: no more is offered
        store = BecknStore(state)
        contract = store.contract(steps[-1]["contract"])
        assert contract is not None and contract.role == "bap" and contract.status == "ACTIVE"
        assert contract.counterparty == "utility.local" and contract.offered == (2.0, 1.0)
        deadline = time.monotonic() + 10
        got: dict[str, dict[str, object]] = {}
        while time.monotonic() < deadline and "confirm" not in got:  # the utility logs every half-second
            got = {r["context"]["action"]: r for r in _requests(log)}  # type: ignore[misc]
            time.sleep(0.1)
        assert set(got) >= {"discover", "select", "init", "confirm"}
        confirm = got["confirm"]["message"]["contract"]  # type: ignore[index]
        series = confirm["commitments"][0]["commitmentAttributes"]
        assert shapes._column(series, "CAPACITY_OFFERED") == [2.0, 1.0]
        seller = [i for i in confirm["commitments"][0]["offer"]["offerAttributes"]["inputs"] if i["role"] == "seller"]
        assert seller[0]["participantId"] == "hpc.local"
        # the event is over (moved into the past here): the report goes to the utility as an update
        store.put_contract(replace(contract, window_start=slot0 - 2 * SLOT_SECONDS))
        deadline = time.monotonic() + 20
        updates: list[dict[str, object]] = []
        while time.monotonic() < deadline and not updates:
            updates = [r for r in _requests(log) if r["context"]["action"] == "update"]  # type: ignore[index]
            time.sleep(0.2)
        assert updates, (tmp_path / "serve.log").read_text()[-2000:]
        report = updates[0]["message"]["contract"]  # type: ignore[index]
        assert report["status"] == {"code": "COMPLETE"}
        assert report["performance"][0]["performanceAttributes"]["@type"] == "DemandFlexPerformance"
        assert updates[0]["_signature_lines"] == 3
        # the utility's on_update came back, its 4-line signature checked against our update
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and store.inbox_find("on_update", updates[0]["context"]["messageId"]) is None:  # type: ignore[index]
            time.sleep(0.2)
        assert store.inbox_find("on_update", updates[0]["context"]["messageId"]) is not None  # type: ignore[index]
    finally:
        for p in (serve, utility):
            p.terminate()
            p.wait(10)
