"""Errors of the power readers.

All derive from :class:`PowerError` (itself a :class:`~slurm_flex.errors.SlurmFlexError`), so the
daemon counts every power failure with one ``except``. A reader that fails *soft* -- the source is
missing, unreadable, unsupported or answered nonsense -- raises :class:`PowerReadError` or one of
its subclasses; :func:`slurm_flex.power.readers.collect.collect` turns those into counted error strings.
Messages always name the path, command or URL involved.
"""

from __future__ import annotations

from collections.abc import Sequence

from slurm_flex.errors import SlurmFlexError


class PowerError(SlurmFlexError):
    """Root of the power readers' errors (also used for invalid reader configuration)."""


class PowerReadError(PowerError):
    """A reader could not produce a reading this time; the daemon carries on without it."""


class PowerPermissionError(PowerReadError):
    """A counter file exists but may not be read (e.g. RAPL ``energy_uj`` is root-only)."""


class PowerUnsupportedError(PowerReadError):
    """The source is absent or says it cannot measure (no RAPL zones, BMC without DCMI power
    reading, GPU reporting ``[Not Supported]``, power measurement deactivated)."""


class PowerParseError(PowerReadError):
    """The source answered, but not in a shape the parser understands."""


class PowerCommandError(PowerReadError):
    """A command run by a reader failed: missing binary, timeout or non-zero exit.

    ``output`` keeps stdout and stderr together because BMC tools print their refusals
    ("Invalid command", "not supported") on either.
    """

    def __init__(self, argv: Sequence[str], problem: str, returncode: int | None = None, output: str = "") -> None:
        self.argv = tuple(argv)
        self.returncode = returncode
        self.output = output.strip()
        detail = f": {self.output[:300]}" if self.output else ""
        super().__init__(f"{' '.join(self.argv[:4])}: {problem}{detail}")
