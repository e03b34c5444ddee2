"""Read every power reader once, never raising; and turn samples into per-node watts."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
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
