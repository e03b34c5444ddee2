"""Estimated job power from requested resources.

The submit hook (``job_submit/slurmflex.lua``) computes the same estimate at submission and
writes it into the job's tag; this Python twin serves jobs submitted before the hook was
installed. ``tests/test_hook_lua.py`` checks that both agree.

    watts = nodes * idle + min(cpus, nodes * cpus_per_node) * (max - idle) / cpus_per_node
            + gpus * gpu_watts
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_GPU = re.compile(r"gres[:/]gpu(?::[^:,=]+)?[:=](\d+)")


@dataclass(frozen=True)
class PowerModel:
    node_idle_watts: float = 120.0
    node_max_watts: float = 450.0
    cpus_per_node: int = 64
    gpu_watts: float = 300.0

    def estimate(self, nodes: int, cpus: int, gpus_per_node: int = 0) -> float:
        nodes = max(1, nodes)
        busy_cpus = min(max(cpus, 1), nodes * self.cpus_per_node)
        dynamic = (self.node_max_watts - self.node_idle_watts) / self.cpus_per_node
        return nodes * self.node_idle_watts + busy_cpus * dynamic + nodes * gpus_per_node * self.gpu_watts


def gpus_per_node(tres_per_node: str) -> int:
    """GPUs per node from a TRES string such as ``gres:gpu:2``, ``gres/gpu:a100:4`` or ``gres/gpu=1``."""
    return sum(int(m.group(1)) for m in _GPU.finditer(tres_per_node or ""))
