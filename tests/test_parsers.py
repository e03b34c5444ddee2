"""Pure parsers over real Slurm 22.05.8 output recorded from the devcluster."""

from __future__ import annotations

import json

import pytest

from slurm_flex.errors import SlurmParseError, SlurmQueryError
from slurm_flex.power.readers.slurm_energy import node_energy_from_json
from slurm_flex.slurm.parsers import (
    count_array_tasks,
    first_partition,
    parse_job,
    parse_sinfo_json,
    parse_squeue_json,
    parse_update_failures,
    slurm_number,
)
from tests.conftest import FIXTURES

SLURM = FIXTURES / "slurm"


def _jobs() -> dict[str, object]:
    return {j.job_id: j for j in parse_squeue_json((SLURM / "squeue-22.05.8-mixed.json").read_text())}


def test_squeue_fields_from_real_output() -> None:
    jobs = _jobs()
    assert sorted(jobs, key=int) == ["8", "9", "10", "11", "12", "13", "14", "15", "16"]
    pending = jobs["9"]
    assert pending.state == "PENDING" and pending.state_reason == "BeginTime"
    assert pending.deadline == 1795294399
    assert pending.eligible_time == 1795258399
    assert pending.time_limit_s == 3600
    assert pending.tag is not None and pending.tag.power_w == 285
    running = jobs["8"]
    assert running.state == "RUNNING" and running.nodes == 2
    assert running.end_time == running.start_time + 1800
    assert running.name == "wrap" and running.allocation == (("node1", 1), ("node2", 1))
    assert pending.allocation == ()


def test_held_dependency_unlimited_and_het() -> None:
    jobs = _jobs()
    assert jobs["10"].held and jobs["10"].eligible_time is None
    assert jobs["12"].state_reason == "Dependency" and "afterok:11" in jobs["12"].dependency
    assert jobs["16"].time_limit_s is None  # -t UNLIMITED
    assert jobs["14"].het_job_id == 14 and jobs["15"].het_job_id == 14
    assert not jobs["9"].held and jobs["9"].het_job_id is None


def test_pending_array_is_one_record_addressed_by_its_tasks() -> None:
    array = _jobs()["13"]
    assert array.array_task_string == "1-10%3"
    assert array.array_tasks == 10
    assert array.update_id == "13_[1-10]"
    assert array.display_id == "13_[1-10%3]"
    assert array.tres_per_node == "gres:gpu:0"


def test_finished_jobs_are_dropped() -> None:
    # squeue --json on 22.05 ignores --states and lists recently finished jobs too.
    doc = json.loads((SLURM / "squeue-22.05.8-mixed.json").read_text())
    states = [j["job_state"] for j in doc["jobs"]]
    assert "COMPLETED" in states or "CANCELLED" in states
    active = [s for s in states if s in ("PENDING", "RUNNING")]
    assert len(parse_squeue_json(json.dumps(doc))) == len(active)
    doc["jobs"][0]["job_state"] = "COMPLETED"
    assert len(parse_squeue_json(json.dumps(doc))) == len(active) - (states[0] in ("PENDING", "RUNNING"))


def test_newer_slurm_number_objects_are_accepted() -> None:
    raw = {
        "job_id": 5,
        "job_state": ["PENDING"],
        "time_limit": {"set": True, "infinite": False, "number": 30},
        "deadline": {"set": True, "number": 1800000000},
        "eligible_time": {"set": False, "number": 0},
        "node_count": {"set": True, "number": 2},
        "priority": {"set": True, "number": 10},
    }
    job = parse_job(raw)
    assert job.state == "PENDING" and job.time_limit_s == 1800 and job.deadline == 1800000000
    assert job.eligible_time is None and job.nodes == 2
    unlimited = parse_job({**raw, "time_limit": {"set": True, "infinite": True, "number": 0}})
    assert unlimited.time_limit_s is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "not JSON"),
        ('{"jobs": [', "not JSON"),
        ("[]", "JSON object"),
        ('{"errors": [{"error": "boom"}], "jobs": []}', "Slurm could not answer: boom"),
        ('{"meta": {}}', "no 'jobs' list"),
        ('{"jobs": [{"job_state": "PENDING"}]}', "without 'job_id'"),
        ('{"jobs": [{"job_id": "x"}]}', "expected a number"),
    ],
)
def test_garbage_squeue_output_is_a_parse_error(text: str, message: str) -> None:
    with pytest.raises((SlurmParseError, SlurmQueryError), match=message):
        parse_squeue_json(text)


