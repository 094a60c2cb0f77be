"""The generation engine: stop tokens and strings, lengths, UTF-8 streaming, seeds and greedy."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence

import numpy as np
import pytest
import torch

from pocketlm.common.errors import InputError, PocketLMError
from pocketlm.engine.backend import Backend
from pocketlm.engine.generation import GenerationEngine, held_back_length
from pocketlm.engine.sampling import SamplingParams
from pocketlm.engine.torch_backend import TorchBackend
from pocketlm.model.config import ModelConfig
from pocketlm.model.transformer import build_model
from pocketlm.tokenizer.tokenizer import Tokenizer

GREEDY = SamplingParams(temperature=0.0, max_new_tokens=200)


@pytest.fixture(scope="module")
def tok(synthetic_pipeline) -> Tokenizer:
    return Tokenizer.load(synthetic_pipeline["tokenizer"])


class ScriptedBackend:
    """A one-slot Backend (no model) whose logits make greedy decoding emit a fixed script."""

    name = "scripted"
    slots = 1
    prefill_chunk = None

    def __init__(
        self,
        script: Sequence[int],
        vocab_size: int = 512,
        context: int = 256,
        fill: float = 0.0,
    ) -> None:
        self.script, self._vocab, self._context = list(script), vocab_size, context
        self.fill = fill  # the logit of every token off the script
        self._position, self._emitted = 0, 0
        self.prefills: list[list[int]] = []

    context_length = property(lambda self: self._context)
    vocab_size = property(lambda self: self._vocab)
    device = property(lambda self: "cpu")

    def position(self, slot: int) -> int:
        return self._position

    def release(self, slot: int) -> None:
        self._position, self._emitted = 0, 0

    def truncate(self, slot: int, position: int) -> None:
        raise NotImplementedError("the engine never truncates without a draft model")

    def extend(self, slot: int, token_ids: Sequence[int]) -> np.ndarray:
        raise NotImplementedError("the engine never extends without a draft model")

    def _next(self) -> np.ndarray:
        logits = np.full(self._vocab, self.fill, dtype=np.float32)
        logits[self.script[self._emitted % len(self.script)]] = 10.0
        self._emitted += 1
        return logits

    def prefill(self, slot: int, token_ids: Sequence[int]) -> np.ndarray:
        assert slot == 0
        self.prefills.append(list(token_ids))
        self._position += len(token_ids)
        assert self._position <= self._context
        return self._next()

    def decode(self, slots: Sequence[int], token_ids: Sequence[int]) -> np.ndarray:
        assert list(slots) == [0] and len(token_ids) == 1
        self._position += 1
        assert self._position <= self._context
        return self._next()[None]  # (1, V)


def scripted(tok: Tokenizer, script: Sequence[int], **kw) -> GenerationEngine:
    backend = ScriptedBackend(script, **kw)
    assert isinstance(backend, Backend)
    return GenerationEngine(backend, tok)


def stream(engine: GenerationEngine, prompt="Once", params=GREEDY):
    chunks = list(engine.generate(prompt, params))
    assert all(c.finish_reason is None and c.timings is None for c in chunks[:-1])
    assert chunks[-1].finish_reason is not None and chunks[-1].timings is not None
    return chunks, "".join(c.text for c in chunks)


def test_held_back_length():
    assert held_back_length("the ca", ["cat"]) == 2
    assert held_back_length("the c", ["xyz", "cat"]) == 1
    assert held_back_length("the", ["cat"]) == 0
    assert held_back_length("ab", ["abc", "bcd"]) == 2
    assert held_back_length("", ["abc"]) == 0


def test_stop_string_ends_text_right_before_it(tok):
    engine = scripted(tok, tok.encode("the cat sat on the mat and more words here"))
    params = SamplingParams(temperature=0, max_new_tokens=200, stop=("on the",))
    chunks, text = stream(engine, params=params)
    assert text == "the cat sat "
    assert chunks[-1].finish_reason == "stop"
    ids = [i for c in chunks for i in c.token_ids]
    assert "on the" in tok.decode(ids)  # tokens run until the stop string was complete
    emitted = ""
    for c in chunks:  # streaming never shows text past the cut
        emitted += c.text
        assert text.startswith(emitted)


def test_earliest_of_several_stops_wins_and_false_alarms_are_released(tok):
    words = "the cat sat on the mat"
    engine = scripted(tok, tok.encode(words))
    n = len(tok.encode(words))
    params = SamplingParams(temperature=0, max_new_tokens=n, stop=("mat", "cat dog", "sat"))
    _, text = stream(engine, params=params)
    assert text == "the cat "
    params = SamplingParams(temperature=0, max_new_tokens=n, stop=("cat dog", "the dog"))
    chunks, text = stream(scripted(tok, tok.encode(words)), params=params)
    assert text == words and chunks[-1].finish_reason == "length"


def test_stop_string_at_the_very_start(tok):
    engine = scripted(tok, tok.encode("### rest"))
    _, text = stream(engine, params=SamplingParams(temperature=0, stop=("###",)))
    assert text == ""


def test_eos_and_end_of_turn_stop(tok):
    for stop_id in (tok.eos_id, tok.end_of_turn_id):
        script = [*tok.encode("the dog"), stop_id, *tok.encode(" never shown")]
        chunks, text = stream(scripted(tok, script))
        assert text == "the dog"
        assert chunks[-1].finish_reason == "stop" and chunks[-1].token_ids == (stop_id,)
        assert len(chunks) == len(tok.encode("the dog")) + 1


def test_ignore_eos_generates_past_the_stop_tokens_to_the_length(tok):
    script = [*tok.encode("the dog"), tok.eos_id, *tok.encode(" ran far away today")]
    params = SamplingParams(temperature=0, max_new_tokens=len(script) - 1, ignore_eos=True)
    chunks, _ = stream(scripted(tok, script), params=params)
    assert [t for c in chunks for t in c.token_ids] == script[:-1]
    assert chunks[-1].finish_reason == "length"


def test_max_new_tokens_gives_length(tok):
    engine = scripted(tok, tok.encode("the big red dog ran to the park"))
    chunks, _ = stream(engine, params=SamplingParams(temperature=0, max_new_tokens=3))
    assert len(chunks) == 3 and chunks[-1].finish_reason == "length"
    assert chunks[-1].timings.generated_tokens == 3


def test_full_context_gives_length(tok):
    engine = scripted(tok, tok.encode("the big red dog ran to the park") * 5, context=10)
    prompt = [tok.bos_id, *tok.encode("the cat sat")]
    result = engine.complete(prompt, GREEDY)
    assert result.finish_reason == "length"
    # The last token never needs a slot in the context: 10 - len(prompt) + 1 tokens fit.
    assert len(result.token_ids) == 10 - len(prompt) + 1 and result.prompt_tokens == len(prompt)


def test_multibyte_text_streams_whole_characters(tok):
    words = "日本語 🤖 ok 👍🏽 done"
    script = tok.encode(words)
    assert len(script) > len(words)  # characters really are split across tokens
    chunks, text = stream(
        scripted(tok, script), params=SamplingParams(temperature=0, max_new_tokens=len(script))
    )
    assert text == words
    assert all("\ufffd" not in c.text for c in chunks)
    _, text = stream(scripted(tok, script), params=SamplingParams(temperature=0, stop=("🤖",)))
    assert text == "日本語 "


def test_prompt_checks(tok):
    engine = scripted(tok, [5], context=16)
    with pytest.raises(
        InputError, match=r"the prompt has 3\d tokens but the model's context is 16"
    ):
        engine.generate("the cat " * 15, GREEDY)  # raised by the call itself, before iterating
    with pytest.raises(InputError, match="empty"):
        engine.generate("", GREEDY, add_bos=False)
    with pytest.raises(InputError, match="outside the vocabulary"):
        engine.generate([1, 600], GREEDY)


def test_bos_added_once(tok):
    backend = ScriptedBackend([5])
    engine = GenerationEngine(backend, tok)
    engine.complete("hi", SamplingParams(temperature=0, max_new_tokens=1))
    engine.complete(
        tok.render_chat([{"role": "user", "content": "hi"}]),
        SamplingParams(temperature=0, max_new_tokens=1),
    )
    engine.complete("hi", SamplingParams(temperature=0, max_new_tokens=1), add_bos=False)
    engine.complete([7, 8], SamplingParams(temperature=0, max_new_tokens=1))
    first, chat, plain, ids = backend.prefills
    assert first == [tok.bos_id, *tok.encode("hi")]
    assert chat[0] == tok.bos_id and chat[1] != tok.bos_id
    assert plain == tok.encode("hi") and ids == [7, 8]


def test_a_new_generation_supersedes_an_unfinished_one(tok):
    engine = scripted(tok, tok.encode("the cat sat on the mat"))
    old = engine.generate("a", GREEDY)
    next(old)
    engine.complete("b", SamplingParams(temperature=0, max_new_tokens=2))
    with pytest.raises(PocketLMError, match="superseded"):
        next(old)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_invalid_logits_suggest_fp32(tok, bad, temperature):
    engine = scripted(tok, tok.encode("the cat"), fill=bad)
    params = SamplingParams(temperature=temperature, max_new_tokens=4, seed=0)
    with pytest.raises(PocketLMError, match="--precision fp32"):
        engine.complete("hi", params)


def test_masked_tokens_are_fine_and_the_engine_names_its_backend(tok):
    engine = scripted(tok, tok.encode("the cat"), fill=-np.inf)  # only the script is possible
    result = engine.complete("hi", SamplingParams(temperature=1.0, max_new_tokens=2, seed=0))
    assert result.token_ids == tok.encode("the cat")[:2]
    assert engine.name == "scripted"


def test_engine_and_sampling_import_without_torch():
    code = (
        "import sys\n"
        "import pocketlm.engine.generation, pocketlm.engine.sampling, pocketlm.engine.backend\n"
        "import pocketlm.engine.load, pocketlm.engine.speculative, pocketlm.engine.scheduler\n"
        "import pocketlm.engine.chat_session, pocketlm.engine.bench, pocketlm.engine.native_backend\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert proc.stdout.split() == ["NO-TORCH"], proc.stdout + proc.stderr


# --- a real (random) model through TorchBackend -------------------------------------------


@pytest.fixture(scope="module")
def model_engine(tok):
    config = ModelConfig(
        vocab_size=tok.vocab_size,
        dim=32,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        max_seq_len=64,
        init_std=0.1,
    )
    model = build_model(config, seed=3)
    engine = GenerationEngine(TorchBackend(model), tok)
    assert engine.name == "torch"
    return model, engine


def test_same_seed_same_text_and_different_seeds_differ(model_engine):
    _, engine = model_engine
    params = SamplingParams(temperature=1.0, max_new_tokens=16, seed=11)
    a = engine.complete("the little dog", params)
    b = engine.complete("the little dog", params)
    assert a.text == b.text and a.token_ids == b.token_ids
    for seed in (12, 13, 14):
        other = engine.complete(
            "the little dog", SamplingParams(temperature=1.0, max_new_tokens=16, seed=seed)
        )
        assert other.token_ids != a.token_ids


def test_greedy_equals_iterated_argmax_of_full_forward(model_engine, tok):
    model, engine = model_engine
    result = engine.complete("the cat", SamplingParams(temperature=0, max_new_tokens=20))
    seq = [tok.bos_id, *tok.encode("the cat")]
    expected = []
    with torch.inference_mode():
        for _ in range(len(result.token_ids)):
            nxt = int(model(torch.tensor([seq]))[0, -1].argmax())
            expected.append(nxt)
            seq.append(nxt)
    assert result.token_ids == expected
    if result.finish_reason == "stop":
        assert result.token_ids[-1] in (tok.eos_id, tok.end_of_turn_id)
    else:
        assert len(result.token_ids) == 20
    again = engine.complete("the cat", SamplingParams(temperature=0, max_new_tokens=20, seed=99))
    assert (again.text, again.token_ids) == (result.text, result.token_ids)


def test_result_and_timings(model_engine, tok):
    _, engine = model_engine
    result = engine.complete(
        "the sun", SamplingParams(max_new_tokens=6, seed=0, repetition_penalty=1.3, top_p=0.9)
    )
    t = result.timings
    assert result.prompt_tokens == t.prompt_tokens == len(tok.encode("the sun")) + 1
    assert t.generated_tokens == len(result.token_ids) <= 6
    assert t.prefill_s > 0 and t.decode_s >= 0 and t.decode_tokens_per_s >= 0
    assert result.text == tok.decode(result.token_ids, skip_special=True)


def test_over_long_prompt_on_a_real_model(model_engine):
    _, engine = model_engine
    with pytest.raises(InputError, match="context is 64 tokens"):
        engine.complete("the cat sat on the mat " * 20, GREEDY)
