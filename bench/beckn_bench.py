"""Signed Beckn requests per second against `slurmflex beckn serve` on loopback, with p50/p99
latency: each request is freshly signed (Ed25519 over BLAKE2b-512) by the client, verified by
the endpoint (trust, skew, digest, schema, replay cache) and answered with a signed NACK/ACK.

The request is a `status` for an unknown contract: it passes every check the gate makes (so the
whole verification path is timed) and is refused by the handler with 404, so no planning is
timed. Results: bench/results/beckn.txt.

    .venv/bin/python bench/beckn_bench.py [--requests 2000] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from slurm_flex.beckn import contract as shapes
from slurm_flex.beckn.keys import read_private_key, write_keypair
from slurm_flex.beckn.signing import Signer

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def run(url: str, signer: Signer, n: int, concurrency: int) -> list[float]:
    latencies: list[float] = []
    status_contract = shapes.need_contract(
        buyer_id="g",
        resource_id="r",
        window_start=1800 * 1000000,
        requested=[1.0],
        price=0.1,
        penalty=0.1,
        currency="GBP",
        seller_id=None,
    )
    async with httpx.AsyncClient(timeout=30) as client:
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(n):
            queue.put_nowait(i)

        async def worker() -> None:
            while not queue.empty():
                queue.get_nowait()
                ctx = shapes.context(
                    "status",
                    request=None,
                    bap_id="g",
                    bap_uri="http://127.0.0.1:9",
                    bpp_id="c",
                    bpp_uri=url,
                    transaction_id=str(uuid.uuid4()),
                    network_id="n",
                )
                body = json.dumps(
                    {
                        "context": ctx,
                        "message": {"contract": {"id": "none", "commitments": status_contract["commitments"]}},
                    },
                    separators=(",", ":"),
                ).encode()
                t0 = time.perf_counter()
                now = int(time.time())
                header = signer.sign(body, now, now + 60)
                resp = await client.post(f"{url}/status", content=body, headers={"Authorization": header.value()})
                latencies.append(time.perf_counter() - t0)
                assert resp.status_code == 404, resp.text

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "beckn.txt")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        write_keypair(tmp / "c")
        gpub = write_keypair(tmp / "g")
        port = free_port()
        (tmp / "trust.json").write_text(
            json.dumps([{"subscriber_id": "g", "key_id": "k1", "public_key": gpub, "uri": "http://127.0.0.1:9"}])
        )
        (tmp / "c.toml").write_text(
            f'[daemon]\nstate_dir = "{tmp / "state"}"\nlog_level = "warning"\n[ledger]\nenabled = false\n'
            f'[beckn]\nlisten = "127.0.0.1:{port}"\nsubscriber_id = "c"\n'
            f'private_key_file = "{tmp / "c" / "signing.key"}"\n'
            f'trust_file = "{tmp / "trust.json"}"\n'
        )
        env = {**os.environ, "SLURMFLEX_CONFIG": str(tmp / "c.toml")}
        server = subprocess.Popen(
            [sys.executable, "-m", "slurm_flex.cli", "beckn", "serve"], env=env, stderr=subprocess.DEVNULL
        )
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    time.sleep(0.1)
            signer = Signer("g", "k1", read_private_key(tmp / "g" / "signing.key"))
            asyncio.run(run(f"http://127.0.0.1:{port}", signer, 100, 4))  # warm-up
            t0 = time.perf_counter()
            lat = asyncio.run(run(f"http://127.0.0.1:{port}", signer, args.requests, args.concurrency))
            wall = time.perf_counter() - t0
        finally:
            server.terminate()
            server.wait(10)
    lat.sort()
    p50 = statistics.median(lat) * 1000
    p99 = lat[int(0.99 * (len(lat) - 1))] * 1000
    text = (
        f"Beckn endpoint, signed requests on loopback ({platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} cores shared, one uvicorn worker)\n"
        f"requests: {len(lat)}, concurrency: {args.concurrency}\n"
        f"throughput: {len(lat) / wall:.0f} signed requests/s (verify + schema + replay cache + signed NACK)\n"
        f"latency: p50 {p50:.1f} ms, p99 {p99:.1f} ms (client signing included)\n"
    )
    args.out.write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
