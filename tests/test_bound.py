"""The clairvoyant bound: never above any feasible schedule (brute-forced on tiny instances),
never below the no-capacity bound, the window decomposition only relaxes, and bad input is
refused clearly."""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slurm_flex.errors import SlurmFlexError
from slurm_flex.simulate.bound import BoundError, BoundResult, capture_sentence, clairvoyant_bound
from slurm_flex.simulate.engine import _charge

SLOT = 1800
TICK = 300
REL = 1e-9


# -- an independent reference: per-second charging and exhaustive search ---------------------------


def job_cost(start: float, runtime: float, kw: float, series: np.ndarray) -> float:
    """kW x integral of the half-hourly series over [start, start + runtime] / 3600 / 1000,
    slot by slot (NaN counts as 0)."""
    values = np.nan_to_num(series, nan=0.0)
    total = 0.0
    for k, v in enumerate(values):
        lo, hi = k * SLOT, (k + 1) * SLOT
        total += max(0.0, min(start + runtime, hi) - max(start, lo)) * v
    return kw * total / 3600 / 1000


def candidates(e: float, latest: float, tick: float = TICK) -> list[float]:
    """Earliest itself and every tick multiple in [earliest, latest] (the schedules bounded)."""
    ticks = [t * tick for t in range(math.ceil(e / tick), math.floor(latest / tick) + 1)]
    return sorted({e, *ticks})


def feasible(starts: tuple[float, ...], runtime: np.ndarray, procs: np.ndarray, capacity: float) -> bool:
    """Processors in use never exceed capacity: use is a step function rising only at starts,
    so its maximum is reached at one of them."""
    for tau in starts:
        used = sum(p for t, r, p in zip(starts, runtime, procs, strict=True) if t <= tau < t + r)
        if used > capacity + 1e-9:
            return False
    return True


def brute_force(
    e: np.ndarray,
    lt: np.ndarray,
    r: np.ndarray,
    p: np.ndarray,
    kw: np.ndarray,
    carbon: np.ndarray,
    price: np.ndarray,
    capacity: float,
    carbon_price: float,
) -> dict[str, float] | None:
    """The true optimum of each objective over feasible schedules (None if there is none)."""
    options = [candidates(e[j], lt[j]) for j in range(e.size)]
    per_job = [
        {t: (job_cost(t, r[j], kw[j], carbon), job_cost(t, r[j], kw[j], price)) for t in opts}
        for j, opts in enumerate(options)
    ]
    best = {"carbon": math.inf, "cost": math.inf, "combined": math.inf}
    for starts in itertools.product(*options):
        if not feasible(starts, r, p, capacity):
            continue
        c = sum(per_job[j][t][0] for j, t in enumerate(starts))
        g = sum(per_job[j][t][1] for j, t in enumerate(starts))
        best["carbon"] = min(best["carbon"], c)
        best["cost"] = min(best["cost"], g)
        best["combined"] = min(best["combined"], g + c / 1000 * carbon_price)
    return None if math.isinf(best["carbon"]) else best


def per_job_minimum(
    e: np.ndarray, lt: np.ndarray, r: np.ndarray, kw: np.ndarray, carbon: np.ndarray, price: np.ndarray, cp: float
) -> dict[str, float]:
    out = {"carbon": 0.0, "cost": 0.0, "combined": 0.0}
    for j in range(e.size):
        opts = candidates(e[j], lt[j])
        cs = [job_cost(t, r[j], kw[j], carbon) for t in opts]
        gs = [job_cost(t, r[j], kw[j], price) for t in opts]
        out["carbon"] += min(cs)
        out["cost"] += min(gs)
        out["combined"] += min(g + c / 1000 * cp for c, g in zip(cs, gs, strict=True))
    return out


def close_or_below(a: float, b: float) -> bool:
    return a <= b + REL * max(1.0, abs(a), abs(b))


