"""What every power reader returns, the interface it implements, and per-node watts from samples."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class PowerSample:
    """One power reading.

    ``component`` names what was measured: ``package-0``, ``dram-0``, ``core-0`` (RAPL),
    ``system`` (BMC), ``gpu-0``, ``node`` (Slurm's own energy accounting) or ``site`` (meter).
    ``top_level`` is false for components whose power is already inside another reported
    component of the same source (a RAPL ``core`` zone is inside its package), so summing the
    top-level samples of one source never double counts. ``at`` is when the reading applies,
    in epoch seconds.
    """

    source: str
    component: str
    watts: float
    at: float
    node: str
    top_level: bool = True


@runtime_checkable
class PowerReader(Protocol):
    """A source of power samples. ``read`` raises :class:`~slurm_flex.power.readers.errors.PowerReadError`
    (or a subclass) when it cannot read this time; it may return an empty list when it has
    nothing yet (a RAPL reader's first call, which only sets the energy baseline)."""

    @property
    def name(self) -> str: ...

    def read(self, now: float) -> list[PowerSample]: ...


def node_watts(samples: Sequence[PowerSample]) -> dict[str, float]:
    """Each node's power from its samples, counting nothing twice.

    Rule, per node, first that applies:

    1. ``system`` (the BMC's DCMI reading) when present: it is measured at the power supplies,
       so it already contains CPUs, memory, GPUs, fans and PSU losses; adding RAPL or GPU
       figures to it would double count.
    2. ``node`` (Slurm's own energy accounting) when present: whatever Slurm's plugin measures
       for the whole node.
    3. Otherwise the sum of the top-level RAPL/amd_energy components (packages + DRAM, or psys)
       plus every GPU: the parts we can see, a lower bound of the node's draw.

    Site-meter samples (component ``site``) are not node power and are ignored.
    """
    by_node: dict[str, list[PowerSample]] = defaultdict(list)
    for sample in samples:
        if sample.component != "site":
            by_node[sample.node].append(sample)
    result: dict[str, float] = {}
    for node, own in by_node.items():
        # One figure per component: two readers of the same thing (nvidia-smi and NVML, or two
        # BMC tools) must not add up; the first reader configured wins.
        first: dict[str, PowerSample] = {}
        for sample in own:
            first.setdefault(sample.component, sample)
        whole = first.get("system") or first.get("node")
        if whole is not None:
            result[node] = whole.watts
        else:
            result[node] = sum(s.watts for s in first.values() if s.top_level)
    return result
