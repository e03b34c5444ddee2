"""Witness cosignatures (tlog-cosignature/v1) on the site's checkpoints: added by a witness,
ignored by the site's own verification, checked for each witness an auditor trusts."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from slurm_flex.ledger import note
from slurm_flex.ledger.checkpoint import Checkpoint, open_checkpoint
from slurm_flex.ledger.cosignature import COSIGNATURE, cosign, cosigner_verifier, verify_cosignatures
from slurm_flex.ledger.errors import NoteError


def test_cosign_and_verify() -> None:
    site = note.Signer.generate("hpc.example/log")
    signed = Checkpoint("hpc.example/log", 7, bytes(range(32))).sign(site)
    wkey = Ed25519PrivateKey.generate()
    witness = cosigner_verifier("witness.example/w1", wkey)
    assert note.Verifier.parse(witness.vkey(), sig_type=COSIGNATURE) == witness
    cosigned = cosign(signed, "witness.example/w1", wkey, 1_800_000_000)
    assert verify_cosignatures(cosigned, [witness]) == {"witness.example/w1": 1_800_000_000}
    assert open_checkpoint(cosigned, [site.verifier]).size == 7  # the site's signature still verifies
    other = cosigner_verifier("witness.example/w2", Ed25519PrivateKey.generate())
    with pytest.raises(NoteError, match=r"not cosigned by witness witness\.example/w2"):
        verify_cosignatures(cosigned, [witness, other])
    # A changed checkpoint fails its cosignature.
    forged = cosigned.replace("\n7\n", "\n8\n")
    with pytest.raises(NoteError, match="does not verify"):
        verify_cosignatures(forged, [witness])
    with pytest.raises(NoteError, match="not a cosignature/v1 key"):
        verify_cosignatures(cosigned, [site.verifier])
