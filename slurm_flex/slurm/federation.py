"""A Slurm federation of clusters (one per site): reading every cluster's queue, and moving a
pending job from one cluster to another.

Facts of Slurm 22.05 this module is built on (found on scripts/fedcluster's federation):

* ``squeue --json`` ignores ``-M all`` and ``--federation`` and answers for the first cluster
  only, so each cluster is read with its own ``squeue --json -M <cluster>``. A job viable at
  several clusters has a PENDING copy at each until one starts it; a moved job leaves a REVOKED
  record at its origin. :func:`live_jobs` keeps one record per job.
* ``scontrol update JobId=J Clusters=<target>`` moves a pending job, keeping its id, owner and
  environment (its age priority restarts). It returns 0 even when the target's controller is
  down; the job then waits REVOKED until the target reconnects. So a move is only made towards a
  sibling the origin sees connected both ways and synced (:func:`parse_federation`).
* Unsafe moves: a job array moved this way silently disappears, and a job with an unfulfilled
  dependency loses it on the new copy (its child may run too early). :func:`move_blockers`
  refuses both, with every other reason a job must stay where it is.

The checks are pure; :class:`FederationBackend` is the one adapter that runs the commands.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

import structlog

from slurm_flex.errors import SlurmError
from slurm_flex.slurm.backend import CommandBackend, UpdateReport
from slurm_flex.slurm.parsers import SlurmJob, SlurmNode, parse_sinfo_json, parse_squeue_json
from slurm_flex.slurm.runner import SlurmRunner

log = structlog.get_logger(__name__)

REVOKED = "REVOKED"
# A running (or finishing) copy is the job: every other sibling is revoked once one starts.
_RUNNING_STATES = frozenset({"RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED"})


@dataclass(frozen=True)
class SiblingLink:
    """How one cluster sees a sibling (``scontrol show federation``)."""

    cluster: str
    state: str  # FedState: ACTIVE, INACTIVE, DRAIN, ...
    connected: bool  # PersistConnSend/Recv both Yes
    synced: bool

    @property
    def ready(self) -> bool:
        """A move to this sibling reaches it now (rather than waiting REVOKED)."""
        return self.connected and self.synced and self.state.startswith("ACTIVE")


@dataclass(frozen=True)
class FederationView:
    """One cluster's view of its federation."""

    name: str
    self_cluster: str
    siblings: Mapping[str, SiblingLink]


_SELF = re.compile(r"^Self:\s+(\S+?):")
_SIBLING = re.compile(r"^Sibling:\s+(\S+?):\S+\s.*?FedState:(\S+).*?PersistConnSend/Recv:(\w+)/(\w+)\s+Synced:(\w+)")


def parse_federation(text: str) -> FederationView:
    """``scontrol show federation`` as a :class:`FederationView` (empty outside a federation)."""
    name = self_cluster = ""
    siblings: dict[str, SiblingLink] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("Federation:"):
            name = line.split(":", 1)[1].strip()
        elif m := _SELF.match(line):
            self_cluster = m.group(1)
        elif m := _SIBLING.match(line):
            cluster, state, send, recv, synced = m.groups()
            siblings[cluster] = SiblingLink(cluster, state, send == "Yes" and recv == "Yes", synced == "Yes")
    return FederationView(name, self_cluster, siblings)


def live_jobs(by_cluster: Mapping[str, Sequence[SlurmJob]]) -> tuple[SlurmJob, ...]:
    """One record per job from every cluster's queue: REVOKED copies dropped; of a job's
    pending copies (one per viable sibling) the origin's, else the first cluster's; a running
    copy over any pending one. Ordered by job id, as squeue does."""
    best: dict[str, tuple[int, SlurmJob]] = {}
    order = {c: i for i, c in enumerate(by_cluster)}
    for cluster, jobs in by_cluster.items():
        for record in jobs:
            if record.state == REVOKED:
                continue
            job = record if record.cluster else replace(record, cluster=cluster)
            rank = (0 if job.state in _RUNNING_STATES else 1 if job.cluster == job.origin else 2) * 100 + order[cluster]
            key = job.job_id if not job.array_task_string else job.update_id
            if key not in best or rank < best[key][0]:
                best[key] = (rank, job)
    return tuple(job for _, job in sorted(best.values(), key=lambda x: (_id_key(x[1].job_id), x[1].job_id)))


