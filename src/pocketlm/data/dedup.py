"""Exact and near-duplicate detection: content hashes, MinHash signatures and a banded LSH index.

MinHash is computed with numpy over word n-gram shingles (vectorised, no per-shingle Python
loop beyond hashing words). The LSH index keeps signatures and band keys in numpy arrays, so
memory grows with the number of kept documents (under 1.5 KB each), never with their text.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from pocketlm.data.ngrams import WordArrays, ngram_hashes


def content_hash(text: str) -> int:
    """Stable 64-bit hash of a document's text (exact dedup and the train/val split)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


@dataclass(frozen=True)
class MinHasher:
    """Permutation parameters for `num_perm` MinHash functions over 64-bit shingle hashes."""

    num_perm: int = 128
    shingle_words: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        # Odd multipliers make (a*x + b) mod 2^64 a bijection; the high 32 bits are the hash.
        a = rng.integers(1, 2**63, size=self.num_perm, dtype=np.uint64) | np.uint64(1)
        b = rng.integers(0, 2**63, size=self.num_perm, dtype=np.uint64)
        object.__setattr__(self, "_a", a[:, None])
        object.__setattr__(self, "_b", b[:, None])

    def signature(self, words: WordArrays) -> np.ndarray:
        """MinHash signature: (num_perm,) uint32, the minimum permuted hash of the unique shingles."""
        shingles = np.unique(
            ngram_hashes(words.hashes, min(self.shingle_words, max(1, len(words))))
        )
        if shingles.size == 0:
            return np.full(self.num_perm, 0xFFFFFFFF, dtype=np.uint32)
        with np.errstate(over="ignore"):
            permuted = (self._a * shingles[None, :] + self._b) >> np.uint64(
                32
            )  # (num_perm, n_shingles)
        return permuted.min(axis=1).astype(np.uint32)


def estimate_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    """Fraction of equal MinHash slots: an unbiased estimate of Jaccard similarity."""
    return float(np.mean(sig_a == sig_b))


def exact_jaccard(a: set, b: set) -> float:
    """|a ∩ b| / |a ∪ b| (1.0 for two empty sets)."""
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def _collision_probability(s: float, bands: int, rows: int) -> float:
    return 1.0 - (1.0 - s**rows) ** bands


