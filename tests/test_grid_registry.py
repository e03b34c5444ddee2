"""Providers by name: every registered provider builds from a site's table with its own
[providers.*] settings; unknown names and incomplete tables are config errors naming what is
wrong; the config's [providers.*] tables are exactly the registered settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from slurm_flex.config import Config, load_config
from slurm_flex.errors import ConfigError
from slurm_flex.grid.cache import GridCache
from slurm_flex.grid.electricitymaps import ElectricityMapsCarbon
from slurm_flex.grid.elexon import ElexonMarketIndex
from slurm_flex.grid.factory import build_provider, build_sites
from slurm_flex.grid.filesource import FileProvider
from slurm_flex.grid.neso import NesoCarbon
from slurm_flex.grid.octopus import AgilePrice
from slurm_flex.grid.registry import provider_names, settings_tables
from slurm_flex.grid.watttime import WattTimeCarbon
from tests.helpers import write_config


def _config(tmp_path: Path, **sections: dict[str, object]) -> Config:
    return load_config(write_config(tmp_path / "c.toml", {"daemon": {"state_dir": str(tmp_path)}, **sections}))


def test_the_config_has_one_providers_table_per_registered_settings_model() -> None:
    assert list(type(Config().providers).model_fields) == list(settings_tables())
    assert list(settings_tables()) == ["neso", "octopus", "elexon", "electricitymaps", "watttime"]
    assert set(provider_names("carbon")) == {"neso", "electricitymaps", "watttime", "file"}
    assert set(provider_names("price")) == {"octopus-agile", "elexon-mid", "file"}


def test_every_provider_builds_from_a_sites_table_with_its_settings(tmp_path: Path) -> None:
    token = tmp_path / "em.token"
    token.write_text("secret-token\n")
    forecast = tmp_path / "f.csv"
    forecast.write_text("from,carbon_g_per_kwh,price_gbp_per_mwh\n2026-11-21T08:00Z,100,50\n")
    cfg = _config(
        tmp_path,
        providers={
            "neso": {"min_interval_seconds": 1200},
            "octopus": {"product": "AGILE-FLEX-22-11-25"},
            "electricitymaps": {"token_file": str(token)},
            "watttime": {"username": "u", "password": "p"},
        },
        sites={
            "a": {
                "partitions": ["x"],
                "carbon": {"provider": "neso", "region_id": 10},
                "price": {"provider": "octopus-agile", "region": "a"},
            },
            "b": {
                "partitions": ["y"],
                "carbon": {"provider": "electricitymaps", "zone": "DE"},
                "price": {"provider": "elexon-mid"},
            },
            "c": {"partitions": ["z"], "carbon": {"provider": "watttime", "region": "CAISO_NORTH"}},
            "d": {
                "carbon": {"provider": "file", "path": str(forecast)},
                "price": {"provider": "file", "path": str(forecast)},
            },
        },
    )
    built = {
        (site, q): build_provider(site, q, getattr(cfg.sites[site], q), cfg)
        for site in cfg.sites
        for q in ("carbon", "price")
    }
    kinds = {key: (type(made[0]), made[1]) if made else None for key, made in built.items()}
    assert kinds == {
        ("a", "carbon"): (NesoCarbon, 1200),
        ("a", "price"): (AgilePrice, 3600),
        ("b", "carbon"): (ElectricityMapsCarbon, 900),
        ("b", "price"): (ElexonMarketIndex, 3600),
        ("c", "carbon"): (WattTimeCarbon, 900),
        ("c", "price"): None,  # price = none: plan on carbon alone
        ("d", "carbon"): (FileProvider, 60),
        ("d", "price"): (FileProvider, 60),
    }
    agile = built[("a", "price")]
    assert agile is not None and agile[0].name == "octopus-agile:AGILE-FLEX-22-11-25/A"
    assert [p[0].quantity for p in (built[("d", "carbon")], built[("d", "price")]) if p] == ["carbon", "price"]


@pytest.mark.parametrize(
    ("carbon", "message"),
    [
        ({"provider": "nope"}, "unknown carbon provider 'nope'; known: "),
        ({"provider": "octopus-agile", "region": "A"}, "unknown carbon provider 'octopus-agile'"),
        ({"provider": "neso", "region_id": 3, "postcode": "M1"}, "give region_id or postcode, not both"),
        ({"provider": "neso", "region_id": 99}, "is not one of 1..18"),
        ({"provider": "neso", "postcode": "M1 1AE"}, "is not an outward code"),
        ({"provider": "electricitymaps"}, "electricitymaps needs zone"),
        ({"provider": "watttime"}, "watttime needs region"),
        ({"provider": "file"}, "file needs path"),
    ],
)
def test_a_sites_carbon_table_is_checked_by_its_provider(
    tmp_path: Path, carbon: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        _config(tmp_path, sites={"s": {"carbon": carbon}})


@pytest.mark.parametrize(
    ("price", "message"),
    [
        ({"provider": "neso"}, "unknown price provider 'neso'; known: .*none"),
        ({"provider": "octopus-agile"}, "octopus-agile needs region"),
        ({"provider": "octopus-agile", "region": "I"}, "is not one of"),
    ],
)
def test_a_sites_price_table_is_checked_by_its_provider(tmp_path: Path, price: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _config(tmp_path, sites={"s": {"carbon": {"provider": "neso"}, "price": price}})


def test_missing_secrets_are_config_errors_when_the_sites_are_built(tmp_path: Path) -> None:
    for provider, carbon, needs in [
        ("electricitymaps", {"provider": "electricitymaps", "zone": "GB"}, "needs a token"),
        ("watttime", {"provider": "watttime", "region": "CAISO_NORTH"}, "watttime: needs a username"),
    ]:
        cfg = _config(tmp_path, sites={"s": {"carbon": carbon}})
        with GridCache(tmp_path / f"{provider}.sqlite3") as cache, pytest.raises(ConfigError, match=needs):
            build_sites(cfg, cache)
    cfg = _config(
        tmp_path,
        providers={"electricitymaps": {"token_file": str(tmp_path / "absent")}},
        sites={"s": {"carbon": {"provider": "electricitymaps", "zone": "GB"}}},
    )
    with GridCache(tmp_path / "g.sqlite3") as cache, pytest.raises(ConfigError, match="cannot read"):
        build_sites(cfg, cache)
    cfg = _config(
        tmp_path,
        providers={"watttime": {"username": "u"}},
        sites={"s": {"carbon": {"provider": "watttime", "region": "CAISO_NORTH"}}},
    )
    with (
        GridCache(tmp_path / "w.sqlite3") as cache,
        pytest.raises(ConfigError, match=r"providers\.watttime\.password: .*needs a password"),
    ):
        build_sites(cfg, cache)


def test_sites_asking_the_same_question_share_one_feed(tmp_path: Path) -> None:
    cfg = _config(
        tmp_path,
        sites={
            "a": {"partitions": ["x"], "carbon": {"provider": "neso", "region_id": 10}},
            "b": {"partitions": ["y"], "carbon": {"provider": "neso", "region_id": 10}},
            "c": {"partitions": ["z"], "carbon": {"provider": "neso", "region_id": 3}},
        },
    )
    with GridCache(tmp_path / "g.sqlite3") as cache:
        sites = build_sites(cfg, cache)
    assert sites["a"].carbon is sites["b"].carbon and sites["a"].carbon is not sites["c"].carbon
