"""What the Beckn endpoint and the daemon share, in ``<state_dir>/beckn/beckn.sqlite3``:
contracts (quotes, commitments, the activation each implies), the callback outbox, suspended
jobs and the power samples delivery is proved with. Each process opens its own connection; WAL
lets the daemon and the endpoint run (and crash) independently."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slurm_flex.grid.series import SLOT_SECONDS

SCHEMA = """
CREATE TABLE IF NOT EXISTS contracts (
    id TEXT PRIMARY KEY,              -- our contract id (assigned at select; kept after confirm)
    transaction_id TEXT NOT NULL,
    counterparty TEXT NOT NULL,       -- subscriber id of the buyer (the grid operator)
    callback_uri TEXT NOT NULL,       -- the counterparty's registered URI
    status TEXT NOT NULL,             -- DRAFT, ACTIVE, CANCELLED, COMPLETE
    window_start INTEGER NOT NULL,    -- epoch of the first interval
    interval_s INTEGER NOT NULL,      -- interval length (PT30M: 1800)
    requested TEXT NOT NULL,          -- JSON kW per slot
    offered TEXT NOT NULL,            -- JSON kW per slot (CAPACITY_OFFERED)
    baseline TEXT NOT NULL,           -- JSON kW per slot: the plan without the order
    pending_cap TEXT NOT NULL,        -- JSON kW per slot: ceiling on planned flexible work
    suspend TEXT NOT NULL,            -- JSON job ids to suspend for the window
    price REAL NOT NULL,
    penalty REAL NOT NULL,
    currency TEXT NOT NULL,
    baseline_method TEXT NOT NULL,    -- JSON, the buyer's named method (e.g. bestOf 5 outOf 10)
    quote_expires REAL NOT NULL,
    reason TEXT NOT NULL,             -- why less than requested, or ''
    doc TEXT NOT NULL,                -- the contract as last sent
    final_report_sent INTEGER NOT NULL DEFAULT 0,
    role TEXT NOT NULL DEFAULT 'bpp', -- bpp: we answered the buyer; bap: we answered a utility's need
    direction TEXT NOT NULL DEFAULT 'shed', -- shed (PRICE >= 0: draw less) or absorb (PRICE < 0: draw more)
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS contracts_tx ON contracts (counterparty, transaction_id);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    url TEXT NOT NULL,
    action TEXT NOT NULL,
    message_id TEXT NOT NULL,
    body BLOB NOT NULL,
    request_signature TEXT,           -- solicited callbacks sign it in (4-line form)
    sent_signature TEXT,              -- what we signed it with (a 4-line answer names it)
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    give_up_at REAL NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',  -- pending, sent, failed
    last_error TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS suspensions (
    contract_id TEXT NOT NULL,
    job_id TEXT NOT NULL,
    suspended_at REAL NOT NULL,
    resumed_at REAL,
    end_at REAL,                      -- the job's expected end when it was suspended
    how TEXT NOT NULL DEFAULT 'suspend',
    PRIMARY KEY (contract_id, job_id)
);
CREATE TABLE IF NOT EXISTS pulls (
    contract_id TEXT NOT NULL,        -- the absorb contract the job was pulled forward for
    job_id TEXT NOT NULL,
    pulled_at REAL NOT NULL,          -- when it was released to start (a window opening may be ahead)
    kw REAL NOT NULL,                 -- its planned power (the power model's)
    reason TEXT NOT NULL,
    PRIMARY KEY (contract_id, job_id)
);
CREATE TABLE IF NOT EXISTS usage (
    ts REAL NOT NULL,
    kw REAL NOT NULL,
    basis TEXT NOT NULL              -- measured or modelled
);
CREATE INDEX IF NOT EXISTS usage_ts ON usage (ts);
CREATE TABLE IF NOT EXISTS inbox (
    received REAL NOT NULL,
    sender TEXT NOT NULL,
    action TEXT NOT NULL,
    transaction_id TEXT NOT NULL,
    body TEXT NOT NULL
);
"""


# Columns added to ``contracts`` after its first release: (name, declaration) for ALTER TABLE.
_ADDED_COLUMNS = (("direction", "TEXT NOT NULL DEFAULT 'shed'"),)

SHED = "shed"
ABSORB = "absorb"


def store_path(state_dir: Path) -> Path:
    return state_dir / "beckn" / "beckn.sqlite3"


@dataclass(frozen=True)
class Contract:
    id: str
    transaction_id: str
    counterparty: str
    callback_uri: str
    status: str
    window_start: int
    interval_s: int
    requested: tuple[float, ...]
    offered: tuple[float, ...]
    baseline: tuple[float, ...]
    pending_cap: tuple[float, ...]
    suspend: tuple[str, ...]
    price: float
    penalty: float
    currency: str
    baseline_method: dict[str, Any]
    quote_expires: float
    reason: str
    doc: dict[str, Any]
    final_report_sent: bool = False
    role: str = "bpp"
    # SHED (the buyer pays for drawing less: PRICE >= 0) or ABSORB (for drawing more: PRICE < 0)
    direction: str = SHED

    @property
    def window_end(self) -> int:
        return self.window_start + self.interval_s * len(self.offered)

    def committed_per_slot(self) -> list[float]:
        """The most committed in each half-hour of the window (its intervals may be shorter),
        aligned with ``baseline``."""
        committed = [0.0] * len(self.baseline)
        slot0 = self.window_start - self.window_start % SLOT_SECONDS
        for i, kw in enumerate(self.offered):
            k = (self.window_start + i * self.interval_s - slot0) // SLOT_SECONDS
            if 0 <= k < len(committed):
                committed[k] = max(committed[k], kw)
        return committed


@dataclass(frozen=True)
class OutboxItem:
    id: int
    url: str
    action: str
    message_id: str
    body: bytes
    request_signature: str | None
    attempts: int
    give_up_at: float


_JSON = ("requested", "offered", "baseline", "pending_cap", "suspend", "baseline_method", "doc")


class BecknStore:
    def __init__(self, state_dir: Path) -> None:
        path = store_path(state_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA busy_timeout=30000")
        self.db.executescript(SCHEMA)
        # A store made by an earlier version lacks the newer columns (CREATE IF NOT EXISTS
        # leaves its table as it was); old rows get the defaults (shed: all there was then).
        have = {r[1] for r in self.db.execute("PRAGMA table_info(contracts)")}
        for name, declaration in _ADDED_COLUMNS:
            if name not in have:
                self.db.execute(f"ALTER TABLE contracts ADD COLUMN {name} {declaration}")
        self._lock = threading.RLock()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise

    # -- contracts ---------------------------------------------------------------------------
    def put_contract(self, c: Contract) -> None:
        now = time.time()
        row = {
            **{k: getattr(c, k) for k in Contract.__dataclass_fields__},
            **{k: json.dumps(getattr(c, k)) for k in _JSON},
            "final_report_sent": int(c.final_report_sent),
        }
        cols = ", ".join(row)
        marks = ", ".join(f":{k}" for k in row)
        updates = ", ".join(f"{k} = excluded.{k}" for k in row if k != "id")
        with self._tx() as db:
            db.execute(
                f"INSERT INTO contracts ({cols}, created, updated) VALUES ({marks}, :now, :now) "
                f"ON CONFLICT (id) DO UPDATE SET {updates}, updated = :now",
                {**row, "now": now},
            )

    def _contract(self, row: sqlite3.Row | tuple[Any, ...], names: Sequence[str]) -> Contract:
        d = dict(zip(names, row, strict=True))
        for k in _JSON:
            d[k] = json.loads(d[k])
            if isinstance(d[k], list):
                d[k] = tuple(d[k])
        d["final_report_sent"] = bool(d["final_report_sent"])
        d.pop("created", None)
        d.pop("updated", None)
        return Contract(**d)

    def _select(self, where: str, args: Sequence[Any]) -> list[Contract]:
        with self._lock:
            cur = self.db.execute(f"SELECT * FROM contracts WHERE {where}", tuple(args))
            names = [c[0] for c in cur.description]
            return [self._contract(r, names) for r in cur.fetchall()]

    def contract(self, contract_id: str) -> Contract | None:
        found = self._select("id = ?", (contract_id,))
        return found[0] if found else None

    def by_transaction(self, counterparty: str, transaction_id: str) -> Contract | None:
        found = self._select(
            "counterparty = ? AND transaction_id = ? ORDER BY updated DESC", (counterparty, transaction_id)
        )
        return found[0] if found else None

    def active(self, now: float) -> list[Contract]:
        """Contracts in force or still owing a final report (ACTIVE, or ended and not reported)."""
        return self._select("status = 'ACTIVE' OR (status IN ('CANCELLED', 'COMPLETE') AND final_report_sent = 0)", ())

    # -- outbox ------------------------------------------------------------------------------
    def enqueue(
        self, url: str, action: str, message_id: str, body: bytes, request_signature: str | None, give_up_at: float
    ) -> int:
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO outbox (url, action, message_id, body, request_signature, next_at, give_up_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (url, action, message_id, body, request_signature, time.time(), give_up_at),
            )
            return int(cur.lastrowid or 0)

    def due(self, now: float, limit: int = 20) -> list[OutboxItem]:
        with self._lock:
            rows = self.db.execute(
                "SELECT id, url, action, message_id, body, request_signature, attempts, give_up_at FROM outbox "
                "WHERE status = 'pending' AND next_at <= ? ORDER BY id LIMIT ?",
                (now, limit),
            ).fetchall()
        return [OutboxItem(*r) for r in rows]

    def sent(self, item_id: int, signature: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE outbox SET status = 'sent', attempts = attempts + 1, sent_signature = ? WHERE id = ?",
                (signature, item_id),
            )

    def our_signature(self, message_id: str) -> str | None:
        """The signature of the request we sent with this message id (to check a 4-line answer)."""
        with self._lock:
            row = self.db.execute(
                "SELECT sent_signature FROM outbox WHERE message_id = ? AND action NOT LIKE 'on\\_%' ESCAPE '\\' "
                "AND sent_signature IS NOT NULL ORDER BY id DESC LIMIT 1",
                (message_id,),
            ).fetchone()
        return None if row is None else str(row[0])

    def retry(self, item_id: int, next_at: float, error: str, give_up: bool) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE outbox SET attempts = attempts + 1, next_at = ?, last_error = ?, status = ? WHERE id = ?",
                (next_at, error[:500], "failed" if give_up else "pending", item_id),
            )

    def outbox_rows(self) -> list[dict[str, Any]]:
        with self._lock:
            cur = self.db.execute("SELECT id, url, action, message_id, attempts, status, last_error FROM outbox")
            names = [c[0] for c in cur.description]
            return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    # -- suspensions and usage (written by the daemon) -----------------------------------------
    def suspended(self, contract_id: str | None = None) -> list[tuple[str, str, float, float | None, str]]:
        with self._lock:
            sql = "SELECT contract_id, job_id, suspended_at, resumed_at, how FROM suspensions"
            args: tuple[Any, ...] = ()
            if contract_id is not None:
                sql += " WHERE contract_id = ?"
                args = (contract_id,)
            return list(self.db.execute(sql, args).fetchall())

    def mark_suspended(self, contract_id: str, job_id: str, at: float, end_at: float | None, how: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO suspensions (contract_id, job_id, suspended_at, end_at, how) "
                "VALUES (?, ?, ?, ?, ?)",
                (contract_id, job_id, at, end_at, how),
            )

    def open_suspensions(self) -> list[tuple[str, str, float, float | None]]:
        """(contract, job, suspended_at, end_at) of jobs suspended and not yet resumed."""
        with self._lock:
            return list(
                self.db.execute(
                    "SELECT contract_id, job_id, suspended_at, end_at FROM suspensions WHERE resumed_at IS NULL"
                ).fetchall()
            )

    def mark_resumed(self, contract_id: str, job_id: str, at: float) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE suspensions SET resumed_at = ? WHERE contract_id = ? AND job_id = ?", (at, contract_id, job_id)
            )

    def mark_pulled(self, contract_id: str, job_id: str, at: float, kw: float, reason: str) -> None:
        """A pending job released ahead of its plan for an absorb contract (the first time only)."""
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO pulls (contract_id, job_id, pulled_at, kw, reason) VALUES (?, ?, ?, ?, ?)",
                (contract_id, job_id, at, kw, reason),
            )

    def forget_pulls_after(self, now: float) -> None:
        """Drop the pulls to moments still ahead (a window not open yet): the cycle decides them again."""
        with self._tx() as db:
            db.execute("DELETE FROM pulls WHERE pulled_at > ?", (now,))

    def pulled(self, contract_id: str | None = None) -> list[tuple[str, str, float, float, str]]:
        """(contract, job, pulled_at, kW, reason) of the jobs pulled forward, oldest first."""
        with self._lock:
            sql = "SELECT contract_id, job_id, pulled_at, kw, reason FROM pulls"
            args: tuple[Any, ...] = ()
            if contract_id is not None:
                sql += " WHERE contract_id = ?"
                args = (contract_id,)
            return list(self.db.execute(sql + " ORDER BY pulled_at, job_id", args).fetchall())

    def record_usage(self, ts: float, kw: float, basis: str) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO usage (ts, kw, basis) VALUES (?, ?, ?)", (ts, kw, basis))

    def usage(self, start: float, end: float) -> list[tuple[float, float, str]]:
        with self._lock:
            return list(
                self.db.execute("SELECT ts, kw, basis FROM usage WHERE ts >= ? AND ts < ? ORDER BY ts", (start, end))
            )

    def record_request(self, url: str, action: str, message_id: str, body: bytes, signature: str) -> None:
        """A request we sent directly (the aggregator's): kept so the 4-line signature of its
        callback can be checked against it."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO outbox (url, action, message_id, body, request_signature, sent_signature, attempts, "
                "next_at, give_up_at, status) VALUES (?, ?, ?, ?, NULL, ?, 1, 0, 0, 'sent')",
                (url, action, message_id, body, signature),
            )

    def inbox_find(self, action: str, message_id: str) -> dict[str, Any] | None:
        """The callback ``action`` answering our request ``message_id``, once it has arrived."""
        with self._lock:
            rows = self.db.execute("SELECT body FROM inbox WHERE action = ? ORDER BY received", (action,)).fetchall()
        for (body,) in rows:
            doc: dict[str, Any] = json.loads(body)
            if doc.get("context", {}).get("messageId") == message_id:
                return doc
        return None

    def record_inbox(self, sender: str, action: str, transaction_id: str, body: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO inbox (received, sender, action, transaction_id, body) VALUES (?, ?, ?, ?, ?)",
                (time.time(), sender, action, transaction_id, body),
            )
