#!/usr/bin/env python3
"""What an on-site battery saves, on real GB 2023 carbon intensity (NESO, forecast and actual)
and Elexon market index prices, for a constant site load, and what it covers of a 4 h ceiling.

    .venv/bin/python bench/battery_bench.py [--shared DIR] [--load-kw 400] [--kw 150] [--kwh 300]

1. Arbitrage, one week at a time (four weeks: January, April, July, October 2023): the battery
   (150 kW / 300 kWh, 90 % round trip, 10-95 % state of charge, half charged at the start,
   each plan ending at least half charged: ``target_soc``) runs against a constant site load,
   minimising cost, carbon (at the policy's 250 GBP/t) or both, as slurm_flex.battery.dispatch
   plans it:
   - *clairvoyant*: one LP over the week on the actual series (the most it could save);
   - *rolling*: as the daemon does it, every half-hour a 48 h plan on the carbon *forecast*
     (and the prices), the first slot carried out, charged at the actuals (the plans of the
     week's last 48 h end with it, so that both end at the target and compare).
2. A 4 h ceiling at the evening peak (Monday 17:00-21:00 UTC of each week): the discharge the
   battery can surely deliver over it (slurm_flex.battery.dispatch.deliverable: what the job
   plan may count on), and the dispatch when the ceiling sits 60 kW and 150 kW below the load.
3. Jobs and battery, two-stage against joint (slurm_flex.battery.planning): on each week's Monday,
   a seeded queue of flexible jobs (20 jobs, 4-16 nodes at 2.5 kW a node, 1-4 h, deadlines
   8-24 h, 64 nodes free) beside 200 kW of other load, with a ceiling of 40 kW on planned work
   17:00-21:00 UTC; planned on the actual series (combined objective). Two-stage = the jobs
   against the ceiling raised by what the battery surely delivers, then dispatch; joint = the
   one MILP over both (kept when strictly cheaper). GBP = the planner's objective by
   slurm_flex.battery.joint.site_cost (price plus priced carbon, with its penalties).

Results: bench/results/battery.txt.
"""

from __future__ import annotations

import argparse
import calendar
import logging
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import structlog

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.simulate_traces import gb_2023_signals  # noqa: E402
from slurm_flex.battery.dispatch import deliverable, dispatch, grid_weight  # noqa: E402
from slurm_flex.battery.model import Battery  # noqa: E402
from slurm_flex.battery.planning import plan_step_with_battery  # noqa: E402
from slurm_flex.grid.series import SLOT_SECONDS, SignalSeries  # noqa: E402
from slurm_flex.planner.policy import Policy, with_objective  # noqa: E402
from slurm_flex.planner.queue import FlexJob, PlanningSnapshot  # noqa: E402
from slurm_flex.simulate.signals import SimSignals  # noqa: E402

WEEKS = ("2023-01-09", "2023-04-03", "2023-07-03", "2023-10-02")  # Mondays
WEEK = 336
HORIZON = 96  # the rolling plan's 48 h
H = 0.5


def slot_of(signals: SimSignals, day: str, hour: int = 0) -> int:
    epoch = calendar.timegm(time.strptime(day, "%Y-%m-%d")) + hour * 3600
    return (epoch - signals.start) // 1800


def carbon_kg(carbon: np.ndarray, grid_kw: np.ndarray) -> float:
    return float((carbon * grid_kw * H).sum() / 1000.0)


def cost_gbp(price: np.ndarray, grid_kw: np.ndarray) -> float:
    return float((np.nan_to_num(price) * grid_kw * H).sum() / 1000.0)


def rolling(
    battery: Battery, load_kw: float, signals: SimSignals, first: int, policy: Policy
) -> tuple[np.ndarray, float]:
    """Grid kW per slot when a 48 h plan on the forecast is made every half-hour and its first
    slot carried out."""
    b = battery
    grid = np.zeros(WEEK)
    eta = b.efficiency
    for k in range(WEEK):
        at = first + k
        end = first + min(WEEK, k + HORIZON)  # the week's end bounds the last plans: both end at the target
        weight = grid_weight(signals.forecast[at:end], signals.price[at:end], policy)
        s = dispatch(b, np.full(weight.size, load_kw), weight)
        c, d = float(s.charge_kw[0]), float(s.discharge_kw[0])
        grid[k] = load_kw + c - d
        energy = b.energy_kwh + eta * H * c - H * d / eta
        b = b.with_soc(energy / b.capacity_kwh)
    return grid, b.soc


