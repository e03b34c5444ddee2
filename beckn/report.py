"""Delivery proof per interval of an event: the baseline (what the plan would have drawn
without the order, fixed when it was confirmed) against the power drawn, from the samples the
daemon records each cycle (measured where [measure] has readings, otherwise the power model's
estimate of the running jobs, labelled ``modelled``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from slurm_flex.beckn import contract as shapes
from slurm_flex.beckn.store import BecknStore, Contract


@dataclass(frozen=True)
class DeliveryReport:
    baseline_kw: tuple[float, ...]
    usage_kw: tuple[float | None, ...]  # None: no sample in the interval (yet)
    delivered_kw: tuple[float | None, ...]
    basis: str  # measured, modelled, or none
    performance: dict[str, Any]


def _baseline_per_interval(c: Contract) -> list[float]:
    """The plan's per-half-hour baseline spread over the contract's intervals."""
    out = []
    slot0 = c.window_start - c.window_start % 1800
    for i in range(len(c.offered)):
        t = c.window_start + i * c.interval_s
        k = (t - slot0) // 1800
        out.append(c.baseline[k] if k < len(c.baseline) else (c.baseline[-1] if c.baseline else 0.0))
    return out


def delivery_report(store: BecknStore, c: Contract, now: float, seller_id: str) -> DeliveryReport:
    baseline = _baseline_per_interval(c)
    usage: list[float | None] = []
    bases: set[str] = set()
    for i in range(len(c.offered)):
        start = c.window_start + i * c.interval_s
        samples = store.usage(start, min(start + c.interval_s, now))
        measured = [kw for _, kw, basis in samples if basis == "measured"]
        chosen = measured or [kw for _, kw, _b in samples]
        bases.update({"measured"} if measured else {b for _, _k, b in samples})
        usage.append(sum(chosen) / len(chosen) if chosen else None)
    basis = "measured" if bases == {"measured"} else "modelled" if bases else "none"
    delivered = tuple(None if u is None else max(0.0, b - u) for b, u in zip(baseline, usage, strict=True))
    over = now >= c.window_end
    status = (
        ("DELIVERY_COMPLETE" if _met(delivered, c.offered) else "DELIVERY_COMPLETE_PARTIAL") if over else "IN_PROGRESS"
    )
    perf = shapes.performance(
        c.id, f"{seller_id}:site:{basis}", c.window_start, baseline, usage, status, "PLAN_COUNTERFACTUAL", c.interval_s
    )
    return DeliveryReport(tuple(baseline), tuple(usage), delivered, basis, perf)


def _met(delivered: Sequence[float | None], offered: Sequence[float]) -> bool:
    return all(d is not None and d + 1e-6 >= o for d, o in zip(delivered, offered, strict=True))
