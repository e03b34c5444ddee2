"""The callback outbox is durable: a callback owed while the counterparty is down is retried
with backoff, survives the endpoint being killed (-9) and restarted, and is delivered once the
counterparty is back; a callback whose ttl runs out is given up, not retried forever."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import httpx

from slurm_flex.beckn import contract as shapes
from slurm_flex.beckn.keys import read_private_key, write_keypair
from slurm_flex.beckn.signing import Signer
from slurm_flex.beckn.store import BecknStore
from tests.test_beckn_endpoint import SLURMFLEX, write_plan_input
from tests.test_beckn_protocol import free_port, wait_port

REPO = Path(__file__).resolve().parent.parent


def _start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, env=env, cwd=REPO, stderr=log.open("a"))


def test_callbacks_survive_a_killed_endpoint(tmp_path: Path) -> None:
    write_keypair(tmp_path / "cluster")
    grid_pub = write_keypair(tmp_path / "grid")
    cluster_pub = (tmp_path / "cluster" / "signing.pub").read_text().strip()
    port, agent_port = free_port(), free_port()
    my_url = f"http://127.0.0.1:{agent_port}"
    (tmp_path / "trust-cluster.json").write_text(
        json.dumps([{"subscriber_id": "grid", "key_id": "k1", "public_key": grid_pub, "uri": my_url}])
    )
    (tmp_path / "trust-grid.json").write_text(
        json.dumps(
            [{"subscriber_id": "hpc", "key_id": "k1", "public_key": cluster_pub, "uri": f"http://127.0.0.1:{port}"}]
        )
    )
    state = tmp_path / "state"
    write_plan_input(state)
    conf = tmp_path / "c.toml"
    conf.write_text(
        f'[daemon]\nstate_dir = "{state}"\n[ledger]\nenabled = false\n[beckn]\nlisten = "127.0.0.1:{port}"\n'
        f'subscriber_id = "hpc"\nprivate_key_file = "{tmp_path / "cluster" / "signing.key"}"\n'
        f'trust_file = "{tmp_path / "trust-cluster.json"}"\n[policy]\nsolver = "fast"\n'
    )
    env = {**os.environ, "SLURMFLEX_CONFIG": str(conf)}
    serve_argv = [SLURMFLEX, "beckn", "serve"]
    server = _start(serve_argv, env, tmp_path / "serve.log")
    signer = Signer("grid", "k1", read_private_key(tmp_path / "grid" / "signing.key"))
    receiver = None
    try:
        wait_port(port)
        # the counterparty is down: a discover is ACKed, its on_discover cannot be delivered
        ctx = shapes.context(
            "discover",
            request=None,
            bap_id="grid",
            bap_uri=my_url,
            bpp_id="hpc",
            bpp_uri=f"http://127.0.0.1:{port}",
            transaction_id=str(uuid.uuid4()),
            network_id="n",
        )
        body = json.dumps(
            {"context": ctx, "message": {"intent": {"filters": {"type": "jsonpath", "expression": "$"}}}}
        ).encode()
        now = int(time.time())
        header = signer.sign(body, now, now + 300)
        resp = httpx.post(f"http://127.0.0.1:{port}/discover", content=body, headers={"Authorization": header.value()})
        assert resp.status_code == 200, resp.text
        store = BecknStore(state)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(r["attempts"] >= 2 for r in store.outbox_rows()):
            time.sleep(0.2)
        (row,) = store.outbox_rows()
        assert row["status"] == "pending" and row["attempts"] >= 2 and "ConnectError" in row["last_error"]
        # the endpoint dies hard and comes back; the counterparty is back too
        server.send_signal(signal.SIGKILL)
        server.wait(10)
        sink = tmp_path / "callbacks.jsonl"
        (tmp_path / "callbacks.jsonl.sent").write_text(
            json.dumps({"messageId": ctx["messageId"], "signature": header.signature}) + "\n"
        )
        receiver = _start(
            [
                SLURMFLEX,
                "beckn",
                "grid-agent",
                "--subscriber-id",
                "grid",
                "--key",
                str(tmp_path / "grid" / "signing.key"),
                "--trust",
                str(tmp_path / "trust-grid.json"),
                "--listen",
                f"127.0.0.1:{agent_port}",
                "--receive-only",
                str(sink),
            ],
            env,
            tmp_path / "agent.log",
        )
        wait_port(agent_port)
        server = _start(serve_argv, env, tmp_path / "serve.log")
        wait_port(port)
        deadline = time.monotonic() + 40  # the backoff may have grown to 8-16 s
        got: list[dict[str, object]] = []
        while time.monotonic() < deadline and not got:
            got = [json.loads(line) for line in sink.read_text().splitlines()] if sink.exists() else []
            time.sleep(0.2)
        assert len(got) == 1 and got[0]["context"]["messageId"] == ctx["messageId"]  # type: ignore[index]
        assert got[0]["_signature_lines"] == 4  # still signed with the request's signature after the restart
        (row,) = store.outbox_rows()
        assert row["status"] == "sent"
    finally:
        for p in (server, receiver):
            if p is not None:
                p.terminate()
                p.wait(10)


def test_a_callback_past_its_ttl_is_given_up(tmp_path: Path) -> None:
    import asyncio

    from slurm_flex.beckn.outbox import Outbox
    from slurm_flex.beckn.trust import StaticTrust

    write_keypair(tmp_path / "k")
    signer = Signer("hpc", "k1", read_private_key(tmp_path / "k" / "signing.key"))
    store = BecknStore(tmp_path)
    now = [1000.0]
    outbox = Outbox(store, signer, StaticTrust([]), 300, clock=lambda: now[0])
    store.enqueue(f"http://127.0.0.1:{free_port()}", "on_select", "m", b"{}", None, give_up_at=1005.0)
    store.db.execute("UPDATE outbox SET next_at = 0")
    for _ in range(4):  # 1 s, 2 s, 4 s: the next wait would pass the ttl
        asyncio.run(outbox.send_due())
        now[0] += 10
        store.db.execute("UPDATE outbox SET next_at = 0 WHERE status = 'pending'")
    (row,) = store.outbox_rows()
    assert row["status"] == "failed" and row["attempts"] <= 4


def test_a_callback_whose_ttl_passed_while_down_is_not_sent(tmp_path: Path) -> None:
    import asyncio

    from slurm_flex.beckn.outbox import Outbox
    from slurm_flex.beckn.trust import StaticTrust

    write_keypair(tmp_path / "k")
    signer = Signer("hpc", "k1", read_private_key(tmp_path / "k" / "signing.key"))
    store = BecknStore(tmp_path)
    outbox = Outbox(store, signer, StaticTrust([]), 300, clock=lambda: 2000.0)
    store.enqueue("http://127.0.0.1:1", "on_select", "m", b"{}", None, give_up_at=1500.0)
    store.db.execute("UPDATE outbox SET next_at = 0")
    asyncio.run(outbox.send_due())
    (row,) = store.outbox_rows()
    assert row["status"] == "failed" and "ttl over" in row["last_error"]
