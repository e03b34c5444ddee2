"""Safety rules of the daemon's decisions, without Slurm."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from slurm_flex.config import FlexConfig
from slurm_flex.daemon.decide import BEGIN_TOLERANCE_S, assess, power_request, queue_priorities, reconcile
from slurm_flex.grid.series import SLOT_SECONDS, SignalSeries
from slurm_flex.planner import Policy, plan
from slurm_flex.planner.queue import FlexJob
from slurm_flex.power.model import NodePower, PowerModel, Request
from slurm_flex.slurm.parsers import SlurmJob
from slurm_flex.state import JobRecord

NOW = 1795251000
SLOT0 = NOW - NOW % SLOT_SECONDS
POLICY = Policy(safety_margin_seconds=900, min_saving_fraction=0.05)
POWER = PowerModel(default=NodePower(cpus_per_node=2))
RULES = FlexConfig()


def job(**changes: object) -> SlurmJob:
    base = SlurmJob(
        job_id="42",
        array_job_id=None,
        array_task_id=None,
        array_task_string="",
        user="alice",
        account="",
        partition="debug",
        qos="",
        state="PENDING",
        state_reason="BeginTime",
        nodes=1,
        cpus=2,
        tres_per_node="",
        tres_per_job="",
        tres_per_task="",
        tasks=1,
        memory_per_node_mb=None,
        memory_per_cpu_mb=None,
        time_limit_s=3600,
        submit_time=NOW - 10,
        eligible_time=NOW + 110,
        start_time=None,
        end_time=None,
        deadline=NOW + 12 * 3600,
        priority=100,
        comment="",
        admin_comment=f"slurmflex:v1;power_w=500;basis=req;begin=0;grace={NOW + 110};deadline=0;flex=deadline",
        het_job_id=None,
        dependency="",
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def record(**changes: object) -> JobRecord:
    base = JobRecord(
        job_id="42",
        display_id="42",
        user="alice",
        partition="debug",
        first_seen=NOW - 300,
        last_seen=NOW - 300,
        deadline=NOW + 12 * 3600,
        latest_start=None,
        earliest=NOW - 10,
        power_w=500.0,
        energy_kwh=0.5,
        expected_begin=NOW + 110,
        applied_begin=None,
        planned_start=None,
        status="runs-now",
        reason="",
        baseline_carbon_g=None,
        planned_carbon_g=None,
        mean_ci_baseline=None,
        mean_ci_planned=None,
        updated_at=NOW - 300,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def series(carbon: list[float]) -> SignalSeries:
    return SignalSeries(start=SLOT0, carbon=tuple(carbon), price=(math.nan,) * len(carbon), source="t")


def eligible(**changes: object) -> SlurmJob:
    """A job no longer inside the hook's grace (its start time is its own)."""
    return job(eligible_time=NOW - 10, **changes)


def test_jobs_without_deadline_are_never_touched() -> None:
    assert assess(eligible(deadline=None), None, (), POLICY, RULES, POWER, NOW) is None
    assert assess(eligible(deadline=None), record(), (), POLICY, RULES, POWER, NOW) is None


def test_the_hooks_grace_is_handed_back_when_a_job_is_not_flexible_after_all() -> None:
    a = assess(job(deadline=None), None, (), POLICY, RULES, POWER, NOW)  # still inside its grace
    assert a is not None and a.must_release
    (intent,) = reconcile([a], plan([], None, None, POLICY, NOW), NOW)
    assert intent.kind == "release" and intent.new_begin is None


def test_jobs_we_deferred_are_handed_back_when_they_lose_their_deadline() -> None:
    a = assess(
        job(deadline=None, eligible_time=NOW + 5000),
        record(status="deferred", applied_begin=NOW + 5000, expected_begin=NOW + 5000),
        (),
        POLICY,
        RULES,
        POWER,
        NOW,
    )
    assert a is not None and a.must_release
    intents = reconcile([a], plan([], None, None, POLICY, NOW), NOW)
    assert [(i.job_id, i.new_begin, i.kind) for i in intents] == [("42", None, "release")]


def test_partition_scope() -> None:
    assert assess(eligible(partition="gpu"), None, (), POLICY, FlexConfig(partitions=("debug",)), POWER, NOW) is None
    assert (
        assess(eligible(partition="debug"), None, (), POLICY, FlexConfig(partitions=("debug",)), POWER, NOW) is not None
    )


