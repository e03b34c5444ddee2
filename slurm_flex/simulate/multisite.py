"""The simulator on several sites: one workload spread over sites that each have their own
carbon series and capacity, and what moving work in space, in time, or both saves.

Every job has a home site (see :func:`split_trace`). The common reference is **Slurm alone at
home**: each site runs its own jobs with the engine's baseline (every job eligible at
submission, backfilling), which fixes each job's Slurm-alone start ``b`` and, as in
bench/simulate_traces.py, its deadline (the slack rule counted from ``b``: a deadline the
machine meets without slurm-flex). A job is *flexible* when that deadline leaves it room to move
(the engine's definition); only flexible jobs are portable. Three policies:

* **time**: each site runs its own jobs through :func:`slurm_flex.simulate.simulate`, the
  daemon's own planning policy; no job changes site.
* **space**: every job starts when Slurm alone started it (``b``: the moment it would start at
  home). In order of ``b``, a flexible job goes to the site with the least *forecast* carbon over
  ``[b, b + time limit]`` (ties: home), when that beats home by more than ``move_threshold``
  and the site has room for its processors over its whole time limit, counting every job placed
  there for its time limit (a conservative ledger: the site never runs more than its capacity,
  whatever the run times). Otherwise it stays at home. No job waits longer than Slurm alone made
  it wait, so no deadline can be missed.
* **both**: the time policy first, then only moves that beat it. Every job starts where and
  when the time policy started it unless it moves. *Decision* (no run time known): each site's
  expected load is the time policy's schedule, every job counted for its predicted run time
  (``both_room="predicted"``, the default: planner.runtime, the mean of its user's last run
  times that ended by its submission at its site, capped at its time limit; ``"limit"``: its
  time limit). In order of ``b``, a flexible job is booked at the other site when a start there,
  at a tick in ``[b, latest safe start - both_slack_s]`` where that expected load leaves room
  for its processors over its whole time limit, has less forecast carbon over its predicted run
  than its time-policy start at home by more than ``both_margin`` (a fraction); it then leaves
  home's expected load. *Execution* (:func:`_fit_moves`): the jobs that stay keep their
  time-policy starts, holding their processors for their actual runs; in order of booked start
  a booked job starts at the first tick from its booked start, no later than its latest safe
  start, where the target's processors in use leave room for its whole time limit and its
  forecast carbon there still beats home by the margin, or else it stays home at its
  time-policy start (its home processors are never given away). So, by construction: no job
  that stays is delayed or moved, a moved job starts by its latest safe start (both misses no
  deadline that time meets), and every move lowers the job's forecast carbon over its predicted
  run (with a perfect forecast and prediction, both is never worse than time).
* **both-2stage** (the rule before, a reference): the site first, like the daemon's site
  dimension (planner/sites.py): in order of ``b``, a flexible job goes to the other site with
  the cheapest start that has room (least forecast carbon over its time limit, starting at a
  tick in ``[b, latest safe start]``, where the ledger of the space policy has room for its
  whole time limit), when that beats the best window at home (room there not checked) by more
  than ``move_threshold``. Then each site runs the jobs it holds through the single-site
  simulator, a moved job arriving at ``b``, with the deadlines the engine draws there (from
  Slurm alone at that site); misses are counted against the home deadline.

Every policy is charged per second on the actual series of the site that ran the job. Bounds:
time = the single-site clairvoyant bound per site, summed; space and both =
:func:`slurm_flex.simulate.bound_sites.sites_bound` (each job picks a site and a start within
each site's capacity; start fixed at ``b`` for space, anywhere in ``[b, latest]`` for both).
Signals with a single series (no forecast) are planned with perfect foresight, and the result
says so.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt

from slurm_flex.errors import SimulationError
from slurm_flex.grid.series import SLOT_SECONDS
from slurm_flex.planner.runtime import RuntimeHistory
from slurm_flex.simulate.bound_sites import SitesBound, sites_bound
from slurm_flex.simulate.engine import SimConfig, SimResult, align_start, simulate, slack_deadlines
from slurm_flex.simulate.signals import SimSignals, load_signals
from slurm_flex.simulate.traces import Trace

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
TICK = 300.0
POLICIES = ("time", "space", "both")
# References beside them: space, with room judged by the actual run times (clairvoyant about when
# jobs end, which no daemon is): how much of the space policy's gap is its time-limit ledger; and
# the earlier two-stage rule for both.
REFERENCES = ("space-oracle", "both-2stage")
# A move (both) must beat the job's time-policy plan at home by this fraction of its forecast carbon.
BOTH_MARGIN = 0.1
# ... booked to start there at least this long before its latest safe start (time to find room).
BOTH_SLACK_S = 0.0


@dataclass(frozen=True)
class SiteSpec:
    """A site as given on the command line: ``NAME=CARBON_CSV[:SCALE]``."""

    name: str
    carbon_path: Path
    scale: float = 1.0  # capacity: this many times the traced machine


def parse_site(text: str) -> SiteSpec:
    """``NAME=CARBON_CSV[:SCALE]`` (SCALE > 0, the site's processors as a multiple of the traced
    machine's); raises SimulationError on a bad spec or a missing file."""
    name, sep, rest = text.partition("=")
    name = name.strip()
    if not sep or not name or not rest:
        raise SimulationError(f"--site {text!r}: expected NAME=CARBON_CSV[:SCALE]")
    path_text, scale = rest, 1.0
    head, colon, tail = rest.rpartition(":")
    if colon and head and "/" not in tail:
        try:
            scale = float(tail)
        except ValueError as exc:
            raise SimulationError(f"--site {text!r}: scale {tail!r} is not a number") from exc
        path_text = head
    if not math.isfinite(scale) or scale <= 0:
        raise SimulationError(f"--site {text!r}: the scale must be a positive number, got {scale:g}")
    path = Path(path_text)
    if not path.is_file():
        raise SimulationError(f"--site {text!r}: carbon file {path} does not exist")
    return SiteSpec(name, path, scale)


@dataclass(frozen=True)
class Site:
    name: str
    signals: SimSignals
    scale: float = 1.0


def load_sites(specs: Sequence[SiteSpec]) -> list[Site]:
    if len(specs) < 2:
        raise SimulationError(f"several sites need at least two --site, got {len(specs)}")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise SimulationError(f"site names must differ: {', '.join(names)}")
    return [Site(s.name, load_signals(s.carbon_path), s.scale) for s in specs]


def _subset(trace: Trace, keep: npt.NDArray[np.bool_], name: str) -> Trace:
    return dataclasses.replace(
        trace,
        name=name,
        submit_s=trace.submit_s[keep],
        runtime_s=trace.runtime_s[keep],
        requested_s=trace.requested_s[keep],
        procs=trace.procs[keep],
        user=None if trace.user is None else trace.user[keep],
    )


def split_trace(trace: Trace, n_sites: int, how: str = "hash", days: float = 0.0, seed: int = 0) -> list[Trace]:
    """One trace per site.

    ``hash``: each job's home is a seeded hash of its index (about 1/n of the jobs each);
    ``roundrobin``: job i goes to site i mod n; ``windows``: site k gets the k-th consecutive
    window of ``days`` days of the trace, re-based to time 0 (one trace per site, each the
    traced machine's load, all laid over the same dates)."""
    if n_sites < 2:
        raise SimulationError("several sites need at least two")
    if how == "windows":
        if days <= 0:
            raise SimulationError("splitting by windows needs a window length in days")
        out = [trace.window(k * days, days) for k in range(n_sites)]
        for k, t in enumerate(out):
            if t.n_jobs == 0:
                raise SimulationError(f"window {k} of the trace ({k * days:g} to {(k + 1) * days:g} days) has no jobs")
        return [
            dataclasses.replace(t, name=f"{trace.name} days {k * days:g}-{(k + 1) * days:g}") for k, t in enumerate(out)
        ]
    idx = np.arange(trace.n_jobs)
    if how == "roundrobin":
        home = idx % n_sites
    elif how == "hash":
        home = np.array(
            [int.from_bytes(hashlib.sha256(f"{seed}:{i}".encode()).digest()[:8], "big") % n_sites for i in idx],
            dtype=np.int64,
        )
    else:
        raise SimulationError(f"unknown split {how!r} (use hash, roundrobin or windows)")
    return [_subset(trace, home == k, f"{trace.name} share {k + 1}/{n_sites}") for k in range(n_sites)]


@dataclass
class PolicyOutcome:
    name: str
    site: IntArray  # where each job ran
    start_s: FloatArray  # seconds from the common start
    carbon_kg: float
    metrics: dict[str, float] = field(default_factory=dict)
    bound: SitesBound | None = None
    bound_baseline_kg: float = math.nan  # the baseline the bound is relative to

    def bound_percent(self) -> float:
        if self.bound is None or not self.bound_baseline_kg > 0:
            return math.nan
        return (self.bound_baseline_kg - self.bound.minimum) / self.bound_baseline_kg * 100


@dataclass
class SitesResult:
    sites: list[str]
    traces: list[str]
    signals: list[str]
    capacities: list[float]
    slack: str
    start_epoch: int
    days: float
    n_jobs: int
    n_flexible: int
    utilisation: list[float]
    baseline_kg: float
    policies: dict[str, PolicyOutcome]
    move_threshold: float
    site_results: list[SimResult]  # the time policy's single-site results
    both_margin: float = BOTH_MARGIN
    both_slack_s: float = BOTH_SLACK_S
    both_room: str = "predicted"
    baseline_metrics: dict[str, float] = field(default_factory=dict)  # Slurm alone at home

    def rows(self) -> list[dict[str, float | str]]:
        out: list[dict[str, float | str]] = []
        for name in POLICIES + REFERENCES:
            if name not in self.policies:
                continue
            p = self.policies[name]
            saved = (self.baseline_kg - p.carbon_kg) / self.baseline_kg * 100 if self.baseline_kg > 0 else math.nan
            bound = p.bound_percent()
            share = saved / bound * 100 if math.isfinite(bound) and bound > 0 else math.nan
            out.append(
                {
                    "policy": name,
                    "carbon_kg": round(p.carbon_kg, 3),
                    "carbon_saved_percent": round(saved, 3),
                    "bound_percent": round(bound, 3) if math.isfinite(bound) else math.nan,
                    "captured_percent": round(share, 1) if math.isfinite(share) else math.nan,
                    **p.metrics,
                }
            )
        return out

    def to_json(self) -> dict[str, object]:
        return {
            "sites": [
                {"name": n, "trace": t, "signals": s, "capacity_procs": c, "utilisation": round(u, 4)}
                for n, t, s, c, u in zip(
                    self.sites, self.traces, self.signals, self.capacities, self.utilisation, strict=True
                )
            ],
            "slack": self.slack,
            "deadline_from": "baseline",
            "start": datetime.fromtimestamp(self.start_epoch, UTC).strftime("%Y-%m-%dT%H:%MZ"),
            "days": round(self.days, 1),
            "jobs": self.n_jobs,
            "flexible_jobs": self.n_flexible,
            "move_threshold": self.move_threshold,
            "both_margin": self.both_margin,
            "both_slack_hours": self.both_slack_s / 3600,
            "both_room": self.both_room,
            "baseline_carbon_kg": round(self.baseline_kg, 3),
            "baseline": self.baseline_metrics,
            "policies": self.rows(),
        }


def _charge(kw: FloatArray, start_s: FloatArray, runtime_s: FloatArray, series: FloatArray) -> FloatArray:
    """kg per job: kW x the integral of the half-hourly series over [start, start + runtime]."""
    values = np.nan_to_num(series, nan=0.0)
    prefix = np.concatenate(([0.0], np.cumsum(values) * SLOT_SECONDS))

    def integral(x: FloatArray) -> FloatArray:
        k = np.minimum((x // SLOT_SECONDS).astype(np.int64), values.size - 1)
        return np.asarray(prefix[k] + (x - k * SLOT_SECONDS) * values[k], dtype=np.float64)

    return np.asarray(kw * (integral(start_s + runtime_s) - integral(start_s)) / 3600 / 1000, dtype=np.float64)


class _Ledger:
    """Processors booked per site and tick (each job for its time limit, or its run time)."""

    def __init__(self, capacities: Sequence[float], n_ticks: int) -> None:
        self.cap = np.asarray(capacities, dtype=np.float64)
        self.use = np.zeros((len(capacities), n_ticks))

    def book(self, site: int, tick: int, ticks: int, procs: float) -> None:
        self.use[site, tick : tick + ticks] += procs


def _predicted(
    home: IntArray, submit: FloatArray, runtime: FloatArray, requested: FloatArray, users: IntArray, start: FloatArray
) -> FloatArray:
    """Each job's predicted run time (seconds), as its site's daemon would plan it when it is
    submitted (planner.runtime.RuntimeHistory, fed with the run times of its site's jobs that
    ended by then under ``start``); its time limit without history or a known user."""
    out = requested.copy()
    for s in np.unique(home):
        idx = np.flatnonzero(home == s)
        by_end = idx[np.argsort(start[idx] + runtime[idx], kind="stable")]
        ends = start[by_end] + runtime[by_end]
        history = RuntimeHistory()
        fed = 0
        for j in idx[np.argsort(submit[idx], kind="stable")]:
            while fed < by_end.size and ends[fed] <= submit[j]:
                k = int(by_end[fed])
                history.add(int(users[k]), float(runtime[k]))
                fed += 1
            if users[j] >= 0:
                guess = history.predict(int(users[j]), float(requested[j]))
                if guess is not None:
                    out[j] = max(min(float(requested[j]), guess), 1.0)
    return out


def _beat_time(
    home: IntArray,
    flexible: npt.NDArray[np.bool_],
    order: IntArray,
    b_start: FloatArray,
    latest: FloatArray,
    time_start: FloatArray,
    pred: FloatArray,
    requested: FloatArray,
    procs: FloatArray,
    kw: FloatArray,
    forecast: Sequence[FloatArray],
    capacities: Sequence[float],
    n_ticks: int,
    margin: float,
    slack_s: float,
    room: str,
) -> tuple[IntArray, FloatArray]:
    """The both policy's moves (module docstring): per job, its site and start (its time-policy
    start where it stays). ``room``: each site's own jobs counted for their time limits
    ("limit") or predicted run times ("predicted")."""
    n_sites = len(capacities)
    ledger = _Ledger(capacities, n_ticks)
    t_tick = np.round(time_start / TICK).astype(np.int64)
    pred_ticks = np.maximum(1, np.ceil(pred / TICK)).astype(np.int64)
    req_ticks = np.maximum(1, np.ceil(requested / TICK)).astype(np.int64)
    own_ticks = req_ticks if room == "limit" else pred_ticks
    for j in range(home.size):
        ledger.book(int(home[j]), int(t_tick[j]), int(own_ticks[j]), float(procs[j]))
    site_of = home.copy()
    booked = time_start.copy()
    for j in order:
        if not flexible[j]:
            continue
        h, pj, hold = int(home[j]), float(procs[j]), int(req_ticks[j])
        first = math.ceil(b_start[j] / TICK)
        last = int((latest[j] - slack_s) // TICK)
        if last < first:
            continue
        cands = TICK * np.arange(first, last + 1, dtype=np.float64)
        at_home = float(_charge(np.array([kw[j]]), time_start[j : j + 1], pred[j : j + 1], forecast[h])[0])
        best: tuple[float, int, float] | None = None
        for s in range(n_sites):
            if s == h or pj > capacities[s] + 1e-9:
                continue
            span = ledger.use[s, first : first + cands.size - 1 + hold]
            if span.size < cands.size - 1 + hold:
                span = np.pad(span, (0, cands.size - 1 + hold - span.size), constant_values=np.inf)
            peak = np.lib.stride_tricks.sliding_window_view(span, hold).max(axis=1)[: cands.size]
            fits = peak + pj <= capacities[s] + 1e-9
            if not fits.any():
                continue
            per_start = _charge(np.full(cands.size, kw[j]), cands, np.full(cands.size, pred[j]), forecast[s])
            i = int(np.argmin(np.where(fits, per_start, np.inf)))
            if best is None or per_start[i] < best[0]:
                best = (float(per_start[i]), s, float(cands[i]))
        if best is not None and best[0] < at_home * (1 - margin) - 1e-12:
            _, s, t0 = best
            ledger.use[h, t_tick[j] : t_tick[j] + own_ticks[j]] -= pj
            ledger.book(s, round(t0 / TICK), hold, pj)
            site_of[j], booked[j] = s, t0
    return site_of, booked


def _fit_moves(
    home: IntArray,
    site_of: IntArray,
    booked: FloatArray,
    latest: FloatArray,
    time_start: FloatArray,
    pred: FloatArray,
    runtime: FloatArray,
    requested: FloatArray,
    procs: FloatArray,
    kw: FloatArray,
    forecast: Sequence[FloatArray],
    capacities: Sequence[float],
    n_ticks: int,
    margin: float,
) -> tuple[IntArray, FloatArray]:
    """Carry out the both policy's moves on the time policy's schedule: every job that stays
    keeps its time-policy start (its site's processors in use by it as it actually ran); in
    order of booked start, a moved job starts at the first tick from its booked start, and no
    later than its latest safe start, where the target's processors in use leave room for it
    over its whole time limit, if its forecast carbon there still beats its time-policy start at
    home by ``margin``; otherwise it stays home at its time-policy start (the processors it held
    there are never given to another job). Returns each job's site and start."""
    n_sites = len(capacities)
    use = np.zeros((n_sites, n_ticks + int(np.ceil(requested.max() / TICK)) + 2))
    t_tick = np.round(time_start / TICK).astype(np.int64)
    run_ticks = np.maximum(1, np.ceil(runtime / TICK)).astype(np.int64)
    req_ticks = np.maximum(1, np.ceil(requested / TICK)).astype(np.int64)
    for j in range(home.size):  # moved jobs' home processors stay held: a failed move goes back there
        use[int(home[j]), t_tick[j] : t_tick[j] + run_ticks[j]] += procs[j]
    out_site, out_start = home.copy(), time_start.copy()
    moved = np.flatnonzero(site_of != home)
    for j in moved[np.argsort(booked[moved], kind="stable")]:
        s, h, hold = int(site_of[j]), int(home[j]), int(req_ticks[j])
        first, last = math.ceil(booked[j] / TICK), int(latest[j] // TICK)
        if last < first:
            continue
        at_home = float(_charge(np.array([kw[j]]), time_start[j : j + 1], pred[j : j + 1], forecast[h])[0])
        span = use[s, first : last + hold]
        peak = np.lib.stride_tricks.sliding_window_view(span, hold).max(axis=1)[: last - first + 1]
        for k in np.flatnonzero(peak + procs[j] <= capacities[s] + 1e-9):
            t0 = float((first + k) * TICK)
            there = float(_charge(np.array([kw[j]]), np.array([t0]), pred[j : j + 1], forecast[s])[0])
            if there >= at_home * (1 - margin) - 1e-12:
                break  # later starts are not searched: the move is given up
            use[s, first + k : first + k + run_ticks[j]] += procs[j]
            use[h, t_tick[j] : t_tick[j] + run_ticks[j]] -= procs[j]
            out_site[j], out_start[j] = s, t0
            break
    return out_site, out_start


def simulate_sites(
    traces: Sequence[Trace],
    sites: Sequence[Site],
    slack_rule: str,
    cfg: SimConfig | None = None,
    start: datetime | None = None,
    move_threshold: float = 0.0,
    policies: Sequence[str] = POLICIES,
    bound: bool = True,
    progress: Callable[[str], None] | None = None,
    both_margin: float = BOTH_MARGIN,
    both_slack_s: float = BOTH_SLACK_S,
    both_room: str = "predicted",
) -> SitesResult:
    """Run the three policies (module docstring) on ``traces[k]`` homed at ``sites[k]``."""
    n_sites = len(sites)
    if n_sites < 2:
        raise SimulationError(f"several sites need at least two, got {n_sites}")
    if len(traces) != n_sites:
        raise SimulationError(f"{len(traces)} traces for {n_sites} sites")
    if not 0 <= move_threshold < 1:
        raise SimulationError(f"move threshold {move_threshold!r}: use a fraction in [0, 1)")
    if not 0 <= both_margin < 1:
        raise SimulationError(f"both margin {both_margin!r}: use a fraction in [0, 1)")
    if both_room not in ("limit", "predicted"):
        raise SimulationError(f"both room {both_room!r}: use limit or predicted")
    unknown = set(policies) - set(POLICIES + REFERENCES)
    if unknown:
        raise SimulationError(f"unknown policies {sorted(unknown)} (use {', '.join(POLICIES)})")
    say = progress or (lambda _msg: None)
    cfg = dataclasses.replace(cfg or SimConfig(), deadline_basis="baseline", bound=bound)
    traces = [
        dataclasses.replace(t, capacity_procs=t.capacity_procs * site.scale)
        for t, site in zip(traces, sites, strict=True)
    ]
    for t, site in zip(traces, sites, strict=True):
        if t.n_jobs == 0:
            raise SimulationError(f"site {site.name}: no jobs")
        if (t.procs > t.capacity_procs).any():
            raise SimulationError(
                f"site {site.name}: {int((t.procs > t.capacity_procs).sum())} jobs need more than its "
                f"{t.capacity_procs:g} processors (raise its :SCALE)"
            )
    start_epoch = align_start(traces[0], sites[0].signals, start)
    start_dt = datetime.fromtimestamp(start_epoch, UTC)
    for site in sites:
        if site.signals.start > start_epoch:
            raise SimulationError(f"site {site.name}: its carbon data starts after the simulation does")

    # -- time only (and Slurm alone at home, the common baseline) --------------------------------
    results: list[SimResult] = []
    for t, site in zip(traces, sites, strict=True):
        say(f"time policy at {site.name}")
        results.append(simulate(t, site.signals, slack_rule, cfg, start_dt))
    home = np.concatenate([np.full(t.n_jobs, k, dtype=np.int64) for k, t in enumerate(traces)])
    submit = np.concatenate([t.submit_s for t in traces])
    runtime = np.concatenate([t.runtime_s for t in traces])
    requested = np.maximum(np.concatenate([t.requested_s for t in traces]), runtime)
    procs = np.concatenate([t.procs for t in traces])
    users = np.concatenate(
        [t.user if t.user is not None else np.full(t.n_jobs, -1, dtype=np.int64) for t in traces]
    ).astype(np.int64)
    kw = procs * cfg.watts_per_proc / 1000.0
    b_start = np.concatenate([r.baseline.start_s for r in results])
    flex_time = np.concatenate([r.flex.start_s for r in results])
    flexible = np.concatenate([r.flex.flexible for r in results])
    latest = np.concatenate([np.asarray(r.latest_start_s, dtype=np.float64) for r in results])
    latest = np.where(np.isfinite(latest), np.maximum(latest, b_start), b_start)
    deadline = (
        np.maximum(
            slack_deadlines(slack_rule, b_start + start_epoch, requested),
            slack_deadlines(slack_rule, submit + start_epoch, requested),
        )
        - start_epoch
    )
    n = home.size
    capacities = [t.capacity_procs for t in traces]
    # The actual and forecast series from the common start, long enough for every job.
    horizon_s = float(max((latest + requested).max(), (flex_time + runtime).max(), (b_start + runtime).max()))
    n_slots = math.ceil(horizon_s / SLOT_SECONDS) + 2
    actual: list[FloatArray] = []
    forecast: list[FloatArray] = []
    for site in sites:
        offset = (start_epoch - site.signals.start) // SLOT_SECONDS
        if site.signals.n_slots - offset < n_slots:
            raise SimulationError(
                f"site {site.name}: its carbon data covers {(site.signals.n_slots - offset) / 48:.0f} days from the "
                f"start, the run needs {n_slots / 48:.0f}"
            )
        actual.append(site.signals.actual[offset : offset + n_slots])
        forecast.append(site.signals.forecast[offset : offset + n_slots])

    def charge(site_of: IntArray, start_s: FloatArray) -> float:
        total = 0.0
        for s in range(n_sites):
            m = site_of == s
            total += float(_charge(kw[m], start_s[m], runtime[m], actual[s]).sum())
        return total

    base_missed = b_start + runtime > deadline + 1e-6

    def metrics(site_of: IntArray, start_s: FloatArray) -> dict[str, float]:
        missed = start_s + runtime > deadline + 1e-6
        return {
            "new_deadline_misses": int((missed & ~base_missed).sum()),
            "deadline_misses": int(missed.sum()),
            "mean_delay_h": round(float((start_s - submit).mean()) / 3600, 3),
            "jobs_moved": int((site_of != home).sum()),
            "early_starts": int((start_s < b_start - 1e-6).sum()),  # before Slurm alone at home
        }

    baseline_kg = charge(home, b_start)
    policies_out: dict[str, PolicyOutcome] = {}
    base_metrics = metrics(home, b_start)
    if "time" in policies:
        outcome = PolicyOutcome("time", home.copy(), flex_time, charge(home, flex_time), metrics(home, flex_time))
        if bound and all(r.bound is not None for r in results):
            outcome.bound = SitesBound(
                minimum=sum(r.bound.carbon.minimum for r in results if r.bound is not None),
                minimum_no_capacity=sum(r.bound.carbon.minimum_no_capacity for r in results if r.bound is not None),
                n_jobs=n,
                n_windows=sum(r.bound.n_windows for r in results if r.bound is not None),
                n_lp_variables=sum(r.bound.n_lp_variables for r in results if r.bound is not None),
                infeasible_windows=sum(r.bound.infeasible_windows for r in results if r.bound is not None),
                unsolved_windows=sum(r.bound.unsolved_windows for r in results if r.bound is not None),
                solve_seconds=sum(r.bound.solve_seconds for r in results if r.bound is not None),
            )
            outcome.bound_baseline_kg = sum(r.bound.carbon.baseline for r in results if r.bound is not None)
        policies_out["time"] = outcome

    # -- the site choice: in order of the Slurm-alone start, on forecasts ---------------------------
    n_ticks = math.ceil(horizon_s / TICK) + 2
    req_ticks = np.maximum(1, np.ceil(requested / TICK)).astype(np.int64)
    b_tick = np.round(b_start / TICK).astype(np.int64)
    order = np.argsort(b_start, kind="stable")

    run_ticks = np.maximum(1, np.ceil(runtime / TICK)).astype(np.int64)

    def choose(windowed: bool, oracle: bool = False) -> tuple[IntArray, FloatArray]:
        """Per job: the site (and the start its choice was booked at). Each job is booked for its
        time limit, or with ``oracle`` for its actual run time."""
        ledger = _Ledger(capacities, n_ticks)
        hold = run_ticks if oracle else req_ticks
        for j in range(n):
            ledger.book(int(home[j]), int(b_tick[j]), int(hold[j]), float(procs[j]))
        site_of = home.copy()
        booked = b_start.copy()
        for j in order:
            if not flexible[j]:
                continue
            h = int(home[j])
            if windowed:
                cands = b_start[j] + TICK * np.arange(int((latest[j] - b_start[j]) // TICK) + 1)
            else:
                cands = np.array([b_start[j]])
            hj, pj, b0 = int(hold[j]), float(procs[j]), int(b_tick[j])

            kw_j, req_j = np.full(cands.size, kw[j]), np.full(cands.size, requested[j])
            home_best = float(_charge(kw_j, cands, req_j, forecast[h]).min())
            options: list[tuple[float, int, float]] = []  # (forecast kg, site, start) with room there
            for s in range(n_sites):
                if s == h or pj > capacities[s] + 1e-9:
                    continue
                per_start = _charge(kw_j, cands, req_j, forecast[s])
                span = ledger.use[s, b0 : b0 + cands.size - 1 + hj]
                if span.size < cands.size - 1 + hj:
                    span = np.pad(span, (0, cands.size - 1 + hj - span.size), constant_values=np.inf)
                peak = np.lib.stride_tricks.sliding_window_view(span, hj).max(axis=1)[: cands.size]
                room = peak + pj <= capacities[s] + 1e-9
                if room.any():
                    i = int(np.argmin(np.where(room, per_start, np.inf)))
                    options.append((float(per_start[i]), s, float(cands[i])))
            if not options:
                continue
            site_kg, s, t0 = min(options)
            if site_kg < home_best * (1 - move_threshold) - 1e-12:
                ledger.use[h, b0 : b0 + hj] -= pj
                ledger.book(s, round(t0 / TICK), hj, pj)
                site_of[j], booked[j] = s, t0
        return site_of, booked

    carbon_actual = [np.asarray(a, dtype=np.float64) for a in actual]
    if "space" in policies:
        say("space policy")
        site_of, _ = choose(windowed=False)
        outcome = PolicyOutcome("space", site_of, b_start.copy(), charge(site_of, b_start), metrics(site_of, b_start))
        if bound:
            say("space bound")
            outcome.bound = sites_bound(
                b_start, b_start, runtime, procs, kw, home, flexible, carbon_actual, capacities, tick_seconds=TICK
            )
            outcome.bound_baseline_kg = baseline_kg
        policies_out["space"] = outcome
    if "space-oracle" in policies:
        site_of, _ = choose(windowed=False, oracle=True)
        outcome = PolicyOutcome(
            "space-oracle", site_of, b_start.copy(), charge(site_of, b_start), metrics(site_of, b_start)
        )
        if "space" in policies_out:
            outcome.bound = policies_out["space"].bound
            outcome.bound_baseline_kg = policies_out["space"].bound_baseline_kg
        policies_out["space-oracle"] = outcome

    def rerun(site_of: IntArray, arrive_at: FloatArray, label: str) -> FloatArray:
        """The two-stage rule's second stage, as it was: each site runs the jobs it now holds
        through the single-site simulator (a moved job arriving at ``arrive_at``), without its
        users (planned by time limits) and with the deadlines the engine draws there."""
        starts = np.zeros(n)
        for s, site in enumerate(sites):
            idx = np.flatnonzero(site_of == s)
            if not idx.size:  # every job moved away
                continue
            moved_in = home[idx] != s
            arrive = submit[idx].copy()
            arrive[moved_in] = arrive_at[idx[moved_in]]
            sub = Trace(
                name=f"{traces[s].name} + moved in",
                submit_s=arrive,
                runtime_s=runtime[idx],
                requested_s=requested[idx],
                procs=procs[idx],
                capacity_procs=capacities[s],
                start_unix=None,
                timezone=None,
                user=None,
            )
            say(f"{label}: time policy at {site.name}")
            r = simulate(sub, site.signals, slack_rule, dataclasses.replace(cfg, bound=False), start_dt)
            starts[idx] = r.flex.start_s
        return starts

    def both_bound() -> tuple[SitesBound | None, float]:
        if not bound:
            return None, math.nan
        if "both" in policies_out and policies_out["both"].bound is not None:
            return policies_out["both"].bound, baseline_kg
        say("both bound")
        return sites_bound(
            b_start, latest, runtime, procs, kw, home, flexible, carbon_actual, capacities, tick_seconds=TICK
        ), baseline_kg

    if "both" in policies:
        say("both: moves that beat the time policy")
        pred = _predicted(home, submit, runtime, requested, users, flex_time)
        site_of, booked = _beat_time(
            home,
            flexible,
            order,
            b_start,
            latest,
            flex_time,
            pred,
            requested,
            procs,
            kw,
            forecast,
            capacities,
            n_ticks,
            both_margin,
            both_slack_s,
            both_room,
        )
        decided = int((site_of != home).sum())
        site_of, starts = _fit_moves(
            home,
            site_of,
            booked,
            latest,
            flex_time,
            pred,
            runtime,
            requested,
            procs,
            kw,
            forecast,
            capacities,
            n_ticks,
            both_margin,
        )
        outcome = PolicyOutcome("both", site_of, starts, charge(site_of, starts), metrics(site_of, starts))
        outcome.metrics["moves_given_up"] = decided - int((site_of != home).sum())
        outcome.bound, outcome.bound_baseline_kg = both_bound()
        policies_out["both"] = outcome
    if "both-2stage" in policies:
        say("both-2stage: site choice")
        site_of, _ = choose(windowed=True)
        starts = rerun(site_of, b_start, "both-2stage")
        outcome = PolicyOutcome("both-2stage", site_of, starts, charge(site_of, starts), metrics(site_of, starts))
        outcome.bound, outcome.bound_baseline_kg = both_bound()
        policies_out["both-2stage"] = outcome
    foresight = [s.signals.source + (" (perfect foresight)" if s.signals.perfect_foresight else "") for s in sites]
    return SitesResult(
        sites=[s.name for s in sites],
        traces=[t.name for t in traces],
        signals=foresight,
        capacities=capacities,
        slack=slack_rule,
        start_epoch=start_epoch,
        days=float(submit.max()) / 86400,
        n_jobs=n,
        n_flexible=int(flexible.sum()),
        utilisation=[r.utilisation for r in results],
        baseline_kg=baseline_kg,
        policies=policies_out,
        move_threshold=move_threshold,
        site_results=results,
        baseline_metrics=base_metrics,
        both_margin=both_margin,
        both_slack_s=both_slack_s,
        both_room=both_room,
    )


def format_table(result: SitesResult) -> list[str]:
    """The per-policy table: carbon saved, bound, share captured, new misses, delay, moves."""
    head = (
        f"{'policy':12s} {'carbon kg':>11s} {'saved%':>7s} {'bound%':>7s} {'share':>6s} "
        f"{'new miss':>8s} {'delay h':>8s} {'moved':>6s}"
    )
    lines = [head]
    for row in result.rows():
        share = row["captured_percent"]
        share_text = f"{share:5.0f}%" if isinstance(share, float) and math.isfinite(share) else f"{'-':>6s}"
        bound = row["bound_percent"]
        bound_text = f"{bound:7.2f}" if isinstance(bound, float) and math.isfinite(bound) else f"{'-':>7s}"
        lines.append(
            f"{row['policy']!s:12s} {float(row['carbon_kg']):11.1f} {float(row['carbon_saved_percent']):7.2f} "
            f"{bound_text} {share_text} {int(row['new_deadline_misses']):8d} {float(row['mean_delay_h']):8.2f} "
            f"{int(row['jobs_moved']):6d}"
        )
    return lines