# -- tiny instances, exhaustively --------------------------------------------------------------------


@st.composite
def tiny_instances(draw: st.DrawFn, contended: bool = False) -> dict[str, object]:
    """1-4 jobs within a few hours. ``contended``: 3 jobs released close together, each holding
    more than half the machine for 15-40 minutes, with up to an hour to start: they must take
    turns, so the capacity limit usually matters."""
    n = draw(st.just(3) if contended else st.integers(1, 4))
    capacity = float(draw(st.integers(2, 4) if contended else st.integers(1, 4)))
    e_ticks = draw(st.lists(st.integers(0, 3 if contended else 14), min_size=n, max_size=n))
    # Earliest starts off the tick grid and off slot boundaries too (e.g. submit times).
    offsets = draw(st.lists(st.sampled_from([0.0, 0.0, 7.0, 150.0, 299.0]), min_size=n, max_size=n))
    # Windows from nothing to under a slot to a bit over one (crossing slot boundaries).
    width_choices = [1800.0, 2700.0, 3600.0] if contended else [0.0, 100.0, 300.0, 600.0, 900.0, 1500.0, 2100.0]
    widths = draw(st.lists(st.sampled_from(width_choices), min_size=n, max_size=n))
    runtime = st.integers(900, 2400) if contended else st.integers(1, 6000)
    runtimes = draw(st.lists(runtime, min_size=n, max_size=n))
    low_procs = int(capacity) // 2 + 1 if contended else 1
    procs = draw(st.lists(st.integers(low_procs, int(capacity)), min_size=n, max_size=n))
    e = np.array(e_ticks, dtype=float) * TICK + np.array(offsets)
    lt = e + np.array(widths)
    r = np.array(runtimes, dtype=float)
    p = np.array(procs, dtype=float)
    kw = p * draw(st.sampled_from([0.01, 0.35]))
    n_slots = math.ceil(float((lt + r).max()) / SLOT) + draw(st.integers(0, 2))
    carbon = np.array(draw(st.lists(st.integers(0, 500), min_size=n_slots, max_size=n_slots)), dtype=float)
    price = np.array(draw(st.lists(st.integers(-60, 300), min_size=n_slots, max_size=n_slots)), dtype=float)
    if draw(st.booleans()):
        price[draw(st.integers(0, n_slots - 1))] = np.nan  # unknown price: charged as 0
    cp = float(draw(st.sampled_from([0.0, 250.0])))
    return {
        "e": e,
        "lt": lt,
        "r": r,
        "p": p,
        "kw": kw,
        "carbon": carbon,
        "price": price,
        "capacity": capacity,
        "cp": cp,
    }


def solve(inst: dict[str, object], **kwargs: object) -> BoundResult:
    return clairvoyant_bound(
        inst["e"],  # type: ignore[arg-type]
        inst["lt"],  # type: ignore[arg-type]
        inst["r"],  # type: ignore[arg-type]
        inst["p"],  # type: ignore[arg-type]
        inst["kw"],  # type: ignore[arg-type]
        inst["carbon"],  # type: ignore[arg-type]
        inst["price"],  # type: ignore[arg-type]
        capacity_procs=inst["capacity"],  # type: ignore[arg-type]
        carbon_price_gbp_per_tonne=inst["cp"],  # type: ignore[arg-type]
        **kwargs,  # type: ignore[arg-type]
    )


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.booleans().flatmap(tiny_instances), st.booleans(), st.sampled_from([7.0, 1 / 24, 1 / 96]))
def test_bound_below_every_feasible_schedule(inst: dict[str, object], pair_rows: bool, window_days: float) -> None:
    # Windows of an hour or a quarter of one split these instances, so the trace-wide pricing
    # across windows is checked too.
    res = solve(inst, pair_rows=pair_rows, window_days=window_days)
    args = [inst[k] for k in ("e", "lt", "r", "p", "kw", "carbon", "price", "capacity", "cp")]
    optimum = brute_force(*args)  # type: ignore[arg-type]
    exact_min = per_job_minimum(*[inst[k] for k in ("e", "lt", "r", "kw", "carbon", "price", "cp")])  # type: ignore[arg-type]
    base_feasible = feasible(tuple(inst["e"]), inst["r"], inst["p"], inst["capacity"])  # type: ignore[arg-type]
    for name in ("carbon", "cost", "combined"):
        ob = res.objective(name)
        # The no-capacity bound is the exact per-job minimum over tick starts.
        assert ob.minimum_no_capacity == pytest.approx(exact_min[name], rel=1e-9, abs=1e-12)
        assert close_or_below(ob.minimum_no_capacity, ob.minimum)
        if optimum is not None:
            assert close_or_below(ob.minimum, optimum[name]), (name, ob, optimum)
            assert res.infeasible_windows == 0
        if base_feasible:
            assert close_or_below(optimum[name], ob.baseline)  # type: ignore[index]
            assert res.status == "optimal"


