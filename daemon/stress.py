"""Grid-stress events at one site of a federation (issue 18, "mid-event shift"): for the event's
window the site must draw less, so its load is shed there and, where it can, carried on at the
other site.

An event comes from an admin (``slurmflex stress --site S --kw K --from T1 --to T2``, recorded
in the state store and the ledger like the other admin commands) or, with ``[federation]
beckn_stress_site``, from each ACTIVE Beckn reduction contract (:meth:`StressShed.adopt`: an
event at that site over the contract's window, shedding the most it committed; cancelled when
the contract no longer is). Its ceiling is the site's
draw when a cycle first saw the event (its running jobs, by the power model: its *baseline*)
less the kW to shed. Each cycle while the window is open, at the
stressed site:

- pending jobs allowed at another site are moved there through the federation's safe move path
  (``daemon.moves.Mover.shed``: never arrays, jobs with unfulfilled dependencies, held jobs, or
  toward a cluster not connected and synced), and no job is moved *to* the site;
- opted-in running jobs (``--comment=flex=suspendable``) are suspended, checkpointing ones
  (``flex=requeue``) requeued held; a requeued job allowed at another site is moved there and
  released at once (it carries on there), the others are resumed or released when the window
  closes (or earlier, when a deadline would be at risk);
- the site is planned under the ceiling: planned flexible work keeps out of the window, and the
  site's battery, when it is behind this site's meter, is dispatched to cover what the running
  work that stays still draws above it (``battery.planning``: the meter ceiling).

What it did is kept for ``slurmflex status`` (:data:`STATE_SETTING`), and each cycle in the
window records a sample (kW carried on at the other site, kW paused, battery discharge, the
site's remaining draw) from which ``slurmflex report stress`` gives the kW moved across sites
per half-hour. Every failure is soft: the cycle goes on.
"""

from __future__ import annotations

import json
import math
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
import structlog

from slurm_flex.beckn.activation import running_loads
from slurm_flex.beckn.store import ABSORB
from slurm_flex.errors import SlurmFlexError
from slurm_flex.grid.series import SLOT_SECONDS, floor_slot, iso_utc
from slurm_flex.planner.instance import FloatArray
from slurm_flex.slurm.parsers import SlurmJob
from slurm_flex.state import StateStore

log = structlog.get_logger(__name__)

# State store settings: the events (JSON list), and what the daemon did for them (JSON object).
EVENTS_SETTING = "stress.events"
STATE_SETTING = "stress.state"
# Samples kept for the report (one per cycle in a window).
MAX_SAMPLES = 20_000
SAMPLE_RETENTION_S = 14 * 86400
RUNNING = ("RUNNING", "COMPLETING", "CONFIGURING")

Runner = Callable[[Sequence[str]], str]
Estimate = Callable[[SlurmJob], float]  # watts


class StressError(SlurmFlexError):
    """A stress event that cannot be recorded (unknown site, empty window, bad time)."""


@dataclass(frozen=True)
class StressEvent:
    id: str
    site: str
    kw: float  # to shed at the site
    start: int
    end: int
    by: str
    reason: str = ""
    created: int = 0
    cancelled: bool = False
    baseline_kw: float | None = None  # the site's draw when a cycle first saw the event

    @property
    def ceiling_kw(self) -> float | None:
        return None if self.baseline_kw is None else max(0.0, self.baseline_kw - self.kw)

    def open_at(self, now: float) -> bool:
        return not self.cancelled and self.start <= now < self.end

    def describe(self) -> str:
        return (
            f"stress event {self.id} at {self.site} {iso_utc(self.start)[11:16]}-{iso_utc(self.end)[11:16]} UTC: "
            f"shed {self.kw:g} kW"
        )


_RELATIVE = re.compile(r"^now(?:\s*\+\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|hour|hours)?)?$")


