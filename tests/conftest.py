"""Shared fixtures: a real local Slurm cluster (scripts/devcluster) and helpers to drive it; the
fake Slurm's fixture (fake_env) lives in tests/fake_cluster.py.

The cluster used by tests lives in its own state dir and ports, so it never disturbs a demo
cluster. Set SLURMFLEX_KEEP_CLUSTER=1 to leave it running after the session (faster reruns).
"""

from __future__ import annotations

import calendar
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from slurm_flex.config import load_config
from slurm_flex.job_submit.install import install_hook
from tests.helpers import FlexEnv, clean_windows_forecast, write_env_config

# The fake Slurm cluster's fixture (fake_env), for the fast tests of the daemon.
pytest_plugins = ["tests.fake_cluster"]

REPO = Path(__file__).resolve().parent.parent
DEVCLUSTER = REPO / "scripts" / "devcluster"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
SHARED = REPO.parent / "shared"
TEST_CLUSTER_DIR = Path(os.environ.get("SLURMFLEX_TEST_CLUSTER_DIR", "/var/tmp/slurm-flex-test"))
TEST_PORT_BASE = os.environ.get("SLURMFLEX_TEST_PORT_BASE", "26817")


@dataclass(frozen=True)
class Cluster:
    """A running devcluster and a way to run Slurm commands against it."""

    dir: Path
    conf: Path

    @property
    def etc(self) -> Path:
        return self.conf.parent

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(SLURM_CONF=str(self.conf), TZ="UTC", **extra)
        return env

    def run(
        self, *argv: str, check: bool = True, input: str | None = None, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            list(argv),
            env=self.env(),
            capture_output=True,
            text=True,
            check=False,
            input=input,
            cwd=str(cwd) if cwd else None,
            timeout=60,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr}")
        return proc

    def sbatch(self, *args: str, script: str | None = None, cwd: Path | None = None) -> str:
        """Submit and return the job id; ``script`` goes in on stdin."""
        proc = self.run("sbatch", "--parsable", *args, input=script, cwd=cwd or self.dir)
        return proc.stdout.strip().split(";")[0]

    def show_job(self, job_id: str) -> dict[str, str]:
        """``scontrol -o show job`` as a dict (first record for arrays)."""
        out = self.run("scontrol", "-o", "show", "job", job_id).stdout.splitlines()[0]
        fields: dict[str, str] = {}
        key = None
        for token in out.split(" "):
            if "=" in token and not token.startswith("="):
                key, _, value = token.partition("=")
                fields[key] = value
            elif key is not None:  # values with spaces (e.g. Reason) continue the last key
                fields[key] += " " + token
        return fields

    def squeue_json(self) -> dict[str, object]:
        return json.loads(self.run("squeue", "--json").stdout)  # type: ignore[no-any-return]

    def cancel_all(self) -> None:
        self.run("scancel", "--user", os.environ.get("USER", "root"), check=False)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            out = self.run("squeue", "-h", "-o", "%i", check=False).stdout.strip()
            if not out:
                return
            time.sleep(0.2)
        raise AssertionError(f"jobs still in the queue after scancel: {out}")

    def devcluster(self, *args: str) -> None:
        subprocess.run([str(DEVCLUSTER), *args], env=_devcluster_env(), check=True, timeout=300)


def _devcluster_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DEVCLUSTER_DIR=str(TEST_CLUSTER_DIR),
        DEVCLUSTER_PORT_BASE=TEST_PORT_BASE,
        DEVCLUSTER_CLUSTER="sfxtest",
        DEVCLUSTER_NODES="4",
        DEVCLUSTER_CPUS="2",
    )
    return env


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[Cluster]:
    """Bring the test cluster up once per session (installing Slurm if needed)."""
    proc = subprocess.run(
        [str(DEVCLUSTER), "up"], env=_devcluster_env(), capture_output=True, text=True, timeout=900, check=False
    )
    if proc.returncode != 0:
        pytest.fail(f"scripts/devcluster up failed:\n{proc.stderr}", pytrace=False)
    cluster = Cluster(dir=TEST_CLUSTER_DIR, conf=TEST_CLUSTER_DIR / "etc" / "slurm.conf")
    yield cluster
    cluster.cancel_all()
    if os.environ.get("SLURMFLEX_KEEP_CLUSTER") != "1":
        subprocess.run([str(DEVCLUSTER), "down"], env=_devcluster_env(), check=False, timeout=120)


@pytest.fixture
def cluster(slurm_cluster: Cluster) -> Iterator[Cluster]:
    """The test cluster with an empty queue before and after the test."""
    slurm_cluster.cancel_all()
    yield slurm_cluster
    slurm_cluster.cancel_all()


@pytest.fixture
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared is not present")
    return SHARED


def lua_available() -> bool:
    return shutil.which("lua5.1") is not None


# -- slurm-flex against the test cluster ------------------------------------------------------

FLEX_SCRIPT = "#!/bin/bash\n#SBATCH --deadline=now+{deadline_minutes}minutes\n#SBATCH -t {minutes}\nsleep {sleep}\n"


@dataclass
class Env(FlexEnv):
    """A slurm-flex config (state dir, forecast, site policy) driving the test cluster."""

    cluster: Cluster

    def reconfigure(self, **sections: dict[str, object]) -> None:
        """Rewrite the config with these sections merged in and re-install the hook."""
        write_env_config(self.tmp, self.forecast, self.cluster.conf, **sections)
        install_hook(load_config(self.config, environ={}), self.cluster.etc, force=True)

    def slurmflex(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "slurm_flex.cli", "--config", str(self.config), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=self.cluster.env(),
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"slurmflex {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def submit_flexible(self, hours: float = 10, minutes: int = 60, sleep: int = 5, extra: tuple[str, ...] = ()) -> str:
        script = FLEX_SCRIPT.format(deadline_minutes=round(hours * 60), minutes=minutes, sleep=sleep)
        return self.cluster.sbatch(*extra, script=script)


@pytest.fixture
def env(cluster: Cluster, tmp_path: Path) -> Iterator[Env]:
    """slurm-flex with its hook installed on the test cluster and a forecast whose clean windows
    sit 4 h (slots 8-9, 40 g/kWh) and 15 h (slots 30-33, 5 g/kWh) after the current slot."""
    forecast, slot0 = clean_windows_forecast(tmp_path)
    config = write_env_config(tmp_path, forecast, cluster.conf)
    install_hook(load_config(config, environ={}), cluster.etc, force=True)
    yield Env(tmp=tmp_path, config=config, forecast=forecast, slot0=slot0, cluster=cluster)


def log_events(proc: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    """The daemon's structlog JSON lines from stderr."""
    return [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]


def slurm_epoch(slurm_time: str) -> int:
    """Epoch of a time as scontrol prints it under TZ=UTC."""
    return int(calendar.timegm(time.strptime(slurm_time, "%Y-%m-%dT%H:%M:%S")))


def wait_state(cluster: Cluster, job_id: str, states: set[str], timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        proc = cluster.run("scontrol", "-o", "show", "job", job_id, check=False)
        state = next((t.split("=", 1)[1] for t in proc.stdout.split() if t.startswith("JobState=")), "GONE")
        if state in states:
            return state
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} is {state}, expected one of {states}")
