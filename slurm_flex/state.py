"""The daemon's state store: one SQLite file in the state dir.

It holds what slurm-flex believes about each flexible job (so it can tell its own changes from
an admin's), every start-time change it made or meant to make (written *before* Slurm is asked,
so a crash mid-batch leaves a trace), and one row per cycle for ``slurmflex status``.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from itertools import pairwise
from operator import attrgetter
from typing import Any

from slurm_flex.errors import StateError
from slurm_flex.planner.runtime import RuntimeHistory
from slurm_flex.sqlitestore import SqliteStore

SCHEMA_VERSION = 6

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    display_id TEXT NOT NULL,
    user TEXT NOT NULL,
    partition TEXT NOT NULL,
    first_seen INTEGER NOT NULL,
    last_seen INTEGER NOT NULL,
    deadline INTEGER,
    latest_start INTEGER,
    earliest INTEGER,
    power_w REAL,
    energy_kwh REAL,
    expected_begin INTEGER,
    applied_begin INTEGER,
    planned_start INTEGER,
    status TEXT NOT NULL,
    reason TEXT NOT NULL,
    baseline_carbon_g REAL,
    planned_carbon_g REAL,
    mean_ci_baseline REAL,
    mean_ci_planned REAL,
    updated_at INTEGER NOT NULL,
    baseline_cost_gbp REAL,
    planned_cost_gbp REAL,
    priority_before INTEGER
);
CREATE TABLE IF NOT EXISTS actions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    cycle_id INTEGER,
    ts INTEGER NOT NULL,
    job_id TEXT NOT NULL,
    old_begin INTEGER,
    new_begin INTEGER,
    kind TEXT NOT NULL,
    reason TEXT NOT NULL,
    outcome TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS actions_job ON actions(job_id);
CREATE TABLE IF NOT EXISTS cycles (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at REAL NOT NULL,
    duration_s REAL,
    mode TEXT NOT NULL,
    ok INTEGER NOT NULL DEFAULT 0,
    jobs_seen INTEGER NOT NULL DEFAULT 0,
    flexible INTEGER NOT NULL DEFAULT 0,
    deferred INTEGER NOT NULL DEFAULT 0,
    updates INTEGER NOT NULL DEFAULT 0,
    commands INTEGER NOT NULL DEFAULT 0,
    errors INTEGER NOT NULL DEFAULT 0,
    forecast_source TEXT NOT NULL DEFAULT '',
    message TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS controls (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts INTEGER NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('job', 'user', 'all')),
    target TEXT NOT NULL,
    action TEXT NOT NULL CHECK (action IN ('exempt')),
    by TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    active INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    ts INTEGER NOT NULL,
    by TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS load (
    site TEXT NOT NULL,
    ts REAL NOT NULL,
    busy_nodes REAL NOT NULL,
    PRIMARY KEY (site, ts)
);
-- Jobs seen running (schema v6): when one is no longer seen, its run time goes to runtimes,
-- the history run-time prediction (planner.runtime) learns from.
CREATE TABLE IF NOT EXISTS running (
    job_id TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    started REAL NOT NULL,
    last_seen REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS runtimes (
    user TEXT NOT NULL,
    ended REAL NOT NULL,
    seconds REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS runtimes_user ON runtimes(user, ended);
"""

# Job statuses: the ones with a pending Slurm job first.
# "shaped": held back by load shaping until the next cycle (planner.shaping).
PENDING_STATUSES = ("deferred", "shaped", "released", "runs-now", "late", "manual", "held", "waiting")
FINAL_STATUSES = ("started", "gone", "unmanaged")
# The setting holding each site's signal summary of the last cycle (JSON), for status.
SIGNALS_SETTING = "signals"
# The setting holding each site's load-shaping step of the last cycle (JSON), for status.
SHAPING_SETTING = "shaping"


@dataclass(frozen=True)
class JobRecord:
    job_id: str
    display_id: str
    user: str
    partition: str
    first_seen: int
    last_seen: int
    deadline: int | None
    latest_start: int | None
    earliest: int | None
    power_w: float | None
    energy_kwh: float | None
    expected_begin: int | None
    applied_begin: int | None
    planned_start: int | None
    status: str
    reason: str
    baseline_carbon_g: float | None
    planned_carbon_g: float | None
    mean_ci_baseline: float | None
    mean_ci_planned: float | None
    updated_at: int
    baseline_cost_gbp: float | None = None
    planned_cost_gbp: float | None = None
    # Set while slurm-flex holds the job at the head of the queue: its priority before that.
    priority_before: int | None = None

    @property
    def carbon_saved_g(self) -> float:
        if self.baseline_carbon_g is None or self.planned_carbon_g is None:
            return 0.0
        return self.baseline_carbon_g - self.planned_carbon_g

    @property
    def cost_saved_gbp(self) -> float:
        if self.baseline_cost_gbp is None or self.planned_cost_gbp is None:
            return 0.0
        return self.baseline_cost_gbp - self.planned_cost_gbp

    def evolve(self, **changes: Any) -> JobRecord:
        return replace(self, **changes)


