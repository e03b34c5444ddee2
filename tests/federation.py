"""The real two-cluster federation for tests (scripts/fedcluster, Slurm 22.05 only): brought up
once per session in its own state dir and ports, so it never disturbs a demo federation.
SLURMFLEX_TEST_FED_DIR / SLURMFLEX_TEST_FED_PORT_BASE move it; SLURMFLEX_KEEP_CLUSTER=1 leaves
it running afterwards."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from slurm_flex.slurm.runner import SlurmRunner

REPO = Path(__file__).resolve().parent.parent
FEDCLUSTER = REPO / "scripts" / "fedcluster"
CLUSTERS = ("cambridge", "manchester")


@dataclass(frozen=True)
class Federation:
    dir: Path

    def conf(self, cluster: str = "cambridge") -> Path:
        return self.dir / cluster / "etc" / "slurm.conf"

    def runner(self, cluster: str = "cambridge") -> SlurmRunner:
        return SlurmRunner(slurm_conf=self.conf(cluster))

    def env(self, cluster: str = "cambridge") -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf(cluster)), "TZ": "UTC"}

    def run(self, *argv: str, cluster: str = "cambridge", check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(argv, env=self.env(cluster), capture_output=True, text=True, timeout=60, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr}")
        return proc

    def sbatch(self, *args: str, cluster: str = "cambridge", script: str = "#!/bin/bash\nsleep 5\n") -> str:
        proc = subprocess.run(
            ["sbatch", "--parsable", *args],
            env=self.env(cluster),
            input=script,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd=str(self.dir),
        )
        if proc.returncode != 0:
            raise AssertionError(f"sbatch {' '.join(args)} failed: {proc.stderr}")
        return proc.stdout.strip().split(";")[0]

    def tag_as_hook(self, job_id: str, power_w: float = 200.0) -> None:
        """Tag a job as the submit hook would have (the federation runs without it): its begin
        time is the hook's grace, which slurm-flex may move."""
        from slurm_flex.tag import TAG_VERSION, HookTag, format_tag

        rec = next(r for r in self.records(job_id).values() if r["job_state"] != "REVOKED")
        tag = HookTag(
            TAG_VERSION,
            power_w=power_w,
            basis="test",
            begin=0,
            grace=int(rec["eligible_time"]),
            deadline=int(rec["deadline"]) or None,
            flex="yes",
            why="deadline",
        )
        self.run("scontrol", "update", f"JobId={job_id}", f"AdminComment={format_tag(tag)}")

    def records(self, job_id: str) -> dict[str, dict[str, Any]]:
        """Every cluster's record of the job (REVOKED ones included): cluster -> record."""
        out: dict[str, dict[str, Any]] = {}
        for c in CLUSTERS:
            doc = json.loads(self.run("squeue", "--json", "-M", c).stdout)
            for j in doc["jobs"]:
                if str(j["job_id"]) == job_id:
                    out[c] = j
        return out

    def live_copies(self, job_id: str) -> dict[str, str]:
        """cluster -> state of the job's copies that are not REVOKED."""
        return {c: r["job_state"] for c, r in self.records(job_id).items() if r["job_state"] != "REVOKED"}

    def wait(self, job_id: str, cluster: str, states: set[str], timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            rec = self.records(job_id).get(cluster)
            state = rec["job_state"] if rec else "GONE"
            if state in states:
                return state
            time.sleep(0.5)
        raise AssertionError(f"job {job_id} at {cluster} is {state}, expected one of {states}")

    def wait_idle(self, timeout: float = 60) -> None:
        """Until every node of both clusters is idle (a cancelled job's node may still be
        completing, and the planner counts only usable nodes)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = [self.run("sinfo", "-h", "-M", c, "-N", "-o", "%t", check=False).stdout.split() for c in CLUSTERS]
            if all(s and all(t == "idle" for t in s if t != "CLUSTER:" and t not in CLUSTERS) for s in states):
                return
            time.sleep(0.5)
        raise AssertionError("federation nodes not idle")

    def cancel_all(self) -> None:
        for c in CLUSTERS:
            self.run("scancel", "-M", c, "--user", os.environ.get("USER", "root"), check=False)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            left = [
                c
                for c in CLUSTERS
                if self.run("squeue", "-h", "-M", c, "-o", "%i %T", check=False)
                .stdout.strip()
                .replace("CLUSTER: " + c, "")
                .strip()
            ]
            if not left:
                return
            time.sleep(0.3)

    def fedcluster(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(FEDCLUSTER), *args], env=fed_env(), capture_output=True, text=True, timeout=900, check=False
        )


def fed_env() -> dict[str, str]:
    return {
        **os.environ,
        "FEDCLUSTER_DIR": os.environ.get("SLURMFLEX_TEST_FED_DIR", "/var/tmp/slurm-flex-fedtest"),
        "FEDCLUSTER_PORT_BASE": os.environ.get("SLURMFLEX_TEST_FED_PORT_BASE", "39100"),
        # Finished and revoked records gone quickly, so squeue shows what is live.
        "FEDCLUSTER_MIN_JOB_AGE": "300",
    }


@pytest.fixture(scope="session")
def federation_session() -> Iterator[Federation]:
    if os.environ.get("SLURMFLEX_SLURM", "both") == "24.11":
        pytest.skip("the federation runs on the host's Slurm 22.05 only")
    env = fed_env()
    fed = Federation(Path(env["FEDCLUSTER_DIR"]))
    proc = fed.fedcluster("up")
    if proc.returncode != 0:
        pytest.fail(f"scripts/fedcluster up failed:\n{proc.stderr}", pytrace=False)
    yield fed
    fed.cancel_all()
    if os.environ.get("SLURMFLEX_KEEP_CLUSTER") != "1":
        fed.fedcluster("down")


@pytest.fixture
def federation(federation_session: Federation) -> Iterator[Federation]:
    federation_session.cancel_all()
    federation_session.wait_idle()
    yield federation_session
    federation_session.cancel_all()
