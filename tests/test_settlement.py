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
from slurm_flex.power.model import PowerModel, Request
from slurm_flex.power.sample import PowerSample
from slurm_flex.power.store import POWER_DB, PowerStore
from slurm_flex.settlement.compute import (
    MEASURED,
    MODELLED,
    BaselineMethod,
    Order,
    OrderSlot,
    Usage,
    find_order,
    like_days,
    order_from_json,
    other_event_days,
    settle,
)
from slurm_flex.settlement.holidays import bank_holidays, easter_sunday, is_bank_holiday
from slurm_flex.settlement.modelled import from_ledger, idle_watts, modelled_usage
from slurm_flex.settlement.periods import parse_period, parse_range, period_at, period_count, periods_of
from tests.fake_cluster import FakeEnv
from tests.ledger_mutations import record_lines

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
            out[p.start] = Usage(kw_of_day.get(d, default), MEASURED, "site meter")
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
        usage[p.start] = Usage(120.0 if 35 <= p.number <= 38 else 150.0, MEASURED, "site meter")
    usage[parse_period(f"{event}/38").start] = Usage(95.0, MEASURED, "site meter")
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
    assert {r.delivery_basis for r in st.rows} == {MEASURED} and st.to_json()["modelled_periods"] == []
    # More usage than the baseline delivers nothing: clamped at zero, full shortfall penalty.
    usage[parse_period(f"{event}/36").start] = Usage(400.0, MEASURED, "site meter")
    row = settle(_order(event, range(36, 37), BaselineMethod(5, 10)), usage).rows[0]
    assert row.delivered_kw == 0.0 and row.pay == 0.0 and row.penalty == pytest.approx(50 * 0.5 * 0.10)


def test_in_day_adjustment_and_missing_usage() -> None:
    event = date(2026, 6, 10)
    usage = _flat_usage(event - timedelta(days=30), event - timedelta(days=1), {}, 100.0)
    for p in periods_of(event):
        usage[p.start] = Usage(130.0 if p.number < 35 else 90.0, MEASURED, "site meter")  # a busier day
    plain = settle(_order(event, range(35, 37), BaselineMethod(5, 10)), usage).rows[0]
    adjusted = settle(_order(event, range(35, 37), BaselineMethod(5, 10, in_day_adjustment=True)), usage).rows[0]
    assert plain.baseline_kw == pytest.approx(100.0) and plain.delivered_kw == pytest.approx(10.0)
    assert adjusted.adjustment_kw == pytest.approx(30.0) and adjusted.delivered_kw == pytest.approx(40.0)
    del usage[parse_period(f"{event}/36").start]
    st = settle(_order(event, range(35, 37), BaselineMethod(5, 10)), usage)
    assert st.violations == (f"{event}/36: no metered or modelled usage: cannot settle",)
    # As DEG's contract policy settles it: no USAGE, no reduction, the whole offer penalised.
    missing = st.rows[1]
    assert missing.usage_basis == "none" and missing.delivered_kw == 0.0 and missing.pay == 0.0
    assert missing.penalty == pytest.approx(50 * 0.5 * 0.10) and missing.net == pytest.approx(-missing.penalty)


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


def _iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def test_modelled_usage_follows_the_power_model_over_the_ledgers_runs() -> None:
    model = PowerModel()  # 120 W idle, 450 W max, 64 CPUs per node
    p = parse_period("2026-06-10/21")  # 10:00-10:30 BST, 09:00-09:30 UTC
    t0 = p.start
    job_w = model.estimate(Request(nodes=1, cpus=32))  # 120 + 32 x 330 / 64 = 285 W
    records = [
        (0, {"kind": "job-started", "time": _iso(t0), "data": {"job": "7", "partition": "", "node_count": 1,
             "power_w": job_w, "start": _iso(t0 - timedelta(minutes=20))}}),
        (1, {"kind": "job-started", "time": _iso(t0), "data": {"job": "8", "partition": "", "node_count": 2,
             "power_w": 2 * 120 + 500.0, "start": _iso(t0 + timedelta(minutes=20))}}),
        (2, {"kind": "cycle", "time": _iso(t0 + timedelta(minutes=5)), "data": {"ok": True, "running": 2}}),
        (3, {"kind": "job-ended", "time": _iso(t0), "data": {"job": "7", "end": None,
             "last_seen_running": _iso(t0 + timedelta(minutes=15))}}),
        # Before this version cycles did not log runs: they do not make a period modelled.
        (4, {"kind": "cycle", "time": _iso(t0 - timedelta(hours=1)), "data": {"ok": True}}),
    ]  # fmt: skip
    observed = from_ledger(records, model)
    idle = idle_watts({"default": 4}, model)
    assert idle == 480.0
    usage = modelled_usage([period_at(t0 - timedelta(hours=1)), p], observed, idle, other_w=100.0)
    assert list(usage) == [p.start]  # the daemon watched only this period
    u = usage[p.start]
    # Job 7 ran 15 of the 30 minutes, job 8 the last 10; each above its nodes' idle power,
    # which the four nodes' idle already counts.
    expected_w = 100.0 + 480.0 + (job_w - 120.0) * 15 / 30 + 500.0 * 10 / 30
    assert u.basis == MODELLED and u.kw == pytest.approx(expected_w / 1000)
    assert "2 job runs from the ledger" in u.source and "1 cycles watched" in u.source


