"""Delivery proof per interval of an event: the baseline (what the plan would have drawn
without the order, fixed when it was confirmed) against the power drawn, from the samples the
daemon records each cycle: the power model's estimate of the running jobs (``modelled``) and,
where [measure] gives the whole site's power, that too (``measured``). An interval is proved
with measured power wherever some was recorded in it, with modelled power only where none was,
and each interval says which (one meter per basis in the performance record); in a measured
interval the plan's baseline is raised by what the site was measured to draw beyond the model
in the hour before the window, so that both sides are on the same footing.

BASELINE and USAGE are the site's power in kW either way; what was delivered is the drop below
the baseline for a reduction, and the rise above it for an increase (a need with a negative
PRICE: DEG carries the direction in the price's sign, capacities stay positive). The devkit's
contract Rego settles only the first (``clamp0(BASELINE - USAGE)``): the status text of an
increase's record says how its delivery is to be read."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from slurm_flex.beckn import contract as shapes
from slurm_flex.beckn.store import ABSORB, BecknStore, Contract


@dataclass(frozen=True)
class DeliveryReport:
    baseline_kw: tuple[float, ...]
    usage_kw: tuple[float | None, ...]  # None: no sample in the interval (yet)
    delivered_kw: tuple[float | None, ...]
    basis: str  # measured, modelled, or none
    performance: dict[str, Any]
    # The buyer's named method (e.g. bestOf 5 outOf 10 like days), when history allows it.
    named_baseline_kw: tuple[float, ...] | None = None
    named_performance: dict[str, Any] | None = None
    named_note: str = ""
    bases: tuple[str, ...] = ()  # per interval: measured, modelled or none
    # measured - modelled before the window, added to the plan's baseline in measured intervals
    offset_kw: float | None = None


DAY = 86400
MEASURED, MODELLED, NONE = "measured", "modelled", "none"
# Measured against modelled power is compared over this span before a window.
OFFSET_SPAN_S = 3600
# How far back like days are looked for (several times outOf: weekends and gaps are skipped).
SEARCH_FACTOR = 3


def _is_weekend(t: float) -> bool:
    return time.gmtime(t).tm_wday >= 5


def named_baseline(store: BecknStore, c: Contract) -> tuple[tuple[float, ...] | None, str]:
    """Per interval: the mean of the ``bestOf`` highest of the last ``outOf`` like days' mean
    power at the same clock time (like: weekday or weekend, as the event day). None and why, when
    the method is not given or the history is too short."""
    method = c.baseline_method or {}
    best, of = int(method.get("bestOf", 0) or 0), int(method.get("outOf", 0) or 0)
    if best <= 0 or of <= 0 or best > of:
        return None, "no named baseline method in the order"
    weekend = _is_weekend(c.window_start)
    out: list[float] = []
    fewest = of
    for i in range(len(c.offered)):
        start = c.window_start + i * c.interval_s
        values: list[float] = []
        for d in range(1, of * SEARCH_FACTOR + 1):
            t = start - d * DAY
            if _is_weekend(t) != weekend:
                continue
            rows = store.usage(t, t + c.interval_s)
            # One basis per day: measured where it was, else modelled (never both added up).
            samples = [kw for _, kw, b in rows if b == MEASURED] or [kw for _, kw, _b in rows]
            if samples:
                values.append(sum(samples) / len(samples))
            if len(values) == of:
                break
        fewest = min(fewest, len(values))
        if len(values) < of:
            continue
        top = sorted(values, reverse=True)[:best]
        out.append(sum(top) / len(top))
    name = f"bestOf {best} outOf {of}"
    if len(out) < len(c.offered):
        return None, f"{name}: only {fewest} of {of} like days have power records; not computed"
    return tuple(out), f"{name} like days from the site's power records"


def _baseline_per_interval(c: Contract) -> list[float]:
    """The plan's per-half-hour baseline spread over the contract's intervals."""
    out = []
    slot0 = c.window_start - c.window_start % 1800
    for i in range(len(c.offered)):
        t = c.window_start + i * c.interval_s
        k = (t - slot0) // 1800
        out.append(c.baseline[k] if k < len(c.baseline) else (c.baseline[-1] if c.baseline else 0.0))
    return out


def measured_offset(store: BecknStore, c: Contract) -> float | None:
    """How much more the site was measured to draw than the power model gave its running jobs,
    over the hour before the window (the mean over the cycles that recorded both): the idle
    nodes, the rest of the site and the model's error then. None: nothing measured then."""
    pairs: dict[float, dict[str, float]] = {}
    for ts, kw, basis in store.usage(c.window_start - OFFSET_SPAN_S, c.window_start):
        pairs.setdefault(ts, {})[basis] = kw
    diffs = [d["measured"] - d["modelled"] for d in pairs.values() if "measured" in d and "modelled" in d]
    return sum(diffs) / len(diffs) if diffs else None


