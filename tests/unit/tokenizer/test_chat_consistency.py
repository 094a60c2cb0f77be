"""The end-of-turn check: every family's tokenizer folder and PocketLM's own tokenizer agree, and
each way a folder can break (the turn end missing from the stop ids, an eos id outside the
vocabulary, a named special token that is no token, a template that does not render, a
generation prompt that is not where a reply begins, a turn closed by no special token) is named
as a problem, without raising."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pocketlm.tokenizer.chat_consistency import check_chat_consistency
from tests.unit.tokenizer.hf_folders import FAMILIES, write_folder


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_folder_is_consistent(family, tmp_path):
    assert check_chat_consistency(write_folder(family, tmp_path / family)) == []


def test_pocketlm_tokenizer_is_consistent(synthetic_pipeline):
    assert check_chat_consistency(synthetic_pipeline["tokenizer"]) == []


def _edit(folder: Path, name: str, **fields) -> None:
    path = folder / name
    data = json.loads(path.read_text())
    data.update(fields)
    path.write_text(json.dumps(data))


def _name(folder: Path, **tokens: str) -> None:
    """Name special tokens in both files that name them (special_tokens_map.json wins)."""
    _edit(folder, "tokenizer_config.json", **tokens)
    _edit(folder, "special_tokens_map.json", **tokens)


def _template(folder: Path, text: str) -> None:
    _edit(folder, "tokenizer_config.json", chat_template=text)


CHATML_TURNS = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
)


@pytest.fixture
def smollm2(tmp_path) -> Path:
    return write_folder("smollm2", tmp_path / "smollm2")


def test_a_turn_end_that_is_no_stop_id_is_named(smollm2):
    # eos is <|endoftext|> everywhere, while the template closes a turn with <|im_end|>
    endoftext = json.loads((smollm2 / "tokenizer.json").read_text())["added_tokens"][0]
    assert endoftext["content"] == "<|endoftext|>"
    _name(smollm2, eos_token="<|endoftext|>")
    _edit(smollm2, "generation_config.json", eos_token_id=endoftext["id"])
    (problem,) = check_chat_consistency(smollm2)
    assert (
        "'<|im_end|>'" in problem and "not a stop id" in problem and "generation_config" in problem
    )


def test_an_eos_id_outside_the_vocabulary_is_named(smollm2):
    _edit(smollm2, "generation_config.json", eos_token_id=[2, 99999])
    (problem,) = check_chat_consistency(smollm2)
    assert "generation_config.json" in problem and "[99999]" in problem


def test_a_named_special_token_that_is_no_token_is_named(smollm2):
    _name(smollm2, pad_token="<|no_such_pad|>")
    (problem,) = check_chat_consistency(smollm2)
    assert "pad_token '<|no_such_pad|>'" in problem


def test_a_template_that_does_not_render_is_named(smollm2):
    _template(smollm2, "{{ raise_exception('this template refuses every conversation') }}")
    (problem,) = check_chat_consistency(smollm2)
    assert "does not render" in problem and "refuses every conversation" in problem


def test_a_generation_prompt_that_is_not_where_a_reply_begins_is_named(smollm2):
    # replies are rendered under "bot", the generation prompt says "assistant"
    _template(
        smollm2,
        CHATML_TURNS.replace("{{ m.role }}", "{{ 'bot' if m.role == 'assistant' else m.role }}")
        + "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
    )
    (problem,) = check_chat_consistency(smollm2)
    assert "does not end where an assistant reply begins" in problem and "assistant" in problem


def test_a_turn_closed_by_no_special_token_is_named(smollm2):
    _template(
        smollm2,
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}\n\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
    )
    (problem,) = check_chat_consistency(smollm2)
    assert "no special token" in problem


def test_a_tokenizer_that_does_not_load_is_a_problem_not_a_crash(smollm2):
    _name(smollm2, eos_token="<|no_such_eos|>")
    (problem,) = check_chat_consistency(smollm2)
    assert "does not load" in problem and "<|no_such_eos|>" in problem


def test_commands_print_one_warning_line_per_problem(smollm2, tmp_path, capsys):
    from pocketlm.cli.chat_check import warn_chat_consistency

    assert warn_chat_consistency(smollm2) == [] and capsys.readouterr().err == ""
    assert warn_chat_consistency(tmp_path / "no-model") == []  # the command reports that itself
    _edit(smollm2, "generation_config.json", eos_token_id=99999)
    (problem,) = warn_chat_consistency(smollm2)
    assert capsys.readouterr().err == f"warning: {smollm2}: {problem}\n"