def test_delivery_resting_on_modelled_data_is_labelled() -> None:
    event = date(2026, 6, 10)
    usage = _flat_usage(event - timedelta(days=30), event - timedelta(days=1), {}, 100.0)
    p35, p36 = parse_period(f"{event}/35"), parse_period(f"{event}/36")
    usage[p35.start] = Usage(80.0, MODELLED, "power model")
    usage[p36.start] = Usage(70.0, MEASURED, "site meter")
    st = settle(_order(event, range(35, 37), BaselineMethod(5, 10)), usage)
    assert not st.violations
    modelled, measured = st.rows
    assert modelled.usage_basis == MODELLED and modelled.delivery_basis == MODELLED
    assert modelled.delivered_kw == pytest.approx(20.0)  # settled, but labelled
    assert measured.delivery_basis == MEASURED
    assert st.to_json()["modelled_periods"] == [f"{event}/35"]
    # A measured event period against a baseline resting on a modelled like-day value.
    like = like_days(event, 10, frozenset({event}))[0]
    q = next(x for x in periods_of(like) if x.number == 36)
    usage[q.start] = Usage(100.0, MODELLED, "power model")
    row = settle(_order(event, range(36, 37), BaselineMethod(10, 10)), usage).rows[0]
    assert row.delivery_basis == "measured usage, modelled baseline"


def test_settlement_report_labels_measured_modelled_and_missing_periods(fake_env: FakeEnv) -> None:
    env = fake_env
    env.reconfigure(settlement={"nodes": {"default": 4}})
    job_id = env.submit(time_limit_s=7200)  # 1 CPU on a 2-CPU node: 120 + 330 / 2 = 285 W
    env.slurm.start(job_id)
    started = env.slurm.job(job_id).start_time
    assert started is not None
    env.slurmflex("daemon", "--once")
    env.slurmflex("daemon", "--once")
    # The period the cycles ran in (taken from their records: a half hour may have begun since).
    _, lines = record_lines(env.tmp / "state" / "ledger")
    now = datetime.fromisoformat([json.loads(x) for x in lines if b'"kind":"cycle"' in x][-1]["time"])
    current, before, after = period_at(now), period_at(now - timedelta(minutes=30)), period_at(now + timedelta(hours=1))
    # Node readings (BMC system power) for the period before: measured.
    with PowerStore(env.tmp / "state" / POWER_DB) as store:
        at = before.start.timestamp()
        store.add_samples(PowerSample("ipmi", "system", w, at + 60, n, True) for n, w in (("n1", 300.0), ("n2", 200.0)))
        store.fold(current.start.timestamp())
    settlement = env.tmp / "state" / "settlement"
    settlement.mkdir(parents=True, exist_ok=True)
    order = {"id": "o", "periods": [{"period": p.label, "offered_kw": 1.0, "price_per_kwh": 0.3,
                                     "penalty_per_kwh": 0.1} for p in (before, current, after)]}  # fmt: skip
    (settlement / "orders.json").write_text(json.dumps({"orders": [order]}))
    out = env.slurmflex("report", "settlement", "--order", "o", "--format", "json")
    assert out.returncode == 0, out.stderr
    rows = {r["period"]: r for r in json.loads(out.stdout)["periods"]}
    measured, modelled, missing = rows[before.label], rows[current.label], rows[after.label]
    assert measured["usage_basis"] == MEASURED and measured["usage_kw"] == pytest.approx(0.5)
    assert measured["usage_source"] == "node readings (ipmi; 2 nodes)"
    lo, hi = current.start.timestamp(), current.end.timestamp()
    job_share = (hi - max(lo, started)) / (hi - lo)  # still running: to the end of the period
    assert modelled["usage_basis"] == MODELLED and modelled["usage_source"].startswith("power model")
    assert modelled["usage_kw"] == pytest.approx((4 * 120 + (285 - 120) * job_share) / 1000, rel=1e-6)
    assert missing["usage_basis"] == "none" and missing["usage_kw"] is None
    csv_out = env.slurmflex("report", "settlement", "--order", "o", "--format", "csv")
    header = csv_out.stdout.splitlines()[0].split(",")
    assert {"usage_basis", "usage_source", "delivery_basis"} <= set(header)
    assert f"violation: {after.label}: no metered or modelled usage: cannot settle" in csv_out.stderr
    # Without the node inventory nothing is modelled: understated idle power would overstate delivery.
    env.reconfigure()
    plain = json.loads(env.slurmflex("report", "settlement", "--order", "o", "--format", "json").stdout)
    assert {r["period"]: r["usage_basis"] for r in plain["periods"]}[current.label] == "none"


