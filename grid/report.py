"""What ``slurmflex forecast`` shows: each site's merged series with its provenance, as JSON
and as a compact terminal chart, and how good past forecasts were against actuals."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from slurm_flex.errors import ForecastError
from slurm_flex.grid.cache import GridCache
from slurm_flex.grid.series import SLOT_SECONDS, ForecastSource, SignalSeries, iso_utc

BARS = " ▁▂▃▄▅▆▇█"
ORIGIN_MARK = {"forecast": "f", "actual": "a", "last good forecast": "l", "profile": "p"}
LEAD_BUCKETS_H = ((0, 6), (6, 12), (12, 24), (24, 48), (48, 10**6))


def _num(v: float) -> float | None:
    return None if math.isnan(v) else round(v, 3)


def forecast_doc(site: str, source: ForecastSource, now: float) -> dict[str, Any]:
    """One site's signals as a JSON-able document (the error, when it has none)."""
    try:
        series = source.forecast(now)
    except ForecastError as exc:
        return {"site": site, "source": source.name, "error": str(exc), "slots": [], "segments": [], "notes": []}
    origin = {}
    for seg in series.segments:
        for t in range(seg.start, seg.end, SLOT_SECONDS):
            origin[(seg.quantity, t)] = seg.origin
    slots = [
        {
            "from": iso_utc(series.slot_start(i)),
            "carbon_g_per_kwh": _num(c),
            "carbon_origin": origin.get(("carbon", series.slot_start(i))),
            "price_gbp_per_mwh": _num(p),
            "price_origin": origin.get(("price", series.slot_start(i))),
        }
        for i, (c, p) in enumerate(zip(series.carbon, series.price, strict=True))
    ]
    segments = [
        {
            "quantity": s.quantity,
            "from": iso_utc(s.start),
            "to": iso_utc(s.end),
            "origin": s.origin,
            "source": s.source,
            "issued_at": None if s.issued_at is None else iso_utc(s.issued_at),
        }
        for s in series.segments
    ]
    return {
        "site": site,
        "source": series.source,
        "error": None,
        "issued_at": None if series.issued_at is None else iso_utc(series.issued_at),
        "slots": slots,
        "segments": segments,
        "notes": list(series.notes),
    }


def signal_summary(series: SignalSeries | None, source: str, error: str | None = None) -> dict[str, Any]:
    """What a site planned with this cycle, for ``slurmflex status``: per quantity and origin
    the hours covered, and whether a fallback is in use. A profile past the provider's horizon
    is normal; a fallback is a provider that failed or whose last answer is too old (the
    series then carries notes saying so)."""
    if series is None:
        return {"source": source, "ok": False, "fallback": True, "error": error, "parts": [], "notes": []}
    hours: dict[tuple[str, str, str, int | None], float] = {}
    for seg in series.segments:
        key = (seg.quantity, seg.source, seg.origin, seg.issued_at)
        hours[key] = hours.get(key, 0.0) + (seg.end - seg.start) / 3600
    parts = [
        {
            "quantity": quantity,
            "source": src,
            "origin": origin,
            "hours": round(h, 1),
            "issued_at": None if issued is None else iso_utc(issued),
        }
        for (quantity, src, origin, issued), h in hours.items()
    ]
    return {
        "source": series.source,
        "ok": True,
        "fallback": bool(series.notes),
        "error": None,
        "horizon_hours": round(len(series) * SLOT_SECONDS / 3600, 1),
        "parts": parts,
        "notes": list(series.notes),
    }


def sparkline(values: Sequence[float | None], low: float, high: float) -> str:
    span = (high - low) or 1.0
    out = []
    for v in values:
        if v is None:
            out.append("·")
        else:
            out.append(BARS[1 + min(7, max(0, int((v - low) / span * 7.999)))])
    return "".join(out)


