"""Settling a flexibility order per settlement period: pure functions over frozen dataclasses.

The formulas mirror the DEG demand-flex contract policy (beckn/DEG,
``specification/policies/demand-flex-contractpolicy.rego``, in ../shared/specs/beckn/deg-2026;
carried as policy data, not vendored), per interval::

    delivered = max(0, baseline - usage)
    eligible  = min(delivered, offered)
    pay       = eligible x hours x price
    penalty   = max(0, offered - delivered) x hours x shortfall penalty price
    net       = pay - penalty

and, like its rule S2, a period without metered usage cannot be settled: it is reported as a
violation, not guessed. The baseline follows the order's ``baselineMethodology`` (DEG's
``bestOf``/``outOf``): of the last ``outOf`` like days before the event day (working days for a
working day, weekend days for a weekend day), event days excluded, the ``bestOf`` with the
highest usage over the order's event window; the baseline of a period is their mean usage at
the same local clock time. Optionally an additive in-day adjustment in the manner of Elexon's
BL01 (the mean of usage minus unadjusted baseline over a window of periods before the event);
its window parameters are the order's and were not checked against the BSC Baselining
Methodology Document.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from statistics import fmean
from typing import Any

from slurm_flex.ledger.errors import SettlementError
from slurm_flex.settlement.periods import PERIOD, Period, parse_period, period_at, periods_of

HOURS = PERIOD.total_seconds() / 3600
LOOKBACK_DAYS = 60  # how far back like days are looked for


@dataclass(frozen=True)
class BaselineMethod:
    best_of: int = 5
    out_of: int = 10
    in_day_adjustment: bool = False
    adjustment_periods: int = 4  # the window's length ...
    adjustment_gap: int = 2  # ... ending this many periods before the first event period


@dataclass(frozen=True)
class OrderSlot:
    period: Period
    offered_kw: float
    price: float  # per kWh
    penalty_price: float  # per kWh short


@dataclass(frozen=True)
class Order:
    id: str
    currency: str
    method: BaselineMethod
    slots: tuple[OrderSlot, ...]

    @property
    def event_days(self) -> frozenset[date]:
        return frozenset(s.period.day for s in self.slots)


@dataclass(frozen=True)
class Usage:
    kw: float  # mean over the period
    basis: str  # "site meter", "node readings", ... or "modelled"


UsageSeries = Mapping[datetime, Usage]  # by period start (UTC)


@dataclass(frozen=True)
class Row:
    period: Period
    offered_kw: float
    baseline_kw: float | None
    adjustment_kw: float
    usage_kw: float | None
    usage_basis: str
    delivered_kw: float | None
    eligible_kw: float | None
    price: float
    pay: float
    penalty_price: float
    penalty: float
    net: float
    baseline_days: tuple[date, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "period": self.period.label,
            "day": self.period.day.isoformat(),
            "number": self.period.number,
            "start_utc": self.period.start.isoformat().replace("+00:00", "Z"),
            "offered_kw": self.offered_kw,
            "baseline_kw": _r(self.baseline_kw),
            "adjustment_kw": _r(self.adjustment_kw),
            "usage_kw": _r(self.usage_kw),
            "usage_basis": self.usage_basis,
            "delivered_kw": _r(self.delivered_kw),
            "eligible_kw": _r(self.eligible_kw),
            "hours": HOURS,
            "price": self.price,
            "pay": _r(self.pay),
            "penalty_price": self.penalty_price,
            "penalty": _r(self.penalty),
            "net": _r(self.net),
            "baseline_days": [d.isoformat() for d in self.baseline_days],
        }


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 6)


@dataclass(frozen=True)
class Statement:
    order: Order
    rows: tuple[Row, ...]
    violations: tuple[str, ...]

    @property
    def total(self) -> float:
        return sum(r.net for r in self.rows)

    def to_json(self) -> dict[str, Any]:
        return {
            "order": self.order.id,
            "currency": self.order.currency,
            "method": {
                "bestOf": self.order.method.best_of,
                "outOf": self.order.method.out_of,
                "inDayAdjustment": self.order.method.in_day_adjustment,
            },
            "periods": [r.to_json() for r in self.rows],
            "total_pay": _r(sum(r.pay for r in self.rows)),
            "total_penalty": _r(sum(r.penalty for r in self.rows)),
            "total_net": _r(self.total),
            "violations": list(self.violations),
        }


def _working(day: date) -> bool:
    return day.weekday() < 5


def like_days(day: date, n: int, excluded: frozenset[date]) -> list[date]:
    """The ``n`` most recent days before ``day`` of the same kind (working day or weekend),
    skipping ``excluded`` (event days); fewer if the look-back runs out."""
    out: list[date] = []
    d = day
    for _ in range(LOOKBACK_DAYS):
        d -= timedelta(days=1)
        if _working(d) == _working(day) and d not in excluded:
            out.append(d)
            if len(out) == n:
                break
    return out


def _same_clock(day: date, p: Period) -> Period | None:
    """The period of ``day`` starting at the same local clock time as ``p`` (the first of two
    on the day clocks go back; none for the hour that does not exist when they go forward)."""
    wall = p.local_start.time()
    return next((q for q in periods_of(day) if q.local_start.time() == wall), None)


def _usage_at(usage: UsageSeries, day: date, p: Period) -> float | None:
    q = _same_clock(day, p)
    u = usage.get(q.start) if q is not None else None
    return u.kw if u is not None else None


def baseline(order: Order, slot: OrderSlot, usage: UsageSeries) -> tuple[float | None, tuple[date, ...]]:
    """Unadjusted baseline of one period: mean usage at the same clock time on the ``bestOf``
    like days with the highest usage over the event window (days missing data are skipped)."""
    window = [s.period for s in order.slots if s.period.day == slot.period.day]
    return _baseline_at(order, slot.period, window, usage)


def _baseline_at(
    order: Order, p: Period, window: Sequence[Period], usage: UsageSeries
) -> tuple[float | None, tuple[date, ...]]:
    m = order.method
    ranked: list[tuple[float, date, float]] = []
    for d in like_days(p.day, m.out_of, order.event_days):
        values = [_usage_at(usage, d, w) for w in window]
        at = _usage_at(usage, d, p)
        if at is None or any(v is None for v in values):
            continue
        ranked.append((fmean(v for v in values if v is not None), d, at))
    ranked.sort(key=lambda t: (-t[0], t[1]))
    chosen = ranked[: m.best_of]
    if not chosen:
        return None, ()
    return fmean(t[2] for t in chosen), tuple(sorted(t[1] for t in chosen))


def in_day_adjustment(order: Order, day: date, usage: UsageSeries) -> float:
    """Additive adjustment for an event day: mean(actual - unadjusted baseline) over the
    adjustment window before the first event period (0 where data is missing)."""
    m = order.method
    window = sorted((s.period for s in order.slots if s.period.day == day), key=lambda p: p.start)
    first = window[0].start
    diffs = []
    for k in range(m.adjustment_gap + m.adjustment_periods, m.adjustment_gap, -1):
        start = first - k * PERIOD
        actual = usage.get(start)
        p = period_at(start)
        base, _ = _baseline_at(order, p, window, usage)
        if actual is None or base is None:
            return 0.0
        diffs.append(actual.kw - base)
    return fmean(diffs) if diffs else 0.0


def settle(order: Order, usage: UsageSeries) -> Statement:
    """Every period of the order, settled by the DEG contract's formulas."""
    rows: list[Row] = []
    violations: list[str] = []
    adjustments = {
        d: in_day_adjustment(order, d, usage) if order.method.in_day_adjustment else 0.0 for d in order.event_days
    }
    for slot in sorted(order.slots, key=lambda s: s.period.start):
        base, days = baseline(order, slot, usage)
        adj = adjustments[slot.period.day]
        used = usage.get(slot.period.start)
        if base is None:
            violations.append(f"{slot.period.label}: no baseline: no like day with metered usage")
        if used is None:
            violations.append(f"{slot.period.label}: no metered or modelled usage: cannot settle")
        if base is None or used is None:
            rows.append(
                Row(
                    slot.period,
                    slot.offered_kw,
                    base,
                    adj,
                    used.kw if used else None,
                    used.basis if used else "none",
                    None,
                    None,
                    slot.price,
                    0.0,
                    slot.penalty_price,
                    0.0,
                    0.0,
                    days,
                )
            )
            continue
        adjusted = base + adj
        delivered = max(0.0, adjusted - used.kw)
        eligible = min(delivered, slot.offered_kw)
        pay = eligible * HOURS * slot.price
        penalty = max(0.0, slot.offered_kw - delivered) * HOURS * slot.penalty_price
        rows.append(
            Row(
                slot.period,
                slot.offered_kw,
                adjusted,
                adj,
                used.kw,
                used.basis,
                delivered,
                eligible,
                slot.price,
                pay,
                slot.penalty_price,
                penalty,
                pay - penalty,
                days,
            )
        )
    return Statement(order, tuple(rows), tuple(violations))


