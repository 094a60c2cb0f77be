"""Word tokens and vectorised word n-gram hashes shared by the repetition filters and MinHash."""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

import numpy as np

_WORD_RE = re.compile(r"\w+", re.UNICODE)
_NGRAM_MULT = np.uint64(0x9E3779B97F4A7C15)


@dataclass(frozen=True)
class WordArrays:
    """A document's lower-cased words as arrays: 32-bit hashes (held in uint64) and lengths."""

    hashes: np.ndarray  # (n_words,) uint64
    lengths: np.ndarray  # (n_words,) int64

    def __len__(self) -> int:
        return int(self.hashes.shape[0])


def word_arrays(text: str) -> WordArrays:
    """Split into \\w+ words (lower-cased) and hash each with crc32."""
    words = _WORD_RE.findall(text.lower())
    n = len(words)
    hashes = np.fromiter((zlib.crc32(w.encode("utf-8")) for w in words), dtype=np.uint64, count=n)
    lengths = np.fromiter((len(w) for w in words), dtype=np.int64, count=n)
    return WordArrays(hashes, lengths)


def ngram_hashes(word_hashes: np.ndarray, n: int) -> np.ndarray:
    """Hash of each window of n consecutive words: (n_words - n + 1,) uint64 (empty if too few words)."""
    count = word_hashes.shape[0] - n + 1
    if count <= 0:
        return np.zeros(0, dtype=np.uint64)
    acc = np.zeros(count, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n):
            acc = acc * _NGRAM_MULT + word_hashes[k : k + count]
    return acc
