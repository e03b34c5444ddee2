"""C2SP signed notes (c2sp.org/signed-note@v1.0.0) with Ed25519 signatures.

A note is text ending in a newline, a blank line, then signature lines
``— <key name> base64(key ID || signature)``. The key ID is
SHA-256(key name || 0x0A || 0x01 || public key)[:4]; a verifier key ("vkey") is
``<name>+<hex key ID>+base64(0x01 || public key)``.

Ed25519 itself comes from ``cryptography`` (OpenSSL underneath): signatures are the one part
of this that must never be hand-rolled. The signing key is stored in the text form the Go
``golang.org/x/mod/sumdb/note`` package uses (``PRIVATE+KEY+<name>+<id>+base64(0x01 || seed)``),
so the same key works with the Go transparency-log tools.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from slurm_flex.ledger.errors import KeyFileError, NoteError

ED25519 = 0x01
EM_DASH = "\u2014"
# A verifier must accept at least 16 signatures (spec); more than this is refused as abuse.
MAX_SIGNATURES = 100


def key_id(name: str, sig_type: int, public: bytes) -> int:
    digest = hashlib.sha256(name.encode() + b"\n" + bytes([sig_type]) + public).digest()
    return int.from_bytes(digest[:4], "big")


def check_key_name(name: str) -> str:
    if not name or any(c.isspace() for c in name) or "+" in name:
        raise NoteError(f"key name {name!r} must be non-empty, without spaces or '+'")
    return name


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


@dataclass(frozen=True)
class Verifier:
    """A trusted public key: its name, key ID and Ed25519 public key."""

    name: str
    key_id: int
    public: bytes  # 32 bytes, RFC 8032 encoding
    sig_type: int = ED25519  # 0x04: a tlog-cosignature/v1 cosigner (cosignature.py)

    @classmethod
    def parse(cls, vkey: str, sig_type: int = ED25519) -> Verifier:
        """A verifier key string ``<name>+<hex id>+base64(0x01 || key)``, checked for consistency."""
        parts = vkey.strip().split("+", 2)  # base64 may hold "+" itself
        if len(parts) != 3:
            raise NoteError(f"verifier key {vkey.strip()!r}: expected <name>+<hex key ID>+<base64 key>")
        name, hex_id, b64 = parts
        check_key_name(name)
        if len(hex_id) != 8:
            raise NoteError(f"verifier key for {name}: key ID {hex_id!r} is not 8 hex digits")
        try:
            kid = int(hex_id, 16)
            material = base64.b64decode(b64, validate=True)
        except (ValueError, binascii.Error) as exc:
            raise NoteError(f"verifier key for {name}: not hex and base64: {exc}") from exc
        if len(material) != 33 or material[0] != sig_type:
            raise NoteError(f"verifier key for {name}: not a key of type 0x{sig_type:02x} with 32 bytes")
        if key_id(name, sig_type, material[1:]) != kid:
            raise NoteError(f"verifier key for {name}: key ID {hex_id} does not match the key")
        return cls(name, kid, material[1:], sig_type)

    def vkey(self) -> str:
        return f"{self.name}+{self.key_id:08x}+{base64.b64encode(bytes([self.sig_type]) + self.public).decode()}"

    def verify(self, message: bytes, signature: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.public).verify(signature, message)
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True)
class Signer:
    """The site's signing key and the name its signatures carry."""

    name: str
    private: Ed25519PrivateKey

    @classmethod
    def generate(cls, name: str) -> Signer:
        return cls(check_key_name(name), Ed25519PrivateKey.generate())

    @property
    def verifier(self) -> Verifier:
        public = _raw_public(self.private.public_key())
        return Verifier(self.name, key_id(self.name, ED25519, public), public)

    def sign(self, message: bytes) -> bytes:
        return self.private.sign(message)

    def encode(self) -> str:
        """The Go note package's private key text."""
        seed = self.private.private_bytes_raw()
        return (
            f"PRIVATE+KEY+{self.name}+{self.verifier.key_id:08x}+{base64.b64encode(bytes([ED25519]) + seed).decode()}"
        )

    @classmethod
    def decode(cls, text: str) -> Signer:
        parts = text.strip().split("+", 4)
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
            raise KeyFileError("not a signing key (expected PRIVATE+KEY+<name>+<hex id>+<base64 key>)")
        name, hex_id, b64 = parts[2:]
        try:
            material = base64.b64decode(b64, validate=True)
        except binascii.Error as exc:
            raise KeyFileError(f"signing key for {name}: key is not base64") from exc
        if len(material) != 33 or material[0] != ED25519:
            raise KeyFileError(f"signing key for {name}: not an Ed25519 key")
        signer = cls(check_key_name(name), Ed25519PrivateKey.from_private_bytes(material[1:]))
        if f"{signer.verifier.key_id:08x}" != hex_id:
            raise KeyFileError(f"signing key for {name}: key ID {hex_id} does not match the key")
        return signer