@dataclass(frozen=True)
class CycleRecord:
    id: int
    started_at: float
    duration_s: float | None
    mode: str
    ok: bool
    jobs_seen: int
    flexible: int
    deferred: int
    updates: int
    commands: int
    errors: int
    forecast_source: str
    message: str


@dataclass(frozen=True)
class ActionRecord:
    id: int
    cycle_id: int | None
    ts: int
    job_id: str
    old_begin: int | None
    new_begin: int | None
    kind: str
    reason: str
    outcome: str


@dataclass(frozen=True)
class Control:
    """An admin's instruction: leave a job, a user's jobs or everything alone (and hand back
    whatever slurm-flex deferred), until resumed."""

    id: int
    ts: int
    kind: str  # job | user | all
    target: str  # job id, user name, or "*"
    action: str  # exempt
    by: str
    reason: str
    active: bool


@dataclass(frozen=True)
class Exemptions:
    """The active controls, in the form decisions need."""

    everything: bool = False
    jobs: frozenset[str] = frozenset()
    users: frozenset[str] = frozenset()

    def covers(self, job_id: str, user: str) -> bool:
        return self.everything or job_id in self.jobs or user in self.users


_JOB_COLUMNS = tuple(f.name for f in fields(JobRecord))
_job_row = attrgetter(*_JOB_COLUMNS)


