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

Results: bench/results/battery.txt.
"""

from __future__ import annotations

import argparse
import calendar
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.simulate_traces import gb_2023_signals  # noqa: E402
from slurm_flex.battery.dispatch import deliverable, dispatch, grid_weight  # noqa: E402
from slurm_flex.battery.model import Battery  # noqa: E402
from slurm_flex.planner.policy import Policy, with_objective  # noqa: E402
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    parser.add_argument("--load-kw", type=float, default=400.0)
    parser.add_argument("--kw", type=float, default=150.0)
    parser.add_argument("--kwh", type=float, default=300.0)
    args = parser.parse_args()
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
    print(f"# {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
