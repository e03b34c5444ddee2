"""Slurm backends: how the daemon reads the queue and moves start times.

The default backend drives Slurm's own commands (one ``squeue --json`` and one ``sinfo -N --json``
per cycle, one ``scontrol update`` per distinct target start time). Backends register by name so
an optional one (pyslurm) can be added without touching the daemon.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import structlog

from slurm_flex.errors import SlurmCommandError, SlurmError, SlurmUnavailableError
from slurm_flex.slurm.parsers import (
    SlurmJob,
    SlurmNode,
    parse_sinfo_json,
    parse_squeue_json,
    parse_update_failures,
)
from slurm_flex.slurm.runner import SlurmRunner

log = structlog.get_logger(__name__)

# One scontrol command per distinct value; only a huge batch is split, to keep the command line
# far below ARG_MAX (20,000 ids are about 150 KB).
MAX_IDS_PER_UPDATE = 20000

#: A target start time: an epoch, or None meaning "now" (release).
StartTarget = int | None


@dataclass(frozen=True)
class UpdateReport:
    """What a batch of start-time changes did."""

    applied: tuple[str, ...] = ()
    failed: Mapping[str, str] = field(default_factory=dict)
    commands: int = 0


class SlurmBackend(Protocol):
    def read_jobs(self) -> tuple[SlurmJob, ...]: ...

    def read_nodes(self) -> tuple[SlurmNode, ...]: ...

    def set_start_times(self, targets: Mapping[str, StartTarget]) -> UpdateReport: ...

    def set_comments(self, comments: Mapping[str, str]) -> UpdateReport: ...

    def set_priorities(self, priorities: Mapping[str, int]) -> UpdateReport: ...

    def command_counts(self) -> Mapping[str, int]: ...

    def read_output(self, argv: Sequence[str]) -> str:
        """Stdout of another read-only Slurm command (e.g. node energy), run, timed and
        counted like the others."""
        ...


def update_batches(values: Mapping[str, str]) -> list[tuple[str, list[str]]]:
    """How a batch of updates becomes scontrol commands: one per distinct value (in value
    order), a huge one split into chunks of MAX_IDS_PER_UPDATE ids."""
    by_value: dict[str, list[str]] = defaultdict(list)
    for job_id, value in values.items():
        by_value[value].append(job_id)
    return [
        (value, ids[start : start + MAX_IDS_PER_UPDATE])
        for value, ids in sorted(by_value.items())
        for start in range(0, len(ids), MAX_IDS_PER_UPDATE)
    ]


def start_time_values(targets: Mapping[str, StartTarget]) -> dict[str, str]:
    """StartTime values as scontrol takes them ("now" for a release)."""
    return {job_id: "now" if t is None else format_start_time(t) for job_id, t in targets.items()}


def priority_values(priorities: Mapping[str, int]) -> dict[str, str]:
    return {job_id: str(int(p)) for job_id, p in priorities.items()}


def format_start_time(epoch: int) -> str:
    """StartTime as scontrol parses it; the runner pins TZ=UTC, so format in UTC."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch))


class CommandBackend:
    """Backend over Slurm's command-line tools through one :class:`SlurmRunner`."""

    def __init__(self, runner: SlurmRunner) -> None:
        self.runner = runner

    def read_jobs(self) -> tuple[SlurmJob, ...]:
        return parse_squeue_json(self.runner.run(["squeue", "--json"]).stdout)

    def read_nodes(self) -> tuple[SlurmNode, ...]:
        # -N: one record per node and partition. 22.05 lists nodes either way; 24.05+ otherwise
        # groups nodes and sums their allocated CPUs over the group.
        return parse_sinfo_json(self.runner.run(["sinfo", "-N", "--json"]).stdout)

    def read_output(self, argv: Sequence[str]) -> str:
        return self.runner.run(argv).stdout

    def set_start_times(self, targets: Mapping[str, StartTarget]) -> UpdateReport:
        """One ``scontrol update`` per distinct start time (None: now)."""
        return self._update("StartTime", start_time_values(targets))

    def set_comments(self, comments: Mapping[str, str]) -> UpdateReport:
        """One ``scontrol update`` per distinct comment."""
        return self._update("Comment", comments)

    def set_priorities(self, priorities: Mapping[str, int]) -> UpdateReport:
        """One ``scontrol update`` per distinct priority (an operator's or SlurmUser's right)."""
        return self._update("Priority", priority_values(priorities))

    def _update(self, field_name: str, values: Mapping[str, str]) -> UpdateReport:
        applied: list[str] = []
        failed: dict[str, str] = {}
        commands = 0
        for value, chunk in update_batches(values):
            commands += 1
            try:
                self.runner.run(["scontrol", "update", f"JobId={','.join(chunk)}", f"{field_name}={value}"])
                applied.extend(chunk)
            except SlurmCommandError as exc:
                per_job = parse_update_failures(exc.stderr)
                if not per_job or isinstance(exc, SlurmUnavailableError):
                    # Nothing attributable to single jobs (controller down, bad syntax):
                    # let the caller count it and retry next cycle.
                    raise
                failed.update(per_job)
                applied.extend(j for j in chunk if j not in per_job)
        return UpdateReport(applied=tuple(applied), failed=failed, commands=commands)

    def command_counts(self) -> Mapping[str, int]:
        return dict(self.runner.calls)


BackendFactory = Callable[[SlurmRunner], SlurmBackend]
BACKENDS: dict[str, BackendFactory] = {"commands": CommandBackend}


def make_backend(
    name: str,
    *,
    bin_dir: Path | None = None,
    slurm_conf: Path | None = None,
    chroot: Path | None = None,
    timeout_seconds: float = 30.0,
) -> SlurmBackend:
    try:
        factory = BACKENDS[name]
    except KeyError as exc:
        raise SlurmError(f"unknown Slurm backend {name!r}; known: {', '.join(sorted(BACKENDS))}") from exc
    return factory(SlurmRunner(bin_dir=bin_dir, slurm_conf=slurm_conf, chroot=chroot, timeout_seconds=timeout_seconds))
