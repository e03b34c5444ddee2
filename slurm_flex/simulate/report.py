"""Simulation reports: plots (PNG) and one self-contained HTML page."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from slurm_flex.simulate.engine import SLOT_H, SimResult


def _figure_module() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only; never a display
    import matplotlib.pyplot as plt

    return plt


def plot_week(result: SimResult, path: Path) -> Path:
    """Carbon intensity and price against cluster load, baseline and slurm-flex, over the week
    in which slurm-flex moved the most energy."""
    plt = _figure_module()
    week = int(7 * 24 / SLOT_H)
    moved = np.abs(result.flex.busy - result.baseline.busy)
    if result.n_slots > week:
        sums = np.convolve(moved, np.ones(week), mode="valid")
        first = int(np.argmax(sums))
    else:
        first = 0
    last = min(result.n_slots, first + week)
    hours = np.arange(first, last) * SLOT_H
    days = hours / 24
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True)
    ax1.plot(days, result.carbon_actual[first:last], color="tab:green", label="carbon intensity (actual)")
    ax1.set_ylabel("g CO2 / kWh")
    if np.isfinite(result.price[first:last]).any():
        ax1b = ax1.twinx()
        ax1b.plot(days, result.price[first:last], color="tab:orange", alpha=0.6, label="price")
        ax1b.set_ylabel("GBP / MWh")
        ax1b.legend(loc="upper right")
    ax1.legend(loc="upper left")
    start = datetime.fromtimestamp(result.start_epoch + first * 1800, UTC).strftime("%Y-%m-%d")
    ax1.set_title(f"{result.trace}, slack {result.slack}: week from {start} (days since simulation start)")
    ax2.fill_between(days, result.baseline.busy[first:last], step="post", alpha=0.35, label="baseline (as submitted)")
    ax2.step(days, result.flex.busy[first:last], where="post", color="tab:blue", label="slurm-flex")
    ax2.axhline(result.capacity_procs, color="grey", linestyle=":", label="capacity")
    ax2.set_ylabel("processors busy")
    ax2.set_xlabel("day")
    ax2.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_savings(results: Sequence[SimResult], path: Path) -> Path:
    """Per slack rule and objective (carbon, cost): the saving achieved next to the clairvoyant
    bound with the machine's capacity and with none (simulate.bound)."""
    plt = _figure_module()
    labels = [r.slack for r in results]
    x = np.arange(len(labels))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, kind, key in ((axes[0], "carbon", "carbon_kg_saved_percent"), (axes[1], "cost", "cost_gbp_saved_percent")):
        achieved = [r.savings().get(key, math.nan) for r in results]
        bound = [r.captured().get(kind, {}).get("bound_percent", math.nan) for r in results]
        free = [r.captured().get(kind, {}).get("bound_no_capacity_percent", math.nan) for r in results]
        for offset, values, label, colour in (
            (-0.27, achieved, "slurm-flex", "tab:green"),
            (0.0, bound, "clairvoyant bound", "tab:blue"),
            (0.27, free, "bound, no capacity limit", "tab:gray"),
        ):
            if any(math.isfinite(v) for v in values):
                ax.bar(
                    x + offset, [v if math.isfinite(v) else 0 for v in values], width=0.27, label=label, color=colour
                )
        for i, r in enumerate(results):
            share = r.captured().get(kind, {}).get("captured_percent", math.nan)
            if math.isfinite(share):
                ax.annotate(f"{share:.0f}%", (x[i] - 0.27, max(achieved[i], 0)), ha="center", va="bottom", fontsize=8)
        ax.set_xticks(x, labels)
        ax.set_xlabel("slack rule")
        ax.set_ylabel(f"{kind} saved, % of baseline")
        ax.set_title(f"{kind}: achieved vs available (share captured)")
        ax.axhline(0, color="black", linewidth=0.8)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(f"{results[0].trace}: savings by slack")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _bound_cells(r: SimResult) -> tuple[str, str, str, str]:
    cells: list[str] = []
    for kind in ("carbon", "cost"):
        c = r.captured().get(kind)
        cells += ["-", "-"] if c is None else [f"{c['bound_percent']:.2f}%", f"{c['captured_percent']:.0f}%"]
    return cells[0], cells[1], cells[2], cells[3]


def write_report(results: Sequence[SimResult], out_dir: Path) -> Path:
    """PNG plots and report.html (images embedded) in ``out_dir``; returns the HTML path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    images = [plot_savings(results, out_dir / "savings_by_slack.png")]
    for r in results:
        images.append(plot_week(r, out_dir / f"week_{r.slack.replace('+', 'plus')}.png"))
    rows = []
    for r in results:
        b, f, s = r.baseline.metrics, r.flex.metrics, r.savings()
        rows.append(
            "<tr>"
            + "".join(
                f"<td>{html.escape(str(v))}</td>"
                for v in (
                    r.slack,
                    f["flexible_jobs"],
                    b["carbon_kg"],
                    f["carbon_kg"],
                    f"{s.get('carbon_kg_saved_percent', 0):.2f}%",
                    b["cost_gbp"],
                    f["cost_gbp"],
                    f"{s.get('cost_gbp_saved_percent', math.nan):.2f}%",
                    b["energy_kwh"],
                    b["mean_delay_h"],
                    f["mean_delay_h"],
                    f["p95_delay_h"],
                    f["deadline_misses"],
                    *_bound_cells(r),
                )
            )
            + "</tr>"
        )
    head = (
        "slack",
        "flexible jobs",
        "baseline kg CO2",
        "slurm-flex kg CO2",
        "carbon saved",
        "baseline GBP",
        "slurm-flex GBP",
        "cost saved",
        "energy kWh",
        "baseline mean delay h",
        "slurm-flex mean delay h",
        "slurm-flex p95 delay h",
        "deadline misses",
        "carbon bound",
        "carbon captured",
        "cost bound",
        "cost captured",
    )
    embedded = "".join(
        f'<p><img alt="{html.escape(p.name)}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">'
        "</p>"
        for p in images
    )
    first = results[0]
    title = f"slurm-flex simulation: {html.escape(first.trace)}"
    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
    )
    when = datetime.fromtimestamp(first.start_epoch, UTC)
    intro = (
        f"Grid signals: {html.escape(first.signals)}. Start {when:%Y-%m-%d %H:%M} UTC, "
        f"{first.n_slots * SLOT_H / 24:.0f} days, {first.capacity_procs:.0f} processors. Baseline: every job is "
        "eligible at submission (backfilling, first eligible first served). slurm-flex: flexible jobs planned every "
        "half-hour against the forecast and charged against actuals. Deadline misses count every job with a "
        "deadline. The bound is the clairvoyant LP relaxation (every job at its actual run time anywhere from its "
        "Slurm-alone start to its latest start, within the machine's capacity, on the actual series): no plan can "
        "save more; the share captured is the saving achieved over it."
    )
    table = "<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>" + "".join(rows) + "</table>"
    page = (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{title}</title><style>{style}</style></head>'
        f"<body><h1>{title}</h1><p>{intro}</p>{table}{embedded}</body></html>"
    )
    path = out_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
