"""Starting and stopping the SunSpec battery simulator (tests.sunspec_battery) for a test."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def sunspec_battery(*args: str) -> Iterator[int]:
    """A simulated SunSpec battery in its own process on a free loopback port (its options as
    in tests/sunspec_battery.py); yields the port once it listens, stops it after."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.sunspec_battery", str(port), *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until it listens (or exits)
        assert line.strip() == f"ready {port}", f"simulator did not start: {line!r}"
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)
