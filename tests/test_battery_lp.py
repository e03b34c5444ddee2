"""The battery's LPs (slurm_flex.battery.dispatch) and jobs planned with a battery
(slurm_flex.battery.planning), pure: state of charge within bounds, the ceiling kept at the grid
meter, the round-trip efficiency accounted for, and charging in the cheapest slots where the
optimum is known by reasoning."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slurm_flex.battery.dispatch import deliverable, dispatch, grid_weight
from slurm_flex.battery.model import Battery
from slurm_flex.battery.planning import plan_step_with_battery, planned_load_kw
from slurm_flex.errors import PlanningError
from slurm_flex.grid.series import SLOT_SECONDS, SignalSeries
from slurm_flex.planner.policy import Policy, with_objective
from slurm_flex.planner.queue import FlexJob, PlanningSnapshot, plan_step

H = 0.5  # hours per slot
TOL = 1e-6
SLOT0 = 1_800_000_000 - 1_800_000_000 % SLOT_SECONDS


def energy_path(b: Battery, charge: np.ndarray, discharge: np.ndarray) -> np.ndarray:
    """Stored kWh at the end of each slot, recomputed from the schedule and the efficiency."""
    eta = math.sqrt(b.round_trip_efficiency)
    return b.energy_kwh + np.cumsum(eta * H * charge - H * discharge / eta)


def check_schedule(b: Battery, load: np.ndarray, ceiling: np.ndarray | None, s) -> None:  # type: ignore[no-untyped-def]
    energy = energy_path(b, s.charge_kw, s.discharge_kw)
    np.testing.assert_allclose(s.soc * b.capacity_kwh, energy, atol=1e-6)
    assert (energy >= b.min_kwh - TOL).all() and (energy <= b.max_kwh + TOL).all()
    assert (s.charge_kw <= b.max_charge_kw + TOL).all() and (s.discharge_kw <= b.max_discharge_kw + TOL).all()
    assert not ((s.charge_kw > TOL) & (s.discharge_kw > TOL)).any(), "charge and discharge in one slot"
    np.testing.assert_allclose(s.grid_kw, load + s.charge_kw - s.discharge_kw)
    assert (s.grid_kw >= -TOL).all(), "the battery exported"
    if ceiling is not None:
        finite = np.isfinite(ceiling)
        np.testing.assert_allclose(s.unmet_kw[finite], np.maximum(0, s.grid_kw - ceiling)[finite], atol=1e-6)


def test_covers_the_ceiling_by_charging_in_the_cheapest_slots() -> None:
    # 2 slots of 2 GBP-free... weights: cheap (1) in slots 1 and 3, 2 elsewhere; a ceiling in
    # slots 5-6 that the 10 kW load exceeds by 4 kW. Delivering 4 kW x 2 slots = 4 kWh takes
    # 4 / 0.9 = 4.44 kWh from the grid (round trip 0.9): the two cheap slots give 2 kWh each at
    # 4 kW, the last 0.44 kWh comes from a slot at 2 before the window. Nothing else pays:
    # charging at 2 to discharge at 2 loses the round trip.
    b = Battery(
        capacity_kwh=10, max_charge_kw=4, max_discharge_kw=4, round_trip_efficiency=0.9, min_soc=0, max_soc=1, soc=0
    )
    weight = np.array([2, 1, 2, 1, 2, 2, 2, 2], dtype=float)
    load = np.full(8, 10.0)
    ceiling = np.full(8, np.inf)
    ceiling[5:7] = 6.0
    s = dispatch(b, load, weight, ceiling)
    check_schedule(b, load, ceiling, s)
    assert s.unmet_kw.sum() == 0
    np.testing.assert_allclose(s.discharge_kw, [0, 0, 0, 0, 0, 4, 4, 0], atol=1e-6)
    np.testing.assert_allclose(s.charge_kw[[1, 3]], [4, 4], atol=1e-6)
    np.testing.assert_allclose(s.charge_kw[[0, 2, 4]].sum() * H, 4 / 0.9 - 4, atol=1e-6)
    assert (s.charge_kw[5:] == 0).all()
    # the objective: what the extra grid energy cost, against the same load without battery
    assert s.saving == pytest.approx(-(4 * H * 1 * 2 + (4 / 0.9 - 4) * 2) + 4 * H * 2 * 2, abs=1e-6)


def test_arbitrage_only_where_the_spread_beats_the_losses() -> None:
    b = Battery(
        capacity_kwh=100,
        max_charge_kw=50,
        max_discharge_kw=50,
        round_trip_efficiency=0.81,
        min_soc=0.1,
        max_soc=0.9,
        soc=0.1,
    )
    load = np.full(4, 100.0)
    # 1 -> 1.2: a round trip of 0.81 loses more than the 20 % spread: the battery holds
    s = dispatch(b, load, np.array([1.0, 1.2, 1.0, 1.2]))
    assert s.charge_kw.sum() == 0 and s.discharge_kw.sum() == 0
    # 1 -> 2: it pays; everything charged is discharged (the end is no lower than the start)
    s = dispatch(b, load, np.array([1.0, 2.0, 1.0, 2.0]))
    check_schedule(b, load, None, s)
    assert s.charge_kw[[0, 2]].sum() > 0 and s.discharge_kw[[1, 3]].sum() > 0
    assert s.soc[-1] == pytest.approx(0.1, abs=1e-6) and s.saving > 0


def test_objective_follows_the_policy() -> None:
    """Cost charges where the price is lowest, carbon where carbon is: the planner's weights."""
    b = Battery(
        capacity_kwh=10, max_charge_kw=10, max_discharge_kw=10, round_trip_efficiency=0.9, min_soc=0, max_soc=1, soc=0
    )
    carbon = np.array([300, 50, 300, 300, 400], dtype=float)
    price = np.array([100, 100, 20, 100, 300], dtype=float)
    load = np.full(5, 20.0)
    ceiling = np.array([np.inf] * 4 + [15.0])
    for objective, cheap in (("cost", 2), ("carbon", 1)):
        weight = grid_weight(carbon, price, with_objective(Policy(), objective))
        s = dispatch(b, load, weight, ceiling)
        check_schedule(b, load, ceiling, s)
        assert s.unmet_kw.sum() == 0 and s.discharge_kw[4] >= 5 - 1e-6
        assert int(np.argmax(s.charge_kw)) == cheap, objective


