"""The planning policy: one set of rules for the daemon and the simulator.

Which pending jobs may be deferred this cycle, the window each may be planned in, the capacity
the plan may fill, the run time it plans with, and the room kept for work not submitted yet.
:class:`slurm_flex.daemon.cycle.Cycle` and :func:`slurm_flex.simulate.simulate` both build their
inputs from what they see (squeue/sinfo, or the simulated machine) and call these functions and
:func:`slurm_flex.planner.queue.plan`, so a simulated figure is the daemon's figure for the same
``[policy]`` table. Everything here is pure and works on numpy arrays, so that a 300,000-job
trace can be replayed with it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from slurm_flex.errors import PlanningError
from slurm_flex.planner.instance import FloatArray

RuntimeBasis = Literal["limit", "predicted"]
# GBP per tonne CO2: the policy's default, and the price that ranks by carbon (or values carbon in
# reports) where a policy gives none.
DEFAULT_CARBON_PRICE = 250.0


# Why a flexible job is not planned into a window of its own when defer_to_windows is false.
WINDOWS_OFF = "single-job windows are off (defer_to_windows = false)"


@dataclass(frozen=True)
class Policy:
    """The ``[policy]`` table (see conf/slurmflex.toml for each knob's meaning and why)."""

    safety_margin_seconds: int = 900
    min_saving_fraction: float = 0.05
    carbon_price_gbp_per_tonne: float = DEFAULT_CARBON_PRICE
    use_price: bool = True
    max_horizon_hours: float = 168.0
    capacity_headroom: float = 0.9
    slack_use_fraction: float = 0.8
    max_deferred_share: float = 0.5
    defer_only_when_queue_idle: bool = True
    arrival_reserve: bool = True
    expedite_at_risk: bool = True
    # Release (or move up) that many half-hours before the queue projection says it is too late.
    at_risk_margin_slots: int = 1
    # The run time plans are made with: the time limit, or the prediction from the user's recent
    # jobs (planner.runtime). Deadlines are always guarded with the time limit.
    plan_runtime: RuntimeBasis = "predicted"
    # Size a planned job by its average use of the slots it touches, so that a 5-minute job does
    # not hold a whole half-hour of nodes in the plan.
    fractional_occupancy: bool = True
    solve_time_limit: float = 10.0
    # "auto": the best method for the instance with a certified bound (the daemon's default);
    # "fast": cheapest windows, else a short Lagrangian (the simulator's, which plans 17,000+
    # times a year; see planner.solve).
    solver: Literal["auto", "fast"] = "auto"
    # Load shaping (planner.shaping): each cycle, let only as much queued flexible work start as
    # the cleanest hours before its deadlines leave for now; the queue keeps its order.
    shape_load: bool = True
    # Plan the shaping on this share of the free processors (packing is never perfect).
    shape_headroom: float = 0.95
    # Weigh each slot by the mean forecast over the queue's typical run, at most this many slots.
    shape_span_slots: int = 12
    # Never hold back a job this close to its latest safe start: a big job needs time to gather
    # its nodes as they come free, and others moved up for their own deadlines may take them
    # first (traced in the simulator: held to the last hours, 80-processor KTH jobs missed).
    shape_exempt_hours: float = 6.0
    # Hold nothing back while more queued jobs with deadlines wait than this (0: no limit). The
    # guard's projection gives each a backfill reservation, which Slurm makes only for the first
    # bf_max_job_test; 100 cut LLNL's next-workday misses from 892 to 71 in 42 days but its
    # share of the bound at 24 h from 24 % to 8 % (and Curie's from 20 % to 7 %): off by default.
    shape_max_queue: int = 0
    # What the guard projects the queue by: time limits, or predicted run times. By time limits
    # it refuses almost every hold where users ask for far more time than they use (CEA-Curie:
    # median run 4 % of the limit; 31 % of the bound at x2, 56 % by predictions, no new miss at
    # 24 h). By predictions, jobs wider than ``shape_guard_wide_share`` of the machine are also
    # guarded by time limits (by predictions alone KTH's near-whole-machine jobs missed: 4 in 42
    # days). Not the default: under next-workday deadlines it missed more (LLNL-Thunder 2,899 new
    # misses in 42 days against 892 by time limits; bench/results/simulate.txt).
    shape_guard_runtime: RuntimeBasis = "limit"
    shape_guard_wide_share: float = 0.5
    # Also plan single flexible jobs into their cleanest windows (held with a begin time until
    # then), as before load shaping. Off by default: with load shaping it took less of the
    # bound and missed deadlines on CEA-Curie (bench/results/simulate.txt). A flexibility
    # contract's window is planned job by job whatever this says.
    defer_to_windows: bool = False

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Policy:
        """From a validated ``[policy]`` table (config.PolicyConfig's fields); unknown keys are
        the config layer's business and are ignored here."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


def no_defer_reason(
    nodes: float, usable_nodes: float, queue_waiting: bool, deferred_already: bool, policy: Policy
) -> str:
    """Why a job must run as soon as possible this cycle instead of being planned ("" if it may
    be deferred): too big for a planned window to be safe, or new work while others already wait
    for resources (the queue's backlog is the machine's own deferral)."""
    if nodes > policy.max_deferred_share * max(usable_nodes, 1.0):
        return f"needs more than {policy.max_deferred_share:.0%} of the nodes"
    if policy.defer_only_when_queue_idle and queue_waiting and not deferred_already:
        return "jobs are waiting for resources, so deferring would only lengthen the queue"
    return ""


def plan_latest(earliest: int, latest_start: int, policy: Policy) -> int:
    """The latest start the plan may choose: the first ``slack_use_fraction`` of the slack, the
    rest a buffer for the queue and for later work with the same deadline."""
    return min(latest_start, earliest + int(policy.slack_use_fraction * max(0, latest_start - earliest)))


def arrival_reserve(
    load_nodes: float, total_nodes: float, ramp_slots: int, n_slots: int, by_utilisation: bool = True
) -> FloatArray:
    """Nodes per slot from now to keep for work not submitted yet, so that a planned window is
    not filled by deferred work alone: ``load_nodes`` (what recent arrivals kept busy) phased in
    over ``ramp_slots`` (their typical time limit, as running work hands over to new work).
    Scaled by utilisation: on a lightly used machine work arriving into a full window waits
    little, the backlog drains fast; on a busy one it would queue past its deadline (measured
    with the simulator on the KTH and LLNL traces, see bench/results/simulate.txt)."""
    if load_nodes <= 0 or total_nodes <= 0:
        return np.zeros(n_slots)
    reserve = load_nodes * np.minimum(1.0, np.arange(n_slots) / max(ramp_slots, 1))
    if by_utilisation:
        reserve *= min(1.0, load_nodes / total_nodes)
    return np.asarray(reserve, dtype=np.float64)


def reserve_ramp_slots(time_limits_s: Sequence[float] | npt.NDArray[np.float64], slot_seconds: int) -> int:
    """Slots over which the arrival reserve phases in: the median time limit of the work seen."""
    limits = np.asarray(time_limits_s, dtype=np.float64)
    limits = limits[np.isfinite(limits) & (limits > 0)]
    if limits.size == 0:
        return 1
    return max(1, math.ceil(float(np.median(limits)) / slot_seconds))


def planning_capacity(free_nodes: FloatArray, usable_nodes: float, reserve: FloatArray, policy: Policy) -> FloatArray:
    """Nodes per slot the plan may fill: what running and queued work leave, less the headroom
    the scheduler needs to pack jobs and the room kept for new arrivals."""
    reserve = reserve if policy.arrival_reserve else np.zeros_like(free_nodes)
    capacity = free_nodes - (1.0 - policy.capacity_headroom) * usable_nodes - reserve[: free_nodes.size]
    return np.asarray(np.maximum(capacity, 0.0), dtype=np.float64)


def planned_seconds(limit_s: float, predicted_s: float | None, policy: Policy) -> float:
    """The run time a job is planned with (never more than its time limit)."""
    if policy.plan_runtime == "predicted" and predicted_s is not None and predicted_s > 0:
        return min(float(limit_s), float(predicted_s))
    return float(limit_s)


def occupancy(
    nodes: FloatArray, planned_s: FloatArray, duration_slots: npt.NDArray[np.int64], slot_seconds: int, policy: Policy
) -> FloatArray:
    """Nodes each planned job counts for in every slot it touches: all of them, or with
    ``fractional_occupancy`` its node-seconds spread over those slots (the same integrated
    capacity the clairvoyant bound uses)."""
    if not policy.fractional_occupancy:
        return np.asarray(nodes, dtype=np.float64)
    share = np.clip(planned_s / np.maximum(duration_slots * slot_seconds, 1), 0.0, 1.0)
    return np.asarray(nodes * share, dtype=np.float64)


Objective = Literal["policy", "carbon", "cost", "combined"]


def with_objective(policy: Policy, objective: Objective | str, has_price: bool = True) -> Policy:
    """``policy`` minimising carbon only, price only, or price plus carbon at the policy's carbon
    price ("policy": as it is). Without a price series the price cannot count."""
    if objective == "carbon" or not has_price:
        if objective == "cost":
            raise PlanningError("a cost objective needs a price series (--price)")
        price = policy.carbon_price_gbp_per_tonne or DEFAULT_CARBON_PRICE  # any positive price ranks by carbon
        return replace(policy, use_price=False, carbon_price_gbp_per_tonne=price)
    if objective == "cost":
        return replace(policy, use_price=True, carbon_price_gbp_per_tonne=0.0)
    if objective == "combined":
        return replace(policy, use_price=True)
    if objective != "policy":
        raise PlanningError(f"objective {objective!r}: use policy, carbon, cost or combined")
    return policy


def objective_name(policy: Policy) -> str:
    """What ``policy`` minimises: "carbon", "cost" or "combined"."""
    if not policy.use_price:
        return "carbon"
    return "cost" if policy.carbon_price_gbp_per_tonne == 0 else "combined"


def risk_margin_slots(policy: Policy, interval_seconds: float, slot_seconds: int) -> int:
    """Slots before its latest safe start a job counts as at risk: the policy's margin plus one
    planning interval (the next look may come that much later)."""
    return policy.at_risk_margin_slots + math.ceil(interval_seconds / slot_seconds)
