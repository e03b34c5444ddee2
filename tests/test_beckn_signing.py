"""BECKN-006 / NFH-007 signatures against the verified vectors of NOTES 5.6-5.7 (the request
body is read from ../shared; the rest of the vectors are quoted here)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from slurm_flex.beckn.errors import KeyFileError, SignatureError
from slurm_flex.beckn.signing import (
    Signer,
    body_digest,
    parse_header,
    private_key_from_b64,
    public_key_from_b64,
    signing_string,
    verify,
)

SPEC = Path(__file__).resolve().parent.parent.parent / "shared" / "specs" / "beckn"
PRIV64 = "lP3sHA+9gileOkXYJXh4Jg8tK0gEEMbf9yCPnFpbldhrAY+NErqL9WD+Vav7TE5tyVXGXBle9ONZi2W7o144eQ=="
PUB = "awGPjRK6i/Vg/lWr+0xObclVxlwZXvTjWYtlu6NeOHk="
REQ_DIGEST = "b6lf6lRgOweajukcvcLsagQ2T60+85kRh/Rd2bdS+TG/5ALebOEgDJfyCrre/1+BMu5nA94o4DT3pTFXuUg7sw=="
REQ_SIG = "cjbhP0PFyrlSCNszJM1F/YmHDVAWsZqJUPzojnE/7TJU3fJ/rmIlgaUHEr5E0/2PIyf0tpSnWtT6cyNNlpmoAQ=="
ACK = b'{"message":{"status":"ACK","messageId":"a2fe6d52-9fe4-4d1a-9d0b-dccb8b48522d"}}'
ACK_SIG = "c25jAkvlDdJbnuBga9ccJ6AUGpi5WmkeW1vnMsBlP2bDbZaJOQF5HVwl6cRvvm9+IL9af6VPQpDeYSJWKmi2AQ=="
ACK_HEADER = (
    'Signature keyId="example-bap.com|ae3ea24b-cfec-495e-81f8-044aaef164ac|ed25519",algorithm="ed25519",'
    'created="1641287876",expires="1641288176",headers="(created) (expires) digest request-signature",'
    f'signature="{ACK_SIG}"'
)
SIGNER = Signer("example-bap.com", "ae3ea24b-cfec-495e-81f8-044aaef164ac", private_key_from_b64(PRIV64))


@pytest.fixture
def request_body() -> bytes:
    doc = SPEC / "core-v1.1.1" / "docs" / "BECKN-006-Signing-Beckn-APIs-In-HTTP-Draft-01.md"
    if not doc.exists():
        pytest.skip("../shared is not present")
    lines = doc.read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if "Let the below be the request body" in line)
    return next(line for line in lines[at + 1 :] if line.startswith("{")).encode()


@pytest.mark.shared
def test_request_vector(request_body: bytes) -> None:
    assert body_digest(request_body) == f"BLAKE-512={REQ_DIGEST}"
    header = SIGNER.sign(request_body, 1641287875, 1641291475)
    assert header.signature == REQ_SIG
    assert header.headers == "(created) (expires) digest"
    parsed = parse_header(header.value())
    verify(parsed, public_key_from_b64(PUB), request_body, now=1641287880)


def test_ack_vector_four_lines() -> None:
    header = SIGNER.sign(ACK, 1641287876, 1641288176, request_signature=REQ_SIG)
    assert header.value() == ACK_HEADER
    text = signing_string(1641287876, 1641288176, body_digest(ACK), REQ_SIG)
    assert len(text.encode()) == 258
    verify(parse_header(ACK_HEADER), public_key_from_b64(PUB), ACK, now=1641287900, request_signature=REQ_SIG)


@pytest.mark.parametrize(
    "wrong",
    [
        "sFAy8c5soVgmUYLCYrwb4nX09Hw65huT+ohj9gIkgefwMj7f2Db/lE6iw4HqT6dlx2tVN6R810kyUJAASK+/Ag==",
        "eHUJ3e9qYnyvCi02RwG4WEWJ3uIqR1IFuxs4y8n1dDxGiVC7xzB4h4PtBZULvVPqsmk/Vdg70vWEkR3BPTllDw==",
        "XPVnUyNodF0SXC0Bw8QwHXVO5mMWbpdyJKLlp5dsK30eNNLQm6mkL4UKIOrcyJ1WNZHG5hL2BpKzQXPXijmKCw==",
    ],
)
def test_ack_negative_vectors(wrong: str) -> None:
    """The NOTES' negative signatures (BLAKE2b-512 label signed as 4 lines, 3 lines only,
    trailing newline) all fail against the 4-line header."""
    bad = ACK_HEADER.replace(ACK_SIG, wrong)
    with pytest.raises(SignatureError):
        verify(parse_header(bad), public_key_from_b64(PUB), ACK, now=1641287900, request_signature=REQ_SIG)


def test_accepts_blake2b_label_and_tolerant_header() -> None:
    key = private_key_from_b64(PRIV64)
    text = signing_string(100, 400, body_digest(b"{}", "BLAKE2b-512"))
    sig = base64.b64encode(key.sign(text.encode())).decode()
    value = (
        'keyId="a|k|ed25519", algorithm="ed25519", created="100", expires="400", '
        f'headers="(created) (expires) digest", signature="{sig}"'
    )
    verify(parse_header(value), public_key_from_b64(PUB), b"{}", now=200)


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        (lambda h: "", "SIGNATURE_MISSING"),
        (lambda h: h.replace('algorithm="ed25519"', 'algorithm="rsa-sha256"'), "SIGNATURE_ALGORITHM"),
        (lambda h: h.replace("|ed25519", "|rsa"), "SIGNATURE_ALGORITHM"),
        (lambda h: h.replace('created="', 'created="x'), "SIGNATURE_MALFORMED"),
        (lambda h: h.replace('keyId="', 'keyId="a|b|c|'), "SIGNATURE_MALFORMED"),
        (lambda h: h[:40], "SIGNATURE_MALFORMED"),
    ],
)
def test_parse_refusals(mutate: object, code: str) -> None:
    header = SIGNER.sign(b"{}", 100).value()
    with pytest.raises(SignatureError) as err:
        parse_header(mutate(header))  # type: ignore[operator]
    assert err.value.code == code


def test_times_and_tampering() -> None:
    pub = SIGNER.key.public_key()
    h = SIGNER.sign(b'{"a":1}', 1000, 1300)
    verify(h, pub, b'{"a":1}', now=1000)
    verify(h, pub, b'{"a":1}', now=940, skew_s=60)  # within skew
    with pytest.raises(SignatureError, match="future") as e:
        verify(h, pub, b'{"a":1}', now=900, skew_s=60)
    assert e.value.code == "SIGNATURE_CREATED"
    with pytest.raises(SignatureError) as e:
        verify(h, pub, b'{"a":1}', now=1400, skew_s=60)
    assert e.value.code == "SIGNATURE_EXPIRED"
    with pytest.raises(SignatureError) as e:
        verify(h, pub, b'{"a":2}', now=1000)
    assert e.value.code == "SIGNATURE_INVALID"
    four = SIGNER.sign(b"{}", 1000, request_signature="abc")
    with pytest.raises(SignatureError):
        verify(four, pub, b"{}", now=1000)  # no request signature to check against
    with pytest.raises(SignatureError):
        verify(four, pub, b"{}", now=1000, request_signature="abd")
    verify(four, pub, b"{}", now=1000, request_signature="abc")


def test_key_forms() -> None:
    seed = base64.b64decode(PRIV64)[:32]
    assert private_key_from_b64(base64.b64encode(seed).decode()).public_key() == public_key_from_b64(PUB)
    with pytest.raises(KeyFileError):
        private_key_from_b64(base64.b64encode(seed + b"\0" * 32).decode())  # halves disagree
    with pytest.raises(KeyFileError):
        private_key_from_b64("not base64!")


def test_keygen_cli(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from slurm_flex.beckn.keys import read_private_key
    from slurm_flex.cli import main

    out = tmp_path / "keys"
    result = CliRunner().invoke(main, ["beckn", "keygen", "--out", str(out)])
    assert result.exit_code == 0, result.output
    printed = result.output.strip()
    assert (out / "signing.pub").read_text().strip() == printed
    assert (out / "signing.key").stat().st_mode & 0o777 == 0o600
    assert len(base64.b64decode((out / "signing.key").read_text())) == 32
    key = read_private_key(out / "signing.key")
    assert key.public_key() == public_key_from_b64(printed)
    again = CliRunner().invoke(main, ["beckn", "keygen", "--out", str(out)])
    assert again.exit_code == 1 and "not overwriting" in again.output
    # the 64-byte seed || public form is read too
    (tmp_path / "k64").write_text(PRIV64)
    assert read_private_key(tmp_path / "k64").public_key() == public_key_from_b64(PUB)
