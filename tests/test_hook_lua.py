"""Runs the Lua unit tests of the submit hook under Lua 5.1, one pytest case per Lua test,
and checks that the Lua and Python power models agree."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from slurm_flex.powermodel import NodePower, PowerModel, Request
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


POLICY_LUA = (
    "{power = {node_idle_watts = 110, node_max_watts = 420, cpus_per_node = 48, gpu_watts = 275, "
    "memory_watts_per_gb = 0.5, node_types = {fat = {node_idle_watts = 300, node_max_watts = 1200, "
    "cpus_per_node = 96, gpu_watts = 350}}, partition_node_types = {big = 'fat'}, gpu_model_watts = {a100 = 400}}}"
)
MODEL = PowerModel(
    default=NodePower(110.0, 420.0, 48, 275.0),
    memory_watts_per_gb=0.5,
    node_types={"fat": NodePower(300.0, 1200.0, 96, 350.0)},
    partition_node_types={"big": "fat"},
    gpu_model_watts={"a100": 400.0},
)


@pytest.mark.lua
@pytest.mark.parametrize(
    ("job_desc", "request_", "partition"),
    [
        ("{min_nodes = 1, min_cpus = 1}", Request(nodes=1, cpus=1), None),
        ("{min_nodes = 1, min_cpus = 64}", Request(nodes=1, cpus=64), None),
        ("{min_nodes = 2, min_cpus = 3, min_mem_per_node = 4096}", Request(nodes=2, cpus=3, memory_mb=8192), None),
        ("{min_nodes = 4, min_cpus = 500}", Request(nodes=4, cpus=500), None),
        ("{min_cpus = 8, min_mem_per_cpu = 1000}", Request(nodes=1, cpus=8, memory_mb=8000), None),
        (
            "{min_nodes = 1, min_cpus = 8, tres_per_node = 'gres:gpu:2'}",
            Request(nodes=1, cpus=8, gpus_per_node={"default": 2}),
            None,
        ),
        (
            "{min_nodes = 3, min_cpus = 12, tres_per_node = 'gres/gpu:a100:4'}",
            Request(nodes=3, cpus=12, gpus_per_node={"a100": 4}),
            "big",
        ),
        (
            "{num_tasks = 4, cpus_per_task = 2, tres_per_task = 'gres:gpu:1', tres_per_job = 'gres:gpu:a100:2'}",
            Request(nodes=1, cpus=8, gpus_per_job={"default": 4, "a100": 2}),
            "big",
        ),
    ],
)
def test_lua_and_python_power_models_agree(
    tmp_path: Path, job_desc: str, request_: Request, partition: str | None
) -> None:
    script = tmp_path / "power.lua"
    part = "nil" if partition is None else repr(partition)
    script.write_text(
        f'test("p", function() local M = require("slurmflex")\nM.configure({POLICY_LUA})\n'
        f'print(string.format("%.12f", M.estimate_power(job_desc({job_desc}), {part}))) end)\n'
    )
    proc = _lua(str(script))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lua_watts = float(proc.stdout.split("\n")[0])
    assert lua_watts == pytest.approx(MODEL.estimate(request_, partition), rel=1e-9)
