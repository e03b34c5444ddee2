"""The daemon writes the ledger as it works (on the fake Slurm, tests/fake_cluster.py): each
cycle's forecast and plan digests, each Slurm action, mode switches and admin releases, then a
signed checkpoint; `slurmflex audit` verifies it, proves records, and names the record behind
every single-record mutation of the log the daemon wrote."""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from slurm_flex.daemon.runs import Running, observe
from slurm_flex.grid.series import iso_utc
from slurm_flex.ledger import events
from slurm_flex.ledger.log import CHECKPOINTS, LATEST, VKEY
from slurm_flex.ledger.merkle import leaf_hash, verify_inclusion
from slurm_flex.ledger.note import Verifier
from slurm_flex.slurm.fake import FakeSlurm
from tests.fake_cluster import FakeEnv
from tests.ledger_mutations import mutations, record_lines, write


def records(env: FakeEnv) -> list[dict[str, Any]]:
    _, lines = record_lines(env.tmp / "state" / "ledger")
    return [json.loads(line) for line in lines]


def run_daemon_with_decisions(env: FakeEnv) -> str:
    """Cycles that defer a job, switch mode, release it by admin command, and idle."""
    job_id = env.submit_flexible(hours=10, minutes=60)
    env.slurmflex("daemon", "--once")
    env.slurmflex("daemon", "--once")  # nothing changes: still logged (forecast, plan, cycle)
    assert env.slurmflex("mode", "advise").returncode == 0
    env.slurmflex("daemon", "--once")
    assert env.slurmflex("release", job_id, "--reason", "urgent").returncode == 0
    env.slurmflex("daemon", "--once")
    return job_id


def test_each_cycle_logs_its_decisions_and_signs_a_checkpoint(fake_env: FakeEnv) -> None:
    env = fake_env
    job_id = run_daemon_with_decisions(env)
    recs = records(env)
    kinds = [r["kind"] for r in recs]
    assert kinds[:2] == ["config", "mode"] and recs[1]["data"] == {"from": None, "to": "enforce", "source": "config"}
    assert kinds.count("cycle") == 4 and kinds.count("forecast") == 4 and kinds.count("plan") == 4
    defer = next(r["data"] for r in recs if r["kind"] == "action")
    assert defer["job"] == job_id and defer["kind"] == "defer" and defer["outcome"] == "applied"
    assert defer["new_begin"] is not None and "cleaner window" in defer["reason"]
    # The plan record is the digest of the replayable plan file, as it is on disk.
    plan = next(r["data"] for r in recs if r["kind"] == "plan")
    assert plan["sha256"] == hashlib.sha256((env.tmp / "state" / plan["file"]).read_bytes()).hexdigest()
    assert plan["file"] == "plans/cycle-00000001.json"
    forecast = next(r["data"] for r in recs if r["kind"] == "forecast")
    assert forecast["site"] == "default" and forecast["slots"] == 96 and len(forecast["sha256"]) == 64
    # Admin commands log themselves; the daemon logs the mode it then runs in.
    admin_mode = next(r for r in recs if r["kind"] == "admin.mode")
    assert admin_mode["data"]["mode"] == "advise" and admin_mode["data"]["by"]
    switch = [r["data"] for r in recs if r["kind"] == "mode"][1]
    assert switch == {"from": "enforce", "to": "advise", "source": "runtime"}
    release = next(r["data"] for r in recs if r["kind"] == "admin.release")
    assert release["jobs"] == [job_id] and release["reason"] == "urgent" and release["deferred"] == [job_id]
    # Every append is followed by a checkpoint of the whole log: nothing is left unsigned.
    verify = env.slurmflex("audit", "verify")
    assert verify.returncode == 0, verify.stderr
    assert f"ok: {len(recs)} records" in verify.stdout and "not signed" not in verify.stdout
    checkpoint = env.slurmflex("audit", "checkpoint").stdout
    assert checkpoint.split("\n")[1] == str(len(recs))


def test_prove_prints_a_proof_an_auditor_checks_offline(fake_env: FakeEnv) -> None:
    env = fake_env
    run_daemon_with_decisions(env)
    index = next(r["i"] for r in records(env) if r["kind"] == "action")
    out = env.slurmflex("audit", "prove", str(index))
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    vkey = Verifier.parse((env.tmp / "state" / "ledger" / VKEY).read_text())
    cp_lines = doc["checkpoint"].split("\n")
    size, root = int(cp_lines[1]), base64.b64decode(cp_lines[2])
    proof = [base64.b64decode(p) for p in doc["proof"]]
    verify_inclusion(leaf_hash(doc["record"].encode()), index, size, proof, root)
    assert json.loads(doc["record"])["kind"] == "action"
    bad = env.slurmflex("audit", "prove", "100000")
    assert bad.returncode == 1 and "not covered by the latest checkpoint" in bad.stderr
    assert vkey.name in doc["checkpoint"]


