"""The simulator on several sites: where a job goes when there is room and when there is not,
deadlines, the multi-site clairvoyant bound (brute-forced on tiny instances), and the CLI."""

from __future__ import annotations

import itertools
import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slurm_flex.cli import main
from slurm_flex.errors import SimulationError
from slurm_flex.simulate import SimConfig, SimSignals
from slurm_flex.simulate.bound import BoundError
from slurm_flex.simulate.bound_sites import sites_bound
from slurm_flex.simulate.multisite import Site, parse_site, simulate_sites, split_trace
from slurm_flex.simulate.traces import Trace

SLOT = 1800
MONDAY = int(datetime(2023, 1, 2, tzinfo=UTC).timestamp())
START = datetime.fromtimestamp(MONDAY, UTC)
DAYS = 8
REL = 1e-7


def signals(carbon: list[float] | np.ndarray, name: str = "test") -> SimSignals:
    values = np.asarray(carbon, dtype=float)
    return SimSignals(MONDAY, values, values, np.full(values.size, math.nan), name, True)


def flat(value: float) -> list[float]:
    return [value] * (DAYS * 48)


def trace(submit: list[float], runtime: list[float], procs: list[float], capacity: float = 10) -> Trace:
    return Trace(
        "t",
        np.asarray(submit, float),
        np.asarray(runtime, float),
        np.asarray(runtime, float),
        np.asarray(procs, float),
        capacity,
        MONDAY,
        "UTC",
    )


# -- where a job goes ------------------------------------------------------------------------------


def test_a_job_moves_to_the_cleaner_site_when_there_is_room() -> None:
    dirty, clean = Site("dirty", signals(flat(300.0))), Site("clean", signals(flat(100.0)))
    at_dirty = trace([0.0], [3600.0], [4.0])
    at_clean = trace([0.0], [3600.0], [4.0])
    result = simulate_sites([at_dirty, at_clean], [dirty, clean], "24h", start=START)
    for name in ("space", "both"):
        p = result.policies[name]
        # The dirty site's job runs at the clean one; the clean site's job stays.
        assert list(p.site) == [1, 1], name
        assert p.metrics["jobs_moved"] == 1
        assert p.metrics["new_deadline_misses"] == 0 and p.metrics["deadline_misses"] == 0
        # Moving 4 processors x 10 W for an hour from 300 to 100 g/kWh saves half the carbon.
        assert p.carbon_kg == pytest.approx(result.baseline_kg / 2, rel=1e-9)
    # The time policy has nothing to gain on flat series and moves nothing.
    assert list(result.policies["time"].site) == [0, 1]
    assert result.policies["time"].carbon_kg == pytest.approx(result.baseline_kg, rel=1e-9)


def test_a_job_stays_home_when_the_cleaner_site_is_full() -> None:
    dirty, clean = Site("dirty", signals(flat(300.0))), Site("clean", signals(flat(100.0)))
    at_dirty = trace([0.0], [3600.0], [4.0])
    # The clean site's own job holds all its processors for two days.
    at_clean = trace([0.0], [48 * 3600.0], [10.0])
    result = simulate_sites([at_dirty, at_clean], [dirty, clean], "24h", start=START)
    for name in ("space", "both"):
        p = result.policies[name]
        assert list(p.site) == [0, 1], name
        assert p.metrics["jobs_moved"] == 0
        assert p.metrics["new_deadline_misses"] == 0
        assert p.carbon_kg == pytest.approx(result.baseline_kg, rel=1e-9)
    # Starting when Slurm alone did, no schedule beats staying put: the space bound sees it too.
    assert result.policies["space"].bound_percent() == pytest.approx(0.0, abs=1e-6)
    # With time as well, the best schedule runs the small job first at the clean site and starts
    # the big one an hour later (flat series: the delay costs nothing): the small job's carbon
    # falls from 300 to 100 g/kWh.
    small = 4 * 10 / 1000 * 1.0  # kWh
    saving = small * (300 - 100) / 1000 / result.baseline_kg * 100
    assert result.policies["both"].bound_percent() == pytest.approx(saving, rel=1e-6)