def load_or_create_signer(path: Path, name: str) -> Signer:
    """The site key at ``path``; made on first use with mode 0600 (created with those permissions,
    never widened after the fact). A key under another name is an error, not a silent rename."""
    try:
        signer = Signer.decode(path.read_text(encoding="ascii"))
    except FileNotFoundError:
        signer = Signer.generate(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first: use theirs
            return load_or_create_signer(path, name)
        except OSError as exc:
            raise KeyFileError(f"{path}: cannot create the site key: {exc.strerror}") from exc
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(signer.encode() + "\n")
            f.flush()
            os.fsync(f.fileno())
        return signer
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"{path}: cannot read the site key: {exc}") from exc
    except KeyFileError as exc:
        raise KeyFileError(f"{path}: {exc}") from exc
    if signer.name != name:
        raise KeyFileError(f"{path}: the key is named {signer.name!r}, the config says {name!r}")
    return signer


def read_verifier(path: Path) -> Verifier:
    try:
        return Verifier.parse(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read the verifier key: {exc.strerror}") from exc


@dataclass(frozen=True)
class Signature:
    name: str
    key_id: int
    signature: bytes

    def line(self) -> str:
        blob = struct.pack(">I", self.key_id) + self.signature
        return f"{EM_DASH} {self.name} {base64.b64encode(blob).decode()}\n"


@dataclass(frozen=True)
class Note:
    text: str  # ends in a newline
    signatures: tuple[Signature, ...]

    def encode(self) -> str:
        return self.text + "\n" + "".join(s.line() for s in self.signatures)


def sign(text: str, signers: Iterable[Signer]) -> str:
    """A signed note of ``text`` (which must end in a newline)."""
    _check_text(text)
    sigs = [Signature(s.name, s.verifier.key_id, s.sign(text.encode())) for s in signers]
    if not sigs:
        raise NoteError("a note needs at least one signature")
    return Note(text, tuple(sigs)).encode()


def add_signature(note: str, signer: Signer) -> str:
    """Cosign: add this key's signature to a note (the text is not changed)."""
    parsed = parse(note)
    sig = Signature(signer.name, signer.verifier.key_id, signer.sign(parsed.text.encode()))
    return Note(parsed.text, (*parsed.signatures, sig)).encode()


def _check_text(text: str) -> None:
    if not text.endswith("\n"):
        raise NoteError("note text must end in a newline")
    bad = next((c for c in text if c < " " and c != "\n"), None)
    if bad is not None:
        raise NoteError(f"note contains the control character {bad!r}")


def parse(note: str) -> Note:
    """Split a note into its text and signature lines, checking the format (not the signatures)."""
    _check_text(note)
    text, sep, sig_block = note.rpartition("\n\n")
    if not sep:
        raise NoteError("no blank line between the note text and its signatures")
    text += "\n"
    lines = sig_block.split("\n")[:-1]  # the block ends in a newline
    if not lines:
        raise NoteError("the note has no signatures")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError(f"the note has {len(lines)} signatures; at most {MAX_SIGNATURES} are read")
    sigs = []
    for line in lines:
        prefix, _, rest = line.partition(" ")
        name, _, b64 = rest.partition(" ")
        if prefix != EM_DASH or not name or not b64 or " " in b64:
            raise NoteError(f"malformed signature line {line!r}")
        try:
            blob = base64.b64decode(b64, validate=True)
        except binascii.Error as exc:
            raise NoteError(f"signature by {name} is not base64") from exc
        if len(blob) < 5:
            raise NoteError(f"signature by {name} is too short")
        sigs.append(Signature(name, struct.unpack(">I", blob[:4])[0], blob[4:]))
    return Note(text, tuple(sigs))


def open_note(note: str, verifiers: Sequence[Verifier]) -> tuple[str, tuple[Verifier, ...]]:
    """The note's text and the known keys that signed it. Signatures by unknown keys are
    ignored (that is what lets witnesses cosign); a bad signature by a known key rejects the
    note, and so does a note no known key signed."""
    parsed = parse(note)
    known = {(v.name, v.key_id): v for v in verifiers}
    signed: list[Verifier] = []
    for sig in parsed.signatures:
        v = known.get((sig.name, sig.key_id))
        if v is None:
            continue
        if not v.verify(parsed.text.encode(), sig.signature):
            raise NoteError(f"the signature by {v.name} ({v.key_id:08x}) does not verify: the note was changed")
        signed.append(v)
    if not signed:
        by = ", ".join(f"{s.name} ({s.key_id:08x})" for s in parsed.signatures)
        trusted = ", ".join(f"{v.name} ({v.key_id:08x})" for v in verifiers) or "none"
        raise NoteError(f"signed by no trusted key: signed by {by}; trusted: {trusted}")
    return parsed.text, tuple(signed)
