"""Acting on Slurm: the cycle's start-time and priority changes made as the mode says, each
journalled in the state store (recorded as pending, made, then settled), and advise mode's
planned starts written into job comments.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from slurm_flex.daemon.decide import EXPEDITED, Intent, PriorityChange, annotate_comment
from slurm_flex.grid.series import iso_utc
from slurm_flex.planner.queue import Plan
from slurm_flex.slurm.backend import SlurmBackend, UpdateReport
from slurm_flex.slurm.parsers import SlurmJob
from slurm_flex.state import PENDING_STATUSES, JobRecord, StateStore

log = structlog.get_logger(__name__)


class Actions:
    """Makes a cycle's decisions in Slurm (through the backend) and journals them (in the store)."""

    def __init__(self, backend: SlurmBackend, store: StateStore) -> None:
        self.backend = backend
        self.store = store
        # Each change made (job, old begin, new begin, kind, reason, outcome), for the ledger;
        # the cycle takes them after each apply.
        self.made: list[tuple[str, int | None, int | None, str, str, str]] = []

    def apply(
        self,
        cycle_id: int,
        intents: list[Intent],
        records: dict[str, JobRecord],
        mode: str,
        plan_: Plan,
        jobs: tuple[SlurmJob, ...],
        priorities: list[PriorityChange],
        now: int,
    ) -> tuple[int, int]:
        """Act on the intents as the mode says; returns (jobs updated, per-job failures). ``now``
        is the cycle's time; ``records`` are updated to what Slurm has afterwards, and saved.

        shadow: nothing; advise: release jobs (the hook's grace) and write each deferred job's
        planned start into its comment instead of deferring it; enforce: move start times and
        put queued jobs at risk first."""
        # Settle intents left pending by a crash: the records just computed reflect Slurm's
        # real state, which is what matters now.
        stale = {a.id: "unknown" for a in self.store.pending_intents()}
        if stale:
            self.store.settle_intents(stale)
        for i in intents:
            log.info(
                "decision",
                job=i.job_id,
                kind=i.kind,
                old_begin=_iso(i.old_begin),
                new_begin=_iso(i.new_begin) if i.new_begin is not None else "now",
                reason=i.reason,
                mode=mode,
            )
        if mode == "enforce":
            acting = intents
        elif mode == "advise":
            acting = _advise_only(intents, records, now)
        else:
            acting = []
        acted = {i.job_id: i for i in acting}
        for i in intents:
            if i.job_id not in acted:
                # Remember what Slurm really has, not what we would have set.
                records[i.job_id] = records[i.job_id].evolve(expected_begin=i.old_begin, applied_begin=None)
            elif acted[i.job_id] is not i:  # advise mode turned a deferral into a release
                new = acted[i.job_id].new_begin
                records[i.job_id] = records[i.job_id].evolve(expected_begin=new, applied_begin=new or now)
        applied = failed = 0
        if acting:
            applied, failed = self._set_start_times(cycle_id, acting, records)
        for c in priorities:
            log.info("decision", job=c.job_id, kind=c.kind, priority=f"{c.old} -> {c.new}", reason=c.reason, mode=mode)
        if mode == "enforce" and priorities:
            a, f = self._set_priorities(cycle_id, priorities, records)
            applied += a
            failed += f
        for job_id, rec in records.items():
            if rec.priority_before is not None and rec.status in PENDING_STATUSES:
                records[job_id] = rec.evolve(reason=EXPEDITED)
        if mode == "advise":
            a, f = self._annotate(plan_, jobs)
            applied += a
            failed += f
        self.store.save_jobs(records.values())
        return applied, failed

    def _journalled(
        self,
        cycle_id: int,
        rows: list[tuple[str, int | None, int | None, str, str]],
        update: Callable[[], UpdateReport],
    ) -> UpdateReport:
        """Make changes journalled: (job_id, old_begin, new_begin, kind, reason) recorded as pending
        actions first (a crash leaves them for the next cycle to settle), then made, then each
        action settled as applied or failed."""
        ids = self.store.record_intents(cycle_id, rows)
        report = update()
        outcomes: dict[int, str] = {}
        for action_id, row in zip(ids, rows, strict=True):
            job_id, _, _, kind, _ = row
            error = report.failed.get(job_id)
            outcomes[action_id] = "applied" if error is None else f"failed: {error}"
            self.made.append((*row, outcomes[action_id]))
            if error is not None:
                log.warning("update_failed", job=job_id, kind=kind, error=error)
        self.store.settle_intents(outcomes)
        return report

    def _set_priorities(
        self, cycle_id: int, changes: list[PriorityChange], records: dict[str, JobRecord]
    ) -> tuple[int, int]:
        """Set priorities; a moved job's record keeps the priority to give back."""
        report = self._journalled(
            cycle_id,
            [(c.job_id, None, None, c.kind, f"priority {c.old} -> {c.new}: {c.reason}") for c in changes],
            lambda: self.backend.set_priorities({c.job_id: c.new for c in changes}),
        )
        for c in changes:
            if c.job_id in report.failed:
                continue
            rec = records[c.job_id]
            before = None if c.kind == "restore" else (c.old if rec.priority_before is None else rec.priority_before)
            records[c.job_id] = rec.evolve(priority_before=before)
        return len(report.applied), len(report.failed)

    def _set_start_times(self, cycle_id: int, intents: list[Intent], records: dict[str, JobRecord]) -> tuple[int, int]:
        report = self._journalled(
            cycle_id,
            [(i.job_id, i.old_begin, i.new_begin, i.kind, i.reason) for i in intents],
            lambda: self.backend.set_start_times({i.job_id: i.new_begin for i in intents}),
        )
        for i in intents:
            if i.job_id in report.failed:
                # Most often the job started or ended between our read and our update.
                records[i.job_id] = records[i.job_id].evolve(expected_begin=i.old_begin, applied_begin=None)
        return len(report.applied), len(report.failed)

    def _annotate(self, plan_: Plan, jobs: tuple[SlurmJob, ...]) -> tuple[int, int]:
        """Advise mode: each planned job's comment carries ``slurmflex-plan=<UTC time>`` for a
        later start it would have been given (the user's own text kept); changed ones only."""
        planned = plan_.by_id()
        changes: dict[str, str] = {}
        for job in jobs:
            p = planned.get(job.update_id)
            if p is None or not job.pending:
                continue
            wanted = annotate_comment(job.comment, p.start if p.deferred else None)
            if wanted != job.comment:
                changes[job.update_id] = wanted
        if not changes:
            return 0, 0
        report = self.backend.set_comments(changes)
        for job_id, error in report.failed.items():
            log.warning("annotate_failed", job=job_id, error=error)
        return len(report.applied), len(report.failed)


def _advise_only(intents: list[Intent], records: dict[str, JobRecord], now: int) -> list[Intent]:
    """Advise mode defers nothing: every job slurm-flex (or its hook's grace) made wait goes back
    to its own earliest start (its --begin, or now); the plan is only written down."""
    out = []
    for i in intents:
        if i.kind == "release":
            out.append(i)
            continue
        earliest = records[i.job_id].earliest if i.job_id in records else None
        if i.old_begin is None or earliest is None or i.old_begin <= max(earliest, now) + 2:
            continue  # nothing of ours to undo
        target = earliest if earliest > now else None
        out.append(Intent(i.job_id, i.old_begin, target, "release", "advise mode: not deferred"))
    return out


def _iso(epoch: int | None) -> str | None:
    return None if epoch is None else iso_utc(epoch)
