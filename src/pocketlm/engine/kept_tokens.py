"""The tokens the sampling filters keep (top-k, then top-p, then min-p), found without sorting or
normalising the whole vocabulary.

A 151,936-token vocabulary (Qwen) made the full-vocabulary filters of `sampling.py` cost more than
a decode step: nucleus sampling sorted every probability (21 ms a token, against ~10 ms for an
int4 Qwen2.5-0.5B step). Here top-k takes its candidates with one partition, top-p sorts only the
most likely tokens (a partition finds them; the candidate set grows until it holds the nucleus),
and min-p and the final draw work on the kept ids alone. The kept set is the one the
full-vocabulary filters keep (the same float32 probabilities, the same float64 running sums,
ties to the lower id); the draw's probabilities can differ from a full-vocabulary softmax in the
last bits of float64 (a shorter sum), so a seeded draw matches the full path except when its
uniform number falls within that rounding of a boundary.
"""

from __future__ import annotations

import numpy as np

FIRST_NUCLEUS_CANDIDATES = 64  # grown 8x at a time until the nucleus fits


def softmax64(logits: np.ndarray) -> np.ndarray:
    """Float64 probabilities (..., V) of float logits, computed in float64; -inf gets 0."""
    x = logits.astype(np.float64)
    exp = np.exp(x - x.max(axis=-1, keepdims=True))  # (..., V), max 1
    return exp / exp.sum(axis=-1, keepdims=True)


def top_k_ids(row: np.ndarray, k: int) -> np.ndarray:
    """Ascending ids of the k highest logits of row (V,), ties at the k-th value to the lower ids."""
    vocab = row.shape[0]
    kth = np.partition(row, vocab - k)[vocab - k]
    above = np.flatnonzero(row > kth)  # fewer than k
    ties = np.flatnonzero(row == kth)[: k - above.shape[0]]
    return np.sort(np.concatenate([above, ties]))


def nucleus_positions(probs32: np.ndarray, p: float) -> np.ndarray:
    """Positions (ascending) into probs32 (n,) of the smallest most-likely set with mass >= p: a
    token stays while the mass of the tokens sorted before it (descending, ties by position) is
    below p, the first always stays. Sorts only a candidate set that provably holds it."""
    n = probs32.shape[0]
    m = min(FIRST_NUCLEUS_CANDIDATES, n)
    while True:
        if m >= n:
            cand = np.arange(n)
        else:  # every token at least as likely as the m-th: ties all in
            cand = np.flatnonzero(probs32 >= np.partition(probs32, n - m)[n - m])
        order = np.argsort(-probs32[cand], kind="stable")  # descending, ties by position
        sorted_probs = probs32[cand][order]
        cumulative = np.cumsum(sorted_probs, dtype=np.float64).astype(np.float32)
        keep = (cumulative - sorted_probs) < np.float32(p)
        keep[0] = True
        # tokens outside `cand` sort after all of it: the first of them has mass before it equal
        # to the whole candidate mass, so the nucleus is inside once that reaches p
        if cand.shape[0] == n or cumulative[-1] >= np.float32(p):
            return np.sort(cand[order[keep]])
        m *= 8


def kept_ids(row: np.ndarray, top_k: int, top_p: float, min_p: float) -> np.ndarray | None:
    """Ascending ids of row (V,) (float32 logits after temperature) that top-k, top-p and min-p
    keep, in that order; None when no filter is on (every token stays)."""
    vocab = row.shape[0]
    ids: np.ndarray | None = None
    if 0 < top_k < vocab:
        ids = top_k_ids(row, top_k)
    if top_p < 1.0:
        if ids is None:
            probs32 = softmax64(row).astype(np.float32)
            ids = nucleus_positions(probs32, top_p)
        else:
            ids = ids[nucleus_positions(softmax64(row[ids]).astype(np.float32), top_p)]
    if min_p > 0.0:
        values = row if ids is None else row[ids]
        probs32 = softmax64(values).astype(np.float32)
        keep = np.flatnonzero(probs32 >= np.float32(min_p) * probs32.max())
        ids = keep if ids is None else ids[keep]
    return ids


def draw_from(row: np.ndarray, ids: np.ndarray | None, u: float) -> int:
    """The id drawn from softmax(row[ids]) (ids None: the whole row) by the uniform number u in
    [0, 1), as the full-vocabulary draw (inverse CDF in id order)."""
    probs = softmax64(row if ids is None else row[ids])  # (n,)
    if not np.isfinite(probs).all():
        raise ValueError("the logits give no valid probability distribution (NaN or inf)")
    cumulative = np.cumsum(probs)
    drawn = int((cumulative <= u * cumulative[-1]).sum())
    last_possible = probs.shape[0] - 1 - int((probs[::-1] > 0).argmax())
    drawn = min(drawn, last_possible)
    return drawn if ids is None else int(ids[drawn])
