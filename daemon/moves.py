"""Moving pending jobs between the clusters of a federation (the site dimension of the plan).

Each cycle, before the sites are planned, the portable flexible jobs are placed by
``planner.sites.choose_sites`` on every site's own signals and free nodes; a job whose best
site is another cluster, by more than ``[federation] move_threshold``, is moved there with
``scontrol update Clusters=`` unless :func:`slurm_flex.slurm.federation.move_blockers` says
why not (arrays, unfulfilled dependencies, a target not connected and synced). The site's own
planner then picks its hour there, within its deadline as every plan is.

Why a kill -9 never loses or duplicates a job: a move is one request to the job's origin
controller, which revokes its own copy and hands the job (same id) to the target; the daemon
holds no job in between. What it remembers (the clusters a job may run at, which a move narrows
in Slurm to the target alone, and where it moved and why) is written before the move, so a
daemon killed after it still knows the job's choices; one killed before it moved nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import structlog

from slurm_flex.config import Config
from slurm_flex.daemon.decide import Assessment
from slurm_flex.errors import SlurmError
from slurm_flex.grid.series import SLOT_SECONDS, SignalSeries
from slurm_flex.planner.policy import Policy
from slurm_flex.planner.queue import capacity_profile
from slurm_flex.planner.sites import Portable, SiteChoice, SiteOption, choose_sites
from slurm_flex.slurm.federation import FederationBackend, move_blockers
from slurm_flex.slurm.parsers import SlurmJob, SlurmNode
from slurm_flex.state import StateStore

log = structlog.get_logger(__name__)

# The state store setting holding what the daemon remembers of portable jobs (JSON, by job id).
MOVES_SETTING = "federation.moves"
_RUNNING = frozenset({"RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED"})


@dataclass(frozen=True)
class MoveOutcome:
    job_id: str
    source: str  # site
    target: str  # site
    status: str  # moved, would-move (shadow/advise), blocked, failed
    reason: str


class Mover:
    """Decides and makes the cycle's moves; everything but the backend call and the store is pure."""

    def __init__(self, backend: FederationBackend, config: Config, store: StateStore, policy: Policy) -> None:
        self.backend = backend
        self.config = config
        self.store = store
        self.policy = policy
        self.clusters = config.site_clusters  # site -> cluster
        self.sites = {c: s for s, c in self.clusters.items()}  # cluster -> site
        self.last: list[MoveOutcome] = []

    def memory(self) -> dict[str, dict[str, Any]]:
        raw = self.store.setting(MOVES_SETTING)
        return dict(json.loads(raw)) if raw else {}

    def allowed_sites(self, job: SlurmJob, remembered: Mapping[str, Any] | None) -> tuple[str, ...]:
        """The sites a job may run at: those remembered from before a move, those of the
        clusters Slurm says it is viable at, or every site for a portable partition."""
        if remembered and remembered.get("allowed"):
            return tuple(remembered["allowed"])
        if job.partition.split(",")[0] in self.config.federation.portable_partitions:
            return tuple(self.clusters)
        return tuple(self.sites[c] for c in job.siblings_viable if c in self.sites)

    def apply(
        self,
        assessments: list[Assessment],
        jobs: tuple[SlurmJob, ...],
        nodes: tuple[SlurmNode, ...],
        forecasts: Mapping[str, SignalSeries | None],
        now: int,
        mode: str,
        avoid: frozenset[str] = frozenset(),
    ) -> tuple[list[Assessment], tuple[SlurmJob, ...]]:
        """Choose and make the moves; returns the assessments and jobs as they now are (moved
        jobs at their new cluster, so that site's planner plans them). ``avoid``: sites no job
        is moved to (a stress event's, while its window is open)."""
        memory = self.memory()
        live = {j.update_id for j in jobs}
        memory = {k: v for k, v in memory.items() if k in live}  # finished jobs are forgotten
        portables: list[Portable] = []
        by_id = {a.job.update_id: a for a in assessments}
        for a in assessments:
            site = self.sites.get(a.job.cluster)
            if a.flex is None or site is None:
                continue
            allowed = self.allowed_sites(a.job, memory.get(a.job.update_id))
            if len(allowed) > 1:
                portables.append(Portable(a.flex, site, allowed))
        outcomes: list[MoveOutcome] = []
        if portables:
            choices = choose_sites(
                portables,
                self._options(jobs, {a.job.update_id for a in assessments if a.flex}, nodes, forecasts, now),
                self.policy,
                now,
                self.config.federation.move_threshold,
            )
            wanted = [c for c in choices if c.moves and c.target not in avoid]
            outcomes = self._move(wanted, by_id, portables, memory, now, mode)
        self.last = outcomes
        self.store.set_setting(MOVES_SETTING, json.dumps(memory, sort_keys=True) if memory else None, by="daemon")
        moved = {o.job_id: self.clusters[o.target] for o in outcomes if o.status == "moved"}
        if not moved:
            return assessments, jobs

        def at_target(job: SlurmJob) -> SlurmJob:
            target = moved.get(job.update_id)
            return job if target is None else replace(job, cluster=target, siblings_viable=(target,))

        return [replace(a, job=at_target(a.job)) for a in assessments], tuple(at_target(j) for j in jobs)

    def shed(
        self,
        site: str,
        why: str,
        jobs: Sequence[SlurmJob],
        avoid: frozenset[str],
        now: int,
        mode: str,
        requeued: frozenset[str] = frozenset(),
    ) -> list[MoveOutcome]:
        """A stress event at ``site``: move its pending jobs allowed at another site (not one in
        ``avoid``) there, by the same checks and memory as :meth:`apply`. ``requeued``: jobs the
        daemon has just requeued held for the event (held only until moved, so "held" does not
        keep them). Returns what was done; the moved jobs are at their target next cycle."""
        cluster = self.clusters.get(site)
        if cluster is None:
            return []
        memory = self.memory()
        live = {j.update_id for j in jobs}
        memory = {k: v for k, v in memory.items() if k in live}
        wanted: list[tuple[SlurmJob, str, tuple[str, ...]]] = []
        for job in jobs:
            if job.cluster != cluster or not (job.pending or job.update_id in requeued):
                continue
            allowed = self.allowed_sites(job, memory.get(job.update_id))
            targets = [s for s in allowed if s != site and s not in avoid and s in self.clusters]
            if targets:
                wanted.append((job, targets[0], allowed))
        outcomes: list[MoveOutcome] = []
        views = self.backend.federation_views() if wanted else {}
        targets_by_job: dict[str, str] = {}
        by_id: dict[str, SlurmJob] = {}
        for job, target, allowed in wanted[: self.config.federation.max_moves_per_cycle]:
            as_pending = replace(job, state="PENDING") if job.update_id in requeued else job
            blockers = [
                b
                for b in move_blockers(as_pending, self.clusters[target], [self.clusters[s] for s in allowed],
                                       views.get(job.origin or job.cluster))
                if not (b == "held" and job.update_id in requeued)
            ]  # fmt: skip
            entry = memory.setdefault(job.update_id, {"allowed": list(allowed)})
            if blockers:
                stays = "stays: " + "; ".join(blockers)
                outcomes.append(MoveOutcome(job.update_id, site, target, "blocked", stays))
                entry.update(last=f"{why}; {stays}", at=now)
                continue
            if mode != "enforce":
                outcomes.append(MoveOutcome(job.update_id, site, target, "would-move", why))
                entry.update(last=f"would move to {target} ({mode}): {why}", at=now)
                continue
            targets_by_job[job.update_id] = self.clusters[target]
            by_id[job.update_id] = job
            entry.update(moving_to=target, reason=why, at=now)
        if targets_by_job:
            self.store.set_setting(MOVES_SETTING, json.dumps(memory, sort_keys=True), by="daemon")
            try:
                failed: Mapping[str, str] = self.backend.move(targets_by_job).failed
            except SlurmError as exc:
                log.error("move_failed", jobs=sorted(targets_by_job), error=str(exc))
                failed = dict.fromkeys(targets_by_job, str(exc))
            for job_id, target_cluster in targets_by_job.items():
                target = self.sites[target_cluster]
                entry = memory[job_id]
                entry.pop("moving_to", None)
                if job_id in failed:
                    outcomes.append(MoveOutcome(job_id, site, target, "failed", failed[job_id]))
                    entry.update(last=f"move to {target} failed: {failed[job_id]}")
                    continue
                history = [*entry.get("moves", []), {"from": site, "to": target, "at": now}]
                entry.update(moves=history, last=f"moved {site} -> {target}: {why}")
                outcomes.append(MoveOutcome(job_id, site, target, "moved", why))
                log.info("job_moved", job=job_id, source=site, target=target, reason=why)
        for o in outcomes:
            if o.status != "moved":
                log.info("job_not_moved", job=o.job_id, target=o.target, status=o.status, reason=o.reason)
        self.store.set_setting(MOVES_SETTING, json.dumps(memory, sort_keys=True) if memory else None, by="daemon")
        return outcomes

    def _options(
        self,
        jobs: tuple[SlurmJob, ...],
        planned: set[str],
        nodes: tuple[SlurmNode, ...],
        forecasts: Mapping[str, SignalSeries | None],
        now: int,
    ) -> dict[str, SiteOption]:
        """Each site's signals and free nodes (running jobs by time limit, and the pending work
        slurm-flex does not plan counted as starting now)."""
        n_slots = int(self.policy.max_horizon_hours * 3600) // SLOT_SECONDS + 1
        options: dict[str, SiteOption] = {}
        for site, cluster in self.clusters.items():
            usable = sum(1 for n in nodes if n.cluster == cluster and n.usable) * self.policy.capacity_headroom
            busy = [
                (j.nodes, j.end_time)
                for j in jobs
                if j.cluster == cluster
                and (j.state in _RUNNING or (j.pending and j.update_id not in planned and not j.held))
            ]
            free = capacity_profile(float(usable), busy, now, n_slots)
            options[site] = SiteOption(site, forecasts.get(site), np.asarray(free, dtype=np.float64))
        return options

    def _move(
        self,
        choices: Sequence[SiteChoice],
        by_id: Mapping[str, Assessment],
        portables: Sequence[Portable],
        memory: dict[str, dict[str, Any]],
        now: int,
        mode: str,
    ) -> list[MoveOutcome]:
        allowed = {p.job.job_id: p.allowed for p in portables}
        views = self.backend.federation_views() if choices else {}
        outcomes: list[MoveOutcome] = []
        targets: dict[str, str] = {}
        for choice in choices[: self.config.federation.max_moves_per_cycle]:
            job = by_id[choice.job_id].job
            clusters = [self.clusters[s] for s in allowed[choice.job_id]]
            view = views.get(job.origin or job.cluster)
            blockers = move_blockers(job, self.clusters[choice.target], clusters, view)
            entry = memory.setdefault(choice.job_id, {"allowed": list(allowed[choice.job_id])})
            if blockers:
                why = "stays: " + "; ".join(blockers)
                outcomes.append(MoveOutcome(choice.job_id, choice.current, choice.target, "blocked", why))
                entry.update(last=why, at=now)
                continue
            if mode != "enforce":
                outcomes.append(MoveOutcome(choice.job_id, choice.current, choice.target, "would-move", choice.reason))
                entry.update(last=f"would move to {choice.target} ({mode}): {choice.reason}", at=now)
                continue
            targets[choice.job_id] = self.clusters[choice.target]
            entry.update(moving_to=choice.target, reason=choice.reason, at=now)
        if targets:
            # Remembered before the move: a daemon killed after it still knows the job's choices.
            self.store.set_setting(MOVES_SETTING, json.dumps(memory, sort_keys=True), by="daemon")
            try:
                report = self.backend.move(targets)
                failed: Mapping[str, str] = report.failed
            except SlurmError as exc:
                log.error("move_failed", jobs=sorted(targets), error=str(exc))
                failed = dict.fromkeys(targets, str(exc))
            for job_id, cluster in targets.items():
                source, target = by_id[job_id].job.cluster, cluster
                entry = memory[job_id]
                entry.pop("moving_to", None)
                if job_id in failed:
                    outcomes.append(
                        MoveOutcome(job_id, self.sites[source], self.sites[target], "failed", failed[job_id])
                    )
                    entry.update(last=f"move to {self.sites[target]} failed: {failed[job_id]}")
                    continue
                reason = entry.get("reason", "")
                history = [*entry.get("moves", []), {"from": self.sites[source], "to": self.sites[target], "at": now}]
                entry.update(moves=history, last=f"moved {self.sites[source]} -> {self.sites[target]}: {reason}")
                outcomes.append(MoveOutcome(job_id, self.sites[source], self.sites[target], "moved", reason))
                log.info("job_moved", job=job_id, source=self.sites[source], target=self.sites[target], reason=reason)
        for o in outcomes:
            if o.status != "moved":
                log.info("job_not_moved", job=o.job_id, target=o.target, status=o.status, reason=o.reason)
        return outcomes


__all__ = ["MOVES_SETTING", "MoveOutcome", "Mover"]
