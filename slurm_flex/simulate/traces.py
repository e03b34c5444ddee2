"""Workload traces for the simulator: Standard Workload Format (Parallel Workloads Archive) and
sacct-style CSV exports.

Both become a :class:`Trace`: per job the submit time (seconds since the trace start), the
actual run time, the requested time limit and processors, plus the machine's size and the
trace's real start time and time zone (so it can be laid over grid data at the same weekday and
time of day).
"""

from __future__ import annotations

import csv
import gzip
import io
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO

import numpy as np
import numpy.typing as npt

from slurm_flex.errors import TraceError


@dataclass(frozen=True)
class Trace:
    name: str
    submit_s: npt.NDArray[np.float64]  # seconds since the trace start
    runtime_s: npt.NDArray[np.float64]
    requested_s: npt.NDArray[np.float64]  # the time limit the user gave (>= 1 s)
    procs: npt.NDArray[np.float64]
    capacity_procs: float
    start_unix: int | None  # the trace's real start (epoch), when known
    timezone: str | None  # e.g. "Europe/Stockholm"
    # Who submitted each job (SWF user number; sacct user name's index), for run-time prediction.
    user: npt.NDArray[np.int64] | None = None

    @property
    def n_jobs(self) -> int:
        return int(self.submit_s.shape[0])

    def window(self, first_day: float, days: float) -> Trace:
        """The jobs submitted in [first_day, first_day + days) days, times re-based to it."""
        lo, hi = first_day * 86400, (first_day + days) * 86400
        keep = (self.submit_s >= lo) & (self.submit_s < hi)
        return Trace(
            self.name,
            self.submit_s[keep] - lo,
            self.runtime_s[keep],
            self.requested_s[keep],
            self.procs[keep],
            self.capacity_procs,
            None if self.start_unix is None else int(self.start_unix + lo),
            self.timezone,
            None if self.user is None else self.user[keep],
        )


def _open_text(path: Path) -> IO[str]:
    if not path.is_file():
        raise TraceError(f"trace {path} does not exist")
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="replace")
    return path.open(encoding="utf-8", errors="replace")


_HEADER = re.compile(r"^;\s*(\w+):\s*(.*?)\s*$")


def read_swf(path: Path) -> Trace:
    """Read an SWF trace (optionally .gz). Jobs without a positive run time or processor count
    are skipped (cancelled before starting); a missing time limit becomes the run time."""
    header: dict[str, str] = {}
    rows: list[list[float]] = []
    with _open_text(path) as fh:
        for lineno, line in enumerate(fh, 1):
            if line.startswith(";"):
                m = _HEADER.match(line)
                if m and m.group(1) not in header:
                    header[m.group(1)] = m.group(2)
                continue
            fields = line.split()
            if not fields:
                continue
            if len(fields) < 18:
                raise TraceError(f"{path}:{lineno}: SWF needs 18 fields, found {len(fields)}")
            try:
                rows.append([float(f) for f in fields[:18]])
            except ValueError as exc:
                raise TraceError(f"{path}:{lineno}: not a number in {line.strip()[:80]!r}") from exc
    if not rows:
        raise TraceError(f"{path}: no jobs")
    a = np.asarray(rows)
    submit, runtime, alloc, req_procs, req_time = a[:, 1], a[:, 3], a[:, 4], a[:, 7], a[:, 8]
    procs = np.where(alloc > 0, alloc, req_procs)
    keep = (runtime > 0) & (procs > 0) & (submit >= 0)
    requested = np.where(req_time > 0, np.maximum(req_time, runtime), runtime)
    capacity = float(header.get("MaxProcs", "0") or 0) or float(procs[keep].max())
    keep &= procs <= capacity
    start = header.get("UnixStartTime")
    return Trace(
        name=path.name.split(".swf")[0],
        submit_s=submit[keep] - submit[keep].min(),
        runtime_s=runtime[keep],
        requested_s=requested[keep],
        procs=procs[keep],
        capacity_procs=capacity,
        start_unix=int(float(start)) + int(submit[keep].min()) if start else None,
        timezone=header.get("TimeZoneString") or None,
        user=a[keep, 11].astype(np.int64),
    )


def _parse_when(text: str, where: str) -> float:
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError as exc:
        raise TraceError(f"{where}: unreadable time {text!r}") from exc


def read_sacct_csv(path: Path, capacity_procs: float | None = None) -> Trace:
    """Read a sacct-style CSV with columns submit_time, start_time/end_time or run_time,
    wallclock_req (s) and processors_req (as in NREL's Eagle export). Times without a zone are
    taken as UTC."""
    with _open_text(path) as fh:
        reader = csv.DictReader(fh)
        needed = {"submit_time", "run_time", "wallclock_req", "processors_req"}
        missing = needed - set(reader.fieldnames or ())
        if missing:
            raise TraceError(f"{path}: missing columns {sorted(missing)} (have {reader.fieldnames})")
        rows = []
        for record in reader:
            where = f"{path}:{reader.line_num}"
            try:
                runtime = float(record["run_time"] or 0)
                procs = float(record["processors_req"] or 0)
                req = float(record["wallclock_req"] or 0)
            except ValueError as exc:
                raise TraceError(f"{where}: not a number") from exc
            if runtime <= 0 or procs <= 0:
                continue
            rows.append((_parse_when(record["submit_time"] + "+00:00", where), runtime, max(req, runtime), procs))
    if not rows:
        raise TraceError(f"{path}: no jobs with a run time")
    a = np.asarray(rows)
    order = np.argsort(a[:, 0], kind="stable")
    a = a[order]
    t0 = a[0, 0]
    capacity = capacity_procs or float(a[:, 3].max())
    return Trace(path.name.split(".csv")[0], a[:, 0] - t0, a[:, 1], a[:, 2], a[:, 3], capacity, int(t0), "UTC")


def read_trace(path: Path, capacity_procs: float | None = None) -> Trace:
    name = path.name.lower()
    if ".swf" in name:
        trace = read_swf(path)
        if capacity_procs:
            keep = trace.procs <= capacity_procs
            trace = Trace(
                trace.name,
                trace.submit_s[keep],
                trace.runtime_s[keep],
                trace.requested_s[keep],
                trace.procs[keep],
                capacity_procs,
                trace.start_unix,
                trace.timezone,
            )
        return trace
    if ".csv" in name:
        return read_sacct_csv(path, capacity_procs)
    raise TraceError(f"{path}: unknown trace format (use .swf[.gz] or a sacct-style .csv)")
