"""The command line: clear errors, the plan contract, hook installation, the example config."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import BaseModel

from slurm_flex.cli import main
from slurm_flex.config import Config, load_config
from slurm_flex.job_submit.install import render_policy
from tests.conftest import REPO, lua_available
from tests.helpers import write_config


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_bad_config_is_one_clear_line(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.toml", {"daemon": {"mode": "yolo"}})
    code, _, err = run("--config", str(path), "config", "check")
    assert code == 1
    assert err.startswith(f"slurmflex: error: {path}: daemon.mode:") and "'shadow'" in err
    assert "Traceback" not in err


def test_status_without_state_says_so(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.toml", {"daemon": {"state_dir": str(tmp_path / "none")}})
    code, _, err = run("--config", str(path), "status")
    assert code == 1 and "has the daemon run with this state_dir?" in err


def test_plan_instance_json(tmp_path: Path) -> None:
    inst = {
        "slot_minutes": 30,
        "start": "2026-11-21T08:00:00Z",
        "carbon_price_gbp_per_tonne": 100,
        "slots": [
            {"carbon_g_per_kwh": c, "price_gbp_per_mwh": 70.0, "capacity_nodes": 2, "power_cap_kw": None}
            for c in (300, 250, 80, 90, 300, 300)
        ],
        "jobs": [
            {"id": "1001", "nodes": 2, "power_kw": 1.1, "duration_slots": 2, "release_slot": 0, "deadline_slot": 6},
            {"id": "1002", "nodes": 1, "power_kw": 0.5, "duration_slots": 1, "release_slot": 0, "deadline_slot": 6},
        ],
    }
    path = tmp_path / "i.json"
    path.write_text(json.dumps(inst))
    code, out, _ = run("plan", "--instance", str(path), "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["starts"] == {"1001": 2, "1002": 1}  # 1001 takes the green pair; capacity pushes 1002 aside
    assert doc["late"] == [] and doc["objective_gbp"] >= doc["lower_bound_gbp"]
    code, out, _ = run("plan", "--instance", str(path))
    assert code == 0 and "1001: slot 2" in out
    path.write_text('{"slots": []}')
    code, _, err = run("plan", "--instance", str(path))
    assert code == 1 and "slots: expected a non-empty list" in err


def test_forecast_command_shows_source(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.toml", {"forecast": {"replay_from": "2026-11-21T08:00:00Z"}})
    code, out, _ = run("--config", str(path), "forecast", "--json")
    (doc,) = json.loads(out)["sites"]
    assert code == 0 and doc["site"] == "default" and "replayed from 2023-11-17T17:00:00Z" in doc["source"]
    assert doc["slots"][0] == {
        "from": "2026-11-21T08:00:00Z",
        "carbon_g_per_kwh": 289.0,
        "carbon_origin": "forecast",
        "price_gbp_per_mwh": 142.15,
        "price_origin": "forecast",
    }
    assert [(s["quantity"], s["from"], s["origin"]) for s in doc["segments"]] == [
        ("carbon", "2026-11-21T08:00:00Z", "forecast"),
        ("price", "2026-11-21T08:00:00Z", "forecast"),
    ]
    code, out, _ = run("--config", str(path), "forecast")
    assert code == 0 and "carbon g/kWh: 57 (at 2026-11-22T13:00Z) .. 290" in out
    assert "2026-11-21 |                █" in out  # the chart starts at 08:00 (16 half-hours in)
    code, _, err = run("--config", str(path), "forecast", "--site", "nowhere")
    assert code == 1 and "no site nowhere" in err


def test_hook_install_refuses_a_foreign_job_submit(tmp_path: Path) -> None:
    (tmp_path / "job_submit.lua").write_text("-- the site's own\nfunction slurm_job_submit() return 0 end\n")
    cfg = write_config(tmp_path / "c.toml", {"flex": {"grace_seconds": 60}})
    code, _, err = run("--config", str(cfg), "hook", "install", "--dest", str(tmp_path))
    assert code == 1 and "is not slurm-flex's" in err
    assert "the site's own" in (tmp_path / "job_submit.lua").read_text()
    code, out, _ = run("--config", str(cfg), "hook", "install", "--dest", str(tmp_path), "--module-only")
    assert code == 0 and "slurmflex.lua" in out and "job_submit.lua" not in out
    code, _, _ = run("--config", str(cfg), "hook", "install", "--dest", str(tmp_path), "--force")
    assert code == 0 and "slurmflex" in (tmp_path / "job_submit.lua").read_text()
    code, _, err = run("--config", str(cfg), "hook", "install", "--dest", str(tmp_path / "missing"))
    assert code == 1 and "is not a directory" in err


@pytest.mark.skipif(not lua_available(), reason="lua5.1 not installed")
def test_rendered_policy_is_valid_lua(tmp_path: Path) -> None:
    cfg = Config.model_validate(
        {
            "flex": {
                "partitions": ['we"ird', "bätch"],
                "grace_seconds": 45,
                "partition": {"gpu-a": {"max_slack_hours": 2}},
            },
            "power": {"node_types": {"fat": {"node_idle_watts": 1, "node_max_watts": 2, "cpus_per_node": 3}}},
        }
    )
    (tmp_path / "p.lua").write_text(render_policy(cfg))
    probe = tmp_path / "probe.lua"
    probe.write_text(
        "local p = dofile(arg[1]); print(p.grace_seconds, p.partitions[1], p.partitions[2], p.power.cpus_per_node, "
        "p.partition_policy['gpu-a'].max_slack_seconds, p.power.node_types.fat.cpus_per_node)"
    )
    out = subprocess.run(
        ["lua5.1", str(probe), str(tmp_path / "p.lua")], capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["45", 'we"ird', "bätch", "64", "7200", "3"]


def test_example_config_documents_every_option() -> None:
    example = REPO / "conf" / "slurmflex.toml"
    cfg = load_config(example, environ={})
    assert cfg == Config()  # the example shows the defaults
    text = example.read_text()

    def documented(model: type[BaseModel], prefix: str) -> None:
        for key, spec in model.model_fields.items():
            name = f"{prefix}.{key}" if prefix else key
            annotation = spec.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                assert re.search(rf"^\[{re.escape(name)}[.\]]", text, re.MULTILINE), f"[{name}] is not in {example}"
                documented(annotation, name)
            elif str(annotation).startswith("dict["):  # tables are shown as commented examples
                assert re.search(rf"^# \[{re.escape(name)}[.\]]", text, re.MULTILINE), f"{name} is not in {example}"
            else:
                assert re.search(rf"^#? ?{key} = ", text, re.MULTILINE), f"{name} is not in {example}"

    documented(Config, "")
