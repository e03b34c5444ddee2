"""A stateful stand-in for Slurm behind the :class:`~slurm_flex.slurm.backend.SlurmBackend`
interface, so the daemon's cycle can be tested in milliseconds instead of against a cluster.

It keeps jobs (with their begin times, priorities, comments, arrays), nodes and a tiny
scheduler, prints them as Slurm 22.05's ``squeue --json`` and ``sinfo --json`` do (read back
through the real parsers), and answers the way Slurm's commands do through the command backend:

* start times move only for pending jobs; a running job's update fails with Slurm's own
  "Job is no longer pending execution", an unknown id with "Invalid job id specified", and the
  rest of the batch is applied; ``None`` (``StartTime=now``) makes a job eligible now;
* priorities and comments are taken by pending and running jobs alike;
* an array is one pending record addressed as ``<id>_[<tasks>]``;
* one ``scontrol`` is counted per distinct value, one ``squeue``/``sinfo`` per read;
* with the controller down, reads raise :class:`~slurm_flex.errors.SlurmQueryError` (Slurm
  22.05's ``--json`` commands exit 0 with the failure inside) and updates report every job of
  the batch as failed ("Unexpected message received"), as scontrol does.

What it says is what the real cluster says: ``tests/test_slurm_contract.py`` runs the same
scenarios against this fake and against the local cluster.

Faults a test can inject: a per-job failure (:meth:`FakeSlurm.fail_updates`), the controller
down (:attr:`FakeSlurm.down`), and the daemon dying part-way through a batch of updates
(:meth:`FakeSlurm.crash_after`, which raises :class:`FakeCrash`).
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from slurm_flex.errors import SlurmCommandError, SlurmQueryError, SlurmUnavailableError
from slurm_flex.slurm.backend import (
    SlurmBackend,
    StartTarget,
    UpdateReport,
    priority_values,
    start_time_values,
    update_batches,
)
from slurm_flex.slurm.parsers import (
    SlurmJob,
    SlurmNode,
    count_array_tasks,
    first_partition,
    parse_job,
    parse_sinfo_json,
    parse_squeue_json,
)

# Slurm's own words (22.05): what scontrol prints per job, and what each command says while
# the controller cannot be reached (squeue and sinfo --json exit 0 with errors in the JSON;
# scontrol update reports each job of the batch as failed).
NOT_PENDING = "Job is no longer pending execution"
INVALID_JOB = "Invalid job id specified"
DOWN_JOBS = "Failed while looking for jobs / Unspecified error / slurm_load_jobs"
DOWN_NODES = "Unspecified error"
DOWN_UPDATE = "Unexpected message received"
DOWN_SHOW = "slurm_load_node error: Unable to contact slurm controller (connect failure)"
# priority/basic: the first job gets this, each later one one less.
FIRST_PRIORITY = 4294901760


class FakeCrash(BaseException):
    """The daemon died part-way through a batch (a BaseException, like a SIGKILL nothing in
    the daemon catches): the updates before it were made, the rest were not."""


@dataclass
class FakeJob:
    """One job as the fake controller keeps it."""

    job_id: int
    user: str
    account: str
    partition: str
    qos: str
    name: str
    nodes: int
    cpus: int
    time_limit_s: int | None
    runtime_s: float
    submit_time: int
    eligible_time: int
    deadline: int | None
    priority: int
    comment: str
    admin_comment: str
    array_tasks: str = ""
    dependency: str = ""
    tres_per_node: str = ""
    held: bool = False
    state: str = "PENDING"
    start_time: int | None = None
    allocation: tuple[tuple[str, int], ...] = ()
    reason: str = ""

    @property
    def update_id(self) -> str:
        return f"{self.job_id}_[{self.array_tasks}]" if self.array_tasks else str(self.job_id)

    @property
    def end_time(self) -> int | None:
        if self.state == "RUNNING" and self.start_time is not None and self.time_limit_s:
            return self.start_time + self.time_limit_s
        if self.state == "PENDING" and self.time_limit_s:
            return self.eligible_time + self.time_limit_s
        return None

    def squeue_json(self, now: int) -> dict[str, Any]:
        """This job as ``squeue --json`` (Slurm 22.05) prints it."""
        pending = self.state == "PENDING"
        reason = self.reason
        if pending and self.held:
            reason = "JobHeldUser"
        elif pending and self.eligible_time > now:
            reason = "BeginTime"
        # Pending: its begin time while that is ahead; once eligible, unknown (0) until it runs.
        start = (self.start_time or 0) if not pending else (self.eligible_time if self.eligible_time > now else 0)
        return {
            "job_id": self.job_id,
            "array_job_id": self.job_id if self.array_tasks else 0,
            "array_task_id": None,
            "array_task_string": self.array_tasks,
            "user_name": self.user,
            "account": self.account,
            "partition": self.partition,
            "qos": self.qos,
            "job_state": self.state,
            "state_reason": reason or "None",
            "node_count": self.nodes,
            "cpus": self.cpus,
            "tasks": self.cpus,
            "tres_per_node": self.tres_per_node,
            "time_limit": None if self.time_limit_s is None else self.time_limit_s // 60,
            "submit_time": self.submit_time,
            "eligible_time": self.eligible_time,
            "start_time": start,
            "end_time": self.end_time or 0,
            "deadline": self.deadline or 0,
            "priority": 0 if pending and self.held else self.priority,
            "comment": self.comment,
            "admin_comment": self.admin_comment,
            "dependency": self.dependency,
            "name": self.name,
            "job_resources": {
                "allocated_nodes": [
                    {"nodename": node, "sockets": {"0": {"cores": {str(c): "allocated" for c in range(cores)}}}}
                    for node, cores in self.allocation
                ]
            },
        }


@dataclass
class FakeNode:
    name: str
    cpus: int
    partitions: tuple[str, ...]
    flags: tuple[str, ...] = ()
    alloc_cpus: int = 0

    def sinfo_json(self) -> dict[str, Any]:
        """This node as ``sinfo --json`` (Slurm 22.05) prints it."""
        state = "idle" if self.alloc_cpus == 0 else "allocated" if self.alloc_cpus >= self.cpus else "mixed"
        return {
            "name": self.name,
            "state": state,
            "state_flags": list(self.flags),
            "cpus": self.cpus,
            "alloc_cpus": self.alloc_cpus,
            "real_memory": 1000,
            "gres": "",
            "partitions": list(self.partitions),
        }


@dataclass
class _Faults:
    failures: dict[str, str] = field(default_factory=dict)  # job id -> message
    crash_in: int | None = None  # job updates left before the daemon dies


class FakeSlurm:
    """A small Slurm cluster in memory (by default as ``scripts/devcluster`` makes it: four
    nodes of two CPUs in partitions ``debug`` and ``batch``)."""

    def __init__(
        self,
        nodes: int = 4,
        cpus_per_node: int = 2,
        partitions: Sequence[str] = ("debug", "batch"),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.clock = clock
        self.nodes = [FakeNode(f"node{i}", cpus_per_node, tuple(partitions)) for i in range(1, nodes + 1)]
        self.jobs: dict[int, FakeJob] = {}
        self.down = False
        self.node_watts: dict[str, float] = {}  # what Slurm's energy plugin would report
        self._ids = itertools.count(1)
        self._faults = _Faults()
        self._calls: Counter[str] = Counter()

    # -- the cluster's users and admins -----------------------------------------------------
    def now(self) -> int:
        return int(self.clock())

    def submit(
        self,
        *,
        time_limit_s: int | None = 3600,
        runtime_s: float | None = None,
        begin: int | None = None,
        deadline: int | None = None,
        nodes: int = 1,
        cpus: int = 1,
        partition: str = "debug",
        user: str = "root",
        account: str = "",
        qos: str = "normal",
        name: str = "job",
        comment: str = "",
        admin_comment: str = "",
        array: str = "",
        dependency: str = "",
        tres_per_node: str = "",
        held: bool = False,
    ) -> str:
        """Queue a job (as sbatch would, after any submit hook); returns its id."""
        job_id = next(self._ids)
        now = self.now()
        self.jobs[job_id] = FakeJob(
            job_id=job_id,
            user=user,
            account=account,
            partition=partition,
            qos=qos,
            name=name,
            nodes=nodes,
            cpus=max(cpus, nodes),
            time_limit_s=time_limit_s,
            runtime_s=float(time_limit_s or 0) if runtime_s is None else runtime_s,
            submit_time=now,
            eligible_time=max(now, begin or now),
            deadline=deadline,
            priority=FIRST_PRIORITY - job_id,
            comment=comment,
            admin_comment=admin_comment,
            array_tasks=array,
            dependency=dependency,
            tres_per_node=tres_per_node,
            held=held,
        )
        return str(job_id)

    def job(self, job_id: str) -> SlurmJob:
        """A job as squeue shows it now."""
        return parse_job(self._find(job_id).squeue_json(self.now()))

    def schedule(self) -> list[str]:
        """One scheduler pass: finish jobs whose run time is over, then start eligible pending
        jobs in priority order where their CPUs fit (the first that does not fit waits for
        ``Resources``, the rest behind it for ``Priority``). Returns the started ids."""
        now = self.now()
        for job in list(self.jobs.values()):
            if job.state == "RUNNING" and job.start_time is not None and now >= job.start_time + job.runtime_s:
                self._release_nodes(job)
                del self.jobs[job.job_id]
        started: list[str] = []
        blocked = False
        waiting = sorted(
            (j for j in self.jobs.values() if j.state == "PENDING" and not j.held and j.eligible_time <= now),
            key=lambda j: (-j.priority, j.submit_time, j.job_id),
        )
        for job in waiting:
            placed = None if blocked else self._place(job)
            if placed is None:
                job.reason = "Priority" if blocked else "Resources"
                blocked = True
                continue
            self._run(job, placed, now)
            started.append(str(job.job_id))
        return started

    def start(self, job_id: str) -> None:
        """Start one job now, wherever it fits (raises if it does not)."""
        job = self._find(job_id)
        placed = self._place(job)
        if placed is None:
            raise ValueError(f"job {job_id} does not fit on the free CPUs")
        self._run(job, placed, self.now())

    def finish(self, job_id: str) -> None:
        """The job ends and leaves the queue."""
        job = self._find(job_id)
        self._release_nodes(job)
        del self.jobs[job.job_id]

    def drain(self, node: str) -> None:
        next(n for n in self.nodes if n.name == node).flags = ("DRAIN",)

    # -- faults -------------------------------------------------------------------------------
    def fail_updates(self, failures: Mapping[str, str]) -> None:
        """Updates of these jobs fail with these messages (``{}``: none fail any more)."""
        self._faults.failures = dict(failures)

    def crash_after(self, updates: int | None) -> None:
        """The daemon dies after this many more job updates (None: it does not)."""
        self._faults.crash_in = updates

    # -- SlurmBackend -------------------------------------------------------------------------
    def read_jobs(self) -> tuple[SlurmJob, ...]:
        self._calls["squeue"] += 1
        if self.down:
            raise SlurmQueryError(f"squeue --json: Slurm could not answer: {DOWN_JOBS}")
        now = self.now()
        jobs = [j.squeue_json(now) for j in sorted(self.jobs.values(), key=lambda j: j.job_id)]
        return parse_squeue_json(json.dumps({"jobs": jobs}))

    def read_nodes(self) -> tuple[SlurmNode, ...]:
        self._calls["sinfo"] += 1
        if self.down:
            raise SlurmQueryError(f"sinfo --json: Slurm could not answer: {DOWN_NODES}")
        return parse_sinfo_json(json.dumps({"nodes": [n.sinfo_json() for n in self.nodes]}))

    def set_start_times(self, targets: Mapping[str, StartTarget]) -> UpdateReport:
        def begin(job: FakeJob, job_id: str, value: str) -> str | None:
            if job.state != "PENDING":
                return NOT_PENDING
            target = targets[job_id]
            job.eligible_time = self.now() if target is None else int(target)
            job.reason = ""
            return None

        return self._update(start_time_values(targets), begin)

    def set_comments(self, comments: Mapping[str, str]) -> UpdateReport:
        def comment(job: FakeJob, job_id: str, value: str) -> str | None:
            job.comment = value
            return None

        return self._update(comments, comment)

    def set_priorities(self, priorities: Mapping[str, int]) -> UpdateReport:
        def priority(job: FakeJob, job_id: str, value: str) -> str | None:
            job.priority = int(value)
            job.reason = ""
            return None

        return self._update(priority_values(priorities), priority)

    def command_counts(self) -> Mapping[str, int]:
        return dict(self._calls)

    def read_output(self, argv: Sequence[str]) -> str:
        """``scontrol -o show node`` with the energy figures in :attr:`node_watts`, and
        ``scontrol suspend|resume JOB`` (a running job's state flips, as Slurm's does) and
        ``scontrol requeuehold|release JOB`` (back to the queue, held; then released)."""
        self._calls[argv[0]] += 1
        if self.down:
            raise SlurmUnavailableError(argv, 1, DOWN_SHOW)
        if len(argv) == 3 and argv[0] == "scontrol" and argv[1] in ("requeuehold", "release"):
            job = self._lookup(argv[2])
            if job is None:
                raise SlurmCommandError(argv, 1, "Invalid job id specified")
            if argv[1] == "requeuehold":
                if job.state != "RUNNING":
                    raise SlurmCommandError(argv, 1, "Job is not running")
                self._release_nodes(job)
                job.state, job.held = "PENDING", True
            else:
                job.held = False
            return ""
        if len(argv) == 3 and argv[0] == "scontrol" and argv[1] in ("suspend", "resume"):
            job = self._lookup(argv[2])
            want, to = ("RUNNING", "SUSPENDED") if argv[1] == "suspend" else ("SUSPENDED", "RUNNING")
            if job is None or job.state != want:
                raise SlurmCommandError(argv, 1, f"scontrol_{argv[1]} error: Job is not {want.lower()}")
            job.state = to
            return ""
        return "".join(
            f"NodeName={n.name} CPUTot={n.cpus} CurrentWatts={round(self.node_watts.get(n.name, 0))} "
            f"AveWatts={round(self.node_watts.get(n.name, 0))}\n"
            for n in self.nodes
        )

    # -- inside --------------------------------------------------------------------------------
    def _update(self, values: Mapping[str, str], apply: Callable[[FakeJob, str, str], str | None]) -> UpdateReport:
        """As the command backend: one command per distinct value; per-job failures reported and
        the rest of the batch applied."""
        applied: list[str] = []
        failed: dict[str, str] = {}
        commands = 0
        for value, chunk in update_batches(values):
            commands += 1
            self._calls["scontrol"] += 1
            for job_id in chunk:
                self._count_toward_crash()
                job = self._lookup(job_id)
                error = (
                    (DOWN_UPDATE if self.down else None)
                    or self._faults.failures.get(job_id)
                    or (INVALID_JOB if job is None else apply(job, job_id, value))
                )
                if error is None:
                    applied.append(job_id)
                else:
                    failed[job_id] = error
        return UpdateReport(applied=tuple(applied), failed=failed, commands=commands)

    def _count_toward_crash(self) -> None:
        if self._faults.crash_in is None:
            return
        if self._faults.crash_in <= 0:
            self._faults.crash_in = None
            raise FakeCrash("the daemon died part-way through a batch of updates")
        self._faults.crash_in -= 1

    def _lookup(self, job_id: str) -> FakeJob | None:
        base, _, tasks = job_id.partition("_")
        if not base.isdigit():
            return None
        job = self.jobs.get(int(base))
        if job is None or (tasks and job.update_id != job_id):
            return None
        return job

    def _find(self, job_id: str) -> FakeJob:
        job = self._lookup(job_id)
        if job is None:
            raise KeyError(f"no job {job_id} in the fake cluster")
        return job

    def _place(self, job: FakeJob) -> tuple[tuple[str, int], ...] | None:
        per_node = math.ceil(job.cpus / job.nodes)
        free = [
            n
            for n in self.nodes
            if first_partition(job.partition) in n.partitions and not n.flags and n.cpus - n.alloc_cpus >= per_node
        ]
        if len(free) < job.nodes:
            return None
        return tuple((n.name, per_node) for n in free[: job.nodes])

    def _run(self, job: FakeJob, placed: tuple[tuple[str, int], ...], now: int) -> None:
        for node, cores in placed:
            next(n for n in self.nodes if n.name == node).alloc_cpus += cores
        if job.array_tasks and count_array_tasks(job.array_tasks) > 1:
            job.array_tasks = ""  # the fake runs an array as one job
        job.state, job.start_time, job.allocation, job.reason = "RUNNING", now, placed, "None"

    def _release_nodes(self, job: FakeJob) -> None:
        for node, cores in job.allocation:
            target = next(n for n in self.nodes if n.name == node)
            target.alloc_cpus = max(0, target.alloc_cpus - cores)
        job.allocation = ()


def as_backend(fake: FakeSlurm) -> SlurmBackend:
    """The fake where a backend is wanted (and a check, under mypy, that it is one)."""
    return fake


__all__ = ["FakeCrash", "FakeJob", "FakeNode", "FakeSlurm", "as_backend"]
