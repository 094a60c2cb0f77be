"""Speculative decoding keeps the target's output: at temperature 0 token for token."""

from __future__ import annotations

import numpy as np
import pytest

from pocketlm.checkpoint.model_io import save_model
from pocketlm.common.errors import InputError
from pocketlm.engine.load import open_backend
from pocketlm.engine.sampling import SamplingParams
from pocketlm.engine.speculative import SpeculativeDecoder, check_draft
from pocketlm.model.config import ModelConfig
from pocketlm.model.transformer import build_model


@pytest.fixture(scope="module")
def pair(synthetic_pipeline, tmp_path_factory):
    base = tmp_path_factory.mktemp("spec")
    target = save_model(
        base / "target",
        build_model(
            ModelConfig(
                vocab_size=512,
                dim=64,
                n_layers=3,
                n_heads=4,
                n_kv_heads=2,
                ffn_dim=128,
                max_seq_len=128,
                init_std=0.1,
            ),
            seed=1,
        ),
        synthetic_pipeline["tokenizer"],
    )
    draft = save_model(
        base / "draft",
        build_model(
            ModelConfig(
                vocab_size=512,
                dim=32,
                n_layers=1,
                n_heads=2,
                n_kv_heads=1,
                ffn_dim=64,
                max_seq_len=128,
                init_std=0.1,
            ),
            seed=2,
        ),
        synthetic_pipeline["tokenizer"],
    )
    return target, draft


def _greedy(backend, prompt, n):
    backend.release(0)
    out, logits = [], backend.prefill(0, prompt)
    for _ in range(n):
        out.append(int(np.argmax(logits)))
        logits = backend.decode([0], [out[-1]])[0]
    return out


def _backends(kind, path):
    if kind == "native":
        pytest.importorskip("pocketlm.engine._native")
    return open_backend(path, backend=kind, device="cpu", precision="fp32")[0]


@pytest.mark.parametrize("kind", ["torch", "native"])
@pytest.mark.parametrize("k", [1, 3, 6])
def test_greedy_speculation_equals_plain_greedy(pair, kind, k):
    target_dir, draft_dir = pair
    prompt = [1, 10, 20, 30, 40]
    expected = _greedy(_backends(kind, target_dir), prompt, 24)
    dec = SpeculativeDecoder(
        _backends(kind, target_dir), _backends(kind, draft_dir), SamplingParams(temperature=0), k=k
    )
    got = []
    for token in dec.tokens(prompt):
        got.append(token)
        if len(got) == 24:
            break
    assert got == expected
    assert 0.0 <= dec.acceptance_rate <= 1.0 and dec.proposed > 0


def test_a_draft_equal_to_the_target_is_always_accepted(pair):
    target_dir, _ = pair
    dec = SpeculativeDecoder(
        _backends("torch", target_dir),
        _backends("torch", target_dir),
        SamplingParams(temperature=0),
        k=4,
    )
    tokens = [t for _, t in zip(range(20), dec.tokens([1, 5, 6]))]
    assert len(tokens) == 20 and dec.acceptance_rate == 1.0


def test_sampled_speculation_keeps_the_target_distribution(pair):
    """The first sampled token's empirical distribution matches the target's (chi-square style bound)."""
    target_dir, draft_dir = pair
    params = SamplingParams(temperature=1.0, top_k=8)
    target, draft = _backends("torch", target_dir), _backends("torch", draft_dir)
    from pocketlm.engine.speculative import distribution

    prompt = [1, 7, 8]
    target.release(0)
    p = distribution(target.prefill(0, prompt), params, 512)
    counts = np.zeros(512)
    rng = np.random.default_rng(0)
    n = 400
    for _ in range(n):
        dec = SpeculativeDecoder(target, draft, params, k=2, rng=rng)
        counts[next(iter(dec.tokens(prompt)))] += 1
    support = p > 0
    assert counts[~support].sum() == 0
    assert np.abs(counts / n - p).max() < 0.08


def test_draft_with_another_tokenizer_is_refused(synthetic_pipeline, tmp_path):
    from pocketlm.tokenizer.tokenizer import Tokenizer
    from pocketlm.tokenizer.train import TokenizerConfig, train_tokenizer

    other = Tokenizer.load(
        train_tokenizer(
            synthetic_pipeline["corpus"], tmp_path / "t2", TokenizerConfig(vocab_size=300)
        )
    )
    with pytest.raises(InputError, match="needs the same tokenizer"):
        check_draft(Tokenizer.load(synthetic_pipeline["tokenizer"]), other)


@pytest.mark.parametrize("backend", ["torch", "native"])
def test_engine_with_a_draft_writes_the_same_text_at_temperature_zero(pair, backend):
    from pocketlm.engine.load import load_engine

    if backend == "native":
        pytest.importorskip("pocketlm.engine._native")
    target_dir, draft_dir = pair
    params = SamplingParams(temperature=0, max_new_tokens=30)
    plain = load_engine(target_dir, backend=backend).complete("the cat", params)
    engine = load_engine(target_dir, backend=backend, draft=draft_dir, draft_tokens=3)
    fast = engine.complete("the cat", params)
    assert fast.token_ids == plain.token_ids and fast.text == plain.text
    assert fast.finish_reason == plain.finish_reason
    assert fast.timings.generated_tokens == plain.timings.generated_tokens
    assert engine.last_acceptance is not None and 0.0 <= engine.last_acceptance <= 1.0


def test_engine_with_a_draft_stops_at_the_context_end(pair):
    from pocketlm.engine.load import load_engine

    target_dir, draft_dir = pair
    engine = load_engine(target_dir, backend="torch", draft=draft_dir, max_len=24)
    out = engine.complete(list(range(1, 21)), SamplingParams(temperature=0, max_new_tokens=100))
    assert out.finish_reason in {"length", "stop"} and len(out.token_ids) <= 24 - 20 + 1


def test_engine_with_a_draft_refuses_a_repetition_penalty(pair):
    from pocketlm.engine.load import load_engine

    target_dir, draft_dir = pair
    engine = load_engine(target_dir, backend="torch", draft=draft_dir)
    with pytest.raises(InputError, match="repetition penalty"):
        engine.generate("x", SamplingParams(repetition_penalty=1.2))


def test_generate_cli_with_a_draft(pair, capsys):
    from pocketlm.cli.main import main

    target_dir, draft_dir = pair
    args = ["generate", "--model", str(target_dir), "--prompt", "the", "--temperature", "0"]
    assert main([*args, "--max-new-tokens", "12"]) == 0
    plain = capsys.readouterr().out
    assert main([*args, "--max-new-tokens", "12", "--draft", str(draft_dir)]) == 0
    captured = capsys.readouterr()
    assert captured.out == plain and "draft accepted" in captured.err
