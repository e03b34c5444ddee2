"""The ``slurmflex`` command line."""

from __future__ import annotations

import dataclasses
import getpass
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, date, datetime
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
import numpy as np
from rich.console import Console
from rich.table import Table

from slurm_flex import __version__
from slurm_flex.config import Config, load_config
from slurm_flex.errors import ConfigError, SlurmFlexError
from slurm_flex.logsetup import configure_logging
from slurm_flex.planner.policy import Policy, with_objective
from slurm_flex.state import SHAPING_SETTING, SIGNALS_SETTING

if TYPE_CHECKING:
    from slurm_flex.ledger.certificate import Actuals
    from slurm_flex.settlement.compute import Usage

F = TypeVar("F", bound=Callable[..., Any])


def _fail_cleanly(fn: F) -> F:
    """Turn slurm-flex errors into one clear line on stderr and exit status 1."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SlurmFlexError as exc:
            click.echo(f"slurmflex: error: {exc}", err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


class _Ctx:
    def __init__(self, config_path: Path | None, state_dir: Path | None, log_level: str | None) -> None:
        self.config_path = config_path
        self.state_dir = state_dir
        self.log_level = log_level

    def config(self, **daemon_overrides: Any) -> Config:
        daemon: dict[str, Any] = {k: v for k, v in daemon_overrides.items() if v is not None}
        if self.state_dir is not None:
            daemon["state_dir"] = self.state_dir
        if self.log_level is not None:
            daemon["log_level"] = self.log_level
        cfg = load_config(self.config_path, overrides={"daemon": daemon} if daemon else None)
        configure_logging(cfg.daemon.log_level, cfg.daemon.log_format)
        return cfg


@click.group()
@click.version_option(__version__, prog_name="slurmflex")
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Config file (default: $SLURMFLEX_CONFIG or /etc/slurm-flex/slurmflex.toml).",
)
@click.option("--state-dir", type=click.Path(path_type=Path), default=None, help="Override daemon.state_dir.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default=None)
@click.pass_context
def main(ctx: click.Context, config_path: Path | None, state_dir: Path | None, log_level: str | None) -> None:
    """slurm-flex: run flexible Slurm jobs when the grid is cleaner, always before their deadline."""
    ctx.obj = _Ctx(config_path, state_dir, log_level)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--all", "include_finished", is_flag=True, help="Also list jobs that started or left the queue.")
@click.pass_obj
@_fail_cleanly
def status(obj: _Ctx, as_json: bool, include_finished: bool) -> None:
    """What is deferred, to when, why, and what it saved."""
    from slurm_flex.state import StateStore
    from slurm_flex.status import build_status, render_status

    cfg = obj.config()
    if not cfg.state_db.exists():
        raise SlurmFlexError(f"no state at {cfg.state_db}: has the daemon run with this state_dir?")
    with StateStore(cfg.state_db) as store:
        runtime_mode = store.setting("mode")
        doc = build_status(
            store.jobs(),
            store.last_cycles(1),
            runtime_mode or cfg.daemon.mode,
            include_finished=include_finished,
            mode_set_at_runtime=runtime_mode is not None,
            controls=store.controls(),
            signals=_stored_signals(store.setting(SIGNALS_SETTING)),
            shaping=_stored_signals(store.setting(SHAPING_SETTING)),
        )
        moves = store.setting("federation.moves")  # daemon.moves.MOVES_SETTING
        battery = store.setting("battery")  # daemon.battery.BATTERY_SETTING
        from slurm_flex.daemon.stress import STATE_SETTING, load_events, summary

        stress = summary(load_events(store), json.loads(store.setting(STATE_SETTING) or "{}"), time.time())
    doc["power"] = _measured_power(cfg)
    # Portable jobs of a federation: where each was moved, and why (or why it stays).
    doc["moves"] = json.loads(moves) if moves else {}
    # The on-site battery ([battery]): its state, this slot's command and its plan, in one line.
    doc["battery"] = _stored_signals(battery) if cfg.battery.enabled else {}
    # Stress events at a site (daemon.stress): what moved, what was paused, and why.
    doc["stress"] = stress
    if as_json:
        click.echo(json.dumps(doc, indent=2))
    else:
        console = Console(width=max(Console().width, 160))
        render_status(doc, console)
        for job_id, entry in sorted(doc["moves"].items()):
            console.print(f"  job {job_id} (sites {', '.join(entry.get('allowed', []))}): {entry.get('last', '')}")
        if doc["battery"]:
            from slurm_flex.daemon.battery import battery_line

            console.print(f"  {battery_line(doc['battery'])}", soft_wrap=True)
        from slurm_flex.daemon.stress import status_lines

        for line in status_lines(doc["stress"]):
            console.print(f"  {line}", soft_wrap=True)


def _measured_power(cfg: Config) -> dict[str, Any] | None:
    """Fresh measured power for status (None: nothing measured)."""
    from slurm_flex.power.report import build_power_doc
    from slurm_flex.power.store import POWER_DB, PowerStore

    path = cfg.daemon.state_dir / POWER_DB
    if not cfg.measure.enabled or not path.exists():
        return None
    now = time.time()
    with PowerStore(path) as store:
        doc = build_power_doc(store.latest_samples(now - cfg.measure.max_age_seconds), [], {}, now, 1e9)
    return {"cluster_watts": doc["cluster_watts"], "nodes_measured": len(doc["nodes"]), "site": doc["site"]}


@main.command()
@click.option("--once", is_flag=True, help="Run a single cycle and exit.")
@click.option("--cycles", type=click.IntRange(min=1), default=None, help="Run this many cycles and exit.")
@click.option("--interval", type=click.IntRange(min=1), default=None, help="Seconds between cycles.")
@click.option("--mode", type=click.Choice(["shadow", "advise", "enforce"]), default=None)
@click.pass_obj
@_fail_cleanly
def daemon(obj: _Ctx, once: bool, cycles: int | None, interval: int | None, mode: str | None) -> None:
    """Plan and apply deferrals every interval (the slurmflexd service runs this)."""
    from slurm_flex.daemon.service import Daemon

    overrides: dict[str, Any] = {"mode": mode}

    def load() -> Config:
        loaded = obj.config(**overrides)
        if interval is None:
            return loaded
        # The CLI may go below the config's floor (demos, tests); the file may not.
        return loaded.model_copy(update={"daemon": loaded.daemon.model_copy(update={"interval_seconds": interval})})

    cfg = load()
    metrics = None
    if cfg.daemon.metrics_listen:
        from slurm_flex.metrics import Metrics

        metrics = Metrics()
        try:
            metrics.serve(cfg.daemon.metrics_listen)
        except OSError as exc:
            raise SlurmFlexError(f"daemon.metrics_listen {cfg.daemon.metrics_listen}: {exc.strerror or exc}") from exc
    d = Daemon(cfg, reload=load, metrics=metrics)
    stats = d.run(max_cycles=1 if once else cycles)
    if once and d.stats.failed_cycles:
        sys.exit(2)
    if stats.failed_cycles and cycles is not None and stats.failed_cycles == stats.cycles:
        sys.exit(2)


@main.command()
@click.option(
    "--instance", "instance_path", type=click.Path(path_type=Path, exists=True, dir_okay=False), required=True
)
@click.option("--json", "as_json", is_flag=True)
@click.option(
    "--method",
    type=click.Choice(["auto", "exact", "milp", "lp-rounding", "lagrange", "greedy", "best-window"]),
    default="auto",
    show_default=True,
    help="auto: exact if no capacity binds, MILP when small, LP rounding when medium, else Lagrangian pricing.",
)
@click.option("--time-limit", type=click.FloatRange(min=0.1), default=20.0, show_default=True, help="Seconds.")
@_fail_cleanly
def plan(instance_path: Path, as_json: bool, method: str, time_limit: float) -> None:
    """Solve a planning instance file (see docs in slurm_flex/planner/instance.py)."""
    from slurm_flex.planner.instance import load_instance
    from slurm_flex.planner.solve import solve

    inst = load_instance(instance_path.read_text(encoding="utf-8"))
    sol = solve(inst, method=method, time_limit=time_limit)  # type: ignore[arg-type]
    doc = sol.to_json()
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    click.echo(
        f"{inst.n_jobs} jobs over {inst.n_slots} slots of {inst.slot_minutes} min "
        f"({sol.method}, {sol.solve_seconds:.3f}s)"
    )
    click.echo(
        f"energy {sol.energy_kwh:.1f} kWh, carbon {sol.carbon_kg:.2f} kg, cost {sol.cost_gbp:.2f} GBP, "
        f"objective {sol.objective_gbp:.2f} GBP (lower bound {doc['lower_bound_gbp']})"
    )
    if sol.late:
        click.echo(f"late (deadline cannot be met within capacity): {', '.join(sol.late)}")
    for job_id, slot in sorted(sol.starts.items(), key=lambda kv: (kv[1], kv[0])):
        click.echo(f"  {job_id}: slot {slot}")


@main.command()
@click.option(
    "--trace",
    "trace_path",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="Workload: SWF (.swf or .swf.gz, Parallel Workloads Archive) or a sacct-style CSV.",
)
@click.option(
    "--carbon",
    "carbon_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Half-hourly carbon intensity CSV (NESO forecast+actual, or one intensity column); one site (or use --site).",
)
@click.option(
    "--site",
    "site_texts",
    multiple=True,
    metavar="NAME=CARBON_CSV[:SCALE]",
    help="Several sites (repeat, at least two): each its own carbon series and SCALE times the traced "
    "machine's processors (default 1); the trace is split across them (--split) and moving work in "
    "space, in time and both is compared, with the clairvoyant bound of each.",
)
@click.option(
    "--split",
    type=click.Choice(["hash", "roundrobin", "windows"]),
    default="hash",
    show_default=True,
    help="With --site: each job's home site by a seeded hash of its index, round-robin, or one "
    "consecutive window of --days per site (each site the traced machine's load, laid over the same dates).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="With --split hash.")
@click.option(
    "--move-threshold",
    type=click.FloatRange(min=0, max=1, max_open=True),
    default=0.0,
    show_default=True,
    help="With --site: move a job only when the other site's forecast carbon is lower by this fraction.",
)
@click.option(
    "--price",
    "price_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Half-hourly price CSV (Elexon market index), optional.",
)
@click.option(
    "--slack",
    "slack_rules",
    multiple=True,
    default=("workday",),
    show_default=True,
    help="Deadline rule, repeatable: none, <k>x (k times the time limit), <h>h, workday.",
)
@click.option(
    "--start",
    "start_text",
    default=None,
    help="UTC time the trace starts at (default: the data's first time with the trace's own weekday and time of day).",
)
@click.option("--first-day", type=click.FloatRange(min=0), default=0.0, help="Skip this many days of the trace.")
@click.option("--days", type=click.FloatRange(min=0.5), default=None, help="Simulate only this many days.")
@click.option("--watts-per-proc", type=click.FloatRange(min=0), default=10.0, show_default=True)
@click.option(
    "--config",
    "policy_config",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Plan by this file's [policy] table (default: the daemon's configuration, as slurmflex --config).",
)
@click.option(
    "--objective",
    type=click.Choice(["policy", "carbon", "cost", "combined"]),
    default="policy",
    show_default=True,
    help="What the planner minimises: as [policy] says, carbon only, price only, or price plus priced carbon.",
)
@click.option(
    "--solver",
    type=click.Choice(["fast", "auto"]),
    default="fast",
    show_default=True,
    help="Planner method per half-hour (auto also certifies each plan; much slower on long traces).",
)
@click.option(
    "--horizon-hours", type=click.FloatRange(min=1), default=None, help="Override [policy] max_horizon_hours."
)
@click.option(
    "--carbon-price",
    type=click.FloatRange(min=0),
    default=None,
    help="GBP per tonne CO2 in the planner's objective (override [policy] carbon_price_gbp_per_tonne).",
)
@click.option(
    "--bound/--no-bound",
    default=True,
    show_default=True,
    help="Also compute the clairvoyant bound (LP relaxation, HiGHS) and the share of it captured.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("simulation"),
    show_default=True,
    help="Where the plots and report.html go.",
)
@click.option(
    "--capacity-scale",
    type=click.FloatRange(min=0.1),
    default=1.0,
    show_default=True,
    help="Run the workload on a machine this many times the traced one (lower utilisation).",
)
@click.option(
    "--deadline-from",
    "deadline_basis",
    type=click.Choice(["submit", "baseline"]),
    default="submit",
    show_default=True,
    help="Apply the slack rule from each job's submission, or from when Slurm alone started it "
    "(every deadline one the machine meets without slurm-flex).",
)
@click.option(
    "--expedite/--no-expedite",
    default=True,
    show_default=True,
    help="Move queued jobs the queue would make late to its head, as the daemon's [policy] expedite_at_risk.",
)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@_fail_cleanly
def simulate(
    obj: _Ctx,
    trace_path: Path,
    carbon_path: Path | None,
    site_texts: tuple[str, ...],
    split: str,
    seed: int,
    move_threshold: float,
    price_path: Path | None,
    slack_rules: tuple[str, ...],
    start_text: str | None,
    first_day: float,
    days: float | None,
    watts_per_proc: float,
    policy_config: Path | None,
    objective: str,
    solver: str,
    horizon_hours: float | None,
    carbon_price: float | None,
    bound: bool,
    out_dir: Path,
    capacity_scale: float,
    deadline_basis: str,
    expedite: bool,
    as_json: bool,
) -> None:
    """Replay a real workload against real grid data: as submitted vs with slurm-flex, planned
    by the daemon's own policy, and judged against the clairvoyant bound."""
    from rich.console import Console
    from rich.progress import Progress

    from slurm_flex.grid.series import parse_iso_utc
    from slurm_flex.simulate import SimConfig, load_signals, read_trace
    from slurm_flex.simulate import simulate as run_simulation
    from slurm_flex.simulate.engine import slack_deadlines
    from slurm_flex.simulate.report import write_report

    configure_logging("warning", "console")
    for rule in slack_rules:  # reject a bad rule before minutes of work
        slack_deadlines(rule, np.zeros(1), np.ones(1))
    start = None
    if start_text:
        try:
            start = datetime.fromtimestamp(parse_iso_utc(start_text), UTC)
        except ValueError as exc:
            raise SlurmFlexError(f"--start: {exc}") from exc
    if site_texts and carbon_path is not None:
        raise click.UsageError("give either --carbon (one site) or --site (several), not both")
    if not site_texts and carbon_path is None:
        raise click.UsageError("give --carbon CSV (one site) or --site NAME=CSV[:SCALE] at least twice")
    specs = None
    if site_texts:
        from slurm_flex.simulate.multisite import parse_site

        if len(site_texts) < 2:
            raise click.UsageError(f"several sites need at least two --site, got {len(site_texts)}")
        if price_path is not None:
            raise click.UsageError("--price is for one site; several sites compare carbon only")
        specs = [parse_site(text) for text in site_texts]
        if split == "windows" and days is None:
            raise click.UsageError("--split windows needs --days (the window each site gets)")
    trace = read_trace(trace_path)
    if specs is not None and split == "windows":
        trace = trace.window(first_day, 1e9) if first_day else trace
    elif first_day or days:
        trace = trace.window(first_day, days if days is not None else 1e9)
    if trace.n_jobs == 0:
        raise SlurmFlexError("no jobs in the chosen window of the trace")
    if capacity_scale != 1.0:
        trace = dataclasses.replace(trace, capacity_procs=trace.capacity_procs * capacity_scale)
    if specs is not None:
        config = load_config(policy_config or obj.config_path)
        policy = replace(
            Policy.from_mapping(config.policy.model_dump()),
            solver="fast" if solver == "fast" else "auto",
            expedite_at_risk=expedite,
        )
        policy = with_objective(policy, "carbon" if objective == "policy" else objective, has_price=False)
        if horizon_hours is not None:
            policy = replace(policy, max_horizon_hours=horizon_hours)
        sim_cfg = SimConfig(policy=policy, watts_per_proc=watts_per_proc)
        _simulate_sites(trace, specs, split, seed, days, slack_rules, start, move_threshold, bound, as_json, sim_cfg)
        return
    assert carbon_path is not None
    signals = load_signals(carbon_path, price_path)
    config = load_config(policy_config or obj.config_path)
    policy = replace(
        Policy.from_mapping(config.policy.model_dump()),
        solver="fast" if solver == "fast" else "auto",
        expedite_at_risk=expedite,
    )
    policy = with_objective(policy, objective, has_price=price_path is not None)
    if horizon_hours is not None:
        policy = replace(policy, max_horizon_hours=horizon_hours)
    if carbon_price is not None:
        policy = replace(policy, carbon_price_gbp_per_tonne=carbon_price)
    cfg = SimConfig(policy=policy, watts_per_proc=watts_per_proc, deadline_basis=deadline_basis, bound=bound)
    results = []
    console = Console(stderr=True)
    with Progress(console=console, transient=True, disable=as_json or not console.is_terminal) as bar:
        for rule in slack_rules:
            task = bar.add_task(f"{trace.name}, slack {rule}", total=1)
            results.append(
                run_simulation(
                    trace,
                    signals,
                    rule,
                    cfg,
                    start,
                    progress=_progress_updater(bar, task),
                )
            )
    report = write_report(results, out_dir)
    doc = {"report": str(report), "capacity_scale": capacity_scale, "results": [r.to_json() for r in results]}
    if as_json:
        click.echo(json.dumps(doc, indent=2, default=lambda v: None))
        return
    for r in results:
        b, f, s = r.baseline.metrics, r.flex.metrics, r.savings()
        click.echo(
            f"{r.trace} | slack {r.slack} from {r.deadline_basis} | "
            f"{f['flexible_jobs']} of {f['jobs']} jobs flexible | "
            f"{r.n_slots * 0.5 / 24:.0f} days from {r.to_json()['start']} | "
            f"{r.capacity_procs:.0f} processors, {r.utilisation:.0%} utilised | {r.signals}"
        )
        click.echo(
            f"  carbon  {b['carbon_kg']:>12.1f} kg -> {f['carbon_kg']:>12.1f} kg "
            f"({s.get('carbon_kg_saved_percent', 0):+.2f}% saved)"
        )
        if math.isfinite(b["cost_gbp"]):
            click.echo(
                f"  cost    {b['cost_gbp']:>12.1f} GBP -> {f['cost_gbp']:>11.1f} GBP "
                f"({s.get('cost_gbp_saved_percent', 0):+.2f}% saved)"
            )
        click.echo(
            f"  energy  {b['energy_kwh']:>12.1f} kWh; mean delay {b['mean_delay_h']:.2f} h -> "
            f"{f['mean_delay_h']:.2f} h (p95 {b['p95_delay_h']:.2f} -> {f['p95_delay_h']:.2f} h); "
            f"deadline misses {b['deadline_misses']} -> {f['deadline_misses']} "
            f"({f['deadline_misses_not_missed_as_submitted']} not missed as submitted; "
            f"{f['expedited_jobs']} jobs moved up the queue)"
        )
        for name, c in r.captured().items():
            click.echo(
                f"  bound   {name:<9s} captured {c['captured_percent']:.0f}% of the {c['bound_percent']:.1f}% "
                f"available (clairvoyant LP bound; {c['bound_no_capacity_percent']:.1f}% with no capacity limit)"
            )
        click.echo(f"  planned for: {r.objective}")
    click.echo(f"report: {report}")


