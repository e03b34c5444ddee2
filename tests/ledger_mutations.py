"""Every single-record mutation of a ledger's record file, and the record each must be blamed on:
shared by the synthetic-log tests and the daemon-log tests."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import rfc8785

from slurm_flex.ledger.log import segments


def record_lines(ledger_dir: Path) -> tuple[Path, list[bytes]]:
    """The (single) record file and its lines."""
    ((_, path),) = segments(ledger_dir)
    return path, path.read_bytes().split(b"\n")[:-1]


def _edit(line: bytes, key: str) -> bytes:
    """Change one field of a record, keeping it canonical JSON (so only the hashes can tell)."""
    obj = json.loads(line)
    if key == "data":
        obj["data"]["tampered"] = True
    elif key == "time":
        obj["time"] = obj["time"].replace("20", "19", 1)
    elif key == "prev":
        obj["prev"] = "A" * 43 + "="
    elif key == "i":
        obj["i"] += 1
    return bytes(rfc8785.dumps(obj))


def mutations(lines: list[bytes]) -> Iterator[tuple[str, list[bytes], int]]:
    """(description, mutated lines, index of the record verification must name)."""
    n = len(lines)
    for k in range(n):
        for key in ("data", "time", "prev", "i"):
            if key == "prev" and k == 0:
                continue
            yield f"change {key} of record {k}", [*lines[:k], _edit(lines[k], key), *lines[k + 1 :]], k
        yield f"drop record {k}", [*lines[:k], *lines[k + 1 :]], k
        yield f"duplicate record {k}", [*lines[: k + 1], lines[k], *lines[k + 1 :]], k + 1
        if k + 1 < n:
            yield f"swap records {k} and {k + 1}", [*lines[:k], lines[k + 1], lines[k], *lines[k + 2 :]], k
        yield f"truncate from record {k}", lines[:k], k
        cut = lines[k][: len(lines[k]) // 2]
        yield f"tear record {k} (crash mid-write)", [*lines[:k], cut], k


def write(path: Path, lines: list[bytes]) -> None:
    """Lines back into a file; a torn last line (the tear mutation) keeps no newline."""
    body = b"".join(line + b"\n" for line in lines)
    if lines and not lines[-1].endswith(b"}"):
        body = body[:-1]
    path.write_bytes(body)
