"""Runs the Lua unit tests of the submit hook under Lua 5.1, one pytest case per Lua test,
and checks that the Lua and Python power models agree."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from slurm_flex.powermodel import PowerModel
from tests.conftest import REPO, lua_available

HARNESS = Path(__file__).parent / "lua" / "harness.lua"
LUA_TESTS = Path(__file__).parent / "lua" / "test_slurmflex.lua"
HOOK_DIR = REPO / "job_submit"

pytestmark = pytest.mark.skipif(not lua_available(), reason="lua5.1 not installed (scripts/devcluster up installs it)")


def _lua(*args: str) -> subprocess.CompletedProcess[str]:
    argv = ["lua5.1", str(HARNESS), str(HOOK_DIR), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def _names() -> list[str]:
    if not lua_available():
        return ["(lua5.1 missing)"]
    proc = _lua(str(LUA_TESTS), "--list")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split("\n")[:-1]


@pytest.mark.lua
@pytest.mark.parametrize("name", _names())
def test_lua(name: str) -> None:
    proc = _lua(str(LUA_TESTS), name)
    assert proc.returncode == 0 and f"ok {name}" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.lua
@pytest.mark.parametrize(
    ("nodes", "cpus", "gpus"),
    [(1, 1, 0), (1, 64, 0), (2, 3, 0), (4, 500, 0), (1, 8, 2), (3, 12, 4)],
)
def test_lua_and_python_power_models_agree(tmp_path: Path, nodes: int, cpus: int, gpus: int) -> None:
    model = PowerModel(node_idle_watts=110.0, node_max_watts=420.0, cpus_per_node=48, gpu_watts=275.0)
    script = tmp_path / "power.lua"
    script.write_text(
        f'test("p", function() local M = require("slurmflex")\n'
        "M.configure({power = {node_idle_watts = 110, node_max_watts = 420, cpus_per_node = 48, gpu_watts = 275}})\n"
        f'print(string.format("%.12f", M.estimate_power(job_desc({{min_nodes = {nodes}, min_cpus = {cpus}, '
        f'tres_per_node = "gres:gpu:{gpus}"}})))) end)\n'
    )
    proc = _lua(str(script))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lua_watts = float(proc.stdout.split("\n")[0])
    assert lua_watts == pytest.approx(model.estimate(nodes, cpus, gpus), rel=1e-9)