def test_deliverable_accounts_for_the_efficiency() -> None:
    """With a ceiling in every slot nothing can be charged: the battery gives what it holds
    above its minimum, times the discharge efficiency, spread evenly."""
    b = Battery(
        capacity_kwh=100,
        max_charge_kw=50,
        max_discharge_kw=50,
        round_trip_efficiency=0.81,
        min_soc=0.2,
        max_soc=0.9,
        soc=0.6,
    )
    kw = deliverable(b, np.full(8, 5.0))
    assert kw.sum() * H == pytest.approx((0.6 - 0.2) * 100 * 0.9, rel=1e-6)
    np.testing.assert_allclose(kw, kw[0], rtol=1e-6)
    # With room to charge first, it charges before the window and gives its full rate.
    ceiling = np.full(12, np.inf)
    ceiling[8:10] = 0.0
    np.testing.assert_allclose(deliverable(b, ceiling), [0] * 8 + [50, 50] + [0, 0], atol=1e-6)


def test_negative_prices_never_charge_and_discharge_at_once() -> None:
    b = Battery(
        capacity_kwh=10, max_charge_kw=5, max_discharge_kw=5, round_trip_efficiency=0.8, min_soc=0, max_soc=1, soc=0.5
    )
    load = np.full(6, 8.0)
    weight = np.array([0.1, -0.5, -0.5, 0.1, 0.3, 0.1])
    s = dispatch(b, load, weight)
    check_schedule(b, load, None, s)
    assert s.charge_kw[1:3].sum() > 0