def jobs_and_battery(battery: Battery, signals: SimSignals) -> None:
    """Section 3: two-stage against joint on seeded queues."""
    print("## 3. Jobs and battery: two-stage against one joint model (a 4 h ceiling of 40 kW on planned work)")
    print(
        f"{'week':10s} {'window':>11s} {'seed':>4s} {'starts':>6s} {'two-stage GBP':>13s} {'joint GBP':>9s} "
        f"{'better':>7s} {'kept':>9s} {'kg two':>7s} {'kg kept':>7s} {'s two':>6s} {'s both':>6s}"
    )
    policy = Policy(arrival_reserve=False, capacity_headroom=1.0, min_saving_fraction=0.0, max_horizon_hours=24.0)
    n = 48
    gains: list[float] = []
    for day in WEEKS:
        first = slot_of(signals, day)
        start = signals.start + first * SLOT_SECONDS
        carbon = signals.actual[first : first + n]
        price = signals.price[first : first + n]
        forecast = SignalSeries(start, tuple(float(x) for x in carbon), tuple(float(x) for x in price), "actual")
        weight = grid_weight(carbon, price, policy)
        # The evening peak, and the day's cleanest-and-cheapest 4 h before 20:00 (where jobs want to run).
        mean8 = np.convolve(np.nan_to_num(weight, nan=np.inf), np.ones(8) / 8, mode="valid")[:33]
        best = int(np.argmin(mean8))
        for label, window in (
            ("17-21", slice(34, 42)),
            (f"best {best // 2:02d}-{best // 2 + 4:02d}", slice(best, best + 8)),
        ):
            cap = np.full(n, np.inf)
            cap[window] = 40.0
            for seed in range(3):
                rng = np.random.default_rng(seed)
                jobs = []
                for i in range(20):
                    nodes = int(rng.integers(4, 17))
                    hours = float(rng.integers(2, 9)) / 2
                    deadline = start + int(rng.uniform(8, 24) * 3600)
                    jobs.append(
                        FlexJob(
                            str(i),
                            nodes,
                            nodes * 2500.0,
                            int(hours * 3600),
                            start,
                            deadline - int(hours * 3600),
                            deadline,
                        )
                    )
                snapshot = PlanningSnapshot(
                    now=start,
                    jobs=tuple(jobs),
                    free_by_limits=np.full(n, 64.0),
                    free_planned=np.full(n, 64.0),
                    usable_nodes=64.0,
                    reserve=np.zeros(n),
                    margin_slots=1,
                    power_cap_kw=cap,
                )
                other = np.full(n, 200.0)
                t0 = time.perf_counter()
                two, _, _, bp_two = plan_step_with_battery(
                    snapshot, forecast, policy, battery, other, joint_max_starts=0
                )
                t_two = time.perf_counter() - t0
                t0 = time.perf_counter()
                _, _, _, bp = plan_step_with_battery(snapshot, forecast, policy, battery, other)
                t_both = time.perf_counter() - t0
                assert bp_two is not None and bp is not None and two.instance is not None
                inst = two.instance
                starts = int((inst.latest_start - inst.release + 1).sum())
                # Both costs from the same call (the job planner may stop at its time limit, so two
                # calls need not give the same two-stage plan).
                cost_two = bp.two_stage_cost if bp.two_stage_cost is not None else math.nan
                cost_joint = bp.joint_cost if bp.joint_cost is not None else math.nan
                m = bp.schedule.grid_kw.size
                gain = (cost_two - min(cost_two, cost_joint)) / cost_two
                gains.append(gain)
                print(
                    f"{day:10s} {label:>11s} {seed:4d} {starts:6d} {cost_two:13.2f} {cost_joint:9.2f} {gain:7.2%} "
                    f"{bp.method:>9s} {carbon_kg(carbon[:m], bp_two.schedule.grid_kw):7.0f} "
                    f"{carbon_kg(carbon[:m], bp.schedule.grid_kw):7.0f} {t_two:6.2f} {t_both:6.2f}"
                )
    print(
        f"kept plan {np.mean(gains):.2%} cheaper than two-stage on average (min {min(gains):.2%}, "
        f"max {max(gains):.2%}); 'kg two' is from a separate two-stage call"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    parser.add_argument("--load-kw", type=float, default=400.0)
    parser.add_argument("--kw", type=float, default=150.0)
    parser.add_argument("--kwh", type=float, default=300.0)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    t0 = time.perf_counter()
    signals = gb_2023_signals(args.shared)
    battery = Battery(
        args.kwh, args.kw, args.kw, round_trip_efficiency=0.9, min_soc=0.1, max_soc=0.95, soc=0.5, target_soc=0.5
    )
    load = args.load_kw
    print(f"# slurm-flex battery bench ({platform.python_version()}, {platform.machine()})")
    print(f"# signals: {signals.source}")
    print(
        f"# battery {battery.max_charge_kw:g} kW / {battery.capacity_kwh:g} kWh, round trip "
        f"{battery.round_trip_efficiency:.0%}, SoC {battery.min_soc:.0%}-{battery.max_soc:.0%}, starts at "
        f"{battery.soc:.0%}; constant site load {load:g} kW ({load * WEEK * H / 1000:g} MWh a week)"
    )
    print()
    print("## 1. Arbitrage over a week (saving against the same load without the battery)")
    print(
        f"{'week':10s} {'objective':9s} {'plan':11s} {'GBP saved':>9s} {'% cost':>6s} {'kg CO2 saved':>12s} "
        f"{'% CO2':>6s} {'cycles':>6s} {'end SoC':>7s}"
    )
    totals: dict[tuple[str, str], list[float]] = {}
    for day in WEEKS:
        first = slot_of(signals, day)
        carbon = signals.actual[first : first + WEEK]
        price = signals.price[first : first + WEEK]
        base = np.full(WEEK, load)
        base_cost, base_co2 = cost_gbp(price, base), carbon_kg(carbon, base)
        for objective in ("cost", "carbon", "combined"):
            policy = with_objective(Policy(), objective, has_price=bool(np.isfinite(price).any()))
            runs = {}
            s = dispatch(battery, base, grid_weight(carbon, price, policy))
            runs["clairvoyant"] = (s.grid_kw, float(s.soc[-1]), s.discharge_kw)
            grid, end = rolling(battery, load, signals, first, policy)
            runs["rolling"] = (grid, end, np.maximum(0.0, load - grid))
            for name, (grid, end_soc, discharge) in runs.items():
                saved_gbp = base_cost - cost_gbp(price, grid)
                saved_kg = base_co2 - carbon_kg(carbon, grid)
                cycles = float(discharge.sum() * H / (battery.capacity_kwh * (battery.max_soc - battery.min_soc)))
                totals.setdefault((objective, name), []).extend([saved_gbp, saved_kg])
                print(
                    f"{day:10s} {objective:9s} {name:11s} {saved_gbp:9.1f} {saved_gbp / base_cost:6.1%} "
                    f"{saved_kg:12.0f} {saved_kg / base_co2:6.1%} {cycles:6.1f} {end_soc:7.0%}"
                )
    print()
    print("mean a week over the four weeks:")
    for (objective, name), values in totals.items():
        gbp, kg = np.mean(values[0::2]), np.mean(values[1::2])
        print(f"  {objective:9s} {name:11s} {gbp:8.1f} GBP  {kg:8.0f} kg CO2")
    print()
    print("## 2. A 4 h ceiling, Monday 17:00-21:00 UTC (the battery half charged at 00:00, may charge before it)")
    print(
        f"{'week':10s} {'deliverable kW':>14s} {'kWh':>6s} | {'ceiling':>12s} {'covered kWh':>11s} "
        f"{'unmet kWh':>9s} {'max grid kW':>11s} {'GBP vs none':>11s}"
    )
    for day in WEEKS:
        first = slot_of(signals, day)
        n = 48
        carbon = signals.actual[first : first + n]
        price = signals.price[first : first + n]
        weight = grid_weight(carbon, price, with_objective(Policy(), "combined"))
        window = slice(34, 42)  # 17:00-21:00
        mask = np.full(n, np.inf)
        mask[window] = 0.0
        kw = deliverable(battery, mask, weight)
        for below in (60.0, 150.0):
            ceiling = np.full(n, np.inf)
            ceiling[window] = load - below
            s = dispatch(battery, np.full(n, load), weight, ceiling)
            covered = float((np.full(8, load) - s.grid_kw[window]).clip(min=0).sum() * H)
            unmet = float(s.unmet_kw.sum() * H)
            extra = cost_gbp(price, s.grid_kw) - cost_gbp(price, np.full(n, load))
            print(
                f"{day:10s} {kw[window].mean():14.1f} {kw.sum() * H:6.1f} | {f'load - {below:g} kW':>12s} "
                f"{covered:11.1f} {unmet:9.1f} {s.grid_kw[window].max():11.1f} {extra:11.2f}"
            )
    print()
    jobs_and_battery(battery, signals)
    print()
    print(f"# {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
