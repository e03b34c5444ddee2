"""Green-compute certificates: per job, the energy, carbon and cost as run against the
counterfactual start without slurm-flex, signed by the site key and anchored in the ledger.

A certificate is a signed, ledger-anchored document (``signed.py``) whose body holds the claims;
:func:`verify_certificate` needs only the file and the site's verifier key: offline, no access
to the cluster.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slurm_flex.errors import LedgerError
from slurm_flex.grid.series import SLOT_SECONDS, SignalSeries, floor_slot, iso_utc, parse_iso_utc
from slurm_flex.ledger import signed
from slurm_flex.ledger.checkpoint import Checkpoint
from slurm_flex.ledger.errors import CertificateError
from slurm_flex.ledger.log import Ledger
from slurm_flex.ledger.note import Verifier
from slurm_flex.planner.queue import series_from_json
from slurm_flex.power.store import JobEnergy
from slurm_flex.state import JobRecord

CERTIFICATE_TYPE = "slurm-flex/green-compute-certificate/v1"
JOULES_PER_KWH = 3.6e6


@dataclass(frozen=True)
class Energy:
    kwh: float
    basis: str  # "measured" or "estimated"
    source: str


@dataclass(frozen=True)
class ObservedRun:
    """What the ledger holds of a job's run: the daemon's ``job-started`` record (squeue's start
    time) and, once it saw the job gone, its ``job-ended`` record."""

    start: int
    start_index: int
    end: int | None = None
    end_index: int | None = None
    end_basis: str = ""


@dataclass(frozen=True)
class RecordedSignal:
    """A forecast one site planned with, as a cycle's plan file keeps it."""

    file: str  # relative to the state dir, as the ledger's ``plan`` record names it
    sha256: str
    cycle: int
    now: int  # when the cycle planned with it
    series: SignalSeries
    index: int | None = None  # the plan file's ``plan`` record in the ledger, where kept


@dataclass(frozen=True)
class Actuals:
    """Outturn a site's providers published (measured or settled intensities, and prices), per
    slot start, as the grid cache keeps them: better than any forecast for a window in the past."""

    carbon_source: str
    carbon: Mapping[int, float]  # g/kWh
    price_source: str | None = None
    price: Mapping[int, float] = field(default_factory=dict)  # per MWh


def actual_means(actuals: Actuals, start: int, end: int) -> tuple[float | None, float | None]:
    """Time-weighted mean outturn carbon and price over ``[start, end)``; each None unless every
    slot of the window has an outturn value (a window half outturn, half forecast is neither)."""

    def mean(values: Mapping[int, float]) -> float | None:
        total, t = 0.0, start
        while t < end:
            slot_end = floor_slot(t) + SLOT_SECONDS
            value = values.get(floor_slot(t))
            if value is None:
                return None
            total += value * (min(end, slot_end) - t)
            t = min(end, slot_end)
        return total / (end - start) if end > start else None

    return mean(actuals.carbon), mean(actuals.price)


def observed_run(records: Iterable[tuple[int, Mapping[str, Any]]], job_id: str) -> ObservedRun | None:
    """The job's first ``job-started`` record and the first ``job-ended`` after it."""
    run: ObservedRun | None = None
    for index, rec in records:
        data = rec.get("data", {})
        if data.get("job") != job_id:
            continue
        if rec.get("kind") == "job-started" and run is None:
            run = ObservedRun(parse_iso_utc(data["start"]), index)
        elif rec.get("kind") == "job-ended" and run is not None and run.end_index is None:
            if data.get("end"):
                end, basis = parse_iso_utc(data["end"]), "Slurm's end time"
            else:  # it ended between the two cycles: the earlier bound, so as not to overstate
                end, basis = parse_iso_utc(data["last_seen_running"]), "the last cycle that saw it running"
            run = ObservedRun(run.start, run.start_index, max(end, run.start), index, basis)
    return run