def _id_key(job_id: str) -> int:
    return int(job_id) if job_id.isdigit() else 0


def has_unfulfilled_dependency(job: SlurmJob) -> bool:
    """Any dependency Slurm still lists: 22.05 shows ``afterok:12(unfulfilled)`` and clears the
    field once it is met; a listed one whose state we cannot tell counts as unfulfilled."""
    dep = job.dependency.strip()
    return (bool(dep) and dep != "(null)") or job.state_reason == "Dependency"


def move_blockers(
    job: SlurmJob,
    target: str,
    allowed: Iterable[str],
    view: FederationView | None,
) -> tuple[str, ...]:
    """Why ``job`` must not be moved to cluster ``target`` now (empty: it may be). ``allowed``:
    the clusters the job may run at (its user's choice, or its partition's default); ``view``:
    the job's origin cluster's view of the federation (None: not known this cycle)."""
    reasons: list[str] = []
    if not job.pending:
        reasons.append(f"not pending ({job.state})")
    if job.cluster == target:
        reasons.append(f"already at {target}")
    if target not in set(allowed):
        reasons.append(f"{target} is not among the clusters the job may run at")
    if job.array_job_id or job.array_task_string:
        # 22.05: a job array moved between clusters silently disappears.
        reasons.append("a job array (Slurm loses arrays moved between clusters)")
    if job.het_job_id:
        reasons.append("a heterogeneous job")
    if has_unfulfilled_dependency(job):
        # 22.05: the new copy loses the dependency, so the job could run before its parent.
        reasons.append(f"an unfulfilled dependency ({job.dependency or job.state_reason})")
    if job.held:
        reasons.append("held")
    if view is None:
        reasons.append("federation state unknown")
    else:
        link = view.siblings.get(target)
        if target != view.self_cluster:
            if link is None:
                reasons.append(f"{target} is not a sibling of {view.self_cluster or 'the origin'}")
            elif not link.ready:
                # The command would succeed and leave the job REVOKED until the target is back.
                reasons.append(
                    f"{target} not reachable from {view.self_cluster} "
                    f"(state {link.state}, connected {link.connected}, synced {link.synced})"
                )
    return tuple(reasons)


class FederationBackend(CommandBackend):
    """The command backend over a federation: reads every cluster, moves jobs between them.
    Start-time, priority and comment updates go to the job's origin, which forwards them to
    the copy that lives elsewhere."""

    def __init__(self, runner: SlurmRunner, clusters: Sequence[str]) -> None:
        super().__init__(runner)
        self.clusters = tuple(clusters)

    def read_jobs(self) -> tuple[SlurmJob, ...]:
        by_cluster = {
            c: parse_squeue_json(self.runner.run(["squeue", "--json", "-M", c]).stdout) for c in self.clusters
        }
        return live_jobs(by_cluster)

    def read_nodes(self) -> tuple[SlurmNode, ...]:
        nodes: list[SlurmNode] = []
        for c in self.clusters:
            parsed = parse_sinfo_json(self.runner.run(["sinfo", "-N", "--json", "-M", c]).stdout)
            nodes.extend(replace(n, cluster=c) for n in parsed)
        return tuple(nodes)

    def federation_views(self) -> dict[str, FederationView]:
        """Each cluster's view of the federation; a cluster that does not answer is left out
        (no move starts from or goes to it)."""
        views: dict[str, FederationView] = {}
        for c in self.clusters:
            try:
                views[c] = parse_federation(self.runner.run(["scontrol", "-M", c, "show", "federation"]).stdout)
            except SlurmError as exc:  # not known this cycle: logged, and no move involves it
                log.warning("federation_view_failed", cluster=c, error=str(exc))
        return views

    def move(self, targets: Mapping[str, str]) -> UpdateReport:
        """Move pending jobs: job id -> target cluster, one ``scontrol update Clusters=`` per
        target. Check :func:`move_blockers` first: Slurm accepts unsafe moves."""
        return self._update("Clusters", targets)


__all__ = [
    "REVOKED",
    "FederationBackend",
    "FederationView",
    "SiblingLink",
    "has_unfulfilled_dependency",
    "live_jobs",
    "move_blockers",
    "parse_federation",
]
