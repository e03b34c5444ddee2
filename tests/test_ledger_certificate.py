"""Green-compute certificates: issued for a job the daemon deferred (fake Slurm), verified
offline with only the file and the site's verifier key, and refused when any field changes."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from slurm_flex.grid.cache import GridCache
from slurm_flex.grid.factory import build_provider, grid_cache_path
from slurm_flex.grid.readings import Point, make_reading
from slurm_flex.grid.series import SLOT_SECONDS, SignalSeries, floor_slot, iso_utc, parse_iso_utc
from slurm_flex.ledger import signed
from slurm_flex.ledger.certificate import (
    Actuals,
    ObservedRun,
    RecordedSignal,
    actual_means,
    claims,
    evidence,
    job_energy,
    observed_run,
    verify_certificate,
    window_means,
)
from slurm_flex.ledger.errors import CertificateError
from slurm_flex.ledger.log import VKEY
from slurm_flex.ledger.note import Signer, Verifier, load_or_create_signer
from slurm_flex.ledger.site import open_site_ledger
from slurm_flex.power.store import JobEnergy
from slurm_flex.state import JobRecord
from tests.fake_cluster import FakeEnv
from tests.ledger_mutations import record_lines


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


def _records(env: FakeEnv) -> list[dict[str, Any]]:
    _, lines = record_lines(env.tmp / "state" / "ledger")
    return [json.loads(line) for line in lines]


def _forecast_mean(plan_file: Path, start: int, end: int) -> float:
    """Time-weighted carbon over [start, end) from a plan file's forecast, computed here."""
    fc = json.loads(plan_file.read_text())["sites"]["default"]["forecast"]
    total = 0.0
    for t in range(start, end):  # per second: slow, plain, independent of window_means
        total += fc["carbon"][(t - fc["start"]) // SLOT_SECONDS]
    return total / (end - start)


def test_the_observed_start_is_certified_with_its_ledger_record(fake_env: FakeEnv, tmp_path: Path) -> None:
    env = fake_env
    job_id = env.submit_flexible(hours=10, minutes=60)
    env.slurmflex("daemon", "--once")  # deferred to the clean window
    with env.store() as store:
        assert store.jobs()[job_id].status == "deferred"
    assert env.slurmflex("release", job_id, "--reason", "urgent").returncode == 0
    env.slurmflex("daemon", "--once")  # released: starts now
    env.slurm.start(job_id)
    started = env.slurm.job(job_id).start_time
    assert started is not None
    env.slurmflex("daemon", "--once")  # sees it running
    env.slurmflex("daemon", "--once")  # still running: logged once
    starts = [r for r in _records(env) if r["kind"] == "job-started"]
    assert len(starts) == 1 and starts[0]["data"]["job"] == job_id
    assert starts[0]["data"]["start"] == iso_utc(started) and starts[0]["data"]["nodes"]
    out = tmp_path / "cert.json"
    assert env.slurmflex("audit", "certify", job_id, "--out", str(out)).returncode == 0
    doc = json.loads(out.read_text())
    as_run = doc["body"]["as_run"]
    assert as_run["start_basis"] == "observed" and as_run["start"] == iso_utc(started)
    assert as_run["start_record"] == starts[0]["i"]
    # Not ended yet: the window runs for the planned run time (60 min), over the forecast the
    # daemon planned with before the job started, whose plan file the ledger holds.
    assert as_run["end_basis"] == "planned run time (no end observed yet)"
    signal = as_run["signal"]
    assert signal["basis"] == "forecast" and signal["plan_record"] is not None
    plan_file = env.tmp / "state" / signal["plan_file"]
    kwh = doc["body"]["energy"]["kwh"]
    expected = kwh * _forecast_mean(plan_file, started, started + 3600) / 1000
    assert as_run["carbon_kg"] == pytest.approx(expected, rel=1e-6)
    # Released early: the job ran in the dirty hours, like its counterfactual; nothing saved.
    assert doc["body"]["saved"]["carbon_kg"] == pytest.approx(
        doc["body"]["counterfactual"]["carbon_kg"] - as_run["carbon_kg"], abs=1e-6
    )
    vkey = Verifier.parse((env.tmp / "state" / "ledger" / VKEY).read_text())
    cert = verify_certificate(out.read_text(), vkey)
    assert cert.claims["as_run"]["start"] == iso_utc(started)
    ok = env.slurmflex("audit", "verify-certificate", str(out))
    assert ok.returncode == 0 and f"observed start {iso_utc(started)}" in ok.stdout, ok.stderr
    # Every field, the cited records' proofs included, is covered.
    for field in _leaves(doc):
        with pytest.raises(CertificateError):
            verify_certificate(json.dumps(_changed(doc, field)), vkey)
    # A certificate citing no proof of its start, or another job's start, is refused even if
    # re-signed by the site (the cited record is checked against the claim).
    signer = load_or_create_signer(env.tmp / "state" / "ledger.key", vkey.name)
    stripped = json.loads(out.read_text())
    del stripped["ledger"]["evidence"]
    with pytest.raises(CertificateError, match="carries no proof"):
        verify_certificate(json.dumps(_resign(stripped, signer)), vkey)
    moved = json.loads(out.read_text())
    moved["body"]["as_run"]["start"] = iso_utc(started - 3600)
    moved["ledger"] = _reanchor(env, moved["body"])
    with pytest.raises(CertificateError, match=f"is not job {job_id}'s start"):
        verify_certificate(json.dumps(_resign(moved, signer)), vkey)


def _resign(doc: dict[str, Any], signer: Signer) -> dict[str, Any]:
    doc["signature"]["ed25519"] = base64.b64encode(signer.sign(signed._signed_part(doc))).decode()
    return doc


def _reanchor(env: FakeEnv, body: dict[str, Any]) -> dict[str, Any]:
    """What a site rewriting a claim would have to do: log the new body and prove it."""
    ledger = open_site_ledger(env.load())
    assert ledger is not None
    return dict(signed.issue(ledger, "certificate", body["job"]["id"], body, evidence=evidence(body))["ledger"])


def test_an_ended_run_gives_the_window_and_the_energy_over_it() -> None:
    records = [
        (5, {"kind": "job-started", "data": {"job": "7", "start": "2026-06-10T10:00:00Z"}}),
        (6, {"kind": "job-started", "data": {"job": "8", "start": "2026-06-10T10:05:00Z"}}),
        (9, {"kind": "job-ended", "data": {"job": "7", "end": None, "last_seen_running": "2026-06-10T10:45:00Z"}}),
    ]
    run = observed_run(records, "7")
    assert run == ObservedRun(1_781_085_600, 5, 1_781_085_600 + 2700, 9, "the last cycle that saw it running")
    assert observed_run(records, "9") is None
    # Slot 10:00-10:30 at 100 g/kWh and 50/MWh, 10:30-11:00 at 400 and 150: 2/3 and 1/3 of the run.
    series = SignalSeries(1_781_085_600, (100.0, 400.0), (50.0, 150.0), "test")
    mean = window_means(series, run.start, run.start + 2700)
    assert mean is not None and mean[0] == pytest.approx(200.0) and mean[1] == pytest.approx(250 / 3)
    assert window_means(series, run.start - 60, run.start + 60) is None  # not covered: no figure
    rec = JobRecord("7", "7", "u", "p", 0, 0, None, None, None, 2000.0, 2.0, None, None,
                    1_781_085_600, "started", "", 800.0, 400.0, 400.0, 200.0, 0)  # fmt: skip
    signal = RecordedSignal("plans/cycle-00000001.json", "ab" * 32, 1, run.start - 300, series, 4)
    body = claims(rec, None, "site", run.start + 7200, run, [signal])
    energy = 2000.0 * 2700 / 3.6e6  # the model's power over the observed run, not the planned 2 kWh
    assert body["energy"]["kwh"] == pytest.approx(energy) and "observed run time" in body["energy"]["source"]
    assert body["as_run"]["carbon_kg"] == pytest.approx(energy * 200.0 / 1000)
    assert body["as_run"]["cost_gbp"] == pytest.approx(energy * 250 / 3 / 1000)
    assert body["as_run"]["end"] == "2026-06-10T10:45:00Z" and body["as_run"]["end_record"] == 9
    assert evidence(body) == [5, 9, 4]
    # No start observed: the planned one, labelled so.
    planned = claims(rec, None, "site", run.start, None, [signal])["as_run"]
    assert planned["start_basis"] == "planned" and planned["carbon_kg"] == pytest.approx(0.4)


def test_an_ended_job_is_certified_with_its_end_record(fake_env: FakeEnv, tmp_path: Path) -> None:
    env = fake_env
    job_id = env.submit_flexible(hours=10, minutes=60)
    env.slurmflex("daemon", "--once")
    env.slurm.start(job_id)
    started = env.slurm.now() - 600
    env.slurm.jobs[int(job_id)].start_time = started  # squeue says it started 10 minutes ago
    env.slurmflex("daemon", "--once")
    env.slurm.finish(job_id)
    env.slurmflex("daemon", "--once")
    ended = next(r for r in _records(env) if r["kind"] == "job-ended")
    out = tmp_path / "cert.json"
    assert env.slurmflex("audit", "certify", job_id, "--out", str(out)).returncode == 0
    doc = json.loads(out.read_text())
    as_run = doc["body"]["as_run"]
    assert as_run["start"] == iso_utc(started) and as_run["end_record"] == ended["i"]
    assert as_run["end"] == ended["data"]["last_seen_running"]  # gone from squeue: the earlier bound
    assert as_run["end_basis"] == "observed: the last cycle that saw it running"
    ran = parse_iso_utc(as_run["end"]) - started
    with env.store() as store:
        power_w = store.jobs()[job_id].power_w
    assert power_w is not None
    assert doc["body"]["energy"]["kwh"] == pytest.approx(power_w * ran / 3.6e6, rel=1e-5)
    vkey = Verifier.parse((env.tmp / "state" / "ledger" / VKEY).read_text())
    assert verify_certificate(out.read_text(), vkey).claims["as_run"]["end_record"] == ended["i"]


def test_outturn_is_preferred_to_the_forecast_where_it_covers_the_window() -> None:
    start = 1_781_085_600  # 10:00 UTC, a slot boundary
    run = ObservedRun(start, 5, start + 2700, 9, "Slurm's end time")
    rec = JobRecord("7", "7", "u", "p", 0, 0, None, None, None, 2000.0, 2.0, None, None,
                    start, "started", "", 800.0, 400.0, 400.0, 200.0, 0)  # fmt: skip
    series = SignalSeries(start, (100.0, 400.0), (50.0, 150.0), "forecast-src")
    signal = RecordedSignal("plans/cycle-00000001.json", "ab" * 32, 1, start - 300, series, 4)
    energy = 2000.0 * 2700 / 3.6e6
    # Outturn for both slots: 2/3 x 120 + 1/3 x 300 = 180 g/kWh; no outturn prices.
    outturn = Actuals("neso-src", {start: 120.0, start + 1800: 300.0})
    as_run = claims(rec, None, "site", start + 7200, run, [signal], outturn)["as_run"]
    assert as_run["signal"]["basis"] == "actual" and "neso-src" in as_run["signal"]["source"]
    assert as_run["carbon_kg"] == pytest.approx(energy * 180.0 / 1000)
    # The price is the forecast's, and the certificate says so and cites the plan file.
    assert as_run["signal"]["price_basis"] == "forecast" and as_run["signal"]["plan_record"] == 4
    assert as_run["cost_gbp"] == pytest.approx(energy * 250 / 3 / 1000)
    # Outturn missing for the second slot: the window is the forecast's, not a mixture.
    partial = Actuals("neso-src", {start: 120.0}, "agile", {start: 10.0, start + 1800: 10.0})
    mixed = claims(rec, None, "site", start + 7200, run, [signal], partial)["as_run"]
    assert mixed["signal"]["basis"] == "forecast" and mixed["carbon_kg"] == pytest.approx(energy * 200.0 / 1000)
    assert mixed["signal"]["price_basis"] == "actual" and mixed["cost_gbp"] == pytest.approx(energy * 10 / 1000)
    assert actual_means(partial, start, start + 2700) == (None, pytest.approx(10.0))


def test_certify_reads_the_outturn_of_a_live_site_from_the_grid_cache(fake_env: FakeEnv, tmp_path: Path) -> None:
    env = fake_env
    job_id = env.submit_flexible(hours=10, minutes=60)
    env.slurmflex("daemon", "--once")
    env.slurm.start(job_id)
    env.slurmflex("daemon", "--once")
    started = env.slurm.job(job_id).start_time
    assert started is not None
    # The site now plans on NESO (nothing is fetched: the cache already holds the outturn).
    env.reconfigure(sites={"gb": {"partitions": ["debug"], "carbon": {"provider": "neso", "region_id": 10}}})
    cfg = env.load()
    made = build_provider("gb", "carbon", cfg.sites["gb"].carbon, cfg)
    assert made is not None
    source = made[0].name
    slot = floor_slot(started)
    points = [Point(slot + k * SLOT_SECONDS, 150.0, "actual") for k in range(4)]
    with GridCache(grid_cache_path(cfg)) as cache:
        cache.store(make_reading("carbon", points, source, slot + 4 * SLOT_SECONDS))
    out = tmp_path / "cert.json"
    done = env.slurmflex("audit", "certify", job_id, "--out", str(out))
    assert done.returncode == 0, done.stderr
    as_run = json.loads(out.read_text())["body"]["as_run"]
    assert as_run["start_basis"] == "observed" and as_run["signal"]["basis"] == "actual"
    assert as_run["mean_g_per_kwh"] == pytest.approx(150.0)
    assert env.slurmflex("audit", "verify-certificate", str(out)).returncode == 0