def test_bad_inputs_are_planning_errors() -> None:
    b = Battery(capacity_kwh=10, max_charge_kw=5, max_discharge_kw=5)
    with pytest.raises(PlanningError):
        dispatch(b, np.full(3, 1.0), np.ones(4))
    with pytest.raises(PlanningError):
        dispatch(b, np.array([1.0, -1.0]), np.ones(2))
    with pytest.raises(PlanningError):
        Battery(capacity_kwh=10, max_charge_kw=5, max_discharge_kw=5, min_soc=0.9, max_soc=0.5)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    soc=st.floats(0.1, 0.95),
    efficiency=st.floats(0.6, 1.0),
    n=st.integers(4, 40),
)
def test_random_schedules_keep_every_limit(seed: int, soc: float, efficiency: float, n: int) -> None:
    rng = np.random.default_rng(seed)
    b = Battery(
        capacity_kwh=50,
        max_charge_kw=20,
        max_discharge_kw=25,
        round_trip_efficiency=efficiency,
        min_soc=0.1,
        max_soc=0.95,
        soc=soc,
    )
    load = rng.uniform(0, 60, n)
    weight = rng.uniform(-0.05, 0.4, n)
    ceiling = np.where(rng.random(n) < 0.3, rng.uniform(0, 60, n), np.inf)
    s = dispatch(b, load, weight, ceiling)
    check_schedule(b, load, ceiling, s)
    # the battery covers every gap its deliverable discharge covers
    room = deliverable(b, np.where(np.isfinite(ceiling), 0.0, np.inf), weight)
    gap = np.where(np.isfinite(ceiling), np.maximum(0, load - ceiling), 0)
    if (gap <= room + 1e-9).all():
        assert s.unmet_kw.max() <= 1e-6


# -- jobs and battery in one plan -----------------------------------------------------------


def series(carbon: list[float]) -> SignalSeries:
    return SignalSeries(SLOT0, tuple(carbon), (math.nan,) * len(carbon), "test")


def snapshot(jobs: tuple[FlexJob, ...], cap: np.ndarray | None, n: int = 48) -> PlanningSnapshot:
    return PlanningSnapshot(
        now=SLOT0,
        jobs=jobs,
        free_by_limits=np.full(n, 8.0),
        free_planned=np.full(n, 8.0),
        usable_nodes=8.0,
        reserve=np.zeros(n),
        margin_slots=1,
        power_cap_kw=cap,
    )


POLICY = Policy(arrival_reserve=False, capacity_headroom=1.0, min_saving_fraction=0.0, max_horizon_hours=24.0)


def job(i: int, kw: float, hours: float, deadline_h: float = 12) -> FlexJob:
    return FlexJob(
        job_id=str(i),
        nodes=1,
        power_w=kw * 1000,
        duration_s=int(hours * 3600),
        earliest=SLOT0,
        latest_start=SLOT0 + int(deadline_h * 3600) - int(hours * 3600),
        deadline=SLOT0 + int(deadline_h * 3600),
    )


