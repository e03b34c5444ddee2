#!/usr/bin/env python3
"""Can the daemon take 1,000 nodes' power readings per interval without falling behind?

Part 1, the endpoint: 1,000 node pushes (each 2 packages + 2 DRAM + 4 GPUs = 8 samples, as a
node agent sends them) over real HTTP to the daemon's ingest server on 127.0.0.1, from 16
client threads. Part 2, the cycle's share: one PowerLedger.step over those 8,000 samples with
2,000 running jobs spread over the 1,000 nodes (store, node watts, attribution, energy rows).
Repeated for 10 intervals so the store holds some history. Prints wall and CPU figures.

    .venv/bin/python bench/power_ingest.py [--nodes 1000] [--intervals 10]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from slurm_flex.daemon.ingest import PowerIngest
from slurm_flex.logsetup import configure_logging
from slurm_flex.power.ledger import PowerLedger
from slurm_flex.power.store import PowerStore
from slurm_flex.slurm.parsers import parse_job

TOKEN = "bench-token-0123456789abcdef"
COMPONENTS = [("rapl", "package-0"), ("rapl", "package-1"), ("rapl", "dram-0"), ("rapl", "dram-1")] + [
    ("nvidia-smi", f"gpu-{i}") for i in range(4)
]
TEMPLATE = json.loads(
    (Path(__file__).resolve().parents[1] / "tests/fixtures/slurm/squeue-22.05.8-mixed.json").read_text()
)["jobs"][0]


def push_body(node: str, now: float) -> dict[str, object]:
    return {
        "node": node,
        "samples": [
            {"source": src, "component": comp, "watts": random.uniform(20, 300), "at": now, "top_level": True}
            for src, comp in COMPONENTS
        ],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--intervals", type=int, default=10)
    args = ap.parse_args()
    configure_logging("warning", "console")  # the ledger logs a line per step
    nodes = [f"cn{i:04d}" for i in range(args.nodes)]
    base = parse_job({**TEMPLATE, "job_state": "RUNNING"})
    jobs = [
        replace(base, job_id=str(100000 + k), allocation=((nodes[k % len(nodes)], 32),)) for k in range(2 * len(nodes))
    ]
    estimates = {j.job_id: 400.0 for j in jobs}
    ingest = PowerIngest("127.0.0.1:0", TOKEN, max_queued=10 * len(nodes) * len(COMPONENTS))
    ingest.start()
    url = f"http://127.0.0.1:{ingest.port}/v1/power"
    with tempfile.TemporaryDirectory() as tmp:
        store = PowerStore(Path(tmp) / "power.sqlite3")
        ledger = PowerLedger(store, ingest=ingest, max_age_seconds=60)
        sessions: dict[int, requests.Session] = {}

        def push(node: str, now: float) -> int:
            import threading

            s = sessions.setdefault(threading.get_ident(), requests.Session())
            r = s.post(url, json=push_body(node, now), headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
            return r.status_code

        print(f"{len(nodes)} nodes x {len(COMPONENTS)} samples per push, {len(jobs)} running jobs")
        print("interval  push_wall_s  pushes/s  step_wall_s  step_cpu_s  ingested  jobs_attributed")
        pushes_walls, step_walls = [], []
        with ThreadPoolExecutor(16) as pool:
            for k in range(args.intervals):
                now = time.time()
                t0 = time.perf_counter()
                codes = list(pool.map(push, nodes, [now] * len(nodes)))
                push_wall = time.perf_counter() - t0
                assert codes.count(202) == len(nodes), {c: codes.count(c) for c in set(codes)}
                c0, t1 = time.process_time(), time.perf_counter()
                step = ledger.step(now + 1, jobs, estimates)
                step_wall, step_cpu = time.perf_counter() - t1, time.process_time() - c0
                pushes_walls.append(push_wall)
                step_walls.append(step_wall)
                print(
                    f"{k:8d}  {push_wall:11.2f}  {len(nodes) / push_wall:8.0f}  {step_wall:11.3f}  {step_cpu:10.3f}"
                    f"  {step.ingested:8d}  {step.jobs_attributed:15d}"
                )
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        db = (Path(tmp) / "power.sqlite3").stat().st_size / 1e6
        print(
            f"median push of all nodes {sorted(pushes_walls)[len(pushes_walls) // 2]:.2f} s, "
            f"median cycle step {sorted(step_walls)[len(step_walls) // 2]:.3f} s, peak RSS {rss:.0f} MiB, "
            f"store {db:.1f} MB after {args.intervals} intervals"
        )
        ledger.close()


if __name__ == "__main__":
    main()