def test_sinfo_usable_nodes_exclude_drained() -> None:
    nodes = parse_sinfo_json((SLURM / "sinfo-22.05.8.json").read_text())
    assert [n.name for n in nodes] == ["node1", "node2", "node3", "node4"]
    assert all(n.cpus == 2 for n in nodes)
    drained = {n.name: n for n in parse_sinfo_json((SLURM / "sinfo-22.05.8-drain.json").read_text())}
    assert drained["node4"].state_flags == ("DRAIN",) and not drained["node4"].usable
    assert drained["node3"].usable


def test_sinfo_garbage() -> None:
    with pytest.raises(SlurmParseError, match="no 'nodes' list"):
        parse_sinfo_json("{}")
    with pytest.raises(SlurmParseError, match="without 'state'"):
        parse_sinfo_json('{"nodes": [{"name": "n1"}]}')


@pytest.mark.parametrize(
    ("expr", "count"),
    [("1-10", 10), ("1-10%3", 10), ("0-9:2", 5), ("1,3,5", 3), ("1-3,7,10-12", 7), ("[4-6]", 3), ("5", 1)],
)
def test_count_array_tasks(expr: str, count: int) -> None:
    assert count_array_tasks(expr) == count


def test_count_array_tasks_rejects_garbage() -> None:
    with pytest.raises(SlurmParseError):
        count_array_tasks("1-x")


def test_update_failures_are_attributed_to_jobs() -> None:
    # Verbatim stderr of `scontrol update JobId=1,2,3,99999 StartTime=...` on 22.05.8.
    stderr = "Job is no longer pending execution for job 3\nInvalid job id specified for job 99999\n"
    assert parse_update_failures(stderr) == {
        "3": "Job is no longer pending execution",
        "99999": "Invalid job id specified",
    }
    assert parse_update_failures("slurm_update error: Unable to contact slurm controller") == {}


@pytest.mark.parametrize(
    ("value", "number"),
    [
        (7, 7),
        (2.5, 2.5),
        (None, None),
        (True, None),
        ({"set": True, "infinite": False, "number": 30}, 30),
        ({"set": False, "number": 30}, None),
        ({"set": True, "infinite": True, "number": 0}, None),
        ({"number": 612}, 612),  # no "set" flag: its number is all it says
        ({"set": True}, None),
    ],
)
def test_one_rule_decodes_slurm_numbers_for_jobs_and_for_node_energy(value: object, number: float | None) -> None:
    assert slurm_number(value) == number
    # Job fields and Slurm's energy readings go by the same rule.
    job = parse_job({"job_id": 1, "job_state": "PENDING", "priority": value})
    assert job.priority == (0 if number is None else int(number))
    energy = {"last_collected": 1800000000, "current_watts": value}
    (reading,) = node_energy_from_json({"nodes": [{"name": "n1", "energy": energy}]})
    assert reading.current_watts == (float(number) if number else None)


def test_slurm_numbers_that_are_not_numbers() -> None:
    with pytest.raises(SlurmParseError, match="expected a number"):
        slurm_number("12")
    (reading,) = node_energy_from_json(
        {"nodes": [{"name": "n1", "energy": {"last_collected": 5, "current_watts": "n/s"}}]}
    )
    assert reading.current_watts is None  # an energy figure that is not a number is no reading


def test_a_job_submitted_to_several_partitions_is_judged_by_the_first() -> None:
    assert first_partition("gpu,debug") == "gpu" and first_partition("debug") == "debug"
    assert first_partition(None) == first_partition("") == ""
