"""The append-only log: JSON Lines under ``<state_dir>/ledger/``, an RFC 9162 Merkle tree over
its lines, and signed checkpoints beside it.

Layout of the ledger directory::

    records-000000000000.jsonl   records 0.., one per line; a new file every max_records_per_file
    records-000000100000.start   the tree carried into a rotated file: its compact range (the
                                 roots of the perfect subtrees before it) and the last leaf hash,
                                 authenticated by the signed checkpoint of that size
    checkpoints.jsonl            every signed checkpoint, one {"note": ..., "time": ...} per line
    checkpoint                   the latest signed checkpoint, for publishing or cosigning
    site.vkey                    the site's verifier key (public): all an auditor needs
    quarantine/                  torn last lines cut off at start, kept byte for byte
    .lock                        flock: the daemon and admin commands append in turn

A record is ``{"i": index, "prev": base64 leaf hash of record i-1, "time": ..., "kind": ...,
"data": {...}}`` in RFC 8785 canonical JSON (the ``rfc8785`` package: canonical form is easy to
get subtly wrong, e.g. number formatting, so it is not hand-rolled). The leaf is the line's
bytes without the newline. The index names dropped, inserted or moved records; the ``prev``
chain names a changed record exactly; the tree and its signed checkpoints are what prove.

An append is one ``write`` of whole lines followed by ``fsync``: after a crash a record is
either all there or a torn last line without its newline, which :meth:`Ledger.open` moves to
``quarantine/`` (and logs as a record of its own) before appending again. Verification
(:func:`verify`) only reads.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import hashlib
import itertools
import json
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import rfc8785
import structlog

from slurm_flex.errors import LedgerError
from slurm_flex.grid.series import iso_utc
from slurm_flex.ledger import note
from slurm_flex.ledger.checkpoint import Checkpoint, open_checkpoint
from slurm_flex.ledger.errors import CheckpointError, ProofError, VerificationError
from slurm_flex.ledger.merkle import (
    CompactRange,
    PrunedLeaves,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    verify_inclusion,
)

log = structlog.get_logger(__name__)

RECORDS_PREFIX = "records-"
CHECKPOINTS = "checkpoints.jsonl"
LATEST = "checkpoint"
VKEY = "site.vkey"
QUARANTINE = "quarantine"
LOCK = ".lock"
DEFAULT_RECORDS_PER_FILE = 100_000
NO_PREV = ""  # record 0 chains to nothing


def canonical(obj: Any) -> bytes:
    """RFC 8785 canonical JSON; a value it cannot represent (NaN, huge ints) is a LedgerError."""
    try:
        return rfc8785.dumps(obj)
    except (rfc8785.CanonicalizationError, TypeError) as exc:
        raise LedgerError(f"not representable as canonical JSON: {exc}") from exc


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def segment_name(first: int) -> str:
    return f"{RECORDS_PREFIX}{first:012d}.jsonl"


def segments(directory: Path) -> list[tuple[int, Path]]:
    """The record files, by the index of their first record."""
    out = []
    for path in directory.glob(f"{RECORDS_PREFIX}*.jsonl"):
        stem = path.name[len(RECORDS_PREFIX) : -len(".jsonl")]
        if stem.isdigit():
            out.append((int(stem), path))
    return sorted(out)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _append_bytes(path: Path, data: bytes) -> None:
    """One write of whole lines, then fsync: the crash-safety the log rests on."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    _fsync_dir(path.parent)