def test_a_move_threshold_keeps_small_differences_home() -> None:
    a, b = Site("a", signals(flat(200.0))), Site("b", signals(flat(190.0)))
    jobs = [trace([0.0], [3600.0], [4.0]), trace([0.0], [3600.0], [4.0])]
    moved = simulate_sites(jobs, [a, b], "24h", start=START, policies=["space"], bound=False)
    assert moved.policies["space"].metrics["jobs_moved"] == 1
    kept = simulate_sites(jobs, [a, b], "24h", start=START, policies=["space"], bound=False, move_threshold=0.1)
    assert kept.policies["space"].metrics["jobs_moved"] == 0


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000))
def test_random_loads_never_miss_a_deadline_in_space_and_respect_the_bounds(seed: int) -> None:
    rng = np.random.default_rng(seed)
    days = DAYS * 48
    hours = np.arange(days) / 2
    # Two grids with daily cycles out of phase, so moving in space and in time both pay.
    ga = 200 + 100 * np.sin(2 * np.pi * hours / 24)
    gb = 200 + 100 * np.sin(2 * np.pi * (hours + 9) / 24)
    sites = [Site("a", signals(ga)), Site("b", signals(gb))]

    def random_trace() -> Trace:
        n = int(rng.integers(3, 8))
        return trace(
            sorted(rng.uniform(0, 86400, n).tolist()),
            rng.uniform(600, 4 * 3600, n).tolist(),
            rng.integers(1, 9, n).astype(float).tolist(),
        )

    policies = ("time", "space", "both", "space-oracle")
    result = simulate_sites([random_trace(), random_trace()], sites, "24h", start=START, policies=policies)
    space, both, time_only = (result.policies[k] for k in ("space", "both", "time"))
    # The time policy is the single-site simulator at each site: same carbon, same misses.
    engine = result.site_results
    assert time_only.carbon_kg == pytest.approx(sum(r.flex.metrics["carbon_kg"] for r in engine), abs=1e-5)
    assert result.baseline_kg == pytest.approx(sum(r.baseline.metrics["carbon_kg"] for r in engine), abs=1e-5)
    assert time_only.metrics["new_deadline_misses"] == sum(
        r.flex.metrics["deadline_misses_not_missed_as_submitted"] for r in engine
    )
    # Judging room by actual run times (the oracle) keeps every start too: no misses, and its
    # schedule is one the space bound covers.
    assert result.policies["space-oracle"].metrics["new_deadline_misses"] == 0
    # Space starts every job when Slurm alone did, so it can miss nothing.
    assert space.metrics["new_deadline_misses"] == 0
    assert space.metrics["mean_delay_h"] == pytest.approx(result.baseline_metrics["mean_delay_h"])
    # Its schedule is one the space bound covers: the bound is below it.
    assert space.bound is not None and both.bound is not None and time_only.bound is not None
    assert space.bound.minimum <= space.carbon_kg * (1 + REL)
    assert space.bound.minimum <= result.policies["space-oracle"].carbon_kg * (1 + REL)
    # More freedom can only lower the bound: both <= space <= baseline, both <= time.
    assert both.bound.minimum <= space.bound.minimum * (1 + REL) + 1e-12
    assert space.bound.minimum <= result.baseline_kg * (1 + REL)
    assert both.bound.minimum <= time_only.bound.minimum * (1 + REL) + 1e-12
    if both.metrics["early_starts"] == 0:
        assert both.bound.minimum <= both.carbon_kg * (1 + REL)
    # Both is time plus only the moves that beat it: a job that stays keeps its time-policy start,
    # a moved job starts by its latest safe start, so both misses no deadline time meets; and with
    # a perfect forecast and exact run times (no users: planned by time limits = run times here)
    # every move lowers the job's carbon, so both is never worse than time.
    home = time_only.site
    stays = both.site == home
    np.testing.assert_array_equal(both.start_s[stays], time_only.start_s[stays])
    assert both.metrics["new_deadline_misses"] <= time_only.metrics["new_deadline_misses"]
    assert both.metrics["deadline_misses"] <= time_only.metrics["deadline_misses"]
    assert both.carbon_kg <= time_only.carbon_kg * (1 + REL) + 1e-12
    if (~stays).any():
        assert both.carbon_kg < time_only.carbon_kg


