"""Shared fixtures: real local Slurm clusters (scripts/devcluster) and helpers to drive them; the
fake Slurm's fixture (fake_env) lives in tests/fake_cluster.py.

Every test that uses a cluster runs once per Slurm series SLURMFLEX_SLURM selects: 22.05 (the
host's Debian 12 packages), 24.11 (Debian 13's, in a chroot) or both (the default). The clusters
used by tests live in their own state dirs and ports, so they never disturb a demo cluster:
SLURMFLEX_TEST_CLUSTER_DIR / SLURMFLEX_TEST_PORT_BASE for 22.05 and SLURMFLEX_TEST_CLUSTER_DIR_24
/ SLURMFLEX_TEST_PORT_BASE_24 / SLURMFLEX_TEST_CHROOT for 24.11. If the 24.11 chroot cannot be
bootstrapped (no Debian mirror), its tests skip and say why. Set SLURMFLEX_KEEP_CLUSTER=1 to
leave the clusters running after the session (faster reruns).
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
from slurm_flex.slurm.runner import SlurmRunner
from tests.helpers import FlexEnv, clean_windows_forecast, write_env_config

# The fake Slurm cluster's fixture (fake_env), for the fast tests of the daemon.
pytest_plugins = ["tests.fake_cluster", "tests.federation"]

REPO = Path(__file__).resolve().parent.parent
DEVCLUSTER = REPO / "scripts" / "devcluster"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
SHARED = REPO.parent / "shared"
SLURM_SERIES = ("22.05", "24.11")


@dataclass(frozen=True)
class ClusterSpec:
    """Where a test cluster of one Slurm series lives (scripts/devcluster's settings)."""

    slurm: str
    dir: Path
    port_base: str
    root: Path | None = None  # the chroot its Slurm runs in (24.11)

    def devcluster_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            DEVCLUSTER_SLURM=self.slurm,
            DEVCLUSTER_DIR=str(self.dir),
            DEVCLUSTER_PORT_BASE=self.port_base,
            DEVCLUSTER_CLUSTER="sfxtest",
            DEVCLUSTER_NODES="4",
            DEVCLUSTER_CPUS="2",
        )
        if self.root is not None:
            env["DEVCLUSTER_ROOT"] = str(self.root)
        return env


SPECS = {
    "22.05": ClusterSpec(
        "22.05",
        Path(os.environ.get("SLURMFLEX_TEST_CLUSTER_DIR", "/var/tmp/slurm-flex-test")),
        os.environ.get("SLURMFLEX_TEST_PORT_BASE", "26817"),
    ),
    "24.11": ClusterSpec(
        "24.11",
        Path(os.environ.get("SLURMFLEX_TEST_CLUSTER_DIR_24", "/var/tmp/slurm-flex-test-24.11")),
        os.environ.get("SLURMFLEX_TEST_PORT_BASE_24", "46917"),
        Path(os.environ.get("SLURMFLEX_TEST_CHROOT", "/var/tmp/slurm-flex-trixie")),
    ),
}
# The 22.05 cluster's settings, for tests that restart it by hand.
TEST_CLUSTER_DIR = SPECS["22.05"].dir
TEST_PORT_BASE = SPECS["22.05"].port_base


def selected_series() -> list[str]:
    value = os.environ.get("SLURMFLEX_SLURM", "both")
    if value == "both":
        return list(SLURM_SERIES)
    if value not in SLURM_SERIES:
        raise pytest.UsageError(f"SLURMFLEX_SLURM={value!r}; expected one of {', '.join(SLURM_SERIES)} or both")
    return [value]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Session scope: pytest runs every test of one series before starting on the next.
    if "slurm_series" in metafunc.fixturenames:
        metafunc.parametrize("slurm_series", selected_series(), scope="session")