def test_held_dependency_het_and_unlimited_are_left_alone() -> None:
    for j, status in [
        (job(priority=0, state_reason="JobHeldUser"), "held"),
        (job(state_reason="Dependency"), "waiting"),
        (job(het_job_id=7), "ineligible"),
        (job(time_limit_s=None), "ineligible"),
    ]:
        a = assess(j, None, (), POLICY, RULES, POWER, NOW)
        assert a is not None and a.status == status and a.flex is None
        assert reconcile([a], plan([], None, None, POLICY, NOW), NOW) == []


def test_a_start_time_changed_by_someone_else_is_left_alone_for_good() -> None:
    rec = record(expected_begin=NOW + 3600, applied_begin=NOW + 3600, status="deferred")
    moved = job(eligible_time=NOW + 7200)
    a = assess(moved, rec, (), POLICY, RULES, POWER, NOW)
    assert a is not None and a.status == "manual" and a.flex is None
    # ...even once the begin time looks normal again.
    again = assess(
        job(eligible_time=NOW + 3600), rec.evolve(status="manual", reason=a.reason), (), POLICY, RULES, POWER, NOW
    )
    assert again is not None and again.status == "manual"


def test_our_own_unsettled_changes_are_not_mistaken_for_an_admin() -> None:
    # The daemon died after scontrol but before recording the result.
    rec = record(expected_begin=NOW + 110)
    a = assess(job(eligible_time=NOW + 9000), rec, (NOW + 9000,), POLICY, RULES, POWER, NOW)
    assert a is not None and a.status == "planned"
    within = assess(job(eligible_time=NOW + 110 + BEGIN_TOLERANCE_S), rec, (), POLICY, RULES, POWER, NOW)
    assert within is not None and within.status == "planned"


def test_flex_job_uses_tag_power_user_begin_and_latest_safe_start() -> None:
    begin = NOW + 1800
    j = job(admin_comment=f"x slurmflex:v1;power_w=777;begin={begin};grace=0", eligible_time=begin)
    a = assess(j, None, (), POLICY, RULES, POWER, NOW)
    assert a is not None and a.flex is not None
    assert a.flex.power_w == 777 and a.flex.earliest == begin
    assert a.flex.latest_start == j.deadline - 3600 - 900  # type: ignore[operator]
    untagged = assess(job(admin_comment="", eligible_time=NOW - 10), None, (), POLICY, RULES, POWER, NOW)
    assert untagged is not None and untagged.flex is not None
    assert untagged.flex.power_w == POWER.estimate(Request(nodes=1, cpus=2)) and untagged.flex.earliest == NOW - 10
    # Measured jobs like it drew 60 % of their estimate: the plan uses the corrected power.
    measured = assess(j, None, (), POLICY, RULES, POWER, NOW, power_factor=0.6)
    assert measured is not None and measured.flex is not None and measured.flex.power_w == pytest.approx(777 * 0.6)


def test_array_records_plan_all_their_tasks() -> None:
    arr = job(array_job_id=42, array_task_string="1-4", job_id="42")
    a = assess(arr, None, (), POLICY, RULES, POWER, NOW)
    assert a is not None and a.flex is not None
    assert a.flex.job_id == "42_[1-4]" and a.flex.nodes == 4 and a.flex.power_w == 4 * 500


def test_reconcile_defers_releases_and_skips_unchanged() -> None:
    carbon = [300.0] * 48
    carbon[10:12] = [50.0, 50.0]
    a = assess(job(), None, (), POLICY, RULES, POWER, NOW)
    assert a is not None
    p = plan([a.flex], series(carbon), None, POLICY, NOW)  # type: ignore[list-item]
    (intent,) = reconcile([a], p, NOW)
    assert intent.kind == "defer" and intent.new_begin == SLOT0 + 10 * SLOT_SECONDS
    # Already at the target: nothing to do.
    same = assess(job(eligible_time=intent.new_begin), None, (), POLICY, RULES, POWER, NOW)
    assert reconcile([same], p, NOW) == []  # type: ignore[list-item]
    # Cleanest is now: the hook's grace is released.
    flat = plan([a.flex], series([100.0] * 48), None, POLICY, NOW)  # type: ignore[list-item]
    (release,) = reconcile([a], flat, NOW)
    assert release.kind == "release" and release.new_begin is None
    # Cleanest now and no grace pending: nothing to do.
    eligible = assess(job(eligible_time=NOW - 10), None, (), POLICY, RULES, POWER, NOW)
    assert reconcile([eligible], flat, NOW) == []  # type: ignore[list-item]