# -- the bound against brute force -----------------------------------------------------------------


def job_kg(start: float, runtime: float, kw: float, series: np.ndarray) -> float:
    total = 0.0
    for k, v in enumerate(series):
        total += max(0.0, min(start + runtime, (k + 1) * SLOT) - max(start, k * SLOT)) * v
    return kw * total / 3600 / 1000


def feasible(choice: tuple[tuple[int, float], ...], runtime: np.ndarray, procs: np.ndarray, caps: list[float]) -> bool:
    """Each site's processors in use never exceed its capacity (use peaks at some start)."""
    for site, tau in choice:
        used = sum(p for (s, t), r, p in zip(choice, runtime, procs, strict=True) if s == site and t <= tau < t + r)
        if used > caps[site] + 1e-9:
            return False
    return True


@st.composite
def tiny(draw: st.DrawFn) -> dict[str, object]:
    n = draw(st.integers(1, 3))
    tick = 900.0
    e = np.array([draw(st.integers(0, 4)) * tick for _ in range(n)])
    lt = e + np.array([draw(st.integers(0, 3)) * tick for _ in range(n)])
    r = np.array([float(draw(st.integers(300, 5400))) for _ in range(n)])
    caps = [float(draw(st.integers(2, 6))), float(draw(st.integers(2, 6)))]
    p = np.array([float(draw(st.integers(1, int(min(caps))))) for _ in range(n)])
    home = np.array([draw(st.integers(0, 1)) for _ in range(n)])
    portable = np.array([draw(st.booleans()) for _ in range(n)])
    slots = 8
    carbon = [np.array([float(draw(st.integers(0, 400))) for _ in range(slots)]) for _ in range(2)]
    return {"e": e, "lt": lt, "r": r, "p": p, "home": home, "portable": portable, "caps": caps, "carbon": carbon}


@settings(max_examples=120, deadline=None)
@given(inst=tiny())
def test_the_sites_bound_is_never_above_any_feasible_schedule(inst: dict[str, object]) -> None:
    e, lt, r, p = (np.asarray(inst[k], float) for k in ("e", "lt", "r", "p"))
    home, portable = np.asarray(inst["home"]), np.asarray(inst["portable"], bool)
    caps: list[float] = inst["caps"]  # type: ignore[assignment]
    carbon: list[np.ndarray] = inst["carbon"]  # type: ignore[assignment]
    kw = p * 0.01
    options = []
    for j in range(e.size):
        sites = [0, 1] if portable[j] else [int(home[j])]
        starts = np.arange(e[j], lt[j] + 1, 900.0)
        options.append([(s, float(t)) for s in sites for t in starts])
    best = math.inf
    for choice in itertools.product(*options):
        if feasible(choice, r, p, caps):
            best = min(best, sum(job_kg(t, r[j], kw[j], carbon[s]) for j, (s, t) in enumerate(choice)))
    bound = sites_bound(e, lt, r, p, kw, home, portable, carbon, caps, tick_seconds=900.0)
    per_job = sum(min(job_kg(t, r[j], kw[j], carbon[s]) for s, t in options[j]) for j in range(e.size))
    assert bound.minimum_no_capacity == pytest.approx(per_job, rel=1e-9, abs=1e-12)
    assert bound.minimum >= bound.minimum_no_capacity - 1e-12
    if math.isfinite(best):
        assert bound.minimum <= best * (1 + REL) + 1e-12
    if max(caps) >= p.sum() and min(caps) >= p.sum():
        # Nothing contends: the bound is the exact optimum, every job at its own best.
        assert bound.minimum == pytest.approx(best, rel=1e-7, abs=1e-12)