def read_plan_signals(plans_dir: Path, state_dir: Path, site: str) -> list[RecordedSignal]:
    """The forecasts ``site`` planned with, from the plan files still kept (unreadable ones are
    skipped: a certificate then falls back, and says so)."""
    out: list[RecordedSignal] = []
    for path in sorted(plans_dir.glob("cycle-*.json")) if plans_dir.is_dir() else []:
        try:
            data = path.read_bytes()
            doc = json.loads(data)
            fc = doc["sites"][site]["forecast"]
            if not fc:
                continue
            series = series_from_json(fc)
            rel = str(path.relative_to(state_dir)) if path.is_relative_to(state_dir) else str(path)
            out.append(
                RecordedSignal(
                    rel, hashlib.sha256(data).hexdigest(), int(doc["cycle"]), parse_iso_utc(doc["now"]), series
                )
            )
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out


def with_plan_records(
    signals: Sequence[RecordedSignal], records: Iterable[tuple[int, Mapping[str, Any]]]
) -> list[RecordedSignal]:
    """Each plan file's ``plan`` ledger record (same file, same digest), so a certificate can
    cite it: the file then proves the intensities it was computed with."""
    logged = {
        (rec["data"].get("file"), rec["data"].get("sha256")): index
        for index, rec in records
        if rec.get("kind") == "plan"
    }
    return [RecordedSignal(s.file, s.sha256, s.cycle, s.now, s.series, logged.get((s.file, s.sha256))) for s in signals]


def window_means(series: SignalSeries, start: int, end: int) -> tuple[float, float | None] | None:
    """Time-weighted mean carbon intensity (g/kWh) and price (per MWh, None without prices)
    over ``[start, end)``; None unless the series has carbon for all of it."""
    if end <= start or not (series.covers(start) and series.covers(end - 1)):
        return None
    carbon = price = 0.0
    priced = True
    t = start
    while t < end:
        slot_end = floor_slot(t) + SLOT_SECONDS
        weight = (min(end, slot_end) - t) / (end - start)
        k = series.index_of(t)
        if math.isnan(series.carbon[k]):
            return None
        carbon += weight * series.carbon[k]
        if math.isnan(series.price[k]):
            priced = False
        else:
            price += weight * series.price[k]
        t = min(end, slot_end)
    return carbon, (price if priced else None)


def pick_signal(
    signals: Sequence[RecordedSignal], start: int, end: int
) -> tuple[RecordedSignal, float, float | None] | None:
    """The forecast of the window: the latest planned with before the job started (what slurm-
    flex knew when it let the job run) that covers the whole window, else the earliest after."""
    covering = [(s, m) for s in signals if (m := window_means(s.series, start, end)) is not None]
    if not covering:
        return None
    before = [c for c in covering if c[0].now <= start]
    chosen = max(before, key=lambda c: c[0].now) if before else min(covering, key=lambda c: c[0].now)
    return chosen[0], chosen[1][0], chosen[1][1]


def planned_seconds(rec: JobRecord) -> int | None:
    """The run time the planner assumed (its energy over its power)."""
    if rec.energy_kwh is None or not rec.power_w:
        return None
    return round(rec.energy_kwh * 1000 / rec.power_w * 3600)


def job_energy(rec: JobRecord, measured: JobEnergy | None, ran_seconds: int | None = None) -> Energy | None:
    """Measured energy where the power ledger attributed any to the job, else the planner's
    estimate (the power model on the job's request; over the observed run time where the job
    was seen ending), labelled as such."""
    if measured is not None and measured.measured_seconds > 0 and measured.joules > 0:
        return Energy(measured.joules / JOULES_PER_KWH, "measured", "node readings attributed to the job ([measure])")
    if ran_seconds is not None and rec.power_w:
        return Energy(
            rec.power_w * ran_seconds / JOULES_PER_KWH,
            "estimated",
            "power model on the job's request over its observed run time (not measured)",
        )
    if rec.energy_kwh is not None:
        return Energy(rec.energy_kwh, "estimated", "power model on the job's request (not measured)")
    return None