def parse_when(text: str, now: float) -> int:
    """``now``, ``now+90s``, ``now+30min``, ``now+2h``, or an ISO 8601 time (UTC if no zone)."""
    t = text.strip().lower()
    if m := _RELATIVE.match(t):
        amount = float(m.group(1) or 0)
        unit = (m.group(2) or "s")[0]
        return int(now + amount * {"s": 1, "m": 60, "h": 3600}[unit])
    try:
        parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise StressError(f"cannot read the time {text!r} (give now+30min or 2026-12-01T14:00Z)") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp())


def load_events(store: StateStore) -> list[StressEvent]:
    raw = store.setting(EVENTS_SETTING)
    if not raw:
        return []
    try:
        return [StressEvent(**e) for e in json.loads(raw)]
    except (TypeError, ValueError) as exc:
        raise StressError(f"the stored stress events cannot be read: {exc}") from exc


def save_events(store: StateStore, events: Iterable[StressEvent], by: str) -> None:
    store.set_setting(EVENTS_SETTING, json.dumps([asdict(e) for e in events], sort_keys=True), by=by)


def add_event(
    store: StateStore, sites: Iterable[str], site: str, kw: float, start: int, end: int, by: str, reason: str = ""
) -> StressEvent:
    known = list(sites)
    if site not in known:
        raise StressError(f"no site {site!r} in [sites] (sites: {', '.join(known) or 'none'})")
    if not kw > 0 or not math.isfinite(kw):
        raise StressError(f"--kw must be a positive number of kW to shed, not {kw}")
    if end <= start:
        raise StressError("the window is empty: --to must come after --from")
    event = StressEvent(uuid.uuid4().hex[:8], site, float(kw), start, end, by, reason, int(time.time()))
    now = time.time()
    kept = [e for e in load_events(store) if e.end > now - SAMPLE_RETENTION_S]
    save_events(store, [*kept, event], by)
    return event


def cancel_event(store: StateStore, event_id: str, by: str) -> StressEvent:
    events = load_events(store)
    found = next((e for e in events if e.id == event_id), None)
    if found is None:
        raise StressError(f"no stress event {event_id!r}")
    cancelled = replace(found, cancelled=True)
    save_events(store, [cancelled if e.id == event_id else e for e in events], by)
    return cancelled


def site_load_kw(jobs: Iterable[SlurmJob], estimate: Estimate) -> float:
    """kW the site draws now: its running jobs (pending work, even eligible, draws nothing until
    the site has room for it)."""
    return sum(estimate(j) / 1000.0 for j in jobs if j.state in RUNNING)


@dataclass(frozen=True)
class Pause:
    """A running job to suspend (``how`` "suspend") or requeue held ("requeue") for an event."""

    event: StressEvent
    job_id: str
    how: str
    kw: float
    end_at: int | None


@dataclass(frozen=True)
class Ceilings:
    """Per slot from floor_slot(now): the most planned flexible work may draw at the site, and
    the most its meter may show (the battery covers what the running work draws above it)."""

    planned_kw: FloatArray
    meter_kw: FloatArray