@dataclass(frozen=True)
class Carried:
    """The tree carried into a rotated file (``records-<N>.start``)."""

    size: int
    hashes: tuple[bytes, ...]
    last_leaf: bytes | None

    def to_bytes(self) -> bytes:
        last = b64(self.last_leaf) if self.last_leaf is not None else NO_PREV
        return canonical({"size": self.size, "hashes": [b64(h) for h in self.hashes], "last_leaf": last}) + b"\n"

    @classmethod
    def read(cls, path: Path) -> Carried:
        try:
            doc = json.loads(path.read_bytes())
            hashes = tuple(base64.b64decode(h, validate=True) for h in doc["hashes"])
            last = base64.b64decode(doc["last_leaf"], validate=True) if doc["last_leaf"] else None
            return cls(int(doc["size"]), hashes, last)
        except (OSError, ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise LedgerError(f"{path.name}: cannot read the tree carried into this file: {exc}") from exc


def start_file(directory: Path, first: int) -> Path:
    return directory / f"{RECORDS_PREFIX}{first:012d}.start"


@dataclass
class _State:
    """What a writer knows of the log on disk (rebuilt from the files when another process
    appended): the leaf hashes of the retained records and the tree before them."""

    base: CompactRange = field(default_factory=CompactRange)
    leaves: list[bytes] = field(default_factory=list)
    last_leaf: bytes | None = None
    segment_first: int = 0
    segment_count: int = 0
    segment_bytes: int = 0
    compact: CompactRange = field(default_factory=CompactRange)

    @property
    def size(self) -> int:
        return self.compact.size


class Ledger:
    """Appends records and signs checkpoints. Open it with :meth:`open` (repairs, then loads)."""

    def __init__(
        self,
        directory: Path,
        signer: note.Signer,
        records_per_file: int = DEFAULT_RECORDS_PER_FILE,
        clock: Any = time.time,
    ) -> None:
        self.directory = directory
        self.signer = signer
        self.origin = signer.name
        self.records_per_file = records_per_file
        self.clock = clock
        self._state = _State()

    @classmethod
    def open(
        cls,
        directory: Path,
        key_file: Path,
        origin: str,
        records_per_file: int = DEFAULT_RECORDS_PER_FILE,
        clock: Any = time.time,
    ) -> Ledger:
        directory.mkdir(parents=True, exist_ok=True)
        signer = note.load_or_create_signer(key_file, origin)
        vkey = directory / VKEY
        if not vkey.exists() or vkey.read_text().strip() != signer.verifier.vkey():
            _write_atomic(vkey, (signer.verifier.vkey() + "\n").encode())
        ledger = cls(directory, signer, records_per_file, clock)
        with ledger._locked(reload=False):
            repaired = ledger._repair()
            ledger._load()
            ledger._check_against_latest_checkpoint()
            for path, offset, data in repaired:
                ledger._append_locked(
                    [
                        (
                            "ledger.repaired",
                            {
                                "file": path.name,
                                "offset": offset,
                                "bytes": len(data),
                                "sha256": hashlib.sha256(data).hexdigest(),
                                "quarantine": f"{QUARANTINE}/{path.name}.{offset}.torn",
                            },
                        )
                    ]
                )
        return ledger

    # -- appending ---------------------------------------------------------------------------
    @property
    def size(self) -> int:
        return self._state.size

    def append(self, kind: str, data: Mapping[str, Any]) -> int:
        """Append one record; returns its index."""
        return self.append_many([(kind, data)])[0]

    def append_many(self, entries: Sequence[tuple[str, Mapping[str, Any]]]) -> list[int]:
        """Append records in one write and one fsync (a cycle's records); returns their indices."""
        if not entries:
            return []
        with self._locked():
            try:
                return self._append_locked(entries)
            except BaseException:
                self._load()  # forget records that were never written (e.g. a NaN in one of them)
                raise

    def _append_locked(self, entries: Sequence[tuple[str, Mapping[str, Any]]]) -> list[int]:
        st = self._state
        now = iso_utc(int(self.clock()))
        indices: list[int] = []
        buf = bytearray()
        for kind, data in entries:
            if st.segment_count >= self.records_per_file:
                self._flush(buf)
                buf = bytearray()
                self._rotate()
            i = st.size
            line = canonical(
                {
                    "i": i,
                    "prev": b64(st.last_leaf) if st.last_leaf is not None else NO_PREV,
                    "time": now,
                    "kind": kind,
                    "data": dict(data),
                }
            )
            h = leaf_hash(line)
            buf += line + b"\n"
            st.leaves.append(h)
            st.compact.append(h)
            st.last_leaf = h
            st.segment_count += 1
            indices.append(i)
        self._flush(buf)
        return indices

    def _flush(self, buf: bytearray) -> None:
        if buf:
            _append_bytes(self.directory / segment_name(self._state.segment_first), bytes(buf))
            self._state.segment_bytes += len(buf)

    def _rotate(self) -> None:
        """Start a new record file; the tree so far is carried in its .start file, made
        verifiable by a signed checkpoint of exactly this size."""
        st = self._state
        self._checkpoint_locked()
        carried = Carried(st.size, tuple(st.compact.hashes), st.last_leaf)
        _write_atomic(start_file(self.directory, st.size), carried.to_bytes())
        st.segment_first, st.segment_count, st.segment_bytes = st.size, 0, 0
        (self.directory / segment_name(st.size)).touch()
        _fsync_dir(self.directory)

    # -- checkpoints ---------------------------------------------------------------------------
    def checkpoint(self) -> str:
        """Sign a checkpoint of the log as it is now; returns the signed note."""
        with self._locked():
            return self._checkpoint_locked()

    def _checkpoint_locked(self) -> str:
        cp = Checkpoint(self.origin, self.size, self._state.compact.root())
        signed = cp.sign(self.signer)
        last = self._state.last_leaf
        doc = {
            "note": signed,
            "time": iso_utc(int(self.clock())),
            "size": cp.size,
            "last_leaf": b64(last) if last else "",
        }
        line = canonical(doc) + b"\n"
        _append_bytes(self.directory / CHECKPOINTS, line)
        _write_atomic(self.directory / LATEST, signed.encode())
        return signed

    def latest_checkpoint(self) -> str | None:
        path = self.directory / LATEST
        return path.read_text(encoding="utf-8") if path.exists() else None

    # -- proofs --------------------------------------------------------------------------------
    def tree(self, size: int) -> PrunedLeaves:
        """The tree of the first ``size`` records, as far as it is kept (see :class:`PrunedLeaves`)."""
        with self._locked():
            st = self._state
            if not st.base.size <= size <= st.size:
                raise ProofError(f"tree size {size} is outside the kept log ({st.base.size}..{st.size} records)")
            return PrunedLeaves(st.base.copy(), st.leaves[: size - st.base.size])

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        tree = self.tree(size)
        if index < tree.base:
            raise ProofError(f"record {index} was rotated away (records before {tree.base} are no longer kept)")
        return inclusion_proof(tree, index)

    def consistency_proof(self, size1: int, size2: int) -> list[bytes]:
        return consistency_proof(self.tree(size2), size1)

    def record(self, index: int) -> bytes:
        """Record ``index``'s line (without the newline)."""
        for first, path in reversed(segments(self.directory)):
            if first <= index:
                with open(path, "rb") as f:
                    for k, line in enumerate(f):
                        if first + k == index:
                            return line.rstrip(b"\n")
                break
        raise LedgerError(f"record {index} is not in the log")

    # -- retention -----------------------------------------------------------------------------
    def prune(self, keep_from: int) -> list[Path]:
        """Delete whole record files that end at or before ``keep_from``. The file that remains
        first starts with a .start file and a signed checkpoint of its start, so the log still
        verifies, and the remaining records can still be proved (their proofs need only the
        carried compact range)."""
        removed: list[Path] = []
        with self._locked():
            files = segments(self.directory)
            for (first, path), (nxt, _) in itertools.pairwise(files):
                if nxt > keep_from:
                    break
                path.unlink()
                start_file(self.directory, first).unlink(missing_ok=True)
                removed.append(path)
            if removed:
                _fsync_dir(self.directory)
                self._load()
        return removed

    def retain(self, files: int) -> list[Path]:
        """Keep the newest ``files`` record files (retention); returns the files deleted."""
        kept = segments(self.directory)[-files:]
        return self.prune(kept[0][0]) if kept else []

    # -- loading and repair --------------------------------------------------------------------
    @contextmanager
    def _locked(self, reload: bool = True) -> Iterator[None]:
        fd = os.open(self.directory / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if reload and self._changed_on_disk():
                self._load()
            yield
        finally:
            os.close(fd)  # releases the lock

    def _changed_on_disk(self) -> bool:
        st = self._state
        files = segments(self.directory)
        if not files:
            return st.size != 0
        first, path = files[-1]
        return first != st.segment_first or path.stat().st_size != st.segment_bytes

    def _repair(self) -> list[tuple[Path, int, bytes]]:
        """Cut torn last lines (no newline: a crash mid-append) into quarantine/; returns what was cut."""
        repaired = []
        files = [p for _, p in segments(self.directory)[-1:]] + [self.directory / CHECKPOINTS]
        for path in files:
            if not path.exists() or path.stat().st_size == 0:
                continue
            data = path.read_bytes()
            if data.endswith(b"\n"):
                continue
            offset = data.rfind(b"\n") + 1
            torn = data[offset:]
            qdir = self.directory / QUARANTINE
            qdir.mkdir(exist_ok=True)
            _write_atomic(qdir / f"{path.name}.{offset}.torn", torn)
            with open(path, "r+b") as f:
                f.truncate(offset)
                os.fsync(f.fileno())
            log.warning("ledger_torn_line_quarantined", file=path.name, offset=offset, bytes=len(torn))
            repaired.append((path, offset, torn))
        return repaired

    def _load(self) -> None:
        st = _State()
        files = segments(self.directory)
        if files and files[0][0] > 0:
            carried = Carried.read(start_file(self.directory, files[0][0]))
            st.base = CompactRange(carried.size, carried.hashes)
            st.compact = st.base.copy()
            st.last_leaf = carried.last_leaf
        for first, path in files:
            data = path.read_bytes()
            if first != st.size:
                raise LedgerError(f"{path.name} starts at record {first}, but the files before it end at {st.size}")
            lines = data.split(b"\n")
            if lines[-1]:
                raise LedgerError(f"{path.name} ends in a torn line; the daemon repairs it when it starts")
            for line in lines[:-1]:
                h = leaf_hash(line)
                st.leaves.append(h)
                st.compact.append(h)
                st.last_leaf = h
            st.segment_first, st.segment_count, st.segment_bytes = first, len(lines) - 1, len(data)
        if not files:
            (self.directory / segment_name(0)).touch()
        self._state = st

    def _check_against_latest_checkpoint(self) -> None:
        """Refuse to extend a log that no longer matches what it signed: a new checkpoint over
        changed records would launder them (and tlog-checkpoint forbids signing inconsistent
        checkpoints)."""
        latest = self.latest_checkpoint()
        if latest is None:
            return
        try:
            cp = open_checkpoint(latest, [self.signer.verifier], self.origin)
        except CheckpointError as exc:
            raise LedgerError(f"{self.directory / LATEST}: {exc}; run `slurmflex audit verify`") from exc
        st = self._state
        if cp.size > st.size:
            raise LedgerError(
                f"the latest checkpoint signs {cp.size} records but the log has {st.size}; "
                "run `slurmflex audit verify`; not appending"
            )
        if cp.size >= st.base.size:
            at = st.base.copy()
            for h in st.leaves[: cp.size - st.base.size]:
                at.append(h)
            if at.root() != cp.root:
                raise LedgerError(
                    f"the first {cp.size} records no longer match the latest signed checkpoint; "
                    "run `slurmflex audit verify`; not appending"
                )


# -- verification ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verified:
    """What :func:`verify` checked."""

    records: int  # total tree size (including rotated-away records before ``first``)
    first: int  # index of the first record still on disk
    checkpoints: int
    latest: Checkpoint | None
    uncovered: int  # records after the latest checkpoint (not yet signed)
    signature_only: int  # checkpoints older than the retained records: signature checked only


@dataclass(frozen=True)
class _Line:
    index: int
    file: str
    line_no: int
    data: bytes
    complete: bool


def _lines(directory: Path) -> tuple[int, list[_Line], Carried | None]:
    files = segments(directory)
    if not files:
        return 0, [], None
    base = files[0][0]
    carried = Carried.read(start_file(directory, base)) if base > 0 else None
    if carried is not None and carried.size != base:
        raise VerificationError(base, f"{start_file(directory, base).name} carries size {carried.size}, not {base}")
    out: list[_Line] = []
    expected = base
    for first, path in files:
        if first != expected:
            raise VerificationError(
                expected,
                f"records {expected}..{first - 1} are missing: {path.name} follows a file ending there",
            )
        data = path.read_bytes()
        parts = data.split(b"\n")
        for k, part in enumerate(parts[:-1]):
            out.append(_Line(expected + k, path.name, k + 1, part, True))
        if parts[-1]:
            out.append(_Line(expected + len(parts) - 1, path.name, len(parts), parts[-1], False))
        expected += len(parts) - 1 + (1 if parts[-1] else 0)
    return base, out, carried


def _where(rec: _Line) -> str:
    return f"{rec.file} line {rec.line_no}"


def _record_problem(rec: _Line) -> tuple[str | None, str | None]:
    """(what is wrong with the line on its own, its prev field)."""
    if not rec.complete:
        return (
            f"torn: the last line of {rec.file} has no newline (a crash while appending; "
            "the daemon moves it to quarantine/ when it starts)",
            None,
        )
    try:
        obj = json.loads(rec.data)
    except ValueError as exc:
        return f"{_where(rec)} is not JSON ({exc})", None
    if not isinstance(obj, dict):
        return f"{_where(rec)} is not a JSON object", None
    try:
        again = rfc8785.dumps(obj)
    except (rfc8785.CanonicalizationError, TypeError):
        again = b""
    if again != rec.data:
        return f"{_where(rec)} is not in RFC 8785 canonical form: it was edited", None
    if obj.get("i") != rec.index:
        return (
            f"{_where(rec)} holds index {obj.get('i')!r}, expected {rec.index}: "
            "a record was dropped, inserted or moved",
            None,
        )
    prev = obj.get("prev")
    return None, prev if isinstance(prev, str) else None


def _signed_checkpoints(
    directory: Path, verifier: note.Verifier, origin: str | None, external: Sequence[tuple[str, str]]
) -> tuple[list[tuple[str, Checkpoint]], dict[int, bytes]]:
    """Every checkpoint (where it came from, verified signature and body), and the leaf hash of
    the last record each checkpoint line noted (unsigned: it only helps name a changed record)."""
    notes: list[tuple[str, str]] = []
    last_leaves: dict[int, bytes] = {}
    path = directory / CHECKPOINTS
    if path.exists():
        data = path.read_bytes()
        parts = data.split(b"\n")
        if parts[-1]:
            raise VerificationError(None, f"{CHECKPOINTS}: torn last line (a crash while appending)")
        for k, part in enumerate(parts[:-1]):
            where = f"checkpoint on line {k + 1} of {CHECKPOINTS}"
            try:
                doc = json.loads(part)
                notes.append((where, doc["note"]))
                if doc.get("last_leaf"):
                    last_leaves[int(doc["size"])] = base64.b64decode(doc["last_leaf"])
            except (ValueError, KeyError, TypeError, binascii.Error) as exc:
                raise VerificationError(None, f"{where}: not a checkpoint line ({exc})") from exc
    latest = directory / LATEST
    if latest.exists():
        notes.append((f"{LATEST} file", latest.read_text(encoding="utf-8")))
    notes.extend(external)
    out = []
    for where, text in notes:
        try:
            out.append((where, open_checkpoint(text, [verifier], origin)))
        except CheckpointError as exc:
            raise VerificationError(None, f"{where}: {exc}") from exc
    return out, last_leaves


def verify(
    directory: Path,
    verifier: note.Verifier,
    origin: str | None = None,
    external: Sequence[tuple[str, str]] = (),
) -> Verified:
    """Check the log in ``directory`` against its checkpoints (and ``external`` ones: (where,
    signed note) pairs obtained elsewhere) with only the public key. Raises
    :class:`VerificationError` naming the first bad record and what is wrong with it. Reads
    only: nothing is repaired or rewritten."""
    if not directory.is_dir():
        raise VerificationError(None, f"{directory}: no ledger here")
    base, lines, carried = _lines(directory)
    checkpoints, last_leaves = _signed_checkpoints(directory, verifier, origin or verifier.name, external)
    n = base + len(lines)
    problems: list[tuple[int, str]] = []

    # 1. Each line on its own: complete, canonical JSON, holding its own index.
    prevs: list[str | None] = []
    first_index_error: int | None = None
    for rec in lines:
        problem, prev = _record_problem(rec)
        prevs.append(prev)
        if problem is not None and first_index_error is None:
            first_index_error = rec.index
            problems.append((rec.index, problem))
    hashes = [leaf_hash(rec.data) for rec in lines]

    # 2. The tree at every checkpoint's size.
    if carried is not None:
        start = CompactRange(carried.size, carried.hashes)
        if not any(cp.size == base and cp.root == start.root() for _, cp in checkpoints):
            problems.append(
                (base, f"{start_file(directory, base).name}: the tree carried in matches no signed checkpoint")
            )
    else:
        start = CompactRange()
    by_size: dict[int, list[tuple[str, Checkpoint]]] = {}
    old = 0
    for where, cp in checkpoints:
        if cp.size < base:
            old += 1
        else:
            by_size.setdefault(cp.size, []).append((where, cp))
    compact = start.copy()
    good = base

    def check_at(size: int) -> bool:
        for where, cp in by_size.get(size, []):
            if cp.root != compact.root():
                # With the prev chain intact, the one record nothing later vouches for is the last.
                rng = f"records {good}..{size - 1} do not" if good < size - 1 else f"record {size - 1} does not"
                problems.append((max(size - 1, 0), f"{rng} hash to the root signed in the {where} (size {size})"))
                return False
        return True

    ok = carried is not None or check_at(base)  # a carried tree was checked above
    for k, h in enumerate(hashes):
        if not ok:
            break
        compact.append(h)
        ok = check_at(base + k + 1)
        if ok and by_size.get(base + k + 1):
            good = base + k + 1
    # 3. The prev chain: a changed record breaks the link into its successor only; a changed
    # prev field breaks its own link and (its hash changed) the next one too. For the last
    # record, which has no successor, the checkpoints decide: a good checkpoint covering the
    # record before, or a different leaf hash than the one noted when it was checkpointed.
    anchor = carried.last_leaf if carried is not None else None
    expected_prev = [b64(anchor) if anchor is not None else NO_PREV] + [b64(h) for h in hashes[:-1]]
    links = [prev == want for prev, want in zip(prevs, expected_prev, strict=False)]
    b = next((k for k, ok in enumerate(links) if not ok), None)
    if b is not None and (first_index_error is None or base + b < first_index_error):
        if b + 1 < len(lines):
            itself = not links[b + 1]
        else:
            noted = last_leaves.get(base + b + 1)
            itself = b == 0 or good >= base + b or (noted is not None and noted != hashes[b])
        if itself:
            problems.append((base + b, f"{_where(lines[b])}: changed: it does not chain to the record before"))
        else:
            what = f"{_where(lines[b - 1])}: changed: its hash is not the one record {base + b} chains to"
            problems.append((base + b - 1, what))

    beyond = [(where, cp) for s, cps in by_size.items() if s > n for where, cp in cps]
    if beyond:
        where, cp = max(beyond, key=lambda wc: wc[1].size)
        problems.append(
            (n, f"missing: the log ends at {n} records but the {where} signed {cp.size} (truncated or dropped)")
        )
    if problems:
        index, problem = min(problems, key=lambda p: p[0])
        raise VerificationError(index, problem)
    latest = max((cp for _, cp in checkpoints), key=lambda cp: cp.size, default=None)
    return Verified(
        records=n,
        first=base,
        checkpoints=len(checkpoints),
        latest=latest,
        uncovered=n - (latest.size if latest is not None else 0),
        signature_only=old,
    )


@dataclass(frozen=True)
class InclusionProof:
    """Record ``index`` (its line) is in the tree the signed ``checkpoint`` commits to."""

    index: int
    record: bytes
    proof: tuple[bytes, ...]
    checkpoint: str  # the signed note

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "record": self.record.decode(),
            "leaf_hash": b64(leaf_hash(self.record)),
            "proof": [b64(p) for p in self.proof],
            "checkpoint": self.checkpoint,
        }


def prove(directory: Path, verifier: note.Verifier, index: int, origin: str | None = None) -> InclusionProof:
    """An inclusion proof of record ``index`` against the latest checkpoint, made only after the
    whole log verified (a proof into a log that does not verify would prove nothing)."""
    done = verify(directory, verifier, origin)
    latest_path = directory / LATEST
    if done.latest is None or not latest_path.exists():
        raise ProofError("the log has no checkpoint yet")
    signed = latest_path.read_text(encoding="utf-8")
    cp = open_checkpoint(signed, [verifier], origin or verifier.name)
    if not 0 <= index < cp.size:
        raise ProofError(f"record {index} is not covered by the latest checkpoint (size {cp.size})")
    base, lines, carried = _lines(directory)
    if index < base:
        raise ProofError(f"record {index} was rotated away (records before {base} are no longer kept)")
    start = CompactRange(carried.size, carried.hashes) if carried is not None else CompactRange()
    tree = PrunedLeaves(start, [leaf_hash(rec.data) for rec in lines[: cp.size - base]])
    return InclusionProof(index, lines[index - base].data, tuple(inclusion_proof(tree, index)), signed)


def check_inclusion(proof: InclusionProof, verifier: note.Verifier, origin: str | None = None) -> Checkpoint:
    """Verify an inclusion proof offline: the checkpoint's signature, then the Merkle path."""
    try:
        cp = open_checkpoint(proof.checkpoint, [verifier], origin)
    except CheckpointError as exc:
        raise ProofError(str(exc)) from exc
    verify_inclusion(leaf_hash(proof.record), proof.index, cp.size, proof.proof, cp.root)
    return cp


def inclusion_from_json(doc: Mapping[str, Any]) -> InclusionProof:
    try:
        return InclusionProof(
            int(doc["index"]),
            str(doc["record"]).encode(),
            tuple(base64.b64decode(p, validate=True) for p in doc["proof"]),
            str(doc["checkpoint"]),
        )
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise ProofError(f"not an inclusion proof: {exc}") from exc
