"""What the daemon relies on Slurm for, asked of the real local cluster and of the fake
(slurm_flex/slurm/fake.py) alike: every scenario runs twice, and both must answer the same.
This is what lets tests/test_cycle.py test the daemon's logic on the fake.

Relied on: start times move for pending jobs only, with Slurm's per-job messages and the rest of
a batch applied; a release makes a job eligible now; a deferred job waits on its begin time,
never a hold; an array is one pending record moved by its ``<id>_[<tasks>]`` id; priorities and
comments are taken by pending and running jobs; jobs waiting for nodes say ``Resources`` then
``Priority``; running jobs show their nodes and cores; nodes show their CPUs and partitions;
one command per read and per distinct value; and with the controller down, reads fail whole
while updates fail job by job."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest

from slurm_flex.errors import SlurmQueryError, SlurmUnavailableError
from slurm_flex.grid.series import SLOT_SECONDS, floor_slot
from slurm_flex.slurm.backend import CommandBackend, SlurmBackend
from slurm_flex.slurm.fake import FakeSlurm
from slurm_flex.slurm.parsers import SlurmJob
from tests.conftest import Cluster, ClusterPool, selected_series, wait_state


class World(Protocol):
    """A cluster to submit to, and the backend the daemon would read and change it with."""

    backend: SlurmBackend

    def submit(
        self, *, minutes: int = 5, begin_in: int | None = None, nodes: int = 1, cpus: int = 1, array: str = ""
    ) -> str: ...

    def run(self, job_id: str) -> None:
        """Wait until the job runs (the scheduler's business)."""

    def settle(self, job_ids: list[str]) -> None:
        """Wait until the scheduler has looked at these jobs (their reason is no longer None)."""

    def down(self) -> SlurmBackend:
        """A backend whose controller cannot be reached."""
        ...


@dataclass
class FakeWorld:
    slurm: FakeSlurm

    @property
    def backend(self) -> SlurmBackend:
        return self.slurm

    def submit(
        self, *, minutes: int = 5, begin_in: int | None = None, nodes: int = 1, cpus: int = 1, array: str = ""
    ) -> str:
        begin = None if begin_in is None else self.slurm.now() + begin_in
        return self.slurm.submit(time_limit_s=minutes * 60, begin=begin, nodes=nodes, cpus=cpus, array=array)

    def run(self, job_id: str) -> None:
        self.slurm.schedule()
        assert self.slurm.job(job_id).state == "RUNNING"

    def settle(self, job_ids: list[str]) -> None:
        self.slurm.schedule()

    def down(self) -> SlurmBackend:
        self.slurm.down = True
        return self.slurm


@dataclass
class RealWorld:
    cluster: Cluster
    tmp: Path

    def __post_init__(self) -> None:
        self.backend: SlurmBackend = CommandBackend(self.cluster.runner())

    def submit(
        self, *, minutes: int = 5, begin_in: int | None = None, nodes: int = 1, cpus: int = 1, array: str = ""
    ) -> str:
        args = ["-t", str(minutes), "-N", str(nodes), "-n", str(cpus)]
        if begin_in is not None:
            args += ["--begin", f"now+{begin_in}"]
        if array:
            args += ["--array", array]
        return self.cluster.sbatch(*args, "--wrap", "sleep 300")

    def run(self, job_id: str) -> None:
        wait_state(self.cluster, job_id, {"RUNNING"})

    def settle(self, job_ids: list[str]) -> None:
        deadline = time.monotonic() + 60  # the scheduler runs on its own, every so often
        while time.monotonic() < deadline:
            if all(read(self, j).state_reason != "None" for j in job_ids):
                return
            time.sleep(0.5)

    def down(self) -> SlurmBackend:
        return CommandBackend(self.cluster.runner(self.cluster.dead_conf(), timeout_seconds=60))


@pytest.fixture(
    params=["fake", *(pytest.param(f"real-{series}", marks=pytest.mark.slurm) for series in selected_series())]
)
def world(request: pytest.FixtureRequest, tmp_path: Path, cluster_pool: ClusterPool) -> Iterator[World]:
    if request.param == "fake":
        yield FakeWorld(FakeSlurm())
        return
    cluster = cluster_pool.get(request.param.removeprefix("real-"))
    cluster.cancel_all()
    yield RealWorld(cluster, tmp_path)
    cluster.cancel_all()


def read(world: World, job_id: str) -> SlurmJob:
    return next(j for j in world.backend.read_jobs() if j.job_id == job_id)


def later_slot(hours: int = 2) -> int:
    return floor_slot(time.time()) + hours * 3600 + SLOT_SECONDS


def test_start_times_move_for_pending_jobs_only_and_the_rest_of_a_batch_applies(world: World) -> None:
    running = world.submit()
    world.run(running)
    pending = [world.submit(begin_in=3600) for _ in range(3)]
    target = later_slot()
    report = world.backend.set_start_times({**{p: target for p in pending}, running: target, "999999": target})
    assert report.commands == 1
    assert sorted(report.applied) == sorted(pending)
    assert report.failed == {running: "Job is no longer pending execution", "999999": "Invalid job id specified"}
    for p in pending:
        job = read(world, p)
        assert job.eligible_time == job.start_time == target
    assert read(world, running).state == "RUNNING"
    assert world.backend.command_counts()["scontrol"] == 1


def test_a_deferred_job_waits_on_its_begin_time_not_on_a_hold(world: World) -> None:
    job_id = world.submit(begin_in=600)
    target = later_slot(3)
    assert world.backend.set_start_times({job_id: target}).applied == (job_id,)
    job = read(world, job_id)
    # With no daemon left, Slurm starts it at that time by itself.
    assert job.pending and not job.held and job.priority > 0 and job.eligible_time == target
    assert job.end_time == target + 5 * 60  # Slurm's expected end: begin + time limit


def test_a_release_makes_a_job_eligible_now(world: World) -> None:
    job_id = world.submit(begin_in=3600)
    now = time.time()
    assert world.backend.set_start_times({job_id: None}).applied == (job_id,)
    job = read(world, job_id)  # the real scheduler may already have started it
    since = job.start_time if job.state == "RUNNING" else job.eligible_time
    assert since is not None and now - 5 <= since <= time.time() + 5


def test_an_array_is_one_pending_record_moved_by_its_update_id(world: World) -> None:
    job_id = world.submit(begin_in=3600, array="1-4")
    (job,) = [j for j in world.backend.read_jobs() if j.array_job_id == int(job_id)]
    assert job.pending and job.update_id == f"{job_id}_[1-4]" and job.array_tasks == 4
    target = later_slot()
    report = world.backend.set_start_times({job.update_id: target})
    assert report.applied == (job.update_id,) and report.commands == 1
    (job,) = [j for j in world.backend.read_jobs() if j.array_job_id == int(job_id)]
    assert job.eligible_time == target


def test_priorities_and_comments_are_taken_by_pending_and_running_jobs(world: World) -> None:
    running = world.submit()
    world.run(running)
    pending = world.submit(begin_in=3600)
    before = read(world, pending).priority
    report = world.backend.set_priorities({pending: before + 1000, running: 500})
    assert sorted(report.applied) == sorted([pending, running]) and report.commands == 2
    assert read(world, pending).priority == before + 1000 and read(world, running).priority == 500
    report = world.backend.set_comments({pending: "project-x slurmflex-plan=2026-11-21T08:00:00Z", running: "x"})
    assert sorted(report.applied) == sorted([pending, running])
    assert read(world, pending).comment == "project-x slurmflex-plan=2026-11-21T08:00:00Z"
    assert read(world, running).comment == "x"


def test_priorities_follow_submission_order(world: World) -> None:
    """The queue runs in submission order when nobody set a priority: priority/basic (22.05's
    default, the fake) counts down from the first job; priority/multifactor with every weight 0
    (24.11's default) gives each job 1, and Slurm (like the daemon) breaks ties by submit time."""
    first, second = world.submit(begin_in=3600), world.submit(begin_in=3600)
    a, b = read(world, first), read(world, second)
    assert a.priority >= b.priority > 0
    assert (-a.priority, a.submit_time, int(a.job_id)) < (-b.priority, b.submit_time, int(b.job_id))


def test_jobs_waiting_for_nodes_say_resources_then_priority(world: World) -> None:
    filler = [world.submit(cpus=2) for _ in range(4)]
    for job_id in filler:
        world.run(job_id)
    first, second = world.submit(cpus=2), world.submit(cpus=2)
    world.settle([first, second])
    assert (read(world, first).state_reason, read(world, second).state_reason) == ("Resources", "Priority")


def test_running_jobs_show_their_cores_and_nodes_their_cpus(world: World) -> None:
    job_id = world.submit(cpus=1)
    world.run(job_id)
    job = read(world, job_id)
    assert job.state == "RUNNING" and len(job.allocation) == 1 and job.allocation[0][1] == 1
    assert job.start_time is not None and job.end_time == job.start_time + 5 * 60
    nodes = {n.name: n for n in world.backend.read_nodes()}
    assert sorted(nodes) == ["node1", "node2", "node3", "node4"]
    # (Partition order is Slurm's listing order, which differs by version; only membership counts.)
    assert all(n.cpus == 2 and set(n.partitions) == {"debug", "batch"} and n.usable for n in nodes.values())
    host = nodes[job.allocation[0][0]]
    assert host.alloc_cpus == 1 and host.state == "mixed"
    assert sum(n.alloc_cpus for n in nodes.values()) == 1


def test_one_command_per_read_and_per_distinct_value(world: World) -> None:
    jobs = [world.submit(begin_in=3600) for _ in range(3)]
    counts = dict(world.backend.command_counts())
    world.backend.read_jobs()
    world.backend.read_nodes()
    targets = {jobs[0]: later_slot(2), jobs[1]: later_slot(2), jobs[2]: later_slot(3)}
    assert world.backend.set_start_times(targets).commands == 2
    after = world.backend.command_counts()
    assert {k: after[k] - counts.get(k, 0) for k in after} == {"squeue": 1, "sinfo": 1, "scontrol": 2}


def test_a_dead_controller_fails_reads_whole_and_updates_job_by_job(world: World) -> None:
    job_id = world.submit(begin_in=3600)
    backend = world.down()
    # 22.05 exits 0 with the failure inside the JSON, 24.11 exits 1: a read fails whole either way.
    with pytest.raises((SlurmQueryError, SlurmUnavailableError), match=r"looking for jobs|Unable to contact"):
        backend.read_jobs()
    with pytest.raises((SlurmQueryError, SlurmUnavailableError), match=r"could not answer|Unable to contact"):
        backend.read_nodes()
    report = backend.set_start_times({job_id: later_slot()})
    assert report.applied == () and report.failed == {job_id: "Unexpected message received"}
