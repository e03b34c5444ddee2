"""A two-cluster federation on the fake Slurm (slurm_flex/slurm/fake.py): one FakeSlurm per
cluster, job ids unique across them, and moves as Slurm 22.05 makes them (``scontrol update
Clusters=``: a pending job keeps its id and goes to the target; Slurm itself accepts unsafe
moves, the daemon's checks refuse them). What the real federation adds (REVOKED records, the
copies at each viable sibling) is tested on scripts/fedcluster (tests/test_federation.py)."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import replace

from slurm_flex.errors import SlurmCommandError
from slurm_flex.slurm.backend import StartTarget, UpdateReport
from slurm_flex.slurm.fake import FakeNode, FakeSlurm
from slurm_flex.slurm.federation import FederationBackend, FederationView, SiblingLink
from slurm_flex.slurm.parsers import SlurmJob, SlurmNode, parse_squeue_json


class FakeFederation(FederationBackend):
    def __init__(self, clusters: Sequence[str] = ("cambridge", "manchester"), nodes: int = 2) -> None:
        # No runner: every command is answered by the fakes.
        self.clusters = tuple(clusters)
        ids = itertools.count(1)
        self.fakes: dict[str, FakeSlurm] = {}
        for c in self.clusters:
            fake = FakeSlurm(nodes=nodes)
            fake._ids = ids  # unique ids across the federation, as Slurm's federation makes them
            fake.nodes = [FakeNode(f"{c[:3]}{i}", 2, ("debug", "batch")) for i in range(1, nodes + 1)]
            self.fakes[c] = fake
        self.viable: dict[str, tuple[str, ...]] = {}  # job id -> clusters it may run at
        self.origin: dict[str, str] = {}
        self.unsynced: set[str] = set()  # clusters their siblings do not see synced
        self.moves: list[tuple[str, str]] = []
        self._calls: Counter[str] = Counter()

    # -- users -------------------------------------------------------------------------------
    def submit(self, fake_submit: str, cluster: str, viable: Sequence[str]) -> str:
        """Record a job submitted with ``fake_submit`` (an id from ``self.fakes[cluster]``)."""
        self.viable[fake_submit] = tuple(viable)
        self.origin[fake_submit] = cluster
        return fake_submit

    def where(self, job_id: str) -> str:
        return next(c for c, f in self.fakes.items() if f._lookup(job_id) is not None)

    def schedule(self) -> None:
        for fake in self.fakes.values():
            fake.schedule()

    # -- the backend -------------------------------------------------------------------------
    def read_jobs(self) -> tuple[SlurmJob, ...]:
        out: list[SlurmJob] = []
        for c, fake in self.fakes.items():
            now = fake.now()
            for job in sorted(fake.jobs.values(), key=lambda j: j.job_id):
                raw = job.squeue_json(now)
                raw.update(
                    cluster=c,
                    federation_origin=self.origin.get(str(job.job_id), c),
                    federation_siblings_viable=",".join(self.viable.get(str(job.job_id), (c,))),
                )
                out.extend(parse_squeue_json(json.dumps({"jobs": [raw]})))
        return tuple(sorted(out, key=lambda j: int(j.job_id)))

    def read_nodes(self) -> tuple[SlurmNode, ...]:
        return tuple(replace(n, cluster=c) for c, fake in self.fakes.items() for n in fake.read_nodes())

    def _split(self, values: Mapping[str, object]) -> dict[str, dict[str, object]]:
        by: dict[str, dict[str, object]] = {}
        for job_id, v in values.items():
            by.setdefault(self.where(job_id), {})[job_id] = v
        return by

    @staticmethod
    def _merge(reports: Sequence[UpdateReport]) -> UpdateReport:
        applied = tuple(j for r in reports for j in r.applied)
        failed = {k: v for r in reports for k, v in r.failed.items()}
        return UpdateReport(applied=applied, failed=failed, commands=sum(r.commands for r in reports))

    def set_start_times(self, targets: Mapping[str, StartTarget]) -> UpdateReport:
        return self._merge(
            [self.fakes[c].set_start_times(v) for c, v in self._split(targets).items()]  # type: ignore[arg-type]
        )

    def set_comments(self, comments: Mapping[str, str]) -> UpdateReport:
        return self._merge(
            [self.fakes[c].set_comments(v) for c, v in self._split(comments).items()]  # type: ignore[arg-type]
        )

    def set_priorities(self, priorities: Mapping[str, int]) -> UpdateReport:
        return self._merge(
            [self.fakes[c].set_priorities(v) for c, v in self._split(priorities).items()]  # type: ignore[arg-type]
        )

    def command_counts(self) -> Mapping[str, int]:
        total: Counter[str] = Counter(self._calls)
        for fake in self.fakes.values():
            total.update(fake.command_counts())
        return dict(total)

    def read_output(self, argv: Sequence[str]) -> str:
        if len(argv) == 3 and argv[0] == "scontrol":
            try:
                cluster = self.where(argv[2])
            except StopIteration as exc:
                raise SlurmCommandError(argv, 1, "Invalid job id specified") from exc
            return self.fakes[cluster].read_output(argv)
        return "".join(fake.read_output(argv) for fake in self.fakes.values())

    def federation_views(self) -> dict[str, FederationView]:
        return {
            c: FederationView(
                "fed",
                c,
                {s: SiblingLink(s, "ACTIVE", True, s not in self.unsynced) for s in self.clusters if s != c},
            )
            for c in self.clusters
        }

    def move(self, targets: Mapping[str, str]) -> UpdateReport:
        applied: list[str] = []
        failed: dict[str, str] = {}
        for job_id, target in targets.items():
            self._calls["scontrol"] += 1
            source = self.where(job_id)
            job = self.fakes[source]._find(job_id)
            if job.state != "PENDING":
                failed[job_id] = "Job is no longer pending execution"
                continue
            del self.fakes[source].jobs[job.job_id]
            self.fakes[target].jobs[job.job_id] = job
            self.viable[job_id] = (target,)
            self.moves.append((job_id, target))
            applied.append(job_id)
        return UpdateReport(applied=tuple(applied), failed=failed, commands=len(targets))


__all__ = ["FakeFederation"]
