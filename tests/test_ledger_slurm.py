"""The ledger on the real local Slurm cluster: the daemon defers a job through the real
scontrol and logs it; `slurmflex audit verify` passes on that log and names the record behind
every single-record mutation of it (checked in-process: the same verify the CLI runs)."""

from __future__ import annotations

import json

import pytest

from slurm_flex.ledger.errors import VerificationError
from slurm_flex.ledger.log import VKEY, verify
from slurm_flex.ledger.note import Verifier
from tests.conftest import Env
from tests.ledger_mutations import mutations, record_lines, write

pytestmark = pytest.mark.slurm


def test_the_daemon_logs_a_real_deferral_and_every_mutation_is_named(env: Env) -> None:
    job_id = env.submit_flexible(hours=10, minutes=60)
    env.slurmflex("daemon", "--once")
    env.slurmflex("mode", "shadow")
    env.slurmflex("daemon", "--once")
    ledger = env.tmp / "state" / "ledger"
    path, lines = record_lines(ledger)
    recs = [json.loads(line) for line in lines]
    (action,) = [r["data"] for r in recs if r["kind"] == "action"]
    assert action["job"] == job_id and action["kind"] == "defer" and action["outcome"] == "applied"
    job = env.cluster.show_job(job_id)
    assert action["new_begin"] == job["StartTime"] + "Z"  # what was logged is what Slurm holds
    assert env.slurmflex("audit", "verify").stdout.startswith(f"ok: {len(lines)} records")
    vkey = Verifier.parse((ledger / VKEY).read_text())
    for what, mutated, blame in mutations(lines):
        write(path, mutated)
        with pytest.raises(VerificationError) as bad:
            verify(ledger, vkey)
        assert bad.value.index == blame, f"{what}: {bad.value}"
    write(path, lines[:-1])
    out = env.slurmflex("audit", "verify", check=False)
    assert out.returncode == 1 and f"record {len(lines) - 1}: missing" in out.stderr
