"""The one exception hierarchy of slurm-flex.

Every error the project raises derives from :class:`SlurmFlexError`, so the daemon can count
soft failures with a single ``except`` and the CLI can turn any of them into a clear message.
Errors are always raised ``from`` their cause.
"""

from __future__ import annotations

from collections.abc import Sequence


class SlurmFlexError(Exception):
    """Root of every error slurm-flex raises on purpose."""


class ConfigError(SlurmFlexError):
    """Invalid configuration: names the file, the key and what would have been valid."""

    def __init__(self, source: str, key: str, problem: str, valid: str | None = None) -> None:
        self.source = source
        self.key = key
        self.problem = problem
        self.valid = valid
        text = f"{source}: {key}: {problem}"
        if valid:
            text += f" (valid: {valid})"
        super().__init__(text)


class SlurmError(SlurmFlexError):
    """A Slurm command failed or returned something slurm-flex cannot read."""


class SlurmCommandError(SlurmError):
    """A Slurm command exited non-zero."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str) -> None:
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stderr = stderr.strip()
        super().__init__(f"{' '.join(self.argv[:3])}... exited {returncode}: {self.stderr[:500]}")


class SlurmUnavailableError(SlurmCommandError):
    """slurmctld could not be reached (down, restarting or unreachable)."""


class SlurmTimeoutError(SlurmError):
    """A Slurm command did not finish within its timeout."""


class SlurmQueryError(SlurmError):
    """Slurm answered, but with errors instead of data (e.g. ``squeue --json`` while the
    controller is unreachable: Slurm 22.05 exits 0 and lists the failure in the JSON)."""


class SlurmParseError(SlurmError):
    """Slurm's output did not have the expected shape."""


class SlurmVersionError(SlurmParseError):
    """Slurm's JSON comes from a data_parser slurm-flex does not know (a newer Slurm): the
    message names it and the Slurm release, so a cycle fails whole and says why instead of
    misreading fields that changed."""


class ForecastError(SlurmFlexError):
    """A grid-signal forecast could not be obtained or is not usable."""


class ForecastFormatError(ForecastError):
    """A forecast file or response is malformed; the message says where."""


class ProviderError(ForecastError):
    """A grid-signal provider could not be asked or did not answer usefully (network error,
    timeout, HTTP error status). Malformed answers raise :class:`ForecastFormatError`."""

    def __init__(self, provider: str, problem: str, status: int | None = None) -> None:
        self.provider = provider
        self.status = status
        super().__init__(f"{provider}: {problem}")


class ProviderRateLimited(ProviderError):
    """The provider asked us to slow down (HTTP 429); ``retry_after`` seconds, if it said."""

    def __init__(self, provider: str, retry_after: float | None) -> None:
        self.retry_after = retry_after
        wait = f", retry after {retry_after:.0f} s" if retry_after is not None else ""
        super().__init__(provider, f"rate limited (HTTP 429){wait}", status=429)


class StateError(SlurmFlexError):
    """The state store could not be opened, read or written."""


class PlanningError(SlurmFlexError):
    """A planning instance is invalid."""


class HookInstallError(SlurmFlexError):
    """The submit hook could not be installed or rendered."""


class SimulationError(SlurmFlexError):
    """A simulation cannot run with these inputs (``slurmflex simulate``)."""


class TraceError(SimulationError):
    """A workload trace could not be read; the message names the file (and line)."""


class SignalsError(SimulationError):
    """Grid data for a simulation could not be read."""


class LedgerError(SlurmFlexError):
    """The verifiable record (slurm_flex.ledger): the log, its proofs, signatures, settlement."""