class StateStore(SqliteStore):
    """SQLite-backed store; one connection, WAL journal, short transactions."""

    KIND = "state store"
    SCHEMA = _SCHEMA
    SCHEMA_VERSION = SCHEMA_VERSION
    ROW_FACTORY = sqlite3.Row

    def _migrate(self, version: int) -> None:
        """Bring an older store up to date (new tables come from the schema script)."""
        added = {"baseline_cost_gbp": "REAL", "planned_cost_gbp": "REAL", "priority_before": "INTEGER"}
        if 0 < version < SCHEMA_VERSION:
            columns = {r[1] for r in self._db.execute("PRAGMA table_info(jobs)")}
            for name, kind in added.items():
                if name not in columns:
                    self._db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")

    def jobs(self, statuses: Iterable[str] | None = None) -> dict[str, JobRecord]:
        if statuses is None:
            rows = self._query("SELECT * FROM jobs")
        else:
            wanted = tuple(statuses)
            rows = self._query(f"SELECT * FROM jobs WHERE status IN ({','.join('?' * len(wanted))})", wanted)
        return {r["job_id"]: JobRecord(**{c: r[c] for c in _JOB_COLUMNS}) for r in rows}

    def save_jobs(self, records: Iterable[JobRecord]) -> None:
        cols = ",".join(_JOB_COLUMNS)
        marks = ",".join("?" * len(_JOB_COLUMNS))
        with self.transaction() as db:
            db.executemany(
                f"INSERT OR REPLACE INTO jobs ({cols}) VALUES ({marks})",
                [_job_row(r) for r in records],
            )

    # -- actions ----------------------------------------------------------------------------
    def record_intents(
        self, cycle_id: int | None, intents: Iterable[tuple[str, int | None, int | None, str, str]]
    ) -> list[int]:
        """Write (job_id, old_begin, new_begin, kind, reason) as 'pending' before acting."""
        now = int(time.time())
        ids = []
        with self.transaction() as db:
            for job_id, old, new, kind, reason in intents:
                cur = db.execute(
                    "INSERT INTO actions (cycle_id, ts, job_id, old_begin, new_begin, kind, reason, outcome) "
                    "VALUES (?,?,?,?,?,?,?, 'pending')",
                    (cycle_id, now, job_id, old, new, kind, reason),
                )
                ids.append(int(cur.lastrowid or 0))
        return ids

    def settle_intents(self, outcomes: Mapping[int, str]) -> None:
        with self.transaction() as db:
            db.executemany("UPDATE actions SET outcome=? WHERE id=?", [(o, i) for i, o in outcomes.items()])

    def pending_intents(self) -> list[ActionRecord]:
        return [
            ActionRecord(**dict(r)) for r in self._query("SELECT * FROM actions WHERE outcome='pending' ORDER BY id")
        ]

    def actions(self, job_id: str | None = None, limit: int = 1000) -> list[ActionRecord]:
        if job_id is None:
            rows = self._query("SELECT * FROM actions ORDER BY id DESC LIMIT ?", (limit,))
        else:
            rows = self._query("SELECT * FROM actions WHERE job_id=? ORDER BY id DESC LIMIT ?", (job_id, limit))
        return [ActionRecord(**dict(r)) for r in rows]

    # -- cycles -----------------------------------------------------------------------------
    def start_cycle(self, started_at: float, mode: str) -> int:
        with self.transaction() as db:
            cur = db.execute("INSERT INTO cycles (started_at, mode) VALUES (?, ?)", (started_at, mode))
            return int(cur.lastrowid or 0)

    def finish_cycle(self, cycle_id: int, **values: Any) -> None:
        allowed = {f.name for f in fields(CycleRecord)} - {"id", "started_at", "mode"}
        unknown = set(values) - allowed
        if unknown:
            raise StateError(f"unknown cycle fields {sorted(unknown)}")
        assignments = ",".join(f"{k}=?" for k in values)
        with self.transaction() as db:
            db.execute(f"UPDATE cycles SET {assignments} WHERE id=?", (*values.values(), cycle_id))

    def last_cycles(self, limit: int = 1) -> list[CycleRecord]:
        rows = self._query("SELECT * FROM cycles ORDER BY id DESC LIMIT ?", (limit,))
        return [CycleRecord(**{**dict(r), "ok": bool(r["ok"])}) for r in rows]

    def cycle_count(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM cycles")[0][0])

    # -- admin controls and runtime settings -----------------------------------------------------
    def add_control(self, kind: str, target: str, by: str, reason: str = "") -> int:
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO controls (ts, kind, target, action, by, reason) VALUES (?, ?, ?, 'exempt', ?, ?)",
                (int(time.time()), kind, target, by, reason),
            )
            return int(cur.lastrowid or 0)

    def clear_controls(self, kind: str, target: str | None = None) -> int:
        """Deactivate exemptions of ``kind`` (for ``target``, or all of that kind)."""
        with self.transaction() as db:
            if target is None:
                cur = db.execute("UPDATE controls SET active=0 WHERE active=1 AND kind=?", (kind,))
            else:
                cur = db.execute("UPDATE controls SET active=0 WHERE active=1 AND kind=? AND target=?", (kind, target))
            return cur.rowcount

    def controls(self, active_only: bool = True) -> list[Control]:
        sql = "SELECT * FROM controls" + (" WHERE active=1" if active_only else "") + " ORDER BY id"
        return [Control(**{**dict(r), "active": bool(r["active"])}) for r in self._query(sql)]

    def exemptions(self) -> Exemptions:
        active = self.controls()
        return Exemptions(
            everything=any(c.kind == "all" for c in active),
            jobs=frozenset(c.target for c in active if c.kind == "job"),
            users=frozenset(c.target for c in active if c.kind == "user"),
        )

    def record_load(self, site: str, ts: float, busy_nodes: float, keep_seconds: float = 8 * 86400) -> None:
        """One cycle's busy nodes of a site (the history the arrival reserve and load shaping's
        coming work are built from: the last day's and the last week's)."""
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO load VALUES (?, ?, ?)", (site, ts, busy_nodes))
            db.execute("DELETE FROM load WHERE site = ? AND ts < ?", (site, ts - keep_seconds))

    def mean_load(self, site: str, since: float) -> float | None:
        """Mean busy nodes of a site since ``since``, weighting each sample by the time until
        the next one (cycles need not be evenly spaced); None without samples."""
        rows = self._query("SELECT ts, busy_nodes FROM load WHERE site = ? AND ts >= ? ORDER BY ts", (site, since))
        if not rows:
            return None
        if len(rows) == 1:
            return float(rows[0][1])
        spans = [float(b[0]) - float(a[0]) for a, b in pairwise(rows)]
        total = sum(spans)
        if total <= 0:
            return float(rows[-1][1])
        return sum(float(r[1]) * w for r, w in zip(rows[:-1], spans, strict=True)) / total

    def observe_running(self, running: Iterable[tuple[str, str, float]], now: float, keep: int = 4) -> None:
        """One cycle's running jobs (job id, user, start): jobs seen before and gone now have
        ended, their run time (start to last seen) is kept, the last ``keep`` per user."""
        seen = {job_id: (user, started) for job_id, user, started in running}
        with self.transaction() as db:
            for row in db.execute("SELECT job_id, user, started, last_seen FROM running").fetchall():
                if row[0] not in seen:
                    db.execute("INSERT INTO runtimes VALUES (?, ?, ?)", (row[1], row[3], row[3] - row[2]))
                    db.execute("DELETE FROM running WHERE job_id = ?", (row[0],))
                    db.execute(
                        "DELETE FROM runtimes WHERE user = ? AND rowid NOT IN "
                        "(SELECT rowid FROM runtimes WHERE user = ? ORDER BY ended DESC LIMIT ?)",
                        (row[1], row[1], keep),
                    )
            db.executemany(
                "INSERT INTO running VALUES (?, ?, ?, ?) "
                "ON CONFLICT(job_id) DO UPDATE SET last_seen = excluded.last_seen",
                [(job_id, user, started, now) for job_id, (user, started) in seen.items()],
            )

    def runtime_history(self) -> RuntimeHistory:
        """Finished run times per user, oldest first, for planner.runtime's prediction."""
        history = RuntimeHistory()
        for row in self._query("SELECT user, seconds FROM runtimes ORDER BY ended"):
            history.add(str(row[0]), float(row[1]))
        return history

    def set_setting(self, key: str, value: str | None, by: str) -> None:
        with self.transaction() as db:
            if value is None:
                db.execute("DELETE FROM settings WHERE key=?", (key,))
            else:
                db.execute(
                    "INSERT OR REPLACE INTO settings (key, value, ts, by) VALUES (?, ?, ?, ?)",
                    (key, value, int(time.time()), by),
                )

    def setting(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM settings WHERE key=?", (key,))
        return str(rows[0][0]) if rows else None
