"""Runs the Lua unit tests of the submit hook under Lua 5.1, one pytest case per Lua test;
checks that the Lua and Python power models and site slack policies agree; and fuzzes the hook
with 10,000 malformed job descriptions, every one of which it must accept."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from slurm_flex.config import Config
from slurm_flex.job_submit.install import render_policy
from slurm_flex.power.model import NodePower, PowerModel, Request
from slurm_flex.slurm.parsers import first_partition
from tests.conftest import REPO, lua_available

HARNESS = Path(__file__).parent / "lua" / "harness.lua"
LUA_TESTS = Path(__file__).parent / "lua" / "test_slurmflex.lua"
HOOK_DIR = REPO / "job_submit"

pytestmark = pytest.mark.skipif(not lua_available(), reason="lua5.1 not installed (scripts/devcluster up installs it)")


def _lua(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    argv = ["lua5.1", str(HARNESS), str(HOOK_DIR), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False, env=env)


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


SLACK = Config.model_validate(
    {
        "flex": {
            "default_slack_hours": 2,
            "max_slack_hours": 48,
            "partition": {
                "gpu": {"max_slack_hours": 6},
                "cpu": {"default_slack_hours": 12},
                "both": {"default_slack_hours": 1, "max_slack_hours": 3},
                "none": {"default_slack_hours": 0},
            },
            "qos": {
                "urgent": {"max_slack_hours": 0.5},
                "cheap": {"default_slack_hours": 24, "max_slack_hours": 72},
                "half": {"default_slack_hours": 4},
            },
        }
    }
)
KEYWORD_SLACK = 100 * 3600  # a job's own flex=100h


@pytest.mark.lua
def test_lua_and_python_slack_policies_agree(tmp_path: Path) -> None:
    """For every partition/QOS layering: the hook's limits, and the slack it writes into the tag
    of a job with flex=100h and of a plain job, are what FlexConfig.slack_limits says."""
    policy = tmp_path / "policy.lua"
    policy.write_text(render_policy(SLACK))
    cases = [
        (p, q)
        for p in (None, "gpu", "cpu", "both", "none", "other", "gpu,cpu")
        for q in (None, "urgent", "cheap", "half", "other")
    ]

    def lua_value(v: str | None) -> str:
        return "nil" if v is None else repr(v)

    rows = "\n".join(f"  {{ {lua_value(p)}, {lua_value(q)} }}," for p, q in cases)
    script = tmp_path / "slack.lua"
    script.write_text(
        'test("slack", function()\n'
        '  local M = require("slurmflex")\n'
        f"  M.configure(dofile({str(policy)!r}))\n"
        f"  for _, c in ipairs({{\n{rows}\n  }}) do\n"
        "    local p, q = c[1], c[2]\n"
        "    local first = p and string.match(p, '^([^,]+)')\n"
        "    local default, max = M.slack_limits(first, q)\n"
        "    local kw = M.decide(job_desc({ partition = p, qos = q, comment = 'flex=100h' }), nil, 1795251000)\n"
        "    local plain = M.decide(job_desc({ partition = p, qos = q }), nil, 1795251000)\n"
        "    print(default, max, tag_field(kw.admin_comment, 'slack'), tag_field(plain.admin_comment, 'flex'),\n"
        "          tag_field(plain.admin_comment, 'slack'))\n"
        "  end\n"
        "end)\n"
    )
    proc = _lua(str(script))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lua = [line.split() for line in proc.stdout.splitlines()[: len(cases)]]
    expected = []
    for p, q in cases:
        default_h, max_h = SLACK.flex.slack_limits(first_partition(p), q)
        default, maximum = round(default_h * 3600), round(max_h * 3600)
        plain = ("policy", min(default, maximum)) if default > 0 else ("no", 0)
        expected.append([str(default), str(maximum), str(min(KEYWORD_SLACK, maximum)), plain[0], str(plain[1])])
    assert dict(zip(cases, lua, strict=True)) == dict(zip(cases, expected, strict=True))


FUZZ = Path(__file__).parent / "lua" / "fuzz_hook.lua"


@pytest.mark.lua
def test_the_hook_accepts_every_fuzzed_job_and_leaves_it_unchanged_when_it_cannot_decide() -> None:
    """10,000 job_desc tables with missing fields, wrong types, huge, negative and NaN numbers,
    odd comments and scripts, some failing on a read or write as slurmctld's userdata may: every
    job is accepted; where the hook failed it is unchanged, else only its tag and begin time
    changed (tests/lua/fuzz_hook.lua)."""
    proc = _lua(str(FUZZ), env={**os.environ, "SLURMFLEX_FUZZ_JOBS": "10000", "SLURMFLEX_FUZZ_SEED": "20261121"})
    assert proc.returncode == 0 and "ok fuzz" in proc.stdout, (proc.stdout + proc.stderr)[-3000:]
    stats = dict(item.split("=") for item in proc.stdout.splitlines()[0].split())
    assert stats["jobs"] == stats["accepted"] == "10000"
    # Both paths were taken: jobs the hook tagged, and jobs it could not decide on.
    assert int(stats["changed"]) > 1000 and int(stats["undecided"]) > 100
