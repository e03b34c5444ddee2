"""What an admin tells the daemon between cycles (``slurmflex release``, ``resume``, ``mode`` and
``stress``): recorded in the state store, which every cycle reads (a release exempts jobs in
``decide.assess``; the mode is ``Cycle.mode``; a stress event is carried out by
``daemon.stress``), and, for a release, made in Slurm at once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import structlog

from slurm_flex.config import Config
from slurm_flex.daemon.service import slurm_backend
from slurm_flex.daemon.stress import StressEvent, add_event, cancel_event
from slurm_flex.errors import SlurmFlexError
from slurm_flex.ledger import events
from slurm_flex.ledger.site import open_site_ledger
from slurm_flex.slurm.backend import UpdateReport
from slurm_flex.state import Exemptions, JobRecord, StateStore

log = structlog.get_logger(__name__)

MODE_SETTING = "mode"


@dataclass(frozen=True)
class Release:
    """What a release did: the jobs slurm-flex had deferred that it covers, and Slurm's answer
    to starting them now (None when there were none, or Slurm could not be reached: ``error``;
    the daemon then releases them at its next cycle)."""

    deferred: tuple[str, ...]
    report: UpdateReport | None = None
    error: str | None = None


def release(
    config: Config, job_ids: Iterable[str], users: Iterable[str], everything: bool, reason: str, by: str
) -> Release:
    """Record a release of these jobs, users' jobs or every job (``everything``), so that the
    daemon leaves them alone from now on, and start the deferred ones it covers now."""
    job_ids, users = tuple(job_ids), tuple(users)
    with StateStore(config.state_db) as store:
        for job_id in job_ids:
            store.add_control("job", job_id, by, reason)
        for user in users:
            store.add_control("user", user, by, reason)
        if everything:
            store.add_control("all", "*", by, reason)
        exempt = store.exemptions()
        deferred = tuple(
            job_id for job_id, rec in store.jobs(["deferred", "shaped"]).items() if _covered(exempt, job_id, rec)
        )
    log.warning(
        "release",
        by=by,
        jobs=list(job_ids),
        users=list(users),
        everything=everything,
        reason=reason,
        deferred=len(deferred),
    )
    _record(config, events.admin("release", by, jobs=list(job_ids), users=list(users), all=everything,
                                 reason=reason, deferred=list(deferred)))  # fmt: skip
    if not deferred:
        return Release(deferred)
    try:
        report = slurm_backend(config).set_start_times({job_id: None for job_id in deferred})
    except SlurmFlexError as exc:
        return Release(deferred, error=str(exc))
    return Release(deferred, report)


def resume(config: Config, job_ids: Iterable[str], users: Iterable[str], everything: bool, by: str) -> int:
    """Lift the releases of these jobs and users (``everything``: every release, of jobs, users
    and all); returns how many were lifted."""
    job_ids, users = tuple(job_ids), tuple(users)
    with StateStore(config.state_db) as store:
        lifted = 0
        for job_id in job_ids:
            lifted += store.clear_controls("job", job_id)
        for user in users:
            lifted += store.clear_controls("user", user)
        if everything:
            lifted += sum(store.clear_controls(kind) for kind in ("all", "job", "user"))
    log.warning("resume", by=by, jobs=list(job_ids), users=list(users), everything=everything, lifted=lifted)
    _record(config, events.admin("resume", by, jobs=list(job_ids), users=list(users), all=everything, lifted=lifted))
    return lifted


def set_mode(config: Config, new_mode: str | None, by: str, clear: bool = False) -> tuple[str, bool]:
    """Switch the daemon's mode at runtime (``clear``: back to the config's); with neither, only
    look. Returns the mode in force from the next cycle and whether it was set at runtime."""
    with StateStore(config.state_db) as store:
        if clear:
            store.set_setting(MODE_SETTING, None, by)
        elif new_mode:
            store.set_setting(MODE_SETTING, new_mode, by)
            log.warning("mode", by=by, mode=new_mode)
        current = store.setting(MODE_SETTING)
    if clear or new_mode:
        _record(config, events.admin("mode", by, mode=new_mode, clear=clear))
    return current or config.daemon.mode, bool(current)


def stress(config: Config, site: str, kw: float, start: int, end: int, reason: str, by: str) -> StressEvent:
    """Record a grid-stress event at one site: from ``start`` to ``end`` the daemon sheds ``kw``
    there (daemon.stress), moving what it can to the other site."""
    with StateStore(config.state_db) as store:
        event = add_event(store, config.sites, site, kw, start, end, by, reason)
    log.warning("stress", by=by, stress_event=event.id, site=site, kw=kw, start=start, end=end, reason=reason)
    _record(config, events.admin("stress", by, event=event.id, site=site, kw=kw, start=start, end=end, reason=reason))
    return event


def cancel_stress(config: Config, event_id: str, by: str) -> StressEvent:
    """Cancel a stress event: the next cycle resumes what it paused."""
    with StateStore(config.state_db) as store:
        event = cancel_event(store, event_id, by)
    log.warning("stress_cancel", by=by, stress_event=event_id)
    _record(config, events.admin("stress-cancel", by, event=event_id))
    return event


def _record(config: Config, entry: events.Entry) -> None:
    """Log what an admin did in the ledger; the command itself has worked either way, so a
    ledger that cannot be written is a warning (the daemon reports it too)."""
    try:
        ledger = open_site_ledger(config)
        if ledger is not None:
            ledger.append_many([entry])
            ledger.checkpoint()
    except (SlurmFlexError, OSError) as exc:
        log.warning("ledger_failed", error=str(exc), record=entry[0])


def _covered(exempt: Exemptions, job_id: str, rec: JobRecord) -> bool:
    """A release covers a job named by its own id, by its array's, or by its user."""
    return exempt.covers(job_id, rec.user) or exempt.covers(job_id.split("_", 1)[0], rec.user)