def claims(
    rec: JobRecord,
    measured: JobEnergy | None,
    site: str,
    issued_at: int,
    run: ObservedRun | None = None,
    signals: Sequence[RecordedSignal] = (),
    actuals: Actuals | None = None,
) -> dict[str, Any]:
    """What the certificate states: energy, carbon and cost of the job as run (from the start
    the ledger observed, over the outturn the grid cache holds for that window, else the
    forecast slurm-flex recorded for it; the planned start where no start was observed,
    labelled so) against the start it would have had without slurm-flex."""
    ran = run.end - run.start if run is not None and run.end is not None else None
    energy = job_energy(rec, measured, ran)
    if energy is None or rec.baseline_carbon_g is None or rec.planned_carbon_g is None:
        raise CertificateError(f"job {rec.job_id} has no energy or carbon figures: slurm-flex did not plan it")
    # The planner's carbon and cost were computed on its estimated energy; other energy rescales
    # them (the intensities and prices of the windows are the forecast's, which the ledger records).
    scale = energy.kwh / rec.energy_kwh if rec.energy_kwh else 1.0

    def scaled(value: float | None, per: float = 1.0) -> float | None:
        return None if value is None else round(value * scale / per, 6)

    as_run = _as_run(rec, energy, run, signals, actuals) if run is not None else None
    if as_run is None:
        as_run = {
            "start_basis": "planned",
            "start_source": "no start observed in the ledger: the start slurm-flex planned, not a measured one",
            "start": iso_utc(rec.planned_start) if rec.planned_start is not None else None,
            "carbon_kg": scaled(rec.planned_carbon_g, 1000),
            "cost_gbp": scaled(rec.planned_cost_gbp),
            "mean_g_per_kwh": rec.mean_ci_planned,
            "signal": {"basis": "forecast", "source": "the planner's forecast when it planned the job"},
        }
    counterfactual: dict[str, Any] = {
        "description": "the job's own earliest start, as submitted, without slurm-flex",
        "start": iso_utc(rec.earliest if rec.earliest is not None else rec.first_seen),
        "carbon_kg": scaled(rec.baseline_carbon_g, 1000),
        "cost_gbp": scaled(rec.baseline_cost_gbp),
        "mean_g_per_kwh": rec.mean_ci_baseline,
        "signal": {"basis": "forecast", "source": "the planner's forecast when it first planned the job"},
    }
    return {
        "type": CERTIFICATE_TYPE,
        "site": site,
        "issued": iso_utc(issued_at),
        "job": {"id": rec.job_id, "user": rec.user, "partition": rec.partition, "status": rec.status},
        "energy": {"kwh": round(energy.kwh, 6), "basis": energy.basis, "source": energy.source},
        "as_run": as_run,
        "counterfactual": counterfactual,
        "saved": {
            "carbon_kg": _minus(counterfactual["carbon_kg"], as_run["carbon_kg"]),
            "cost_gbp": _minus(counterfactual["cost_gbp"], as_run["cost_gbp"]),
        },
    }


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 6)


def _as_run(
    rec: JobRecord, energy: Energy, run: ObservedRun, signals: Sequence[RecordedSignal], actuals: Actuals | None
) -> dict[str, Any]:
    seconds = run.end - run.start if run.end is not None else planned_seconds(rec)
    doc: dict[str, Any] = {
        "start_basis": "observed",
        "start_source": "squeue's start time, in the daemon's job-started ledger record",
        "start_record": run.start_index,
        "start": iso_utc(run.start),
        "end": None,
        "end_basis": None,
        "carbon_kg": None,
        "cost_gbp": None,
        "mean_g_per_kwh": None,
    }
    if run.end is not None:
        doc["end"], doc["end_basis"], doc["end_record"] = iso_utc(run.end), f"observed: {run.end_basis}", run.end_index
    elif seconds is not None:
        doc["end"], doc["end_basis"] = iso_utc(run.start + seconds), "planned run time (no end observed yet)"
    if not seconds:
        doc["signal"] = {"basis": "none", "source": "the run time is unknown"}
        return doc
    end = run.start + seconds
    found = pick_signal(signals, run.start, end)
    ci, price = actual_means(actuals, run.start, end) if actuals is not None else (None, None)
    signal: dict[str, Any] = {}
    if ci is not None and actuals is not None:
        signal = {
            "basis": "actual",
            "source": f"grid cache: {actuals.carbon_source} outturn (as published; not in the ledger)",
        }
    if price is not None and actuals is not None:
        signal["price_basis"], signal["price_source"] = "actual", f"grid cache: {actuals.price_source} outturn"
    if found is not None and (ci is None or price is None):
        sig, forecast_ci, forecast_price = found
        if ci is None:
            ci, signal["basis"], signal["source"] = forecast_ci, "forecast", sig.series.source
        if price is None and forecast_price is not None:
            price, signal["price_basis"] = forecast_price, "forecast"
        # Forecast, not outturn: the intensities slurm-flex planned with, as its plan file keeps them.
        signal |= {
            "plan_file": sig.file,
            "plan_sha256": sig.sha256,
            "plan_record": sig.index,
            "planned_at": iso_utc(sig.now),
        }
    if ci is None:
        doc["signal"] = {"basis": "none", "source": "no outturn or kept plan file's forecast covers the as-run window"}
        return doc
    doc["carbon_kg"] = round(energy.kwh * ci / 1000, 6)
    doc["cost_gbp"] = round(energy.kwh * price / 1000, 6) if price is not None else None
    doc["mean_g_per_kwh"] = round(ci, 3)
    doc["signal"] = signal
    return doc