def _simulate_sites(
    trace: Any,
    specs: Any,
    split: str,
    seed: int,
    days: float | None,
    slack_rules: tuple[str, ...],
    start: datetime | None,
    move_threshold: float,
    bound: bool,
    as_json: bool,
    cfg: Any,
) -> None:
    """``slurmflex simulate --site ...``: time only, space only and both, per slack rule."""
    from slurm_flex.simulate.multisite import format_table, load_sites, simulate_sites, split_trace

    sites = load_sites(specs)
    traces = split_trace(trace, len(sites), split, days or 0.0, seed)
    console = Console(stderr=True)
    docs = []
    for rule in slack_rules:
        progress = None if as_json or not console.is_terminal else console.log
        result = simulate_sites(
            traces, sites, rule, cfg, start, move_threshold=move_threshold, bound=bound, progress=progress
        )
        if as_json:
            docs.append(result.to_json())
            continue
        click.echo(
            f"{len(sites)} sites | slack {rule} from the Slurm-alone start | {result.n_flexible} of "
            f"{result.n_jobs} jobs flexible (portable) | {result.days:.0f} days from "
            f"{result.to_json()['start']} | split {split} | move threshold {move_threshold:g}"
        )
        for name, t, sig, cap, util in zip(
            result.sites, result.traces, result.signals, result.capacities, result.utilisation, strict=True
        ):
            click.echo(f"  {name}: {t}, {cap:g} processors, {util:.0%} utilised | {sig}")
        if any("perfect foresight" in sig for sig in result.signals):
            click.echo("  (a single carbon series is both forecast and actual: planning with perfect foresight)")
        b = result.baseline_metrics
        click.echo(
            f"  Slurm alone at home: {result.baseline_kg:.1f} kg, mean delay {b['mean_delay_h']:.2f} h, "
            f"{b['deadline_misses']} deadline misses"
        )
        for line in format_table(result):
            click.echo("  " + line)
    if as_json:
        click.echo(json.dumps({"results": docs}, indent=2, default=lambda v: None))


