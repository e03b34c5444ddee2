"""The RFC 9162 (formerly RFC 6962) Merkle tree: tree hashes, inclusion and consistency proofs
and their verification.

Leaf hash = SHA-256(0x00 || leaf), node hash = SHA-256(0x01 || left || right); a tree of n
leaves splits at the largest power of two below n. These few functions are written out here
rather than taken from a library because no maintained Python package implements RFC 9162
proofs (the transparency-dev reference is Go); they are tested against the transparency-dev
golden vectors (tests/test_ledger_merkle.py), which is what any implementation is judged by.

Proof generation works over the list of leaf hashes (kept by the log, see ``log.py``);
verification needs only the proof, the sizes and the roots: what an offline verifier has.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

from slurm_flex.ledger.errors import ProofError

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()  # the root of the empty tree (RFC 9162 2.1.1)


def leaf_hash(leaf: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def root(leaves: Sequence[bytes]) -> bytes:
    """MTH over leaf hashes (not leaf data), in one pass with a stack of perfect subtrees."""
    if not leaves:
        return EMPTY_ROOT
    compact = CompactRange()
    for h in leaves:
        compact.append(h)
    return compact.root()


class CompactRange:
    """The right edge of a growing tree: one hash per perfect subtree (at most log2 n of them),
    so appending is O(log n) and the root is available at any size without the leaves. Its
    hashes also let a verifier resume a tree whose early leaves were rotated away (``log.py``)."""

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        if len(hashes) != bin(size).count("1"):
            raise ProofError(f"a compact range of size {size} has {bin(size).count('1')} hashes, got {len(hashes)}")
        self.size = size
        self.hashes = list(hashes)  # largest subtree first

    def append(self, h: bytes) -> None:
        self.hashes.append(h)
        self.size += 1
        # Merge equal-size subtrees: one merge per trailing one bit of the old size.
        merges = (self.size & -self.size).bit_length() - 1
        for _ in range(merges):
            right = self.hashes.pop()
            left = self.hashes.pop()
            self.hashes.append(node_hash(left, right))

    def root(self) -> bytes:
        if not self.hashes:
            return EMPTY_ROOT
        out = self.hashes[-1]
        for h in reversed(self.hashes[:-1]):
            out = node_hash(h, out)
        return out

    def copy(self) -> CompactRange:
        return CompactRange(self.size, self.hashes)


def inclusion_proof(leaves: Sequence[bytes] | PrunedLeaves, index: int) -> list[bytes]:
    """PATH(index, D[n]) of RFC 9162 2.1.3.1 over the tree of these leaf hashes."""
    if not 0 <= index < len(leaves):
        raise ProofError(f"leaf {index} is not in a tree of size {len(leaves)}")
    return _path(index, _mth(leaves), 0, len(leaves))


def _mth(leaves: Sequence[bytes] | PrunedLeaves) -> Callable[[int, int], bytes]:
    if isinstance(leaves, PrunedLeaves):
        return leaves.subtree
    return lambda lo, hi: root(leaves[lo:hi])


def _path(m: int, mth: Callable[[int, int], bytes], lo: int, hi: int) -> list[bytes]:
    n = hi - lo
    if n == 1:
        return []
    k = _split(n)
    if m < lo + k:
        return [*_path(m, mth, lo, lo + k), mth(lo + k, hi)]
    return [*_path(m, mth, lo + k, hi), mth(lo, lo + k)]


def consistency_proof(leaves: Sequence[bytes] | PrunedLeaves, size1: int) -> list[bytes]:
    """PROOF(size1, D[n]) of RFC 9162 2.1.4.1: the tree of ``size1`` leaves is a prefix of this one."""
    n = len(leaves)
    if not 0 < size1 <= n:
        raise ProofError(f"no consistency proof from size {size1} to size {n}")
    if size1 == n:
        return []
    return _subproof(size1, _mth(leaves), 0, n, True)


def _subproof(m: int, mth: Callable[[int, int], bytes], lo: int, hi: int, whole: bool) -> list[bytes]:
    n = hi - lo
    if m == n:
        return [] if whole else [mth(lo, hi)]
    k = _split(n)
    if m <= k:
        return [*_subproof(m, mth, lo, lo + k, whole), mth(lo + k, hi)]
    return [*_subproof(m - k, mth, lo + k, hi, False), mth(lo, lo + k)]


class PrunedLeaves:
    """The leaf hashes from ``base`` on, with the compact range of the tree before them: what the
    log keeps once early record files were rotated away. Proofs of the kept leaves only need
    subtrees the compact range holds (a left sibling on a kept leaf's path is one of its nodes,
    or straddles ``base`` and is rebuilt from its nodes and kept leaves); anything else is a
    :class:`ProofError`."""

    def __init__(self, carried: CompactRange, leaves: Sequence[bytes]) -> None:
        self.base = carried.size
        self.leaves = leaves
        self.nodes: list[tuple[int, int, bytes]] = []  # (lo, hi, hash), left to right
        lo = 0
        for bit, h in zip(
            (1 << b for b in reversed(range(self.base.bit_length())) if self.base >> b & 1), carried.hashes, strict=True
        ):
            self.nodes.append((lo, lo + bit, h))
            lo += bit

    def __len__(self) -> int:
        return self.base + len(self.leaves)

    def subtree(self, lo: int, hi: int) -> bytes:
        if lo >= self.base:
            return root(self.leaves[lo - self.base : hi - self.base])
        pieces = [h for a, b, h in self.nodes if lo <= a and b <= min(hi, self.base)]
        covered = sum(b - a for a, b, _ in self.nodes if lo <= a and b <= min(hi, self.base))
        if covered != min(hi, self.base) - lo:
            raise ProofError(f"the subtree of leaves {lo}..{hi - 1} needs leaves that were rotated away")
        compact = CompactRange(covered, pieces)
        for h in self.leaves[: max(0, hi - self.base)]:
            compact.append(h)
        return compact.root()


def _check_sizes(what: str, hashes: Sequence[bytes]) -> None:
    for h in hashes:
        if len(h) != HASH_SIZE:
            raise ProofError(f"{what} has a hash of {len(h)} bytes, expected {HASH_SIZE}")


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root_hash: bytes) -> None:
    """RFC 9162 2.1.3.2: raise :class:`ProofError` (saying why) unless ``leaf`` (a leaf hash)
    is leaf ``index`` of the tree of ``size`` leaves with root ``root_hash``."""
    if not 0 <= index < size:
        raise ProofError(f"index {index} is outside a tree of size {size}")
    _check_sizes("leaf hash", [leaf])
    _check_sizes("proof", proof)
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise ProofError("proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("proof is shorter than the tree is deep")
    if r != root_hash:
        raise ProofError("proof does not lead to the root hash")


def verify_consistency(size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes) -> None:
    """RFC 9162 2.1.4.2: raise :class:`ProofError` (saying why) unless the tree of ``size1``
    leaves with ``root1`` is a prefix of the tree of ``size2`` leaves with ``root2``."""
    if size1 > size2:
        raise ProofError(f"size1 ({size1}) is larger than size2 ({size2})")
    if size1 == size2:
        if proof:
            raise ProofError("trees of equal size need an empty proof")
        if size1 == 0 and not root1 == root2 == EMPTY_ROOT:
            raise ProofError("an empty tree's root is SHA-256 of nothing")
        if root1 != root2:
            raise ProofError("trees of equal size have different roots")
        return
    if size1 == 0:
        # Every tree extends the empty one: a proof of it proves nothing, so none is accepted.
        raise ProofError("no consistency proof from an empty tree")
    if not proof:
        raise ProofError("empty proof")
    _check_sizes("proof", proof)
    path = list(proof)
    if size1 & (size1 - 1) == 0:  # size1 a power of two: its root is a node of the larger tree
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("proof is longer than needed")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("proof is shorter than needed")
    if fr != root1:
        raise ProofError("proof does not lead to root1")
    if sr != root2:
        raise ProofError("proof does not lead to root2")
