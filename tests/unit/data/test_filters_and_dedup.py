from __future__ import annotations

import random
from collections import Counter

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pocketlm.data.dedup import LSHIndex, MinHasher, content_hash, estimate_jaccard, lsh_params
from pocketlm.data.filters import (
    FilterThresholds,
    check_document,
    dup_line_fraction,
    dup_ngram_fraction,
    top_ngram_fraction,
)
from pocketlm.data.ngrams import word_arrays
from tests.conftest import WORDS, make_document


def _ref_top_ngram(words: list[str], n: int) -> float:
    if len(words) - n + 1 < 2:
        return 0.0
    grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    top = max(grams.values())
    if top < 2:
        return 0.0
    chars = max(sum(map(len, g)) for g, c in grams.items() if c == top)
    return min(1.0, top * chars / sum(map(len, words)))


def _ref_dup_ngram(words: list[str], n: int) -> float:
    if len(words) - n + 1 < 2:
        return 0.0
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    counts = Counter(grams)
    covered = [False] * len(words)
    for i, g in enumerate(grams):
        if counts[g] > 1:
            for j in range(i, i + n):
                covered[j] = True
    return sum(len(w) for w, c in zip(words, covered) if c) / sum(map(len, words))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(WORDS[:12]), min_size=0, max_size=60))
def test_vectorised_repetition_stats_match_reference(words):
    text = " ".join(words)
    arrays = word_arrays(text)
    assert abs(top_ngram_fraction(arrays, 2) - _ref_top_ngram(words, 2)) < 1e-9
    assert abs(dup_ngram_fraction(arrays, 5) - _ref_dup_ngram(words, 5)) < 1e-9


def test_check_document_names_the_failing_filter():
    limits = FilterThresholds(
        min_chars=20,
        max_chars=10_000,
        max_dup_line_fraction=0.3,
        max_top_ngram_fraction=0.2,
        max_dup_ngram_fraction=0.15,
    )
    ok = make_document(random.Random(1), 16)
    assert check_document(ok, limits, word_arrays(ok)) is None
    assert check_document("short", limits, word_arrays("short")) == "too_short"
    spam = "\n".join(["buy cheap watches online today"] * 20)
    assert dup_line_fraction(spam) > 0.9
    assert check_document(spam, limits, word_arrays(spam)) == "repeated_lines"
    loop = " ".join(["la la"] * 200)
    assert check_document(loop, limits, word_arrays(loop)) == "repeated_ngram"


def _jaccard(a: str, b: str, n: int = 5) -> float:
    def grams(t):
        w = t.lower().split()
        return {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}

    ga, gb = grams(a), grams(b)
    return len(ga & gb) / len(ga | gb)


def test_minhash_estimates_jaccard():
    r = random.Random(3)
    base = " ".join(r.choice(WORDS) for _ in range(400))
    words = base.split()
    edited = " ".join(w if i % 10 else "zebra" for i, w in enumerate(words))
    hasher = MinHasher(num_perm=256, shingle_words=5, seed=1)
    est = estimate_jaccard(
        hasher.signature(word_arrays(base)), hasher.signature(word_arrays(edited))
    )
    assert abs(est - _jaccard(base, edited)) < 0.08


def test_lsh_catches_near_duplicates_and_keeps_distinct_documents():
    r = random.Random(5)
    hasher = MinHasher()
    index = LSHIndex(threshold=0.8, num_perm=hasher.num_perm)
    originals = [" ".join(r.choice(WORDS) for _ in range(300)) for _ in range(50)]
    assert all(index.add_if_new(hasher.signature(word_arrays(d))) for d in originals)
    near = [d + " one extra tail sentence" for d in originals[:10]]
    assert not any(index.add_if_new(hasher.signature(word_arrays(d))) for d in near)
    fresh = [" ".join(r.choice(WORDS) for _ in range(300)) for _ in range(20)]
    assert all(index.add_if_new(hasher.signature(word_arrays(d))) for d in fresh)


def test_lsh_params_put_the_s_curve_at_the_threshold():
    for threshold in (0.5, 0.7, 0.8, 0.9):
        bands, rows = lsh_params(threshold, 128)
        assert bands * rows <= 128
        inflection = (1 / bands) ** (1 / rows)
        assert abs(inflection - threshold) < 0.12


def test_content_hash_is_stable_across_runs():
    # blake2b-64 of the UTF-8 bytes: the same on every machine and Python process (no hash seed).
    assert content_hash("hello") == 0x7D34E501A8EDB6A7
    assert content_hash("hello") != content_hash("hello!")


def test_int_table_survives_growth_and_keeps_first_writer():
    from pocketlm.data.dedup import IntTable

    rng = np.random.default_rng(0)
    keys = np.unique(rng.integers(0, 2**63, size=20_000, dtype=np.uint64)).tolist()
    table = IntTable(capacity=16)
    for i, k in enumerate(keys):
        assert table.put_if_absent(k, i)
    assert len(table) == len(keys)
    assert all(table.get(k) == i for i, k in enumerate(keys))
    assert not table.put_if_absent(keys[5], 999) and table.get(keys[5]) == 5
    assert table.get(12345) is None


def test_lsh_memory_per_document_is_small():
    r = random.Random(11)
    hasher = MinHasher()
    index = LSHIndex(threshold=0.8, num_perm=hasher.num_perm)
    for _ in range(3000):
        index.add_if_new(
            hasher.signature(word_arrays(" ".join(r.choice(WORDS) for _ in range(50))))
        )
    assert index.nbytes / len(index) < 1500