def _chart(doc: dict[str, Any], key: str, unit: str) -> list[str]:
    values = [s[key] for s in doc["slots"]]
    known = [v for v in values if v is not None]
    if not known:
        return [f"  {key.split('_')[0]}: none"]
    low, high = min(known), max(known)
    lows = [s["from"] for s in doc["slots"] if s[key] == low]
    lines = [
        f"  {key.split('_')[0]} {unit}: {low:g} (at {lows[0][:16]}Z) .. {high:g}; one row per UTC day, f forecast "
    ]
    lines[0] += "a actual l last good p profile"
    origin_key = key.split("_")[0] + "_origin"
    day = None
    row, marks = "", ""
    pad = 0
    for s, v in zip(doc["slots"], values, strict=True):
        date, hhmm = s["from"][:10], s["from"][11:16]
        if date != day:
            if day is not None:
                lines += [f"  {day} |{' ' * pad}{row}", f"  {'':10} |{' ' * pad}{marks}"]
            day, row, marks = date, "", ""
            pad = (int(hhmm[:2]) * 60 + int(hhmm[3:])) // 30
        row += sparkline([v], low, high)
        marks += ORIGIN_MARK.get(s[origin_key] or "", " ")
    lines += [f"  {day} |{' ' * pad}{row}", f"  {'':10} |{' ' * pad}{marks}"]
    return lines


def render_forecast(doc: dict[str, Any]) -> str:
    head = f"site {doc['site']}: {doc['source']}"
    if doc["error"]:
        return f"{head}\n  NO SIGNAL: {doc['error']}\n"
    n = len(doc["slots"])
    lines = [f"{head}; {n} half-hours from {doc['slots'][0]['from'][:16]}Z"]
    lines += _chart(doc, "carbon_g_per_kwh", "g/kWh")
    if any(s["price_gbp_per_mwh"] is not None for s in doc["slots"]):
        lines += _chart(doc, "price_gbp_per_mwh", "GBP/MWh")
    lines.append("  where it came from:")
    for seg in doc["segments"]:
        issued = f", issued {seg['issued_at'][:16]}Z" if seg["issued_at"] else ""
        span = f"{seg['from'][:16]}Z .. {seg['to'][:16]}Z"
        lines.append(f"    {seg['quantity']:6} {span}  {seg['origin']:18} {seg['source']}{issued}")
    for note in doc["notes"]:
        lines.append(f"  note: {note}")
    return "\n".join(lines) + "\n"


def accuracy_report(cache: GridCache, sources: Sequence[str], now: int, days: int) -> dict[str, Any]:
    """Mean absolute error and bias of recorded forecasts against recorded actuals, by lead time."""
    out: dict[str, Any] = {"days": days, "sources": {}}
    for source in sources:
        issued = cache.issued_forecasts(source, now - days * 86400, now)
        if not issued:
            out["sources"][source] = {"forecasts": 0, "note": "no forecasts recorded in the period"}
            continue
        first = min(p.start for r in issued for p in r.points) if any(r.points for r in issued) else now
        actual = cache.actuals(source, first, now)
        errors: dict[str, list[float]] = {f"{a}-{b}h" if b < 10**6 else f"{a}h+": [] for a, b in LEAD_BUCKETS_H}
        for r in issued:
            for p in r.forecast_points():
                truth = actual.get(p.start)
                if truth is None:
                    continue
                lead_h = (p.start - r.issued_at) / 3600
                for (a, b), name in zip(LEAD_BUCKETS_H, errors, strict=True):
                    if a <= lead_h < b:
                        errors[name].append(p.value - truth)
        buckets = {
            name: {
                "n": len(e),
                "mae": round(sum(abs(x) for x in e) / len(e), 2),
                "bias": round(sum(e) / len(e), 2),
            }
            for name, e in errors.items()
            if e
        }
        entry: dict[str, Any] = {"forecasts": len(issued), "by_lead_time": buckets}
        if not buckets:
            entry["note"] = "no actuals recorded for these slots (e.g. NESO regional data has none)"
        out["sources"][source] = entry
    return out


def render_accuracy(report: dict[str, Any]) -> str:
    lines = [f"forecast accuracy over the last {report['days']} days (forecast - actual)"]
    for source, entry in report["sources"].items():
        lines.append(f"  {source}: {entry['forecasts']} forecasts recorded")
        for name, b in entry.get("by_lead_time", {}).items():
            lines.append(f"    lead {name:7} n={b['n']:6}  MAE {b['mae']:8.2f}  bias {b['bias']:+8.2f}")
        if "note" in entry:
            lines.append(f"    {entry['note']}")
    return "\n".join(lines) + "\n"
