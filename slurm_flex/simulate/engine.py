"""Replay a workload against real grid data: as submitted, and with slurm-flex planning.

Both runs use the same cluster model, so the only difference is when flexible jobs may start.
The scheduler works in 5-minute ticks (half-hour slots would round every short job up to 30
minutes and overload the machine: LLNL Thunder's 86% utilisation would become 99%). A job holds
its processors for its actual run time; eligible jobs start by backfilling, first eligible
first served, with reservations for the first 100 waiting jobs (Slurm's backfill plans
``bf_max_job_test`` jobs the same way; 1 would be EASY backfilling). Both runs alike.

* **baseline**: every job is eligible from submission;
* **slurm-flex**: a job with a deadline (from the slack rule) is planned in a receding horizon:
  every half-hour the pending flexible jobs are re-planned with :func:`slurm_flex.planner.solve`
  against the *forecast* carbon and price and the capacity left by running and queued work (as
  their time limits promise it); a job becomes eligible when its planned start arrives, at its
  latest safe start, or as soon as the queue could no longer start it in time (see
  :mod:`slurm_flex.planner.risk`). Released jobs queue like any other: no priority boost.
  Carbon and cost are charged with the *actual* series, per second of actual run time.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

from slurm_flex.errors import SimulationError
from slurm_flex.grid.series import SLOT_SECONDS, SignalSeries
from slurm_flex.planner import shaping
from slurm_flex.planner.policy import (
    DEFAULT_CARBON_PRICE,
    Policy,
    arrival_reserve,
    no_defer_reason,
    objective_name,
    plan_latest,
    risk_margin_slots,
)
from slurm_flex.planner.queue import FlexJob, PlanningSnapshot, plan_step
from slurm_flex.planner.risk import IN_PLACE, expedite, place_in_order
from slurm_flex.planner.runtime import RuntimeHistory
from slurm_flex.simulate.bound import BoundResult, clairvoyant_bound
from slurm_flex.simulate.signals import SimSignals
from slurm_flex.simulate.traces import Trace

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
SLOT_H = SLOT_SECONDS / 3600


# -- slack rules ------------------------------------------------------------------------------

_FACTOR = re.compile(r"^(\d+(?:\.\d+)?)x$")
_HOURS = re.compile(r"^\+?(\d+(?:\.\d+)?)h$")


def slack_deadlines(
    rule: str, submit_epoch: FloatArray, requested_s: FloatArray, tz: str = "Europe/London"
) -> FloatArray:
    """Deadlines (epoch) under a slack rule; inf means not flexible.

    ``none``; ``<k>x`` finish within k times the time limit of submission (k >= 1);
    ``<h>h`` (or ``+<h>h``) may wait h hours; ``workday`` finish by 09:00 local time on the next
    working day after the submission day (Monday to Friday, in ``tz``).
    """
    rule = rule.strip().lower()
    if rule == "none":
        return np.full(submit_epoch.shape, np.inf)
    if m := _FACTOR.match(rule):
        k = float(m.group(1))
        if k < 1:
            raise SimulationError(f"slack rule {rule!r}: the factor must be at least 1")
        return submit_epoch + k * requested_s
    if m := _HOURS.match(rule):
        return submit_epoch + requested_s + float(m.group(1)) * 3600
    if rule == "workday":
        zone = ZoneInfo(tz)
        out = np.empty_like(submit_epoch)
        for i, t in enumerate(submit_epoch):
            local = datetime.fromtimestamp(float(t), UTC).astimezone(zone)
            day = local.date() + timedelta(days=1)
            while day.weekday() >= 5:
                day += timedelta(days=1)
            nine = datetime(day.year, day.month, day.day, 9, 0, tzinfo=zone)
            out[i] = max(nine.timestamp(), t + requested_s[i])
        return out
    raise SimulationError(f"unknown slack rule {rule!r} (use none, <k>x such as 2x, <h>h such as 24h, or workday)")


# -- the simulation -----------------------------------------------------------------------------


TICK_SECONDS = 300
TICKS_PER_SLOT = SLOT_SECONDS // TICK_SECONDS


@dataclass(frozen=True)
class SimConfig:
    """A simulation: the daemon's planning policy (``[policy]``, planner.policy) and what only a
    simulation needs (the machine model and how deadlines are drawn)."""

    policy: Policy = field(default_factory=lambda: Policy(solver="fast"))
    watts_per_proc: float = 10.0
    # Waiting jobs that get a reservation, in priority order (1: EASY backfilling; Slurm's
    # backfill plans up to bf_max_job_test jobs, so it is close to conservative). Both runs alike.
    backfill_reservations: int = 100
    # Deadlines from the slack rule counted from submission ("submit"), or from when Slurm alone
    # started the job ("baseline": a deadline the machine meets without slurm-flex, as in
    # studies without a queue, where a job starts at submission).
    deadline_basis: str = "submit"
    # Queue order of a released job: by when it became eligible (Slurm's age factor) or by its
    # submission (as if its deferral were compensated in priority).
    released_priority: str = "eligible"
    # Research switch: release deferred jobs the queue projection puts at risk (the daemon always
    # does; off only to measure what the guard costs).
    release_at_risk: bool = True
    # Scale the arrival reserve by the machine's recent utilisation (as the daemon does).
    arrival_reserve_by_utilisation: bool = True
    # Compute the clairvoyant bound (simulate.bound) next to the achieved saving.
    bound: bool = True


@dataclass
class Outcome:
    name: str
    start_s: FloatArray  # seconds from the simulation start
    busy: FloatArray  # processors in use per slot (average over the slot)
    flexible: npt.NDArray[np.bool_]
    eligible_s: FloatArray  # when each job was allowed to start (arrival, or release by the plan)
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class SimResult:
    trace: str
    signals: str
    slack: str
    start_epoch: int
    n_slots: int
    capacity_procs: float
    carbon_actual: FloatArray
    price: FloatArray
    baseline: Outcome
    flex: Outcome
    planning_seconds: float
    utilisation: float = math.nan  # processor-seconds run / (capacity x simulated span)
    deadline_basis: str = "submit"
    objective: str = "combined"  # what the planner minimised: carbon, cost or combined
    # The clairvoyant bound on the same jobs and actual series (simulate.bound), when computed.
    bound: BoundResult | None = None
    # Each job's latest start under the slack rule (seconds from the start; inf: none), and
    # what the bound needs besides: run times, processors, kW.
    latest_start_s: FloatArray | None = None
    runtime_s: FloatArray | None = None
    procs: FloatArray | None = None
    kw: FloatArray | None = None

    def captured(self) -> dict[str, dict[str, float]]:
        """Per objective (carbon, cost, combined): the saving achieved, the bound's saving and the
        share captured, in percent; empty without a bound."""
        if self.bound is None:
            return {}
        achieved = {
            "carbon": _saved(self.baseline.metrics, self.flex.metrics, "carbon_kg"),
            "cost": _saved(self.baseline.metrics, self.flex.metrics, "cost_gbp"),
            "combined": _saved(self.baseline.metrics, self.flex.metrics, "objective_gbp"),
        }
        out: dict[str, dict[str, float]] = {}
        for name, b in (("carbon", self.bound.carbon), ("cost", self.bound.cost), ("combined", self.bound.combined)):
            got = achieved[name]
            if not math.isfinite(got) or not math.isfinite(b.saving_percent):
                continue
            share = got / b.saving_percent * 100 if b.saving_percent > 0 else math.nan
            out[name] = {
                "achieved_percent": round(got, 3),
                "bound_percent": round(b.saving_percent, 3),
                "bound_no_capacity_percent": round(b.saving_no_capacity_percent, 3),
                "captured_percent": round(share, 1) if math.isfinite(share) else math.nan,
            }
        return out

    def savings(self) -> dict[str, float]:
        b, f = self.baseline.metrics, self.flex.metrics
        out = {}
        for key in ("carbon_kg", "cost_gbp"):
            if b.get(key) and math.isfinite(b[key]) and math.isfinite(f.get(key, math.nan)):
                out[f"{key}_saved"] = round(b[key] - f[key], 3)
                out[f"{key}_saved_percent"] = round((b[key] - f[key]) / b[key] * 100, 3)
        return out

    def to_json(self) -> dict[str, object]:
        return {
            "trace": self.trace,
            "signals": self.signals,
            "slack": self.slack,
            "deadline_from": self.deadline_basis,
            "start": datetime.fromtimestamp(self.start_epoch, UTC).strftime("%Y-%m-%dT%H:%MZ"),
            "days": round(self.n_slots * SLOT_H / 24, 1),
            "capacity_procs": self.capacity_procs,
            "utilisation": round(self.utilisation, 4),
            "baseline": self.baseline.metrics,
            "slurm_flex": self.flex.metrics,
            "savings": self.savings(),
            "objective": self.objective,
            "bound": self.captured(),
            "bound_seconds": None if self.bound is None else round(self.bound.solve_seconds, 1),
            "planning_seconds": round(self.planning_seconds, 2),
        }


def _saved(base: dict[str, float], flex: dict[str, float], key: str) -> float:
    b, f = base.get(key, math.nan), flex.get(key, math.nan)
    if not (math.isfinite(b) and math.isfinite(f)) or b == 0:
        return math.nan
    return (b - f) / b * 100


@dataclass
class _Jobs:
    submit_s: FloatArray  # seconds from the simulation start
    submit_tick: IntArray
    runtime_s: FloatArray
    run_ticks: IntArray
    req_ticks: IntArray
    procs: FloatArray
    kw: FloatArray
    deadline_s: FloatArray  # seconds from the simulation start (inf: none)
    latest_tick: IntArray  # latest safe start (huge when none)
    flexible: npt.NDArray[np.bool_]  # has a deadline that leaves room to move
    plan_ticks: IntArray  # the run time the planner plans with (set when the job arrives)
    user: IntArray  # who submitted it (-1: unknown), for run-time prediction


def align_start(trace: Trace, signals: SimSignals, start: datetime | None) -> int:
    """Epoch at which trace time 0 is laid over the grid data: ``start`` if given, else the first
    time in the data with the trace's own weekday and time of day (local time where known)."""
    if start is not None:
        epoch = int(start.timestamp())
    else:
        first = signals.start
        if trace.start_unix is None:
            epoch = first
        else:
            zone = ZoneInfo(trace.timezone) if trace.timezone else UTC
            real = datetime.fromtimestamp(trace.start_unix, zone)
            data0 = datetime.fromtimestamp(first, UTC)
            candidate = data0.replace(hour=real.hour, minute=real.minute, second=0)
            candidate += timedelta(days=(real.weekday() - candidate.weekday()) % 7)
            if candidate < data0:
                candidate += timedelta(days=7)
            epoch = int(candidate.timestamp())
    return epoch - epoch % SLOT_SECONDS