def test_battery_keeps_a_job_in_its_clean_window_under_a_ceiling() -> None:
    carbon = [300.0] * 48
    carbon[8:10] = [40.0, 40.0]
    cap = np.full(48, np.inf)
    cap[8:10] = 0.0  # an activation: no planned work in the clean window
    jobs = (job(1, 10.0, 1.0),)
    alone, _ = plan_step(snapshot(jobs, cap), series(carbon), POLICY)
    assert not 8 <= (alone.jobs[0].start - SLOT0) // SLOT_SECONDS <= 9  # moved out without a battery
    b = Battery(capacity_kwh=30, max_charge_kw=15, max_discharge_kw=15, round_trip_efficiency=0.9, soc=0.5)
    plan_, _, planned_on, bp = plan_step_with_battery(
        snapshot(jobs, cap), series(carbon), POLICY, b, joint_max_starts=0
    )
    assert bp is not None and planned_on.power_cap_kw is not None and bp.method == "two-stage"
    assert (plan_.jobs[0].start - SLOT0) // SLOT_SECONDS == 8  # the battery carries it
    s = bp.schedule
    np.testing.assert_allclose(s.discharge_kw[8:10], [10.0, 10.0], atol=1e-5)  # exactly the gap
    assert (s.grid_kw[8:10] <= 1e-6).all()
    check_schedule(b, planned_load_kw(plan_, s.load_kw.size), s.ceiling_kw, s)
    # The joint model (battery.joint) sees what that costs: the 10 kWh given at 40 g/kWh must be
    # bought back to the target charge at 300 g/kWh through a 90 % round trip (11.1 kWh), more
    # than running the job at 300 g/kWh (10 kWh) without the battery.
    joint, _, _, bp_joint = plan_step_with_battery(snapshot(jobs, cap), series(carbon), POLICY, b)
    assert bp_joint is not None and bp_joint.method == "joint"
    assert not 8 <= (joint.jobs[0].start - SLOT0) // SLOT_SECONDS <= 9
    assert bp_joint.joint_cost is not None and bp_joint.two_stage_cost is not None
    assert bp_joint.joint_cost == pytest.approx(bp_joint.two_stage_cost * 10 / (10 / 0.9), rel=1e-4)
    assert bp_joint.schedule.discharge_kw.max() <= 1e-6


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), soc=st.floats(0.1, 0.9))
def test_combined_plan_keeps_the_ceiling_at_the_meter(seed: int, soc: float) -> None:
    """Random queues, ceilings and batteries: wherever the job plan kept to the raised ceiling
    (no job left late), the grid meter never exceeds the activation's ceiling and the state of
    charge never leaves its bounds."""
    rng = np.random.default_rng(seed)
    n = 48
    carbon = list(rng.uniform(20, 400, n))
    cap = np.full(n, np.inf)
    first = int(rng.integers(2, 30))
    cap[first : first + int(rng.integers(1, 9))] = rng.uniform(0, 4)
    jobs = tuple(
        job(i, float(rng.uniform(0.5, 6)), float(rng.integers(1, 5)) / 2, float(rng.uniform(6, 23)))
        for i in range(int(rng.integers(1, 8)))
    )
    other = rng.uniform(0, 5, n)
    b = Battery(
        capacity_kwh=20,
        max_charge_kw=8,
        max_discharge_kw=10,
        round_trip_efficiency=0.85,
        min_soc=0.1,
        max_soc=0.9,
        soc=soc,
    )
    plan_, _, _, bp = plan_step_with_battery(snapshot(jobs, cap), series(carbon), POLICY, b, other)
    assert bp is not None
    s = bp.schedule
    load = planned_load_kw(plan_, n) + other
    check_schedule(b, load, s.ceiling_kw, s)
    if plan_.solution is not None and not plan_.solution.late:
        finite = np.isfinite(cap)
        assert (s.grid_kw[finite] <= cap[finite] + other[finite] + 1e-5).all()
        assert s.unmet_kw.max() <= 1e-5


def test_a_battery_read_outside_its_bounds_only_comes_back() -> None:
    """Read below its minimum (a deep discharge), it never goes lower and charges back first."""
    b = Battery(
        capacity_kwh=10,
        max_charge_kw=4,
        max_discharge_kw=4,
        round_trip_efficiency=0.9,
        min_soc=0.3,
        max_soc=0.9,
        soc=0.1,
    )
    load = np.full(6, 5.0)
    weight = np.array([0.1, 0.1, 0.5, 0.5, 0.1, 0.5])
    s = dispatch(b, load, weight)
    energy = energy_path(b, s.charge_kw, s.discharge_kw)
    assert (energy >= 1.0 - TOL).all() and s.soc[-1] >= 0.1 - TOL


def test_a_target_soc_is_reached_by_the_horizon_end_in_the_cheapest_slots() -> None:
    b = Battery(
        capacity_kwh=10,
        max_charge_kw=4,
        max_discharge_kw=4,
        round_trip_efficiency=0.81,
        min_soc=0.1,
        soc=0.1,
        target_soc=0.5,
    )
    weight = np.array([0.3, 0.1, 0.3, 0.1, 0.3, 0.3])
    s = dispatch(b, np.full(6, 5.0), weight)
    assert s.soc[-1] == pytest.approx(0.5, abs=1e-6)
    # 4 kWh stored at 0.9 each way: 4.44 kWh from the grid, 2 kWh in each cheap slot, the rest at 0.3
    np.testing.assert_allclose(s.charge_kw[[1, 3]], [4, 4], atol=1e-6)
    assert s.charge_kw.sum() * H == pytest.approx(4 / 0.9, abs=1e-6)
    with pytest.raises(PlanningError):
        Battery(capacity_kwh=10, max_charge_kw=4, max_discharge_kw=4, min_soc=0.2, target_soc=0.1)
