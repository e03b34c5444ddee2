"""C2SP signed notes and tlog checkpoints: the spec's own example verifies, ours round-trip,
and each kind of damage is refused with a message saying what is wrong."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from slurm_flex.ledger import note
from slurm_flex.ledger.checkpoint import Checkpoint, open_checkpoint, parse_body
from slurm_flex.ledger.errors import CheckpointError, KeyFileError, NoteError
from slurm_flex.ledger.merkle import EMPTY_ROOT

# c2sp.org/signed-note@v1.0.0, "Example".
SPEC_VKEY = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
SPEC_NOTE = (
    "This is an example message.\n\n"
    "\u2014 example.com/foo "
    "Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n"
)
SPEC_MD = Path(__file__).resolve().parent.parent.parent / "shared/specs/ledger/c2sp/tagged-v1.0.0/signed-note.md"


def test_the_spec_example_verifies() -> None:
    v = note.Verifier.parse(SPEC_VKEY)
    assert v.vkey() == SPEC_VKEY and v.key_id == 0x530D903A
    text, by = note.open_note(SPEC_NOTE, [v])
    assert text == "This is an example message.\n" and by == (v,)
    with pytest.raises(NoteError, match="does not verify"):
        note.open_note(SPEC_NOTE.replace("example message", "example massage"), [v])


def test_the_example_is_the_one_in_the_spec_file() -> None:
    if not SPEC_MD.exists():
        pytest.skip("../shared is not present")
    spec = SPEC_MD.read_text()
    assert SPEC_VKEY in spec and SPEC_NOTE.split("\n\n")[1].strip() in spec


def test_sign_open_cosign_and_unknown_keys() -> None:
    site, witness, other = (note.Signer.generate(n) for n in ("hpc.example/log", "witness.example", "hpc.example/log"))
    signed = note.sign("hello\n\nworld\n", [site])
    assert note.open_note(signed, [site.verifier])[0] == "hello\n\nworld\n"  # blank lines in the text
    cosigned = note.add_signature(signed, witness)
    assert note.open_note(cosigned, [site.verifier, witness.verifier])[1] == (site.verifier, witness.verifier)
    assert note.open_note(cosigned, [witness.verifier])[0] == "hello\n\nworld\n"  # the site's is ignored
    # Same name, different key: the signature is not by a known key, so the note is refused.
    with pytest.raises(NoteError, match="signed by no trusted key"):
        note.open_note(signed, [other.verifier])
    # A known key whose signature fails rejects the whole note, even with another good signature.
    site_line = cosigned.split("\n")[4]
    blob = bytearray(base64.b64decode(site_line.split(" ")[2]))
    blob[10] ^= 1  # a bit of the signature, not of the key ID: still "by" the site key
    bad_site = cosigned.replace(site_line, site_line.rsplit(" ", 1)[0] + " " + base64.b64encode(blob).decode())
    with pytest.raises(NoteError, match=r"signature by hpc.example/log .* does not verify"):
        note.open_note(bad_site, [site.verifier, witness.verifier])


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("no newline", "must end in a newline"),
        ("text\n\u2014 a AAAA\n", "no blank line"),
        ("text\n\nnot a signature\n", "malformed signature line"),
        ("text\n\n\u2014 a !!!!\n", "not base64"),
        ("text\n\n\u2014 a AAAA\n", "too short"),
        ("te\x07xt\n\n\u2014 a AAAAAAAA\n", "control character"),
    ],
)
def test_malformed_notes(text: str, problem: str) -> None:
    with pytest.raises(NoteError, match=problem):
        note.parse(text)


def test_verifier_key_strings() -> None:
    site = note.Signer.generate("hpc.example/log")
    assert note.Verifier.parse(site.verifier.vkey()) == site.verifier
    name, kid, b64 = site.verifier.vkey().split("+", 2)
    with pytest.raises(NoteError, match="does not match the key"):
        note.Verifier.parse(f"{name}+{(int(kid, 16) ^ 1):08x}+{b64}")
    with pytest.raises(NoteError, match="not a key of type 0x01"):
        note.Verifier.parse(f"{name}+{kid}+" + base64.b64encode(b"\x02" + bytes(32)).decode())
    with pytest.raises(NoteError, match="expected <name>"):
        note.Verifier.parse("just-a-name")
    with pytest.raises(NoteError, match="without spaces"):
        note.Signer.generate("has space")


def test_site_key_file_is_made_0600_once_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "ledger.key"
    signer = note.load_or_create_signer(path, "hpc.example/log")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert path.read_text().startswith("PRIVATE+KEY+hpc.example/log+")
    again = note.load_or_create_signer(path, "hpc.example/log")
    assert again.verifier == signer.verifier
    with pytest.raises(KeyFileError, match="the config says"):
        note.load_or_create_signer(path, "other.example/log")
    path.write_text("PRIVATE+KEY+hpc.example/log+00000000+AQ==\n")
    with pytest.raises(KeyFileError, match=str(path)):
        note.load_or_create_signer(path, "hpc.example/log")


def test_checkpoint_round_trip_and_errors() -> None:
    site = note.Signer.generate("hpc.example/log")
    cp = Checkpoint("hpc.example/log", 12, bytes(range(32)), ("time 1700000000",))
    signed = cp.sign(site)
    assert signed.startswith("hpc.example/log\n12\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\ntime 1700000000\n\n")
    assert open_checkpoint(signed, [site.verifier], origin="hpc.example/log") == cp
    with pytest.raises(CheckpointError, match="not 'other'"):
        open_checkpoint(signed, [site.verifier], origin="other")
    stranger = note.Signer.generate("hpc.example/log")
    with pytest.raises(CheckpointError, match="signed by no trusted key"):
        open_checkpoint(signed, [stranger.verifier])
    assert parse_body(Checkpoint("o", 0, EMPTY_ROOT).body()).size == 0
    for body, problem in [
        ("o\n012\n" + base64.b64encode(EMPTY_ROOT).decode() + "\n", "leading zeros"),
        ("o\n1\nAAAA\n", "expected 32"),
        ("o\n1\n", "at least three lines"),
        ("\n1\n" + base64.b64encode(EMPTY_ROOT).decode() + "\n", "origin line is empty"),
    ]:
        with pytest.raises(CheckpointError, match=problem):
            parse_body(body)