def test_audit_verify_names_the_record_behind_every_mutation_of_a_daemon_log(fake_env: FakeEnv) -> None:
    env = fake_env
    run_daemon_with_decisions(env)
    ledger = env.tmp / "state" / "ledger"
    path, lines = record_lines(ledger)
    before = {p.name: p.read_bytes() for p in ledger.iterdir() if p.is_file() and p != path}
    count = 0
    for what, mutated, blame in mutations(lines):
        write(path, mutated)
        out = env.slurmflex("audit", "verify", "--state-dir", str(env.tmp / "state"))
        assert out.returncode == 1, what
        assert out.stderr.startswith(f"slurmflex: error: record {blame}: "), f"{what}: {out.stderr}"
        count += 1
    # Verification rewrote nothing: the checkpoints and keys are byte for byte as they were.
    assert {p.name: p.read_bytes() for p in ledger.iterdir() if p.is_file() and p != path} == before
    write(path, lines)
    assert env.slurmflex("audit", "verify").returncode == 0 and count >= 8 * len(lines)


@pytest.mark.parametrize("damage", ["checkpoint signature", "foreign key", "checkpoint tree"])
def test_bad_checkpoints_and_keys_are_named(fake_env: FakeEnv, damage: str) -> None:
    env = fake_env
    run_daemon_with_decisions(env)
    ledger = env.tmp / "state" / "ledger"
    args = ["audit", "verify"]
    if damage == "checkpoint signature":
        text = (ledger / LATEST).read_text()
        (ledger / LATEST).write_text(text.replace("\n\n", "\nextension\n\n", 1))
        expect = "checkpoint file: checkpoint signature: the signature by"
    elif damage == "foreign key":
        from slurm_flex.ledger.note import Signer

        args += ["--key", Signer.generate(Verifier.parse((ledger / VKEY).read_text()).name).verifier.vkey()]
        expect = "signed by no trusted key"
    else:
        # A checkpoint properly signed by the site key, but over a different tree.
        from slurm_flex.ledger.checkpoint import Checkpoint
        from slurm_flex.ledger.note import Signer

        key = Signer.decode((env.tmp / "state" / "ledger.key").read_text())
        forged = Checkpoint(key.name, 3, bytes(32)).sign(key)
        (env.tmp / "forged").write_text(forged)
        args += ["--checkpoint", str(env.tmp / "forged")]
        expect = "record 0: changed: one of records 0..2 (they do not hash to the root signed in the"
    out = env.slurmflex(*args)
    assert out.returncode == 1 and expect in out.stderr, out.stderr


def test_a_disabled_ledger_writes_nothing(fake_env: FakeEnv) -> None:
    env = fake_env
    env.reconfigure(ledger={"enabled": False})
    env.submit_flexible()
    env.slurmflex("daemon", "--once")
    assert not (env.tmp / "state" / "ledger").exists()


def test_unwritable_ledger_is_a_soft_failure(fake_env: FakeEnv, tmp_path: Path) -> None:
    env = fake_env
    env.slurmflex("daemon", "--once")
    (tmp_path / "state" / "ledger" / CHECKPOINTS).write_text("")  # keep a valid log, then break the key
    (tmp_path / "state" / "ledger.key").write_text("garbage\n")
    job_id = env.submit_flexible()
    out = env.slurmflex("daemon", "--once")
    assert out.returncode == 0 and "ledger_failed" in out.stderr
    assert env.slurm.job(job_id).start_time is not None  # the job was still deferred


def test_verify_against_a_witness_cosigned_checkpoint(fake_env: FakeEnv) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from slurm_flex.ledger.cosignature import cosign, cosigner_verifier

    env = fake_env
    run_daemon_with_decisions(env)
    wkey = Ed25519PrivateKey.generate()
    published = env.slurmflex("audit", "checkpoint").stdout
    (env.tmp / "cosigned").write_text(cosign(published, "witness.example/w", wkey, 1_800_000_000))
    vkey = cosigner_verifier("witness.example/w", wkey).vkey()
    ok = env.slurmflex("audit", "verify", "--checkpoint", str(env.tmp / "cosigned"), "--witness", vkey)
    assert ok.returncode == 0 and "cosigned by witness.example/w at 1800000000" in ok.stdout, ok.stderr
    (env.tmp / "plain").write_text(published)
    bad = env.slurmflex("audit", "verify", "--checkpoint", str(env.tmp / "plain"), "--witness", vkey)
    assert bad.returncode == 1 and "not cosigned by witness witness.example/w" in bad.stderr


