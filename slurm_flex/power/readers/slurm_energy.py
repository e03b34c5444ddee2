"""Node power as Slurm itself measured it (``AcctGatherEnergyType``), read from scontrol.

Two shapes exist, and which one a cluster gives depends on its Slurm version:

* ``scontrol show node --json`` (Slurm >= 23.02; data_parser v0.0.39+): each node has
  ``energy: {average_watts, base_consumed_energy, consumed_energy (J), current_watts,
  previous_consumed_energy, last_collected}`` where ``current_watts`` is either a plain integer
  or ``{"set": bool, "infinite": bool, "number": int}``.
* Slurm 22.05 (Debian 12) has no ``--json`` for scontrol (``scontrol: unrecognized option
  '--json'``), and its ``sinfo --json`` node objects carry no energy at all; the only source is
  ``scontrol -o show node``: ``CurrentWatts=<n> AveWatts=<n>`` per node line (``n/s`` when the
  node has no energy structure).

Without an energy plugin Slurm still prints ``CurrentWatts=0`` and, in JSON, zeros with
``last_collected: 0``. Those mean "no reading", never 0 W: a node that is up draws power.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from slurm_flex.errors import SlurmError, SlurmParseError
from slurm_flex.power.readers.errors import PowerParseError
from slurm_flex.power.sample import PowerSample
from slurm_flex.slurm.parsers import load_slurm_json, slurm_number

log = structlog.get_logger(__name__)

RunArgv = Callable[[Sequence[str]], str]

TEXT_ARGV: tuple[str, ...] = ("scontrol", "-o", "show", "node")
JSON_ARGV: tuple[str, ...] = ("scontrol", "show", "node", "--json")

# Slurm's NO_VAL / INFINITE sentinels for 32-bit fields, printed as plain numbers by old versions.
_SENTINEL_MIN = 0xFFFFFFFE


@dataclass(frozen=True)
class NodeEnergy:
    """What Slurm says about one node's power. None = no reading."""

    node: str
    current_watts: float | None
    average_watts: float | None
    consumed_joules: float | None
    collected_at: float | None


def _number(value: Any) -> float | None:
    """An energy figure: a Slurm number (:func:`~slurm_flex.slurm.parsers.slurm_number`), where
    anything unreadable, negative or a NO_VAL/INFINITE sentinel is no reading."""
    try:
        number = slurm_number(value)
    except SlurmParseError:
        return None
    if number is None or number >= _SENTINEL_MIN or number < 0:
        return None
    return float(number)


def _positive(value: float | None) -> float | None:
    return value if value is not None and value > 0 else None


def node_energy_from_json(doc: Mapping[str, Any]) -> list[NodeEnergy]:
    """Every node of a ``scontrol show node --json`` document (or slurmrestd's ``/nodes``)."""
    nodes = doc.get("nodes")
    if not isinstance(nodes, list):
        raise PowerParseError("scontrol show node --json: no 'nodes' list in the document")
    result: list[NodeEnergy] = []
    for node in nodes:
        if not isinstance(node, Mapping) or not isinstance(node.get("name"), str):
            raise PowerParseError("scontrol show node --json: a node without a name")
        energy = node.get("energy")
        if not isinstance(energy, Mapping):
            result.append(NodeEnergy(node["name"], None, None, None, None))
            continue
        collected = _positive(_number(energy.get("last_collected")))
        # A never-collected structure (last_collected 0) is what Slurm keeps with no plugin.
        result.append(
            NodeEnergy(
                node=node["name"],
                current_watts=_positive(_number(energy.get("current_watts"))) if collected else None,
                average_watts=_positive(_number(energy.get("average_watts"))) if collected else None,
                consumed_joules=_positive(_number(energy.get("consumed_energy"))) if collected else None,
                collected_at=collected,
            )
        )
    return result


def parse_node_energy(doc: Mapping[str, Any], now: float) -> list[PowerSample]:
    """Samples (component ``node``) for the nodes of a JSON document that have a reading.

    ``at`` is when Slurm collected the reading (``last_collected``), so callers can see stale
    figures; ``now`` is used only if Slurm did not say.
    """
    return _samples(node_energy_from_json(doc), now)


_NODE_NAME = re.compile(r"(?:^|\s)NodeName=(\S+)")
_CURRENT = re.compile(r"(?:^|\s)CurrentWatts=(\S+)")
_AVERAGE = re.compile(r"(?:^|\s)AveWatts=(\S+)")


def _text_number(match: re.Match[str] | None) -> float | None:
    if match is None:
        return None
    try:
        return _number(int(match.group(1)))
    except ValueError:
        return None  # "n/s", "n/a"


def node_energy_from_text(text: str) -> list[NodeEnergy]:
    """Every node of ``scontrol -o show node`` (one node per line)."""
    result: list[NodeEnergy] = []
    for line in text.splitlines():
        name = _NODE_NAME.search(line)
        if name is None:
            if line.strip():
                raise PowerParseError(f"scontrol -o show node: a line without NodeName=: {line[:80]!r}")
            continue
        result.append(
            NodeEnergy(
                node=name.group(1),
                current_watts=_positive(_text_number(_CURRENT.search(line))),
                average_watts=_positive(_text_number(_AVERAGE.search(line))),
                consumed_joules=None,
                collected_at=None,
            )
        )
    return result


def parse_node_energy_text(text: str, now: float) -> list[PowerSample]:
    return _samples(node_energy_from_text(text), now)


def _samples(energies: Sequence[NodeEnergy], now: float) -> list[PowerSample]:
    return [
        PowerSample(source="slurm", component="node", watts=e.current_watts, at=e.collected_at or now, node=e.node)
        for e in energies
        if e.current_watts is not None
    ]


class SlurmEnergyReader:
    """Node power for every node Slurm measures, from one scontrol call.

    ``run`` takes an argv and returns stdout; the daemon passes its Slurm runner
    (``lambda argv: runner.run(argv).stdout``) so the call is timed, counted and typed like every
    other Slurm command. ``json_output`` selects ``scontrol show node --json`` (Slurm >= 23.02);
    the default text form is the only one Slurm 22.05 has.
    """

    name = "slurm-energy"

    def __init__(self, run: RunArgv, *, json_output: bool = False) -> None:
        self._run = run
        self.json_output = json_output

    def energies(self) -> list[NodeEnergy]:
        if self.json_output:
            try:
                doc = load_slurm_json(self._run(list(JSON_ARGV)), " ".join(JSON_ARGV))
            except SlurmError as exc:  # not JSON, or Slurm's own errors inside it
                raise PowerParseError(str(exc)) from exc
            return node_energy_from_json(doc)
        return node_energy_from_text(self._run(list(TEXT_ARGV)))

    def read(self, now: float) -> list[PowerSample]:
        return _samples(self.energies(), now)
