"""Measured power as time series, next to the state store (``<state_dir>/power.sqlite3``).

Raw samples (what node agents push, what Slurm's energy plugins report) are kept for a short
time; they are folded into half-hour means per node and component, kept much longer. Per-job
energy attributed from node power accumulates in ``job_energy``; finished jobs' measured power
against their submit-time estimate gives the calibration factors the planner may use.

A separate file from the state store: many small sample writes must not queue behind the
cycle's job records, and the power history can be wiped without losing any decision.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from slurm_flex.grid.series import SLOT_SECONDS
from slurm_flex.power.sample import PowerSample
from slurm_flex.sqlitestore import SqliteStore

POWER_DB = "power.sqlite3"  # in the daemon's state_dir
SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    node TEXT NOT NULL, source TEXT NOT NULL, component TEXT NOT NULL, top_level INTEGER NOT NULL,
    at REAL NOT NULL, watts REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS samples_at ON samples (at);
CREATE INDEX IF NOT EXISTS samples_node_at ON samples (node, at);
CREATE TABLE IF NOT EXISTS halfhours (
    node TEXT NOT NULL, source TEXT NOT NULL, component TEXT NOT NULL, top_level INTEGER NOT NULL,
    slot INTEGER NOT NULL, mean_watts REAL NOT NULL, samples INTEGER NOT NULL,
    PRIMARY KEY (node, source, component, slot)
);
CREATE TABLE IF NOT EXISTS job_energy (
    job_id TEXT PRIMARY KEY, user TEXT NOT NULL, account TEXT NOT NULL, name TEXT NOT NULL,
    estimated_watts REAL, joules REAL NOT NULL, measured_seconds REAL NOT NULL,
    first_seen REAL NOT NULL, last_seen REAL NOT NULL, finished INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS calibration (
    kind TEXT NOT NULL, key TEXT NOT NULL, factor REAL NOT NULL, jobs INTEGER NOT NULL, updated REAL NOT NULL,
    PRIMARY KEY (kind, key)
);
"""


@dataclass(frozen=True)
class JobEnergy:
    job_id: str
    user: str
    account: str
    name: str
    estimated_watts: float | None
    joules: float
    measured_seconds: float
    first_seen: float
    last_seen: float
    finished: bool

    @property
    def mean_watts(self) -> float | None:
        return self.joules / self.measured_seconds if self.measured_seconds > 0 else None


@dataclass(frozen=True)
class EnergyIncrement:
    """Energy one running job drew since the previous cycle."""

    job_id: str
    user: str
    account: str
    name: str
    estimated_watts: float | None
    joules: float
    seconds: float


