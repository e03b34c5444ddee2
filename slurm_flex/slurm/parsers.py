"""Pure parsers for Slurm command output. No I/O here: text in, frozen records out.

Every JSON document says which data_parser wrote it in ``meta`` (:func:`detect_format`), and
each shape slurm-flex knows is read here:

* v0.0.38 (Slurm 22.05): plain numbers, ``job_state`` a string, ``sinfo --json`` a ``nodes``
  list, ``job_resources.allocated_nodes`` with sockets and cores as objects keyed by index;
* v0.0.39 (23.02): numbers partly ``{"set", "infinite", "number"}`` objects (times still plain);
* v0.0.40 (23.11, 24.05's default for slurmrestd): every number such an object, ``job_state``
  a list;
* v0.0.41 to v0.0.44 (24.05 to 25.11): ``job_resources.nodes.allocation`` lists with core
  status lists.

``sinfo --json`` writes a ``nodes`` list (one record per node) on 22.05 only; from 23.02 on
it writes a top-level ``sinfo`` list of node/partition groups (Slurm's source, see
tests/fixtures/slurm/PROVENANCE.md). :func:`parse_sinfo_json` goes by the document's shape.

A data_parser newer than the newest known is a :class:`SlurmVersionError` naming it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from slurm_flex.errors import SlurmParseError, SlurmQueryError, SlurmVersionError
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
    # Federation (``squeue --json -M <cluster>``): the cluster whose record this is, the cluster
    # the job was submitted to, and the clusters it may run at (viable) and has copies at
    # (active). Empty outside a federation.
    cluster: str = ""
    origin: str = ""
    siblings_viable: tuple[str, ...] = ()
    siblings_active: tuple[str, ...] = ()

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
    # The federation cluster it belongs to (set by the reader of ``sinfo -M <cluster>``).
    cluster: str = ""

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


# data_parser versions whose squeue/sinfo JSON slurm-flex reads, oldest first, with the Slurm
# release series that introduced each (for messages).
KNOWN_DATA_PARSERS: Mapping[str, str] = {
    "v0.0.38": "22.05",
    "v0.0.39": "23.02",
    "v0.0.40": "23.11",
    "v0.0.41": "24.05",
    "v0.0.42": "24.11",
    "v0.0.43": "25.05",
    "v0.0.44": "25.11",
}
_PARSER_VERSION = re.compile(r"v(\d+)\.(\d+)\.(\d+)")


@dataclass(frozen=True)
class SlurmFormat:
    """Which Slurm wrote a JSON document: its data_parser (e.g. ``v0.0.42``; "" when ``meta``
    does not say) and release (e.g. ``24.11.5``; "" when unknown)."""

    data_parser: str
    release: str

    @property
    def known(self) -> bool:
        return self.data_parser in KNOWN_DATA_PARSERS


def _parser_key(name: str) -> tuple[int, ...]:
    m = _PARSER_VERSION.fullmatch(name)
    return tuple(int(g) for g in m.groups()) if m else ()


def detect_format(doc: Mapping[str, Any]) -> SlurmFormat:
    """The data_parser and release from a document's ``meta``, in each shape Slurm wrote it:
    22.05 ``meta.plugin.type = "openapi/v0.0.38"`` and ``meta.Slurm``; 23.02
    ``meta.plugins.data_parser`` (``"data_parser/v0.0.39"``; slurmrestd says ``"v0.0.39"``);
    23.11+ ``meta.plugin.data_parser`` and ``meta.slurm``."""
    meta = doc.get("meta")
    meta = meta if isinstance(meta, Mapping) else {}
    parser = ""
    for key in ("plugin", "plugins"):
        plugin = meta.get(key)
        if not isinstance(plugin, Mapping):
            continue
        for field_name in ("data_parser", "type"):
            m = _PARSER_VERSION.search(str(plugin.get(field_name) or ""))
            if m:
                parser = m.group(0)
                break
        if parser:
            break
    slurm = meta.get("slurm") or meta.get("Slurm")
    release = ""
    if isinstance(slurm, Mapping):
        release = str(slurm.get("release") or "")
        version = slurm.get("version")
        if not release and isinstance(version, Mapping) and version.get("major") is not None:
            release = f"{version.get('major')}.{int(str(version.get('minor', 0))):02d}.{version.get('micro', 0)}"
    return SlurmFormat(data_parser=parser, release=release)


def check_format(doc: Mapping[str, Any], what: str) -> SlurmFormat:
    """:func:`detect_format`, refusing a data_parser slurm-flex does not know. A document whose
    meta names no data_parser is read as the oldest shape (the parsers accept both)."""
    fmt = detect_format(doc)
    if fmt.data_parser and not fmt.known:
        newest = max(KNOWN_DATA_PARSERS, key=_parser_key)
        release = f"Slurm {fmt.release}" if fmt.release else "this Slurm"
        relation = "newer" if _parser_key(fmt.data_parser) > _parser_key(newest) else "older"
        raise SlurmVersionError(
            f"{what}: {release} writes data_parser/{fmt.data_parser}, {relation} than slurm-flex reads "
            f"(data_parser/v0.0.38 to {newest}, Slurm 22.05 to {KNOWN_DATA_PARSERS[newest]}); "
            "upgrade slurm-flex, or record this output and report it"
        )
    return fmt


def load_slurm_json(text: str, what: str) -> Mapping[str, Any]:
    """The JSON object a Slurm command printed; Slurm's own errors inside it raise
    :class:`SlurmQueryError`, an unknown data_parser :class:`SlurmVersionError`, anything else
    unreadable :class:`SlurmParseError`."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SlurmParseError(f"{what}: not JSON ({exc.msg} at line {exc.lineno})") from exc
    if not isinstance(doc, Mapping):
        raise SlurmParseError(f"{what}: expected a JSON object at the top level")
    errors = doc.get("errors") or []
    if errors:
        raise SlurmQueryError(f"{what}: Slurm could not answer: {_describe_errors(errors)}")
    check_format(doc, what)
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
            # v0.0.40+ lists the state with its flags (["PENDING", "REQUEUED"]): the base state first.
            state=next(iter(_states(raw.get("job_state"))), ""),
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
            cluster=_str(raw.get("cluster")),
            origin=_str(raw.get("federation_origin")),
            siblings_viable=_names(raw.get("federation_siblings_viable")),
            siblings_active=_names(raw.get("federation_siblings_active")),
        )
    except KeyError as exc:
        raise SlurmParseError(f"job record without {exc.args[0]!r}") from exc


