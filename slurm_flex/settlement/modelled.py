"""Modelled usage for settlement periods nothing measured: the power model over the jobs the
ledger saw running, plus the idle power of the site's nodes and its other load.

DEG settles on metered data; this is the fallback the issue allows "only where nothing is
measured, and then labelled so": every value here is a :class:`Usage` with basis ``modelled``
and a source saying what went into it, and measured usage always wins over it.

Per period::

    kW = other_watts + sum over [settlement] nodes of the node type's idle watts
       + sum over runs of (the job's estimate - its nodes' idle watts) x (share of the period it ran)

A node's idle power is counted once, whether it runs jobs or not, so jobs sharing a node do not
count it twice; a job's estimate is the one its ``job-started`` record holds (the submit hook's
tag, else the power model on its request). A period is modelled only if a cycle that logged
runs (its ``cycle`` record has ``running``) ended within it: otherwise the daemon was not
watching and the runs are not a complete account of it.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from slurm_flex.errors import LedgerError
from slurm_flex.grid.series import SLOT_SECONDS, floor_slot, parse_iso_utc
from slurm_flex.power.model import PowerModel
from slurm_flex.settlement.compute import MODELLED, Usage
from slurm_flex.settlement.periods import Period


@dataclass(frozen=True)
class Run:
    job: str
    start: int
    end: int | None  # None: still running when the ledger was last written
    dynamic_watts: float  # the job's estimate above its nodes' idle power


@dataclass(frozen=True)
class Observed:
    """What the ledger says ran, and when the daemon was watching."""

    runs: tuple[Run, ...]
    cycles: tuple[int, ...]  # times of ok cycles that logged runs


def from_ledger(records: Iterable[tuple[int, Mapping[str, Any]]], model: PowerModel) -> Observed:
    """Runs from ``job-started`` / ``job-ended`` records (a job's end: Slurm's end time, else the
    last cycle that saw it running), and the cycles that logged them."""
    started: dict[str, tuple[int, float]] = {}
    runs: list[Run] = []
    cycles: list[int] = []
    try:
        for _, rec in records:
            kind, data = rec.get("kind"), rec.get("data", {})
            if kind == "job-started":
                node = model.node_type(str(data.get("partition") or ""))
                idle = int(data.get("node_count") or 1) * node.node_idle_watts
                started[data["job"]] = (parse_iso_utc(data["start"]), max(0.0, float(data["power_w"]) - idle))
            elif kind == "job-ended" and data.get("job") in started:
                start, dynamic = started.pop(data["job"])
                end = parse_iso_utc(data.get("end") or data["last_seen_running"])
                runs.append(Run(data["job"], start, max(start, end), dynamic))
            elif kind == "cycle" and data.get("ok") and data.get("running") is not None:
                cycles.append(parse_iso_utc(rec["time"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise LedgerError(f"a job-started, job-ended or cycle record is not what the daemon writes: {exc}") from exc
    runs.extend(Run(job, start, None, dynamic) for job, (start, dynamic) in started.items())
    return Observed(tuple(runs), tuple(sorted(cycles)))


def idle_watts(nodes: Mapping[str, int], model: PowerModel) -> float:
    """The idle power of the site's nodes ("default": the power model's default node type)."""
    return sum(n * (model.default if name == "default" else model.node_types[name]).node_idle_watts
               for name, n in nodes.items())  # fmt: skip


def modelled_usage(
    periods: Iterable[Period], observed: Observed, idle_w: float, other_w: float
) -> dict[datetime, Usage]:
    """Modelled usage of each period the daemon watched (by period start)."""
    wanted = sorted(periods, key=lambda p: p.start)
    if not wanted:
        return {}
    # Settlement periods are whole UTC half hours, so each run and cycle is bucketed once (a
    # site's 60 days of runs against 2,900 periods would otherwise be a long product).
    first, last = int(wanted[0].start.timestamp()), int(wanted[-1].end.timestamp())
    watching = Counter(floor_slot(t) for t in observed.cycles if first <= t < last)
    jobs_w: dict[int, float] = defaultdict(float)
    jobs: Counter[int] = Counter()
    for run in observed.runs:
        lo, hi = max(first, run.start), min(last, run.end if run.end is not None else last)
        slot = floor_slot(lo)
        while slot < hi:
            overlap = min(hi, slot + SLOT_SECONDS) - max(lo, slot)
            if overlap > 0:
                jobs_w[slot] += run.dynamic_watts * overlap / SLOT_SECONDS
                jobs[slot] += 1
            slot += SLOT_SECONDS
    out: dict[datetime, Usage] = {}
    for p in wanted:
        slot = int(p.start.timestamp())
        if not watching[slot]:
            continue
        source = (
            f"power model: {jobs[slot]} job runs from the ledger ({jobs_w[slot] / 1000:.3f} kW above idle), "
            f"idle nodes {idle_w / 1000:.3f} kW, other {other_w / 1000:.3f} kW; {watching[slot]} cycles watched"
        )
        out[p.start] = Usage((other_w + idle_w + jobs_w[slot]) / 1000, MODELLED, source)
    return out
