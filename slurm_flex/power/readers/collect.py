"""Read every power reader once, never raising."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import structlog

from slurm_flex.errors import SlurmFlexError
from slurm_flex.power.sample import PowerReader, PowerSample

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class CollectResult:
    """All samples of one collection round and one error string per reader that failed."""

    samples: tuple[PowerSample, ...]
    errors: tuple[str, ...]

    @property
    def error_count(self) -> int:
        return len(self.errors)


def collect(readers: Iterable[PowerReader], now: float) -> CollectResult:
    """Read each reader once. A reader's failure is logged, kept as ``"<reader>: <message>"``
    and counted; the other readers still run and this function never raises -- measured power
    is advisory, a broken sensor must not stop a planning cycle."""
    samples: list[PowerSample] = []
    errors: list[str] = []
    for reader in readers:
        try:
            samples.extend(reader.read(now))
        except SlurmFlexError as exc:
            log.warning("power_reader_failed", reader=reader.name, error=str(exc))
            errors.append(f"{reader.name}: {exc}")
        except Exception as exc:  # a bug in one reader must not take the cycle down either
            log.error("power_reader_crashed", reader=reader.name, error=repr(exc), exc_info=True)
            errors.append(f"{reader.name}: unexpected {type(exc).__name__}: {exc}")
    return CollectResult(samples=tuple(samples), errors=tuple(errors))
