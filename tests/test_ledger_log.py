"""The ledger's store: appends, checkpoints, crash repair, rotation and retention, and
verification that names the first bad record for every single-record mutation."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slurm_flex.ledger import note
from slurm_flex.ledger.checkpoint import open_checkpoint
from slurm_flex.ledger.errors import LedgerError, ProofError, VerificationError
from slurm_flex.ledger.log import (
    CHECKPOINTS,
    LATEST,
    QUARANTINE,
    VKEY,
    Ledger,
    prove,
    segments,
    start_file,
    verify,
)
from slurm_flex.ledger.merkle import leaf_hash, verify_consistency, verify_inclusion
from tests.ledger_mutations import mutations, record_lines, write

ORIGIN = "hpc.example/slurm-flex"


def open_ledger(tmp: Path, per_file: int = 1000) -> Ledger:
    return Ledger.open(tmp / "ledger", tmp / "ledger.key", ORIGIN, records_per_file=per_file, clock=lambda: 1.8e9)


def vkey(tmp: Path) -> note.Verifier:
    return note.Verifier.parse((tmp / "ledger" / VKEY).read_text())


def test_append_checkpoint_verify_and_prove(tmp_path: Path) -> None:
    led = open_ledger(tmp_path)
    assert stat.S_IMODE(os.stat(tmp_path / "ledger.key").st_mode) == 0o600
    assert led.append_many([("plan", {"cycle": 1}), ("action", {"job": "7", "new": 1.5})]) == [0, 1]
    signed = led.checkpoint()
    cp = open_checkpoint(signed, [vkey(tmp_path)], ORIGIN)
    assert cp.size == 2 and (tmp_path / "ledger" / LATEST).read_text() == signed
    led.append("mode", {"from": "enforce", "to": "shadow"})
    cp3 = open_checkpoint(led.checkpoint(), [vkey(tmp_path)])
    done = verify(tmp_path / "ledger", vkey(tmp_path))
    assert (done.records, done.checkpoints, done.uncovered, done.latest) == (3, 3, 0, cp3)
    line = led.record(1)
    assert json.loads(line)["data"] == {"job": "7", "new": 1.5}
    verify_inclusion(leaf_hash(line), 1, 3, led.inclusion_proof(1, 3), cp3.root)
    verify_consistency(2, 3, led.consistency_proof(2, 3), cp.root, cp3.root)
    # A second writer (an admin command) and the daemon take turns; each sees the other's records.
    other = open_ledger(tmp_path)
    other.append("release", {"job": "9"})
    assert led.append("action", {"job": "9"}) == 4
    led.checkpoint()
    assert verify(tmp_path / "ledger", vkey(tmp_path)).records == 5


def test_nan_and_non_json_values_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    led = open_ledger(tmp_path)
    with pytest.raises(LedgerError, match="canonical JSON"):
        led.append_many([("plan", {"x": 1}), ("plan", {"x": float("nan")})])
    assert led.size == 0 and record_lines(tmp_path / "ledger")[1] == []


def test_torn_last_line_is_quarantined_at_open_and_logged(tmp_path: Path) -> None:
    led = open_ledger(tmp_path)
    led.append_many([("a", {}), ("b", {})])
    led.checkpoint()
    path, _ = record_lines(tmp_path / "ledger")
    with open(path, "ab") as f:
        f.write(b'{"data":{},"i":2,"ki')  # a crash part-way through the third append
    with pytest.raises(VerificationError, match="record 2: torn") as bad:
        verify(tmp_path / "ledger", vkey(tmp_path))
    assert bad.value.index == 2
    assert path.read_bytes().endswith(b'"ki')  # verification changed nothing
    led = open_ledger(tmp_path)
    (torn,) = (tmp_path / "ledger" / QUARANTINE).iterdir()
    assert torn.read_bytes() == b'{"data":{},"i":2,"ki'
    repaired = json.loads(led.record(2))
    assert repaired["kind"] == "ledger.repaired" and repaired["data"]["bytes"] == 20
    led.checkpoint()
    assert verify(tmp_path / "ledger", vkey(tmp_path)).records == 3


def test_a_log_changed_since_its_checkpoint_is_not_extended(tmp_path: Path) -> None:
    led = open_ledger(tmp_path)
    led.append_many([("a", {"v": 1}), ("b", {"v": 2})])
    led.checkpoint()
    path, lines = record_lines(tmp_path / "ledger")
    write(path, [lines[0].replace(b'"v":1', b'"v":3'), lines[1]])
    with pytest.raises(LedgerError, match="no longer match the latest signed checkpoint"):
        open_ledger(tmp_path)


def test_rotation_and_retention_keep_the_log_verifiable(tmp_path: Path) -> None:
    led = open_ledger(tmp_path, per_file=4)
    for k in range(10):
        led.append("event", {"k": k})
    led.checkpoint()
    assert [first for first, _ in segments(tmp_path / "ledger")] == [0, 4, 8]
    assert verify(tmp_path / "ledger", vkey(tmp_path)).records == 10
    assert [p.name for p in led.prune(keep_from=9)] == ["records-000000000000.jsonl", "records-000000000004.jsonl"]
    done = verify(tmp_path / "ledger", vkey(tmp_path))
    assert (done.records, done.first, done.signature_only) == (10, 8, 1)  # the size-4 checkpoint
    # Kept records can still be proved against checkpoints; rotated-away ones cannot.
    cp = open_checkpoint((tmp_path / "ledger" / LATEST).read_text(), [vkey(tmp_path)])
    verify_inclusion(leaf_hash(led.record(9)), 9, 10, led.inclusion_proof(9, 10), cp.root)
    assert prove(tmp_path / "ledger", vkey(tmp_path), 8).index == 8
    with pytest.raises(ProofError, match="record 3 was rotated away"):
        led.inclusion_proof(3, 10)
    with pytest.raises(ProofError, match="record 3 was rotated away"):
        prove(tmp_path / "ledger", vkey(tmp_path), 3)
    led.append("event", {"k": 10})  # appending goes on after pruning
    led.checkpoint()
    assert verify(tmp_path / "ledger", vkey(tmp_path)).records == 11
    # The carried tree is checked against the signed checkpoint of its size.
    carried = start_file(tmp_path / "ledger", 8)
    doc = json.loads(carried.read_text())
    doc["hashes"][0] = doc["last_leaf"]  # size 8: one perfect subtree
    carried.write_text(json.dumps(doc))
    with pytest.raises(VerificationError, match="carried in matches no signed checkpoint") as bad:
        verify(tmp_path / "ledger", vkey(tmp_path))
    assert bad.value.index == 8


def test_checkpoints_of_another_key_or_log_are_refused(tmp_path: Path) -> None:
    led = open_ledger(tmp_path)
    led.append("a", {})
    led.checkpoint()
    stranger = note.Signer.generate(ORIGIN)
    with pytest.raises(VerificationError, match="signed by no trusted key"):
        verify(tmp_path / "ledger", stranger.verifier)
    forged = stranger.verifier
    foreign = (tmp_path / "ledger" / LATEST).read_text()
    cp = open_checkpoint(foreign, [vkey(tmp_path)])
    with pytest.raises(VerificationError, match=r"external.*signed by no trusted key"):
        verify(tmp_path / "ledger", vkey(tmp_path), external=[("external", cp.sign(stranger))])
    assert forged.name == ORIGIN
    with pytest.raises(VerificationError, match="not 'elsewhere/log'"):
        verify(tmp_path / "ledger", vkey(tmp_path), origin="elsewhere/log")
    # A checkpoint line that was changed fails its signature, naming the line.
    cps = tmp_path / "ledger" / CHECKPOINTS
    cps.write_text(cps.read_text().replace("\\n1\\n", "\\n2\\n"))
    with pytest.raises(VerificationError, match=f"line 1 of {CHECKPOINTS}.*does not verify"):
        verify(tmp_path / "ledger", vkey(tmp_path))


def _daemonlike_log(tmp: Path, n: int) -> None:
    led = open_ledger(tmp)
    for k in range(n):
        led.append("action", {"job": str(100 + k), "kind": "defer", "new_begin": 1_800_000_000 + k})
        if k % 3 == 2:
            led.checkpoint()
    led.checkpoint()


def test_every_single_record_mutation_is_named(tmp_path: Path) -> None:
    _daemonlike_log(tmp_path, 7)
    path, lines = record_lines(tmp_path / "ledger")
    checked = 0
    for what, mutated, blame in mutations(lines):
        write(path, mutated)
        with pytest.raises(VerificationError) as bad:
            verify(tmp_path / "ledger", vkey(tmp_path))
        assert bad.value.index == blame, f"{what}: {bad.value}"
        checked += 1
    write(path, lines)
    assert verify(tmp_path / "ledger", vkey(tmp_path)).records == 7 and checked > 60


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.dictionaries(st.text(max_size=5), st.integers(-(2**53) + 1, 2**53 - 1) | st.text(max_size=8), max_size=3),
        min_size=1,
        max_size=12,
    ),
    st.sets(st.integers(0, 11)),
    st.data(),
)
def test_property_random_logs_verify_and_any_mutation_is_caught(
    tmp_path_factory: pytest.TempPathFactory, records: list[dict[str, object]], cps: set[int], data: st.DataObject
) -> None:
    tmp = tmp_path_factory.mktemp("prop")
    led = open_ledger(tmp, per_file=5)
    for k, rec in enumerate(records):
        led.append("event", rec)
        if k in cps:
            led.checkpoint()
    led.checkpoint()
    assert verify(tmp / "ledger", vkey(tmp)).records == len(records)
    files = segments(tmp / "ledger")
    first, path = data.draw(st.sampled_from(files))
    lines = path.read_bytes().split(b"\n")[:-1]
    options = list(mutations(lines)) if lines else []
    if not options:
        return
    what, mutated, blame = data.draw(st.sampled_from(options))
    write(path, mutated)
    with pytest.raises(VerificationError) as bad:
        verify(tmp / "ledger", vkey(tmp))
    # Rotated files: a mutation that changes a file's record count is blamed where counting breaks.
    assert bad.value.index is not None and bad.value.index >= first, f"{what}: {bad.value}"
    if path == files[-1][1]:
        assert bad.value.index == first + blame, f"{what}: {bad.value}"


def test_a_writer_killed_mid_append_leaves_a_log_that_repairs_and_verifies(tmp_path: Path) -> None:
    """kill -9 a process appending as fast as it can, at a random moment, then reopen: whatever
    it left (a torn line at worst) is repaired into quarantine and the log verifies."""
    import random
    import signal
    import subprocess
    import sys
    import time

    script = (
        "import sys; from pathlib import Path; from slurm_flex.ledger.log import Ledger\n"
        f"led = Ledger.open(Path({str(tmp_path / 'ledger')!r}), Path({str(tmp_path / 'ledger.key')!r}), {ORIGIN!r})\n"
        "print('ready', flush=True)\n"
        "k = 0\n"
        "while True:\n"
        "    led.append_many([('event', {'k': k, 'pad': 'x' * 5000}) for _ in range(20)]); k += 1\n"
        "    if k % 5 == 0: led.checkpoint()\n"
    )
    for attempt in range(3):
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        time.sleep(random.uniform(0.05, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        led = open_ledger(tmp_path)  # repairs a torn tail, if any, and checks the last checkpoint
        led.checkpoint()
        done = verify(tmp_path / "ledger", vkey(tmp_path))
        assert done.records == led.size > 0 and done.uncovered == 0, attempt
