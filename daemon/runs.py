"""Which jobs started and ended since the last cycle, as ledger records (``job-started``,
``job-ended``): the as-run record a certificate's start and modelled settlement usage rest on.

Pure: the cycle passes in what the ledger last recorded as running (a state-store setting, so a
restarted daemon does not log a start twice) and the jobs squeue shows now, and gets back the
records to append and what is running now. The cycle saves that only once the records are in
the ledger, so a cycle whose ledger write failed logs its starts and ends again next time.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from slurm_flex.errors import StateError
from slurm_flex.ledger import events
from slurm_flex.slurm.parsers import SlurmJob

# The state-store setting holding the jobs the ledger has logged as running and not yet ended.
RUNNING_SETTING = "ledger.running"


@dataclass(frozen=True)
class Running:
    user: str
    start: int
    last_running: int  # the last cycle that saw the job running


def load(text: str | None) -> dict[str, Running]:
    if not text:
        return {}
    try:
        return {job: Running(str(u), int(s), int(last)) for job, (u, s, last) in json.loads(text).items()}
    except (ValueError, TypeError) as exc:
        raise StateError(f"setting {RUNNING_SETTING} is not what the daemon writes: {exc}") from exc


def dump(running: Mapping[str, Running]) -> str:
    return json.dumps({job: [r.user, r.start, r.last_running] for job, r in sorted(running.items())})


def observe(
    previous: Mapping[str, Running],
    jobs: Iterable[SlurmJob],
    now: int,
    power_w: Callable[[SlurmJob], float],
) -> tuple[list[events.Entry], dict[str, Running]]:
    """Records for the jobs running now that were not before (``job-started``, with squeue's
    start time) and for those running before that are not now (``job-ended``), and the jobs
    running now. Only ``RUNNING`` counts, as for the runtime history (StateStore.observe_running)."""
    listed = {j.update_id: j for j in jobs}
    entries: list[events.Entry] = []
    running: dict[str, Running] = {}
    for job_id, job in listed.items():
        if job.state != "RUNNING":
            continue
        before = previous.get(job_id)
        if before is None:
            start = job.start_time if job.start_time else now
            nodes = tuple(node for node, _ in job.allocation)
            entries.append(events.job_started(job_id, job.user, job.partition, start, nodes, job.nodes, power_w(job)))
            before = Running(job.user, start, now)
        running[job_id] = Running(before.user, before.start, now)
    for job_id, was in sorted(previous.items()):
        if job_id in running:
            continue
        still = listed.get(job_id)
        state = still.state if still is not None else None
        end = still.end_time if still is not None and still.end_time else None
        entries.append(events.job_ended(job_id, was.user, was.start, was.last_running, now, state, end))
    return entries, running
