"""The federation adapter (slurm_flex/slurm/federation.py): pure parsers and move checks, then
the same against the real two-cluster federation (scripts/fedcluster)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from slurm_flex.slurm.federation import (
    FederationBackend,
    live_jobs,
    move_blockers,
    parse_federation,
)
from slurm_flex.slurm.parsers import SlurmJob, parse_job
from tests.federation import Federation

SHOW_FEDERATION = """Federation: sfxfed
Self:       cambridge:127.0.0.1:39010 ID:1 FedState:ACTIVE Features:cambridge
Sibling:    manchester:127.0.0.1:39020 ID:2 FedState:ACTIVE Features:manchester PersistConnSend/Recv:Yes/Yes Synced:Yes
"""
# As the origin shows it for a few seconds after the sibling's controller died.
SHOW_FEDERATION_DOWN = SHOW_FEDERATION.replace(
    "PersistConnSend/Recv:Yes/Yes Synced:Yes", "PersistConnSend/Recv:No/No Synced:No"
)


def job(**fields: Any) -> SlurmJob:
    raw: dict[str, Any] = {
        "job_id": 67108865,
        "job_state": "PENDING",
        "state_reason": "BeginTime",
        "partition": "batch",
        "cluster": "cambridge",
        "federation_origin": "cambridge",
        "federation_siblings_viable": "cambridge,manchester",
        "federation_siblings_active": "cambridge,manchester",
        "priority": 100,
    }
    raw.update(fields)
    return parse_job(raw)


def test_parse_federation_reads_links() -> None:
    view = parse_federation(SHOW_FEDERATION)
    assert view.name == "sfxfed" and view.self_cluster == "cambridge"
    assert view.siblings["manchester"].ready
    assert not parse_federation(SHOW_FEDERATION_DOWN).siblings["manchester"].ready
    assert parse_federation("").siblings == {}


def test_job_fields_of_a_federation() -> None:
    j = job()
    assert j.cluster == "cambridge" and j.origin == "cambridge"
    assert j.siblings_viable == ("cambridge", "manchester")


def test_live_jobs_one_record_per_job() -> None:
    # A job viable at both has a pending copy at each: the origin's is the job.
    cam = job(job_id=1)
    man = job(job_id=1, cluster="manchester")
    # A moved job: REVOKED at the origin, pending at the target.
    revoked = job(job_id=2, job_state="REVOKED", federation_siblings_viable="manchester")
    moved = job(job_id=2, cluster="manchester", federation_siblings_viable="manchester")
    # Running at the sibling: that copy is the job.
    run_cam = job(job_id=3)
    run_man = job(job_id=3, cluster="manchester", job_state="RUNNING")
    out = live_jobs({"cambridge": [cam, revoked, run_cam], "manchester": [man, moved, run_man]})
    assert [(j.job_id, j.cluster, j.state) for j in out] == [
        ("1", "cambridge", "PENDING"),
        ("2", "manchester", "PENDING"),
        ("3", "manchester", "RUNNING"),
    ]


def test_move_blockers() -> None:
    view = parse_federation(SHOW_FEDERATION)
    allowed = ("cambridge", "manchester")
    assert move_blockers(job(), "manchester", allowed, view) == ()
    array = job(array_job_id=67108865, array_task_string="1-4")
    assert any("array" in r for r in move_blockers(array, "manchester", allowed, view))
    dep = job(dependency="afterok:67108864(unfulfilled)", state_reason="Dependency")
    assert any("dependency" in r for r in move_blockers(dep, "manchester", allowed, view))
    assert any(
        "not reachable" in r
        for r in move_blockers(job(), "manchester", allowed, parse_federation(SHOW_FEDERATION_DOWN))
    )
    assert any("not pending" in r for r in move_blockers(job(job_state="RUNNING"), "manchester", allowed, view))
    assert any("not among" in r for r in move_blockers(job(), "manchester", ("cambridge",), view))
    assert any("already" in r for r in move_blockers(job(cluster="manchester"), "manchester", allowed, view))
    assert any("unknown" in r for r in move_blockers(job(), "manchester", allowed, None))


# -- the real federation ------------------------------------------------------------------------


@pytest.mark.slurm
def test_reads_every_cluster_and_moves(federation: Federation) -> None:
    backend = FederationBackend(federation.runner(), ("cambridge", "manchester"))
    job_id = federation.sbatch("--clusters=cambridge,manchester", "--begin=now+1hour", "-t", "10")
    pinned = federation.sbatch("-M", "cambridge", "--begin=now+1hour", "-t", "10")
    jobs = {j.job_id: j for j in backend.read_jobs()}
    # Viable at both (a pending copy at each), yet read once, at its origin.
    assert jobs[job_id].cluster == "cambridge" and jobs[job_id].siblings_viable == ("cambridge", "manchester")
    assert jobs[pinned].siblings_viable == ("cambridge",)
    views = backend.federation_views()
    assert views["cambridge"].siblings["manchester"].ready
    assert move_blockers(jobs[job_id], "manchester", jobs[job_id].siblings_viable, views["cambridge"]) == ()
    report = backend.move({job_id: "manchester"})
    assert report.applied == (job_id,) and not report.failed
    deadline = time.monotonic() + 20
    while federation.live_copies(job_id) != {"manchester": "PENDING"} and time.monotonic() < deadline:
        time.sleep(0.3)
    assert federation.live_copies(job_id) == {"manchester": "PENDING"}
    assert federation.records(job_id)["cambridge"]["job_state"] == "REVOKED"
    moved = {j.job_id: j for j in backend.read_jobs()}[job_id]
    assert moved.cluster == "manchester"
    # Start-time updates still reach it (through its origin).
    backend.set_start_times({job_id: None})
    assert federation.wait(job_id, "manchester", {"RUNNING", "COMPLETED", "COMPLETING"}) != "GONE"
    nodes = backend.read_nodes()
    assert {n.cluster for n in nodes} == {"cambridge", "manchester"}


@pytest.mark.slurm
def test_unsafe_jobs_are_refused(federation: Federation) -> None:
    backend = FederationBackend(federation.runner(), ("cambridge", "manchester"))
    parent = federation.sbatch("--clusters=cambridge,manchester", "--begin=now+1hour", "-t", "10")
    child = federation.sbatch("--clusters=cambridge,manchester", "-d", f"afterok:{parent}", "-t", "10")
    array = federation.sbatch("--clusters=cambridge,manchester", "--array=1-3", "--begin=now+1hour", "-t", "10")
    jobs = {j.job_id: j for j in backend.read_jobs()}
    view = backend.federation_views()["cambridge"]
    allowed = ("cambridge", "manchester")
    assert any("dependency" in r for r in move_blockers(jobs[child], "manchester", allowed, view))
    array_job = next(j for j in jobs.values() if j.array_job_id == int(array))
    assert any("array" in r for r in move_blockers(array_job, "manchester", allowed, view))
    doc = json.loads(federation.run("squeue", "--json", "-M", "cambridge").stdout)
    assert {str(j["job_id"]) for j in doc["jobs"]} >= {parent, child}