def test_baseline_is_engine_charging() -> None:
    rng = np.random.default_rng(3)
    e = rng.integers(0, 5000, 40).astype(float)
    r = rng.integers(1, 9000, 40).astype(float)
    p = rng.integers(1, 8, 40).astype(float)
    kw = p * 0.01
    carbon = rng.uniform(50, 400, 20)
    price = rng.uniform(-20, 200, 20)
    price[3] = np.nan
    res = clairvoyant_bound(e, e, r, p, kw, carbon, price, capacity_procs=1000.0, carbon_price_gbp_per_tonne=100.0)
    jobs = SimpleNamespace(kw=kw, runtime_s=r)
    assert res.carbon.baseline == pytest.approx(_charge(jobs, e, carbon) / 1000, rel=1e-12)  # type: ignore[arg-type]
    assert res.cost.baseline == pytest.approx(_charge(jobs, e, price) / 1000, rel=1e-12)  # type: ignore[arg-type]
    assert res.combined.baseline == pytest.approx(res.cost.baseline + res.carbon.baseline / 1000 * 100.0)
    # Nothing can move: every figure is the baseline.
    for name in ("carbon", "cost", "combined"):
        ob = res.objective(name)
        assert ob.minimum == pytest.approx(ob.baseline) and ob.minimum_no_capacity == pytest.approx(ob.baseline)
        assert ob.saving_percent == pytest.approx(0.0, abs=1e-9)


def test_capacity_makes_the_bound_tighter_and_exact_on_slot_starts() -> None:
    # Two jobs each filling the machine for a slot, both wanting the one clean slot; starts on
    # slot boundaries only (tick = a slot), so the integrated capacity is the instantaneous one.
    carbon = np.array([300.0, 100.0, 200.0, 900.0, 900.0])
    e = np.zeros(2)
    lt = np.full(2, 2 * SLOT)
    r = np.full(2, float(SLOT))
    p = np.full(2, 2.0)
    kw = np.ones(2)
    res = clairvoyant_bound(e, lt, r, p, kw, carbon, np.zeros(5), capacity_procs=2.0, tick_seconds=SLOT)
    assert res.carbon.minimum_no_capacity == pytest.approx(2 * 0.1 * 0.5 * 1)  # both at 100 g/kWh
    assert res.carbon.minimum == pytest.approx((100 + 200) / 1000 * 0.5)  # one waits for 200 g/kWh
    assert res.carbon.baseline == pytest.approx(2 * 300 / 1000 * 0.5)
    assert res.carbon.saving_percent == pytest.approx(50.0)
    assert res.status == "optimal" and res.n_windows == 1


