"""Sites and their signal providers, built from the config.

Providers are looked up by name in :mod:`slurm_flex.grid.registry` (each provider module
registers itself with its settings). Each distinct provider question (e.g. NESO region 10) gets
one client and one feed, shared by every site that asks it, so it is asked at most once per
cycle. Bad provider settings (a missing token file, an unknown Agile region) are config errors,
fatal at start.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from slurm_flex.config import Config
from slurm_flex.errors import ConfigError, ForecastError
from slurm_flex.grid.cache import GridCache
from slurm_flex.grid.readings import Provider, Quantity
from slurm_flex.grid.registry import NO_PRICE, ProviderSettings, SignalRequest, provider_type
from slurm_flex.grid.signals import ProviderFeed, SignalPolicy, SiteSignals


def signal_policy(config: Config) -> SignalPolicy:
    s = config.signals
    return SignalPolicy(
        horizon_hours=config.policy.max_horizon_hours,
        max_forecast_age_seconds=int(s.max_forecast_age_hours * 3600),
        profile_weeks=s.profile_weeks,
        profile_days=s.profile_days,
        history_days=s.history_days,
        retention_days=s.retention_days,
    )


def grid_cache_path(config: Config) -> Path:
    return config.daemon.state_dir / "grid.sqlite3"


def build_provider(site: str, quantity: Quantity, table: BaseModel, config: Config) -> tuple[Provider, int] | None:
    """The client a site's ``carbon``/``price`` table names, and how often it may be asked
    (None: ``price = none``)."""
    request = SignalRequest.of(quantity, table)
    if request.provider == NO_PRICE:
        return None
    kind = provider_type(quantity, request.provider)
    settings: ProviderSettings | None = None if kind.table is None else getattr(config.providers, kind.table)
    return kind.build(request, settings, f"sites.{site}.{quantity}"), kind.interval(settings)


def build_sites(config: Config, cache: GridCache) -> dict[str, SiteSignals]:
    """One SiteSignals per [sites.*] entry (empty when none are configured)."""
    policy = signal_policy(config)
    feeds: dict[str, ProviderFeed] = {}

    def feed(made: tuple[Provider, int]) -> ProviderFeed:
        provider, interval = made
        if provider.name not in feeds:
            feeds[provider.name] = ProviderFeed(provider, cache, interval, policy)
        return feeds[provider.name]

    sites = {}
    for name, site in config.sites.items():
        try:
            carbon = build_provider(name, "carbon", site.carbon, config)
            price = build_provider(name, "price", site.price, config)
        except (ValueError, ForecastError) as exc:
            raise ConfigError("config", f"sites.{name}", str(exc)) from exc
        assert carbon is not None  # a site always names its carbon provider
        sites[name] = SiteSignals(name, feed(carbon), None if price is None else feed(price), policy)
    return sites