def test_retention_keeps_the_daemon_log_verifiable_and_provable(fake_env: FakeEnv) -> None:
    env = fake_env
    env.reconfigure(ledger={"records_per_file": 3, "keep_files": 2})
    job_id = env.submit_flexible(hours=10, minutes=60)
    for _ in range(4):
        env.slurmflex("daemon", "--once")
    files = sorted(p.name for p in (env.tmp / "state" / "ledger").glob("records-*.jsonl"))
    assert len(files) == 2 and files[0] != "records-000000000000.jsonl"
    out = env.slurmflex("audit", "verify")
    assert out.returncode == 0 and "on disk" in out.stdout, out.stderr
    first = int(files[0][len("records-") : -len(".jsonl")])
    assert env.slurmflex("audit", "prove", str(first)).returncode == 0
    gone = env.slurmflex("audit", "prove", "0")
    assert gone.returncode == 1 and "record 0 was rotated away" in gone.stderr
    assert env.slurmflex("audit", "certify", job_id).returncode == 0  # anchored in the kept log


def test_runs_are_logged_once_and_their_end_when_seen_gone(fake_env: FakeEnv) -> None:
    env = fake_env
    job_id = env.submit(time_limit_s=3600)  # not flexible: every run is logged, not only planned ones
    env.slurm.start(job_id)
    started = env.slurm.job(job_id).start_time
    env.slurmflex("daemon", "--once")
    env.slurmflex("daemon", "--once")
    env.slurm.finish(job_id)
    env.slurmflex("daemon", "--once")
    env.slurmflex("daemon", "--once")
    recs = records(env)
    runs = [r for r in recs if r["kind"] in ("job-started", "job-ended")]
    assert [r["kind"] for r in runs] == ["job-started", "job-ended"]
    start, end = runs[0]["data"], runs[1]["data"]
    assert start["job"] == job_id and start["start"] == iso_utc(started) and start["node_count"] == 1
    assert start["power_w"] > 0 and len(start["nodes"]) == 1
    # Gone from squeue: no Slurm end time, so the cycles either side bound it.
    assert end["job"] == job_id and end["state"] is None and end["end"] is None
    assert end["start"] == start["start"] and end["last_seen_running"] <= end["seen_ended"]
    assert env.slurmflex("audit", "verify").returncode == 0


def test_a_run_is_logged_again_when_the_ledger_write_failed(fake_env: FakeEnv) -> None:
    env = fake_env
    job_id = env.submit(time_limit_s=3600)
    env.slurm.start(job_id)
    ledger_dir = env.tmp / "state" / "ledger"
    ledger_dir.parent.mkdir(parents=True, exist_ok=True)
    ledger_dir.write_text("not a directory")  # the ledger cannot be opened this cycle
    env.slurmflex("daemon", "--once")
    ledger_dir.unlink()
    env.slurmflex("daemon", "--once")
    assert [r["data"]["job"] for r in records(env) if r["kind"] == "job-started"] == [job_id]


def test_observe_reads_slurms_end_time_when_squeue_still_lists_the_job() -> None:
    slurm = FakeSlurm(clock=lambda: 1_800_000_000)
    job_id = slurm.submit(user="alice")
    slurm.start(job_id)
    job = replace(slurm.job(job_id), state="COMPLETED", end_time=1_800_000_100)  # as squeue lists it a while
    previous = {job.update_id: Running("alice", 1_799_990_000, 1_799_999_000)}
    entries, running = observe(previous, [job], 1_800_000_300, lambda _: 100.0)
    assert running == {}
    assert entries == [events.job_ended(job.update_id, "alice", 1_799_990_000, 1_799_999_000, 1_800_000_300,
                                        "COMPLETED", job.end_time)]  # fmt: skip


def test_decisions_made_while_the_ledger_is_down_are_logged_when_it_is_back(fake_env: FakeEnv) -> None:
    # One daemon process, two cycles: the first cannot write the ledger (its directory is a
    # file), the second can, and logs the first cycle's decisions before its own.
    from slurm_flex.config import load_config
    from slurm_flex.daemon.service import make_cycle
    from slurm_flex.state import StateStore

    env = fake_env
    job_id = env.submit_flexible(hours=10, minutes=60)
    running = env.submit(time_limit_s=3600)
    env.slurm.start(running)
    config = load_config(env.config, environ={})
    ledger_dir = env.tmp / "state" / "ledger"
    ledger_dir.parent.mkdir(parents=True, exist_ok=True)
    ledger_dir.write_text("not a directory")
    cycle = make_cycle(config, StateStore(config.state_db))
    first = cycle.run()
    assert first.ok and env.slurm.job(job_id).start_time is not None  # deferred all the same
    ledger_dir.unlink()
    assert cycle.run().ok
    kinds = [r["kind"] for r in records(env)]
    actions = [r for r in records(env) if r["kind"] == "action"]
    assert [a["data"]["job"] for a in actions] == [job_id]  # the deferral, made while it was down
    assert kinds.count("cycle") == 2  # both cycles' outcomes, the first one first
    # Records the second cycle makes again (job starts, config, mode) are logged once only.
    assert [r["data"]["job"] for r in records(env) if r["kind"] == "job-started"] == [running]
    assert kinds.count("config") == 1 and kinds.count("mode") == 1
    assert kinds.index("action") < [i for i, k in enumerate(kinds) if k == "cycle"][1]
    assert env.slurmflex("audit", "verify").returncode == 0
