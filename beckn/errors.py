"""Errors of the Beckn endpoint: each carries the Beckn error code and HTTP status it is
answered with, so every refusal is a NACK that says why."""

from __future__ import annotations

from slurm_flex.errors import SlurmFlexError


class BecknError(SlurmFlexError):
    """A Beckn message was refused; ``code`` and ``status`` are what the NACK carries."""

    code = "BAD_REQUEST"
    status = 400

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status


class SignatureError(BecknError):
    """Missing, malformed or invalid signature, or a key nobody trusts (HTTP 401)."""

    code = "UNAUTHORIZED"
    status = 401


class ReplayError(BecknError):
    """The same (sender, message id) arrived again with a different body, or a signature was reused."""

    code = "REPLAY"
    status = 409


class SchemaError(BecknError):
    """The body is not valid JSON or does not match the vendored schema."""

    code = "SCHEMA_INVALID"
    status = 400


class NotFoundError(BecknError):
    code = "NOT_FOUND"
    status = 404


class ConflictError(BecknError):
    """The request cannot be honoured as asked (expired offer, window the queue cannot meet)."""

    code = "CONFLICT"
    status = 409


class KeyFileError(BecknError):
    """A signing key or trust file cannot be read."""
