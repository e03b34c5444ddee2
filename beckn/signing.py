"""HTTP message signatures of Beckn (BECKN-006, restated for v2 by NFH-007, May 2026).

Ed25519 over lines joined by ``\\n`` (no trailing newline)::

    (created): <unix>
    (expires): <unix>
    digest: BLAKE-512=<base64(BLAKE2b-512(raw body))>
    request-signature: <signature of the request answered>   # 4-line form only

Requests and unsolicited pushes sign the first three lines (``Authorization``); solicited
callbacks (``Authorization``) and every synchronous response (``Signature`` response header)
sign the fourth too. We emit ``BLAKE-512=``, the scheme word, no spaces after commas and the
v1 keyId ``{subscriber}|{key id}|ed25519``; on input we also accept ``BLAKE2b-512=`` (3-line
signatures only), a header
without the scheme word, spaces after commas and the ``{namespace}/{registry}/{record}|ed25519``
keyId (NOTES 5.6).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from slurm_flex.beckn.errors import KeyFileError, SignatureError

DIGEST_LABEL = "BLAKE-512"
ACCEPTED_DIGEST_LABELS = ("BLAKE-512", "BLAKE2b-512")
HEADERS_3 = "(created) (expires) digest"
HEADERS_4 = "(created) (expires) digest request-signature"
# beckn-onix signs with created + 5 min; the spec says "the TTL of the request".
DEFAULT_VALIDITY_S = 300
DEFAULT_SKEW_S = 60

_PARAM = re.compile(r'\s*([A-Za-z]+)\s*=\s*"([^"]*)"\s*(?:,|$)')


def body_digest(body: bytes, label: str = DIGEST_LABEL) -> str:
    """``BLAKE-512=<base64>`` of the exact bytes on the wire."""
    return f"{label}=" + base64.b64encode(hashlib.blake2b(body, digest_size=64).digest()).decode()


def signing_string(created: int, expires: int, digest: str, request_signature: str | None = None) -> str:
    lines = [f"(created): {created}", f"(expires): {expires}", f"digest: {digest}"]
    if request_signature is not None:
        lines.append(f"request-signature: {request_signature}")
    return "\n".join(lines)


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise KeyFileError(f"{what}: not base64") from exc


def private_key_from_b64(text: str) -> Ed25519PrivateKey:
    """A 32-byte seed, or the 64-byte seed || public key Beckn tooling often stores."""
    raw = _b64(text, "signing key")
    if len(raw) == 64:
        key = Ed25519PrivateKey.from_private_bytes(raw[:32])
        if public_raw(key.public_key()) != raw[32:]:
            raise KeyFileError("signing key: its 64 bytes are seed || public key, but the halves do not match")
        return key
    if len(raw) != 32:
        raise KeyFileError(f"signing key: expected 32 or 64 bytes, got {len(raw)}")
    return Ed25519PrivateKey.from_private_bytes(raw)


def public_key_from_b64(text: str) -> Ed25519PublicKey:
    raw = _b64(text, "public key")
    if len(raw) != 32:
        raise KeyFileError(f"public key: expected 32 bytes, got {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def public_raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


@dataclass(frozen=True)
class Signer:
    """Who we sign as: ``subscriber_id``, ``key_id`` and the Ed25519 key."""

    subscriber_id: str
    key_id: str
    key: Ed25519PrivateKey

    @property
    def key_id_param(self) -> str:
        return f"{self.subscriber_id}|{self.key_id}|ed25519"

    def sign(
        self,
        body: bytes,
        created: int,
        expires: int | None = None,
        request_signature: str | None = None,
    ) -> SignatureHeader:
        expires = created + DEFAULT_VALIDITY_S if expires is None else expires
        text = signing_string(created, expires, body_digest(body), request_signature)
        sig = base64.b64encode(self.key.sign(text.encode())).decode()
        return SignatureHeader(
            key_id=self.key_id_param,
            algorithm="ed25519",
            created=created,
            expires=expires,
            headers=HEADERS_3 if request_signature is None else HEADERS_4,
            signature=sig,
        )


@dataclass(frozen=True)
class SignatureHeader:
    key_id: str
    algorithm: str
    created: int
    expires: int
    headers: str
    signature: str

    @property
    def subscriber_id(self) -> str:
        """The v1 form's first part; for the ``namespace/registry/record`` form, that path."""
        return self.key_id.split("|")[0]

    @property
    def unique_key_id(self) -> str:
        parts = self.key_id.split("|")
        return parts[1] if len(parts) == 3 else parts[0]

    @property
    def four_lines(self) -> bool:
        return self.headers.split() == HEADERS_4.split()

    def value(self) -> str:
        """The header value, with the scheme word and no spaces after commas."""
        return (
            f'Signature keyId="{self.key_id}",algorithm="{self.algorithm}",created="{self.created}",'
            f'expires="{self.expires}",headers="{self.headers}",signature="{self.signature}"'
        )