def test_easter_and_the_bank_holidays_of_england_and_wales() -> None:
    assert [easter_sunday(y) for y in (2024, 2025, 2026, 2038, 2285)] == [
        date(2024, 3, 31), date(2025, 4, 20), date(2026, 4, 5), date(2038, 4, 25), date(2285, 3, 22),
    ]  # fmt: skip
    # 2026: Boxing Day is a Saturday, so Monday 28th.
    assert sorted(bank_holidays(2026)) == [
        date(2026, 1, 1), date(2026, 4, 3), date(2026, 4, 6), date(2026, 5, 4),
        date(2026, 5, 25), date(2026, 8, 31), date(2026, 12, 25), date(2026, 12, 28),
    ]  # fmt: skip
    # 2022: New Year's Day a Saturday, the spring holiday moved for the Platinum Jubilee, the
    # Queen's funeral, Christmas Day a Sunday (Boxing Day Monday, Christmas Tuesday).
    assert sorted(bank_holidays(2022)) == [
        date(2022, 1, 3), date(2022, 4, 15), date(2022, 4, 18), date(2022, 5, 2), date(2022, 6, 2),
        date(2022, 6, 3), date(2022, 8, 29), date(2022, 9, 19), date(2022, 12, 26), date(2022, 12, 27),
    ]  # fmt: skip
    # 2021: Christmas Day a Saturday (Monday 27th), Boxing Day a Sunday (Tuesday 28th).
    assert {date(2021, 12, 27), date(2021, 12, 28)} <= bank_holidays(2021)
    assert not is_bank_holiday(date(2021, 12, 24)) and is_bank_holiday(date(2020, 5, 8))


def test_like_days_treat_bank_holidays_as_non_working_days() -> None:
    # The Tuesday after the spring bank holiday: its working like days skip Monday 25 May.
    tue = date(2026, 5, 26)
    days = like_days(tue, 10, frozenset())
    assert date(2026, 5, 25) not in days and days[:2] == [date(2026, 5, 22), date(2026, 5, 21)]
    assert date(2026, 5, 4) not in days and len(days) == 10  # early May bank holiday too
    # The bank holiday itself is like the weekends before it (and the early May holiday).
    assert like_days(date(2026, 5, 25), 7, frozenset()) == [
        date(2026, 5, 24), date(2026, 5, 23), date(2026, 5, 17), date(2026, 5, 16),
        date(2026, 5, 10), date(2026, 5, 9), date(2026, 5, 4),
    ]  # fmt: skip


def test_a_quiet_bank_holiday_does_not_drag_a_working_day_baseline_down() -> None:
    event = date(2026, 6, 2)  # the Tuesday a week after the spring bank holiday
    like = like_days(event, 10, frozenset({event}))
    # Working days at 100 kW, weekends and the bank holiday at 20 kW: a best 10 of 10 over
    # working days would fall to 92 kW if the bank holiday counted as one.
    quiet = {d: 20.0 for d in (date(2026, 5, 25), *(date(2026, 5, k) for k in (16, 17, 23, 24, 30, 31)))}
    usage = _flat_usage(event - timedelta(days=40), event, quiet, 100.0)
    row = settle(_order(event, range(35, 36), BaselineMethod(10, 10)), usage).rows[0]
    assert row.baseline_kw == pytest.approx(100.0) and row.baseline_days == tuple(sorted(like))
    assert date(2026, 5, 25) not in row.baseline_days


def test_other_orders_event_days_are_no_like_days() -> None:
    # A past event (another order) lowered usage on one like day; counting it would lower this
    # order's baseline and under-pay the delivery.
    event = date(2026, 6, 10)
    earlier = date(2026, 6, 9)
    usage = _flat_usage(event - timedelta(days=30), event, {}, 100.0)
    for p in periods_of(earlier):
        usage[p.start] = Usage(20.0, MEASURED, "site meter")
    for p in periods_of(event):
        usage[p.start] = Usage(60.0, MEASURED, "site meter")
    order = _order(event, range(36, 37), BaselineMethod(10, 10))
    naive = settle(order, usage).rows[0]
    assert earlier in naive.baseline_days and naive.baseline_kw < 100.0
    fair = settle(order, usage, frozenset({earlier})).rows[0]
    assert earlier not in fair.baseline_days and fair.baseline_kw == pytest.approx(100.0)
    assert fair.delivered_kw == pytest.approx(40.0)
    doc = {"orders": [{"id": "a", "periods": [{"period": f"{earlier}/36", "offered_kw": 1.0, "price_per_kwh": 0.3,
                                               "penalty_per_kwh": 0.1}]}, {"id": "b"}]}  # fmt: skip
    assert other_event_days(doc, "b") == frozenset({earlier})


def test_an_order_without_a_shortfall_penalty_is_refused() -> None:
    doc = {"id": "o", "periods": [{"period": "2026-06-10/36", "offered_kw": 1.0, "price_per_kwh": 0.3}]}
    with pytest.raises(SettlementError, match=r"period 2026-06-10/36 has no penalty_per_kwh"):
        order_from_json(doc)