class PowerStore(SqliteStore):
    KIND = "power store"
    SCHEMA = _SCHEMA
    SCHEMA_VERSION = SCHEMA_VERSION

    # -- samples -------------------------------------------------------------------------------
    def add_samples(self, samples: Iterable[PowerSample]) -> int:
        rows = [(s.node, s.source, s.component, int(s.top_level), s.at, s.watts) for s in samples]
        if rows:
            with self.transaction() as db:
                db.executemany("INSERT INTO samples VALUES (?, ?, ?, ?, ?, ?)", rows)
        return len(rows)

    def latest_samples(self, since: float) -> list[PowerSample]:
        """The newest sample per (node, source, component) taken at or after ``since``."""
        rows = self._query(
            "SELECT node, source, component, top_level, MAX(at), watts FROM samples WHERE at >= ? "
            "GROUP BY node, source, component",
            (since,),
        )
        return [
            PowerSample(source=r[1], component=r[2], watts=r[5], at=r[4], node=r[0], top_level=bool(r[3])) for r in rows
        ]

    def fold(self, before: float) -> int:
        """Fold raw samples of half hours that ended before ``before`` into half-hour means and
        drop them; returns how many raw samples were folded."""
        cutoff = int(before) // SLOT_SECONDS * SLOT_SECONDS
        with self.transaction() as db:
            db.execute(
                f"""INSERT INTO halfhours (node, source, component, top_level, slot, mean_watts, samples)
                SELECT node, source, component, MAX(top_level), CAST(at / {SLOT_SECONDS} AS INTEGER) * {SLOT_SECONDS},
                       AVG(watts), COUNT(*)
                FROM samples WHERE at < ? GROUP BY 1, 2, 3, 5
                ON CONFLICT (node, source, component, slot) DO UPDATE SET
                    mean_watts = (mean_watts * samples + excluded.mean_watts * excluded.samples)
                                 / (samples + excluded.samples),
                    samples = samples + excluded.samples""",
                (cutoff,),
            )
            folded = db.execute("DELETE FROM samples WHERE at < ?", (cutoff,)).rowcount
        return int(folded)

    def prune(self, halfhours_before: float, jobs_before: float) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM halfhours WHERE slot < ?", (int(halfhours_before),))
            db.execute("DELETE FROM job_energy WHERE finished = 1 AND last_seen < ?", (jobs_before,))

    def halfhours(self, node: str | None, start: int, end: int) -> list[tuple[str, str, str, int, float]]:
        """(node, source, component, slot, mean watts) for slots in [start, end)."""
        sql = "SELECT node, source, component, slot, mean_watts FROM halfhours WHERE slot >= ? AND slot < ?"
        params: list[Any] = [start, end]
        if node is not None:
            sql += " AND node = ?"
            params.append(node)
        return [(r[0], r[1], r[2], int(r[3]), float(r[4])) for r in self._query(sql + " ORDER BY slot, node", params)]

    # -- per-job energy ------------------------------------------------------------------------
    def add_job_energy(self, increments: Iterable[EnergyIncrement], now: float) -> None:
        rows = [
            (i.job_id, i.user, i.account, i.name, i.estimated_watts, i.joules, i.seconds, now, now) for i in increments
        ]
        if not rows:
            return
        with self.transaction() as db:
            db.executemany(
                """INSERT INTO job_energy (job_id, user, account, name, estimated_watts, joules,
                       measured_seconds, first_seen, last_seen)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT (job_id) DO UPDATE SET joules = joules + excluded.joules,
                       measured_seconds = measured_seconds + excluded.measured_seconds,
                       estimated_watts = COALESCE(excluded.estimated_watts, estimated_watts),
                       last_seen = excluded.last_seen""",
                rows,
            )

    def open_jobs(self) -> set[str]:
        return {r[0] for r in self._query("SELECT job_id FROM job_energy WHERE finished = 0")}

    def finish_jobs(self, job_ids: Iterable[str]) -> list[JobEnergy]:
        """Mark jobs that stopped running as finished; returns their records."""
        ids = list(job_ids)
        if not ids:
            return []
        with self.transaction() as db:
            db.executemany("UPDATE job_energy SET finished = 1 WHERE job_id = ?", [(j,) for j in ids])
        marks = ",".join("?" * len(ids))
        return [_job(r) for r in self._query(f"SELECT * FROM job_energy WHERE job_id IN ({marks})", ids)]

    def job_energy(self, limit: int = 100, job_id: str | None = None) -> list[JobEnergy]:
        if job_id is not None:
            return [_job(r) for r in self._query("SELECT * FROM job_energy WHERE job_id = ?", (job_id,))]
        return [_job(r) for r in self._query("SELECT * FROM job_energy ORDER BY last_seen DESC LIMIT ?", (limit,))]

    # -- calibration ---------------------------------------------------------------------------
    def calibration(self) -> dict[tuple[str, str], tuple[float, int]]:
        return {
            (r[0], r[1]): (float(r[2]), int(r[3]))
            for r in self._query("SELECT kind, key, factor, jobs FROM calibration")
        }

    def save_calibration(self, factors: dict[tuple[str, str], tuple[float, int]], now: float) -> None:
        with self.transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO calibration VALUES (?, ?, ?, ?, ?)",
                [(kind, key, f, n, now) for (kind, key), (f, n) in factors.items()],
            )


def _job(r: tuple[Any, ...]) -> JobEnergy:
    return JobEnergy(
        job_id=r[0],
        user=r[1],
        account=r[2],
        name=r[3],
        estimated_watts=r[4],
        joules=float(r[5]),
        measured_seconds=float(r[6]),
        first_seen=float(r[7]),
        last_seen=float(r[8]),
        finished=bool(r[9]),
    )