def _names(value: Any) -> tuple[str, ...]:
    """A comma-separated list of names (clusters), as a tuple without empties."""
    return tuple(n for n in _str(value).split(",") if n)


def _allocation(resources: Any) -> tuple[tuple[str, int], ...]:
    """(node, allocated cores) from ``job_resources``: up to v0.0.40 ``allocated_nodes``, each
    node's sockets and cores objects keyed by index with a state string; from v0.0.41
    ``nodes.allocation``, each node's sockets and cores lists with a status list."""
    if not isinstance(resources, Mapping):
        return ()
    nodes = resources.get("nodes")
    if isinstance(nodes, Mapping):
        return _allocation_lists(nodes.get("allocation"))
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


def _allocation_lists(allocation: Any) -> tuple[tuple[str, int], ...]:
    out = []
    for node in allocation or ():
        if not isinstance(node, Mapping) or not node.get("name"):
            continue
        cores = sum(
            1
            for socket in node.get("sockets") or ()
            if isinstance(socket, Mapping)
            for core in socket.get("cores") or ()
            if isinstance(core, Mapping) and "ALLOCATED" in _states(core.get("status"))
        )
        out.append((_str(node["name"]), max(cores, 1)))
    return tuple(out)


def _states(value: Any) -> tuple[str, ...]:
    """A state or flag list as Slurm writes it: a list (v0.0.40+) or one string."""
    if isinstance(value, list):
        return tuple(_str(v).upper() for v in value)
    return (_str(value).upper(),) if value else ()


def parse_squeue_json(text: str) -> tuple[SlurmJob, ...]:
    """Active jobs from ``squeue --json`` output (finished jobs are dropped)."""
    doc = load_slurm_json(text, "squeue --json")
    raw_jobs = doc.get("jobs")
    if not isinstance(raw_jobs, list):
        raise SlurmParseError("squeue --json: no 'jobs' list")
    jobs = (parse_job(raw) for raw in raw_jobs)
    return tuple(j for j in jobs if j.state in ACTIVE_STATES)


def parse_sinfo_json(text: str) -> tuple[SlurmNode, ...]:
    """Nodes from ``sinfo --json`` output: a ``nodes`` list on 22.05 (one record per node),
    a ``sinfo`` list of node/partition groups from v0.0.41 (Slurm 24.05)."""
    doc = load_slurm_json(text, "sinfo --json")
    if isinstance(doc.get("sinfo"), list):
        return _nodes_from_groups(doc["sinfo"])
    raw_nodes = doc.get("nodes")
    if not isinstance(raw_nodes, list):
        raise SlurmParseError("sinfo --json: neither a 'nodes' nor a 'sinfo' list")
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


def _nodes_from_groups(groups: list[Any]) -> tuple[SlurmNode, ...]:
    """Nodes from v0.0.41+ ``sinfo`` groups. Each group is nodes sharing a state and partition,
    with CPU counts summed over the group; a node in several partitions is in several groups.
    ``sinfo -N --json`` makes every group one node, so its allocated CPUs are exact; in grouped
    output they are the group's share per node (sinfo groups nodes of equal size)."""
    by_name: dict[str, SlurmNode] = {}
    for group in groups:
        try:
            if not isinstance(group, Mapping):
                raise SlurmParseError(f"sinfo --json: group is not an object: {group!r}")
            names = [_str(n) for n in group["nodes"]["nodes"]]
            states = _states(group["node"]["state"])
            cpus = group.get("cpus") or {}
            count = max(len(names), 1)
            partition = _str((group.get("partition") or {}).get("name"))
            gres = group.get("gres")
            for name in names:
                seen = by_name.get(name)
                if seen is not None:
                    if partition and partition not in seen.partitions:
                        by_name[name] = replace(seen, partitions=(*seen.partitions, partition))
                    continue
                by_name[name] = SlurmNode(
                    name=name,
                    state=states[0].lower() if states else "unknown",
                    state_flags=states[1:],
                    cpus=(_num(cpus.get("total")) or 0) // count,
                    alloc_cpus=(_num(cpus.get("allocated")) or 0) // count,
                    real_memory_mb=_num((group.get("memory") or {}).get("minimum")) or 0,
                    gres=_str(gres.get("total") if isinstance(gres, Mapping) else gres),
                    partitions=(partition,) if partition else (),
                )
        except (KeyError, TypeError) as exc:
            raise SlurmParseError(f"sinfo --json: node group without {exc.args[0]!r}") from exc
    return tuple(by_name.values())


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
