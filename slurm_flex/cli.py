"""The ``slurmflex`` command line."""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console

from slurm_flex import __version__
from slurm_flex.config import Config, load_config
from slurm_flex.errors import SlurmFlexError
from slurm_flex.logsetup import configure_logging

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
        doc = build_status(store.jobs(), store.last_cycles(1), cfg.daemon.mode, include_finished=include_finished)
    if as_json:
        click.echo(json.dumps(doc, indent=2))
    else:
        render_status(doc, Console(width=max(Console().width, 160)))


@main.command()
@click.option("--once", is_flag=True, help="Run a single cycle and exit.")
@click.option("--cycles", type=click.IntRange(min=1), default=None, help="Run this many cycles and exit.")
@click.option("--interval", type=click.IntRange(min=1), default=None, help="Seconds between cycles.")
@click.option("--mode", type=click.Choice(["shadow", "enforce"]), default=None)
@click.pass_obj
@_fail_cleanly
def daemon(obj: _Ctx, once: bool, cycles: int | None, interval: int | None, mode: str | None) -> None:
    """Plan and apply deferrals every interval (the slurmflexd service runs this)."""
    from slurm_flex.daemon.service import Daemon

    overrides: dict[str, Any] = {"mode": mode}
    cfg = obj.config(**overrides)
    if interval is not None:
        # The CLI may go below the config's floor (demos, tests); the file may not.
        cfg = cfg.model_copy(update={"daemon": cfg.daemon.model_copy(update={"interval_seconds": interval})})
    d = Daemon(cfg, reload=lambda: obj.config(**overrides))
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
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@_fail_cleanly
def forecast(obj: _Ctx, as_json: bool) -> None:
    """Show the forecast the daemon would plan with, and where it came from."""
    from slurm_flex.daemon.service import make_source
    from slurm_flex.grid.series import iso_utc

    cfg = obj.config()
    series = make_source(cfg).forecast(time.time())
    slots = [
        (series.slot_start(i), None if math.isnan(c) else c, None if math.isnan(p) else p)
        for i, (c, p) in enumerate(zip(series.carbon, series.price, strict=True))
    ]
    if as_json:
        rows = [{"from": iso_utc(t), "carbon_g_per_kwh": c, "price_gbp_per_mwh": p} for t, c, p in slots]
        click.echo(json.dumps({"source": series.source, "slots": rows}, indent=2))
        return
    click.echo(f"source: {series.source}; {len(series)} slots from {iso_utc(series.start)}")
    top = max((c or 0.0) for _, c, _ in slots) or 1.0
    for t, c, p in slots:
        bar = "" if c is None else "#" * int(40 * c / top)
        carbon = "   -" if c is None else f"{c:4.0f}"
        price = "" if p is None else f"{p:8.2f} GBP/MWh"
        click.echo(f"{iso_utc(t)[:16]}  {carbon} g/kWh {price}  {bar}")


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
