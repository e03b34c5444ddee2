"""What node agents and the daemon agree on: the push format and the shared token.

An agent POSTs ``{"node": ..., "samples": [{"source", "component", "watts", "at",
"top_level"}]}`` to the daemon's ``/v1/power`` with ``Authorization: Bearer <token>``.
:func:`to_wire` writes a sample the way the agent sends it; :func:`parse_push` is the daemon's
side, pure, refusing a malformed push whole with the reason (which goes back to the agent).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from slurm_flex.errors import ConfigError, SlurmFlexError
from slurm_flex.power.sample import PowerSample

PUSH_PATH = "/v1/power"
MAX_SAMPLES_PER_PUSH = 1000
MAX_PLAUSIBLE_WATTS = 100_000.0  # one node (or a meter's site figure) above 100 kW is garbage
MIN_TOKEN_CHARS = 16


class PushError(SlurmFlexError):
    """An agent's push that cannot be taken (its message goes back to the agent)."""


def to_wire(sample: PowerSample) -> dict[str, object]:
    """One sample as an agent sends it (the node is given once per push)."""
    doc = asdict(sample)
    doc.pop("node")
    return doc


def parse_push(doc: Any, received_at: float, max_skew: float = 300.0) -> list[PowerSample]:
    """Samples from one agent push. Anything malformed rejects the whole push with the reason."""
    if not isinstance(doc, Mapping):
        raise PushError("body must be a JSON object")
    node = doc.get("node")
    if not isinstance(node, str) or not node or len(node) > 128:
        raise PushError("'node' must be a non-empty string")
    raw = doc.get("samples")
    if not isinstance(raw, list):
        raise PushError("'samples' must be a list")
    if len(raw) > MAX_SAMPLES_PER_PUSH:
        raise PushError(f"at most {MAX_SAMPLES_PER_PUSH} samples per push")
    out = []
    for i, item in enumerate(raw):
        where = f"samples[{i}]"
        if not isinstance(item, Mapping):
            raise PushError(f"{where} must be an object")
        source, component = item.get("source"), item.get("component")
        if not isinstance(source, str) or not source or not isinstance(component, str) or not component:
            raise PushError(f"{where}: 'source' and 'component' must be non-empty strings")
        watts, at = item.get("watts"), item.get("at")
        if isinstance(watts, bool) or not isinstance(watts, int | float) or not math.isfinite(watts):
            raise PushError(f"{where}: 'watts' must be a number")
        if not 0.0 <= watts <= MAX_PLAUSIBLE_WATTS:
            raise PushError(f"{where}: {watts} W is outside 0..{MAX_PLAUSIBLE_WATTS:g}")
        if isinstance(at, bool) or not isinstance(at, int | float) or abs(at - received_at) > max_skew:
            raise PushError(f"{where}: 'at' must be an epoch time within {max_skew:g} s of the daemon's clock")
        out.append(PowerSample(source, component, float(watts), float(at), node, bool(item.get("top_level", True))))
    return out


def read_token(path: Path | None, key: str = "agent.token_file") -> str:
    """The shared token, from the file agents (``agent.token_file``) and the daemon
    (``measure.token_file``) both read."""
    if path is None:
        raise ConfigError("config", key, "needs the shared token file agents and the daemon use")
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(str(path), key, f"cannot read: {exc.strerror}") from exc
    if len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(
            str(path), key, f"the token must be at least {MIN_TOKEN_CHARS} characters (e.g. openssl rand -hex 32)"
        )
    return token
