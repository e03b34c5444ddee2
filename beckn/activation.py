"""The daemon's side of a confirmed contract: each cycle it

- turns every ACTIVE reduction (shed) contract into a ceiling on the planned flexible work in
  its window's half-hours (the planner then keeps pending work out of the window where
  deadlines allow, and catches up after it);
- turns every ACTIVE increase (absorb) contract into a floor on the site's power in its
  window's half-hours (its baseline plus the kW committed), and in the window pulls deferred
  flexible work forward until the planned draw reaches it: pending jobs the plan starts in a
  later half-hour are released now, most urgent (earliest latest safe start) first, only where
  their nodes are free; a job pulled stays released until the window closes;
- suspends the opted-in running jobs the quote counted on when the window opens
  (``scontrol suspend``), and resumes them when it closes, when the contract is cancelled, or
  earlier if a job's deadline would otherwise be at risk (``scontrol resume``);
- records the site's power each cycle for the delivery report: the power model's estimate of the
  running jobs (labelled ``modelled``) and, where [measure] has the whole site's (a site meter,
  or every node measured), that too (labelled ``measured``);
- writes the planning input the Beckn endpoint quotes from (beckn.inputs).

It reads contracts from the store the endpoint writes; with the endpoint down, confirmed
contracts are still carried out. Every failure here is soft: the cycle goes on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import structlog

from slurm_flex.beckn.flexibility import RunningLoad, free_nodes, movables, pull_forward, running_kw
from slurm_flex.beckn.inputs import write_flex_input
from slurm_flex.beckn.store import ABSORB, BecknStore, Contract
from slurm_flex.grid.series import SLOT_SECONDS, SignalSeries, floor_slot, iso_utc
from slurm_flex.planner.instance import FloatArray
from slurm_flex.planner.queue import Plan, PlanningSnapshot
from slurm_flex.slurm.parsers import SlurmJob

log = structlog.get_logger(__name__)

Runner = Callable[[Sequence[str]], str]
RUNNING_STATES = ("RUNNING", "COMPLETING", "CONFIGURING")


def power_cap(
    contracts: Sequence[Contract], now: int, n_slots: int, running: Sequence[RunningLoad] = ()
) -> FloatArray | None:
    """Per slot from floor_slot(now): the most planned flexible work may draw (None: no contract
    in the horizon). A contract fixes the site's ceiling in each half-hour of its window (its
    baseline less the most it committed there); the running work that stays on (not suspended
    for a contract) is taken off it, so work that starts during the window counts too."""
    slot0 = floor_slot(now)
    ceiling = np.full(n_slots, np.inf)
    paused: set[str] = set()
    for c in contracts:
        # An increase is a floor (power_floor), never a ceiling.
        if c.status != "ACTIVE" or c.window_end <= now or c.direction == ABSORB:
            continue
        paused.update(c.suspend)
        first = (floor_slot(c.window_start) - slot0) // SLOT_SECONDS
        committed = c.committed_per_slot()
        for k, base in enumerate(c.baseline):
            if 0 <= first + k < n_slots:
                ceiling[first + k] = min(ceiling[first + k], max(0.0, base - committed[k]))
    if not np.isfinite(ceiling).any():
        return None
    staying = running_kw([r for r in running if r.job_id not in paused], slot0, n_slots)
    return np.where(np.isfinite(ceiling), np.maximum(0.0, ceiling - staying), np.inf)


def power_floor(
    contracts: Sequence[Contract], now: int, n_slots: int, running: Sequence[RunningLoad] = ()
) -> FloatArray | None:
    """Per slot from floor_slot(now): the least planned flexible work must draw (0: no floor;
    None: no increase contract in the horizon). An increase contract fixes the site's floor in
    each half-hour of its window (its baseline plus the most it committed there; the highest
    where contracts overlap); the running work that stays on (none suspended for a reduction)
    counts toward it, so only the rest is asked of pending work."""
    slot0 = floor_slot(now)
    floor = np.zeros(n_slots)
    found = False
    paused: set[str] = set()
    for c in contracts:
        if c.status != "ACTIVE" or c.window_end <= now:
            continue
        if c.direction != ABSORB:
            paused.update(c.suspend)
            continue
        first = (floor_slot(c.window_start) - slot0) // SLOT_SECONDS
        for k, (base, kw) in enumerate(zip(c.baseline, c.committed_per_slot(), strict=True)):
            if 0 <= first + k < n_slots:
                floor[first + k] = max(floor[first + k], base + kw)
                found = True
    if not found:
        return None
    staying = running_kw([r for r in running if r.job_id not in paused], slot0, n_slots)
    return np.where(floor > 0, np.maximum(0.0, floor - staying), 0.0)


@dataclass(frozen=True)
class AbsorbPull:
    """A pending job released for an increase contract, and why: ``start`` is when (now, or the
    moment a window or one of its half-hours opens, when that comes before the next cycle)."""

    job_id: str
    contract_id: str
    power_kw: float
    nodes: float
    reason: str
    start: int = 0


def absorb_moments(contracts: Sequence[Contract], now: int, lookahead_s: int = 0) -> list[int]:
    """When the floors of the increase contracts are to be met, from now to ``now +
    lookahead_s``: now, while a window is open, then each window opening and each half-hour
    boundary inside a window (the floor changes there) in that span, in order."""
    moments: set[int] = set()
    for c in contracts:
        if c.status != "ACTIVE" or c.direction != ABSORB or c.window_end <= now:
            continue
        if c.window_start <= now:
            moments.add(now)
        edges = [c.window_start, *range(floor_slot(c.window_start) + SLOT_SECONDS, c.window_end, SLOT_SECONDS)]
        moments.update(t for t in edges if now < t <= now + lookahead_s and t < c.window_end)
    return sorted(moments)


def next_edge(contracts: Sequence[Contract], now: float) -> int | None:
    """The next moment after ``now`` a contract in force changes what the site is to do: a
    window opening or closing, or a half-hour boundary inside an increase's window (its floor
    changes there). None: no such moment."""
    edges: list[int] = []
    for c in contracts:
        if c.status != "ACTIVE" or c.window_end <= now:
            continue
        edges += [c.window_start, c.window_end]
        if c.direction == ABSORB:
            edges += range(floor_slot(c.window_start) + SLOT_SECONDS, c.window_end, SLOT_SECONDS)
    return min((t for t in edges if t > now), default=None)


def absorb_pulls(
    contracts: Sequence[Contract],
    now: int,
    running: Sequence[RunningLoad],
    snapshot: PlanningSnapshot,
    plan_: Plan,
    lookahead_s: int = 0,
    drawn_kw: FloatArray | None = None,
) -> tuple[AbsorbPull, ...]:
    """The jobs to release so that the site draws at least the floor of the increase contracts,
    at each of :func:`absorb_moments` (pure): now while a window is open, and where a window
    (or a half-hour of it) opens before ``now + lookahead_s``, at that moment: those jobs get it
    as their begin time, so that Slurm starts them as the window opens rather than at the first
    cycle in it. The planned draw is the running work plus the pending jobs the plan runs in
    that half-hour (by the power model); deferred jobs are pulled forward by
    :func:`flexibility.pull_forward`: most urgent first, their earliest start allowing, only
    onto nodes free for their whole run. Nothing is pulled to start before a window opens.
    ``drawn_kw`` (per slot from floor_slot(now)): what the site's other parts (sites planned
    before this one) already draw toward the floor."""
    out: list[AbsorbPull] = []
    for at in absorb_moments(contracts, now, lookahead_s):
        got = _pulls_at(contracts, now, at, running, snapshot, plan_, drawn_kw)
        plan_ = with_pulls(plan_, got, now)
        out.extend(got)
    return tuple(out)


def _pulls_at(
    contracts: Sequence[Contract],
    now: int,
    at: int,
    running: Sequence[RunningLoad],
    snapshot: PlanningSnapshot,
    plan_: Plan,
    drawn_kw: FloatArray | None = None,
) -> tuple[AbsorbPull, ...]:
    """The jobs to start at ``at`` (now, or a later window opening) for the contracts open then."""
    live = [
        c for c in contracts if c.status == "ACTIVE" and c.direction == ABSORB and c.window_start <= at < c.window_end
    ]
    if not live:
        return ()
    slot0 = floor_slot(now)
    t = (floor_slot(at) - slot0) // SLOT_SECONDS
    n = max(t + 1, snapshot.free_by_limits.size)
    floor = power_floor(live, now, n, running)
    if floor is None or floor[t] <= 1e-9:
        return ()
    movs = movables(snapshot, plan_)
    free, waiting = free_nodes(snapshot, movs, n)
    # Released work draws once it starts: not a job that finds no free nodes.
    draw = sum(m.power_kw for m in movs if m.start <= t < m.start + m.slots and m.job_id not in waiting)
    if drawn_kw is not None and t < drawn_kw.size:
        draw += float(drawn_kw[t])
    if draw + 1e-9 >= floor[t]:
        return ()
    pulled, _ = pull_forward(movs, free, [(t, float(floor[t]) - draw)])
    if not pulled:
        return ()
    # Credited to the contract that asks most of this half-hour.
    slot = floor_slot(at)
    site_floor, owner = max(
        (
            (base + kw, c.id)
            for c in live
            for k, (base, kw) in enumerate(zip(c.baseline, c.committed_per_slot(), strict=True))
            if floor_slot(c.window_start) + k * SLOT_SECONDS == slot
        ),
        default=(float(floor[t]), live[0].id),
    )
    stays = site_floor - float(floor[t])
    start = max(now, at)
    when = f"; it starts as the window opens at {iso_utc(start)[11:19]} UTC" if start > now else ""
    why = (
        f"pulled forward for absorb contract {owner}: the site is to draw at least {site_floor:.3f} kW in the "
        f"{iso_utc(slot)[11:16]} UTC half-hour; running and released work drew {stays + draw:.3f} kW{when}"
    )
    return tuple(AbsorbPull(p.job_id, owner, p.power_kw, p.nodes, why, start) for p in pulled)


def planned_draw(snapshot: PlanningSnapshot, plan_: Plan, n_slots: int) -> FloatArray:
    """kW per slot from floor_slot(now) the plan's pending flexible jobs draw once started (as
    :func:`absorb_pulls` counts them toward a floor: not a job that finds no free nodes)."""
    out = np.zeros(n_slots)
    movs = movables(snapshot, plan_)
    _, waiting = free_nodes(snapshot, movs, max(n_slots, snapshot.free_by_limits.size))
    for m in movs:
        if m.job_id not in waiting:
            out[max(0, m.start) : min(n_slots, m.start + m.slots)] += m.power_kw
    return out


def with_pulls(plan_: Plan, pulls: Sequence[AbsorbPull], now: int) -> Plan:
    """The plan with the pulled jobs starting when pulled (pure): now, or as a window opens
    before the next cycle. The cycle reconciles Slurm with it (their begin time set to that),
    and records and plan files show why."""
    by_id = {p.job_id: p for p in pulls}
    if not by_id:
        return plan_
    slot0 = floor_slot(now)

    def start(job_id: str) -> int:
        return max(now, by_id[job_id].start)

    # It now runs at the signals of now: no saving is claimed for it.
    jobs = tuple(
        replace(
            j,
            start=start(j.job_id),
            deferred=start(j.job_id) > now,
            reason=by_id[j.job_id].reason,
            carbon_planned_g=j.carbon_now_g,
            mean_ci_planned=j.mean_ci_now,
            cost_planned_gbp=j.cost_now_gbp,
        )
        if j.job_id in by_id
        else j
        for j in plan_.jobs
    )
    sol = plan_.solution
    if sol is not None:
        starts = {
            k: ((floor_slot(start(k)) - slot0) // SLOT_SECONDS if k in by_id else v) for k, v in sol.starts.items()
        }
        sol = replace(sol, starts=starts)
    return replace(plan_, jobs=jobs, solution=sol)


def running_loads(
    jobs: Sequence[SlurmJob], estimate: Callable[[SlurmJob], float], suspendable: str, requeue: str = "flex=requeue"
) -> list[RunningLoad]:
    """Running jobs as flexibility sees them; the owner's opt-in is a token of --comment
    (``flex=suspendable``, or ``flex=requeue`` for a checkpointing job)."""
    out = []
    for j in jobs:
        if j.state not in RUNNING_STATES:
            continue
        tag = j.tag
        deadline = j.deadline or (tag.deadline if tag is not None else None)
        tokens = (j.comment or "").replace(";", ",").replace(" ", ",").split(",")
        how = "requeue" if requeue in tokens else "suspend"
        opted = suspendable in tokens or requeue in tokens
        out.append(RunningLoad(j.update_id, estimate(j) / 1000.0, j.end_time, deadline, opted, how, j.time_limit_s))
    return out


class Activation:
    def __init__(
        self,
        state_dir: Path,
        suspendable: str,
        margin_s: int,
        run: Runner,
        requeue: str = "flex=requeue",
        lookahead_s: int = 0,
    ) -> None:
        self.state_dir = state_dir
        self.suspendable = suspendable
        self.requeue = requeue
        self.margin_s = margin_s
        self.run = run
        # How far ahead a window opening is prepared for: jobs pulled for it get it as their
        # begin time (the daemon's interval and a little more: the next cycle may come after it).
        self.lookahead_s = lookahead_s
        self._store: BecknStore | None = None
        # Pulls to a window still ahead may be in the store (until a cycle without them forgets them).
        self._pulls_ahead = True

    @property
    def store(self) -> BecknStore:
        if self._store is None:
            self._store = BecknStore(self.state_dir)
        return self._store

    def contracts(self, now: float) -> list[Contract]:
        try:
            return self.store.active(now)
        except Exception as exc:  # a broken store must not stop planning
            log.error("beckn_store_failed", error=str(exc))
            self._store = None
            return []

    def cap(
        self, now: int, n_slots: int, jobs: Sequence[SlurmJob], estimate: Callable[[SlurmJob], float]
    ) -> FloatArray | None:
        loads = running_loads(jobs, estimate, self.suspendable, self.requeue)
        return power_cap(self.contracts(now), now, n_slots, loads)

    def next_edge(self, now: float) -> int | None:
        """When a contract's window (or a half-hour of an increase's) next opens or closes: the
        daemon runs a cycle then rather than up to an interval later."""
        return next_edge(self.contracts(now), now)

    def in_force(self, now: int) -> str:
        """ "absorb" while an increase contract's window is open, else "shed" while any
        contract's window is ahead or open, else ""."""
        ahead = [c for c in self.contracts(now) if c.status == "ACTIVE" and c.window_end > now]
        if any(c.direction == ABSORB and c.window_start <= now for c in ahead):
            return "absorb"
        return "shed" if ahead else ""

    def pulls(
        self,
        now: int,
        jobs: Sequence[SlurmJob],
        estimate: Callable[[SlurmJob], float],
        snapshot: PlanningSnapshot,
        plan_: Plan,
        drawn_kw: FloatArray | None = None,
    ) -> tuple[AbsorbPull, ...]:
        """The jobs to release for the increase contracts in force or about to open (see
        :func:`absorb_pulls`); ``drawn_kw``: what the sites planned before this one draw."""
        try:
            loads = running_loads(jobs, estimate, self.suspendable, self.requeue)
            return absorb_pulls(self.contracts(now), now, loads, snapshot, plan_, self.lookahead_s, drawn_kw)
        except Exception as exc:  # soft: the plan stands as it was
            log.error("beckn_pulls_failed", error=str(exc))
            return ()

    def kept(self, now: float) -> dict[str, str]:
        """Jobs pulled forward for an increase whose window is open, and why: they are not
        deferred again while it lasts (a pulled job never moves later). Not those pulled to the
        opening of a window still ahead: each cycle before it decides them again."""
        try:
            contracts = {c.id: c for c in self.contracts(now)}
            return {
                job: reason
                for cid, job, at, _kw, reason in self.store.pulled()
                if (c := contracts.get(cid)) is not None and c.status == "ACTIVE" and at <= now < c.window_end
            }
        except Exception as exc:
            log.error("beckn_pulls_failed", error=str(exc))
            return {}

    def record_pulls(
        self, pulls: Sequence[AbsorbPull], now: float, failed: frozenset[str]
    ) -> list[tuple[str, dict[str, object]]]:
        """Keep the pulls made in Slurm (those whose release did not fail), each with when it
        starts, and return their ledger entries. Pulls to a window opening still ahead are
        decided again each cycle until it opens: the last decision stands."""
        out: list[tuple[str, dict[str, object]]] = []
        if not pulls and not self._pulls_ahead:
            return out
        try:
            self.store.forget_pulls_after(now)
            self._pulls_ahead = any(p.start > now and p.job_id not in failed for p in pulls)
            for p in pulls:
                if p.job_id in failed:
                    continue
                at = max(now, float(p.start))
                self.store.mark_pulled(p.contract_id, p.job_id, at, p.power_kw, p.reason)
                entry: dict[str, object] = {
                    "contract": p.contract_id,
                    "job": p.job_id,
                    "kw": round(p.power_kw, 3),
                    "why": p.reason,
                }
                if at > now:
                    entry["starts"] = int(at)
                out.append(("beckn.pull", entry))
                log.info("beckn_pull", contract=p.contract_id, job=p.job_id, kw=round(p.power_kw, 3), starts=int(at))
        except Exception as exc:
            log.error("beckn_pulls_failed", error=str(exc))
        return out

    def step(
        self,
        jobs: Sequence[SlurmJob],
        now: float,
        estimate: Callable[[SlurmJob], float],
        measured_kw: float | None,
        snapshot: PlanningSnapshot | None,
        forecast: SignalSeries | None,
        mode: str,
        other_kw: Sequence[float] = (),
    ) -> list[tuple[str, dict[str, object]]]:
        """Suspend/resume for the contracts in force, record power, write the endpoint's input
        (``other_kw``: what the sites after the one ``snapshot`` is of plan to draw). Returns
        ledger entries for what was done in Slurm."""
        entries: list[tuple[str, dict[str, object]]] = []
        try:
            loads = running_loads(jobs, estimate, self.suspendable, self.requeue)
            if snapshot is not None:
                write_flex_input(self.state_dir, snapshot, forecast, loads, now, other_kw)
            by_id = {j.update_id: j for j in jobs}
            contracts = {c.id: c for c in self.contracts(now)}
            if mode == "enforce":
                entries += self._resume(contracts, by_id, now)
                entries += self._suspend(contracts, by_id, now)
            suspended = {job for _, job, _, _ in self.store.open_suspensions()}
            modelled = sum(ld.power_kw for ld in loads if ld.job_id not in suspended)
            # Both, when measured: the pairs before a window tell the delivery proof how the
            # measured site differs from the modelled jobs (idle nodes, the rest of the site).
            self.store.record_usage(now, modelled, "modelled")
            if measured_kw is not None:
                self.store.record_usage(now, measured_kw, "measured")
        except Exception as exc:  # soft: Slurm keeps being managed
            log.error("beckn_activation_failed", error=str(exc))
        return entries

    def _suspend(
        self, contracts: dict[str, Contract], jobs: dict[str, SlurmJob], now: float
    ) -> list[tuple[str, dict[str, object]]]:
        out: list[tuple[str, dict[str, object]]] = []
        done = {(c, j) for c, j, *_ in self.store.suspended()}
        for c in contracts.values():
            if c.status != "ACTIVE" or not (c.window_start <= now < c.window_end):
                continue
            for job_id in c.suspend:
                job = jobs.get(job_id)
                if job is None or job.state != "RUNNING" or (c.id, job_id) in done:
                    continue
                load = running_loads([job], lambda _j: 0.0, self.suspendable, self.requeue)
                if not load or not load[0].can_pause(int(c.window_end - now), self.margin_s):
                    continue
                how = load[0].how
                # A checkpointing job goes back to the queue held, and is released after the window.
                if self._scontrol("requeuehold" if how == "requeue" else "suspend", job_id):
                    self.store.mark_suspended(c.id, job_id, now, job.end_time, how)
                    out.append((f"beckn.{how}", {"contract": c.id, "job": job_id, "until": c.window_end}))
        return out

    def _resume(
        self, contracts: dict[str, Contract], jobs: dict[str, SlurmJob], now: float
    ) -> list[tuple[str, dict[str, object]]]:
        out: list[tuple[str, dict[str, object]]] = []
        hows = {(cid, job): how for cid, job, _a, _r, how in self.store.suspended()}
        for cid, job_id, at, end_at in self.store.open_suspensions():
            c = contracts.get(cid)
            job = jobs.get(job_id)
            why = ""
            if c is None or c.status != "ACTIVE":
                why = "contract ended"
            elif now >= c.window_end:
                why = "window over"
            elif job is not None and end_at is not None:
                deadline = job.deadline or (job.tag.deadline if job.tag is not None else None)
                # Its end moves by the time suspended; resume while the deadline still holds.
                if deadline is not None and end_at + (now - at) + SLOT_SECONDS / 6 + self.margin_s >= deadline:
                    why = "deadline guard"
            if not why:
                continue
            requeued = hows.get((cid, job_id)) == "requeue"
            if requeued:
                done = job is None or not job.pending or self._scontrol("release", job_id)
            else:
                done = job is None or job.state != "SUSPENDED" or self._scontrol("resume", job_id)
            if done:
                self.store.mark_resumed(cid, job_id, now)
                out.append(("beckn.resume", {"contract": cid, "job": job_id, "why": why}))
        return out

    def _scontrol(self, verb: str, job_id: str) -> bool:
        try:
            self.run(["scontrol", verb, job_id])
            log.info(f"beckn_{verb}", job=job_id)
            return True
        except Exception as exc:
            log.warning(f"beckn_{verb}_failed", job=job_id, error=str(exc))
            return False