def _progress_updater(bar: Any, task: Any) -> Callable[[int, int], None]:
    def update(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    return update


@main.command()
@click.option("--site", "site_names", multiple=True, help="Only this site (repeatable; default: every site).")
@click.option("--cached", is_flag=True, help="Do not ask the providers; show what the cache holds.")
@click.option("--accuracy", is_flag=True, help="Measure past forecasts against actuals instead.")
@click.option("--days", type=click.IntRange(1, 365), default=7, show_default=True, help="With --accuracy.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@_fail_cleanly
def forecast(obj: _Ctx, site_names: tuple[str, ...], cached: bool, accuracy: bool, days: int, as_json: bool) -> None:
    """Show each site's planning signals: the merged series and where each part came from."""
    from slurm_flex.daemon.service import make_sources, open_grid_cache
    from slurm_flex.grid.report import accuracy_report, forecast_doc, render_accuracy, render_forecast
    from slurm_flex.grid.signals import SiteSignals

    cfg = obj.config()
    grid = open_grid_cache(cfg)
    try:
        sources = make_sources(cfg, grid)
        unknown = [s for s in site_names if s not in sources]
        if unknown:
            raise SlurmFlexError(f"no site {', '.join(unknown)} in the config (sites: {', '.join(sources)})")
        chosen = {n: s for n, s in sources.items() if not site_names or n in site_names}
        if accuracy:
            if grid is None:
                raise SlurmFlexError("--accuracy needs live [sites.*]: a file forecast has no record of issues")
            feeds = {f.source for s in chosen.values() if isinstance(s, SiteSignals) for f in s.feeds()}
            report = accuracy_report(grid, sorted(feeds), int(time.time()), days)
            click.echo(json.dumps(report, indent=2) if as_json else render_accuracy(report))
            return
        now = time.time()
        docs = []
        for name, source in chosen.items():
            if cached and isinstance(source, SiteSignals):
                for f in source.feeds():
                    f.offline = True
            docs.append(forecast_doc(name, source, now))
    finally:
        if grid is not None:
            grid.close()
    if as_json:
        click.echo(json.dumps({"sites": docs}, indent=2))
    else:
        for doc in docs:
            click.echo(render_forecast(doc))


def _stored_signals(text: str | None) -> dict[str, Any]:
    """The last cycle's per-site summaries (signals, load shaping) from a setting; an unreadable
    value (older daemon) shows none."""
    try:
        doc = json.loads(text) if text else {}
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _operator() -> str:
    """Who is acting, for the record (the login name behind sudo where there is one)."""
    return os.environ.get("SUDO_USER") or getpass.getuser()


@main.command()
@click.option("--json", "as_json", is_flag=True)
@click.option(
    "--jobs", "job_limit", type=click.IntRange(0, 10000), default=20, show_default=True, help="Recent jobs shown."
)
@click.pass_obj
@_fail_cleanly
def power(obj: _Ctx, as_json: bool, job_limit: int) -> None:
    """Measured power: each node's watts with source and age, the site meter, and jobs' energy
    against their estimates (from the daemon's power store)."""
    from slurm_flex.power.report import build_power_doc, render_power
    from slurm_flex.power.store import POWER_DB, PowerStore

    cfg = obj.config()
    path = cfg.daemon.state_dir / POWER_DB
    if not path.exists():
        raise SlurmFlexError(f"no power store at {path}: enable [measure] and run the daemon")
    now = time.time()
    with PowerStore(path) as store:
        doc = build_power_doc(
            store.latest_samples(now - cfg.measure.raw_retention_hours * 3600),
            store.job_energy(job_limit),
            store.calibration(),
            now,
            cfg.measure.max_age_seconds,
        )
    if as_json:
        click.echo(json.dumps(doc, indent=2))
    else:
        render_power(doc, Console())


@main.command("node-agent")
@click.option("--once", is_flag=True, help="Sample and push once (two reads for RAPL), then exit.")
@click.option("--cycles", type=click.IntRange(min=1), help="Stop after this many intervals.")
@click.option("--print", "print_only", is_flag=True, help="Print the samples instead of pushing them.")
@click.pass_obj
@_fail_cleanly
def node_agent(obj: _Ctx, once: bool, cycles: int | None, print_only: bool) -> None:
    """Sample this node's power (RAPL, GPUs, BMC) and push it to the daemon ([agent] config)."""
    from slurm_flex.power.agent import NodeAgent, node_name, readers_from
    from slurm_flex.power.readers.collect import collect
    from slurm_flex.power.wire import read_token

    cfg = obj.config().agent
    node = node_name(cfg)
    readers = readers_from(cfg, node)
    if print_only:
        collect(readers, time.time())  # counters need a first read to measure over an interval
        time.sleep(1.0)
        result = collect(readers, time.time())
        doc = {"node": node, "samples": [vars(s) for s in result.samples], "errors": list(result.errors)}
        click.echo(json.dumps(doc, indent=2))
        return
    if not cfg.push_url:
        raise ConfigError(
            "config", "agent.push_url", "set it to the daemon's [measure] listen address, e.g. http://head:9862"
        )
    agent = NodeAgent(node, readers, cfg.push_url, read_token(cfg.token_file), buffer_samples=cfg.buffer_samples)
    signal.signal(signal.SIGTERM, lambda *_: agent.stop())
    if once:
        agent.sample(time.time())
        time.sleep(1.0)
        agent.run(cfg.interval_seconds, cycles=1)
    else:
        agent.run(cfg.interval_seconds, cycles=cycles)


@main.command()
@click.argument("job_ids", nargs=-1)
@click.option("--user", "users", multiple=True, help="All jobs of this user (repeatable).")
@click.option("--all", "everything", is_flag=True, help="Every job: the big red button; deferral stops until resumed.")
@click.option("--reason", default="", help="Recorded with the release.")
@click.pass_obj
@_fail_cleanly
def release(obj: _Ctx, job_ids: tuple[str, ...], users: tuple[str, ...], everything: bool, reason: str) -> None:
    """Start jobs slurm-flex deferred now, and leave them alone from now on.

    Takes effect at once (scontrol, from this command) and is recorded so the daemon does not
    defer them again; `slurmflex resume` lifts it. If Slurm cannot be reached now, the daemon
    releases them at its next cycle."""
    if not (job_ids or users or everything):
        raise click.UsageError("give job ids, --user or --all")
    from slurm_flex.daemon.controls import release as release_jobs

    done = release_jobs(obj.config(), job_ids, users, everything, reason, _operator())
    if not done.deferred:
        click.echo("recorded; no job is deferred by slurm-flex right now")
    elif done.report is None:
        click.echo(f"recorded; Slurm could not be reached now ({done.error}); the daemon releases them next cycle")
    else:
        click.echo(f"released {len(done.report.applied)} job(s): {', '.join(sorted(done.report.applied))}")
        for job_id, error in sorted(done.report.failed.items()):
            click.echo(f"  {job_id}: {error}", err=True)


@main.command()
@click.argument("job_ids", nargs=-1)
@click.option("--user", "users", multiple=True)
@click.option("--all", "everything", is_flag=True, help="Lift every release, of jobs, users and --all.")
@click.pass_obj
@_fail_cleanly
def resume(obj: _Ctx, job_ids: tuple[str, ...], users: tuple[str, ...], everything: bool) -> None:
    """Let slurm-flex plan jobs again after `slurmflex release`."""
    if not (job_ids or users or everything):
        raise click.UsageError("give job ids, --user or --all")
    from slurm_flex.daemon.controls import resume as resume_jobs

    lifted = resume_jobs(obj.config(), job_ids, users, everything, _operator())
    click.echo(f"lifted {lifted} release(s)")


@main.command("mode")
@click.argument("new_mode", required=False, type=click.Choice(["shadow", "advise", "enforce"]))
@click.option("--clear", is_flag=True, help="Go back to the mode in the config file.")
@click.pass_obj
@_fail_cleanly
def mode_command(obj: _Ctx, new_mode: str | None, clear: bool) -> None:
    """Show or switch the daemon's mode at runtime (it takes effect at the next cycle)."""
    from slurm_flex.daemon.controls import set_mode

    mode, at_runtime = set_mode(obj.config(), new_mode, _operator(), clear=clear)
    click.echo(f"mode: {mode} ({'set at runtime' if at_runtime else 'from the config'})")


@main.group("stress", invoke_without_command=True)
@click.option("--site", default=None, help="The stressed site (a [sites] name).")
@click.option("--kw", type=float, default=None, help="kW to shed at the site during the window.")
@click.option("--from", "start", default=None, help="now, now+30min, or an ISO time (UTC if no zone).")
@click.option("--to", "end", default=None, help="As --from.")
@click.option("--reason", default="", help="Recorded with the event.")
@click.pass_context
@_fail_cleanly
def stress_group(
    ctx: click.Context, site: str | None, kw: float | None, start: str | None, end: str | None, reason: str
) -> None:
    """Record a grid-stress event at one site: for its window the daemon sheds load there, moving
    pending portable work to the other site, suspending (or requeuing) opted-in running jobs, and
    planning the site's battery to cover what is left. `slurmflex stress list` shows them."""
    if ctx.invoked_subcommand is not None:
        return
    if site is None or kw is None or start is None or end is None:
        raise click.UsageError("give --site, --kw, --from and --to (or a subcommand: list, cancel)")
    from slurm_flex.daemon.controls import stress
    from slurm_flex.daemon.stress import parse_when

    now = time.time()
    event = stress(ctx.obj.config(), site, kw, parse_when(start, now), parse_when(end, now), reason, _operator())
    click.echo(f"recorded {event.describe()} (id {event.id})")


@stress_group.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@_fail_cleanly
def stress_list(obj: _Ctx, as_json: bool) -> None:
    """Stress events of the last day and ahead, and what the daemon did for each."""
    from slurm_flex.daemon.stress import STATE_SETTING, load_events, status_lines, summary
    from slurm_flex.state import StateStore

    with StateStore(obj.config().state_db) as store:
        doc = summary(load_events(store), json.loads(store.setting(STATE_SETTING) or "{}"), time.time())
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    for line in status_lines(doc) or ["no stress events"]:
        click.echo(line)


@stress_group.command("cancel")
@click.argument("event_id")
@click.pass_obj
@_fail_cleanly
def stress_cancel(obj: _Ctx, event_id: str) -> None:
    """Cancel a stress event (the next cycle resumes what it paused)."""
    from slurm_flex.daemon.controls import cancel_stress

    cancel_stress(obj.config(), event_id, _operator())
    click.echo(f"cancelled stress event {event_id}")


@main.group()
def hook() -> None:
    """The Slurm submit hook (job_submit/lua)."""


@hook.command("install")
@click.option(
    "--dest",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="Directory holding slurm.conf (where slurmctld looks for job_submit.lua).",
)
@click.option(
    "--module-only", is_flag=True, help="Only the module and policy, for sites with their own job_submit.lua."
)
@click.option("--no-cli-filter", is_flag=True, help="Do not install cli_filter.lua.")
@click.option("--force", is_flag=True, help="Replace a job_submit.lua or cli_filter.lua that is not slurm-flex's.")
@click.pass_obj
@_fail_cleanly
def hook_install(obj: _Ctx, dest: Path, module_only: bool, no_cli_filter: bool, force: bool) -> None:
    """Install the hook and render the site policy from the slurm-flex config."""
    from slurm_flex.job_submit.install import install_hook, slurm_conf_warnings

    cfg = obj.config()
    with_filter = not (module_only or no_cli_filter)
    for path in install_hook(cfg, dest, standalone=not module_only, cli_filter=with_filter, force=force):
        click.echo(f"wrote {path}")
    for warning in slurm_conf_warnings(dest):
        click.echo(f"note: {warning}", err=True)


@main.group()
def audit() -> None:
    """Verify the ledger: the signed log of every decision (offline, with the public key)."""


def _audit_paths(obj: _Ctx, state_dir: Path | None, key: str | None) -> tuple[Path, Any]:
    """The ledger directory and the verifier key to trust: --key (a file or a vkey string),
    else the log's own site.vkey (fine for the operator; an auditor brings their own copy)."""
    from slurm_flex.ledger.log import VKEY
    from slurm_flex.ledger.note import Verifier, read_verifier
    from slurm_flex.ledger.site import LEDGER_DIR, ledger_dir

    directory = state_dir / LEDGER_DIR if state_dir is not None else ledger_dir(obj.config())
    if key is None:
        return directory, read_verifier(directory / VKEY)
    if Path(key).exists():
        return directory, read_verifier(Path(key))
    return directory, Verifier.parse(key)


_STATE_DIR = click.option(
    "--state-dir", "audit_state_dir", type=click.Path(path_type=Path), default=None, help="The daemon's state_dir."
)
_KEY = click.option("--key", default=None, help="Verifier key (file or vkey string); default: the log's site.vkey.")


@audit.command("verify")
@_STATE_DIR
@_KEY
@click.option(
    "--checkpoint",
    "checkpoints",
    multiple=True,
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="Also check the log against this signed checkpoint (e.g. one a witness cosigned); repeatable.",
)
@click.option(
    "--witness",
    "witnesses",
    multiple=True,
    help="A witness's cosignature/v1 vkey: each --checkpoint must carry its valid cosignature; repeatable.",
)
@click.pass_obj
@_fail_cleanly
def audit_verify(
    obj: _Ctx, audit_state_dir: Path | None, key: str | None, checkpoints: tuple[Path, ...], witnesses: tuple[str, ...]
) -> None:
    """Exit 0 when every record and checkpoint verifies; 1 naming the first bad record."""
    from slurm_flex.ledger.cosignature import COSIGNATURE, verify_cosignatures
    from slurm_flex.ledger.log import verify
    from slurm_flex.ledger.note import Verifier

    directory, verifier = _audit_paths(obj, audit_state_dir, key)
    external = [(str(p), p.read_text(encoding="utf-8")) for p in checkpoints]
    trusted = [Verifier.parse(w, sig_type=COSIGNATURE) for w in witnesses]
    if trusted and not external:
        raise click.UsageError("--witness checks the cosignatures of --checkpoint files: give one")
    for where, text in external:
        try:
            for name, t in verify_cosignatures(text, trusted).items():
                click.echo(f"{where}: cosigned by {name} at {t}")
        except SlurmFlexError as exc:
            raise SlurmFlexError(f"{where}: {exc}") from exc
    done = verify(directory, verifier, external=external)
    click.echo(
        f"ok: {done.records} records ({done.first}..{done.records - 1} on disk), {done.checkpoints} checkpoints "
        f"verified with {verifier.name}+{verifier.key_id:08x}"
    )
    if done.latest is not None:
        click.echo(f"latest checkpoint: size {done.latest.size}")
    if done.uncovered:
        click.echo(f"note: the last {done.uncovered} records are not signed by a checkpoint yet")
    if done.signature_only:
        click.echo(f"note: {done.signature_only} checkpoints predate the retained records (signature checked only)")
    if not external:
        # What no offline check can see: the log cut back to an earlier checkpoint together
        # with the checkpoints after it. A checkpoint kept elsewhere (or cosigned) shows it.
        click.echo(
            "note: checked against the checkpoints stored beside the log; a log cut back to an earlier "
            "checkpoint shows only against one kept elsewhere (--checkpoint FILE)"
        )


@audit.command("prove")
@click.argument("index", type=click.IntRange(min=0))
@_STATE_DIR
@_KEY
@click.pass_obj
@_fail_cleanly
def audit_prove(obj: _Ctx, index: int, audit_state_dir: Path | None, key: str | None) -> None:
    """Print record INDEX with its inclusion proof against the latest signed checkpoint (JSON)."""
    from slurm_flex.ledger.log import prove

    directory, verifier = _audit_paths(obj, audit_state_dir, key)
    click.echo(json.dumps(prove(directory, verifier, index).to_json(), indent=2))


@audit.command("checkpoint")
@_STATE_DIR
@click.option("--sign", is_flag=True, help="Sign a new checkpoint of the log as it is now (needs the site key).")
@click.pass_obj
@_fail_cleanly
def audit_checkpoint(obj: _Ctx, audit_state_dir: Path | None, sign: bool) -> None:
    """Print the latest signed checkpoint (C2SP tlog-checkpoint), to publish or have cosigned."""
    from slurm_flex.ledger.log import LATEST
    from slurm_flex.ledger.site import LEDGER_DIR, ledger_dir, open_site_ledger

    cfg = obj.config()
    if sign:
        if audit_state_dir is not None:
            cfg = cfg.model_copy(update={"daemon": cfg.daemon.model_copy(update={"state_dir": audit_state_dir})})
        ledger = open_site_ledger(cfg)
        if ledger is None:
            raise SlurmFlexError("the ledger is disabled ([ledger] enabled = false)")
        click.echo(ledger.checkpoint(), nl=False)
        return
    directory = audit_state_dir / LEDGER_DIR if audit_state_dir is not None else ledger_dir(cfg)
    path = directory / LATEST
    if not path.exists():
        raise SlurmFlexError(f"no checkpoint at {path}: has the daemon run with this state_dir?")
    click.echo(path.read_text(encoding="utf-8"), nl=False)


@audit.command("certify")
@click.argument("job_id")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default=None, help="Write here, not stdout.")
@click.pass_obj
@_fail_cleanly
def audit_certify(obj: _Ctx, job_id: str, out: Path | None) -> None:
    """Issue a signed green-compute certificate for JOB_ID, logged in the ledger with its proof."""
    from slurm_flex.daemon.cycle import DEFAULT_SITE
    from slurm_flex.ledger.certificate import claims, issue, observed_run, read_plan_signals, with_plan_records
    from slurm_flex.ledger.site import open_site_ledger
    from slurm_flex.power.store import POWER_DB, PowerStore
    from slurm_flex.state import StateStore

    cfg = obj.config()
    if not cfg.state_db.exists():
        raise SlurmFlexError(f"no state at {cfg.state_db}: has the daemon run with this state_dir?")
    with StateStore(cfg.state_db) as store:
        rec = store.jobs().get(job_id)
    if rec is None:
        raise SlurmFlexError(f"job {job_id} is not one slurm-flex planned (unknown job id)")
    measured = None
    power_db = cfg.daemon.state_dir / POWER_DB
    if power_db.exists():
        with PowerStore(power_db) as power:
            measured = next(iter(power.job_energy(job_id=job_id)), None)
    ledger = open_site_ledger(cfg)
    if ledger is None:
        raise SlurmFlexError("the ledger is disabled ([ledger] enabled = false): certificates are anchored in it")
    # As run: the start the daemon observed (its job-started record), over the forecast of the
    # job's site that the plan files recorded for that window.
    run = observed_run(ledger.records(), job_id)
    site = DEFAULT_SITE if not cfg.sites else (cfg.site_of(rec.partition) or "")
    signals = with_plan_records(
        read_plan_signals(cfg.daemon.state_dir / "plans", cfg.daemon.state_dir, site), ledger.records()
    )
    actuals = _outturn(cfg, site, run.start, (run.end or run.start) + 7 * 86400) if run is not None else None
    doc = issue(ledger, claims(rec, measured, ledger.origin, int(time.time()), run, signals, actuals))
    text = json.dumps(doc, indent=2) + "\n"
    if out is None:
        click.echo(text, nl=False)
    else:
        out.write_text(text)
        click.echo(f"wrote {out}", err=True)


@audit.command("verify-certificate")
@click.argument("file", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@_STATE_DIR
@_KEY
@click.pass_obj
@_fail_cleanly
def audit_verify_certificate(obj: _Ctx, file: Path, audit_state_dir: Path | None, key: str | None) -> None:
    """Verify a green-compute certificate offline with the site's verifier key (--key)."""
    from slurm_flex.ledger.certificate import verify_certificate

    _, verifier = _audit_paths(obj, audit_state_dir, key)
    done = verify_certificate(file.read_text(encoding="utf-8"), verifier)
    c = done.claims
    click.echo(
        f"ok: job {c['job']['id']} ({c['job']['user']}): {c['energy']['kwh']} kWh {c['energy']['basis']}, "
        f"{c['as_run']['carbon_kg']} kg CO2 as run ({c['as_run']['start_basis']} start {c['as_run']['start']}) "
        f"vs {c['counterfactual']['carbon_kg']} kg without slurm-flex; "
        f"ledger record {done.index} in checkpoint of size {done.checkpoint.size}, signed by {verifier.name}"
    )


@main.group(invoke_without_command=True)
@click.option("--period", "period", default=None, help="YYYY-MM-DD, YYYY-MM or FROM..TO (settlement days).")
@click.option("--user", default=None, help="Only this user's jobs.")
@click.option("--account", default=None, help="Only this account's jobs.")
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json", "csv", "html"]), default="table", show_default=True
)
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default=None, help="Write here, not stdout.")
@click.pass_context
@_fail_cleanly
def report(
    ctx: click.Context, period: str | None, user: str | None, account: str | None, fmt: str, out: Path | None
) -> None:
    """Savings by user and account, flexibility delivered per settlement period, revenue."""
    if ctx.invoked_subcommand is not None:
        return
    if user is not None and account is not None:
        raise click.UsageError("give --user or --account, not both")
    if period is None:
        raise click.UsageError("--period is required (e.g. --period 2026-11 or --period 2026-11-01..2026-11-07)")
    from slurm_flex.power.store import POWER_DB, PowerStore
    from slurm_flex.reporting import render
    from slurm_flex.reporting.build import Window, build, read_carbon, read_statements
    from slurm_flex.settlement.periods import parse_range
    from slurm_flex.state import StateStore

    obj: _Ctx = ctx.obj
    cfg = obj.config()
    first, last = parse_range(period)
    if not cfg.state_db.exists():
        raise SlurmFlexError(f"no state at {cfg.state_db}: has the daemon run with this state_dir?")
    from slurm_flex.daemon.stress import STATE_SETTING, half_hours

    with StateStore(cfg.state_db) as store:
        jobs = list(store.jobs().values())
        stress_state = json.loads(store.setting(STATE_SETTING) or "{}")
    accounts: dict[str, str] = {}
    power_db = cfg.daemon.state_dir / POWER_DB
    if power_db.exists():
        with PowerStore(power_db) as power:
            accounts = {j.job_id: j.account for j in power.job_energy(limit=1_000_000)}
    doc = build(
        Window(first, last),
        jobs,
        accounts,
        read_statements(cfg.daemon.state_dir / "settlement" / "statements"),
        read_carbon(cfg.daemon.state_dir / "plans"),
        user=user,
        account=account,
        cross_site=half_hours(stress_state.get("samples", [])),
    )
    if fmt == "table":
        render.to_table(doc, Console(width=max(Console().width, 120)))
        return
    text = {"json": render.to_json, "csv": render.to_csv, "html": render.to_html}[fmt](doc)
    if out is None:
        click.echo(text, nl=not text.endswith("\n"))
    else:
        out.write_text(text, encoding="utf-8")
        click.echo(f"wrote {out}", err=True)


