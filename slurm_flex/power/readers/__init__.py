"""Readers of measured power: node power (RAPL, IPMI DCMI, NVIDIA GPUs, Slurm's own energy
accounting) and the site meter, behind one :class:`~slurm_flex.power.sample.PowerReader`
interface, plus :func:`~slurm_flex.power.readers.collect.collect` to read them all without
ever raising.

Every reader takes its filesystem root or its command (and the function that runs it) as a
parameter, so tests and benchmarks drive the real parsing code against fake trees and recorded
outputs.
"""

from __future__ import annotations

from slurm_flex.power.readers.collect import CollectResult, collect
from slurm_flex.power.readers.errors import (
    PowerCommandError,
    PowerError,
    PowerParseError,
    PowerPermissionError,
    PowerReadError,
    PowerUnsupportedError,
)

__all__ = [
    "CollectResult",
    "PowerCommandError",
    "PowerError",
    "PowerParseError",
    "PowerPermissionError",
    "PowerReadError",
    "PowerUnsupportedError",
    "collect",
]
