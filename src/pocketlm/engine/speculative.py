"""Speculative decoding: a small draft model proposes k tokens, the target model checks them all in
one forward, and the longest agreeing prefix is kept (Leviathan et al., 2023; Chen et al., 2023).

At temperature 0 the output is exactly the target's own greedy output. When sampling, drafts are
accepted with probability min(1, p/q) and a rejection resamples from max(0, p - q), which keeps the
target's distribution. Both backends must share the tokenizer; the decoder drives their slot 0:
`extend` scores every new position at once and `truncate` drops rejected cache entries.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from pocketlm.common.errors import InputError
from pocketlm.engine.backend import Backend
from pocketlm.engine.sampling import SamplingParams, process_logits


def check_draft(target_tokenizer: Any, draft_tokenizer: Any) -> None:
    """Refuse a draft model with another tokenizer (its token ids would mean other text)."""
    if target_tokenizer.fingerprint != draft_tokenizer.fingerprint:
        raise InputError(
            f"the draft model's tokenizer ({draft_tokenizer.fingerprint}) differs from the model's "
            f"({target_tokenizer.fingerprint}); speculative decoding needs the same tokenizer"
        )


def distribution(logits: np.ndarray, params: SamplingParams, vocab: int) -> np.ndarray:
    """Probabilities (vocab,) after temperature / top-k / top-p / min-p (one-hot argmax when greedy)."""
    scores = process_logits(np.asarray(logits[:vocab], dtype=np.float32), params)
    if params.greedy:
        out = np.zeros(vocab, dtype=np.float64)
        out[int(np.argmax(scores))] = 1.0
        return out
    z = scores.astype(np.float64) - np.max(scores)
    p = np.exp(z)
    return p / p.sum()


class SpeculativeDecoder:
    """Drives slot 0 of a target and a draft backend; yields accepted token ids in order."""

    def __init__(
        self,
        target: Backend,
        draft: Backend,
        params: SamplingParams,
        *,
        k: int = 4,
        rng: np.random.Generator | None = None,
    ) -> None:
        if k < 1:
            raise InputError(f"draft tokens per step must be >= 1, got {k}")
        self.target, self.draft, self.params, self.k = target, draft, params, k
        self.vocab = min(target.vocab_size, draft.vocab_size)
        self.rng = rng or np.random.default_rng(params.seed)
        self.proposed = 0
        self.accepted = 0

    def _draw(self, probs: np.ndarray) -> int:
        if self.params.greedy:
            return int(np.argmax(probs))
        return int(self.rng.choice(probs.shape[0], p=probs))

    def tokens(self, prompt_ids: Sequence[int]) -> Iterator[int]:
        """Token ids of the continuation, without end (the caller stops when it has enough).

        One target forward per round: the last sampled token (not yet in either cache) goes in
        front of the k proposals, so a single `extend` of k + 1 tokens both stores it and scores
        every proposal plus the bonus position.
        """
        self.target.release(0)
        self.draft.release(0)
        y = self._draw(distribution(self.target.prefill(0, prompt_ids), self.params, self.vocab))
        self.draft.prefill(0, prompt_ids)
        yield y
        committed = len(prompt_ids) + 1  # the sequence so far; the target holds all but y
        draft_feed = [y]  # tokens the draft has not seen yet
        while True:
            room = min(self.target.context_length, self.draft.context_length) - committed
            k = max(0, min(self.k, room))
            d_rows = self.draft.extend(0, draft_feed)  # (len(draft_feed), V)
            d_logits = d_rows[-1]
            proposals: list[int] = []
            q_dists: list[np.ndarray] = []
            for i in range(k):
                q = distribution(d_logits, self.params, self.vocab)
                x = self._draw(q)
                proposals.append(x)
                q_dists.append(q)
                if i < k - 1:
                    d_logits = self.draft.decode((0,), (x,))[0]
            rows = self.target.extend(0, [y, *proposals])  # (k + 1, V): row i scores proposal i
            n_ok = 0
            for i, x in enumerate(proposals):
                p = distribution(rows[i], self.params, self.vocab)
                ok = p[x] > 0 and (
                    self.params.greedy or self.rng.random() < min(1.0, p[x] / q_dists[i][x])
                )
                if not ok:
                    break
                n_ok += 1
            self.proposed += len(proposals)
            self.accepted += n_ok
            for x in proposals[:n_ok]:
                yield x
            p = distribution(rows[n_ok], self.params, self.vocab)
            if n_ok < len(proposals) and not self.params.greedy:
                # A rejection resamples from the target's excess mass over the draft's.
                residual = np.maximum(p - q_dists[n_ok], 0.0)
                p = residual / residual.sum() if residual.sum() > 0 else p
            y = self._draw(p)
            yield y
            # The target keeps the old y and the accepted proposals; the new y is pending.
            self.target.truncate(0, committed + n_ok)
            drafted = min(n_ok, k - 1) if k else 0  # accepted proposals the draft has consumed
            self.draft.truncate(0, committed + drafted)
            draft_feed = [*proposals[drafted:n_ok], y]
            committed += n_ok + 1

    @property
    def acceptance_rate(self) -> float:
        """Share of proposed draft tokens the target kept."""
        return self.accepted / self.proposed if self.proposed else 0.0