# -- the orders file -----------------------------------------------------------------------------


def order_from_json(doc: Mapping[str, Any]) -> Order:
    """An order as ``<state_dir>/settlement/orders.json`` holds it (see docs/ledger.md)."""
    try:
        method = doc.get("baselineMethodology", {})
        slots = tuple(
            OrderSlot(
                parse_period(str(s["period"])),
                float(s["offered_kw"]),
                float(s["price_per_kwh"]),
                float(s.get("penalty_per_kwh", 0.0)),
            )
            for s in doc["periods"]
        )
        order = Order(
            id=str(doc["id"]),
            currency=str(doc.get("currency", "GBP")),
            method=BaselineMethod(
                best_of=int(method.get("bestOf", 5)),
                out_of=int(method.get("outOf", 10)),
                in_day_adjustment=bool(method.get("inDayAdjustment", False)),
                adjustment_periods=int(method.get("adjustmentPeriods", 4)),
                adjustment_gap=int(method.get("adjustmentGap", 2)),
            ),
            slots=slots,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise SettlementError(f"order {doc.get('id', '?')!r}: malformed: {exc!r}") from exc
    if not order.slots:
        raise SettlementError(f"order {order.id!r} has no periods")
    if not 1 <= order.method.best_of <= order.method.out_of:
        raise SettlementError(f"order {order.id!r}: bestOf must be between 1 and outOf")
    return order


def find_order(orders_doc: Mapping[str, Any], order_id: str) -> Order:
    orders = orders_doc.get("orders", [])
    for doc in orders:
        if str(doc.get("id")) == order_id:
            return order_from_json(doc)
    known = ", ".join(str(d.get("id")) for d in orders) or "none"
    raise SettlementError(f"unknown order id {order_id!r} (known: {known})")
