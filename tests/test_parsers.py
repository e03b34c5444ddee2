"""Pure parsers over real Slurm output: 22.05.8 and 24.11.5 recorded from the devclusters, 23.02,
23.11, 24.05, 25.05 and 25.11 from public sources (tests/fixtures/slurm/PROVENANCE.md)."""

from __future__ import annotations

import json

import pytest

from slurm_flex.errors import SlurmParseError, SlurmQueryError, SlurmVersionError
from slurm_flex.power.readers.slurm_energy import node_energy_from_json
from slurm_flex.slurm.parsers import (
    KNOWN_DATA_PARSERS,
    count_array_tasks,
    detect_format,
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
    with pytest.raises(SlurmParseError, match="neither a 'nodes' nor a 'sinfo' list"):
        parse_sinfo_json("{}")
    with pytest.raises(SlurmParseError, match="without 'nodes'"):
        parse_sinfo_json('{"sinfo": [{"node": {"state": ["IDLE"]}}]}')
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


# -- every data_parser slurm-flex reads ------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "parser", "release"),
    [
        ("squeue-22.05.8-mixed.json", "v0.0.38", "22.05.8"),
        ("sinfo-22.05.8.json", "v0.0.38", "22.05.8"),
        ("squeue-23.02.6-v0.0.39-public.json", "v0.0.39", "23.02.6"),
        ("squeue-23.11.1-v0.0.40-zocalo.json", "v0.0.40", "23.11.1"),
        ("squeue-24.05.3-v0.0.41-slurmrestd-jobs.json", "v0.0.41", "24.05.3"),
        ("squeue-24.11.5-mixed.json", "v0.0.42", "24.11.5"),
        ("sinfo-24.11.5.json", "v0.0.42", "24.11.5"),
        ("squeue-25.05.4-v0.0.43-slurmrestd-jobs.json", "v0.0.43", "25.05.4"),
        ("squeue-25.11.0-v0.0.44-slurmrestd-jobs.json", "v0.0.44", "25.11.0"),
    ],
)
def test_data_parser_and_release_come_from_meta(name: str, parser: str, release: str) -> None:
    fmt = detect_format(json.loads((SLURM / name).read_text()))
    assert (fmt.data_parser, fmt.release) == (parser, release) and fmt.known


def test_every_known_data_parser_has_a_fixture() -> None:
    seen = {detect_format(json.loads(f.read_text())).data_parser for f in SLURM.glob("*.json") if "squeue" in f.name}
    assert seen == set(KNOWN_DATA_PARSERS)


def test_a_newer_data_parser_is_refused_by_name() -> None:
    doc = json.loads((SLURM / "squeue-24.11.5-mixed.json").read_text())
    doc["meta"]["plugin"]["data_parser"] = "data_parser/v0.0.45"
    doc["meta"]["slurm"]["release"] = "26.05.0"
    with pytest.raises(SlurmVersionError, match=r"Slurm 26\.05\.0 writes data_parser/v0\.0\.45, newer than"):
        parse_squeue_json(json.dumps(doc))
    doc["sinfo"] = []
    with pytest.raises(SlurmVersionError, match=r"sinfo --json: .*v0\.0\.45"):
        parse_sinfo_json(json.dumps(doc))
    # 23.02's spelling of meta (plugins, Slurm with integer version parts) is read too.
    version = {"major": 21, "minor": 8, "micro": 1}
    old = {"meta": {"plugins": {"data_parser": "data_parser/v0.0.37"}, "Slurm": {"version": version}}}
    with pytest.raises(SlurmVersionError, match=r"Slurm 21\.08\.1 writes data_parser/v0\.0\.37, older than"):
        parse_squeue_json(json.dumps({**old, "jobs": []}))


def _jobs_24() -> dict[str, object]:
    return {j.job_id: j for j in parse_squeue_json((SLURM / "squeue-24.11.5-mixed.json").read_text())}


def test_squeue_24_11_reads_as_22_05_did() -> None:
    jobs = _jobs_24()
    assert sorted(jobs, key=int) == ["1", "2", "3", "4", "5", "6", "7", "8", "9"]
    running = jobs["1"]
    assert running.state == "RUNNING" and running.nodes == 2 and running.priority == 1
    assert running.end_time == running.start_time + 1800  # type: ignore[operator]
    assert running.allocation == (("node1", 1), ("node2", 1))
    flexible = jobs["2"]
    assert flexible.state == "PENDING" and flexible.state_reason == "BeginTime"
    # No begin_time in 24.11: the hook's postponement is the eligible time.
    assert flexible.eligible_time == flexible.start_time == 1796065444
    assert flexible.deadline == 1796101324 and flexible.time_limit_s == 3600
    assert flexible.tag is not None and flexible.tag.power_w == 285
    assert flexible.allocation == ()
    held = jobs["3"]
    assert held.held and held.priority == 0 and held.eligible_time is None
    begin = jobs["4"]
    assert begin.deadline is None  # unset deadline: set, number 0
    assert begin.eligible_time == 1796072525
    assert jobs["5"].state_reason == "Dependency" and "afterok:4" in jobs["5"].dependency
    array = jobs["6"]
    assert array.array_task_string == "1-10%3" and array.update_id == "6_[1-10]" and array.array_throttle == 3
    assert jobs["7"].het_job_id == 7 and jobs["8"].het_job_id == 7 and jobs["2"].het_job_id is None
    assert jobs["9"].time_limit_s is None  # -t UNLIMITED: infinite


def test_job_state_lists_keep_the_base_state() -> None:
    job = parse_job({"job_id": 3, "job_state": ["PENDING", "REQUEUED"]})
    assert job.state == "PENDING" and job.pending


