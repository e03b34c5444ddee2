"""Checkpoints (c2sp.org/tlog-checkpoint@v1.0.0): the note text ``<origin>\\n<size>\\n<base64
root>\\n`` plus optional extension lines, signed as a C2SP note by the site key (whose key name
is the origin, as the spec recommends). A signed checkpoint can be handed to a witness to cosign
or published elsewhere; ``slurmflex audit verify --checkpoint FILE`` checks the log against one.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass

from slurm_flex.ledger import note
from slurm_flex.ledger.errors import CheckpointError, NoteError
from slurm_flex.ledger.merkle import HASH_SIZE


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def body(self) -> str:
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode(), *self.extensions]
        return "\n".join(lines) + "\n"

    def sign(self, signer: note.Signer) -> str:
        return note.sign(self.body(), [signer])


def parse_body(text: str) -> Checkpoint:
    lines = text.split("\n")
    if lines[-1] != "" or len(lines) < 4:
        raise CheckpointError(
            "a checkpoint has at least three lines (origin, size, root hash), each ending in a newline"
        )
    origin, size, root, *ext = lines[:-1]
    if not origin:
        raise CheckpointError("the origin line is empty")
    if not size.isdigit() or (size != "0" and size.startswith("0")) or not size.isascii():
        raise CheckpointError(f"tree size {size!r} is not a decimal number without leading zeros")
    try:
        root_hash = base64.b64decode(root, validate=True)
    except binascii.Error as exc:
        raise CheckpointError(f"root hash {root!r} is not base64") from exc
    if len(root_hash) != HASH_SIZE:
        raise CheckpointError(f"root hash is {len(root_hash)} bytes, expected {HASH_SIZE}")
    if any(not e for e in ext):
        raise CheckpointError("extension lines must not be empty")
    return Checkpoint(origin, int(size), root_hash, tuple(ext))


def open_checkpoint(signed: str, verifiers: Sequence[note.Verifier], origin: str | None = None) -> Checkpoint:
    """A signed checkpoint, verified: signed by a trusted key and (if given) of this origin."""
    try:
        text, _ = note.open_note(signed, verifiers)
    except NoteError as exc:
        raise CheckpointError(f"checkpoint signature: {exc}") from exc
    cp = parse_body(text)
    if origin is not None and cp.origin != origin:
        raise CheckpointError(f"checkpoint is for log {cp.origin!r}, not {origin!r}")
    return cp
