"""Signed documents anchored in the ledger: green-compute certificates and settlement statements.

A document file is JSON::

    {"body": {...},
     "ledger": {"index", "record", "proof", "checkpoint"},   # inclusion proof of its ledger record
     "signature": {"key": "<name>+<hex key ID>", "ed25519": base64}}

Its ledger record (of the document's kind) holds the SHA-256 of the body's canonical JSON, so
the body is in the append-only log; the Ed25519 signature covers the canonical JSON of ``body``
and ``ledger`` together, so any changed field fails. Verification needs only the file and the
site's verifier key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any

from slurm_flex.errors import LedgerError
from slurm_flex.ledger.checkpoint import Checkpoint
from slurm_flex.ledger.errors import ProofError
from slurm_flex.ledger.log import Ledger, canonical, check_inclusion, inclusion_from_json
from slurm_flex.ledger.note import Verifier


def _signed_part(doc: dict[str, Any]) -> bytes:
    return canonical({"body": doc["body"], "ledger": doc["ledger"]})


def digest(body: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(body)).hexdigest()


def issue(ledger: Ledger, kind: str, subject: str, body: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """Log the body's digest (a ``kind`` record about ``subject``), sign a checkpoint covering
    it, and return the signed document with its inclusion proof."""
    index = ledger.append(kind, {"subject": subject, "sha256": digest(body), **extra})
    checkpoint = ledger.checkpoint()
    proof = [base64.b64encode(p).decode() for p in ledger.inclusion_proof(index, ledger.size)]
    doc: dict[str, Any] = {
        "body": body,
        "ledger": {"index": index, "record": ledger.record(index).decode(), "proof": proof, "checkpoint": checkpoint},
    }
    v = ledger.signer.verifier
    doc["signature"] = {
        "key": f"{v.name}+{v.key_id:08x}",
        "ed25519": base64.b64encode(ledger.signer.sign(_signed_part(doc))).decode(),
    }
    return doc


def verify(text: str, verifier: Verifier, kind: str) -> tuple[dict[str, Any], int, Checkpoint]:
    """(body, ledger index, checkpoint) of a signed document; :class:`LedgerError` says what is wrong."""
    try:
        doc = json.loads(text)
        body, anchor, sig = doc["body"], doc["ledger"], doc["signature"]
        key, signature = sig["key"], base64.b64decode(sig["ed25519"], validate=True)
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise LedgerError(f"not a signed {kind} file: {exc}") from exc
    if key != f"{verifier.name}+{verifier.key_id:08x}":
        raise LedgerError(f"signed by {key}, not by the trusted key {verifier.name}+{verifier.key_id:08x}")
    if not verifier.verify(_signed_part(doc), signature):
        raise LedgerError(f"the signature does not verify: a field of the {kind} was changed")
    if not isinstance(body, dict):
        raise LedgerError(f"the {kind} body is not a JSON object")
    try:
        proof = inclusion_from_json(anchor)
        cp = check_inclusion(proof, verifier)
    except ProofError as exc:
        raise LedgerError(f"ledger inclusion: {exc}") from exc
    record = json.loads(proof.record)
    if record.get("kind") != kind or record.get("data", {}).get("sha256") != digest(body):
        raise LedgerError(f"the ledger record is not this {kind}'s (its kind or digest differs)")
    return body, proof.index, cp