@report.command("stress")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True)
@click.pass_obj
@_fail_cleanly
def report_stress(obj: _Ctx, fmt: str) -> None:
    """kW moved across sites per half-hour during stress events (with kW paused, the battery's
    discharge and what the stressed site still drew), from the daemon's per-cycle samples."""
    import csv
    import io

    from slurm_flex.daemon.stress import STATE_SETTING, half_hours
    from slurm_flex.state import StateStore

    cfg = obj.config()
    if not cfg.state_db.exists():
        raise SlurmFlexError(f"no state at {cfg.state_db}: has the daemon run with this state_dir?")
    with StateStore(cfg.state_db) as store:
        state = json.loads(store.setting(STATE_SETTING) or "{}")
    rows = half_hours(state.get("samples", []))
    if fmt == "json":
        click.echo(json.dumps({"periods": rows}, indent=2))
        return
    if not rows:
        click.echo("no stress event samples")
        return
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        click.echo(buf.getvalue(), nl=False)
        return
    table = Table(title="Stress events: kW moved across sites per half-hour (UTC)", title_justify="left")
    for col in ("Half-hour", "Event", "From", "To", "Moved kW", "Moved, pending kW", "Paused kW", "Battery kW",
                "Site kW", "Ceiling kW"):  # fmt: skip
        table.add_column(col, justify="left" if col in ("Half-hour", "Event", "From", "To") else "right")
    for r in rows:
        ceiling = "-" if r["kw_ceiling"] is None else f"{r['kw_ceiling']:.3f}"
        table.add_row(r["period_start"][:16].replace("T", " "), r["event"], r["from"], r["to"],
                      f"{r['kw_moved_across_sites']:.3f}", f"{r['kw_moved_pending']:.3f}", f"{r['kw_paused']:.3f}",
                      f"{r['kw_battery']:.3f}", f"{r['kw_site']:.3f}", ceiling)  # fmt: skip
    Console(width=max(Console().width, 120)).print(table)


