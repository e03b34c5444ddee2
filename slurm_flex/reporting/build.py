"""The report's content, built from what the daemon recorded: job records (state store),
signed settlement statements (``<state_dir>/settlement/statements``), the forecasts kept in the
plan files (``<state_dir>/plans``) and job accounts from the power store where measured.
Pure apart from the readers at the bottom, which take their roots as arguments."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from slurm_flex.grid.series import SLOT_SECONDS, iso_utc
from slurm_flex.settlement.periods import periods_of
from slurm_flex.state import JobRecord

UNKNOWN_ACCOUNT = "(unknown)"


@dataclass(frozen=True)
class Window:
    first: date
    last: date

    @property
    def start(self) -> int:
        return int(periods_of(self.first)[0].start.timestamp())

    @property
    def end(self) -> int:
        return int(periods_of(self.last)[-1].end.timestamp())

    def holds(self, t: int | None) -> bool:
        return t is not None and self.start <= t < self.end


def _job_time(rec: JobRecord) -> int:
    return rec.planned_start if rec.planned_start is not None else rec.first_seen


def build(
    window: Window,
    jobs: Iterable[JobRecord],
    accounts: Mapping[str, str],
    statements: Iterable[Mapping[str, Any]],
    carbon: Mapping[int, float],
    user: str | None = None,
    account: str | None = None,
    cross_site: Iterable[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The report document (what every format renders); ``cross_site``: the stress events' rows
    per half-hour (daemon.stress.half_hours), those in the window kept."""
    selected = [
        r
        for r in jobs
        if window.holds(_job_time(r))
        and r.baseline_carbon_g is not None
        and (user is None or r.user == user)
        and (account is None or accounts.get(r.job_id, UNKNOWN_ACCOUNT) == account)
    ]
    by_user: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    by_account: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    load: dict[int, float] = defaultdict(float)
    for r in selected:
        for bucket, key in ((by_user, r.user), (by_account, accounts.get(r.job_id, UNKNOWN_ACCOUNT))):
            row = bucket[key]
            row["jobs"] += 1
            row["energy_kwh"] += r.energy_kwh or 0.0
            row["carbon_saved_kg"] += r.carbon_saved_g / 1000
            row["cost_saved_gbp"] += r.cost_saved_gbp
        if r.planned_start is not None and r.power_w and r.energy_kwh:
            seconds = r.energy_kwh * 3.6e6 / r.power_w
            t = r.planned_start - r.planned_start % SLOT_SECONDS
            while t < r.planned_start + seconds:
                overlap = min(t + SLOT_SECONDS, r.planned_start + seconds) - max(t, r.planned_start)
                load[t] += r.power_w / 1000 * overlap / SLOT_SECONDS
                t += SLOT_SECONDS
    periods = []
    revenue: dict[str, float] = defaultdict(float)
    for st in statements:
        for row in st.get("periods", []):
            start = int(datetime.fromisoformat(row["start_utc"].replace("Z", "+00:00")).timestamp())
            if not window.holds(start):
                continue
            periods.append(
                {
                    "order": st["order"],
                    **{k: row[k] for k in _PERIOD_KEYS},
                    # Statements signed before usage could be modelled rested on metered usage only.
                    "delivery_basis": row.get("delivery_basis", "measured"),
                }
            )
            revenue[st.get("currency", "GBP")] += row["net"] or 0.0
    periods.sort(key=lambda p: (p["start_utc"], p["order"]))

    def table(rows: Mapping[str, Mapping[str, float]], key: str) -> list[dict[str, Any]]:
        return [{key: k, **{m: round(v, 6) for m, v in rows[k].items()}} for k in sorted(rows)]

    slots = sorted(set(load) | {t for t in carbon if window.holds(t)})
    return {
        "period": {"from": window.first.isoformat(), "to": window.last.isoformat()},
        "filter": {"user": user, "account": account},
        "jobs": len(selected),
        "by_user": table(by_user, "user"),
        "by_account": table(by_account, "account"),
        "flexibility": periods,
        # kW moved from a stressed site to the other per half-hour (stress events).
        "cross_site": [
            dict(r)
            for r in cross_site
            if window.holds(int(datetime.fromisoformat(str(r["period_start"]).replace("Z", "+00:00")).timestamp()))
        ],
        "revenue": {cur: round(v, 6) for cur, v in revenue.items()},
        "timeline": [
            {"start_utc": iso_utc(t), "load_kw": round(load.get(t, 0.0), 6), "carbon_g_per_kwh": carbon.get(t)}
            for t in slots
        ],
        "notes": [
            "savings are planned carbon and cost against each job's own earliest start (the forecast's "
            "intensities); load is the planned power of the jobs slurm-flex planned",
            f"jobs without a measured account are under {UNKNOWN_ACCOUNT}",
        ],
    }


_PERIOD_KEYS = ("period", "start_utc", "offered_kw", "delivered_kw", "eligible_kw", "pay", "penalty", "net")


# -- readers -----------------------------------------------------------------------------------


def read_statements(directory: Path) -> list[dict[str, Any]]:
    """The bodies of the signed settlement statements (their signatures are `audit`'s business)."""
    out = []
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        try:
            out.append(json.loads(path.read_text(encoding="utf-8"))["body"])
        except (OSError, ValueError, KeyError):
            continue
    return out


def read_carbon(plans_dir: Path) -> dict[int, float]:
    """Carbon intensity per half hour as the daemon planned with it: the forecasts in the plan
    files, the latest file's value for a slot winning."""
    carbon: dict[int, float] = {}
    for path in sorted(plans_dir.glob("cycle-*.json")) if plans_dir.is_dir() else []:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        for site in doc.get("sites", {}).values():
            fc = site.get("forecast")
            if not fc:
                continue
            for k, value in enumerate(fc.get("carbon", [])):
                if value is not None:
                    carbon[int(fc["start"]) + k * SLOT_SECONDS] = float(value)
    return carbon


def now_utc() -> datetime:
    return datetime.now(UTC)