def test_never_deferred_past_latest_safe_start_even_if_the_plan_says_so() -> None:
    a = assess(job(), None, (), POLICY, RULES, POWER, NOW)
    assert a is not None and a.flex is not None
    bogus = plan([a.flex], series([300.0] * 48), None, POLICY, NOW)
    too_late = dataclasses.replace(bogus.jobs[0], start=a.flex.latest_start + 7200, deferred=True)
    bogus = dataclasses.replace(bogus, jobs=(too_late,))
    (intent,) = reconcile([a], bogus, NOW)
    assert intent.new_begin == a.flex.latest_start


def test_user_begin_wins_when_the_deadline_is_already_impossible() -> None:
    begin = NOW + 7200
    j = job(admin_comment=f"slurmflex:v1;power_w=1;begin={begin};grace=0", eligible_time=begin, deadline=NOW + 3600)
    a = assess(j, None, (), POLICY, RULES, POWER, NOW)
    p = plan([a.flex], series([100.0] * 48), None, POLICY, NOW)  # type: ignore[union-attr, list-item]
    assert p.jobs[0].late
    assert reconcile([a], p, NOW) == []  # type: ignore[list-item]  # stays at the user's begin


def test_flexibility_rules_scope_exemptions_and_opt_out() -> None:
    rules = FlexConfig(exclude_partitions=("debug",))
    assert assess(eligible(), None, (), POLICY, rules, POWER, NOW) is None
    assert assess(eligible(), None, (), POLICY, FlexConfig(exempt_users=("alice",)), POWER, NOW) is None
    assert assess(eligible(account="ops"), None, (), POLICY, FlexConfig(exempt_accounts=("ops",)), POWER, NOW) is None
    opted_out = job(admin_comment="slurmflex:v1;power_w=5;begin=0;grace=0;deadline=0;slack=0;flex=no;why=optout")
    assert assess(opted_out, None, (), POLICY, RULES, POWER, NOW) is None
    # ...and a job slurm-flex had deferred is handed back when it opts out.
    deferred = record(status="deferred", applied_begin=NOW + 5000, expected_begin=NOW + 5000)
    back = assess(opted_out, deferred, (), POLICY, RULES, POWER, NOW)
    assert back is not None and back.must_release and "optout" in back.reason


def test_slack_from_keyword_or_policy_without_a_deadline() -> None:
    tag = "slurmflex:v1;power_w=100;begin=0;grace=0;deadline=0;slack=43200;flex=keyword;why="
    a = assess(job(deadline=None, admin_comment=tag, eligible_time=NOW - 10), None, (), POLICY, RULES, POWER, NOW)
    assert a is not None and a.flex is not None
    assert a.flex.latest_start == NOW - 10 + 43200  # earliest (submit) + slack, no margin needed


def test_latest_start_is_the_tightest_of_deadline_slack_and_site_cap() -> None:
    rules = FlexConfig(max_slack_hours=4.0, partition={"debug": {"max_slack_hours": 2.0}})  # type: ignore[dict-item]
    a = assess(job(eligible_time=NOW - 10), None, (), POLICY, rules, POWER, NOW)
    assert a is not None and a.flex is not None
    earliest = NOW - 10  # the tag has begin=0: the submit time
    assert a.flex.latest_start == earliest + 2 * 3600  # the partition's cap beats the 12 h deadline
    tight = job(deadline=NOW + 3600 + 900 + 600, eligible_time=NOW - 10)
    b = assess(tight, None, (), POLICY, rules, POWER, NOW)
    assert b is not None and b.flex is not None and b.flex.latest_start == NOW + 600
    hook_deadline = job(admin_comment=f"slurmflex:v1;power_w=1;begin=0;grace=0;deadline={NOW + 7200};flex=deadline")
    c = assess(hook_deadline, None, (), POLICY, RULES, POWER, NOW)
    assert c is not None and c.flex is not None and c.flex.latest_start == NOW + 7200 - 3600 - 900