class StressShed:
    """The daemon's side of stress events; its state lives in the state store."""

    def __init__(self, store: StateStore, sites: Mapping[str, str], suspendable: str, requeue: str, margin_s: int,
                 run: Runner) -> None:  # fmt: skip
        self.store = store
        self.clusters = dict(sites)  # site -> cluster
        self.suspendable = suspendable
        self.requeue = requeue
        self.margin_s = margin_s
        self.run = run
        self.events: list[StressEvent] = []
        self.state: dict[str, Any] = {}

    # -- reading and keeping -------------------------------------------------------------------
    def load(self, now: float) -> list[StressEvent]:
        """The events not over (and those that ended since the last cycle, so their jobs are
        resumed), and what was done for them."""
        try:
            events = load_events(self.store)
            raw = self.store.setting(STATE_SETTING)
            self.state = dict(json.loads(raw)) if raw else {}
        except (StressError, ValueError) as exc:
            log.error("stress_state_unreadable", error=str(exc))
            events, self.state = [], {}
        for key in ("paused", "moved", "blocked"):
            self.state.setdefault(key, {})
        self.state.setdefault("samples", [])
        self.events = events
        return [e for e in events if not e.cancelled and e.end > now]

    def save(self) -> None:
        """Keep what was done, for the events still stored (older ones are dropped with them)."""
        known = {e.id for e in self.events}
        for key in ("paused", "moved", "blocked"):
            self.state[key] = {k: v for k, v in self.state.get(key, {}).items() if v.get("event") in known}
        self.store.set_setting(STATE_SETTING, json.dumps(self.state, sort_keys=True), by="daemon")

    def adopt(self, contracts: Iterable[Any], site: str, now: float) -> None:
        """Beckn reduction contracts (beckn.store.Contract) as stress events at ``site``: one per
        ACTIVE contract whose window is not over, ``beckn:<id>``; one whose contract is gone or
        no longer ACTIVE is cancelled."""
        live = {
            f"beckn:{c.id}": c
            for c in contracts
            if c.status == "ACTIVE" and c.direction != ABSORB and c.window_end > now
        }
        known = {e.id for e in self.events}
        out = [
            replace(e, cancelled=True) if e.id.startswith("beckn:") and e.id not in live and e.end > now and not
            e.cancelled else e
            for e in self.events
        ]  # fmt: skip
        for eid, c in live.items():
            if eid not in known:
                kw = max(c.committed_per_slot(), default=0.0)
                if kw > 0:
                    out.append(StressEvent(eid, site, float(kw), int(c.window_start), int(c.window_end), "beckn",
                                           f"Beckn contract {c.id} with {c.counterparty}", int(now)))  # fmt: skip
                    log.info("stress_from_beckn", contract=c.id, site=site, kw=kw)
        if out != self.events:
            self.events = out
            save_events(self.store, out, "daemon")

    def next_edge(self, now: float) -> int | None:
        """The next moment an event's window opens or closes (from the store: an event recorded
        since the last cycle counts)."""
        events = load_events(self.store)
        return min((t for e in events if not e.cancelled for t in (e.start, e.end) if t > now), default=None)

    def open_events(self, now: float) -> list[StressEvent]:
        return [e for e in self.events if e.open_at(now)]

    def stressed_sites(self, now: float) -> frozenset[str]:
        return frozenset(e.site for e in self.open_events(now))

    def fix_baselines(self, jobs: Sequence[SlurmJob], estimate: Estimate, site_of: Callable[[SlurmJob], str | None],
                      now: float, lookahead_s: int) -> None:  # fmt: skip
        """An event's baseline is the site's draw at the first cycle that sees it within
        ``lookahead_s`` of its start (or in its window): fixed from then on."""
        changed = False
        out = []
        for e in self.events:
            fixed = e
            if e.baseline_kw is None and not e.cancelled and e.start - lookahead_s <= now < e.end:
                base = site_load_kw((j for j in jobs if site_of(j) == e.site), estimate)
                fixed = replace(e, baseline_kw=round(base, 6))
                changed = True
                log.info("stress_baseline", stress_event=e.id, site=e.site, baseline_kw=fixed.baseline_kw,
                         ceiling_kw=fixed.ceiling_kw)  # fmt: skip
            out.append(fixed)
        if changed:
            self.events = out
            save_events(self.store, out, "daemon")

    # -- planning ------------------------------------------------------------------------------
    def ceilings(self, site: str, staying: FloatArray, now: int, n_slots: int) -> Ceilings | None:
        """The site's ceilings over its events' windows; ``staying``: kW per slot of the running
        work that stays on (not paused). None: no event at the site in the horizon."""
        slot0 = floor_slot(now)
        meter = np.full(n_slots, np.inf)
        for e in self.events:
            if e.site != site or e.cancelled or e.end <= now or e.ceiling_kw is None:
                continue
            first = max(0, (floor_slot(e.start) - slot0) // SLOT_SECONDS)
            last = min(n_slots, -(-(e.end - slot0) // SLOT_SECONDS))
            meter[first:last] = np.minimum(meter[first:last], e.ceiling_kw)
        if not np.isfinite(meter).any():
            return None
        run = np.zeros(n_slots)
        run[: min(n_slots, staying.size)] = staying[:n_slots]
        planned = np.where(np.isfinite(meter), np.maximum(0.0, meter - run), np.inf)
        return Ceilings(planned, meter)

    # -- suspending and resuming ---------------------------------------------------------------
    def to_pause(self, jobs: Sequence[SlurmJob], site_of: Callable[[SlurmJob], str | None], now: int,
                 estimate: Estimate) -> list[Pause]:  # fmt: skip
        """The opted-in running jobs at the sites of the open events whose deadlines allow a
        pause to the window's end (pure: :meth:`pause` makes them)."""
        out: list[Pause] = []
        paused = self.state["paused"]
        for e in self.open_events(now):
            candidates = {
                j.update_id: j
                for j in jobs
                if j.state == "RUNNING" and site_of(j) == e.site and j.update_id not in paused
            }
            for load in running_loads(list(candidates.values()), estimate, self.suspendable, self.requeue):
                if load.can_pause(int(e.end - now), self.margin_s):
                    out.append(Pause(e, load.job_id, load.how, load.power_kw, candidates[load.job_id].end_time))
        return out

    def pause(self, pauses: Sequence[Pause], now: int, mode: str) -> list[tuple[str, dict[str, object]]]:
        """Suspend (or requeue held) the jobs :meth:`to_pause` chose; returns ledger entries.
        Made after the cycle's moves and start-time changes: Slurm may give a suspended job's
        CPUs to pending work at once."""
        entries: list[tuple[str, dict[str, object]]] = []
        if mode != "enforce":
            return entries
        for p in pauses:
            if not self._scontrol("requeuehold" if p.how == "requeue" else "suspend", p.job_id):
                continue
            e = p.event
            self.state["paused"][p.job_id] = {
                "event": e.id,
                "site": e.site,
                "how": p.how,
                "at": now,
                "end_at": p.end_at,
                "kw": round(p.kw, 6),
                "why": f"{'requeued' if p.how == 'requeue' else 'suspended'} for {e.describe()}",
            }
            entries.append((f"stress.{p.how}", {"event": e.id, "job": p.job_id, "until": e.end}))
            log.info("stress_paused", stress_event=e.id, job=p.job_id, how=p.how, kw=round(p.kw, 3))
        return entries

    def requeued(self) -> frozenset[str]:
        """Jobs requeued held for an event and neither moved nor released yet."""
        return frozenset(
            k
            for k, v in self.state["paused"].items()
            if v["how"] == "requeue" and v.get("resumed") is None and not v.get("moved_to")
        )

    def carried_on(self, job_id: str, target: str, now: int) -> list[tuple[str, dict[str, object]]]:
        """A requeued job moved to ``target``: released there at once (it carries on)."""
        entry = self.state["paused"].get(job_id)
        if entry is None:
            return []
        if not self._scontrol("release", job_id):
            return []
        entry.update(moved_to=target, resumed=now, why=f"{entry['why']}; carries on at {target}")
        return [("stress.carried_on", {"event": entry["event"], "job": job_id, "to": target})]

    def resume(self, jobs: Sequence[SlurmJob], now: int, mode: str) -> list[tuple[str, dict[str, object]]]:
        """Resume (or release) paused jobs whose event is over or cancelled, or whose deadline
        would otherwise be at risk."""
        out: list[tuple[str, dict[str, object]]] = []
        if mode != "enforce":
            return out
        by_id = {j.update_id: j for j in jobs}
        events = {e.id: e for e in self.events}
        for job_id, entry in self.state["paused"].items():
            if entry.get("resumed") is not None:
                continue
            e = events.get(entry["event"])
            job = by_id.get(job_id)
            why = ""
            if e is None or e.cancelled:
                why = "event cancelled"
            elif now >= e.end:
                why = "window over"
            elif job is not None and entry.get("end_at") is not None:
                deadline = job.deadline or (job.tag.deadline if job.tag is not None else None)
                if deadline is not None and entry["end_at"] + (now - entry["at"]) + self.margin_s >= deadline:
                    why = "deadline guard"
            if not why:
                continue
            if entry["how"] == "requeue":
                ok = job is None or not job.pending or self._scontrol("release", job_id)
            else:
                ok = job is None or job.state != "SUSPENDED" or self._scontrol("resume", job_id)
            if ok:
                entry.update(resumed=now, resumed_why=why)
                out.append(("stress.resume", {"event": entry["event"], "job": job_id, "why": why}))
                log.info("stress_resumed", stress_event=entry["event"], job=job_id, why=why)
        return out

    def _scontrol(self, verb: str, job_id: str) -> bool:
        try:
            self.run(["scontrol", verb, job_id])
            return True
        except Exception as exc:  # soft: the job stays as it is, and the next cycle tries again
            log.warning("stress_scontrol_failed", verb=verb, job=job_id, error=str(exc))
            return False

    # -- what happened -------------------------------------------------------------------------
    def note_moves(self, outcomes: Iterable[Any], event: StressEvent, kw: Mapping[str, float], now: int) -> None:
        """Keep the outcomes of the event's moves (daemon.moves.MoveOutcome) for status."""
        for o in outcomes:
            if o.status == "moved":
                self.state["moved"][o.job_id] = {
                    "event": event.id,
                    "from": o.source,
                    "to": o.target,
                    "kw": round(kw.get(o.job_id, 0.0), 6),
                    "at": now,
                    "why": o.reason,
                }
                self.state["blocked"].pop(o.job_id, None)
            else:
                self.state["blocked"][o.job_id] = {"event": event.id, "status": o.status, "why": o.reason, "at": now}

    def sample(self, jobs: Sequence[SlurmJob], estimate: Estimate, site_of: Callable[[SlurmJob], str | None],
               now: int, battery_kw: Mapping[str, float]) -> None:  # fmt: skip
        """One sample per open event: kW of the site's work running at the other site, kW paused
        at the site, the battery's planned discharge there, and what the site still draws."""
        by_id = {j.update_id: j for j in jobs}
        samples: list[dict[str, Any]] = self.state["samples"]
        for e in self.open_events(now):
            moved_kw = pending_kw = 0.0
            targets: set[str] = set()
            carried = {k: v["moved_to"] for k, v in self.state["paused"].items() if v.get("moved_to")}
            moved = {k: v["to"] for k, v in self.state["moved"].items() if v["event"] == e.id}
            moved.update({k: t for k, t in carried.items() if self.state["paused"][k]["event"] == e.id})
            for job_id, target in moved.items():
                job = by_id.get(job_id)
                if job is None:
                    continue
                targets.add(target)
                if job.state in RUNNING:
                    moved_kw += estimate(job) / 1000.0
                elif job.pending:
                    pending_kw += estimate(job) / 1000.0
            paused_kw = sum(
                p["kw"]
                for k, p in self.state["paused"].items()
                if p["event"] == e.id and p.get("resumed") is None and k in by_id
            )
            site_kw = sum(estimate(j) / 1000.0 for j in jobs if j.state in RUNNING and site_of(j) == e.site)
            samples.append(
                {
                    "t": now,
                    "event": e.id,
                    "from": e.site,
                    "to": ",".join(sorted(targets)) or "-",
                    "moved_kw": round(moved_kw, 6),
                    "moved_pending_kw": round(pending_kw, 6),
                    "paused_kw": round(paused_kw, 6),
                    "battery_kw": round(battery_kw.get(e.site, 0.0), 6),
                    "site_kw": round(site_kw, 6),
                    "ceiling_kw": e.ceiling_kw,
                    "baseline_kw": e.baseline_kw,
                }
            )
        cutoff = now - SAMPLE_RETENTION_S
        self.state["samples"] = [s for s in samples if s["t"] >= cutoff][-MAX_SAMPLES:]


def summary(events: Sequence[StressEvent], state: Mapping[str, Any], now: float) -> dict[str, Any]:
    """For ``slurmflex status``: each event not long over, what moved and was paused, and why."""
    out: list[dict[str, Any]] = []
    for e in events:
        if e.end < now - 86400:
            continue
        phase = "cancelled" if e.cancelled else "open" if e.open_at(now) else "ahead" if e.start > now else "over"
        out.append(
            {
                **asdict(e),
                "start": iso_utc(e.start),
                "end": iso_utc(e.end),
                "phase": phase,
                "ceiling_kw": e.ceiling_kw,
                "moved": {k: v for k, v in state.get("moved", {}).items() if v["event"] == e.id},
                "paused": {k: v for k, v in state.get("paused", {}).items() if v["event"] == e.id},
                "blocked": {k: v for k, v in state.get("blocked", {}).items() if v["event"] == e.id},
            }
        )
    return {"events": out}


def status_lines(doc: Mapping[str, Any]) -> list[str]:
    lines: list[str] = []
    for e in doc.get("events", ()):
        ceiling = "baseline not yet fixed" if e["ceiling_kw"] is None else (
            f"baseline {e['baseline_kw']:.3f} kW, ceiling {e['ceiling_kw']:.3f} kW")  # fmt: skip
        lines.append(
            f"stress event {e['id']} at {e['site']} {e['start'][:16].replace('T', ' ')}-{e['end'][11:16]} UTC "
            f"({e['phase']}): shed {e['kw']:g} kW, {ceiling}; by {e['by']}{': ' + e['reason'] if e['reason'] else ''}"
        )
        for job_id, m in sorted(e["moved"].items()):
            lines.append(f"    job {job_id} moved {m['from']} -> {m['to']}: {m['why']}")
        for job_id, p in sorted(e["paused"].items()):
            state = (
                f"resumed at {iso_utc(p['resumed'])[11:19]} UTC ({p.get('resumed_why', 'carried on')})"
                if p.get("resumed") is not None
                else "paused"
            )
            lines.append(f"    job {job_id} {p['why']}; {state}")
        for job_id, b in sorted(e["blocked"].items()):
            lines.append(f"    job {job_id} not moved ({b['status']}): {b['why']}")
    return lines


def half_hours(samples: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The samples as the time mean per half-hour and event: kW moved across sites (running at
    the other site), kW paused, battery discharge, the site's remaining draw and its ceiling."""
    groups: dict[tuple[int, str], list[Mapping[str, Any]]] = {}
    for s in samples:
        groups.setdefault((floor_slot(int(s["t"])), str(s["event"])), []).append(s)
    rows = []
    for (slot, event), group in sorted(groups.items()):

        def mean(key: str, g: list[Mapping[str, Any]] = group) -> float:
            return round(sum(float(s[key]) for s in g) / len(g), 3)

        last = group[-1]
        rows.append(
            {
                "period_start": iso_utc(slot),
                "event": event,
                "from": last["from"],
                "to": last["to"],
                "kw_moved_across_sites": mean("moved_kw"),
                "kw_moved_pending": mean("moved_pending_kw"),
                "kw_paused": mean("paused_kw"),
                "kw_battery": mean("battery_kw"),
                "kw_site": mean("site_kw"),
                "kw_ceiling": last["ceiling_kw"],
                "samples": len(group),
            }
        )
    return rows


__all__ = [
    "EVENTS_SETTING",
    "STATE_SETTING",
    "Ceilings",
    "Pause",
    "StressError",
    "StressEvent",
    "StressShed",
    "add_event",
    "cancel_event",
    "half_hours",
    "load_events",
    "parse_when",
    "status_lines",
    "summary",
]