def evidence(body: Mapping[str, Any]) -> list[int]:
    """The ledger records a certificate's claims cite (proved in its file)."""
    as_run = body.get("as_run", {})
    cited = [as_run.get("start_record"), as_run.get("end_record"), as_run.get("signal", {}).get("plan_record")]
    return [i for i in cited if isinstance(i, int)]


def issue(ledger: Ledger, body: dict[str, Any]) -> dict[str, Any]:
    """Log the claims' digest, sign a checkpoint covering it, and return the certificate with
    proofs of the records it cites."""
    return signed.issue(ledger, "certificate", body["job"]["id"], body, evidence=evidence(body))


@dataclass(frozen=True)
class VerifiedCertificate:
    claims: dict[str, Any]
    index: int
    checkpoint: Checkpoint


def verify_certificate(text: str, verifier: Verifier) -> VerifiedCertificate:
    """Check a certificate file offline; :class:`CertificateError` says what is wrong."""
    try:
        done = signed.verify_document(text, verifier, "certificate")
    except LedgerError as exc:
        raise CertificateError(str(exc)) from exc
    body = done.body
    if body.get("type") != CERTIFICATE_TYPE:
        raise CertificateError(f"not a {CERTIFICATE_TYPE}")
    missing = [i for i in evidence(body) if i not in done.evidence]
    if missing:
        raise CertificateError(f"the certificate cites ledger records {missing} but carries no proof of them")
    try:
        _check_observed(body, done.evidence)
    except (KeyError, TypeError, AttributeError) as exc:  # signed, but not what `certify` writes
        raise CertificateError(f"the certificate's as-run claims are malformed: {exc!r}") from exc
    return VerifiedCertificate(body, done.index, done.checkpoint)


def _check_observed(body: Mapping[str, Any], records: Mapping[int, Mapping[str, Any]]) -> None:
    """An observed start (and end) must be what the cited records say, for this job."""
    as_run, job = body.get("as_run", {}), body.get("job", {}).get("id")
    if as_run.get("start_basis") != "observed":
        return
    started = records[as_run["start_record"]]
    data = started.get("data", {})
    if started.get("kind") != "job-started" or data.get("job") != job or data.get("start") != as_run.get("start"):
        raise CertificateError(
            f"ledger record {as_run['start_record']} is not job {job}'s start at {as_run.get('start')}"
        )
    if "end_record" in as_run:
        ended = records[as_run["end_record"]]
        end = ended.get("data", {})
        if (
            ended.get("kind") != "job-ended"
            or end.get("job") != job
            or (end.get("end") or end.get("last_seen_running")) != as_run.get("end")
        ):
            raise CertificateError(
                f"ledger record {as_run['end_record']} is not job {job}'s end at {as_run.get('end')}"
            )
    plan_record = as_run.get("signal", {}).get("plan_record")
    if plan_record is not None:
        plan = records[plan_record].get("data", {})
        if records[plan_record].get("kind") != "plan" or plan.get("sha256") != as_run["signal"].get("plan_sha256"):
            raise CertificateError(f"ledger record {plan_record} is not the plan file the certificate names")
