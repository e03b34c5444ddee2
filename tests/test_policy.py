"""The shared planning policy (planner.policy), run-time prediction (planner.runtime) and the
state store's run-time history that feeds the daemon's predictions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from slurm_flex.config import PolicyConfig
from slurm_flex.errors import PlanningError
from slurm_flex.planner.policy import (
    Policy,
    arrival_reserve,
    no_defer_reason,
    objective_name,
    occupancy,
    plan_latest,
    planned_seconds,
    planning_capacity,
    reserve_ramp_slots,
    risk_margin_slots,
    with_objective,
)
from slurm_flex.planner.runtime import RuntimeHistory
from slurm_flex.state import StateStore


def test_policy_from_the_config_table_has_every_knob() -> None:
    table = PolicyConfig().model_dump()
    policy = Policy.from_mapping({**table, "defer_only_when_queue_idle": False, "plan_runtime": "limit"})
    assert policy.defer_only_when_queue_idle is False and policy.plan_runtime == "limit"
    # One set of defaults: the config's and the policy's agree on every shared knob.
    defaults = Policy()
    for key, value in table.items():
        assert getattr(defaults, key) == value, key


def test_no_defer_reason_names_the_rule() -> None:
    policy = Policy(max_deferred_share=0.5)
    assert "more than 50%" in no_defer_reason(60, 100, False, False, policy)
    assert "waiting for resources" in no_defer_reason(10, 100, True, False, policy)
    assert no_defer_reason(10, 100, True, True, policy) == ""  # already deferred keeps its plan
    assert no_defer_reason(10, 100, True, False, Policy(defer_only_when_queue_idle=False)) == ""


def test_plan_latest_uses_the_first_share_of_the_slack() -> None:
    assert plan_latest(1000, 2000, Policy(slack_use_fraction=0.8)) == 1800
    assert plan_latest(1000, 900, Policy()) == 900  # never after the latest safe start


def test_planning_capacity_takes_headroom_and_reserve() -> None:
    free = np.array([10.0, 10.0, 2.0])
    reserve = np.array([0.0, 3.0, 3.0])
    got = planning_capacity(free, 10.0, reserve, Policy(capacity_headroom=0.9))
    assert np.allclose(got, [9.0, 6.0, 0.0])
    assert np.allclose(planning_capacity(free, 10.0, reserve, Policy(arrival_reserve=False)), [9.0, 9.0, 1.0])


def test_arrival_reserve_phases_in_and_scales_by_utilisation() -> None:
    r = arrival_reserve(50.0, 100.0, 4, 6)
    assert np.allclose(r, 50.0 * 0.5 * np.minimum(1.0, np.arange(6) / 4))
    assert reserve_ramp_slots([3600.0, 7200.0, 10800.0], 1800) == 4
    assert reserve_ramp_slots([], 1800) == 1


def test_planned_run_time_and_fractional_occupancy() -> None:
    assert planned_seconds(3600, 600, Policy()) == 600
    assert planned_seconds(3600, 7200, Policy()) == 3600  # capped at the time limit
    assert planned_seconds(3600, 600, Policy(plan_runtime="limit")) == 3600
    assert planned_seconds(3600, None, Policy()) == 3600
    nodes = np.array([10.0, 4.0])
    got = occupancy(nodes, np.array([600.0, 3600.0]), np.array([1, 2]), 1800, Policy())
    assert np.allclose(got, [10.0 / 3, 4.0])
    assert np.allclose(
        occupancy(nodes, np.array([600.0, 3600.0]), np.array([1, 2]), 1800, Policy(fractional_occupancy=False)), nodes
    )


def test_objectives() -> None:
    base = Policy(carbon_price_gbp_per_tonne=250.0)
    assert objective_name(with_objective(base, "carbon")) == "carbon"
    assert objective_name(with_objective(base, "cost")) == "cost"
    assert objective_name(with_objective(base, "combined")) == "combined"
    assert objective_name(with_objective(base, "cost", has_price=True)) == "cost"
    assert objective_name(with_objective(base, "policy", has_price=False)) == "carbon"
    with pytest.raises(PlanningError, match="needs a price"):
        with_objective(base, "cost", has_price=False)
    assert risk_margin_slots(Policy(at_risk_margin_slots=1), 300, 1800) == 2


def test_runtime_prediction_is_the_mean_of_the_last_two_capped() -> None:
    history = RuntimeHistory()
    assert history.predict("ann", 3600) is None
    history.add("ann", 100)
    assert history.predict("ann", 3600) == 100
    history.add("ann", 300)
    history.add("ann", 500)
    assert history.predict("ann", 3600) == 400  # the last two only
    assert history.predict("ann", 200) == 200
    history.add("bob", 0)  # nothing ran: no evidence
    assert history.predict("bob", 3600) is None


def test_state_store_learns_run_times_from_jobs_seen_running(tmp_path: Path) -> None:
    with StateStore(tmp_path / "state.sqlite3") as store:
        store.observe_running([("1", "ann", 1000.0), ("2", "bob", 1000.0)], 1300.0)
        store.observe_running([("2", "bob", 1000.0)], 1600.0)  # job 1 ended: last seen at 1300
        store.observe_running([], 2200.0)
        history = store.runtime_history()
    assert history.predict("ann", 10_000) == 300
    assert history.predict("bob", 10_000) == 600
