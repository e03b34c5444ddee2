"""The ledger's errors: all :class:`~slurm_flex.errors.LedgerError`s, so the daemon treats a
ledger failure as one soft failure and the CLI prints it as one line."""

from __future__ import annotations

from slurm_flex.errors import LedgerError


class ProofError(LedgerError):
    """A Merkle inclusion or consistency proof does not verify (the message says why)."""


class NoteError(LedgerError):
    """A signed note is malformed, or not signed by a key the verifier trusts."""


class CheckpointError(LedgerError):
    """A checkpoint's text is not a valid tlog-checkpoint body."""


class KeyFileError(LedgerError):
    """The site's signing key or verifier key cannot be read, made or parsed."""


class VerificationError(LedgerError):
    """The log does not verify: ``index`` names the first bad record (None: not a record, e.g.
    a checkpoint's signature)."""

    def __init__(self, index: int | None, problem: str) -> None:
        self.index = index
        self.problem = problem
        super().__init__(f"record {index}: {problem}" if index is not None else problem)


class CertificateError(LedgerError):
    """A green-compute certificate is malformed or does not verify."""


class SettlementError(LedgerError):
    """A settlement cannot be computed: unknown order, bad period, missing data."""
