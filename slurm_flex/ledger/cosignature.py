"""Witness cosignatures of checkpoints (c2sp.org/tlog-cosignature@v1.0.0): a note signature of
type 0x04 whose 72 bytes are a big-endian u64 timestamp and an Ed25519 signature over
``cosignature/v1\\ntime <t>\\n`` followed by the checkpoint's note text. A witness that has
checked the log grew append-only adds one to the site's checkpoint; an auditor who trusts the
witness then knows the site cannot show them a different history."""

from __future__ import annotations

import base64
import struct
from collections.abc import Sequence

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from slurm_flex.ledger import note
from slurm_flex.ledger.errors import NoteError

COSIGNATURE = 0x04
HEADER = "cosignature/v1\n"


def cosigner_verifier(name: str, private: Ed25519PrivateKey) -> note.Verifier:
    public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return note.Verifier(note.check_key_name(name), note.key_id(name, COSIGNATURE, public), public, COSIGNATURE)


def _message(text: str, timestamp: int) -> bytes:
    return f"{HEADER}time {timestamp}\n{text}".encode()


def cosign(signed_checkpoint: str, name: str, private: Ed25519PrivateKey, timestamp: int) -> str:
    """Add a cosignature/v1 line by this witness to a signed checkpoint."""
    parsed = note.parse(signed_checkpoint)
    v = cosigner_verifier(name, private)
    sig = struct.pack(">Q", timestamp) + private.sign(_message(parsed.text, timestamp))
    return note.Note(parsed.text, (*parsed.signatures, note.Signature(name, v.key_id, sig))).encode()


def verify_cosignatures(signed_checkpoint: str, witnesses: Sequence[note.Verifier]) -> dict[str, int]:
    """The time each of these witnesses cosigned the checkpoint; a witness that did not, or whose
    cosignature does not verify, is a :class:`NoteError` naming it."""
    parsed = note.parse(signed_checkpoint)
    times: dict[str, int] = {}
    for w in witnesses:
        if w.sig_type != COSIGNATURE:
            raise NoteError(f"witness key {w.name} is not a cosignature/v1 key (type 0x04)")
        sig = next((s for s in parsed.signatures if (s.name, s.key_id) == (w.name, w.key_id)), None)
        if sig is None:
            raise NoteError(f"not cosigned by witness {w.name} ({w.key_id:08x})")
        if len(sig.signature) != 72:
            raise NoteError(f"cosignature by {w.name} is {len(sig.signature)} bytes, not 72")
        (timestamp,) = struct.unpack(">Q", sig.signature[:8])
        try:
            Ed25519PublicKey.from_public_bytes(w.public).verify(sig.signature[8:], _message(parsed.text, timestamp))
        except InvalidSignature as exc:
            raise NoteError(f"cosignature by {w.name} does not verify: the checkpoint was changed") from exc
        times[w.name] = timestamp
    return times


def encode_private(private: Ed25519PrivateKey) -> str:
    """A witness key for tests and small deployments (base64 of the 32-byte seed)."""
    return base64.b64encode(private.private_bytes_raw()).decode()
