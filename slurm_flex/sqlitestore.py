"""The one SQLite adapter behind slurm-flex's stores (state, grid cache, power).

Each store is a file in the state dir with its own schema script and version: opened in WAL
mode with short ``BEGIN IMMEDIATE`` transactions so the daemon and the CLI can use it at once;
refused when a newer slurm-flex wrote it; every sqlite3 or filesystem error raised as a
:class:`~slurm_flex.errors.StateError` naming the store and its path.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

from slurm_flex.errors import StateError


class SqliteStore:
    """Subclasses set ``KIND`` (for messages), ``SCHEMA`` (CREATE ... IF NOT EXISTS script),
    ``SCHEMA_VERSION`` and ``PRAGMAS``, and may override :meth:`_migrate`."""

    KIND = "store"
    SCHEMA = ""
    SCHEMA_VERSION = 1
    PRAGMAS: tuple[str, ...] = ("journal_mode=WAL", "synchronous=NORMAL")
    ROW_FACTORY: Any = None

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path), timeout=30.0, isolation_level=None)
            if self.ROW_FACTORY is not None:
                self._db.row_factory = self.ROW_FACTORY
            for pragma in self.PRAGMAS:
                self._db.execute(f"PRAGMA {pragma}")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > self.SCHEMA_VERSION:
                raise StateError(f"{path}: written by a newer slurm-flex (schema {version} > {self.SCHEMA_VERSION})")
            self._db.executescript(self.SCHEMA)
            self._migrate(version)
            self._db.execute(f"PRAGMA user_version={self.SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            raise StateError(f"cannot open {self.KIND} {path}: {exc}") from exc
        except OSError as exc:
            raise StateError(f"cannot create state dir {path.parent}: {exc.strerror}") from exc

    def _migrate(self, version: int) -> None:
        """Bring a store written at ``version`` up to date (new tables come from the schema)."""

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StateError(f"{self.KIND} {self.path}: {exc}") from exc

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        try:
            return self._db.execute(sql, tuple(params)).fetchall()
        except sqlite3.Error as exc:
            raise StateError(f"{self.KIND} {self.path}: {exc}") from exc