def test_earliest_off_the_grid_and_windows_under_a_slot() -> None:
    # Earliest 1500 s (off the slot, on the tick grid), 1510 s (off both), windows of 0, 200 and
    # 600 s: the candidates are exactly earliest and the ticks inside the window.
    carbon = np.array([400.0, 100.0, 100.0])
    for e0, width, want in ((1500.0, 600.0, 1800.0), (1510.0, 200.0, 1510.0), (1510.0, 600.0, 1800.0)):
        e, lt = np.array([e0]), np.array([e0 + width])
        res = clairvoyant_bound(e, lt, np.array([600.0]), np.ones(1), np.ones(1), carbon, carbon, capacity_procs=1.0)
        assert res.carbon.minimum == pytest.approx(job_cost(want, 600.0, 1.0, carbon))
        assert res.carbon.minimum_no_capacity == pytest.approx(job_cost(want, 600.0, 1.0, carbon))


def greedy_schedule(submit: np.ndarray, r: np.ndarray, p: np.ndarray, capacity: float) -> np.ndarray:
    """Start each job, in submission order, at the first tick where it fits (a feasible
    baseline such as the simulator's)."""
    busy = np.zeros(int((submit.max() + r.sum()) // TICK) + 10)
    start = np.zeros(submit.size)
    for j in np.argsort(submit, kind="stable"):
        t = math.ceil(submit[j] / TICK)
        d = math.ceil(r[j] / TICK)
        while (busy[t : t + d] + p[j] > capacity).any():
            t += 1
        busy[t : t + d] += p[j]
        start[j] = t * TICK
    return start


def test_windows_only_relax() -> None:
    rng = np.random.default_rng(11)
    n, capacity = 100, 16.0
    submit = np.sort(rng.uniform(0, 13.5 * 86400, n))
    r = rng.uniform(600, 30000, n)
    p = rng.integers(1, 9, n).astype(float)
    e = greedy_schedule(submit, r, p, capacity)
    lt = e + np.where(rng.random(n) < 0.8, 86400.0, 0.0)  # some jobs cannot move
    slots = math.ceil(float((lt + r).max()) / SLOT) + 1
    x = np.arange(slots)
    carbon = 200 + 120 * np.sin(x / 48 * 2 * np.pi) + rng.normal(0, 20, slots).clip(-150, 150)
    price = 90 + 50 * np.cos(x / 48 * 2 * np.pi)
    args = (e, lt, r, p, p * 0.02, carbon, price)
    weekly = clairvoyant_bound(*args, capacity_procs=capacity, window_days=7)
    daily = clairvoyant_bound(*args, capacity_procs=capacity, window_days=1)
    single = clairvoyant_bound(*args, capacity_procs=capacity, window_days=1000)
    assert (weekly.n_windows, single.n_windows) == (2, 1) and daily.n_windows >= 12
    for res in (weekly, daily, single):
        assert res.status == "optimal" and res.max_certificate_gap < 1e-6
    for name in ("carbon", "cost", "combined"):
        d, w, s = daily.objective(name), weekly.objective(name), single.objective(name)
        # Smaller windows relax more: each day's LP is a relaxation of its week's restricted to it.
        assert d.minimum_by_windows <= w.minimum_by_windows * (1 + 1e-7)
        assert w.minimum_by_windows <= s.minimum_by_windows * (1 + 1e-7)
        # Pricing the whole trace only helps, and never beyond the LP of the whole trace.
        for res in (d, w):
            assert res.minimum_by_windows <= res.minimum <= s.minimum * (1 + 1e-7)
        assert s.minimum == pytest.approx(s.minimum_by_windows, rel=1e-9)
        assert s.minimum <= s.baseline
        assert d.minimum_no_capacity == pytest.approx(s.minimum_no_capacity)
        assert w.minimum_by_windows >= w.minimum_no_capacity
    # Capacity binds here: the bound is well above the no-capacity one.
    assert single.carbon.minimum > single.carbon.minimum_no_capacity * 1.01


def test_infeasible_window_is_reported() -> None:
    carbon = np.full(4, 100.0)
    # Jobs that cannot move and overload the machine; then three jobs each filling the machine
    # for a slot, with two slots to start in.
    fixed = clairvoyant_bound(
        np.zeros(2), np.zeros(2), np.full(2, 1800.0), np.full(2, 3.0), np.ones(2), carbon, carbon, 4.0
    )
    three = np.full(3, 1.0)
    moving = clairvoyant_bound(
        np.zeros(3), np.full(3, 1800.0), three * 1800, three * 4, three, carbon, carbon, 4.0, tick_seconds=SLOT
    )
    for res in (fixed, moving):
        assert res.infeasible_windows == 1
        assert "infeasible in 1 windows" in res.status
        # That window's no-capacity bound stands in.
        assert res.carbon.minimum == res.carbon.minimum_no_capacity


def good_args() -> dict[str, object]:
    return {
        "earliest_s": np.array([0.0, 900.0]),
        "latest_s": np.array([600.0, 1800.0]),
        "runtime_s": np.array([600.0, 1200.0]),
        "procs": np.array([1.0, 2.0]),
        "kw": np.array([0.01, 0.02]),
        "carbon": np.full(4, 150.0),
        "price": np.full(4, 80.0),
        "capacity_procs": 4.0,
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"procs": np.array([1.0])}, "differ in length"),
        ({"latest_s": np.array([600.0, 800.0])}, "latest_s < earliest_s"),
        ({"runtime_s": np.array([600.0, 0.0])}, "runtime_s must be > 0"),
        ({"procs": np.array([1.0, -2.0])}, "negative"),
        ({"kw": np.array([0.01, np.nan])}, "not finite"),
        ({"earliest_s": np.array([-5.0, 900.0]), "latest_s": np.array([600.0, 1800.0])}, "negative"),
        ({"carbon": np.array([150.0, np.nan, 150.0, 150.0])}, "carbon is NaN"),
        ({"carbon": np.array([150.0, -1.0, 150.0, 150.0])}, "negative intensities"),
        ({"carbon": np.full(1, 150.0)}, "carbon has 1 half-hour slots"),
        ({"price": np.full(1, 80.0)}, "price has 1 half-hour slots"),
        ({"price": np.array([80.0, np.inf, 80.0, 80.0])}, "infinite"),
        ({"capacity_procs": 0.0}, "capacity_procs"),
        ({"procs": np.ones((2, 2))}, "1-D"),
        ({"procs": np.array([1.0, 5.0])}, "more processors than the machine"),
    ],
)
def test_bad_input(change: dict[str, object], message: str) -> None:
    args = good_args() | change
    with pytest.raises(BoundError, match=message) as info:
        clairvoyant_bound(**args)  # type: ignore[arg-type]
    assert isinstance(info.value, SlurmFlexError)


def test_nan_carbon_outside_every_window_is_fine() -> None:
    args = good_args() | {"carbon": np.array([150.0, 150.0, 150.0, np.nan, np.nan])}
    res = clairvoyant_bound(**args)  # type: ignore[arg-type]
    assert res.status == "optimal" and math.isfinite(res.carbon.minimum)


def test_capture_sentence() -> None:
    assert capture_sentence(4.6, 10.7) == "captured 43 % of the 10.7 % available"
    assert "no saving was available" in capture_sentence(1.0, 0.0)
    res = clairvoyant_bound(**good_args())  # type: ignore[arg-type]
    assert res.captured("carbon", 0.0) == "no saving was available (achieved 0.0 %)"
    with pytest.raises(BoundError):
        res.objective("water")
    assert set(res.to_json()) >= {"carbon", "cost", "combined", "status", "windows", "solve_seconds"}


def test_no_jobs() -> None:
    res = clairvoyant_bound(np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0), [], [], 4.0)
    assert res.n_jobs == 0 and res.n_windows == 0 and res.carbon.minimum == 0.0
    assert math.isnan(res.carbon.saving_percent)
