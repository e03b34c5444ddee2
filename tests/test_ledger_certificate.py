"""Green-compute certificates: issued for a job the daemon deferred (fake Slurm), verified
offline with only the file and the site's verifier key, and refused when any field changes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from slurm_flex.ledger.certificate import claims, job_energy, verify_certificate
from slurm_flex.ledger.errors import CertificateError
from slurm_flex.ledger.log import VKEY
from slurm_flex.ledger.note import Signer, Verifier
from slurm_flex.power.store import JobEnergy
from tests.fake_cluster import FakeEnv


def _leaves(doc: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(doc, list):
        for k, v in enumerate(doc):
            yield from _leaves(v, (*path, k))
    else:
        yield path


def _changed(doc: dict[str, Any], path: tuple[Any, ...]) -> dict[str, Any]:
    copy = json.loads(json.dumps(doc))
    node = copy
    for p in path[:-1]:
        node = node[p]
    value = node[path[-1]]
    if isinstance(value, bool):
        node[path[-1]] = not value
    elif isinstance(value, (int, float)):
        node[path[-1]] = value + 1
    elif value is None:
        node[path[-1]] = 0
    elif isinstance(value, str) and len(value) > 8 and value.endswith("="):
        node[path[-1]] = ("A" if value[0] != "A" else "B") + value[1:]  # a hash or signature
    else:
        node[path[-1]] = value + "x" if "\n" not in value else value.replace("\n", " \n", 1)
    return copy


def certified(env: FakeEnv) -> tuple[str, Path, Verifier]:
    job_id = env.submit_flexible(hours=10, minutes=60)
    env.slurmflex("daemon", "--once")
    out = env.tmp / "cert.json"
    done = env.slurmflex("audit", "certify", job_id, "--out", str(out))
    assert done.returncode == 0, done.stderr
    return job_id, out, Verifier.parse((env.tmp / "state" / "ledger" / VKEY).read_text())


def test_a_certificate_verifies_offline_and_any_changed_field_is_refused(fake_env: FakeEnv, tmp_path: Path) -> None:
    job_id, path, vkey = certified(fake_env)
    doc = json.loads(path.read_text())
    c = doc["body"]
    assert c["job"]["id"] == job_id and c["energy"]["basis"] == "estimated"
    assert c["saved"]["carbon_kg"] > 0 and c["as_run"]["carbon_kg"] < c["counterfactual"]["carbon_kg"]
    # Offline: only the file and the key (a copy outside the state dir).
    key_copy = tmp_path / "site.vkey"
    key_copy.write_text(vkey.vkey())
    ok = fake_env.slurmflex("audit", "verify-certificate", str(path), "--key", str(key_copy))
    assert ok.returncode == 0 and ok.stdout.startswith(f"ok: job {job_id}"), ok.stderr
    fields = list(_leaves(doc))
    assert len(fields) > 25
    for field in fields:
        with pytest.raises(CertificateError):
            verify_certificate(json.dumps(_changed(doc, field)), vkey)
    changed = tmp_path / "changed.json"
    changed.write_text(json.dumps(_changed(doc, ("body", "saved", "carbon_kg"))))
    bad = fake_env.slurmflex("audit", "verify-certificate", str(changed), "--key", str(key_copy))
    assert bad.returncode == 1 and "a field of the certificate was changed" in bad.stderr
    # The certificate's record is in the log, which still verifies.
    assert fake_env.slurmflex("audit", "verify").returncode == 0


def test_certificates_of_another_site_and_unknown_jobs(fake_env: FakeEnv) -> None:
    _, path, vkey = certified(fake_env)
    other = Signer.generate(vkey.name).verifier
    with pytest.raises(CertificateError, match="not by the trusted key"):
        verify_certificate(path.read_text(), other)
    with pytest.raises(CertificateError, match="not a signed certificate file"):
        verify_certificate("{}", vkey)
    out = fake_env.slurmflex("audit", "certify", "424242")
    assert out.returncode == 1 and "job 424242 is not one slurm-flex planned (unknown job id)" in out.stderr


def test_measured_energy_is_used_and_labelled(fake_env: FakeEnv) -> None:
    env = fake_env
    job_id = env.submit_flexible(hours=10, minutes=60)
    env.slurmflex("daemon", "--once")
    with env.store() as store:
        rec = store.jobs()[job_id]
    assert rec.energy_kwh is not None and rec.planned_carbon_g is not None
    measured = JobEnergy(job_id, rec.user, "acct", "job", None, rec.energy_kwh * 3.6e6 * 2, 3600.0, 0.0, 3600.0, True)
    energy = job_energy(rec, measured)
    assert energy is not None and energy.basis == "measured"
    body = claims(rec, measured, "site", 1_800_000_000)
    assert body["energy"]["basis"] == "measured"
    assert body["as_run"]["carbon_kg"] == pytest.approx(rec.planned_carbon_g * 2 / 1000, rel=1e-5)
    estimated = claims(rec, None, "site", 1_800_000_000)
    assert estimated["energy"]["basis"] == "estimated" and "not measured" in estimated["energy"]["source"]