@dataclass(frozen=True)
class Cluster:
    """A running devcluster and a way to run Slurm commands against it (inside its chroot for
    24.11: the state dir is mounted there at the same path, so every path here holds inside)."""

    dir: Path
    conf: Path
    spec: ClusterSpec = SPECS["22.05"]

    @property
    def slurm(self) -> str:
        return self.spec.slurm

    @property
    def etc(self) -> Path:
        return self.conf.parent

    def argv(self, *argv: str, cwd: Path | None = None) -> list[str]:
        """A command line that runs ``argv`` where this cluster's clients run."""
        if self.spec.root is None:
            return list(argv)
        # chroot starts in /; `env -C` puts the command in the working dir it was given.
        return ["chroot", str(self.spec.root), "env", "-C", str(cwd or "/"), *argv]

    def runner(self, conf: Path | None = None, **kwargs: Any) -> SlurmRunner:
        """The runner slurm-flex would use for this cluster (``conf`` must be under ``dir``)."""
        return SlurmRunner(slurm_conf=conf or self.conf, chroot=self.spec.root, **kwargs)

    def dead_conf(self) -> Path:
        """A slurm.conf pointing at a port no controller listens on, where the cluster's
        clients can read it."""
        conf = self.conf.read_text()
        port = conf.split("SlurmctldPort=")[1].split()[0]
        dead = self.dir / "etc" / "dead.conf"
        dead.write_text(conf.replace(f"SlurmctldPort={port}", "SlurmctldPort=1") + "MessageTimeout=2\n")
        return dead

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(SLURM_CONF=str(self.conf), TZ="UTC", **extra)
        return env

    def run(
        self, *argv: str, check: bool = True, input: str | None = None, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            self.argv(*argv, cwd=cwd),
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
        subprocess.run([str(DEVCLUSTER), *args], env=self.spec.devcluster_env(), check=True, timeout=300)


# What `devcluster up` says when the 24.11 chroot could not be built (no mirror, no network):
# a reason to skip that series, not a failure of slurm-flex.
_BOOTSTRAP_FAILURES = ("debootstrap failed", "apt-get install in the chroot failed", "debootstrap is missing")


class ClusterPool:
    """Test clusters brought up on first use, one per Slurm series, down at the session's end."""

    def __init__(self) -> None:
        self.up: dict[str, Cluster] = {}
        self.skipped: dict[str, str] = {}

    def get(self, series: str) -> Cluster:
        if series in self.skipped:
            pytest.skip(self.skipped[series])
        if series not in self.up:
            spec = SPECS[series]
            proc = subprocess.run(
                [str(DEVCLUSTER), "up"],
                env=spec.devcluster_env(),
                capture_output=True,
                text=True,
                timeout=900,
                check=False,
            )
            if proc.returncode != 0:
                if any(marker in proc.stderr for marker in _BOOTSTRAP_FAILURES):
                    self.skipped[series] = f"Slurm {series} chroot could not be built: {proc.stderr.strip()}"
                    pytest.skip(self.skipped[series])
                pytest.fail(f"scripts/devcluster up (Slurm {series}) failed:\n{proc.stderr}", pytrace=False)
            self.up[series] = Cluster(dir=spec.dir, conf=spec.dir / "etc" / "slurm.conf", spec=spec)
        return self.up[series]

    def close(self) -> None:
        for cluster in self.up.values():
            cluster.cancel_all()
            if os.environ.get("SLURMFLEX_KEEP_CLUSTER") != "1":
                subprocess.run([str(DEVCLUSTER), "down"], env=cluster.spec.devcluster_env(), check=False, timeout=120)


@pytest.fixture(scope="session")
def cluster_pool() -> Iterator[ClusterPool]:
    pool = ClusterPool()
    yield pool
    pool.close()


@pytest.fixture(scope="session")
def slurm_cluster(cluster_pool: ClusterPool, slurm_series: str) -> Cluster:
    """The test cluster of this Slurm series, brought up once per session (installing Slurm, or
    bootstrapping its chroot, if needed)."""
    return cluster_pool.get(slurm_series)


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
        write_env_config(self.tmp, self.forecast, self.cluster.conf, chroot=self.cluster.spec.root, **sections)
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
    config = write_env_config(tmp_path, forecast, cluster.conf, chroot=cluster.spec.root)
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
