#!/usr/bin/env python3
"""Cost of the ledger: appending 100,000 records and verifying them.

    .venv/bin/python bench/ledger_bench.py [--records N] [--dir DIR]

Appends N action-like records (about 300 bytes each, like the daemon's) in batches of 50, as a
cycle does (one write and one fsync per batch, then a signed checkpoint: N/50 checkpoints);
then single appends (one fsync each) for the per-record floor; then reopens the log (what the
daemon does at start), verifies all of it (``slurmflex audit verify``), and makes an inclusion
proof. The disk is the one under --dir (default: a temporary directory). Figures only.
"""

from __future__ import annotations

import argparse
import base64
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

from slurm_flex.ledger.log import Ledger, prove, verify
from slurm_flex.ledger.merkle import leaf_hash, verify_inclusion
from slurm_flex.ledger.note import Verifier

BATCH = 50


def record(k: int) -> tuple[str, dict[str, object]]:
    return "action", {
        "cycle": k // BATCH,
        "job": str(1_000_000 + k),
        "old_begin": "2026-11-30T10:00:00Z",
        "new_begin": "2026-11-30T14:30:00Z",
        "kind": "defer",
        "reason": "cleaner window 14:30-15:30 (62 g/kWh vs 231 now) before the deadline",
        "outcome": "applied",
    }


def timed(label: str, fn, n: int | None = None):  # type: ignore[no-untyped-def]
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    out = fn()
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    rate = f", {n / wall:,.0f} records/s, {wall / n * 1e6:,.1f} us/record" if n else ""
    print(f"{label}: {wall:.2f} s wall, {cpu:.2f} s CPU{rate}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--single", type=int, default=2_000, help="single appends (one fsync each) to time")
    ap.add_argument("--dir", type=Path, default=None)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="ledger-bench-", dir=args.dir))
    directory, key = base / "ledger", base / "ledger.key"
    ledger = Ledger.open(directory, key, "bench.example/slurm-flex")
    n = args.records

    def batched() -> None:
        for start in range(0, n, BATCH):
            ledger.append_many([record(k) for k in range(start, min(n, start + BATCH))])
            ledger.checkpoint()

    timed(f"append {n:,} records in batches of {BATCH} + a signed checkpoint per batch", batched, n)

    def single() -> None:
        for k in range(args.single):
            ledger.append(*record(n + k))
        ledger.checkpoint()

    timed(f"append {args.single:,} records one at a time (one fsync each)", single, args.single)
    total = n + args.single
    size = sum(p.stat().st_size for p in directory.iterdir() if p.is_file())
    print(f"on disk: {size / 1e6:.1f} MB for {total:,} records and {n // BATCH + 1:,} checkpoints", flush=True)
    timed("reopen (rebuild the tree from the files, as at daemon start)",
          lambda: Ledger.open(directory, key, "bench.example/slurm-flex"), total)  # fmt: skip
    verifier = Verifier.parse((directory / "site.vkey").read_text())
    done = timed("verify everything (slurmflex audit verify)", lambda: verify(directory, verifier), total)
    print(f"verified: {done.records:,} records, {done.checkpoints:,} checkpoints", flush=True)
    proof = timed("inclusion proof of a record (slurmflex audit prove, verifies the log first)",
                  lambda: prove(directory, verifier, total // 2))  # fmt: skip
    cp_lines = proof.checkpoint.split("\n")
    t0 = time.perf_counter()
    verify_inclusion(leaf_hash(proof.record), proof.index, int(cp_lines[1]), proof.proof, base64.b64decode(cp_lines[2]))
    print(f"checking that proof offline: {(time.perf_counter() - t0) * 1e6:.0f} us, {len(proof.proof)} hashes")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    fs = os.statvfs(base)
    print(f"(filesystem block size {fs.f_bsize}, under {base.parent})")
    shutil.rmtree(base)


if __name__ == "__main__":
    main()
