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

from slurm_flex.errors import SlurmFlexError
from slurm_flex.grid.series import SLOT_SECONDS
from slurm_flex.planner.instance import Instance
from slurm_flex.planner.queue import arrival_reserve
from slurm_flex.planner.risk import IN_PLACE, at_risk, expedite, place_in_order
from slurm_flex.planner.solve import solve
from slurm_flex.simulate.signals import SimSignals
from slurm_flex.simulate.traces import Trace

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
SLOT_H = SLOT_SECONDS / 3600


class SimulationError(SlurmFlexError):
    """A simulation cannot run with these inputs."""


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
    watts_per_proc: float = 10.0
    horizon_hours: float = 48.0
    carbon_price_gbp_per_tonne: float = 250.0
    safety_margin_seconds: int = 900
    use_price: bool = True
    solve_time_limit: float = 2.0
    # As the daemon's [policy] min_saving_fraction: a job moves only for at least this saving.
    min_saving_fraction: float = 0.05
    # Plan against this share of the processors: backfilling cannot pack jobs of uneven sizes
    # perfectly, and a plan that fills every processor spills past its deadlines.
    plan_capacity_fraction: float = 0.9
    # Plan each job within this share of its slack (latest safe start - submission); the rest is
    # a buffer for the queue and for work that arrives later with the same deadline.
    slack_use_fraction: float = 0.8
    # Release a deferred job as soon as the queue (running work, waiting work, and the deferred
    # jobs with earlier latest starts) could no longer start it by its latest safe start.
    release_at_risk: bool = True
    # Release that many half-hours before the projection says it is too late.
    at_risk_margin_slots: int = 1
    # Queue order of a released job: by when it became eligible (Slurm's age factor) or by its
    # submission (as if its deferral were compensated in priority).
    released_priority: str = "eligible"
    # Leave room for work that will arrive: the processors the last day's arrivals kept busy,
    # phased in over their typical requested run time (new work needs a window too).
    arrival_reserve: bool = True
    # Scale the reserve by the machine's recent utilisation: on a lightly loaded machine work
    # that arrives into a planned window waits little, since the backlog drains fast.
    arrival_reserve_by_utilisation: bool = True
    # Waiting jobs that get a reservation, in priority order (1: EASY backfilling; Slurm's
    # backfill plans up to bf_max_job_test jobs, so it is close to conservative). Both runs alike.
    backfill_reservations: int = 100
    # Jobs needing more than this share of the machine are not deferred: planned capacity is not
    # a reservation, and backfilled work easily keeps such a job from starting in its window.
    max_deferred_share: float = 0.5
    # Defer new work only while no job waits for processors (a saturated machine has no cleaner
    # window to offer, only a longer backlog).
    defer_only_when_idle_queue: bool = True
    # Move a queued job with a deadline ahead of the queue (in order of latest safe start) once
    # the queue, as its time limits promise it, would no longer start it in time: the daemon sets
    # its Slurm priority above the rest ([policy] expedite_at_risk). Only in the slurm-flex run.
    expedite_at_risk: bool = True
    # Deadlines from the slack rule counted from submission ("submit"), or from when Slurm alone
    # started the job ("baseline": a deadline the machine meets without slurm-flex, as in
    # studies without a queue, where a job starts at submission).
    deadline_basis: str = "submit"


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
            "planning_seconds": round(self.planning_seconds, 2),
        }


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
    flexible: npt.NDArray[np.bool_]


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
    slot of room after submission and it is not too big to defer."""
    submit_tick = np.ceil(trace.submit_s / TICK_SECONDS).astype(np.int64)
    run_ticks = np.maximum(1, np.ceil(trace.runtime_s / TICK_SECONDS)).astype(np.int64)
    req_ticks = np.maximum(run_ticks, np.ceil(trace.requested_s / TICK_SECONDS).astype(np.int64))
    deadline_s = deadlines_epoch - start_epoch
    latest = np.floor((deadline_s - trace.requested_s - cfg.safety_margin_seconds) / TICK_SECONDS)
    latest_tick = np.where(np.isfinite(latest), latest, 2**40).astype(np.int64)
    flexible = (latest_tick >= submit_tick + TICKS_PER_SLOT) & (
        trace.procs <= cfg.max_deferred_share * trace.capacity_procs
    )
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
) -> dict[str, float]:
    delay_h = (start_s - jobs.submit_s) / 3600
    missed = (start_s + jobs.runtime_s > jobs.deadline_s + 1e-6) & jobs.flexible
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
) -> list[int]:
    """Start what backfilling starts at ``tick``; returns the jobs still waiting.

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
        if p <= free + 1e-9:
            # Would starting now eat into a reservation?
            end = min(req, span)
            if not reservations or (capacity - expected[tick : tick + end] - reserved[:end]).min() >= p - 1e-9:
                _start(j, tick, jobs, busy, expected, start)
                free -= p
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
    return waiting


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


PlanHook = Callable[[int, list[int], FloatArray, float, int], list[int]]


