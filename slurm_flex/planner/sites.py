"""Where a portable job runs: the site dimension of the plan.

A job allowed at several sites (clusters of a federation) is placed at the site whose best
window before its latest safe start costs least, by that site's own carbon and price signals
and within its free nodes; the site's own planner (``queue.plan_step``) then chooses the hour
there. Jobs are placed in deadline order and each placement takes its nodes from that site's
free capacity, so a clean site does not attract more work than it can run in time.

A move is proposed only when its saving beats ``threshold`` (a fraction of the cost of the best
window at the current site): a move costs the job its age priority and a moment in REVOKED, and
a forecast difference smaller than its error is not worth that.

Pure: signals, capacities and jobs in; choices out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from slurm_flex.grid.series import SLOT_SECONDS, SignalSeries
from slurm_flex.planner.instance import FloatArray
from slurm_flex.planner.policy import Policy
from slurm_flex.planner.queue import FlexJob


@dataclass(frozen=True)
class SiteOption:
    """One site as the site dimension sees it: its signals (None: no signal, never a target)
    and its free nodes per half-hour slot from ``now``'s slot on."""

    site: str
    forecast: SignalSeries | None
    free_nodes: FloatArray


@dataclass(frozen=True)
class Portable:
    """A flexible job that may run at any of ``allowed`` sites; it is at ``current`` now."""

    job: FlexJob
    current: str
    allowed: tuple[str, ...]


@dataclass(frozen=True)
class WindowCost:
    site: str
    start: int  # epoch of the best start there
    cost_gbp: float  # energy x (price + carbon priced), over the job's run
    mean_ci: float  # g/kWh over the job's run


@dataclass(frozen=True)
class SiteChoice:
    job_id: str
    current: str
    target: str  # == current: stays
    here: WindowCost | None
    best: WindowCost | None
    saving_fraction: float
    reason: str

    @property
    def moves(self) -> bool:
        return self.target != self.current


def slot_weights(series: SignalSeries, policy: Policy) -> FloatArray:
    """GBP per kWh in each slot: price (if it counts and is known) plus carbon at its price,
    as the planner's objective (planner.instance)."""
    carbon = series.carbon_array()
    weight = carbon * policy.carbon_price_gbp_per_tonne / 1e6
    if policy.use_price and series.has_price:
        price = np.nan_to_num(series.price_array(), nan=float(np.nanmean(series.price_array())))
        weight = weight + price / 1000.0
    return np.asarray(weight, dtype=np.float64)


def best_window(job: FlexJob, option: SiteOption, policy: Policy, now: int) -> WindowCost | None:
    """The cheapest start at this site between the job's earliest and latest planned start
    where its nodes are free for its whole run (None: no signal, or nowhere it fits)."""
    series = option.forecast
    if series is None or len(series) == 0:
        return None
    run_s = job.predicted_s or job.duration_s
    k = max(1, math.ceil(run_s / SLOT_SECONDS))
    weights = slot_weights(series, policy)
    carbon = series.carbon_array()
    now_slot = series.index_of(now)
    first = max(series.index_of(max(now, job.earliest)), 0)
    latest = job.plan_latest if job.plan_latest is not None else job.latest_start
    last = min(series.index_of(latest), len(series) - k)
    energy_kwh_per_slot = job.power_w / 1000 * SLOT_SECONDS / 3600
    best: WindowCost | None = None
    for s in range(first, last + 1):
        lo, hi = s - now_slot, s - now_slot + k
        free = option.free_nodes
        if lo < 0 or hi > free.size or float(free[lo:hi].min()) < job.nodes:
            continue
        cost = float(weights[s : s + k].sum()) * energy_kwh_per_slot
        if not math.isfinite(cost):
            continue
        if best is None or cost < best.cost_gbp - 1e-12:
            start = max(now, job.earliest, series.slot_start(s))
            best = WindowCost(option.site, start, cost, float(np.mean(carbon[s : s + k])))
    return best


def choose_sites(
    jobs: Sequence[Portable], options: Mapping[str, SiteOption], policy: Policy, now: int, threshold: float
) -> list[SiteChoice]:
    """Each portable job's site, in deadline order, taking nodes from the chosen site's free
    capacity as it goes."""
    free = {site: np.array(o.free_nodes, dtype=np.float64) for site, o in options.items()}
    choices: list[SiteChoice] = []
    for p in sorted(jobs, key=lambda p: (p.job.deadline, p.job.job_id)):
        costs: dict[str, WindowCost] = {}
        for site in p.allowed:
            if site not in options:
                continue
            option = SiteOption(site, options[site].forecast, free[site])
            if (w := best_window(p.job, option, policy, now)) is not None:
                costs[site] = w
        here = costs.get(p.current)
        best = min(costs.values(), key=lambda w: (w.cost_gbp, w.site != p.current), default=None)
        target, saving, reason = p.current, 0.0, ""
        if best is None:
            reason = "no site has a signal and room for it before its latest start"
        elif here is None:
            target, saving = best.site, 1.0
            reason = f"{p.current} cannot run it in time (or has no signal); {best.site} can ({best.mean_ci:.0f} g/kWh)"
        elif best.site != p.current:
            saving = (here.cost_gbp - best.cost_gbp) / here.cost_gbp if here.cost_gbp > 0 else 0.0
            if saving >= threshold:
                target = best.site
                reason = (
                    f"cleaner/cheaper at {best.site}: {best.mean_ci:.0f} vs {here.mean_ci:.0f} g/kWh in the best "
                    f"windows, {saving:.0%} lower cost (threshold {threshold:.0%})"
                )
            else:
                reason = f"{best.site} saves {saving:.0%}, below the {threshold:.0%} threshold: stays"
        else:
            reason = f"{p.current} is the best site"
        chosen = costs.get(target)
        if chosen is not None:
            _take(free[target], p.job.nodes, chosen.start, p.job, options[target].forecast, now)
        choices.append(SiteChoice(p.job.job_id, p.current, target, here, best, saving, reason))
    return choices


def _take(free: FloatArray, nodes: int, start: int, job: FlexJob, series: SignalSeries | None, now: int) -> None:
    if series is None:
        return
    k = max(1, math.ceil((job.predicted_s or job.duration_s) / SLOT_SECONDS))
    lo = series.index_of(start) - series.index_of(now)
    free[max(lo, 0) : max(lo + k, 0)] -= nodes


__all__ = ["Portable", "SiteChoice", "SiteOption", "WindowCost", "best_window", "choose_sites", "slot_weights"]
