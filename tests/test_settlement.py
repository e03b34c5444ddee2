"""Settlement periods of the Europe/London day as Elexon numbers them (46 and 50 on clock-change
days), the DEG demand-flex formulas over baselines and metered usage, and the settlement report."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from slurm_flex.ledger import signed
from slurm_flex.ledger.errors import SettlementError
from slurm_flex.ledger.log import VKEY
from slurm_flex.ledger.note import Verifier
from slurm_flex.settlement.compute import (
    BaselineMethod,
    Order,
    OrderSlot,
    Usage,
    find_order,
    like_days,
    settle,
)
from slurm_flex.settlement.periods import parse_period, parse_range, period_at, period_count, periods_of
from tests.fake_cluster import FakeEnv

SPRING = date(2026, 3, 29)  # clocks go forward: 46 periods
AUTUMN = date(2026, 10, 25)  # clocks go back: 50 periods


def test_period_counts_and_numbering() -> None:
    assert (period_count(SPRING), period_count(AUTUMN), period_count(date(2026, 6, 1))) == (46, 50, 48)
    autumn = periods_of(AUTUMN)
    assert autumn[0].start == datetime(2026, 10, 24, 23, 0, tzinfo=UTC)  # local midnight is BST
    # Local 01:00-02:00 happens twice: periods 3-4 in BST, 5-6 in GMT.
    assert [p.local_start.strftime("%H:%M %Z") for p in autumn[2:6]] == [
        "01:00 BST",
        "01:30 BST",
        "01:00 GMT",
        "01:30 GMT",
    ]
    spring = periods_of(SPRING)
    assert [p.local_start.strftime("%H:%M") for p in spring[1:3]] == ["00:30", "02:00"]  # 01:00-02:00 never happens
    assert spring[-1].end == periods_of(SPRING + timedelta(days=1))[0].start
    assert period_at(datetime(2026, 10, 25, 1, 15, tzinfo=UTC)) == autumn[4]
    assert parse_period("2026-10-25/50") == autumn[49]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("2026-03-29/47", "2026-03-29 is a clock-change day: clocks go forward, so it has 46 settlement periods"),
        ("2026-10-25/51", "clocks go back, so it has 50"),
        ("2026-06-01/49", "2026-06-01 has 1..48"),
        ("2026-06-01/0", "does not exist"),
        ("2026-02-30/3", "not a date"),
        ("2026-06-01", "not a settlement period"),
    ],
)
def test_bad_period_strings_say_what_is_wrong(text: str, problem: str) -> None:
    with pytest.raises(SettlementError, match=problem):
        parse_period(text)


def test_report_ranges() -> None:
    assert parse_range("2026-02") == (date(2026, 2, 1), date(2026, 2, 28))
    assert parse_range("2026-03-01..2026-03-03") == (date(2026, 3, 1), date(2026, 3, 3))
    with pytest.raises(SettlementError, match="ends before it starts"):
        parse_range("2026-03-03..2026-03-01")


def _flat_usage(first: date, last: date, kw_of_day: dict[date, float], default: float) -> dict[datetime, Usage]:
    out = {}
    d = first
    while d <= last:
        for p in periods_of(d):
            out[p.start] = Usage(kw_of_day.get(d, default), "site meter")
        d += timedelta(days=1)
    return out


def _order(day: date, numbers: range, method: BaselineMethod, offered: float = 50.0) -> Order:
    slots = tuple(OrderSlot(parse_period(f"{day}/{k}"), offered, 0.40, 0.10) for k in numbers)
    return Order("ord-1", "GBP", method, slots)


def test_like_days_skip_event_days_and_other_day_types() -> None:
    wed = date(2026, 6, 10)
    days = like_days(wed, 10, frozenset({date(2026, 6, 9)}))
    assert len(days) == 10 and date(2026, 6, 9) not in days and all(d.weekday() < 5 for d in days)
    assert days[0] == date(2026, 6, 8)
    sat = like_days(date(2026, 6, 13), 4, frozenset())
    assert sat == [date(2026, 6, 7), date(2026, 6, 6), date(2026, 5, 31), date(2026, 5, 30)]


def test_best_5_of_10_baseline_and_the_deg_formulas() -> None:
    event = date(2026, 6, 10)  # a Wednesday
    like = like_days(event, 10, frozenset({event}))
    # Ten like days at 80..170 kW: the best five (highest) are 130..170, mean 150.
    kw = {d: 80.0 + 10 * k for k, d in enumerate(reversed(like))}
    usage = _flat_usage(event - timedelta(days=30), event, kw, 0.0)
    for p in periods_of(event):
        usage[p.start] = Usage(120.0 if 35 <= p.number <= 38 else 150.0, "site meter")
    usage[parse_period(f"{event}/38").start] = Usage(95.0, "site meter")
    st = settle(_order(event, range(35, 39), BaselineMethod(5, 10)), usage)
    assert not st.violations
    first, last = st.rows[0], st.rows[-1]
    assert first.baseline_kw == pytest.approx(150.0) and len(first.baseline_days) == 5
    assert first.delivered_kw == pytest.approx(30.0) and first.eligible_kw == pytest.approx(30.0)
    assert first.pay == pytest.approx(30 * 0.5 * 0.40) and first.penalty == pytest.approx(20 * 0.5 * 0.10)
    # Period 38: 55 kW delivered against 50 offered: paid for 50, no penalty.
    assert last.delivered_kw == pytest.approx(55.0) and last.eligible_kw == pytest.approx(50.0)
    assert last.pay == pytest.approx(50 * 0.5 * 0.40) and last.penalty == 0.0
    assert st.total == pytest.approx(3 * (6.0 - 1.0) + 10.0)
    # More usage than the baseline delivers nothing: clamped at zero, full shortfall penalty.
    usage[parse_period(f"{event}/36").start] = Usage(400.0, "site meter")
    row = settle(_order(event, range(36, 37), BaselineMethod(5, 10)), usage).rows[0]
    assert row.delivered_kw == 0.0 and row.pay == 0.0 and row.penalty == pytest.approx(50 * 0.5 * 0.10)


def test_in_day_adjustment_and_missing_usage() -> None:
    event = date(2026, 6, 10)
    usage = _flat_usage(event - timedelta(days=30), event - timedelta(days=1), {}, 100.0)
    for p in periods_of(event):
        usage[p.start] = Usage(130.0 if p.number < 35 else 90.0, "site meter")  # a busier day
    plain = settle(_order(event, range(35, 37), BaselineMethod(5, 10)), usage).rows[0]
    adjusted = settle(_order(event, range(35, 37), BaselineMethod(5, 10, in_day_adjustment=True)), usage).rows[0]
    assert plain.baseline_kw == pytest.approx(100.0) and plain.delivered_kw == pytest.approx(10.0)
    assert adjusted.adjustment_kw == pytest.approx(30.0) and adjusted.delivered_kw == pytest.approx(40.0)
    del usage[parse_period(f"{event}/36").start]
    st = settle(_order(event, range(35, 37), BaselineMethod(5, 10)), usage)
    assert st.violations == (f"{event}/36: no metered or modelled usage: cannot settle",)
    assert st.rows[1].usage_basis == "none" and st.rows[1].net == 0.0


def test_unknown_order_ids_are_named() -> None:
    with pytest.raises(SettlementError, match=r"unknown order id 'x' \(known: a, b\)"):
        find_order({"orders": [{"id": "a"}, {"id": "b"}]}, "x")


def _write_day_order(env: FakeEnv, day: date) -> Path:
    """An order for every period of ``day`` and half-hourly usage for the 60 days before it."""
    settlement = env.tmp / "state" / "settlement"
    settlement.mkdir(parents=True, exist_ok=True)
    n = period_count(day)
    order = {
        "id": f"ord-{day}",
        "currency": "GBP",
        "baselineMethodology": {"bestOf": 5, "outOf": 10},
        "periods": [
            {"period": f"{day}/{k}", "offered_kw": 5.0, "price_per_kwh": 0.25, "penalty_per_kwh": 0.05}
            for k in range(1, n + 1)
        ],
    }
    (settlement / "orders.json").write_text(json.dumps({"orders": [order]}))
    lines = ["start,kw,basis"]
    t = periods_of(day - timedelta(days=61))[0].start
    while t < periods_of(day)[-1].end:
        kw = 12.0 if t < periods_of(day)[0].start else 8.0
        lines.append(f"{t.isoformat()},{kw},site meter")
        t += timedelta(minutes=30)
    (env.tmp / "usage.csv").write_text("\n".join(lines) + "\n")
    return env.tmp / "usage.csv"


@pytest.mark.parametrize(("day", "periods"), [(SPRING, 46), (AUTUMN, 50), (date(2026, 6, 10), 48)])
def test_settlement_csv_has_a_row_per_period_of_the_day(fake_env: FakeEnv, day: date, periods: int) -> None:
    usage = _write_day_order(fake_env, day)
    out = fake_env.slurmflex("report", "settlement", "--order", f"ord-{day}", "--format", "csv", "--usage", str(usage))
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert len(rows) == periods and [int(r["number"]) for r in rows] == list(range(1, periods + 1))
    assert {float(r["delivered_kw"]) for r in rows} == {4.0}  # 12 kW baseline, 8 kW used
    assert all(float(r["penalty"]) == pytest.approx(1.0 * 0.5 * 0.05) for r in rows)


def test_signed_statement_is_logged_and_verifies(fake_env: FakeEnv) -> None:
    usage = _write_day_order(fake_env, AUTUMN)
    out = fake_env.slurmflex("report", "settlement", "--order", f"ord-{AUTUMN}", "--format", "json",
                             "--usage", str(usage), "--sign")  # fmt: skip
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert len(doc["periods"]) == 50 and doc["total_net"] == pytest.approx(50 * (4 * 0.5 * 0.25 - 0.5 * 0.05))
    statement = (fake_env.tmp / "state" / "settlement" / "statements" / f"ord-{AUTUMN}.json").read_text()
    vkey = Verifier.parse((fake_env.tmp / "state" / "ledger" / VKEY).read_text())
    body, index, _ = signed.verify(statement, vkey, "settlement")
    assert body == doc and index >= 0
    assert fake_env.slurmflex("audit", "verify").returncode == 0
    bad = fake_env.slurmflex("report", "settlement", "--order", "nope", "--usage", str(usage))
    assert bad.returncode == 1 and "unknown order id 'nope'" in bad.stderr