def _jobs(trace: Trace, deadlines_epoch: FloatArray, start_epoch: int, cfg: SimConfig) -> _Jobs:
    """Per-job arrays in ticks; a job is flexible when its latest safe start leaves at least a
    slot of room after submission (whether it may be deferred is the policy's call, on arrival)."""
    submit_tick = np.ceil(trace.submit_s / TICK_SECONDS).astype(np.int64)
    run_ticks = np.maximum(1, np.ceil(trace.runtime_s / TICK_SECONDS)).astype(np.int64)
    req_ticks = np.maximum(run_ticks, np.ceil(trace.requested_s / TICK_SECONDS).astype(np.int64))
    deadline_s = deadlines_epoch - start_epoch
    latest = np.floor((deadline_s - trace.requested_s - cfg.policy.safety_margin_seconds) / TICK_SECONDS)
    latest_tick = np.where(np.isfinite(latest), latest, 2**40).astype(np.int64)
    flexible = latest_tick >= submit_tick + TICKS_PER_SLOT
    user = trace.user if trace.user is not None else np.full(trace.n_jobs, -1, dtype=np.int64)
    return _Jobs(
        trace.submit_s,
        submit_tick,
        trace.runtime_s,
        run_ticks,
        req_ticks,
        trace.procs,
        trace.procs * cfg.watts_per_proc / 1000.0,
        deadline_s,
        latest_tick,
        flexible,
        req_ticks.copy(),
        np.asarray(user, dtype=np.int64),
    )