def test_power_of_untagged_jobs_from_squeue_fields() -> None:
    j = job(
        admin_comment="",
        nodes=2,
        cpus=4,
        memory_per_node_mb=2048,
        tres_per_node="gres:gpu:a100:2",
        tres_per_task="gres:gpu:1",
        tasks=3,
    )
    req = power_request(j)
    assert req.memory_mb == 4096 and req.gpus_per_node == {"a100": 2} and req.gpus_per_job == {"default": 3}
    model = PowerModel(default=NodePower(100, 300, 4, 250), memory_watts_per_gb=1.0, gpu_model_watts={"a100": 400})
    assert model.estimate(req) == 2 * 100 + 4 * 50 + 4 + 2 * 2 * 400 + 3 * 250


def _queued(job_id: str, nodes: int, hours: float, priority: int) -> SlurmJob:
    return job(
        job_id=job_id,
        state_reason="Priority",
        eligible_time=NOW - 60,
        nodes=nodes,
        time_limit_s=int(hours * 3600),
        priority=priority,
        deadline=None,
    )


def _flex(job_id: str, nodes: int, hours: float, latest_h: float) -> FlexJob:
    return FlexJob(job_id, nodes, 500.0, int(hours * 3600), NOW - 60, NOW + int(latest_h * 3600), NOW + 86400)


def test_a_queued_job_at_risk_is_moved_up_and_given_back_its_priority_without_a_deadline() -> None:
    # Running work holds 4 nodes for 2 h; a 5 h whole-machine job waits ahead of a 1 h job
    # that must start within 4 h: in place it would start at 7 h, first at 2 h.
    free = np.array([0.0] * 4 + [4.0] * 400)
    queue = [_queued("10", 4, 5, 1000), _queued("11", 4, 1, 900), _queued("12", 1, 1, 800)]
    flex = {"11": _flex("11", 4, 1, 4)}
    changes = queue_priorities(queue, flex, {}, free, NOW, margin_slots=2, others_top=0)
    assert [(c.job_id, c.old, c.new, c.kind) for c in changes] == [("11", 900, 1001, "expedite")]
    # Already first: nothing to do, even when a deferred job released later ranks lower.
    queue[1] = dataclasses.replace(queue[1], priority=1001)
    records = {"11": record(job_id="11", priority_before=900)}
    assert queue_priorities(queue, flex, records, free, NOW, margin_slots=2, others_top=950) == []
    # ... but one that would outrank it gets overtaken again.
    changes = queue_priorities(queue, flex, records, free, NOW, margin_slots=2, others_top=5000)
    assert [(c.job_id, c.new, c.kind) for c in changes] == [("11", 5001, "expedite")]
    # A second job at risk, due earlier, goes first; one the head cannot save (due in 1 h while
    # the nodes are busy for 2 h) still goes before the work that is not at risk.
    queue.append(_queued("13", 2, 1, 700))
    queue.append(_queued("14", 2, 1, 600))
    flex |= {"13": _flex("13", 2, 1, 2), "14": _flex("14", 2, 1, 1)}
    changes = queue_priorities(queue, flex, records, free, NOW, margin_slots=2, others_top=0)
    assert [(c.job_id, c.new) for c in changes] == [("13", 1003), ("11", 1002), ("14", 1001)]
    # Opted out (no deadline to keep any more): its own priority back.
    changes = queue_priorities(queue[:3], {}, records, free, NOW, margin_slots=2, others_top=0)
    assert [(c.job_id, c.old, c.new, c.kind) for c in changes] == [("11", 1001, 900, "restore")]


def test_jobs_without_deadlines_or_in_time_keep_their_priorities() -> None:
    free = np.array([4.0] * 400)
    queue = [_queued("10", 2, 5, 1000), _queued("11", 2, 1, 900)]
    flex = {"11": _flex("11", 2, 1, 4)}
    assert queue_priorities(queue, flex, {}, free, NOW, margin_slots=2, others_top=0) == []
    assert queue_priorities([], flex, {}, free, NOW, margin_slots=2, others_top=0) == []