def parse_header(value: str | None) -> SignatureHeader:
    """Parse an ``Authorization``/``Signature`` value, tolerantly (scheme word optional,
    spaces after commas allowed); every problem is a :class:`SignatureError`."""
    if not value or not value.strip():
        raise SignatureError("unsigned: no signature header", code="SIGNATURE_MISSING")
    text = value.strip()
    if text[:10].lower() == "signature ":
        text = text[10:]
    params: dict[str, str] = {}
    pos = 0
    while pos < len(text):
        m = _PARAM.match(text, pos)
        if m is None:
            raise SignatureError(
                f"malformed signature header near {text[pos : pos + 30]!r}", code="SIGNATURE_MALFORMED"
            )
        params[m.group(1)] = m.group(2)
        pos = m.end()
    missing = [k for k in ("keyId", "algorithm", "created", "expires", "headers", "signature") if k not in params]
    if missing:
        raise SignatureError(f"signature header lacks {', '.join(missing)}", code="SIGNATURE_MALFORMED")
    key_id = params["keyId"]
    algorithm = params["algorithm"]
    parts = key_id.split("|")
    # v1: subscriber|key|alg; spec text: namespace/registry/record|alg. Either way the last part
    # names the algorithm, and it must be the one the header declares.
    if len(parts) not in (2, 3) or not all(parts):
        raise SignatureError(
            f"keyId {key_id!r} is neither subscriber|key|alg nor record|alg", code="SIGNATURE_MALFORMED"
        )
    if algorithm.lower() != "ed25519" or parts[-1].lower() != "ed25519":
        raise SignatureError(
            f"algorithm {algorithm!r} (keyId says {parts[-1]!r}): only ed25519 is accepted",
            code="SIGNATURE_ALGORITHM",
        )
    try:
        created, expires = int(params["created"]), int(params["expires"])
    except ValueError as exc:
        raise SignatureError("created/expires are not integers", code="SIGNATURE_MALFORMED") from exc
    headers = " ".join(params["headers"].split())
    if headers not in (HEADERS_3, HEADERS_4):
        raise SignatureError(
            f"headers={headers!r}: expected {HEADERS_3!r} or {HEADERS_4!r}", code="SIGNATURE_MALFORMED"
        )
    return SignatureHeader(key_id, algorithm, created, expires, headers, params["signature"])


def verify(
    header: SignatureHeader,
    public_key: Ed25519PublicKey,
    body: bytes,
    now: float,
    *,
    skew_s: int = DEFAULT_SKEW_S,
    request_signature: str | None = None,
) -> None:
    """Check times, then the Ed25519 signature over the rebuilt signing string (either digest
    label). A 4-line header needs the ``request_signature`` it answers. Raises SignatureError."""
    if header.created > now + skew_s:
        raise SignatureError(f"created {header.created} is in the future (now {int(now)})", code="SIGNATURE_CREATED")
    if header.expires < now - skew_s:
        raise SignatureError(f"expired at {header.expires} (now {int(now)})", code="SIGNATURE_EXPIRED")
    if header.expires < header.created:
        raise SignatureError("expires before created", code="SIGNATURE_MALFORMED")
    if header.four_lines and request_signature is None:
        raise SignatureError("4-line signature but no request signature to check it against", code="SIGNATURE_INVALID")
    try:
        sig = base64.b64decode(header.signature, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SignatureError("signature is not base64", code="SIGNATURE_MALFORMED") from exc
    req = request_signature if header.four_lines else None
    # The 4-line forms come from the drafts that write BLAKE-512 (and NOTES 5.7 requires a
    # BLAKE2b-512-labelled ACK signature to fail); older 3-line requests may use either label.
    labels = (DIGEST_LABEL,) if header.four_lines else ACCEPTED_DIGEST_LABELS
    for label in labels:
        text = signing_string(header.created, header.expires, body_digest(body, label), req)
        try:
            public_key.verify(sig, text.encode())
            return
        except InvalidSignature:
            continue
    # A body changed in transit and a wrong key look the same here: the digest is inside the
    # signed string, which is the point of signing it.
    raise SignatureError("signature does not verify (body digest or key mismatch)", code="SIGNATURE_INVALID")


def generate_seed() -> bytes:
    return Ed25519PrivateKey.generate().private_bytes_raw()
