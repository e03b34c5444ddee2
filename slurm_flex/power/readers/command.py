"""The default subprocess seam of the command-based power readers.

Each reader takes a ``run(argv, timeout) -> stdout`` callable defaulting to :func:`run_command`,
so tests substitute recorded outputs and the daemon could substitute its own runner. Failures
become :class:`~slurm_flex.power.readers.errors.PowerCommandError` naming the command.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Sequence

import structlog

from slurm_flex.power.readers.errors import PowerCommandError

log = structlog.get_logger(__name__)

RunFn = Callable[[Sequence[str], float], str]


def run_command(argv: Sequence[str], timeout: float) -> str:
    """Run ``argv`` without a shell and return its stdout.

    Raises :class:`PowerCommandError` when the binary is missing or not executable, when it
    runs longer than ``timeout`` seconds, or when it exits non-zero (with its output attached,
    so callers can recognise a BMC's "not supported" answer).
    """
    started = time.monotonic()
    # C locale: the parsers match English labels, and FreeIPMI/ipmitool translate nothing today,
    # but a localised decimal comma from some future tool would silently misparse.
    env = dict(os.environ, LC_ALL="C")
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False, env=env)
    except subprocess.TimeoutExpired as exc:
        raise PowerCommandError(argv, f"did not finish within {timeout:g} s") from exc
    except FileNotFoundError as exc:
        raise PowerCommandError(argv, f"{argv[0]} not found (is it installed and on PATH?)") from exc
    except OSError as exc:
        raise PowerCommandError(argv, f"cannot run {argv[0]}: {exc.strerror or exc}") from exc
    log.debug("power_command", argv=list(argv[:3]), rc=proc.returncode, seconds=round(time.monotonic() - started, 4))
    if proc.returncode != 0:
        raise PowerCommandError(
            argv, f"exited {proc.returncode}", returncode=proc.returncode, output=f"{proc.stdout}\n{proc.stderr}"
        )
    return proc.stdout
