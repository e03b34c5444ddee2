"""The single seam through which slurm-flex runs Slurm commands.

Everything that talks to Slurm goes through :meth:`SlurmRunner.run`, which applies a timeout,
pins the time zone to UTC (so times we format and times Slurm parses agree, whatever the host's
zone and daylight-saving state) and turns failures into typed errors. Parsing lives elsewhere,
in pure functions.

A Slurm installed in a chroot (another Slurm version beside the host's, as scripts/devcluster
runs 24.11) is driven by prefixing ``chroot DIR``: the commands, their libraries, plugins and
slurm.conf are then the chroot's, and the controller is reached over the shared loopback.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from slurm_flex.errors import (
    SlurmCommandError,
    SlurmError,
    SlurmTimeoutError,
    SlurmUnavailableError,
)

log = structlog.get_logger(__name__)

# stderr fragments meaning "the controller is not there right now" rather than "bad request".
_UNAVAILABLE_MARKERS = (
    "Unable to contact slurm controller",
    "Socket timed out on send/recv",
    "Connection refused",
    "backup controller in standby mode",
    "Zero Bytes were transmitted or received",
    "Communication connection failure",
    "Munge encode failed",
)


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    seconds: float


class SlurmRunner:
    """Runs Slurm client commands; counts what it ran so cycles can report controller load."""

    def __init__(
        self,
        bin_dir: Path | None = None,
        slurm_conf: Path | None = None,
        timeout_seconds: float = 30.0,
        extra_env: Mapping[str, str] | None = None,
        chroot: Path | None = None,
    ) -> None:
        self.bin_dir = bin_dir
        self.chroot = chroot
        self.timeout_seconds = timeout_seconds
        env = dict(os.environ)
        if slurm_conf is not None:
            env["SLURM_CONF"] = str(slurm_conf)
        env["TZ"] = "UTC"
        env.update(extra_env or {})
        self._env = env
        self.calls: Counter[str] = Counter()

    def _executable(self, name: str) -> str:
        return str(self.bin_dir / name) if self.bin_dir else name

    def command(self, argv: Sequence[str]) -> tuple[str, ...]:
        """The full command line for ``argv``: the executable from bin_dir, inside the chroot
        if there is one."""
        full = (self._executable(argv[0]), *argv[1:])
        return ("chroot", str(self.chroot), *full) if self.chroot else full

    def run(self, argv: Sequence[str], *, check: bool = True) -> CommandResult:
        """Run ``argv`` (its first item a Slurm command name) and return its output.

        Raises :class:`SlurmUnavailableError` when the controller cannot be reached,
        :class:`SlurmTimeoutError` on timeout and :class:`SlurmCommandError` for any other
        non-zero exit when ``check`` is true.
        """
        full = self.command(argv)
        self.calls[argv[0]] += 1
        started = time.monotonic()
        try:
            proc = subprocess.run(
                full,
                capture_output=True,
                text=True,
                env=self._env,
                timeout=self.timeout_seconds,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise SlurmTimeoutError(f"{argv[0]} did not finish within {self.timeout_seconds:g}s") from exc
        except OSError as exc:
            raise SlurmError(f"cannot run {full[0]}: {exc.strerror or exc}") from exc
        result = CommandResult(
            argv=tuple(full),
            returncode=proc.returncode,
            stdout=proc.stdout,
            stderr=proc.stderr,
            seconds=time.monotonic() - started,
        )
        shown = list(full[:6] if self.chroot else full[:4])
        log.debug("slurm_command", argv=shown, rc=proc.returncode, seconds=round(result.seconds, 3))
        if check and proc.returncode != 0:
            if any(marker in proc.stderr for marker in _UNAVAILABLE_MARKERS):
                raise SlurmUnavailableError(full, proc.returncode, proc.stderr)
            raise SlurmCommandError(full, proc.returncode, proc.stderr)
        return result