@report.command("settlement")
@click.option("--order", "order_id", required=True, help="The order's id in <state_dir>/settlement/orders.json.")
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
@click.option(
    "--usage",
    "usage_csv",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    default=None,
    help="Half-hourly usage CSV (start,kw[,basis]) instead of the measured power store.",
)
@click.option("--sign", is_flag=True, help="Also issue a signed statement, logged in the ledger.")
@click.pass_obj
@_fail_cleanly
def report_settlement(obj: _Ctx, order_id: str, fmt: str, usage_csv: Path | None, sign: bool) -> None:
    """The per-period settlement of one order: baseline, usage, delivered, payment, penalty."""
    import csv
    import io
    from datetime import timedelta

    from slurm_flex.ledger import signed
    from slurm_flex.ledger.log import write_atomic
    from slurm_flex.ledger.site import open_site_ledger
    from slurm_flex.power.store import POWER_DB, PowerStore
    from slurm_flex.settlement import usage as usage_sources
    from slurm_flex.settlement.compute import LOOKBACK_DAYS, find_order, other_event_days, settle
    from slurm_flex.settlement.periods import periods_of

    cfg = obj.config()
    orders_path = cfg.daemon.state_dir / "settlement" / "orders.json"
    try:
        orders_doc = json.loads(orders_path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise SlurmFlexError(f"no orders at {orders_path} (see docs/ledger.md for its format)") from exc
    except (OSError, ValueError) as exc:
        raise SlurmFlexError(f"{orders_path}: cannot read: {exc}") from exc
    order = find_order(orders_doc, order_id)
    days = sorted(order.event_days)
    start = periods_of(days[0] - timedelta(days=LOOKBACK_DAYS))[0].start
    end = periods_of(days[-1])[-1].end
    power_db = cfg.daemon.state_dir / POWER_DB
    usage: dict[datetime, Usage] = {}
    if usage_csv is not None:
        usage = usage_sources.from_csv(usage_csv)
    elif power_db.exists():
        with PowerStore(power_db) as store:
            usage = usage_sources.from_power_store(store, start, end)
    modelled = _modelled_usage(cfg, days[0] - timedelta(days=LOOKBACK_DAYS), days[-1])
    if modelled is None and usage_csv is None and not power_db.exists():
        raise SlurmFlexError(
            f"no measured power at {power_db} ([measure]) and no modelled usage ([settlement] nodes); give --usage FILE"
        )
    # Measured usage wins; the model only fills periods nothing measured, and says so per row.
    usage = {**(modelled or {}), **usage}
    # Other orders' event days are no like days for this one (their usage was lowered on purpose).
    statement = settle(order, usage, other_event_days(orders_doc, order.id))
    doc = statement.to_json()
    if sign:
        ledger = open_site_ledger(cfg)
        if ledger is None:
            raise SlurmFlexError("the ledger is disabled ([ledger] enabled = false): statements are anchored in it")
        signed_doc = signed.issue(ledger, "settlement", order.id, doc, total_net=doc["total_net"])
        out_dir = cfg.daemon.state_dir / "settlement" / "statements"
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{order.id}.json"
        # Whole or not at all: a re-signed statement replaces the old one in one rename.
        write_atomic(path, (json.dumps(signed_doc, indent=2) + "\n").encode())
        click.echo(f"signed statement: {path}", err=True)
    if fmt == "json":
        click.echo(json.dumps(doc, indent=2))
        return
    buf = io.StringIO()
    rows = doc["periods"]
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "baseline_days": " ".join(row["baseline_days"])})
    click.echo(buf.getvalue(), nl=False)
    for v in statement.violations:
        click.echo(f"violation: {v}", err=True)


