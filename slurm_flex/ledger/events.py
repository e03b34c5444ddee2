"""What the daemon and the admin commands write into the ledger: one small builder per kind
of record, pure functions from the objects at hand to the record's ``data``.

Record kinds: ``forecast`` (digest of the forecast a site planned with), ``plan`` (digest of the
cycle's replayable plan file in ``<state_dir>/plans/``), ``action`` (a change made in Slurm: job,
old and new start or priority, reason, outcome), ``mode`` (the mode in force changed),
``config`` (the effective configuration changed), ``admin.release`` / ``admin.resume`` /
``admin.mode`` (what an admin told the daemon), ``cycle`` (a cycle's outcome) and
``ledger.repaired`` (a torn line moved to quarantine).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from slurm_flex.config import Config
from slurm_flex.grid.series import SignalSeries, iso_utc
from slurm_flex.ledger.log import canonical
from slurm_flex.planner.queue import series_to_json

Entry = tuple[str, dict[str, Any]]


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def forecast(site: str, series: SignalSeries | None, source: str) -> Entry:
    """The forecast a site planned with, by digest: the canonical JSON of every slot it holds
    (the plan file keeps the planning window itself)."""
    if series is None:
        return "forecast", {"site": site, "source": source, "sha256": None, "note": "unavailable"}
    return "forecast", {
        "site": site,
        "source": series.source,
        "issued_at": iso_utc(series.issued_at) if series.issued_at is not None else None,
        "start": iso_utc(series.start),
        "slots": len(series),
        "sha256": sha256_hex(canonical(series_to_json(series, len(series)))),
    }


def plan(cycle: int, path: Path, state_dir: Path) -> Entry:
    """A cycle's plan file by digest of its bytes, as written."""
    return "plan", {
        "cycle": cycle,
        "file": str(path.relative_to(state_dir)) if path.is_relative_to(state_dir) else str(path),
        "sha256": sha256_hex(path.read_bytes()),
    }


def action(
    cycle: int,
    job: str,
    old_begin: int | None,
    new_begin: int | None,
    kind: str,
    reason: str,
    outcome: str,
) -> Entry:
    return "action", {
        "cycle": cycle,
        "job": job,
        "kind": kind,
        "old_begin": iso_utc(old_begin) if old_begin is not None else None,
        "new_begin": iso_utc(new_begin) if new_begin is not None else None,
        "reason": reason,
        "outcome": outcome,
    }


def config_digest(config: Config) -> str:
    return sha256_hex(canonical(config.model_dump(mode="json")))


def config_changed(config: Config, previous: str | None) -> Entry:
    return "config", {"sha256": config_digest(config), "previous": previous}


def mode_changed(old: str | None, new: str, set_at_runtime: bool) -> Entry:
    return "mode", {"from": old, "to": new, "source": "runtime" if set_at_runtime else "config"}


def cycle_done(cycle: int, ok: bool, jobs: int, deferred: int, updates: int, errors: int, message: str) -> Entry:
    return "cycle", {
        "cycle": cycle,
        "ok": ok,
        "jobs": jobs,
        "deferred": deferred,
        "updates": updates,
        "errors": errors,
        "message": message[:500],
    }


def admin(kind: str, by: str, **details: Any) -> Entry:
    return f"admin.{kind}", {"by": by, **details}


# -- for the Beckn work (issue 16 asks for these; nothing calls them yet) --------------------------


def beckn_message(
    direction: str, action: str, message_id: str, body: bytes, signature: str | None, ack: bool, why: str = ""
) -> Entry:
    """A Beckn message sent or received (``direction`` "in" or "out"), by digest of its exact
    bytes, with the signature it carried and whether it was ACKed (and why not)."""
    return "beckn.message", {
        "direction": direction,
        "action": action,
        "message_id": message_id,
        "sha256": sha256_hex(body),
        "signature": signature,
        "ack": ack,
        "why": why,
    }


def activation(order: str, period: str, offered_kw: float, delivered_kw: float | None, basis: str) -> Entry:
    """An activation of a flexibility order in a settlement period and its metered delivery
    (``basis`` says how it was measured, or ``modelled``)."""
    return "activation", {
        "order": order,
        "period": period,
        "offered_kw": offered_kw,
        "delivered_kw": delivered_kw,
        "basis": basis,
    }
