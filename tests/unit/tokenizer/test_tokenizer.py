from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pocketlm.common.manifest import read_manifest
from pocketlm.tokenizer.chat_template import render_chat
from pocketlm.tokenizer.special_tokens import SPECIAL_TOKENS
from pocketlm.tokenizer.stream_decoder import StreamDecoder
from pocketlm.tokenizer.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tok(synthetic_pipeline) -> Tokenizer:
    return Tokenizer.load(synthetic_pipeline["tokenizer"])


def test_special_tokens_have_fixed_ids(tok):
    assert [tok.backend.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert tok.vocab_size == 512


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.text(max_size=200))
def test_decode_encode_round_trips_any_unicode(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_round_trip_of_awkward_strings(tok):
    for text in [
        "",
        " ",
        "\n\n\t  x",
        "日本語のテキスト",
        "emoji 🤖👍🏽",
        "\x00\x01",
        "<|endoftext|> literal",
        "a\u0301",
        "\ud7ff",
    ]:
        assert tok.decode(tok.encode(text)) == text


def test_stream_decoder_never_splits_characters(tok):
    text = "héllo wörld — 日本語 🤖 done " * 5
    ids = tok.encode(text)
    dec = StreamDecoder(tok)
    pieces = [dec.push(i) for i in ids] + [dec.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)


def test_compression_report_in_manifest(synthetic_pipeline):
    m = read_manifest(synthetic_pipeline["tokenizer"], kind="tokenizer")
    assert m["summary"]["measured_on"] == "val"
    assert 1.5 < m["summary"]["bytes_per_token"] < 8
    assert (
        "bytes per token" in (synthetic_pipeline["tokenizer"] / "tokenizer_report.md").read_text()
    )


def test_transformers_loads_tokenizer_as_is(synthetic_pipeline, tok):
    transformers = pytest.importorskip("transformers")
    hf = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(synthetic_pipeline["tokenizer"] / "tokenizer.json")
    )
    text = "The little dog ran to the park."
    assert hf.encode(text, add_special_tokens=False) == tok.encode(text)
    auto = transformers.AutoTokenizer.from_pretrained(str(synthetic_pipeline["tokenizer"]))
    assert (
        auto.bos_token == "<|bos|>"
        and auto.eos_token == "<|endoftext|>"
        and auto.pad_token == "<|pad|>"
    )
    assert auto(text)["input_ids"] == tok.encode(text, add_bos=True)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
    ]
    assert auto.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    ) == render_chat(messages)


def test_chat_template_shape_and_bad_roles():
    assert (
        render_chat([{"role": "user", "content": "hi"}])
        == "<|bos|><|user|>\nhi<|end|>\n<|assistant|>\n"
    )
    from pocketlm.common.errors import InputError

    with pytest.raises(InputError, match="role must be one of"):
        render_chat([{"role": "robot", "content": "x"}])


def _broken_copy(synthetic_pipeline, tmp_path, edit):
    import json

    data = json.loads((synthetic_pipeline["tokenizer"] / "tokenizer.json").read_text())
    edit(data)
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    return tmp_path


def test_a_file_the_library_panics_on_is_one_clear_error(synthetic_pipeline, tmp_path, capfd):
    """A Rust panic prints its message and backtrace to fd 2 before it becomes an exception:
    held, so the error is one ArtifactError naming the file, with nothing else on stderr."""
    from pocketlm.common.errors import ArtifactError

    def corrupt_charsmap(data):
        data["normalizer"] = {"type": "Precompiled", "precompiled_charsmap": "AAAA"}

    d = _broken_copy(synthetic_pipeline, tmp_path, corrupt_charsmap)
    with pytest.raises(ArtifactError, match="tokenizer.json: cannot load tokenizer"):
        Tokenizer.load(d)
    assert capfd.readouterr().err == ""


def test_ids_must_run_without_gaps(synthetic_pipeline, tmp_path):
    from pocketlm.common.errors import ArtifactError

    def gap(data):
        data["model"]["vocab"][next(iter(data["model"]["vocab"]))] = 600

    with pytest.raises(
        ArtifactError, match=r"tokenizer.json: token ids must be 0..511 without gaps"
    ):
        Tokenizer.load(_broken_copy(synthetic_pipeline, tmp_path, gap))