def _outturn(cfg: Config, site: str, start: int, end: int) -> Actuals | None:
    """The outturn the grid cache holds for a live site's providers over [start, end) (a
    file-forecast site has none)."""
    from slurm_flex.grid.cache import GridCache
    from slurm_flex.grid.factory import build_provider, grid_cache_path
    from slurm_flex.grid.series import SLOT_SECONDS, floor_slot
    from slurm_flex.ledger.certificate import Actuals

    site_cfg = cfg.sites.get(site)
    path = grid_cache_path(cfg)
    if site_cfg is None or not path.exists():
        return None
    try:
        carbon = build_provider(site, "carbon", site_cfg.carbon, cfg)
        price = build_provider(site, "price", site_cfg.price, cfg)
    except (ValueError, SlurmFlexError):
        return None  # the config names no provider the cache could hold
    if carbon is None:
        return None
    lo, hi = floor_slot(start), floor_slot(end) + SLOT_SECONDS
    with GridCache(path) as cache:
        return Actuals(
            carbon[0].name,
            cache.actuals(carbon[0].name, lo, hi),
            price[0].name if price is not None else None,
            cache.actuals(price[0].name, lo, hi) if price is not None else {},
        )


def _modelled_usage(cfg: Config, first: date, last: date) -> dict[datetime, Usage] | None:
    """Modelled usage of the settlement days first..last from the ledger's job runs ([settlement]),
    or None where it is not configured or there is no ledger."""
    from datetime import timedelta

    from slurm_flex.daemon.cycle import power_model_from
    from slurm_flex.ledger.log import read_records
    from slurm_flex.ledger.site import ledger_dir
    from slurm_flex.settlement.modelled import from_ledger, idle_watts, modelled_usage
    from slurm_flex.settlement.periods import periods_of

    st = cfg.settlement
    directory = ledger_dir(cfg)
    if not st.model_usage or not st.nodes or not directory.is_dir():
        return None
    model = power_model_from(cfg)
    periods = []
    day = first
    while day <= last:
        periods.extend(periods_of(day))
        day += timedelta(days=1)
    observed = from_ledger(read_records(directory), model)
    return modelled_usage(periods, observed, idle_watts(st.nodes, model), st.other_watts)


