"""The RFC 9162 Merkle tree against the transparency-dev golden vectors (../shared/specs/ledger,
parsed as they are in the files), and proofs we generate against the verifier."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from slurm_flex.ledger.errors import ProofError
from slurm_flex.ledger.merkle import (
    EMPTY_ROOT,
    CompactRange,
    PrunedLeaves,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root,
    verify_consistency,
    verify_inclusion,
)

VECTORS = Path(__file__).resolve().parent.parent.parent / "shared" / "specs" / "ledger" / "transparency-dev-merkle"
# The leaves behind the vectors (upstream testonly/constants.go; listed in SOURCE.md).
LEAVES = [bytes.fromhex(h) for h in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657",
                                      "606162636465666768696a6b6c6d6e6f")]  # fmt: skip
ROOTS = {
    1: "bjQLnP+zepicpUTmu3gKLHiQHT+zNzh2hRGjBhevoB0=",
    2: "+sVCA+fMaWzw38tCySodnbr3CtnmIfS9jZhmLwDjwSU=",
    3: "rra8/idLcKFPsGel5VeCZNsPqbUa9eC6FZFY8yngbnc=",
    4: "037kGJdt2VdTwcc4Yrk5j6Kiz5tP8P3+izDNlSCWFLc=",
    5: "Tju7H3tHjc/nH7YxYxUZo7yhLJrvyhYSv85ME6hiZNQ=",
    6: "duZ9rbzfHhDht03cYIq9L5jfsW+851J3tSMqEn8gh+8=",
    7: "3bib5AOAnjJXUNPSY814kpwpQreUKjS3fhIslZSnTIw=",
    8: "XcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=",
}


def _vectors(kind: str) -> list[Path]:
    if not VECTORS.is_dir():
        return []
    return sorted((VECTORS / "testdata" / kind).rglob("*.json"))


def _b64(value: str) -> bytes:
    return base64.b64decode(value)


def _id(path: Path) -> str:
    return "/".join(path.parts[-2:])


@pytest.mark.shared
@pytest.mark.skipif(not VECTORS.is_dir(), reason="../shared is not present")
@pytest.mark.parametrize("path", _vectors("inclusion"), ids=_id)
def test_inclusion_vectors(path: Path) -> None:
    v = json.loads(path.read_text())
    proof = [_b64(p) for p in v["proof"] or []]
    args = (_b64(v["leafHash"]), v["leafIdx"], v["treeSize"], proof, _b64(v["root"]))
    if v["wantErr"]:
        with pytest.raises(ProofError):
            verify_inclusion(*args)
    else:
        verify_inclusion(*args)


@pytest.mark.shared
@pytest.mark.skipif(not VECTORS.is_dir(), reason="../shared is not present")
@pytest.mark.parametrize("path", _vectors("consistency"), ids=_id)
def test_consistency_vectors(path: Path) -> None:
    v = json.loads(path.read_text())
    proof = [_b64(p) for p in v["proof"] or []]
    args = (v["size1"], v["size2"], proof, _b64(v["root1"]), _b64(v["root2"]))
    if v["wantErr"]:
        with pytest.raises(ProofError):
            verify_consistency(*args)
    else:
        verify_consistency(*args)


def test_there_are_vectors_of_each_kind() -> None:
    if not VECTORS.is_dir():
        pytest.skip("../shared is not present")
    assert len(_vectors("inclusion")) == 98 and len(_vectors("consistency")) == 98


@pytest.mark.shared
@pytest.mark.skipif(not VECTORS.is_dir(), reason="../shared is not present")
@pytest.mark.parametrize("path", [p for p in _vectors("inclusion") + _vectors("consistency")
                                  if p.name == "happy-path.json"], ids=_id)  # fmt: skip
def test_our_proofs_equal_the_golden_happy_paths(path: Path) -> None:
    """The proofs we generate over the vectors' leaves are byte for byte the vectors' proofs."""
    v = json.loads(path.read_text())
    hashes = [leaf_hash(d) for d in LEAVES]
    if "leafIdx" in v:
        tree = hashes[: v["treeSize"]]
        assert base64.b64encode(root(tree)).decode() == v["root"]
        assert [base64.b64encode(p).decode() for p in inclusion_proof(tree, v["leafIdx"])] == (v["proof"] or [])
    else:
        assert [base64.b64encode(p).decode() for p in consistency_proof(hashes[: v["size2"]], v["size1"])] == (
            v["proof"] or []
        )


def test_roots_of_the_vector_leaves() -> None:
    hashes = [leaf_hash(d) for d in LEAVES]
    for n, want in ROOTS.items():
        assert base64.b64encode(root(hashes[:n])).decode() == want
    assert root([]) == EMPTY_ROOT


@given(st.lists(st.binary(max_size=8), min_size=1, max_size=70), st.data())
def test_generated_proofs_verify_and_tampered_ones_do_not(leaves: list[bytes], data: st.DataObject) -> None:
    hashes = [leaf_hash(d) for d in leaves]
    n = len(hashes)
    r = root(hashes)
    i = data.draw(st.integers(0, n - 1))
    proof = inclusion_proof(hashes, i)
    verify_inclusion(hashes[i], i, n, proof, r)
    if proof:
        k = data.draw(st.integers(0, len(proof) - 1))
        bad = [*proof[:k], bytes(32), *proof[k + 1 :]]
        with pytest.raises(ProofError):
            verify_inclusion(hashes[i], i, n, bad, r)
    m = data.draw(st.integers(1, n))
    c = consistency_proof(hashes, m)
    verify_consistency(m, n, c, root(hashes[:m]), r)
    if m < n:
        with pytest.raises(ProofError):
            verify_consistency(m, n, c, root(hashes[:m]), root(hashes[: n - 1]) if n - 1 >= m else EMPTY_ROOT)


@given(st.lists(st.binary(max_size=4), max_size=100))
def test_compact_range_root_equals_the_recursive_definition(leaves: list[bytes]) -> None:
    hashes = [leaf_hash(d) for d in leaves]
    compact = CompactRange()
    for k, h in enumerate(hashes):
        compact.append(h)
        assert compact.root() == _mth(hashes[: k + 1])
    resumed = CompactRange(compact.size, compact.hashes)
    resumed.append(leaf_hash(b"next"))
    assert resumed.root() == _mth([*hashes, leaf_hash(b"next")])


@given(st.integers(1, 80), st.data())
def test_proofs_of_kept_leaves_after_rotation_equal_the_full_proofs(n: int, data: st.DataObject) -> None:
    hashes = [leaf_hash(k.to_bytes(2, "big")) for k in range(n)]
    base = data.draw(st.integers(0, n - 1))
    carried = CompactRange()
    for h in hashes[:base]:
        carried.append(h)
    pruned = PrunedLeaves(carried, hashes[base:])
    i = data.draw(st.integers(base, n - 1))
    assert inclusion_proof(pruned, i) == inclusion_proof(hashes, i)
    m = data.draw(st.integers(1, n))
    try:
        assert consistency_proof(pruned, m) == consistency_proof(hashes, m)
    except ProofError as exc:
        assert "rotated away" in str(exc)


def _mth(hashes: list[bytes]) -> bytes:
    """RFC 9162's recursive MTH, written as the RFC states it."""
    from slurm_flex.ledger.merkle import node_hash

    if not hashes:
        return EMPTY_ROOT
    if len(hashes) == 1:
        return hashes[0]
    k = 1
    while k * 2 < len(hashes):
        k *= 2
    return node_hash(_mth(hashes[:k]), _mth(hashes[k:]))