def delivery_report(store: BecknStore, c: Contract, now: float, seller_id: str) -> DeliveryReport:
    """Per interval: USAGE (its time mean, :func:`time_mean`) measured where the daemon recorded
    the site's measured power in it, else the power model's (labelled which); BASELINE the
    plan's, which for a measured interval is put on the measured footing with
    :func:`measured_offset` (the plan models jobs only)."""
    plan_baseline = _baseline_per_interval(c)
    offset = measured_offset(store, c)
    baseline: list[float] = []
    usage: list[float | None] = []
    bases: list[str] = []
    for i, base in enumerate(plan_baseline):
        start = c.window_start + i * c.interval_s
        end = min(start + c.interval_s, now)
        samples = store.usage(start, end)
        measured = [(ts, kw) for ts, kw, basis in samples if basis == MEASURED]
        modelled = [(ts, kw) for ts, kw, basis in samples if basis != MEASURED]
        chosen = measured or modelled
        bases.append(MEASURED if measured else MODELLED if modelled else NONE)
        usage.append(time_mean(chosen, [ts for ts, _k, _b in samples], end) if chosen else None)
        baseline.append(base + (offset or 0.0) if measured else base)
    kinds = set(bases) - {NONE}
    basis = kinds.pop() if len(kinds) == 1 else NONE if not kinds else f"{MEASURED}+{MODELLED}"
    delivered = delivered_kw(c.direction, baseline, usage)
    over = now >= c.window_end
    status = (
        ("DELIVERY_COMPLETE" if _met(delivered, c.offered) else "DELIVERY_COMPLETE_PARTIAL") if over else "IN_PROGRESS"
    )
    perf = _by_basis(
        shapes.performance(
            c.id, f"{seller_id}:site", c.window_start, baseline, usage, status, "PLAN_COUNTERFACTUAL", c.interval_s
        ),
        bases,
    )
    named, note = named_baseline(store, c)
    what = (
        "an increase (negative PRICE): delivered = USAGE - BASELINE, the power drawn above the baseline"
        if c.direction == ABSORB
        else "a reduction: delivered = BASELINE - USAGE"
    )
    perf["status"]["longDesc"] = (
        f"{what}; BASELINE: what the plan would have drawn without the order; {_usage_note(bases, offset)}; {note}"
    )
    named_perf = None
    if named is not None:
        method = c.baseline_method
        named_perf = _by_basis(
            shapes.performance(
                c.id,
                f"{seller_id}:site",
                c.window_start,
                named,
                usage,
                status,
                f"{method.get('bestOf')}of{method.get('outOf')}",
                c.interval_s,
            ),
            bases,
        )
        named_perf["id"] += "-named"
    return DeliveryReport(
        tuple(baseline), tuple(usage), delivered, basis, perf, named, named_perf, note, tuple(bases), offset
    )


def _by_basis(perf: dict[str, Any], bases: Sequence[str]) -> dict[str, Any]:
    """The record with one meter per basis (``<seller>:site:measured``, ``...:modelled``,
    ``...:none`` where nothing is recorded yet), each holding its intervals: every interval is
    in exactly one meter, so a settlement summing meters per interval (the devkit's Rego)
    counts each once, and each says how it was obtained."""
    meter = perf["performanceAttributes"]["meters"][0]
    meters = []
    for kind in (MEASURED, MODELLED, NONE):
        ids = {i for i, b in enumerate(bases) if b == kind}
        if not ids:
            continue
        telemetry = {
            **meter["telemetry"],
            "intervals": [iv for iv in meter["telemetry"]["intervals"] if iv["id"] in ids],
        }
        meters.append({**meter, "meterId": f"{meter['meterId']}:{kind}", "telemetry": telemetry})
    perf["performanceAttributes"]["meters"] = meters
    return perf


def _usage_note(bases: Sequence[str], offset: float | None) -> str:
    measured = [i for i, b in enumerate(bases) if b == MEASURED]
    modelled = [i for i, b in enumerate(bases) if b == MODELLED]
    parts = []
    if measured:
        parts.append(
            f"USAGE measured (site meter or every node) in intervals {_ids(measured)}, where BASELINE is the "
            + (
                f"plan's plus {offset:.3f} kW, the measured draw less the modelled over the hour before the window"
                if offset is not None
                else "plan's as modelled: nothing was measured before the window to put it on the measured footing"
            )
        )
    if modelled:
        parts.append(f"USAGE modelled (the power model's running jobs: nothing measured) in intervals {_ids(modelled)}")
    return "; ".join(parts) or "no power recorded yet"


def _ids(ids: Sequence[int]) -> str:
    return ", ".join(str(i) for i in ids)


def time_mean(samples: Sequence[tuple[float, float]], cycles: Sequence[float], end: float) -> float:
    """The mean power over the time ``samples`` (ts, kW) cover: each holds from its cycle to the
    next cycle (any of ``cycles``, the times samples were recorded) or ``end``; a stretch after
    a cycle that recorded none of these (a meter outage) is left out. A cycle just after a
    window opens (before the work it releases draws) thus counts for the seconds until the
    next one, not as much as a whole cycle interval."""
    times = sorted({*cycles, end})
    total = weight = 0.0
    for ts, kw in samples:
        nxt = next((t for t in times if t > ts), ts)
        total += kw * (nxt - ts)
        weight += nxt - ts
    if weight <= 0:
        return sum(kw for _, kw in samples) / len(samples)
    return total / weight


def delivered_kw(direction: str, baseline: Sequence[float], usage: Sequence[float | None]) -> tuple[float | None, ...]:
    """Per interval: the drop below the baseline (a reduction) or the rise above it (an
    increase), never negative; None where no power was recorded."""
    sign = -1.0 if direction == ABSORB else 1.0
    return tuple(None if u is None else max(0.0, sign * (b - u)) for b, u in zip(baseline, usage, strict=True))


def _met(delivered: Sequence[float | None], offered: Sequence[float]) -> bool:
    return all(d is not None and d + 1e-6 >= o for d, o in zip(delivered, offered, strict=True))
