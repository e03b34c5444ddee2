"""Config layers and strict validation with file, key and valid values in every error."""

from __future__ import annotations

from pathlib import Path

import pytest

from slurm_flex.config import load_config
from slurm_flex.errors import ConfigError
from tests.helpers import write_config


def _empty(tmp_path: Path) -> Path:
    path = tmp_path / "empty.toml"
    path.write_text("")
    return path


def test_defaults_from_an_empty_file(tmp_path: Path) -> None:
    cfg = load_config(_empty(tmp_path), environ={})
    assert cfg.daemon.mode == "enforce" and cfg.policy.safety_margin_seconds == 900
    assert cfg.forecast.path.name.endswith(".csv") and cfg.forecast.path.exists()


def test_layers_file_then_env_then_cli(tmp_path: Path) -> None:
    path = write_config(
        tmp_path / "c.toml", {"daemon": {"mode": "shadow", "interval_seconds": 60}, "flex": {"partitions": ["batch"]}}
    )
    env = {
        "SLURMFLEX_DAEMON__INTERVAL_SECONDS": "120",
        "SLURMFLEX_FLEX__PARTITIONS": "a,b",
        "SLURMFLEX_FLEX__PARTITION__GPU__MAX_SLACK_HOURS": "6",
    }
    cfg = load_config(path, environ=env, overrides={"daemon": {"state_dir": str(tmp_path)}})
    assert cfg.daemon.mode == "shadow"  # file
    assert cfg.daemon.interval_seconds == 120  # env beats file
    assert cfg.flex.partitions == ("a", "b")
    assert cfg.flex.slack_limits("gpu", None) == (0.0, 6.0)
    assert cfg.daemon.state_dir == tmp_path  # CLI beats both
    cli = load_config(path, environ=env, overrides={"daemon": {"mode": "enforce"}})
    assert cli.daemon.mode == "enforce"


def test_env_names_the_config_file(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.toml", {"daemon": {"mode": "shadow"}})
    assert load_config(environ={"SLURMFLEX_CONFIG": str(path)}).daemon.mode == "shadow"


def test_unknown_key_lists_the_valid_ones(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.toml", {"daemon": {"moed": "shadow"}})
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    err = info.value
    assert err.source == str(path) and err.key == "daemon.moed" and "unknown key" in str(err)
    assert err.valid is not None and "mode" in err.valid and "state_dir" in err.valid


def test_unknown_section(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.toml", {"deamon": {"mode": "shadow"}})
    with pytest.raises(ConfigError, match="deamon: unknown key") as info:
        load_config(path, environ={})
    assert "daemon" in (info.value.valid or "")


def test_bad_value_names_the_valid_values(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.toml", {"daemon": {"mode": "aggressive"}})
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert info.value.key == "daemon.mode" and "'shadow'" in str(info.value) and "'enforce'" in str(info.value)
    path = write_config(tmp_path / "c.toml", {"policy": {"min_saving_fraction": 2}})
    with pytest.raises(ConfigError, match=r"policy.min_saving_fraction: .*less than 1"):
        load_config(path, environ={})


def test_bad_env_value_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="environment variable SLURMFLEX_DAEMON__INTERVAL_SECONDS") as info:
        load_config(_empty(tmp_path), environ={"SLURMFLEX_DAEMON__INTERVAL_SECONDS": "often"})
    assert info.value.key == "daemon.interval_seconds"


def test_replay_from_needs_a_zone(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.toml", {"forecast": {"replay_from": "2026-11-21T08:00:00"}})
    with pytest.raises(ConfigError, match=r"forecast\.replay_from"):
        load_config(path, environ={})


def test_broken_toml_and_missing_explicit_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[daemon\nmode=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad, environ={})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml", environ={})


def test_partition_node_types_must_exist(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[power.partition_node_types]\ngpu = "a100-node"\n')
    with pytest.raises(ConfigError, match="names node type 'a100-node'; known: none defined"):
        load_config(path, environ={})
    path.write_text(
        "[power.node_types.a100-node]\nnode_idle_watts = 300\nnode_max_watts = 900\ncpus_per_node = 64\n"
        '[power.partition_node_types]\ngpu = "a100-node"\n'
    )
    assert load_config(path, environ={}).power.node_types["a100-node"].node_max_watts == 900


def test_slack_layers_qos_beats_partition_beats_global(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        "[flex]\ndefault_slack_hours = 1\nmax_slack_hours = 48\n"
        "[flex.partition.batch]\ndefault_slack_hours = 12\n"
        "[flex.qos.low]\ndefault_slack_hours = 24\nmax_slack_hours = 24\n"
    )
    flex = load_config(path, environ={}).flex
    assert flex.slack_limits("debug", None) == (1.0, 48.0)
    assert flex.slack_limits("batch", "normal") == (12.0, 48.0)
    assert flex.slack_limits("batch", "low") == (24.0, 24.0)
    path.write_text("[flex.partition.batch]\nmax_slak_hours = 1\n")
    with pytest.raises(ConfigError, match=r"flex\.partition\.batch\.max_slak_hours: unknown key"):
        load_config(path, environ={})


def test_settlement_nodes_name_known_node_types(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[settlement.nodes]\ndefault = 4\ngpu = 2\n")
    with pytest.raises(ConfigError, match="names node type 'gpu'; known: default"):
        load_config(path, environ={})
    path.write_text(
        "[power.node_types.gpu]\nnode_idle_watts = 300\nnode_max_watts = 900\ncpus_per_node = 64\n"
        "[settlement.nodes]\ndefault = 4\ngpu = 2\n"
    )
    assert load_config(path, environ={}).settlement.nodes == {"default": 4, "gpu": 2}