def test_the_sites_bound_refuses_bad_input() -> None:
    one = np.array([0.0])
    with pytest.raises(BoundError, match="fits no site"):
        sites_bound(one, one, [600.0], [8.0], [0.1], [0], [True], [np.ones(4), np.ones(4)], [4.0, 4.0])
    with pytest.raises(BoundError, match="half-hour slots"):
        sites_bound(one, [7200.0], [3600.0], [1.0], [0.1], [0], [True], [np.ones(2), np.ones(8)], [4.0, 4.0])
    with pytest.raises(BoundError, match="capacities"):
        sites_bound(one, one, [600.0], [1.0], [0.1], [0], [True], [np.ones(4), np.ones(4)], [4.0])


# -- splitting and errors ------------------------------------------------------------------------


def test_split_trace_keeps_every_job_once() -> None:
    t = trace(list(np.arange(20) * 3600.0), [600.0] * 20, [1.0] * 20)
    for how in ("hash", "roundrobin"):
        parts = split_trace(t, 3, how, seed=1)
        assert sum(p.n_jobs for p in parts) == 20
        assert sorted(np.concatenate([p.submit_s for p in parts]).tolist()) == t.submit_s.tolist()
    windows = split_trace(t, 2, "windows", days=10 / 24)
    assert [w.n_jobs for w in windows] == [10, 10]
    assert windows[1].submit_s.min() == 0.0  # re-based: both laid over the same dates
    with pytest.raises(SimulationError, match="unknown split"):
        split_trace(t, 2, "alphabetical")
    with pytest.raises(SimulationError, match="at least two"):
        split_trace(t, 1)


def test_simulate_sites_refuses_bad_setups() -> None:
    a = Site("a", signals(flat(100.0)))
    small = trace([0.0], [600.0], [1.0])
    with pytest.raises(SimulationError, match="at least two"):
        simulate_sites([small], [a], "24h", start=START)
    with pytest.raises(SimulationError, match="raise its :SCALE"):
        simulate_sites([small, trace([0.0], [600.0], [8.0])], [a, Site("b", a.signals, 0.5)], "24h", start=START)
    with pytest.raises(SimulationError, match="covers"):
        short = Site("b", signals([100.0] * 48))
        simulate_sites([small, small], [a, short], "24h", start=START, cfg=SimConfig(bound=False))


def test_parse_site(tmp_path: Path) -> None:
    csv = tmp_path / "gb.csv"
    csv.write_text("Time,Carbon Intensity\n2023-01-02 00:00:00,100\n")
    assert parse_site(f"GB={csv}") == parse_site(f"GB={csv}:1")
    spec = parse_site(f"GB={csv}:0.5")
    assert (spec.name, spec.carbon_path, spec.scale) == ("GB", csv, 0.5)
    for bad, message in (
        (f"GB={csv}:abc", "not a number"),
        (f"GB={csv}:0", "positive"),
        (f"GB={csv}:-2", "positive"),
        (f"GB={tmp_path / 'missing.csv'}", "does not exist"),
        (str(csv), "NAME=CARBON_CSV"),
        (f"={csv}", "NAME=CARBON_CSV"),
    ):
        with pytest.raises(SimulationError, match=message):
            parse_site(bad)


# -- the command line ------------------------------------------------------------------------------


