"""`slurmflex report`: savings by user and account, flexibility per settlement period and
revenue from what the daemon recorded (fake Slurm); the HTML page renders in headless Chromium
(Debian's chromium package; skipped where it is not installed) with its plots decoded."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from slurm_flex.settlement.periods import period_at, periods_of
from tests.fake_cluster import FakeEnv
from tests.test_settlement import _write_day_order

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _today(env: FakeEnv) -> str:
    return period_at(datetime.fromtimestamp(env.slot0, UTC)).day.isoformat()


def with_history(env: FakeEnv) -> str:
    """Two users' deferred jobs and a signed settlement statement of today's order; returns a
    report period of today and tomorrow (the jobs run in the forecast's clean windows, 4 h and
    15 h from now)."""
    env.submit_flexible(hours=10, minutes=60, user="alice")
    env.submit_flexible(hours=20, minutes=30, user="bob")
    env.slurmflex("daemon", "--once")
    day = date.fromisoformat(_today(env))
    usage = _write_day_order(env, day)
    signed = env.slurmflex("report", "settlement", "--order", f"ord-{day}", "--usage", str(usage), "--sign")
    assert signed.returncode == 0, signed.stderr
    return f"{day}..{day + timedelta(days=1)}"


def test_report_json_and_csv(fake_env: FakeEnv) -> None:
    day = with_history(fake_env)
    out = fake_env.slurmflex("report", "--period", day, "--format", "json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert {r["user"] for r in doc["by_user"]} == {"alice", "bob"} and doc["jobs"] == 2
    assert all(r["carbon_saved_kg"] > 0 for r in doc["by_user"])
    assert len(doc["flexibility"]) == len(periods_of(date.fromisoformat(day[:10])))
    assert doc["revenue"]["GBP"] == pytest.approx(sum(p["net"] for p in doc["flexibility"]))
    # Load sits in the clean window (40 g/kWh) the jobs were deferred into.
    assert any(r["carbon_g_per_kwh"] == 40.0 and r["load_kw"] > 0 for r in doc["timeline"])
    only = json.loads(fake_env.slurmflex("report", "--period", day, "--format", "json", "--user", "bob").stdout)
    assert [r["user"] for r in only["by_user"]] == ["bob"]
    rows = list(csv.DictReader(io.StringIO(fake_env.slurmflex("report", "--period", day, "--format", "csv").stdout)))
    assert {r["section"] for r in rows} == {"user", "account", "settlement-period", "revenue"}
    bad = fake_env.slurmflex("report", "--period", "2026-13")
    assert bad.returncode == 1 and "is not a month" in bad.stderr


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_html_report_renders_in_headless_chromium(fake_env: FakeEnv, tmp_path: Path) -> None:
    day = with_history(fake_env)
    page = tmp_path / "report.html"
    out = fake_env.slurmflex("report", "--period", day, "--format", "html", "--out", str(page))
    assert out.returncode == 0, out.stderr
    assert CHROMIUM is not None
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
         "--virtual-time-budget=5000", f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    # The page's own check ran: every plot decoded; and no script error reached the console.
    assert 'data-rendered="yes"' in proc.stdout, proc.stdout[:500]
    assert "Uncaught" not in proc.stderr and "CONSOLE" not in proc.stderr, proc.stderr[-2000:]
    assert "Savings by user" in proc.stdout and "alice" in proc.stdout