def _charge(jobs: _Jobs, start_s: FloatArray, series: FloatArray) -> float:
    """Σ over jobs of kW x (∫ series over the actual run, in hours): per-second exact."""
    values = np.nan_to_num(series, nan=0.0)
    prefix = np.concatenate(([0.0], np.cumsum(values) * SLOT_SECONDS))

    def integral(x: FloatArray) -> FloatArray:
        k = np.minimum((x // SLOT_SECONDS).astype(np.int64), values.size - 1)
        return np.asarray(prefix[k] + (x - k * SLOT_SECONDS) * values[k], dtype=np.float64)

    per_job = jobs.kw * (integral(start_s + jobs.runtime_s) - integral(start_s)) / 3600
    return float(per_job.sum())


def _metrics(
    jobs: _Jobs,
    start_s: FloatArray,
    carbon: FloatArray,
    price: FloatArray,
    baseline_missed: npt.NDArray[np.bool_] | None = None,
    carbon_price_gbp_per_tonne: float = DEFAULT_CARBON_PRICE,
) -> dict[str, float]:
    delay_h = (start_s - jobs.submit_s) / 3600
    missed = start_s + jobs.runtime_s > jobs.deadline_s + 1e-6  # every job with a deadline counts
    energy = float((jobs.kw * jobs.runtime_s / 3600).sum())
    cost = _charge(jobs, start_s, price) / 1000 if np.isfinite(price).any() else math.nan
    flex = jobs.flexible
    out = {
        "jobs": int(start_s.size),
        "flexible_jobs": int(flex.sum()),
        "energy_kwh": round(energy, 6),
        "carbon_kg": round(_charge(jobs, start_s, carbon) / 1000, 6),
        "cost_gbp": round(cost, 6) if math.isfinite(cost) else math.nan,
        "mean_delay_h": round(float(delay_h.mean()), 3),
        "p95_delay_h": round(float(np.percentile(delay_h, 95)), 3),
        "mean_delay_flexible_h": round(float(delay_h[flex].mean()), 3) if flex.any() else 0.0,
        "mean_delay_other_h": round(float(delay_h[~flex].mean()), 3) if (~flex).any() else 0.0,
        "deadline_misses": int(missed.sum()),
    }
    # The combined objective the bound reports too: price plus carbon at the policy's price.
    out["objective_gbp"] = round(cost + out["carbon_kg"] / 1000 * carbon_price_gbp_per_tonne, 6)
    if baseline_missed is not None:
        out["deadline_misses_not_missed_as_submitted"] = int((missed & ~baseline_missed).sum())
    return out


RESERVATION_WINDOW_TICKS = 7 * 24 * 12  # look this far ahead for a reservation (a week)


def _easy(
    tick: int,
    queue: list[int],
    jobs: _Jobs,
    capacity: float,
    busy: FloatArray,
    expected: FloatArray,
    start: IntArray,
    max_reservations: int = 1,
    budget: float = math.inf,
    exempt_ticks: int = 0,
) -> tuple[list[int], float]:
    """Start what backfilling starts at ``tick``; returns the jobs still waiting and what is
    left of ``budget``, the processors of jobs with deadlines load shaping lets start (jobs
    without one, or within ``exempt_ticks`` of their latest safe start, are not held back).

    Jobs start in queue order while they fit. The first ``max_reservations`` jobs that do not
    fit each get a reservation at the earliest tick their processors are free for their whole
    time limit (as running jobs' time limits and earlier reservations leave them): 1 is EASY
    backfilling, more is conservative backfilling for that many. Later jobs may start now only
    if they fit and delay no reservation: they end (by their time limits) before it, or leave it
    enough processors."""
    free = capacity - busy[tick]
    waiting: list[int] = []
    span = min(expected.size - tick, RESERVATION_WINDOW_TICKS)
    reserved = np.zeros(span)  # processors held by reservations, per tick from now
    reservations = 0
    for j in queue:
        p = float(jobs.procs[j])
        req = int(jobs.req_ticks[j])
        shaped = budget < math.inf and math.isfinite(jobs.deadline_s[j]) and jobs.latest_tick[j] - tick > exempt_ticks
        if p <= free + 1e-9 and (not shaped or p <= budget + 1e-9):
            # Would starting now eat into a reservation?
            end = min(req, span)
            if not reservations or (capacity - expected[tick : tick + end] - reserved[:end]).min() >= p - 1e-9:
                _start(j, tick, jobs, busy, expected, start)
                free -= p
                if shaped:
                    budget -= p
                continue
        if reservations < max_reservations:
            spare = capacity - expected[tick : tick + span] - reserved
            if req < span:
                ok = np.lib.stride_tricks.sliding_window_view(spare, req).min(axis=1) >= p - 1e-9
                if ok.any():
                    k = int(np.argmax(ok))
                    reserved[k : k + req] += p
            reservations += 1
        waiting.append(j)
    return waiting, budget


def _start(j: int, tick: int, jobs: _Jobs, busy: FloatArray, expected: FloatArray, start: IntArray) -> None:
    """Start job ``j``: its processors are busy for its run time; the planner's view holds them
    until its time limit, until the job is seen to end (see _finish)."""
    start[j] = tick
    busy[tick : tick + jobs.run_ticks[j]] += jobs.procs[j]
    expected[tick : tick + jobs.req_ticks[j]] += jobs.procs[j]


def _finish(j: int, tick: int, jobs: _Jobs, expected: FloatArray, start: IntArray) -> None:
    """Job ``j`` ended at ``tick``, before its time limit: what the view still held is free."""
    expected[tick : start[j] + jobs.req_ticks[j]] -= jobs.procs[j]


def _project(tick: int, queue: list[int], jobs: _Jobs, capacity: float, expected: FloatArray) -> FloatArray:
    """Expected use from ``tick`` on, per tick: running jobs until their time limits, plus the
    waiting queue placed in order at the first ticks where it fits (as `squeue --start` would)."""
    idx = np.asarray(queue, dtype=np.int64)
    _, free = place_in_order(capacity - expected[tick:], jobs.procs[idx], jobs.req_ticks[idx])
    return np.asarray(capacity - free, dtype=np.float64)


def _project_predicted(
    tick: int, queue: list[int], running: set[int], jobs: _Jobs, capacity: float, start: IntArray
) -> FloatArray:
    """As :func:`_project`, by predicted run times: a running job holds its processors until its
    predicted end (or, once past it, one more slot, as it may end any time up to its limit)."""
    span = RESERVATION_WINDOW_TICKS
    use = np.zeros(span + 1)
    if running:
        r = np.fromiter(running, dtype=np.int64)
        end = start[r] + jobs.plan_ticks[r]
        end = np.where(end <= tick, np.minimum(start[r] + jobs.req_ticks[r], tick + TICKS_PER_SLOT), end)
        rel = np.clip(end - tick, 0, span)
        np.add.at(use, rel, -jobs.procs[r])
        use[0] += jobs.procs[r].sum()
    held = np.cumsum(use)[:span]
    idx = np.asarray(queue, dtype=np.int64)
    _, free = place_in_order(capacity - held, jobs.procs[idx], jobs.plan_ticks[idx])
    return np.asarray(capacity - free, dtype=np.float64)


PlanHook = Callable[[int, list[int], FloatArray, FloatArray, float, int], list[int]]
# (tick, queue in priority order, running jobs, start ticks, time-limit view, recent load, its
# median time limit) -> processors of queued work with deadlines that may start until the next
# half-hour (planner.shaping; inf: no limit).
ShapeHook = Callable[[int, list[int], set[int], IntArray, FloatArray, float, int], float]


def _recent_arrivals(
    tick: int,
    jobs: _Jobs,
    order: IntArray,
    submit_sorted: IntArray,
    start: IntArray,
    predicted: bool = False,
    days: int = 1,
) -> tuple[float, int]:
    """(processors the last ``days``' arrivals keep busy on average, their median requested
    ticks): from what was submitted, using actual run times only of jobs that have already ended."""
    day = 48 * TICKS_PER_SLOT * days
    if days > 1:
        day = max(48 * TICKS_PER_SLOT, min(day, tick))  # the history there is, at least a day
    lo, hi = np.searchsorted(submit_sorted, [tick - day, tick])
    recent = order[lo:hi]
    if recent.size == 0:
        return 0.0, 1
    # A job still running (or waiting) counts with its time limit: its run time is not known yet.
    ended = (start[recent] >= 0) & (start[recent] + jobs.run_ticks[recent] <= tick)
    ticks = np.where(ended, jobs.run_ticks[recent], (jobs.plan_ticks if predicted else jobs.req_ticks)[recent])
    load = float((jobs.procs[recent] * ticks).sum()) / day
    return load, int(np.median(jobs.req_ticks[recent]))


def _run(
    jobs: _Jobs,
    capacity: float,
    n_ticks: int,
    plan: PlanHook | None,
    cfg: SimConfig,
    progress: Callable[[int], None] | None,
    shape: ShapeHook | None = None,
) -> tuple[IntArray, FloatArray, IntArray, npt.NDArray[np.bool_]]:
    """The tick loop shared by both runs. ``plan(slot, pending, limits_view, planned_view, load,
    ramp)`` (called at every half-hour) returns the deferred jobs to release now; without it every
    job is eligible on arrival. Each job's planning run time is set when it arrives, from the
    run times of its user's jobs that have ended by then (planner.runtime).
    Returns start ticks, busy processors per tick, eligible ticks, and which jobs were moved to
    the head of the queue at some point."""
    policy = cfg.policy
    n = jobs.procs.size
    pad = int(jobs.req_ticks.max()) + 2
    busy = np.zeros(n_ticks + pad)  # actual use (actual run times)
    expected = np.zeros(n_ticks + pad)  # what time limits promise
    start = np.full(n, -1, dtype=np.int64)
    eligible_at = np.full(n, -1, dtype=np.int64)
    order = np.argsort(jobs.submit_tick, kind="stable")
    arrivals_cum = jobs.submit_tick[order]
    arrivals = np.split(order, np.searchsorted(jobs.submit_tick[order], np.arange(1, n_ticks)))
    ending: dict[int, list[int]] = {}  # tick -> jobs whose run ends then
    running: set[int] = set()
    eligible: list[int] = []
    pending: list[int] = []
    history = RuntimeHistory()
    predicting = plan is not None and policy.plan_runtime == "predicted"

    # Processors of queued work that may still start this half-hour (load shaping; inf: any).
    budget = math.inf
    exempt_ticks = shaping.exempt_steps(policy, TICK_SECONDS)
    tier = np.zeros(n, dtype=np.int64)  # planner.risk.IN_PLACE, HEAD or NEXT
    ever_expedited = np.zeros(n, dtype=bool)
    check_ticks = TICKS_PER_SLOT * (policy.at_risk_margin_slots + 1)
    has_deadline = np.isfinite(jobs.deadline_s)

    def priority(j: int) -> tuple[int, int, int]:
        # Expedited jobs first, by latest safe start; then first eligible, first served (Slurm's
        # age factor counts from eligibility).
        if tier[j] != IN_PLACE:
            return (int(tier[j]), int(jobs.latest_tick[j]), 0)
        if cfg.released_priority == "submit":
            return (3, int(jobs.submit_tick[j]), int(eligible_at[j]))
        return (3, int(eligible_at[j]), int(jobs.submit_tick[j]))

    for tick in range(n_ticks):
        done = ending.pop(tick, ())
        running.difference_update(done)
        for j in done:
            if jobs.run_ticks[j] < jobs.req_ticks[j]:
                _finish(j, tick, jobs, expected, start)
            if predicting:
                history.add(int(jobs.user[j]), float(jobs.runtime_s[j]))
        changed = bool(done)
        urgent_arrival = False  # a job queued now whose latest safe start comes before the next check
        for j in arrivals[tick] if tick < len(arrivals) else ():
            if predicting and jobs.user[j] >= 0:
                guess = history.predict(int(jobs.user[j]), float(jobs.req_ticks[j] * TICK_SECONDS))
                if guess is not None:
                    jobs.plan_ticks[j] = max(1, min(int(jobs.req_ticks[j]), math.ceil(guess / TICK_SECONDS)))
            # The policy's rules for new work (planner.policy.no_defer_reason), as the daemon's.
            deferrable = (
                plan is not None
                and policy.defer_to_windows
                and jobs.flexible[j]
                and not no_defer_reason(float(jobs.procs[j]), capacity, bool(eligible), False, policy)
            )
            if deferrable:
                pending.append(int(j))
            else:
                eligible.append(int(j))
                eligible_at[j] = tick
                changed = True
                urgent_arrival |= bool(has_deadline[j]) and jobs.latest_tick[j] - tick <= check_ticks
        if pending and tick % TICKS_PER_SLOT == 0 and plan is not None:
            view = _project(tick, eligible, jobs, capacity, expected)
            planned_view = (
                _project_predicted(tick, eligible, running, jobs, capacity, start)
                if policy.plan_runtime == "predicted"
                else view
            )
            load, ramp = _recent_arrivals(tick, jobs, order, arrivals_cum, start)
            released = set(plan(tick // TICKS_PER_SLOT, pending, view, planned_view, load, ramp))
            urgent_arrival |= any(jobs.latest_tick[j] - tick <= check_ticks for j in released)
            if released:
                pending = [j for j in pending if j not in released]
                eligible_at[list(released)] = tick
                eligible.extend(released)
                changed = True
        if plan is not None and pending:
            # A job reaching its latest safe start between plans goes at once.
            due = [j for j in pending if jobs.latest_tick[j] <= tick]
            if due:
                urgent_arrival = True
                pending = [j for j in pending if jobs.latest_tick[j] > tick]
                eligible_at[due] = tick
                eligible.extend(due)
                changed = True
        if plan is not None and policy.expedite_at_risk and eligible and (tick % TICKS_PER_SLOT == 0 or urgent_arrival):
            # As the daemon does each cycle: queued jobs with deadlines (deferred ones or not)
            # that the queue would start too late go first.
            eligible.sort(key=priority)
            queued = np.asarray(eligible, dtype=np.int64)
            latest = np.where(has_deadline[queued], jobs.latest_tick[queued] - tick, -1)
            chosen = expedite(
                capacity - expected[tick:],
                jobs.procs[queued],
                jobs.req_ticks[queued],
                latest,
                tier[queued] != IN_PLACE,
                TICKS_PER_SLOT * policy.at_risk_margin_slots,
            )
            if (chosen != tier[queued]).any():
                tier[queued] = chosen
                ever_expedited[queued] |= chosen != IN_PLACE
                changed = True
        if shape is not None and tick % TICKS_PER_SLOT == 0:
            eligible.sort(key=priority)
            load, ramp = _recent_arrivals(tick, jobs, order, arrivals_cum, start, predicted=True)
            # The coming work: as much as the last day's, or the last week's if more (as the
            # daemon's arrival_load): where one day's arrivals understate what comes, the plan held
            # the machine idle for far-off deadlines and the queue then could not drain (LLNL-Thunder,
            # next-workday rule, 42 days: 892 -> 684 new misses, 25 -> 34 % of the bound).
            load = max(load, _recent_arrivals(tick, jobs, order, arrivals_cum, start, True, days=7)[0])
            budget = shape(tick, eligible, running, start, expected, load, ramp)
        if eligible and (changed or tick % TICKS_PER_SLOT == 0):
            eligible.sort(key=priority)
            still, budget = _easy(
                tick, eligible, jobs, capacity, busy, expected, start, cfg.backfill_reservations, budget, exempt_ticks
            )
            waiting = set(still)
            for j in eligible:
                if j not in waiting:
                    ending.setdefault(tick + int(jobs.run_ticks[j]), []).append(j)
                    running.add(j)
            eligible = [j for j in eligible if j in waiting]
        if progress is not None:
            progress(tick)
    left = start < 0  # the run ended first: start them at the end, so they are still charged
    start[left] = n_ticks - 1
    eligible_at[eligible_at < 0] = n_ticks - 1
    return start, busy[:n_ticks], eligible_at, ever_expedited


def release_now(snapshot: PlanningSnapshot, forecast: SignalSeries | None, policy: Policy) -> list[str]:
    """The simulator's decision at a half-hour: the deferred jobs that become eligible now. The
    daemon decides from the same snapshot through the same planner.queue.plan_step (it records
    each snapshot with its cycle's plan, so tests/test_policy_parity.py replays one here)."""
    planned, _ = plan_step(snapshot, forecast, policy)
    return [p.job_id for p in planned.jobs if not p.deferred]


def simulate(
    trace: Trace,
    signals: SimSignals,
    slack_rule: str,
    cfg: SimConfig = SimConfig(),
    start: datetime | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SimResult:
    start_epoch = align_start(trace, signals, start)
    offset = (start_epoch - signals.start) // SLOT_SECONDS
    if offset < 0:
        raise SimulationError("the simulation starts before the grid data does")
    deadlines = slack_deadlines(slack_rule, trace.submit_s + start_epoch, trace.requested_s)
    jobs = _jobs(trace, deadlines, start_epoch, cfg)
    policy = cfg.policy
    horizon = int(policy.max_horizon_hours * 3600 // SLOT_SECONDS)
    capacity = trace.capacity_procs
    available = signals.n_slots - offset

    longest_slots = int(jobs.req_ticks.max()) // TICKS_PER_SLOT + 1

    def slots_needed(n_ticks: int) -> int:
        # The simulated span, then two days of planning horizon (or the longest job) of grid data;
        # plans in the last days see a shorter forecast, as a daemon would at a data gap.
        return -(-n_ticks // TICKS_PER_SLOT) + max(min(horizon, 96), longest_slots) + 2

    def ticks_needed(jobs: _Jobs) -> int:
        # Long enough for every job to start by its latest safe start (or its submission) and end.
        latest = np.where(jobs.flexible, jobs.latest_tick, jobs.submit_tick)
        n_ticks = int((np.maximum(latest, jobs.submit_tick) + jobs.req_ticks).max() + 2 * TICKS_PER_SLOT)
        need = slots_needed(n_ticks)
        if available < need:
            raise SimulationError(
                f"grid data covers {available * SLOT_H / 24:.0f} days from the start, the trace needs "
                f"{need * SLOT_H / 24:.0f}: use --days or an earlier --start"
            )
        return n_ticks

    n_ticks = ticks_needed(jobs)

    def tick_progress(base: int) -> Callable[[int], None] | None:
        return None if progress is None else (lambda t: progress(base + t + 1, 2 * n_ticks))

    b_start, b_busy, b_elig, _ = _run(jobs, capacity, n_ticks, None, cfg, tick_progress(0))
    if cfg.deadline_basis == "baseline":
        # The slack rule counts from when Slurm alone started the job: every deadline is one the
        # machine can meet without slurm-flex, so any miss is slurm-flex's.
        started = (b_start * TICK_SECONDS + start_epoch).astype(np.float64)
        deadlines = slack_deadlines(slack_rule, started, trace.requested_s)
        jobs = _jobs(trace, np.maximum(deadlines, jobs.deadline_s + start_epoch), start_epoch, cfg)
        more = ticks_needed(jobs) - n_ticks
        if more > 0:
            b_busy = np.pad(b_busy, (0, more))
            n_ticks += more
    elif cfg.deadline_basis != "submit":
        raise SimulationError(f"deadline basis {cfg.deadline_basis!r}: use submit or baseline")
    n_slots = -(-n_ticks // TICKS_PER_SLOT)
    need = slots_needed(n_ticks)
    fc = signals.forecast[offset : offset + need]
    actual = signals.actual[offset : offset + need]
    price = signals.price[offset : offset + need]
    planning = [0.0]

    def plan(
        slot: int, pending: list[int], limits_view: FloatArray, planned_view: FloatArray, load: float, ramp: int
    ) -> list[int]:
        """The daemon's planning step (planner.policy and planner.queue.plan) on the simulated
        queue: returns the deferred jobs to release now."""
        idx = np.asarray(pending, dtype=np.int64)
        snapshot, series = planning_snapshot(slot, idx, limits_view, planned_view, load, ramp)
        t0 = time.perf_counter()
        released = release_now(snapshot, series, policy)
        planning[0] += time.perf_counter() - t0
        return [int(job_id) for job_id in released]

    def planning_snapshot(
        slot: int, idx: IntArray, limits_view: FloatArray, planned_view: FloatArray, load: float, ramp: int
    ) -> tuple[PlanningSnapshot, SignalSeries]:
        """What the daemon would see at this half-hour: the deferred jobs, the free processors per
        slot by time limits and by planned run times (the busiest tick of each slot), and the
        room kept for new work."""
        now = start_epoch + slot * SLOT_SECONDS
        h = max(1, min(horizon, fc.size - slot))

        def per_slot(view: FloatArray) -> FloatArray:
            ticks = np.pad(view[: h * TICKS_PER_SLOT], (0, max(0, h * TICKS_PER_SLOT - view.size)))
            return np.asarray(capacity - ticks.reshape(h, TICKS_PER_SLOT).max(axis=1), dtype=np.float64)

        series = SignalSeries(
            start=now,
            carbon=tuple(float(x) for x in fc[slot : slot + h]),
            price=tuple(float(x) for x in price[slot : slot + h]),
            source=signals.source,
        )
        flex = tuple(
            FlexJob(
                job_id=str(j),
                nodes=math.ceil(jobs.procs[j]),
                power_w=float(jobs.kw[j] * 1000.0),
                duration_s=int(jobs.req_ticks[j] * TICK_SECONDS),
                earliest=now,
                latest_start=int(start_epoch + jobs.latest_tick[j] * TICK_SECONDS),
                deadline=int(start_epoch + jobs.deadline_s[j]),
                plan_latest=plan_latest(
                    int(start_epoch + jobs.submit_tick[j] * TICK_SECONDS),
                    int(start_epoch + jobs.latest_tick[j] * TICK_SECONDS),
                    policy,
                ),
                predicted_s=int(jobs.plan_ticks[j] * TICK_SECONDS),
            )
            for j in idx
        )
        reserve = arrival_reserve(
            load, capacity, max(1, -(-ramp // TICKS_PER_SLOT)), h, cfg.arrival_reserve_by_utilisation
        )
        # The simulator plans every half-hour, as a daemon with a 30-minute interval would.
        margin = risk_margin_slots(policy, SLOT_SECONDS, SLOT_SECONDS) if cfg.release_at_risk else -(10**6)
        snapshot = PlanningSnapshot(
            now, flex, per_slot(limits_view), per_slot(planned_view), float(capacity), reserve, margin
        )
        return snapshot, series

    weight = shaping.slot_weight(fc, price, policy)

    def hold_back(
        tick: int, queue: list[int], running: set[int], started: IntArray, expected: FloatArray, load: float, ramp: int
    ) -> float:
        """The start budget for this half-hour: the simulated queue as a ShapingSnapshot, through
        planner.shaping.hold_from_snapshot, the step the daemon takes from squeue/sinfo each cycle
        (tests/test_policy_parity.py replays the daemon's snapshots through it)."""
        slot = tick // TICKS_PER_SLOT
        h = max(1, min(shaping.HORIZON_SLOTS, fc.size - slot))
        q = np.asarray(queue, dtype=np.int64)
        snapshot = shaping.ShapingSnapshot(
            now=start_epoch + tick * TICK_SECONDS,
            weight=weight[slot : slot + h],
            running_planned=_project_predicted(tick, [], running, jobs, capacity, started),
            running_limits=expected[tick:],
            capacity=capacity,
            queue=shaping.QueuedWork(
                jobs.procs[q],
                jobs.plan_ticks[q],
                jobs.req_ticks[q],
                jobs.latest_tick[q] - tick,
                has_dl[q],
            ),
            arrival_load=load,
            arrival_due_slots=arrival_slots,
            arrival_run_slots=max(1, ramp // TICKS_PER_SLOT),
            # The simulator plans every half-hour, as a daemon with a 30-minute interval would.
            margin_slots=risk_margin_slots(policy, SLOT_SECONDS, SLOT_SECONDS),
            steps_per_slot=TICKS_PER_SLOT,
        )
        return shaping.hold_from_snapshot(snapshot, policy).start_budget

    has_dl = np.isfinite(jobs.deadline_s)
    recent_slack = np.where(np.isfinite(jobs.deadline_s), jobs.latest_tick - jobs.submit_tick, 0)
    # The median slack of the work with deadlines (no default: every job's slack is known here).
    arrival_slots = shaping.arrival_due_slots(recent_slack * float(TICK_SECONDS), 0.0, SLOT_SECONDS)

    f_start, f_busy, f_elig, f_expedited = _run(
        jobs, capacity, n_ticks, plan, cfg, tick_progress(n_ticks), hold_back if policy.shape_load else None
    )

    def per_slot(busy_ticks: FloatArray) -> FloatArray:
        padded = np.pad(busy_ticks, (0, n_slots * TICKS_PER_SLOT - busy_ticks.size))
        return np.asarray(padded.reshape(n_slots, TICKS_PER_SLOT).mean(axis=1), dtype=np.float64)

    def seconds(ticks: IntArray) -> FloatArray:
        return np.asarray(ticks * TICK_SECONDS, dtype=np.float64)

    b_s, f_s = seconds(b_start), seconds(f_start)
    baseline = Outcome("baseline", b_s, per_slot(b_busy), np.zeros(jobs.procs.size, bool), seconds(b_elig))
    flex = Outcome("slurm-flex", f_s, per_slot(f_busy), jobs.flexible, seconds(f_elig))
    carbon_price = policy.carbon_price_gbp_per_tonne or DEFAULT_CARBON_PRICE
    baseline.metrics = _metrics(jobs, b_s, actual, price, carbon_price_gbp_per_tonne=carbon_price)
    base_missed = b_s + jobs.runtime_s > jobs.deadline_s + 1e-6
    flex.metrics = _metrics(jobs, f_s, actual, price, base_missed, carbon_price)
    flex.metrics["expedited_jobs"] = int(f_expedited.sum())
    bound = None
    if cfg.bound:
        # Each job anywhere from its Slurm-alone start to its latest start under the slack rule.
        b_latest = np.maximum(b_s, jobs.latest_tick.astype(np.float64) * TICK_SECONDS)
        b_latest = np.where(np.isfinite(jobs.deadline_s), b_latest, b_s)
        bound = clairvoyant_bound(
            b_s,
            b_latest,
            jobs.runtime_s,
            jobs.procs,
            jobs.kw,
            actual,
            price,
            capacity,
            carbon_price_gbp_per_tonne=carbon_price,
            tick_seconds=TICK_SECONDS,
        )
    return SimResult(
        trace=trace.name,
        signals=signals.source + (" (perfect foresight)" if signals.perfect_foresight else ""),
        slack=slack_rule,
        start_epoch=start_epoch,
        n_slots=n_slots,
        capacity_procs=capacity,
        carbon_actual=actual[:n_slots],
        price=price[:n_slots],
        baseline=baseline,
        flex=flex,
        planning_seconds=planning[0],
        deadline_basis=cfg.deadline_basis,
        objective=objective_name(policy),
        bound=bound,
        latest_start_s=np.where(np.isfinite(jobs.deadline_s), jobs.latest_tick * float(TICK_SECONDS), np.inf),
        runtime_s=jobs.runtime_s,
        procs=jobs.procs,
        kw=jobs.kw,
        utilisation=float((jobs.procs * jobs.runtime_s).sum() / (capacity * max(float(jobs.submit_s.max()), 1.0))),
    )
