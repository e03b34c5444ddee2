"""slurm-flex against the fake Slurm (slurm_flex/slurm/fake.py): the same CLI and daemon code
as in production, in this process, with the Slurm backend swapped for the fake.

:class:`FakeEnv` mirrors ``tests.conftest.Env`` (the local cluster), so a test reads the same
on both: ``env.submit_flexible()``, ``env.slurmflex("daemon", "--once")``, ``env.status()``.
Jobs are submitted the way the submit hook leaves them (:func:`hook_submit`): tagged, and
postponed by the grace period when flexible.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from slurm_flex.cli import main
from slurm_flex.config import Config, load_config
from slurm_flex.daemon.cycle import power_model_from
from slurm_flex.power.model import Request
from slurm_flex.slurm import backend as backends
from slurm_flex.slurm.fake import FakeSlurm
from slurm_flex.tag import HookTag, format_tag, parse_tag
from tests.helpers import FlexEnv, clean_windows_forecast, write_env_config


def hook_submit(
    slurm: FakeSlurm,
    config: Config,
    *,
    deadline: int | None = None,
    time_limit_s: int = 3600,
    begin: int | None = None,
    nodes: int = 1,
    cpus: int = 1,
    comment: str = "",
    hook_sees_deadline: bool = True,
    **job: Any,
) -> str:
    """Submit as ``sbatch`` would with the submit hook installed (job_submit/slurmflex.lua, for
    the cases these tests use): every job tagged with its power estimate; a job with a deadline
    flexible (unless opted out with ``flex=no``), and postponed by the grace period unless that
    would risk its deadline or it starts later anyway. ``hook_sees_deadline=False``: a
    command-line ``--deadline`` on Slurm 22.05, which Slurm keeps but does not show the hook."""
    now = slurm.now()
    watts = power_model_from(config).estimate(Request(nodes=nodes, cpus=cpus), job.get("partition"))
    user_begin = begin or 0
    earliest = max(now, user_begin)
    opted_out = "flex=no" in comment.split()
    seen = deadline if hook_sees_deadline else None
    flexible = seen is not None and not opted_out and seen >= earliest + time_limit_s
    grace = 0
    if flexible and config.flex.grace_seconds > 0:
        assert deadline is not None
        grace = now + config.flex.grace_seconds
        latest = deadline - time_limit_s - config.policy.safety_margin_seconds
        if latest < grace or user_begin >= grace:
            grace = 0
    tag = HookTag(
        version=1,
        power_w=watts,
        basis="req",
        begin=user_begin,
        grace=grace,
        deadline=seen or 0,
        flex="deadline" if flexible else "no",
        why="" if flexible else ("optout" if opted_out else "none"),
    )
    return slurm.submit(
        time_limit_s=time_limit_s,
        begin=grace or begin,
        deadline=deadline,
        nodes=nodes,
        cpus=cpus,
        comment=comment,
        admin_comment=format_tag(tag),
        **job,
    )


@dataclass
class FakeEnv(FlexEnv):
    """A slurm-flex config (state dir, forecast) driving a fake Slurm cluster."""

    slurm: FakeSlurm

    def reconfigure(self, **sections: dict[str, object]) -> None:
        """Rewrite the config with these sections merged in."""
        write_env_config(self.tmp, self.forecast, **sections)

    def load(self) -> Config:
        return load_config(self.config, environ={})

    def slurmflex(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The CLI, in this process: stdout, stderr (the JSON log lines) and the exit code."""
        result = CliRunner().invoke(main, ["--config", str(self.config), *args], catch_exceptions=False)
        return subprocess.CompletedProcess(list(args), result.exit_code, result.stdout, result.stderr)

    def submit(self, **job: Any) -> str:
        return hook_submit(self.slurm, self.load(), **job)

    def submit_flexible(self, hours: float = 10, minutes: int = 60, **job: Any) -> str:
        """A job with ``--deadline=now+<hours>`` and ``-t <minutes>``, as the hook leaves it."""
        deadline = self.slurm.now() + round(hours * 3600)
        return self.submit(deadline=deadline, time_limit_s=minutes * 60, **job)

    def opt_out(self, job_id: str) -> None:
        """``scontrol update Comment=flex=no`` by the owner, and what the hook's job_modify does
        with it: the tag says flex=no (why=optout)."""
        job = self.slurm.jobs[int(job_id.split("_", 1)[0])]
        tag = parse_tag(job.admin_comment)
        assert tag is not None
        job.comment = "flex=no"
        job.admin_comment = format_tag(replace(tag, flex="no", why="optout"))


@pytest.fixture
def fake_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeEnv]:
    """slurm-flex on a fake cluster (four nodes of two CPUs, as scripts/devcluster makes) with a
    forecast whose clean windows sit 4 h (slots 8-9) and 15 h (slots 30-33) after this slot."""
    slurm = FakeSlurm(clock=time.time)
    monkeypatch.setitem(backends.BACKENDS, "commands", lambda runner: slurm)
    forecast, slot0 = clean_windows_forecast(tmp_path)
    config = write_env_config(tmp_path, forecast)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    yield FakeEnv(tmp=tmp_path, config=config, forecast=forecast, slot0=slot0, slurm=slurm)
    for signum, handler in handlers.items():  # the daemon installs its own
        signal.signal(signum, handler)