def _recent_arrivals(
    tick: int, jobs: _Jobs, order: IntArray, submit_sorted: IntArray, start: IntArray
) -> tuple[float, int]:
    """(processors the last day's arrivals keep busy on average, their median requested ticks):
    from what was submitted, using actual run times only of jobs that have already ended."""
    day = 48 * TICKS_PER_SLOT
    lo, hi = np.searchsorted(submit_sorted, [tick - day, tick])
    recent = order[lo:hi]
    if recent.size == 0:
        return 0.0, 1
    # A job still running (or waiting) counts with its time limit: its run time is not known yet.
    ended = (start[recent] >= 0) & (start[recent] + jobs.run_ticks[recent] <= tick)
    ticks = np.where(ended, jobs.run_ticks[recent], jobs.req_ticks[recent])
    load = float((jobs.procs[recent] * ticks).sum()) / day
    return load, int(np.median(jobs.req_ticks[recent]))


def _run(
    jobs: _Jobs,
    capacity: float,
    n_ticks: int,
    plan: PlanHook | None,
    cfg: SimConfig,
    progress: Callable[[int], None] | None,
) -> tuple[IntArray, FloatArray, IntArray, npt.NDArray[np.bool_]]:
    """The tick loop shared by both runs. ``plan(slot, pending_flexible, expected_per_tick)``
    (called at every half-hour) returns the flexible jobs to release now; without it every job
    is eligible on arrival.
    Returns start ticks, busy processors per tick, eligible ticks, and which jobs were moved to
    the head of the queue at some point."""
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
    eligible: list[int] = []
    pending: list[int] = []

    tier = np.zeros(n, dtype=np.int64)  # planner.risk.IN_PLACE, HEAD or NEXT
    ever_expedited = np.zeros(n, dtype=bool)
    check_ticks = TICKS_PER_SLOT * (cfg.at_risk_margin_slots + 1)

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
        for j in done:
            if jobs.run_ticks[j] < jobs.req_ticks[j]:
                _finish(j, tick, jobs, expected, start)
        changed = bool(done)
        urgent_arrival = False  # a job queued now whose latest safe start comes before the next check
        for j in arrivals[tick] if tick < len(arrivals) else ():
            # While jobs already wait for processors the machine is saturated: deferring more
            # work into it only lengthens the backlog, so new work goes straight to the queue.
            if plan is not None and jobs.flexible[j] and not (cfg.defer_only_when_idle_queue and eligible):
                pending.append(int(j))
            else:
                eligible.append(int(j))
                eligible_at[j] = tick
                changed = True
                urgent_arrival |= bool(jobs.flexible[j]) and jobs.latest_tick[j] - tick <= check_ticks
        if pending and tick % TICKS_PER_SLOT == 0 and plan is not None:
            view = _project(tick, eligible, jobs, capacity, expected)
            load, ramp = _recent_arrivals(tick, jobs, order, arrivals_cum, start)
            released = set(plan(tick // TICKS_PER_SLOT, pending, view, load, ramp))
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
        if plan is not None and cfg.expedite_at_risk and eligible and (tick % TICKS_PER_SLOT == 0 or urgent_arrival):
            # As the daemon does each cycle: queued jobs the queue would start too late go first.
            eligible.sort(key=priority)
            queued = np.asarray(eligible, dtype=np.int64)
            latest = np.where(jobs.flexible[queued], jobs.latest_tick[queued] - tick, -1)
            chosen = expedite(
                capacity - expected[tick:],
                jobs.procs[queued],
                jobs.req_ticks[queued],
                latest,
                tier[queued] != IN_PLACE,
                TICKS_PER_SLOT * cfg.at_risk_margin_slots,
            )
            if (chosen != tier[queued]).any():
                tier[queued] = chosen
                ever_expedited[queued] |= chosen != IN_PLACE
                changed = True
        if eligible and (changed or tick % TICKS_PER_SLOT == 0):
            eligible.sort(key=priority)
            waiting = set(_easy(tick, eligible, jobs, capacity, busy, expected, start, cfg.backfill_reservations))
            for j in eligible:
                if j not in waiting:
                    ending.setdefault(tick + int(jobs.run_ticks[j]), []).append(j)
            eligible = [j for j in eligible if j in waiting]
        if progress is not None:
            progress(tick)
    left = start < 0  # the run ended first: start them at the end, so they are still charged
    start[left] = n_ticks - 1
    eligible_at[eligible_at < 0] = n_ticks - 1
    return start, busy[:n_ticks], eligible_at, ever_expedited


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
    horizon = int(cfg.horizon_hours * 3600 // SLOT_SECONDS)
    capacity = trace.capacity_procs
    available = signals.n_slots - offset

    longest_slots = int(jobs.req_ticks.max()) // TICKS_PER_SLOT + 1

    def slots_needed(n_ticks: int) -> int:
        # The simulated span, then a full planning horizon (or the longest job) of grid data.
        return -(-n_ticks // TICKS_PER_SLOT) + max(horizon, longest_slots) + 2

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

    def plan(slot: int, pending: list[int], expected_ticks: FloatArray, load: float, ramp: int) -> list[int]:
        idx = np.asarray(pending)
        h = min(horizon, fc.size - slot)
        now_tick = slot * TICKS_PER_SLOT
        dur = -(-jobs.req_ticks[idx] // TICKS_PER_SLOT)  # slots
        latest_slot = (jobs.latest_tick[idx] - now_tick) // TICKS_PER_SLOT
        # Plan within the first share of each job's slack only (the rest is a buffer).
        share = jobs.submit_tick[idx] + cfg.slack_use_fraction * (jobs.latest_tick[idx] - jobs.submit_tick[idx])
        planned_latest = np.minimum(latest_slot, (share.astype(np.int64) - now_tick) // TICKS_PER_SLOT)
        # Jobs the queue could no longer fit by their latest safe start if they waited another
        # slot go now, whatever the forecast says.
        risky = np.zeros(idx.size, dtype=bool)
        if cfg.release_at_risk:
            window = h * TICKS_PER_SLOT
            risky = at_risk(
                capacity - expected_ticks[:window],
                jobs.procs[idx],
                jobs.req_ticks[idx],
                jobs.latest_tick[idx] - now_tick,
                margin=TICKS_PER_SLOT * cfg.at_risk_margin_slots,
            )
        plannable = (planned_latest > 0) & (dur < h) & ~risky
        # Released now: jobs with no window left to plan in, and those the plan starts now
        # (including any it could not fit before their deadline: they need to queue at once).
        release = list(idx[~plannable])
        if plannable.any():
            p = idx[plannable]
            d = dur[plannable]
            last = np.minimum(planned_latest[plannable], h - d)
            # Work arriving from now on fills the machine as the day's arrivals did.
            reserve = np.zeros(h)
            if cfg.arrival_reserve:
                ramp_slots = max(1, -(-ramp // TICKS_PER_SLOT))
                reserve = arrival_reserve(load, capacity, ramp_slots, h, cfg.arrival_reserve_by_utilisation)
            ticks = expected_ticks[: h * TICKS_PER_SLOT]
            ticks = np.pad(ticks, (0, h * TICKS_PER_SLOT - ticks.size))
            per_slot = ticks.reshape(h, TICKS_PER_SLOT).max(axis=1)
            inst = Instance(
                slot_minutes=SLOT_SECONDS // 60,
                start=0,
                carbon_price_gbp_per_tonne=cfg.carbon_price_gbp_per_tonne,
                carbon=fc[slot : slot + h],
                price=price[slot : slot + h] if cfg.use_price else np.full(h, np.nan),
                capacity_nodes=np.maximum(capacity * cfg.plan_capacity_fraction - per_slot - reserve, 0.0),
                power_cap_kw=np.full(h, np.inf),
                job_ids=tuple(str(j) for j in p),
                nodes=jobs.procs[p],
                power_kw=jobs.kw[p],
                duration=d.astype(np.int64),
                release=np.zeros(p.size, np.int64),
                deadline=(last + d).astype(np.int64),
            )
            t0 = time.perf_counter()
            sol = solve(
                inst,
                method="fast",
                time_limit=cfg.solve_time_limit,
                bound=False,
                min_saving_fraction=cfg.min_saving_fraction,
            )
            planning[0] += time.perf_counter() - t0
            release.extend(int(j) for j in p if sol.starts[str(j)] == 0)
        return release

    f_start, f_busy, f_elig, f_expedited = _run(jobs, capacity, n_ticks, plan, cfg, tick_progress(n_ticks))

    def per_slot(busy_ticks: FloatArray) -> FloatArray:
        padded = np.pad(busy_ticks, (0, n_slots * TICKS_PER_SLOT - busy_ticks.size))
        return np.asarray(padded.reshape(n_slots, TICKS_PER_SLOT).mean(axis=1), dtype=np.float64)

    def seconds(ticks: IntArray) -> FloatArray:
        return np.asarray(ticks * TICK_SECONDS, dtype=np.float64)

    b_s, f_s = seconds(b_start), seconds(f_start)
    baseline = Outcome("baseline", b_s, per_slot(b_busy), np.zeros(jobs.procs.size, bool), seconds(b_elig))
    flex = Outcome("slurm-flex", f_s, per_slot(f_busy), jobs.flexible, seconds(f_elig))
    baseline.metrics = _metrics(jobs, b_s, actual, price)
    base_missed = (b_s + jobs.runtime_s > jobs.deadline_s + 1e-6) & jobs.flexible
    flex.metrics = _metrics(jobs, f_s, actual, price, base_missed)
    flex.metrics["expedited_jobs"] = int(f_expedited.sum())
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
        utilisation=float((jobs.procs * jobs.runtime_s).sum() / (capacity * max(float(jobs.submit_s.max()), 1.0))),
    )
