"""Log-likelihoods on the backend protocol equal a plain full forward's log-softmax sums (torch),
the native backend agrees, long pairs keep their last tokens as lm-eval does, and rolling windows
are lm-eval's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pocketlm.checkpoint.model_io import load_model, save_model
from pocketlm.engine.load import open_backend
from pocketlm.evals.loglikelihood import (
    encode_pairs,
    rolling_loglikelihood,
    rolling_windows,
    score_continuations,
    score_many,
)
from pocketlm.model.config import ModelConfig
from pocketlm.model.transformer import build_model

CONTEXT = 32


@pytest.fixture(scope="module")
def model_dir(synthetic_pipeline, tmp_path_factory):
    config = ModelConfig(
        vocab_size=512, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128,
        max_seq_len=CONTEXT, init_std=0.1,
    )  # fmt: skip
    out = tmp_path_factory.mktemp("ll") / "model"
    return save_model(out, build_model(config, seed=3), synthetic_pipeline["tokenizer"])


def _full_forward_ll(model, context: list[int], cont: list[int]) -> float:
    """Sum of log_softmax over the continuation, from one forward of context + continuation."""
    seq = (context + cont)[-(CONTEXT + 1) :]
    with torch.inference_mode():
        logits = model(torch.tensor([seq[:-1]]))[0].double()  # (T, V)
    logp = torch.log_softmax(logits, dim=-1)[-len(cont) :]  # (n, V)
    return float(logp[torch.arange(len(cont)), torch.tensor(cont)].sum())


def test_backend_loglikelihood_equals_a_full_forward(model_dir):
    loaded = load_model(model_dir)
    backend, tokenizer = open_backend(model_dir, backend="torch", device="cpu", precision="fp32")
    context, conts = encode_pairs(
        tokenizer, "The little dog said", [" hello", " the big red ball", " sun"]
    )
    assert context[0] == tokenizer.bos_id and all(conts)
    scored = score_continuations(backend, context, conts)
    for cont, s in zip(conts, scored, strict=True):
        assert s.tokens == len(cont)
        assert s.loglikelihood == pytest.approx(
            _full_forward_ll(loaded.model, context, cont), abs=1e-4
        )
    # a pair longer than the context keeps its last CONTEXT + 1 tokens, as lm-eval does
    long_context = context + conts[1] * 12
    far = score_continuations(backend, long_context, conts)
    for cont, s in zip(conts, far, strict=True):
        ref = _full_forward_ll(loaded.model, long_context, cont)
        assert s.loglikelihood == pytest.approx(ref, abs=1e-4)


def test_greedy_flag_is_the_argmax_continuation(model_dir):
    backend, tokenizer = open_backend(model_dir, backend="torch", device="cpu", precision="fp32")
    context, _ = encode_pairs(tokenizer, "The cat", [" x"])
    argmax = int(backend.prefill(0, context).argmax())
    scored = score_continuations(backend, context, [[argmax], [(argmax + 1) % 512]])
    assert scored[0].greedy and not scored[1].greedy


def test_native_backend_scores_as_torch(model_dir):
    pytest.importorskip("pocketlm.engine._native", reason="native extension not built")
    torch_backend, tokenizer = open_backend(model_dir, backend="torch", device="cpu")
    native, _ = open_backend(model_dir, backend="native", threads=1)
    context, conts = encode_pairs(tokenizer, "A happy bird", [" sang", " ran to the park"])
    a = score_continuations(torch_backend, context, conts)
    b = score_continuations(native, context, conts)
    for x, y in zip(a, b, strict=True):
        # the native fp32 kernels agree with PyTorch to 2e-4 x max|logit| per logit
        assert x.loglikelihood == pytest.approx(y.loglikelihood, rel=1e-3)


def test_encode_pairs_moves_trailing_space_to_the_continuation(model_dir):
    _, tokenizer = open_backend(model_dir, backend="torch", device="cpu")
    a = encode_pairs(tokenizer, "The dog ", ["ran"])
    b = encode_pairs(tokenizer, "The dog", [" ran"])
    assert a == b


def test_rolling_windows_are_lm_evals():
    utils = pytest.importorskip("lm_eval.utils")
    for n in (1, 5, 8, 9, 17, 30):
        ids = list(range(100, 100 + n))
        ours = list(rolling_windows(ids, 7, 8))
        theirs = [
            utils.make_disjoint_window(w)
            for w in utils.get_rolling_token_windows(
                ids, prefix_token=7, max_seq_len=8, context_len=1
            )
        ]
        assert ours == [tuple(map(list, w)) for w in theirs]
        assert [t for _, pred in ours for t in pred] == ids  # every token predicted once


def test_rolling_loglikelihood_is_the_windowed_sum(model_dir):
    loaded = load_model(model_dir)
    backend, tokenizer = open_backend(model_dir, backend="torch", device="cpu", precision="fp32")
    ids = tokenizer.encode("The happy dog and the little cat play in the park. " * 4)
    assert len(ids) > CONTEXT  # more than one window
    expected = sum(
        _full_forward_ll(loaded.model, ctx, pred)
        for ctx, pred in rolling_windows(ids, tokenizer.bos_id, CONTEXT)
    )
    assert rolling_loglikelihood(backend, ids, tokenizer.bos_id) == pytest.approx(
        expected, abs=1e-3
    )
    first = rolling_loglikelihood(backend, ids[:CONTEXT], tokenizer.bos_id)
    assert first == pytest.approx(
        _full_forward_ll(loaded.model, [tokenizer.bos_id], ids[:CONTEXT]), abs=1e-4
    )
    assert np.isfinite(first)


@pytest.mark.parametrize("kind", ["torch", "native"])
def test_many_requests_in_slots_score_as_one_at_a_time(model_dir, kind):
    if kind == "native":
        pytest.importorskip("pocketlm.engine._native", reason="native extension not built")
    batched, tok = open_backend(model_dir, slots=3, backend=kind, device="cpu", precision="fp32")
    alone, _ = open_backend(model_dir, backend=kind, device="cpu", precision="fp32")
    texts = ["The dog", "A happy little bird", "Mom said", "The sun and the moon", "Cake"]
    requests = [
        encode_pairs(tok, t, [" ran", " to the big park", " x"][: 2 + i % 2])
        for i, t in enumerate(texts)
    ]
    requests.append((requests[0][0] * 20, requests[0][1]))  # too long for the context: alone
    got = score_many(batched, requests)
    want = [score_continuations(alone, ctx, conts) for ctx, conts in requests]
    assert [len(g) for g in got] == [len(w) for w in want]
    for g, w in zip(got, want, strict=True):
        for a, b in zip(g, w, strict=True):
            assert a.tokens == b.tokens and a.greedy == b.greedy
            assert a.loglikelihood == pytest.approx(b.loglikelihood, abs=1e-4)
    assert all(batched.position(s) == 0 for s in range(3))  # slots released


@pytest.mark.parametrize("kind", ["torch", "native"])
def test_extend_many_is_each_extend(model_dir, kind):
    if kind == "native":
        pytest.importorskip("pocketlm.engine._native", reason="native extension not built")
    settings = dict(slots=4, backend=kind, device="cpu", precision="fp32", threads=1)
    many, _ = open_backend(model_dir, **settings)
    one, _ = open_backend(model_dir, **settings)
    for backend in (many, one):
        backend.prefill(0, [1, 5, 9])
        backend.prefill(1, [1, 3, 3, 7])  # an idle row inside the span
        backend.prefill(3, [1, 7])
    rows = many.extend_many([3, 0, 2], [[4, 4, 8], [6], [1, 2]])
    want = [one.extend(3, [4, 4, 8]), one.extend(0, [6]), one.extend(2, [1, 2])]
    for r, w in zip(rows, want, strict=True):
        np.testing.assert_allclose(r, w, atol=1e-5)
    assert [many.position(s) for s in range(4)] == [4, 4, 2, 5]
    after = many.extend_many([1], [[2]])[0]  # the idle row's context is intact
    np.testing.assert_allclose(after, one.extend(1, [2]), atol=1e-5)
    lasts = many.extend_many([0, 2], [[3, 3], [5]], every=False)  # (V,) after each last token
    np.testing.assert_allclose(lasts[0], one.prefill(0, [3, 3]), atol=1e-5)
    np.testing.assert_allclose(lasts[1], one.prefill(2, [5]), atol=1e-5)
    assert [many.position(s) for s in range(4)] == [one.position(s) for s in range(4)]


class _NoRewind:
    """A backend whose cache cannot rewind (as a sliding-window cache past its spare tokens):
    every truncate below the current position raises, as NativeBackend's does there."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def truncate(self, slot, position):
        from pocketlm.common.errors import InputError

        if position < self.inner.position(slot):
            raise InputError("cannot rewind this far")
        self.inner.truncate(slot, position)


def test_a_backend_that_cannot_rewind_scores_the_same(model_dir):
    """Both paths prefill the context again instead of failing when truncate cannot rewind."""
    plain, tok = open_backend(model_dir, slots=3, backend="torch", device="cpu", precision="fp32")
    stiff, _ = open_backend(model_dir, slots=3, backend="torch", device="cpu", precision="fp32")
    requests = [encode_pairs(tok, t, [" ran far", " to the big park"]) for t in ("The dog", "Mom")]
    want = score_many(plain, requests)
    for got in (
        score_many(_NoRewind(stiff), requests),  # batched: extend_many over the slots
        [score_continuations(_NoRewind(stiff), ctx, conts) for ctx, conts in requests],
    ):
        for g, w in zip(got, want, strict=True):
            assert [a.loglikelihood for a in g] == pytest.approx(
                [b.loglikelihood for b in w], abs=1e-5
            )