def write_inputs(tmp_path: Path) -> tuple[Path, Path, Path]:
    lines = [
        "; Version: 2.2",
        "; UnixStartTime: 1672646400",
        "; TimeZoneString: UTC",
        "; MaxProcs: 8",
    ]
    for j in range(6):
        fields = [j + 1, j * 1800, 0, 3600, 2, -1, -1, 2, 3600, -1, 1, 1, 1, -1, -1, -1, -1, -1]
        lines.append(" ".join(str(f) for f in fields))
    swf = tmp_path / "t.swf"
    swf.write_text("\n".join(lines) + "\n")
    paths = []
    for name, base in (("a", 300.0), ("b", 100.0)):
        rows = ["Time,Carbon Intensity"]
        for k in range(DAYS * 48):
            when = datetime.fromtimestamp(MONDAY + k * SLOT, UTC).strftime("%Y-%m-%d %H:%M:%S")
            rows.append(f"{when},{base + 50 * math.sin(k / 8)}")
        path = tmp_path / f"{name}.csv"
        path.write_text("\n".join(rows) + "\n")
        paths.append(path)
    return swf, paths[0], paths[1]


def test_cli_several_sites(tmp_path: Path) -> None:
    swf, a, b = write_inputs(tmp_path)
    args = ["simulate", "--trace", str(swf), "--site", f"A={a}", "--site", f"B={b}:1", "--slack", "24h"]
    result = CliRunner().invoke(main, [*args, "--start", "2023-01-02T08:00Z"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "perfect foresight" in out
    for policy in ("time", "space", "both"):
        assert any(line.strip().startswith(policy) for line in out.splitlines()), out
    assert "bound%" in out and "moved" in out and "new miss" in out


def test_cli_several_sites_bad_input(tmp_path: Path) -> None:
    swf, a, b = write_inputs(tmp_path)
    base = ["simulate", "--trace", str(swf), "--slack", "24h"]
    one = CliRunner().invoke(main, [*base, "--site", f"A={a}"])
    assert one.exit_code == 2 and "at least two" in one.output
    missing = CliRunner().invoke(main, [*base, "--site", f"A={a}", "--site", f"B={tmp_path / 'nope.csv'}"])
    assert missing.exit_code == 1 and "does not exist" in missing.output
    scale = CliRunner().invoke(main, [*base, "--site", f"A={a}", "--site", f"B={b}:zero"])
    assert scale.exit_code == 1 and "not a number" in scale.output
    both = CliRunner().invoke(main, [*base, "--carbon", str(a), "--site", f"A={a}", "--site", f"B={b}"])
    assert both.exit_code == 2 and "not both" in both.output
    neither = CliRunner().invoke(main, base)
    assert neither.exit_code == 2 and "--carbon" in neither.output
    dup = CliRunner().invoke(main, [*base, "--site", f"A={a}", "--site", f"A={b}"])
    assert dup.exit_code == 1 and "must differ" in dup.output


def test_both_gives_up_a_move_the_target_has_no_room_for() -> None:
    """Booked on predicted run times, carried out on the processors really in use: the clean
    site's second job is predicted to run an hour (its user's last job did) but holds all its
    processors for 47 h, so the dirty site's job booked there finds no room before its latest
    safe start and stays home at its time-policy start. Counted by time limits, it is not even
    booked."""
    dirty, clean = Site("dirty", signals(flat(300.0))), Site("clean", signals(flat(100.0)))
    at_clean = Trace(
        "c",
        np.array([0.0, 7200.0]),
        np.array([3600.0, 47 * 3600.0]),
        np.array([3600.0, 48 * 3600.0]),
        np.array([10.0, 10.0]),
        10,
        MONDAY,
        "UTC",
        user=np.array([1, 1]),
    )
    at_dirty = trace([7200.0], [3600.0], [4.0])
    for room, booked in (("predicted", 1), ("limit", 0)):
        result = simulate_sites(
            [at_dirty, at_clean],
            [dirty, clean],
            "24h",
            start=START,
            policies=["time", "both"],
            bound=False,
            both_room=room,
        )
        both, time_only = result.policies["both"], result.policies["time"]
        assert list(both.site) == [0, 1, 1], room
        assert both.metrics["moves_given_up"] == booked, room
        np.testing.assert_array_equal(both.start_s, time_only.start_s)
        assert both.carbon_kg == pytest.approx(time_only.carbon_kg, rel=1e-12)
