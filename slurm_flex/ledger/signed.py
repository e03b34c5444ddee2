"""Signed documents anchored in the ledger: green-compute certificates and settlement statements.

A document file is JSON::

    {"body": {...},
     "ledger": {"index", "record", "proof", "checkpoint",      # inclusion proof of its ledger record
                "evidence": [{"index", "record", "proof"}]},  # optional: records the body cites
     "signature": {"key": "<name>+<hex key ID>", "ed25519": base64}}

Its ledger record (of the document's kind) holds the SHA-256 of the body's canonical JSON, so
the body is in the append-only log; the Ed25519 signature covers the canonical JSON of ``body``
and ``ledger`` together, so any changed field fails. ``evidence`` proves, against the same
checkpoint, earlier records the body rests on (a certificate's observed start), so a verifier
checks the claim against the log itself and not only against the site's word. Verification
needs only the file and the site's verifier key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
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


def _proof(ledger: Ledger, index: int) -> list[str]:
    return [base64.b64encode(p).decode() for p in ledger.inclusion_proof(index, ledger.size)]


def issue(
    ledger: Ledger, kind: str, subject: str, body: dict[str, Any], evidence: Sequence[int] = (), **extra: Any
) -> dict[str, Any]:
    """Log the body's digest (a ``kind`` record about ``subject``), sign a checkpoint covering
    it, and return the signed document with its inclusion proof, and proofs of the records
    ``evidence`` names against the same checkpoint."""
    index = ledger.append(kind, {"subject": subject, "sha256": digest(body), **extra})
    checkpoint = ledger.checkpoint()
    anchor: dict[str, Any] = {
        "index": index,
        "record": ledger.record(index).decode(),
        "proof": _proof(ledger, index),
        "checkpoint": checkpoint,
    }
    if evidence:
        anchor["evidence"] = [
            {"index": i, "record": ledger.record(i).decode(), "proof": _proof(ledger, i)} for i in sorted(set(evidence))
        ]
    doc: dict[str, Any] = {"body": body, "ledger": anchor}
    v = ledger.signer.verifier
    doc["signature"] = {
        "key": f"{v.name}+{v.key_id:08x}",
        "ed25519": base64.b64encode(ledger.signer.sign(_signed_part(doc))).decode(),
    }
    return doc


@dataclass(frozen=True)
class Verified:
    body: dict[str, Any]
    index: int
    checkpoint: Checkpoint
    evidence: dict[int, dict[str, Any]]  # the cited records, parsed, by index: each proved


def verify(text: str, verifier: Verifier, kind: str) -> tuple[dict[str, Any], int, Checkpoint]:
    """(body, ledger index, checkpoint) of a signed document; :class:`LedgerError` says what is wrong."""
    done = verify_document(text, verifier, kind)
    return done.body, done.index, done.checkpoint


def verify_document(text: str, verifier: Verifier, kind: str) -> Verified:
    """A signed document, its anchor and every evidence record checked; :class:`LedgerError`
    says what is wrong."""
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
    try:
        record = json.loads(proof.record)
    except ValueError as exc:
        raise LedgerError(f"ledger inclusion: the proved record is not JSON ({exc})") from exc
    data = record.get("data") if isinstance(record, dict) else None
    if not isinstance(data, dict) or record.get("kind") != kind or data.get("sha256") != digest(body):
        raise LedgerError(f"the ledger record is not this {kind}'s (its kind or digest differs)")
    evidence: dict[int, dict[str, Any]] = {}
    for item in anchor.get("evidence", []):
        try:
            cited = inclusion_from_json({**item, "checkpoint": anchor["checkpoint"]})
            check_inclusion(cited, verifier)
            evidence[cited.index] = json.loads(cited.record)
        except (ProofError, ValueError, TypeError) as exc:
            raise LedgerError(f"evidence record {item.get('index') if isinstance(item, dict) else '?'}: {exc}") from exc
        if evidence[cited.index].get("i") != cited.index:
            raise LedgerError(f"evidence record {cited.index} says it is record {evidence[cited.index].get('i')}")
    return Verified(body, proof.index, cp, evidence)
