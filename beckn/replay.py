"""Replay protection and idempotency, kept in the state dir (sqlite, so it survives restarts).

Each accepted message is remembered by (sender, message id) with the BLAKE2b digest of its body
and the answer it got. The same (sender, message id, digest) again is a retry: it gets the
same answer and is not processed again (beckn-onix would process it twice, and overwrites
duplicate ids). The same (sender, message id) with another body is refused. Entries are kept
at least until the signature that carried them expires (plus skew), so nothing inside a
signature's validity window can be replayed, and for ``retain_seconds`` for idempotency.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from slurm_flex.beckn.errors import ReplayError

SCHEMA = """
CREATE TABLE IF NOT EXISTS seen (
    sender TEXT NOT NULL,
    message_id TEXT NOT NULL,
    digest TEXT NOT NULL,
    action TEXT NOT NULL,
    keep_until REAL NOT NULL,
    status INTEGER,
    response BLOB,
    PRIMARY KEY (sender, message_id)
);
"""


@dataclass(frozen=True)
class Seen:
    status: int | None
    response: bytes | None


class ReplayCache:
    def __init__(self, path: Path, retain_seconds: int = 7 * 86400) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        # WAL with synchronous=NORMAL survives a crash of the process (what a replay cache must
        # survive); only a power cut can lose the last entries, whose signatures expire anyway.
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        self.retain_seconds = retain_seconds
        self._lock = threading.Lock()

    def claim(self, sender: str, message_id: str, digest: str, action: str, expires: float, now: float) -> Seen | None:
        """Record a new message (returns None: process it) or recognise a retry (returns what it
        was answered). Raises ReplayError for a reused message id with another body."""
        with self._lock:
            row = self.db.execute(
                "SELECT digest, status, response FROM seen WHERE sender = ? AND message_id = ?", (sender, message_id)
            ).fetchone()
            if row is not None:
                if row[0] != digest:
                    raise ReplayError(
                        f"message id {message_id} from {sender} was already used for another message",
                        code="DUPLICATE_MESSAGE_ID",
                    )
                return Seen(row[1], row[2])
            keep = max(expires, now + self.retain_seconds)
            self.db.execute(
                "INSERT INTO seen (sender, message_id, digest, action, keep_until) VALUES (?, ?, ?, ?, ?)",
                (sender, message_id, digest, action, keep),
            )
            return None

    def answer(self, sender: str, message_id: str, status: int, response: bytes) -> None:
        with self._lock:
            self.db.execute(
                "UPDATE seen SET status = ?, response = ? WHERE sender = ? AND message_id = ?",
                (status, response, sender, message_id),
            )

    def forget(self, sender: str, message_id: str) -> None:
        """A message refused before it changed anything may be sent again, corrected."""
        with self._lock:
            self.db.execute("DELETE FROM seen WHERE sender = ? AND message_id = ?", (sender, message_id))

    def prune(self, now: float) -> int:
        with self._lock:
            return self.db.execute("DELETE FROM seen WHERE keep_until < ?", (now,)).rowcount
