"""Estimated job power from requested resources.

The submit hook (``job_submit/slurmflex.lua``) computes the same estimate at submission and
writes it into the job's tag; this Python twin serves jobs submitted before the hook was
installed (or with the hook off). ``tests/test_hook_lua.py`` checks that both agree.

Per job (per array task), with the node type of the job's partition::

    watts = nodes * idle + cpus * (max - idle) / cpus_per_node      (cpus capped at the nodes' CPUs)
          + memory_gb * memory_watts_per_gb
          + sum over requested GPUs of the GPU model's watts (or the node type's gpu_watts)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from slurm_flex.slurm.parsers import first_partition

_GPU = re.compile(r"^gres[:/]gpu(?::(?P<model>[^:=,]+))?[:=](?P<count>\d+)$")


@dataclass(frozen=True)
class NodePower:
    node_idle_watts: float = 120.0
    node_max_watts: float = 450.0
    cpus_per_node: int = 64
    gpu_watts: float = 300.0


@dataclass(frozen=True)
class Request:
    """What a job asked for, as far as power is concerned."""

    nodes: int = 1
    cpus: int = 1
    memory_mb: float = 0.0
    gpus_per_node: Mapping[str, int] = field(default_factory=dict)
    gpus_per_job: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class PowerModel:
    default: NodePower = NodePower()
    memory_watts_per_gb: float = 0.375
    node_types: Mapping[str, NodePower] = field(default_factory=dict)
    partition_node_types: Mapping[str, str] = field(default_factory=dict)
    gpu_model_watts: Mapping[str, float] = field(default_factory=dict)

    def node_type(self, partition: str | None) -> NodePower:
        name = self.partition_node_types.get(first_partition(partition))
        return self.node_types.get(name, self.default) if name else self.default

    def _gpu(self, model: str, node: NodePower) -> float:
        return self.gpu_model_watts.get(model, node.gpu_watts)

    def estimate(self, req: Request, partition: str | None = None) -> float:
        node = self.node_type(partition)
        nodes = max(1, req.nodes)
        cpus = max(1, min(req.cpus, nodes * node.cpus_per_node))
        watts = nodes * node.node_idle_watts + cpus * (node.node_max_watts - node.node_idle_watts) / node.cpus_per_node
        watts += req.memory_mb / 1024.0 * self.memory_watts_per_gb
        watts += sum(n * nodes * self._gpu(m, node) for m, n in req.gpus_per_node.items())
        watts += sum(n * self._gpu(m, node) for m, n in req.gpus_per_job.items())
        return watts


def gpus(tres: str) -> dict[str, int]:
    """GPU counts by model from a TRES string: ``gres:gpu:2``, ``gres/gpu:a100:4``, ``gres/gpu=1``
    (an untyped request counts under the model ``default``)."""
    out: dict[str, int] = {}
    for item in filter(None, (tres or "").split(",")):
        m = _GPU.match(item.strip())
        if m:
            model = m.group("model") or "default"
            out[model] = out.get(model, 0) + int(m.group("count"))
    return out
