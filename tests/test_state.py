"""The SQLite state store."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from slurm_flex.errors import StateError
from slurm_flex.state import StateStore
from tests.test_decide import record


def test_job_records_roundtrip(tmp_path: Path) -> None:
    with StateStore(tmp_path / "s.db") as store:
        rec = record(status="deferred", planned_start=123, baseline_carbon_g=10.0, planned_carbon_g=4.0)
        store.save_jobs([rec])
        assert store.jobs() == {"42": rec}
        assert store.jobs(["deferred"])["42"].carbon_saved_g == 6.0
        assert store.jobs(["gone"]) == {}
        store.save_jobs([rec.evolve(status="started")])
        assert store.jobs()["42"].status == "started"


def test_intents_are_pending_until_settled(tmp_path: Path) -> None:
    with StateStore(tmp_path / "s.db") as store:
        cid = store.start_cycle(1.0, "enforce")
        ids = store.record_intents(cid, [("1", None, 100, "defer", "r"), ("2", 5, None, "release", "r")])
        assert [a.job_id for a in store.pending_intents()] == ["1", "2"]
        store.settle_intents({ids[0]: "applied"})
        assert [a.job_id for a in store.pending_intents()] == ["2"]
        assert store.actions("1")[0].outcome == "applied"


def test_cycles(tmp_path: Path) -> None:
    with StateStore(tmp_path / "s.db") as store:
        cid = store.start_cycle(10.0, "shadow")
        store.finish_cycle(cid, duration_s=0.5, ok=1, jobs_seen=3, message="fine")
        (last,) = store.last_cycles(1)
        assert last.ok and last.jobs_seen == 3 and last.mode == "shadow" and last.message == "fine"
        with pytest.raises(StateError, match="unknown cycle fields"):
            store.finish_cycle(cid, bogus=1)
        assert store.cycle_count() == 1


def test_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with StateStore(path) as store:
        store.save_jobs([record()])
    with StateStore(path) as store:
        assert "42" in store.jobs()


def test_newer_schema_and_garbage_files_are_refused(tmp_path: Path) -> None:
    newer = tmp_path / "newer.db"
    db = sqlite3.connect(newer)
    db.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(StateError, match="newer slurm-flex"):
        StateStore(newer)
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StateError, match="cannot open state store"):
        StateStore(garbage)


def test_unwritable_state_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StateError):
        StateStore(blocker / "sub" / "s.db")


def test_mean_load_weights_samples_by_how_long_they_stood(tmp_path: Path) -> None:
    with StateStore(tmp_path / "s.sqlite3") as store:
        assert store.mean_load("lab", 0) is None
        store.record_load("lab", 1000, 10.0)
        assert store.mean_load("lab", 0) == 10.0
        store.record_load("lab", 1100, 2.0)  # 10 nodes for 100 s ...
        store.record_load("lab", 1400, 6.0)  # ... then 2 nodes for 300 s
        store.record_load("other", 1100, 99.0)
        assert store.mean_load("lab", 0) == pytest.approx((10 * 100 + 2 * 300) / 400)
        store.record_load("lab", 1000 + 7 * 86400, 1.0)  # a week on, all are kept ...
        assert store.mean_load("lab", 0) == pytest.approx((10 * 100 + 2 * 300 + 6 * (7 * 86400 - 400)) / (7 * 86400))
        store.record_load("lab", 1000 + 9 * 86400, 1.0)  # ... samples older than eight days are dropped
        assert store.mean_load("lab", 0) == 1.0


def test_a_version_4_store_gains_the_priority_column(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    StateStore(path).save_jobs([record(job_id="7")])
    db = sqlite3.connect(path)
    db.execute("ALTER TABLE jobs DROP COLUMN priority_before")  # as version 4 wrote it
    db.execute("PRAGMA user_version=4")
    db.commit()
    db.close()
    store = StateStore(path)
    assert store.jobs()["7"].priority_before is None
    store.save_jobs([record(job_id="7", priority_before=900)])
    assert StateStore(path).jobs()["7"].priority_before == 900
