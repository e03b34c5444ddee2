"""Rendering the report: a terminal table, JSON, CSV, or one self-contained HTML page whose
plots are matplotlib PNGs inlined as data URIs (no network, no JavaScript library)."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.table import Table

SAVINGS = ("jobs", "energy_kwh", "carbon_saved_kg", "cost_saved_gbp")
CSV_FIELDS = (
    "section",
    "name",
    *SAVINGS,
    "period",
    "order",
    "offered_kw",
    "delivered_kw",
    "eligible_kw",
    "net",
    "delivery_basis",
)


CROSS_SITE = (
    "period_start",
    "event",
    "from",
    "to",
    "kw_moved_across_sites",
    "kw_moved_pending",
    "kw_paused",
    "kw_battery",
    "kw_site",
    "kw_ceiling",
)


def to_json(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2)


def to_csv(doc: dict[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for section, key in (("user", "user"), ("account", "account")):
        for row in doc[f"by_{key}"]:
            w.writerow({"section": section, "name": row[key], **row})
    for p in doc["flexibility"]:
        w.writerow({"section": "settlement-period", "name": p["period"], **p})
    for currency, value in doc["revenue"].items():
        w.writerow({"section": "revenue", "name": currency, "net": value})
    return buf.getvalue()


def to_table(doc: dict[str, Any], console: Console) -> None:
    console.print(f"slurm-flex report {doc['period']['from']} .. {doc['period']['to']}: {doc['jobs']} jobs")
    for key in ("user", "account"):
        t = Table(title=f"savings by {key}")
        for col in (key, *SAVINGS):
            t.add_column(col, justify="left" if col == key else "right")
        for row in doc[f"by_{key}"]:
            t.add_row(str(row[key]), *(f"{row[c]:.3f}" if c != "jobs" else str(int(row[c])) for c in SAVINGS))
        console.print(t)
    t = Table(title="flexibility per settlement period")
    for col in ("period", "order", "offered_kw", "delivered_kw", "net", "delivery_basis"):
        t.add_column(col)
    for p in doc["flexibility"]:
        t.add_row(
            p["period"], p["order"], *(str(p[c]) for c in ("offered_kw", "delivered_kw", "net", "delivery_basis"))
        )
    console.print(t)
    if doc.get("cross_site"):
        t = Table(title="kW moved across sites per half-hour (stress events)")
        for col in CROSS_SITE:
            t.add_column(col)
        for r in doc["cross_site"]:
            t.add_row(*(str(r[c]) for c in CROSS_SITE))
        console.print(t)
    console.print("revenue: " + (", ".join(f"{v:.2f} {c}" for c, v in doc["revenue"].items()) or "none"))


def _png(draw: Callable[[Any], None]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.2), dpi=90)
    try:
        draw(ax)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _load_carbon(doc: dict[str, Any]) -> Callable[[Any], None]:
    def draw(ax: Any) -> None:
        tl = doc["timeline"]
        xs = list(range(len(tl)))
        ax.step(xs, [r["load_kw"] for r in tl], where="post", color="tab:blue", label="planned load (kW)")
        ax.set_ylabel("kW")
        ax2 = ax.twinx()
        ax2.plot(xs, [r["carbon_g_per_kwh"] for r in tl], color="tab:green", label="carbon (g/kWh)")
        ax2.set_ylabel("g CO2/kWh")
        ticks = xs[:: max(1, len(xs) // 8)]
        ax.set_xticks(ticks, [tl[k]["start_utc"][5:16].replace("T", " ") for k in ticks], fontsize=7)
        ax.set_title("load against carbon intensity (UTC half hours)")

    return draw


def _savings(doc: dict[str, Any]) -> Callable[[Any], None]:
    def draw(ax: Any) -> None:
        names = [f"user {r['user']}" for r in doc["by_user"]] + [f"acct {r['account']}" for r in doc["by_account"]]
        values = [r["carbon_saved_kg"] for r in doc["by_user"]] + [r["carbon_saved_kg"] for r in doc["by_account"]]
        ax.bar(names, values, color=["tab:blue"] * len(doc["by_user"]) + ["tab:orange"] * len(doc["by_account"]))
        ax.set_ylabel("kg CO2 saved")
        ax.set_title("savings by user and account")
        ax.tick_params(axis="x", labelsize=7)

    return draw


def _flex(doc: dict[str, Any]) -> Callable[[Any], None]:
    def draw(ax: Any) -> None:
        rows = doc["flexibility"]
        xs = list(range(len(rows)))
        ax.bar([x - 0.2 for x in xs], [r["offered_kw"] for r in rows], width=0.4, label="offered kW")
        ax.bar([x + 0.2 for x in xs], [r["delivered_kw"] or 0 for r in rows], width=0.4, label="delivered kW")
        ticks = xs[:: max(1, len(xs) // 10)]
        ax.set_xticks(ticks, [rows[k]["period"] for k in ticks], fontsize=7)
        ax.legend(fontsize=7)
        ax.set_title("delivered against offered per settlement period")

    return draw


def to_html(doc: dict[str, Any]) -> str:
    e = html.escape

    def rows(items: list[dict[str, Any]], cols: tuple[str, ...]) -> str:
        head = "".join(f"<th>{e(c)}</th>" for c in cols)
        body = "".join("<tr>" + "".join(f"<td>{e(str(r.get(c, '')))}</td>" for c in cols) + "</tr>" for r in items)
        return f"<table><tr>{head}</tr>{body}</table>"

    plots = [("load-carbon", _load_carbon(doc)), ("savings", _savings(doc)), ("flexibility", _flex(doc))]
    imgs = "".join(f'<figure><img id="{name}" alt="{name}" src="{_png(draw)}"></figure>' for name, draw in plots)
    revenue = ", ".join(f"{v:.2f} {e(c)}" for c, v in doc["revenue"].items()) or "none"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>slurm-flex report</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}}img{{max-width:100%}}</style></head>
<body data-rendered="no">
<h1>slurm-flex report {e(doc["period"]["from"])} .. {e(doc["period"]["to"])}</h1>
<p>{doc["jobs"]} jobs. Revenue: {revenue}.</p>
{imgs}
<h2>Savings by user</h2>{rows(doc["by_user"], ("user", *SAVINGS))}
<h2>Savings by account</h2>{rows(doc["by_account"], ("account", *SAVINGS))}
<h2>Flexibility per settlement period</h2>
{
        rows(
            doc["flexibility"],
            ("period", "order", "offered_kw", "delivered_kw", "eligible_kw", "pay", "penalty", "net", "delivery_basis"),
        )
    }
<h2>kW moved across sites per half-hour (stress events)</h2>{rows(doc.get("cross_site", []), CROSS_SITE)}
<ul>{"".join(f"<li>{e(n)}</li>" for n in doc["notes"])}</ul>
<script>
// Mark the page rendered once every plot has decoded (a check for headless browsers).
window.addEventListener("load", () => {{
  const imgs = [...document.images];
  const ok = imgs.length === 3 && imgs.every((i) => i.complete && i.naturalWidth > 0);
  document.body.dataset.rendered = ok ? "yes" : "broken";
}});
</script>
</body></html>
"""
