"""Green-compute certificates: per job, the energy, carbon and cost as run against the
counterfactual start without slurm-flex, signed by the site key and anchored in the ledger.

A certificate is a signed, ledger-anchored document (``signed.py``) whose body holds the claims;
:func:`verify_certificate` needs only the file and the site's verifier key: offline, no access
to the cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from slurm_flex.errors import LedgerError
from slurm_flex.grid.series import iso_utc
from slurm_flex.ledger import signed
from slurm_flex.ledger.checkpoint import Checkpoint
from slurm_flex.ledger.errors import CertificateError
from slurm_flex.ledger.log import Ledger
from slurm_flex.ledger.note import Verifier
from slurm_flex.power.store import JobEnergy
from slurm_flex.state import JobRecord

CERTIFICATE_TYPE = "slurm-flex/green-compute-certificate/v1"
JOULES_PER_KWH = 3.6e6


@dataclass(frozen=True)
class Energy:
    kwh: float
    basis: str  # "measured" or "estimated"
    source: str


def job_energy(rec: JobRecord, measured: JobEnergy | None) -> Energy | None:
    """Measured energy where the power ledger attributed any to the job, else the planner's
    estimate (the power model on the job's request), labelled as such."""
    if measured is not None and measured.measured_seconds > 0 and measured.joules > 0:
        return Energy(measured.joules / JOULES_PER_KWH, "measured", "node readings attributed to the job ([measure])")
    if rec.energy_kwh is not None:
        return Energy(rec.energy_kwh, "estimated", "power model on the job's request (not measured)")
    return None


def claims(rec: JobRecord, measured: JobEnergy | None, site: str, issued_at: int) -> dict[str, Any]:
    """What the certificate states, from the job's record (carbon and cost of its window as
    planned, and of the start it would have had without slurm-flex)."""
    energy = job_energy(rec, measured)
    if energy is None or rec.baseline_carbon_g is None or rec.planned_carbon_g is None:
        raise CertificateError(f"job {rec.job_id} has no energy or carbon figures: slurm-flex did not plan it")
    # Carbon and cost were computed on the estimated energy; measured energy rescales them (the
    # intensities and prices of the two windows are the forecast's, which the ledger records).
    scale = energy.kwh / rec.energy_kwh if rec.energy_kwh else 1.0

    def scaled(value: float | None, per: float = 1.0) -> float | None:
        return None if value is None else round(value * scale / per, 6)

    counterfactual_start = rec.earliest if rec.earliest is not None else rec.first_seen
    return {
        "type": CERTIFICATE_TYPE,
        "site": site,
        "issued": iso_utc(issued_at),
        "job": {"id": rec.job_id, "user": rec.user, "partition": rec.partition, "status": rec.status},
        "energy": {"kwh": round(energy.kwh, 6), "basis": energy.basis, "source": energy.source},
        "as_run": {
            # The start slurm-flex gave the job; Slurm's accounting of when it really started
            # is not read yet, so this says so rather than claim a measured start.
            "start_basis": "planned start set by slurm-flex (actual start not read from accounting)",
            "start": iso_utc(rec.planned_start) if rec.planned_start is not None else None,
            "carbon_kg": scaled(rec.planned_carbon_g, 1000),
            "cost_gbp": scaled(rec.planned_cost_gbp),
            "mean_g_per_kwh": rec.mean_ci_planned,
        },
        "counterfactual": {
            "description": "the job's own earliest start, as submitted, without slurm-flex",
            "start": iso_utc(counterfactual_start),
            "carbon_kg": scaled(rec.baseline_carbon_g, 1000),
            "cost_gbp": scaled(rec.baseline_cost_gbp),
            "mean_g_per_kwh": rec.mean_ci_baseline,
        },
        "saved": {
            "carbon_kg": scaled(rec.carbon_saved_g, 1000),
            "cost_gbp": scaled(rec.cost_saved_gbp) if rec.baseline_cost_gbp is not None else None,
        },
    }


def issue(ledger: Ledger, body: dict[str, Any]) -> dict[str, Any]:
    """Log the claims' digest, sign a checkpoint covering it, and return the certificate."""
    return signed.issue(ledger, "certificate", body["job"]["id"], body)


@dataclass(frozen=True)
class VerifiedCertificate:
    claims: dict[str, Any]
    index: int
    checkpoint: Checkpoint


def verify_certificate(text: str, verifier: Verifier) -> VerifiedCertificate:
    """Check a certificate file offline; :class:`CertificateError` says what is wrong."""
    try:
        body, index, cp = signed.verify(text, verifier, "certificate")
    except LedgerError as exc:
        raise CertificateError(str(exc)) from exc
    if body.get("type") != CERTIFICATE_TYPE:
        raise CertificateError(f"not a {CERTIFICATE_TYPE}")
    return VerifiedCertificate(body, index, cp)
