"""The site meter hook: whole-site power from a command or an HTTP endpoint the site provides.

The answer is either a bare number (in the configured unit, kW by default: site meters speak
kW) or a JSON object ``{"kw": 123.4}`` / ``{"w": 123400}`` / ``{"watts": 123400}``. A value
that is not finite, negative or above ``max_watts`` (default 100 MW: above any single HPC site,
below a unit mix-up of kW read as W on a big one) is refused with a message saying what came back.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any, Literal

import requests
import structlog

from slurm_flex.power.readers.command import RunFn, run_command
from slurm_flex.power.readers.errors import PowerError, PowerParseError, PowerReadError
from slurm_flex.power.sample import PowerSample

log = structlog.get_logger(__name__)

Unit = Literal["kW", "W"]
DEFAULT_MAX_WATTS = 100e6

_JSON_KEYS: dict[str, float] = {"kw": 1000.0, "w": 1.0, "watts": 1.0}


def parse_meter_reading(text: str, unit: Unit, source: str, max_watts: float = DEFAULT_MAX_WATTS) -> float:
    """Watts from a meter's answer; raises :class:`PowerParseError` naming ``source``."""
    body = text.strip()
    if not body:
        raise PowerParseError(f"{source}: empty answer")
    value: Any
    scale = 1000.0 if unit == "kW" else 1.0
    if body.startswith("{"):
        try:
            doc = json.loads(body)
        except json.JSONDecodeError as exc:
            raise PowerParseError(f"{source}: invalid JSON: {exc}") from exc
        keys = [k for k in _JSON_KEYS if k in doc]
        if len(keys) != 1:
            raise PowerParseError(f"{source}: expected exactly one of 'kw', 'w', 'watts' in {body[:120]!r}")
        value, scale = doc[keys[0]], _JSON_KEYS[keys[0]]
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise PowerParseError(f"{source}: {keys[0]} is {value!r}, not a number")
    else:
        value = body
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise PowerParseError(f"{source}: {str(value)[:80]!r} is not a number") from exc
    watts = number * scale
    if not math.isfinite(watts):
        raise PowerParseError(f"{source}: {number!r} is not a finite power")
    if watts < 0:
        raise PowerParseError(f"{source}: negative power {watts:g} W")
    if watts > max_watts:
        raise PowerParseError(
            f"{source}: {watts:,.0f} W is above the plausible maximum {max_watts:,.0f} W "
            f"(wrong unit? configured {unit})"
        )
    return watts


class CommandMeter:
    """Site power from a command the site provides (stdout: number or JSON)."""

    name = "meter"

    def __init__(
        self,
        argv: Sequence[str],
        *,
        site: str = "site",
        unit: Unit = "kW",
        run: RunFn = run_command,
        timeout: float = 10.0,
        max_watts: float = DEFAULT_MAX_WATTS,
    ) -> None:
        if not argv:
            raise PowerError("meter command is empty")
        self.argv = list(argv)
        self.site = site
        self.unit = unit
        self._run = run
        self.timeout = timeout
        self.max_watts = max_watts

    def read(self, now: float) -> list[PowerSample]:
        text = self._run(self.argv, self.timeout)
        watts = parse_meter_reading(text, self.unit, f"meter command {self.argv[0]}", self.max_watts)
        return [PowerSample(source="meter", component="site", watts=watts, at=now, node=self.site)]


class HttpMeter:
    """Site power from an HTTP endpoint (GET, body: number or JSON)."""

    name = "meter-http"

    def __init__(
        self,
        url: str,
        *,
        site: str = "site",
        unit: Unit = "kW",
        timeout: float = 5.0,
        max_watts: float = DEFAULT_MAX_WATTS,
        session: requests.Session | None = None,
    ) -> None:
        self.url = url
        self.site = site
        self.unit = unit
        self.timeout = timeout
        self.max_watts = max_watts
        self._session = session or requests.Session()

    def read(self, now: float) -> list[PowerSample]:
        try:
            response = self._session.get(self.url, timeout=self.timeout)
        except requests.Timeout as exc:
            raise PowerReadError(f"meter {self.url}: no answer within {self.timeout:g} s") from exc
        except requests.RequestException as exc:
            raise PowerReadError(f"meter {self.url}: {exc}") from exc
        if response.status_code != 200:
            raise PowerReadError(f"meter {self.url}: HTTP {response.status_code}: {response.text[:200]}")
        watts = parse_meter_reading(response.text, self.unit, f"meter {self.url}", self.max_watts)
        return [PowerSample(source="meter", component="site", watts=watts, at=now, node=self.site)]
