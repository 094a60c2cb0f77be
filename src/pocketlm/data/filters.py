"""Quality filters as pure functions: each returns the reason a document fails, or None."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pocketlm.data.ngrams import WordArrays, ngram_hashes


@dataclass(frozen=True)
class FilterThresholds:
    """Limits a document must respect; the names appear in the data report."""

    min_chars: int
    max_chars: int
    max_dup_line_fraction: float
    max_top_ngram_fraction: float
    max_dup_ngram_fraction: float


def dup_line_fraction(text: str, min_line_chars: int = 12) -> float:
    """Fraction of characters (in lines of >= min_line_chars) that sit in lines seen before in the doc."""
    lines = [line.strip() for line in text.split("\n")]
    lines = [line for line in lines if len(line) >= min_line_chars]
    total = sum(len(line) for line in lines)
    if total == 0:
        return 0.0
    seen: set[str] = set()
    dup = 0
    for line in lines:
        if line in seen:
            dup += len(line)
        else:
            seen.add(line)
    return dup / total


def top_ngram_fraction(words: WordArrays, n: int = 2) -> float:
    """Characters covered by the most frequent word n-gram over all word characters (Gopher-style).

    Ties in frequency go to the n-gram covering the most characters.
    """
    grams = ngram_hashes(words.hashes, n)
    if grams.size < 2:
        return 0.0
    _, first, counts = np.unique(grams, return_index=True, return_counts=True)
    top = counts == counts.max()
    if counts.max() < 2:
        return 0.0
    char_cum = np.concatenate([[0], np.cumsum(words.lengths)])
    gram_chars = char_cum[first[top] + n] - char_cum[first[top]]  # characters in each top n-gram
    return min(1.0, int(counts.max()) * int(gram_chars.max()) / int(words.lengths.sum()))


def dup_ngram_fraction(words: WordArrays, n: int = 5) -> float:
    """Fraction of word characters inside n-grams that occur more than once (Gopher-style)."""
    grams = ngram_hashes(words.hashes, n)
    if grams.size < 2:
        return 0.0
    _, inverse, counts = np.unique(grams, return_inverse=True, return_counts=True)
    dup_starts = np.nonzero(counts[inverse] > 1)[0]
    if dup_starts.size == 0:
        return 0.0
    # Mark words i..i+n-1 for every repeated n-gram starting at i, via a difference array.
    delta = np.zeros(len(words) + 1, dtype=np.int64)
    np.add.at(delta, dup_starts, 1)
    np.add.at(delta, dup_starts + n, -1)
    covered = np.cumsum(delta)[: len(words)] > 0
    return float(words.lengths[covered].sum() / words.lengths.sum())


def check_document(text: str, limits: FilterThresholds, words: WordArrays) -> str | None:
    """Return the name of the first failing filter ('too_short', ...) or None when the doc passes."""
    n = len(text)
    if n < limits.min_chars:
        return "too_short"
    if n > limits.max_chars:
        return "too_long"
    if (
        limits.max_dup_line_fraction < 1.0
        and dup_line_fraction(text) > limits.max_dup_line_fraction
    ):
        return "repeated_lines"
    if limits.max_top_ngram_fraction < 1.0 or limits.max_dup_ngram_fraction < 1.0:
        if top_ngram_fraction(words, 2) > limits.max_top_ngram_fraction:
            return "repeated_ngram"
        if dup_ngram_fraction(words, 5) > limits.max_dup_ngram_fraction:
            return "duplicated_ngrams"
    return None
