"""A teacher's stored sparse targets (`pocketlm synth`: its top_logprobs per reply token, in its
own text form, see data/synth/replies.py) as a student's per-token targets, by byte spans.

The teacher's tokens of a reply concatenate to the reply's bytes, each token a span of them; so
do the student's tokens of the same reply in its chat template. Where a student token spans
exactly the bytes of a teacher token, both predict the same text after the same text, so the
teacher's distribution at that token is a target for the student's: its alternatives (the top
list and the token it chose) are mapped to student ids through the student vocabulary's bytes
(alternatives the vocabulary lacks are dropped: its probability is left to the "rest" outcome of
train/distill_loss.sparse_forward_kl). Every other student token (another split, the end-of-turn
token, the part of a reply after the teacher's tokens stop spelling its text) has no target:
`valid` is False there.

Arrays are per token of the example: row i holds the target for predicting token i (row 0 is
never used: nothing predicts the first token); a log-probability of -inf is no entry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pocketlm.data.sft_tokens import SFTTokens
from pocketlm.tokenizer.token_bytes import VocabBytes, vocab_bytes
from pocketlm.tokenizer.tokenizer import Tokenizer

NO_ENTRY = float("-inf")


@dataclass(frozen=True)
class SparseTargets:
    """Per token: the teacher's alternatives as student ids (n, k) int32, their log-probabilities
    (n, k) float32 (-inf: no entry), and whether the token has a target (n,) bool."""

    ids: np.ndarray
    logprobs: np.ndarray
    valid: np.ndarray

    @property
    def width(self) -> int:
        """k, the entries per token."""
        return int(self.ids.shape[1])


def no_targets(n: int, k: int = 1) -> SparseTargets:
    """n tokens without a target, k entries wide."""
    return SparseTargets(
        np.zeros((n, k), dtype=np.int32),
        np.full((n, k), NO_ENTRY, dtype=np.float32),
        np.zeros(n, dtype=bool),
    )


def teacher_token_bytes(entry: Mapping[str, Any]) -> bytes:
    """The exact bytes of a stored teacher token {"token", "bytes"?}."""
    raw = entry.get("bytes")
    return bytes(raw) if raw is not None else entry["token"].encode("utf-8", "surrogatepass")


def _entries(stored: Mapping[str, Any], index: Mapping[bytes, int]) -> list[tuple[float, int]]:
    """(log-prob, student id) of a stored position's alternatives and chosen token, most likely
    first: once per token, without nulls (probability 0) and tokens the student lacks."""
    seen: set[bytes] = set()
    out = []
    alternatives = [(_alt_bytes(a), a[1]) for a in stored.get("top") or []]
    for raw, lp in [*alternatives, (teacher_token_bytes(stored), stored.get("logprob"))]:
        if raw in seen:
            continue
        seen.add(raw)
        student_id = index.get(raw)
        if lp is not None and student_id is not None:
            out.append((float(lp), student_id))
    return sorted(out, key=lambda e: -e[0])


def _alt_bytes(alternative: Sequence[Any]) -> bytes:
    """An alternative [text, lp(, bytes)] as bytes."""
    if len(alternative) > 2:
        return bytes(alternative[2])
    return alternative[0].encode("utf-8", "surrogatepass")


def _common_prefix(a: bytes, b: bytes) -> int:
    """The number of leading bytes a and b share."""
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def _locate(reply: bytes, spelled: bytes) -> int | None:
    """Where the reply starts in the bytes the student's tokens spell (they may add a merged
    prompt byte before it and the end-of-turn token after it, or spell only its beginning when
    the example was truncated); None: they do not spell it."""
    at = spelled.find(reply)
    if at >= 0:
        return at
    return 0 if spelled and reply.startswith(spelled) else None


def align_reply(
    reply: str,
    stored: Sequence[Mapping[str, Any]],
    student_ids: Sequence[int],
    vocab: VocabBytes,
    k: int | None = None,
) -> SparseTargets:
    """Targets (len(student_ids) rows) for the student tokens spelling `reply`: a token gets
    the stored teacher position whose byte span it equals, its at most k (None: all) most
    likely entries mapped to student ids. Only teacher tokens within the bytes the teacher's
    tokens and the reply agree on from the start count: where they part (a character the
    teacher wrote half of, shown as U+FFFD in the reply's text; another text) the teacher's
    context is no longer the student's."""
    reply_bytes = reply.encode("utf-8", "surrogatepass")
    teacher = [teacher_token_bytes(t) for t in stored]
    agree = _common_prefix(b"".join(teacher), reply_bytes)
    spans: dict[tuple[int, int], int] = {}  # teacher (start, end) in the reply -> position
    at = 0
    for j, raw in enumerate(teacher):
        if at + len(raw) > agree:
            break
        spans[(at, at + len(raw))] = j
        at += len(raw)
    pieces = [vocab.table[i] for i in student_ids]
    offset = _locate(reply_bytes, b"".join(pieces)) if spans else None
    if offset is None:
        return no_targets(len(pieces), max(k or 1, 1))
    matched: list[tuple[int, list[tuple[float, int]]]] = []
    start = -offset
    for i, piece in enumerate(pieces):
        j = spans.get((start, start + len(piece))) if piece else None
        start += len(piece)
        if j is not None:
            entries = _entries(stored[j], vocab.index)[:k]
            if entries:
                matched.append((i, entries))
    width = k if k is not None else max((len(e) for _, e in matched), default=1)
    out = no_targets(len(pieces), max(width, 1))
    for i, entries in matched:
        out.logprobs[i, : len(entries)] = [lp for lp, _ in entries]
        out.ids[i, : len(entries)] = [t for _, t in entries]
        out.valid[i] = True
    return out


def reply_targets(
    reply: str, stored: Sequence[Mapping[str, Any]], tokenizer: Tokenizer, k: int | None = None
) -> tuple[list[int], SparseTargets]:
    """The reply tokenized alone by `tokenizer` (as plain text) and its aligned targets."""
    ids = tokenizer.encode(reply, parse_special=False)
    return ids, align_reply(reply, stored, ids, vocab_bytes(tokenizer), k)


def record_targets(
    tokens: SFTTokens,
    messages: Sequence[Mapping[str, str]],
    stored: Sequence[Mapping[str, Any]] | None,
    vocab: VocabBytes,
    k: int | None = None,
) -> SparseTargets | None:
    """Targets (len(tokens.ids) rows) of a chat example whose last message is the assistant
    reply the teacher wrote with `stored` targets (None: the record has none): the reply is the
    loss mask's last run of tokens when each assistant turn has its run."""
    if not stored:
        return None
    n = len(tokens.ids)
    runs = _mask_runs(tokens.loss_mask)
    replies = [m for m in messages if m["role"] == "assistant"]
    if not messages or messages[-1]["role"] != "assistant" or len(runs) != len(replies):
        return no_targets(n)
    start, end = runs[-1]
    part = align_reply(messages[-1]["content"], stored, tokens.ids[start:end], vocab, k)
    out = no_targets(n, part.width)
    out.ids[start:end], out.logprobs[start:end], out.valid[start:end] = (
        part.ids, part.logprobs, part.valid,
    )  # fmt: skip
    return out


def _mask_runs(mask: Sequence[bool]) -> list[tuple[int, int]]:
    """(start, end) of each maximal run of True."""
    runs, start = [], None
    for i, on in enumerate([*mask, False]):
        if on and start is None:
            start = i
        elif not on and start is not None:
            runs.append((start, i))
            start = None
    return runs


def pack_targets(
    examples: Sequence[SFTTokens],
    targets: Sequence[SparseTargets | None],
    rows: Sequence[Sequence[int]],
    ctx: int,
) -> dict[str, np.ndarray]:
    """The examples' targets laid out as data/packing.pack_rows lays out their tokens for the
    same `rows` plan: teacher_ids, teacher_logprobs (rows, ctx, k) and teacher_valid (rows, ctx),
    position p of a row holding the target of the token after it; k the widest example's."""
    k = max((t.width for t in targets if t is not None), default=1)
    ids = np.zeros((len(rows), ctx, k), dtype=np.int32)
    logprobs = np.full((len(rows), ctx, k), NO_ENTRY, dtype=np.float32)
    valid = np.zeros((len(rows), ctx), dtype=bool)
    for r, members in enumerate(rows):
        at = 0
        for i in members:
            n = len(examples[i].ids) - 1
            t = targets[i]
            if t is not None:
                ids[r, at : at + n, : t.width] = t.ids[1:]
                logprobs[r, at : at + n, : t.width] = t.logprobs[1:]
                valid[r, at : at + n] = t.valid[1:] & np.asarray(examples[i].loss_mask[1:])
            at += n
    return {"teacher_ids": ids, "teacher_logprobs": logprobs, "teacher_valid": valid}
