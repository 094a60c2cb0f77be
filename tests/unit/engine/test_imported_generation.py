"""Generation with an imported model's tokenizer: every end id stops it, bos only where the model
uses one, chat in the model's own template, and sampling defaults from generation_config.json."""

from __future__ import annotations

import argparse
import json

import pytest

from pocketlm.engine.chat_session import ChatSession
from pocketlm.engine.generation import GenerationEngine
from pocketlm.engine.sampling import SamplingParams
from pocketlm.tokenizer.tokenizer import Tokenizer
from tests.unit.engine.test_generation import ScriptedBackend
from tests.unit.tokenizer.hf_folders import write_folder

GREEDY = SamplingParams(temperature=0.0, max_new_tokens=50)


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Tokenizer:
    """Llama 3.2's layout: bos added, eos <|eot_id|>, generation_config ends at three ids."""
    return Tokenizer.load(write_folder("llama3_2", tmp_path_factory.mktemp("llama"), "jinja"))


@pytest.fixture(scope="module")
def qwen(tmp_path_factory) -> Tokenizer:
    """Qwen2.5's layout: no bos, eos <|im_end|>, generation_config adds <|endoftext|>."""
    return Tokenizer.load(write_folder("qwen2_5", tmp_path_factory.mktemp("qwen"), "config"))


def _engine(tok: Tokenizer, script) -> tuple[GenerationEngine, ScriptedBackend]:
    backend = ScriptedBackend(script, vocab_size=tok.vocab_size)
    return GenerationEngine(backend, tok), backend


@pytest.mark.parametrize("end", ["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"])
def test_generation_stops_at_every_end_id(llama, end):
    end_id = llama.backend.token_to_id(end)
    assert end_id in llama.stop_ids
    words = llama.encode("the quick brown fox")
    engine, _ = _engine(llama, [*words, end_id, *llama.encode(" never shown")])
    result = engine.complete("Hello", GREEDY)
    assert result.finish_reason == "stop"
    assert result.text == "the quick brown fox"
    assert result.token_ids == [*words, end_id]


def test_an_id_only_generation_config_lists_also_stops(qwen):
    end_id = qwen.backend.token_to_id("<|endoftext|>")  # not the eos_token of tokenizer_config
    assert qwen.eos_id != end_id and end_id in qwen.stop_ids
    engine, _ = _engine(qwen, [*qwen.encode("fine"), end_id, 5])
    assert engine.complete("Hi", GREEDY).finish_reason == "stop"
    other = qwen.backend.token_to_id("<|im_start|>")  # a special token that is not an end
    engine, _ = _engine(qwen, [other] * 3)
    result = engine.complete("Hi", SamplingParams(temperature=0.0, max_new_tokens=3))
    assert result.finish_reason == "length"


def test_bos_only_for_models_that_use_one(llama, qwen):
    engine, backend = _engine(llama, [5])
    engine.complete("Hello", SamplingParams(temperature=0, max_new_tokens=1))
    assert backend.prefills[-1] == [llama.bos_id, *llama.encode("Hello")]
    engine, backend = _engine(qwen, [5])
    engine.complete("Hello", SamplingParams(temperature=0, max_new_tokens=1))
    assert backend.prefills[-1] == qwen.encode("Hello")  # Qwen has no bos


def test_chat_uses_the_models_template_and_stops_at_its_turn_end(llama):
    end_id = llama.backend.token_to_id("<|eot_id|>")
    engine, backend = _engine(llama, [*llama.encode("Hi there!"), end_id])
    session = ChatSession(engine, GREEDY, system="Be brief.")
    reply = session.send("Hello <|eot_id|> you")
    assert "".join(reply) == "Hi there!" and reply.finish_reason == "stop"
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello <|eot_id|> you"},
    ]
    assert backend.prefills[-1] == llama.encode_chat(messages)
    # The typed <|eot_id|> stayed text: one for the system turn, one for the user turn.
    assert backend.prefills[-1].count(end_id) == 2
    assert llama.render_chat(messages).startswith("<|begin_of_text|><|start_header_id|>system")


def _folder_with_defaults(tmp_path, generation: dict):
    folder = write_folder("qwen2_5", tmp_path / "q", "config")
    data = json.loads((folder / "generation_config.json").read_text(encoding="utf-8"))
    (folder / "generation_config.json").write_text(json.dumps({**data, **generation}), "utf-8")
    return Tokenizer.load(folder)


def test_cli_sampling_takes_the_models_defaults_unless_a_flag_is_given(tmp_path):
    from pocketlm.cli.generate_cmd import DEFAULTS
    from pocketlm.cli.options import sampling_from_args

    tok = _folder_with_defaults(
        tmp_path, {"do_sample": True, "temperature": 0.6, "top_p": 0.9, "max_new_tokens": 32}
    )
    flags = dict.fromkeys(
        ("temperature", "top_k", "top_p", "min_p", "repetition_penalty", "max_new_tokens")
    )
    args = argparse.Namespace(**flags, seed=None)
    params = sampling_from_args(args, defaults=DEFAULTS, model=tok.generation_defaults)
    assert (params.temperature, params.top_p, params.max_new_tokens) == (0.6, 0.9, 32)
    assert params.top_k == DEFAULTS["top_k"]  # the file leaves it out: PocketLM's default
    args.temperature, args.max_new_tokens = 0.0, 5
    params = sampling_from_args(args, defaults=DEFAULTS, model=tok.generation_defaults)
    assert (params.temperature, params.top_p, params.max_new_tokens) == (0.0, 0.9, 5)
    plain = sampling_from_args(argparse.Namespace(**flags, seed=None), defaults=DEFAULTS)
    assert plain.temperature == DEFAULTS["temperature"]


def test_server_requests_take_the_models_defaults(tmp_path):
    pytest.importorskip("pydantic")
    from pocketlm.serve.openai_protocol import ChatCompletionRequest, parse_request

    tok = _folder_with_defaults(tmp_path, {"temperature": 0.3, "top_k": 20})
    defaults = tok.generation_defaults.sampling()
    body = json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode()
    params = parse_request(ChatCompletionRequest, body).sampling_params(8, 0, defaults)
    assert (params.temperature, params.top_k, params.top_p) == (0.3, 20, 1.0)
    body = json.dumps(
        {"messages": [{"role": "user", "content": "x"}], "temperature": 1.5, "top_k": 0}
    ).encode()
    params = parse_request(ChatCompletionRequest, body).sampling_params(8, 0, defaults)
    assert (params.temperature, params.top_k) == (1.5, 0)
    params = parse_request(ChatCompletionRequest, body.replace(b"1.5", b"0.9")).sampling_params(8)
    assert params.temperature == 0.9