def test_squeue_23_02_and_23_11_running_jobs() -> None:
    (v39,) = parse_squeue_json((SLURM / "squeue-23.02.6-v0.0.39-public.json").read_text())
    assert v39.state == "RUNNING" and v39.deadline is None and v39.priority == 239256
    assert v39.start_time == 1701983394 and v39.time_limit_s == 6000 * 60
    assert v39.allocation == (("data-center-ia830", 8),) and v39.memory_per_cpu_mb == 15000
    (v40,) = parse_squeue_json((SLURM / "squeue-23.11.1-v0.0.40-zocalo.json").read_text())
    assert v40.state == "RUNNING" and v40.array_job_id == 6077609 and v40.array_task_id == 41
    assert v40.display_id == "6077609_41" and v40.allocation == (("cma2-02", 1),)
    assert v40.deadline is None and v40.time_limit_s == 11520 * 60


def test_sinfo_24_11_groups_become_nodes() -> None:
    nodes = {n.name: n for n in parse_sinfo_json((SLURM / "sinfo-24.11.5.json").read_text())}
    assert sorted(nodes) == ["node1", "node2", "node3", "node4"]
    assert all(n.cpus == 2 and n.real_memory_mb == 1000 for n in nodes.values())
    assert all(n.partitions == ("debug", "batch") for n in nodes.values())
    assert nodes["node1"].state == "mixed" and nodes["node1"].alloc_cpus == 1 and nodes["node1"].usable
    drained = {n.name: n for n in parse_sinfo_json((SLURM / "sinfo-24.11.5-drain.json").read_text())}
    assert drained["node4"].state == "idle" and drained["node4"].state_flags == ("DRAIN",)
    assert not drained["node4"].usable and drained["node3"].usable


def test_sinfo_node_oriented_24_11_is_exact_per_node() -> None:
    nodes = {n.name: n for n in parse_sinfo_json((SLURM / "sinfo-N-24.11.5.json").read_text())}
    assert {name: n.alloc_cpus for name, n in nodes.items()} == {"node1": 1, "node2": 1, "node3": 0, "node4": 0}
    assert set(nodes["node3"].partitions) == {"debug", "batch"}


# -- 24.05, 25.05 and 25.11: slurmrestd /jobs answers of the same data_parser (PROVENANCE.md) ------


def _restd_jobs(name: str) -> dict[str, object]:
    return {j.job_id: j for j in parse_squeue_json((SLURM / name).read_text())}


def test_squeue_24_05_v0_0_41_real_jobs() -> None:
    name = "squeue-24.05.3-v0.0.41-slurmrestd-jobs.json"
    doc = json.loads((SLURM / name).read_text())
    # v0.0.41's own job shape, not v0.0.42's: fields 24.11 dropped are still there.
    assert {"exclusive", "oversubscribe", "show_flags"} <= set(doc["jobs"][0])
    assert "priority_by_partition" not in doc["jobs"][0]
    jobs = _restd_jobs(name)
    assert sorted(jobs, key=int) == ["649722", "649726", "649728", "649730"]  # 649717 TIMEOUT dropped
    multi = jobs["649728"]
    assert multi.state == "RUNNING" and multi.nodes == 3 and multi.cpus == 128 and multi.user == "crich"
    assert multi.allocation == (("cn004", 48), ("cn005", 64), ("cn006", 16))
    assert multi.start_time == 1747754493 and multi.end_time == 1747754613 and multi.time_limit_s == 120
    assert multi.priority == 727 and multi.deadline is None and multi.memory_per_cpu_mb == 512
    assert jobs["649726"].allocation == (("cn003", 64),)
    pending = jobs["649730"]
    assert pending.pending and pending.state_reason == "BeginTime" and not pending.held
    assert pending.submit_time == 1747754494 and pending.eligible_time == 1747758094
    assert pending.time_limit_s == 60 and pending.allocation == () and pending.partition == "batch"


def test_squeue_25_05_v0_0_43_real_jobs() -> None:
    jobs = _restd_jobs("squeue-25.05.4-v0.0.43-slurmrestd-jobs.json")
    assert sorted(jobs, key=int) == ["4734", "4735", "4741", "4743"]  # 4730 TIMEOUT dropped
    multi = jobs["4734"]
    assert multi.state == "RUNNING" and multi.nodes == 3 and multi.cpus == 128
    assert multi.allocation == (("cn1", 31), ("cn2", 64), ("cn3", 33))
    assert multi.start_time == 1762789002 and multi.end_time == 1762789122
    assert jobs["4741"].state_reason == "Resources" and jobs["4741"].eligible_time == 1762789012
    begin = jobs["4743"]
    assert begin.pending and begin.state_reason == "BeginTime" and begin.nodes == 2 and begin.cpus == 128
    assert begin.eligible_time == 1762792615 and begin.deadline is None and begin.priority == 545


def test_squeue_25_11_v0_0_44_real_jobs() -> None:
    jobs = _restd_jobs("squeue-25.11.0-v0.0.44-slurmrestd-jobs.json")
    assert sorted(jobs, key=int) == ["5745", "5746", "5750"]  # 5737 TIMEOUT dropped
    assert jobs["5745"].allocation == (("cn1", 4),) and jobs["5745"].cpus == 4
    assert jobs["5746"].allocation == (("cn1", 1),) and jobs["5746"].end_time == 1762942590
    begin = jobs["5750"]
    assert begin.pending and begin.state_reason == "BeginTime" and begin.nodes == 2
    assert begin.eligible_time == 1762946075 and begin.time_limit_s == 60 and begin.user == "vhartman"