@main.group("beckn")
def beckn_group() -> None:
    """Beckn on the Digital Energy Grid: keys, the endpoint, a grid-operator agent."""


@beckn_group.command("keygen")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True, help="Directory for the key files.")
@_fail_cleanly
def beckn_keygen(out_dir: Path) -> None:
    """Make an Ed25519 key pair (signing.key mode 0600, signing.pub) and print the public key."""
    from slurm_flex.beckn.keys import write_keypair

    click.echo(write_keypair(out_dir))


@beckn_group.command("serve")
@click.pass_obj
@_fail_cleanly
def beckn_serve(obj: _Ctx) -> None:
    """Run the Beckn endpoint ([beckn] listen): POST /{action}, GET /health."""
    from slurm_flex.beckn.service import serve

    serve(obj.config())


@beckn_group.command("grid-agent")
@click.option("--subscriber-id", default="grid-operator.local", show_default=True)
@click.option("--key", "key_file", required=True, help="The agent's own signing.key.")
@click.option("--trust", "trust_file", required=True, help="Trust file with the cluster's key.")
@click.option("--listen", default="127.0.0.1:9881", show_default=True, help="Where callbacks arrive.")
@click.option("--bpp-url", default="http://127.0.0.1:9871", show_default=True)
@click.option("--bpp-id", default="", help="The cluster's subscriber id.")
@click.option("--start", default="+60", show_default=True, help="ISO time, or +SECONDS from now (rounded up).")
@click.option("--interval-seconds", default=1800, show_default=True, type=int)
@click.option("--kw", default="2", show_default=True, help="kW to shed per interval, comma-separated.")
@click.option("--price", default=0.3, show_default=True, type=float)
@click.option("--penalty", default=0.1, show_default=True, type=float)
@click.option("--currency", default="GBP", show_default=True)
@click.option("--follow/--no-follow", default=True, help="Poll on_status until the final on_update.")
@click.option("--poll-seconds", default=10.0, show_default=True, type=float)
@click.option("--receive-only", default=None, help="Only receive callbacks, one JSON line each, into FILE.")
@click.option("--publish-need", default=None, help="Play the utility (BPP): publish the need, log requests into FILE.")
@_fail_cleanly
def beckn_grid_agent(
    subscriber_id: str,
    key_file: str,
    trust_file: str,
    listen: str,
    bpp_url: str,
    bpp_id: str,
    start: str,
    interval_seconds: int,
    kw: str,
    price: float,
    penalty: float,
    currency: str,
    follow: bool,
    poll_seconds: float,
    receive_only: str | None,
    publish_need: str | None,
) -> None:
    """Play the grid operator: confirm an activation and follow its delivery (JSON lines), or
    (--publish-need) publish a need for the cluster's aggregator role to answer."""
    from slurm_flex.beckn.agent import agent_main

    sys.exit(
        agent_main(
            subscriber_id=subscriber_id,
            key_file=key_file,
            trust_file=trust_file,
            listen=listen,
            bpp_url=bpp_url,
            bpp_id=bpp_id,
            start=start,
            interval_s=interval_seconds,
            kw=[float(x) for x in kw.split(",") if x],
            price=price,
            penalty=penalty,
            currency=currency,
            follow=follow,
            poll_s=poll_seconds,
            receive_only=receive_only,
            publish_need=publish_need,
        )
    )


