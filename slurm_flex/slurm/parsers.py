"""Pure parsers for Slurm command output. No I/O here: text in, frozen records out.

Shapes follow Slurm 22.05's ``openapi/v0.0.38`` JSON (``squeue --json``, ``sinfo --json``),
which is what Debian 12 ships; newer Slurm nests some numbers as ``{"set":..,"number":..}``
objects, which :func:`slurm_number` also accepts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from slurm_flex.errors import SlurmParseError, SlurmQueryError
from slurm_flex.tag import HookTag, parse_tag

# Job states in which a job still matters to planning; squeue --json on 22.05 ignores
# --states and returns recently finished jobs too, so we filter here.
ACTIVE_STATES = frozenset({"PENDING", "RUNNING", "SUSPENDED", "CONFIGURING", "COMPLETING", "REQUEUED", "RESIZING"})
# Node base states that can run work (sinfo --json on 22.05 gives them lower-case).
USABLE_NODE_STATES = frozenset({"idle", "mixed", "allocated", "completing", "planned"})
UNUSABLE_NODE_FLAGS = frozenset(
    {"DRAIN", "DRAINING", "DRAINED", "FAIL", "MAINTENANCE", "POWERED_DOWN", "NOT_RESPONDING", "REBOOT_REQUESTED"}
)

_HELD_REASONS = frozenset({"JobHeldUser", "JobHeldAdmin"})


def first_partition(partition: str | None) -> str:
    """The partition a job is judged by: a job submitted to several (``-p a,b``) lists them
    comma-separated, and slurm-flex (like the submit hook) goes by the first."""
    return (partition or "").split(",", 1)[0]


@dataclass(frozen=True)
class SlurmJob:
    """One job record as Slurm reports it (a pending job array counts as one record)."""

    job_id: str
    array_job_id: int | None
    array_task_id: int | None
    array_task_string: str
    user: str
    account: str
    partition: str
    qos: str
    state: str
    state_reason: str
    nodes: int
    cpus: int
    tres_per_node: str
    tres_per_job: str
    tres_per_task: str
    tasks: int
    memory_per_node_mb: int | None
    memory_per_cpu_mb: int | None
    time_limit_s: int | None
    submit_time: int
    eligible_time: int | None
    start_time: int | None
    end_time: int | None
    deadline: int | None
    priority: int
    comment: str
    admin_comment: str
    het_job_id: int | None
    dependency: str
    name: str = ""
    # Running jobs: (node, allocated cores) per node, for attributing measured node power.
    allocation: tuple[tuple[str, int], ...] = ()

    @property
    def pending(self) -> bool:
        return self.state == "PENDING"

    @property
    def held(self) -> bool:
        return self.pending and (self.priority == 0 or self.state_reason in _HELD_REASONS)

    @property
    def array_tasks(self) -> int:
        """How many array tasks this record stands for (1 for an ordinary job)."""
        if not self.array_task_string:
            return 1
        return count_array_tasks(self.array_task_string)

    @property
    def array_throttle(self) -> int | None:
        """The %N limit on concurrently running tasks of a pending array, if any."""
        _, sep, limit = self.array_task_string.partition("%")
        return int(limit) if sep and limit.isdigit() and int(limit) > 0 else None

    @property
    def update_id(self) -> str:
        """The id ``scontrol update`` needs to address exactly this record."""
        if self.array_task_string and self.array_job_id:
            tasks = self.array_task_string.split("%", 1)[0]
            return f"{self.array_job_id}_[{tasks}]"
        return self.job_id

    @property
    def display_id(self) -> str:
        if self.array_task_string and self.array_job_id:
            return f"{self.array_job_id}_[{self.array_task_string}]"
        if self.array_job_id and self.array_task_id is not None:
            return f"{self.array_job_id}_{self.array_task_id}"
        return self.job_id

    @property
    def tag(self) -> HookTag | None:
        return parse_tag(self.admin_comment)


@dataclass(frozen=True)
class SlurmNode:
    name: str
    state: str
    state_flags: tuple[str, ...]
    cpus: int
    alloc_cpus: int
    real_memory_mb: int
    gres: str
    partitions: tuple[str, ...]

    @property
    def usable(self) -> bool:
        return self.state in USABLE_NODE_STATES and not (set(self.state_flags) & UNUSABLE_NODE_FLAGS)


def slurm_number(value: Any) -> int | float | None:
    """A number in Slurm's JSON, the one rule for every reader of Slurm output.

    Plain numbers are themselves; null is None; newer Slurm (data_parser v0.0.39+) writes
    ``{"set": bool, "infinite": bool, "number": n}``, which is None when not set or infinite.
    Slurm always writes ``set``; an object without it counts as set (its number is all it says).
    Booleans are not numbers (None); anything else is a :class:`SlurmParseError`."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, Mapping):
        if not value.get("set", True) or value.get("infinite", False):
            return None
        return slurm_number(value.get("number"))
    if isinstance(value, int | float):
        return value
    raise SlurmParseError(f"expected a number, got {value!r}")


