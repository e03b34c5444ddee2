"""Grid-signal providers by name, each registered beside its client with its settings model.

A provider module registers what a site may name in its ``carbon``/``price`` table (as ReFrame
registers its schedulers)::

    class WattTimeSettings(ProviderSettings):          # its [providers.watttime] table
        base_url: str = BASE_URL
        username: str = ""

    @register_provider("watttime", "carbon", settings=WattTimeSettings, needs={"region": 'region = "CAISO_NORTH"'})
    def _build(signal: SignalRequest, settings: WattTimeSettings, key: str) -> WattTimeCarbon: ...

The config's ``[providers.<table>]`` tables, the provider names a site may use and how each is
built all come from here: adding a provider is one module plus its name in
:data:`PROVIDER_MODULES`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from slurm_flex.errors import ConfigError
from slurm_flex.grid.http import HttpClient
from slurm_flex.grid.readings import Provider, Quantity

# The modules whose providers are registered (imported on first use of the registry).
PROVIDER_MODULES = (
    "slurm_flex.grid.neso",
    "slurm_flex.grid.octopus",
    "slurm_flex.grid.elexon",
    "slurm_flex.grid.electricitymaps",
    "slurm_flex.grid.watttime",
    "slurm_flex.grid.filesource",
)
NO_PRICE = "none"  # a site's price table may say: plan on carbon alone


class ProviderSettings(BaseModel):
    """A ``[providers.<table>]`` section: how to call one provider (every provider has these)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    timeout_seconds: float = Field(10.0, gt=0, le=120)
    retries: int = Field(2, ge=0, le=10)
    # Never ask more often than this (providers update half-hourly or daily).
    min_interval_seconds: int = Field(900, ge=60, le=86400)


@dataclass(frozen=True)
class SignalRequest:
    """What a site's ``carbon`` or ``price`` table asks for (every field a provider may use)."""

    quantity: Quantity
    provider: str
    region_id: int | None = None  # neso: a region (1-14; 15-18 are aggregates)
    postcode: str | None = None  # neso: an outward postcode, e.g. CB3
    zone: str | None = None  # electricitymaps: e.g. GB, DE, FR
    region: str | None = None  # watttime: e.g. CAISO_NORTH; octopus-agile: a DNO region letter
    path: Path | None = None  # file
    replay_from: datetime | None = None  # file: replay its first slot from this UTC time

    @classmethod
    def of(cls, quantity: Quantity, table: BaseModel) -> SignalRequest:
        """From a site's ``carbon`` or ``price`` table (config.CarbonSignal, config.PriceSignal)."""
        return cls(quantity=quantity, **table.model_dump())


S = TypeVar("S", bound=ProviderSettings)
Build = Callable[[SignalRequest, Any, str], Provider]
Check = Callable[[SignalRequest], None]


@dataclass(frozen=True)
class ProviderType:
    """A provider as a site names it: what it gives, its settings, how to check and build it."""

    name: str
    quantity: Quantity
    build: Build  # (request, its [providers.<table>] settings or None, config key) -> client
    check: Check  # raises ValueError naming what the site's table lacks
    settings: type[ProviderSettings] | None  # None: nothing to configure (a file)
    table: str | None  # the [providers.<table>] name
    min_interval_seconds: int  # for providers without settings

    def interval(self, settings: ProviderSettings | None) -> int:
        return settings.min_interval_seconds if settings is not None else self.min_interval_seconds


_REGISTRY: dict[tuple[Quantity, str], ProviderType] = {}


def _no_check(signal: SignalRequest) -> None:
    return None


def _needing(name: str, needs: Mapping[str, str], check: Check) -> Check:
    def checked(signal: SignalRequest) -> None:
        for field, example in needs.items():
            value = getattr(signal, field)
            if value is None or value == "":
                raise ValueError(f"{name} needs {field}" + (f", e.g. {example}" if example else ""))
        check(signal)

    return checked


def register_provider(
    name: str,
    *quantities: Quantity,
    settings: type[S] | None = None,
    table: str | None = None,
    needs: Mapping[str, str] | None = None,
    check: Check = _no_check,
    min_interval_seconds: int = 60,
) -> Callable[[Callable[[SignalRequest, S, str], Provider]], Callable[[SignalRequest, S, str], Provider]]:
    """Register a provider's builder under ``name`` for each quantity it gives. ``table`` (the
    ``[providers.*]`` section, by default the name) holds its ``settings``. ``needs``: the
    fields a site's table must give (with an example for the message); ``check`` validates
    them further. Both run when the config is loaded."""
    site_check = _needing(name, needs or {}, check)

    def add(build: Callable[[SignalRequest, S, str], Provider]) -> Callable[[SignalRequest, S, str], Provider]:
        for quantity in quantities:
            key = (quantity, name)
            if key in _REGISTRY:
                raise ValueError(f"{quantity} provider {name!r} is registered twice")
            _REGISTRY[key] = ProviderType(
                name=name,
                quantity=quantity,
                build=build,
                check=site_check,
                settings=settings,
                table=None if settings is None else (table or name),
                min_interval_seconds=min_interval_seconds,
            )
        return build

    return add


def _registry() -> dict[tuple[Quantity, str], ProviderType]:
    for module in PROVIDER_MODULES:  # each registers its providers when first imported
        importlib.import_module(module)
    return _REGISTRY


def provider_names(quantity: Quantity) -> tuple[str, ...]:
    return tuple(name for q, name in _registry() if q == quantity)


def provider_type(quantity: Quantity, name: str) -> ProviderType:
    """The registered provider; ValueError listing the known ones otherwise."""
    found = _registry().get((quantity, name))
    if found is None:
        known = [*provider_names(quantity), *([NO_PRICE] if quantity == "price" else [])]
        raise ValueError(f"unknown {quantity} provider {name!r}; known: {', '.join(known)}")
    return found


def settings_tables() -> dict[str, type[ProviderSettings]]:
    """Every ``[providers.<table>]`` section and its settings model, in registration order."""
    tables: dict[str, type[ProviderSettings]] = {}
    for spec in _registry().values():
        if spec.table is not None and spec.settings is not None:
            tables.setdefault(spec.table, spec.settings)
    return tables


# -- helpers for builders -------------------------------------------------------------------------
def http_client(name: str, settings: ProviderSettings, base_url: str) -> HttpClient:
    return HttpClient(name, base_url, timeout_seconds=settings.timeout_seconds, retries=settings.retries)


def secret(value: str, path: Path | None, key: str, needed_by: str) -> str:
    """A token or password (``key``, e.g. ``providers.watttime.password``): read from its file
    (``<key>_file``) when one is given, else the value itself; a ConfigError saying who needs
    it when there is none."""
    if path is not None:
        try:
            value = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(str(path), f"{key}_file", f"cannot read: {exc.strerror}") from exc
    if not value:
        raise ConfigError("config", key, f"{needed_by}: needs a {key.rsplit('.', 1)[-1]}")
    return value


def replay_epoch(signal: SignalRequest) -> int | None:
    return None if signal.replay_from is None else int(signal.replay_from.timestamp())
