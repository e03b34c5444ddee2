"""Sites and their signal providers, built from the config.

Each distinct provider question (e.g. NESO region 10) gets one client and one feed, shared by
every site that asks it, so it is asked at most once per cycle. Bad provider settings (a
missing token file, an unknown Agile region) are config errors, fatal at start.
"""

from __future__ import annotations

from pathlib import Path

from slurm_flex.config import (
    CarbonSignal,
    Config,
    PriceSignal,
    ProviderSettings,
)
from slurm_flex.errors import ConfigError, ForecastError
from slurm_flex.grid.cache import GridCache
from slurm_flex.grid.electricitymaps import ElectricityMapsCarbon
from slurm_flex.grid.elexon import ElexonMarketIndex
from slurm_flex.grid.filesource import FileProvider
from slurm_flex.grid.http import HttpClient
from slurm_flex.grid.neso import NesoCarbon
from slurm_flex.grid.octopus import AgilePrice
from slurm_flex.grid.readings import Provider
from slurm_flex.grid.signals import ProviderFeed, SignalPolicy, SiteSignals
from slurm_flex.grid.watttime import WattTimeCarbon

# For file "providers": asked every cycle (reading a local file costs nothing).
FILE_INTERVAL_SECONDS = 60


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


def _http(name: str, settings: ProviderSettings, base_url: str) -> HttpClient:
    return HttpClient(name, base_url, timeout_seconds=settings.timeout_seconds, retries=settings.retries)


def _secret(value: str, path: Path | None, key: str) -> str:
    if path is None:
        return value
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(str(path), key, f"cannot read: {exc.strerror}") from exc


def _carbon(site: str, signal: CarbonSignal, config: Config) -> tuple[Provider, int]:
    p = config.providers
    key = f"sites.{site}.carbon"
    if signal.provider == "neso":
        client = _http("neso", p.neso, p.neso.base_url)
        return NesoCarbon(client, region_id=signal.region_id, postcode=signal.postcode), p.neso.min_interval_seconds
    if signal.provider == "electricitymaps":
        em = p.electricitymaps
        token = _secret(em.token, em.token_file, "providers.electricitymaps.token_file")
        if not token:
            raise ConfigError("config", "providers.electricitymaps.token", f"{key} uses electricitymaps: needs a token")
        zone = signal.zone or ""
        return ElectricityMapsCarbon(_http("electricitymaps", em, em.base_url), zone, token), em.min_interval_seconds
    if signal.provider == "watttime":
        wt = p.watttime
        password = _secret(wt.password, wt.password_file, "providers.watttime.password_file")
        if not wt.username or not password:
            raise ConfigError("config", "providers.watttime", f"{key} uses watttime: needs username and password")
        client = _http("watttime", wt, wt.base_url)
        return WattTimeCarbon(client, signal.region or "", wt.username, password), wt.min_interval_seconds
    assert signal.path is not None  # the config validates it
    replay = None if signal.replay_from is None else int(signal.replay_from.timestamp())
    return FileProvider(signal.path, "carbon", replay), FILE_INTERVAL_SECONDS


def _price(signal: PriceSignal, config: Config) -> tuple[Provider, int] | None:
    p = config.providers
    if signal.provider == "octopus-agile":
        client = _http("octopus", p.octopus, p.octopus.base_url)
        return AgilePrice(client, signal.region or "", p.octopus.product), p.octopus.min_interval_seconds
    if signal.provider == "elexon-mid":
        return ElexonMarketIndex(_http("elexon", p.elexon, p.elexon.base_url)), p.elexon.min_interval_seconds
    if signal.provider == "file":
        assert signal.path is not None
        replay = None if signal.replay_from is None else int(signal.replay_from.timestamp())
        return FileProvider(signal.path, "price", replay), FILE_INTERVAL_SECONDS
    return None


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
            carbon = feed(_carbon(name, site.carbon, config))
            price_made = _price(site.price, config)
        except (ValueError, ForecastError) as exc:
            raise ConfigError("config", f"sites.{name}", str(exc)) from exc
        sites[name] = SiteSignals(name, carbon, None if price_made is None else feed(price_made), policy)
    return sites