def _num(value: Any) -> int | None:
    n = slurm_number(value)
    return None if n is None else int(n)


def _epoch(value: Any) -> int | None:
    """Times: 0 means unset in Slurm's JSON."""
    n = _num(value)
    return n if n else None


def _str(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):  # newer Slurm lists job_state as ["PENDING"]
        return ",".join(str(v) for v in value)
    return str(value)


def load_slurm_json(text: str, what: str) -> Mapping[str, Any]:
    """The JSON object a Slurm command printed; Slurm's own errors inside it raise
    :class:`SlurmQueryError`, anything else unreadable :class:`SlurmParseError`."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SlurmParseError(f"{what}: not JSON ({exc.msg} at line {exc.lineno})") from exc
    if not isinstance(doc, Mapping):
        raise SlurmParseError(f"{what}: expected a JSON object at the top level")
    errors = doc.get("errors") or []
    if errors:
        raise SlurmQueryError(f"{what}: Slurm could not answer: {_describe_errors(errors)}")
    return doc


def _describe_errors(errors: Any) -> str:
    if not isinstance(errors, list):
        return repr(errors)
    parts = []
    for e in errors:
        if isinstance(e, Mapping):
            text = " / ".join(str(e[k]) for k in ("description", "error", "source") if e.get(k))
            parts.append(text or repr(e))
        else:
            parts.append(str(e))
    return "; ".join(parts)


def parse_job(raw: Mapping[str, Any]) -> SlurmJob:
    try:
        job_id = _num(raw["job_id"])
        time_limit_min = _num(raw.get("time_limit"))
        array_job_id = _num(raw.get("array_job_id")) or None
        het_job_id = _num(raw.get("het_job_id")) or None
        return SlurmJob(
            job_id=str(job_id),
            array_job_id=array_job_id,
            array_task_id=_num(raw.get("array_task_id")),
            array_task_string=_str(raw.get("array_task_string")),
            user=_str(raw.get("user_name")),
            account=_str(raw.get("account")),
            partition=_str(raw.get("partition")),
            qos=_str(raw.get("qos")),
            state=_str(raw.get("job_state")),
            state_reason=_str(raw.get("state_reason")),
            nodes=_num(raw.get("node_count")) or 1,
            cpus=_num(raw.get("cpus")) or 1,
            tres_per_node=_str(raw.get("tres_per_node")),
            tres_per_job=_str(raw.get("tres_per_job")),
            tres_per_task=_str(raw.get("tres_per_task")),
            tasks=_num(raw.get("tasks")) or 1,
            memory_per_node_mb=_num(raw.get("memory_per_node")),
            memory_per_cpu_mb=_num(raw.get("memory_per_cpu")),
            time_limit_s=None if time_limit_min is None else time_limit_min * 60,
            submit_time=_num(raw.get("submit_time")) or 0,
            eligible_time=_epoch(raw.get("eligible_time")),
            start_time=_epoch(raw.get("start_time")),
            end_time=_epoch(raw.get("end_time")),
            deadline=_epoch(raw.get("deadline")),
            priority=_num(raw.get("priority")) or 0,
            comment=_str(raw.get("comment")),
            admin_comment=_str(raw.get("admin_comment")),
            het_job_id=het_job_id,
            dependency=_str(raw.get("dependency")),
            name=_str(raw.get("name")),
            allocation=_allocation(raw.get("job_resources")),
        )
    except KeyError as exc:
        raise SlurmParseError(f"job record without {exc.args[0]!r}") from exc


def _allocation(resources: Any) -> tuple[tuple[str, int], ...]:
    """(node, allocated cores) from ``job_resources.allocated_nodes`` (Slurm 22.05+ JSON):
    each node lists its sockets and the state of each core."""
    if not isinstance(resources, Mapping):
        return ()
    out = []
    for node in resources.get("allocated_nodes") or ():
        if not isinstance(node, Mapping) or not node.get("nodename"):
            continue
        sockets = node.get("sockets") or {}
        cores = sum(
            1
            for socket in (sockets.values() if isinstance(sockets, Mapping) else ())
            if isinstance(socket, Mapping)
            for state in (socket.get("cores") or {}).values()
            if state == "allocated"
        )
        out.append((_str(node["nodename"]), max(cores, 1)))
    return tuple(out)


def parse_squeue_json(text: str) -> tuple[SlurmJob, ...]:
    """Active jobs from ``squeue --json`` output (finished jobs are dropped)."""
    doc = load_slurm_json(text, "squeue --json")
    raw_jobs = doc.get("jobs")
    if not isinstance(raw_jobs, list):
        raise SlurmParseError("squeue --json: no 'jobs' list")
    jobs = (parse_job(raw) for raw in raw_jobs)
    return tuple(j for j in jobs if j.state in ACTIVE_STATES)


def parse_sinfo_json(text: str) -> tuple[SlurmNode, ...]:
    """Nodes from ``sinfo --json`` output."""
    doc = load_slurm_json(text, "sinfo --json")
    raw_nodes = doc.get("nodes")
    if not isinstance(raw_nodes, list):
        raise SlurmParseError("sinfo --json: no 'nodes' list")
    nodes = []
    for raw in raw_nodes:
        try:
            state = raw["state"]
            flags = raw.get("state_flags") or []
            if isinstance(state, list):  # newer Slurm: ["IDLE", "DRAIN"]
                flags = [*state[1:], *flags]
                state = state[0] if state else "unknown"
            nodes.append(
                SlurmNode(
                    name=_str(raw["name"]),
                    state=_str(state).lower(),
                    state_flags=tuple(_str(f).upper() for f in flags),
                    cpus=_num(raw.get("cpus")) or 0,
                    alloc_cpus=_num(raw.get("alloc_cpus")) or 0,
                    real_memory_mb=_num(raw.get("real_memory")) or 0,
                    gres=_str(raw.get("gres")),
                    partitions=tuple(_str(p) for p in raw.get("partitions") or ()),
                )
            )
        except KeyError as exc:
            raise SlurmParseError(f"sinfo --json: node record without {exc.args[0]!r}") from exc
    return tuple(nodes)


_ARRAY_RANGE = re.compile(r"^(\d+)(?:-(\d+)(?::(\d+))?)?$")


def count_array_tasks(task_string: str) -> int:
    """Number of tasks in a Slurm array expression such as ``1-10:2,15,20-22%4``."""
    spec = task_string.split("%", 1)[0].strip("[]")
    total = 0
    for part in filter(None, spec.split(",")):
        m = _ARRAY_RANGE.match(part)
        if not m:
            raise SlurmParseError(f"unreadable array task expression {task_string!r}")
        lo = int(m.group(1))
        hi = int(m.group(2) or lo)
        step = int(m.group(3) or 1)
        total += 0 if hi < lo else (hi - lo) // step + 1
    return max(total, 1)


_UPDATE_FAILURE = re.compile(r"^(?P<msg>.+?) for job (?P<job>\S+)\s*$")


def parse_update_failures(stderr: str) -> dict[str, str]:
    """Per-job failures from ``scontrol update JobId=a,b,c ...`` stderr: {job id: message}.

    scontrol updates each listed job and reports each failure as "<message> for job <id>".
    """
    failures: dict[str, str] = {}
    for line in stderr.splitlines():
        m = _UPDATE_FAILURE.match(line.strip())
        if m:
            failures[m.group("job")] = m.group("msg")
    return failures
