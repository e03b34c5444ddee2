"""Every grid-signal answer as issued, kept in SQLite in the state dir.

Three uses: the last good forecast when a provider is down, history for the profiles that
extend a forecast past the provider's horizon, and a record of forecasts as issued so their
error can be measured against actuals later (``slurmflex forecast --accuracy``). Each fetch
attempt is logged too, which is how the rate limits and "at most one call per provider per
cycle" are kept.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from slurm_flex.grid.readings import Point, Quantity, Reading
from slurm_flex.sqlitestore import SqliteStore

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT NOT NULL,
    quantity TEXT NOT NULL,
    issued_at INTEGER NOT NULL,
    fetched_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS readings_by_source ON readings (source, fetched_at);
CREATE TABLE IF NOT EXISTS points (
    reading_id INTEGER NOT NULL REFERENCES readings (id) ON DELETE CASCADE,
    start INTEGER NOT NULL,
    value REAL NOT NULL,
    kind TEXT NOT NULL,
    PRIMARY KEY (reading_id, start)
);
CREATE INDEX IF NOT EXISTS points_by_start ON points (start);
CREATE TABLE IF NOT EXISTS fetches (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT NOT NULL,
    what TEXT NOT NULL,
    ts INTEGER NOT NULL,
    ok INTEGER NOT NULL,
    seconds REAL NOT NULL,
    error TEXT NOT NULL DEFAULT '',
    retry_after INTEGER
);
CREATE INDEX IF NOT EXISTS fetches_by_source ON fetches (source, what, ts);
"""


@dataclass(frozen=True)
class FetchRecord:
    source: str
    what: str  # "forecast" or "history"
    ts: int
    ok: bool
    seconds: float
    error: str
    retry_after: int | None  # epoch before which the provider asked not to be called again


@dataclass(frozen=True)
class StoredReading:
    reading: Reading
    fetched_at: int


class GridCache(SqliteStore):
    """The grid-signal store. One per state dir; safe to open from the daemon and the CLI at
    once (WAL, short transactions)."""

    KIND = "grid cache"
    SCHEMA = _SCHEMA
    SCHEMA_VERSION = SCHEMA_VERSION
    PRAGMAS = ("journal_mode=WAL", "foreign_keys=ON")

    # -- readings -----------------------------------------------------------------------------
    def store(self, reading: Reading, fetched_at: int | None = None) -> None:
        fetched = int(time.time()) if fetched_at is None else fetched_at
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO readings (source, quantity, issued_at, fetched_at) VALUES (?,?,?,?)",
                (reading.source, reading.quantity, reading.issued_at, fetched),
            )
            rid = cur.lastrowid
            db.executemany(
                "INSERT INTO points (reading_id, start, value, kind) VALUES (?,?,?,?)",
                [(rid, p.start, p.value, p.kind) for p in reading.points],
            )

    def latest(self, source: str) -> StoredReading | None:
        """The most recently fetched reading from ``source``."""
        rows = self._query(
            "SELECT id, quantity, issued_at, fetched_at FROM readings WHERE source=? ORDER BY fetched_at DESC, id DESC "
            "LIMIT 1",
            (source,),
        )
        if not rows:
            return None
        rid, quantity, issued, fetched = rows[0]
        return StoredReading(self._reading(rid, source, quantity, issued), int(fetched))

    def _reading(self, rid: int, source: str, quantity: str, issued: int) -> Reading:
        rows = self._query("SELECT start, value, kind FROM points WHERE reading_id=? ORDER BY start", (rid,))
        points = tuple(Point(int(s), float(v), "actual" if k == "actual" else "forecast") for s, v, k in rows)
        q: Quantity = "price" if quantity == "price" else "carbon"
        return Reading(q, points, source, int(issued))

    def history(self, source: str, start: int, end: int) -> dict[int, float]:
        """Best known value per slot in [start, end): an actual where one was recorded, else the
        forecast issued last before the slot began (the most informed one), else the latest."""
        rows = self._query(
            "SELECT p.start, p.value, p.kind, r.issued_at FROM points p JOIN readings r ON r.id = p.reading_id "
            "WHERE r.source=? AND p.start>=? AND p.start<?",
            (source, start, end),
        )
        best: dict[int, tuple[int, int, float]] = {}  # slot -> (rank, issued, value); higher wins
        for s, v, k, issued in rows:
            slot, value, issued_at = int(s), float(v), int(issued)
            rank = 2 if k == "actual" else (1 if issued_at <= slot else 0)
            key = (rank, issued_at if rank else -issued_at)
            current = best.get(slot)
            if current is None or key > current[:2]:
                best[slot] = (key[0], key[1], value)
        return {slot: v for slot, (_, _, v) in sorted(best.items())}

    def actuals(self, source: str, start: int, end: int) -> dict[int, float]:
        """Actual (measured or settled) values per slot in [start, end), the latest recorded."""
        rows = self._query(
            "SELECT p.start, p.value FROM points p JOIN readings r ON r.id = p.reading_id "
            "WHERE r.source=? AND p.kind='actual' AND p.start>=? AND p.start<? ORDER BY r.fetched_at, r.id",
            (source, start, end),
        )
        return {int(slot): float(value) for slot, value in rows}

    def issued_forecasts(self, source: str, start: int, end: int) -> list[Reading]:
        """Every reading from ``source`` issued in [start, end), oldest first (for accuracy)."""
        rows = self._query(
            "SELECT id, quantity, issued_at FROM readings WHERE source=? AND issued_at>=? AND issued_at<? "
            "ORDER BY issued_at, id",
            (source, start, end),
        )
        return [self._reading(rid, source, quantity, issued) for rid, quantity, issued in rows]

    def prune(self, before: int) -> int:
        """Forget readings fetched before ``before``; returns how many went."""
        with self.transaction() as db:
            ids = [r[0] for r in db.execute("SELECT id FROM readings WHERE fetched_at<?", (before,))]
            db.executemany("DELETE FROM points WHERE reading_id=?", [(i,) for i in ids])
            db.execute("DELETE FROM readings WHERE fetched_at<?", (before,))
            db.execute("DELETE FROM fetches WHERE ts<?", (before,))
        return len(ids)

    # -- fetch log ----------------------------------------------------------------------------
    def record_fetch(
        self,
        source: str,
        what: str,
        ts: int,
        ok: bool,
        seconds: float,
        error: str = "",
        retry_after: int | None = None,
    ) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO fetches (source, what, ts, ok, seconds, error, retry_after) VALUES (?,?,?,?,?,?,?)",
                (source, what, ts, int(ok), seconds, error[:500], retry_after),
            )

    def last_fetch(self, source: str, what: str = "forecast", ok: bool | None = None) -> FetchRecord | None:
        cond = "" if ok is None else f" AND ok={int(ok)}"
        rows = self._query(
            f"SELECT source, what, ts, ok, seconds, error, retry_after FROM fetches WHERE source=? AND what=?{cond} "
            "ORDER BY ts DESC, id DESC LIMIT 1",
            (source, what),
        )
        if not rows:
            return None
        s, w, ts, ok_, secs, err, ra = rows[0]
        return FetchRecord(str(s), str(w), int(ts), bool(ok_), float(secs), str(err), None if ra is None else int(ra))