def lsh_params(threshold: float, num_perm: int, fp_weight: float = 0.5) -> tuple[int, int]:
    """(bands, rows) with bands*rows <= num_perm minimising weighted false-positive/negative area."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"near-duplicate threshold must be in (0, 1), got {threshold}")
    grid = np.linspace(0.0, 1.0, 201)
    best: tuple[float, int, int] | None = None
    for bands in range(1, num_perm + 1):
        rows = num_perm // bands
        p = 1.0 - (1.0 - grid**rows) ** bands
        # Riemann sums over [0, 1] of the false-positive and false-negative probability mass.
        fp = float(np.mean(np.where(grid < threshold, p, 0.0)))
        fn = float(np.mean(np.where(grid >= threshold, 1.0 - p, 0.0)))
        err = fp_weight * fp + (1.0 - fp_weight) * fn
        if best is None or err < best[0] - 1e-12:
            best = (err, bands, rows)
    assert best is not None
    return best[1], best[2]


class IntTable:
    """Open-addressing hash table uint64 -> uint32 in two numpy arrays (12 bytes a slot, load <= 1/2)."""

    _EMPTY = 0xFFFFFFFF
    _MULT = np.uint64(0x9E3779B97F4A7C15)

    def __init__(self, capacity: int = 1 << 12) -> None:
        self._keys = np.zeros(capacity, dtype=np.uint64)
        self._vals = np.full(capacity, self._EMPTY, dtype=np.uint32)
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def _home(self, keys: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            return ((keys * self._MULT) >> np.uint64(40)).astype(np.int64) & (
                self._keys.shape[0] - 1
            )

    def _slot(self, key: int) -> int:
        mask = self._keys.shape[0] - 1
        slot = int(self._home(np.array([key], dtype=np.uint64))[0])
        while self._vals[slot] != self._EMPTY and int(self._keys[slot]) != key:
            slot = (slot + 1) & mask
        return slot

    def get(self, key: int) -> int | None:
        """The value stored for key, or None."""
        value = int(self._vals[self._slot(key)])
        return None if value == self._EMPTY else value

    def put_if_absent(self, key: int, value: int) -> bool:
        """Store key -> value unless the key is present (first writer wins); True if stored."""
        if 2 * (self._size + 1) > self._keys.shape[0]:
            self._grow()
        slot = self._slot(key)
        if self._vals[slot] != self._EMPTY:
            return False
        self._keys[slot] = key
        self._vals[slot] = value
        self._size += 1
        return True

    def _grow(self) -> None:
        live = self._vals != self._EMPTY
        keys, vals = self._keys[live], self._vals[live]
        capacity = self._keys.shape[0] * 2
        self._keys = np.zeros(capacity, dtype=np.uint64)
        self._vals = np.full(capacity, self._EMPTY, dtype=np.uint32)
        # Vectorised linear probing: each round, the first claimant of every free slot takes it.
        slots = self._home(keys)
        pending = np.arange(keys.shape[0])
        while pending.size:
            target = slots[pending]
            free = self._vals[target] == self._EMPTY
            _, first = np.unique(target, return_index=True)
            winners = np.zeros(pending.size, dtype=bool)
            winners[first] = True
            place = free & winners
            self._keys[target[place]] = keys[pending[place]]
            self._vals[target[place]] = vals[pending[place]]
            pending = pending[~place]
            slots[pending] = (slots[pending] + 1) & (capacity - 1)

    @property
    def nbytes(self) -> int:
        return self._keys.nbytes + self._vals.nbytes


class LSHIndex:
    """Banded LSH over MinHash signatures, with every candidate verified.

    Bands are tuned for recall (few missed pairs at the threshold); each candidate is then
    checked by its estimated Jaccard similarity, so the threshold means what it says.
    Memory per kept document: its signature (2 bytes x num_perm) plus 12-24 bytes per band.
    """

    def __init__(self, threshold: float, num_perm: int) -> None:
        self.bands, self.rows = lsh_params(threshold, num_perm, fp_weight=0.05)
        self.num_perm = num_perm
        self.threshold = threshold
        rng = np.random.default_rng(1234567)
        self._mix = rng.integers(
            1, 2**63, size=(self.bands, self.rows), dtype=np.uint64
        ) | np.uint64(1)
        self._salt = rng.integers(0, 2**63, size=self.bands, dtype=np.uint64)
        self._table = IntTable()
        # Signatures are kept as their low 16 bits: chance agreement 1/65536 barely moves the estimate.
        self._sigs = np.zeros((1024, num_perm), dtype=np.uint16)  # (capacity, num_perm)
        self._count = 0

    def band_keys(self, signature: np.ndarray) -> list[int]:
        """One 64-bit key per band, distinct across bands."""
        used = (
            signature[: self.bands * self.rows].astype(np.uint64).reshape(self.bands, self.rows)
        )  # (bands, rows)
        with np.errstate(over="ignore"):
            keys = (used * self._mix).sum(axis=1, dtype=np.uint64) + self._salt
        return keys.tolist()

    def add_if_new(self, signature: np.ndarray) -> bool:
        """Insert and return True unless a kept document is at least `threshold` similar."""
        keys = self.band_keys(signature)
        checked: set[int] = set()
        for key in keys:
            doc = self._table.get(key)
            if doc is not None and doc not in checked:
                checked.add(doc)
                if estimate_jaccard(signature.astype(np.uint16), self._sigs[doc]) >= self.threshold:
                    return False
        if self._count == self._sigs.shape[0]:
            self._sigs = np.concatenate([self._sigs, np.zeros_like(self._sigs)])
        self._sigs[self._count] = signature
        for key in keys:
            self._table.put_if_absent(key, self._count)
        self._count += 1
        return True

    def __len__(self) -> int:
        return self._count

    @property
    def nbytes(self) -> int:
        """Memory held by the index."""
        return self._table.nbytes + self._sigs[: self._count].nbytes

    def expected_collision(self, similarity: float) -> float:
        """Probability that two docs with this Jaccard similarity share a band (become candidates)."""
        return _collision_probability(similarity, self.bands, self.rows)