@beckn_group.command("aggregate")
@click.option("--bpp-url", required=True, help="The utility's Beckn endpoint.")
@click.option("--bpp-id", required=True, help="The utility's subscriber id.")
@click.option("--timeout", default=60.0, show_default=True, type=float, help="Seconds to wait for each callback.")
@click.pass_obj
@_fail_cleanly
def beckn_aggregate(obj: _Ctx, bpp_url: str, bpp_id: str, timeout: float) -> None:
    """As aggregator (BAP): answer a utility's published need with what the queue can deliver.

    Needs `slurmflex beckn serve` running (the callbacks arrive there)."""
    from slurm_flex.beckn.aggregator import Aggregator
    from slurm_flex.beckn.keys import read_private_key
    from slurm_flex.beckn.signing import Signer
    from slurm_flex.beckn.store import BecknStore
    from slurm_flex.daemon.cycle import policy_from

    cfg = obj.config()
    b = cfg.beckn
    if b.private_key_file is None or not b.subscriber_id:
        raise ConfigError("[beckn]", "private_key_file", "needed to sign as aggregator")
    agg = Aggregator(
        Signer(b.subscriber_id, b.key_id, read_private_key(b.private_key_file)),
        BecknStore(cfg.daemon.state_dir),
        cfg.daemon.state_dir,
        policy_from(cfg),
        b.public_url or f"http://{b.listen}",
        b.network_id,
        b.resume_margin_seconds,
        b.signature_validity_seconds,
    )
    agg.answer_need(bpp_url, bpp_id, timeout, lambda doc: click.echo(json.dumps(doc)))


@main.group("config")
def config_group() -> None:
    """Inspect the effective configuration."""


@config_group.command("check")
@click.pass_obj
@_fail_cleanly
def config_check(obj: _Ctx) -> None:
    """Validate the config (file, environment, options) and print the effective values."""
    cfg = obj.config()
    click.echo(json.dumps(cfg.model_dump(mode="json"), indent=2))


if __name__ == "__main__":  # pragma: no cover
    main()
