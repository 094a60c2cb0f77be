"""Reading a Hugging Face tokenizer folder: which template and special tokens win, generation
defaults, and the sandbox the templates render in (transformers' own, output for output)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pocketlm.common.errors import ArtifactError, InputError
from pocketlm.tokenizer.generation_config import GenerationDefaults, parse_generation_config
from pocketlm.tokenizer.tokenizer import Tokenizer
from tests.unit.tokenizer.hf_folders import FAMILIES, write_folder

transformers = pytest.importorskip("transformers")
HI = [{"role": "user", "content": "Hi <b>&'\"é</b>"}]


def _config(folder: Path) -> dict:
    return json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))


def _write_config(folder: Path, config: dict) -> None:
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")


@pytest.fixture
def folder(tmp_path) -> Path:
    return write_folder("qwen2_5", tmp_path / "qwen", "config")


def _both(folder: Path, messages=HI, **variables) -> tuple[str, str]:
    ours = Tokenizer.load(folder).render_chat(messages, variables=variables)
    hf = transformers.AutoTokenizer.from_pretrained(str(folder))
    theirs = hf.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, **variables
    )
    return ours, theirs


def test_chat_template_jinja_wins_over_the_config(folder):
    (folder / "chat_template.jinja").write_text("J{{ messages[0].content }}", encoding="utf-8")
    ours, theirs = _both(folder)
    assert ours == theirs == "J" + HI[0]["content"]


def test_named_templates_use_the_default(folder):
    config = _config(folder)
    config["chat_template"] = [
        {"name": "tool_use", "template": "T"},
        {"name": "default", "template": "D{{ bos_token }}{{ eos_token }}"},
    ]
    _write_config(folder, config)
    ours, theirs = _both(folder)
    assert ours == theirs == "D<|im_end|>"  # no bos_token: an undefined variable renders ""
    config["chat_template"] = [{"name": "tool_use", "template": "T"}]
    _write_config(folder, config)
    with pytest.raises(ArtifactError, match="none named 'default'"):
        Tokenizer.load(folder)


def test_a_processor_style_chat_template_json_is_the_last_resort(folder):
    config = _config(folder)
    del config["chat_template"]
    _write_config(folder, config)
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": "P"}), "utf-8")
    assert Tokenizer.load(folder).render_chat(HI) == "P"


def test_no_template_means_no_chat(folder):
    config = _config(folder)
    del config["chat_template"]
    _write_config(folder, config)
    tok = Tokenizer.load(folder)
    assert not tok.has_chat_template
    with pytest.raises(InputError, match="no chat template"):
        tok.encode_chat(HI)


def test_special_tokens_map_overrides_only_without_added_tokens_decoder(folder):
    (folder / "special_tokens_map.json").write_text(
        json.dumps({"eos_token": {"content": "<|endoftext|>", "special": True}}), "utf-8"
    )
    hf = transformers.AutoTokenizer.from_pretrained(str(folder))
    tok = Tokenizer.load(folder)
    assert tok.special_tokens["eos_token"] == hf.eos_token == "<|endoftext|>"
    config = _config(folder)
    config["added_tokens_decoder"] = {}
    _write_config(folder, config)
    hf = transformers.AutoTokenizer.from_pretrained(str(folder))
    assert Tokenizer.load(folder).special_tokens["eos_token"] == hf.eos_token == "<|im_end|>"


def test_bad_folders_are_artifact_errors(folder):
    config = _config(folder)
    (folder / "special_tokens_map.json").unlink()  # it would name the real eos again
    _write_config(folder, {**config, "eos_token": "<|nowhere|>"})
    with pytest.raises(ArtifactError, match=r"tokenizer_config.json names eos_token '<\|nowhere"):
        Tokenizer.load(folder)
    _write_config(folder, {**config, "chat_template": "{% for m in messages %}"})
    with pytest.raises(ArtifactError, match="not valid Jinja"):
        Tokenizer.load(folder)
    _write_config(folder, config)
    (folder / "generation_config.json").write_text('{"top_p": 0}', encoding="utf-8")
    with pytest.raises(ArtifactError, match="generation_config.json: top_p must be"):
        Tokenizer.load(folder)


def test_generation_config_fields():
    parse = parse_generation_config
    assert parse({}, "g") == GenerationDefaults(source="g")
    full = parse(
        {
            "eos_token_id": [5, 7, 5],
            "do_sample": True,
            "temperature": 0.6,
            "top_p": 0.9,
            "top_k": 20,
            "min_p": 0.05,
            "repetition_penalty": 1.05,
            "max_new_tokens": 64,
            "bos_token_id": 1,
            "transformers_version": "4.51.0",
        },
        "g",
    )
    assert full.eos_token_ids == (5, 7)
    assert full.sampling() == {
        "temperature": 0.6,
        "top_k": 20,
        "top_p": 0.9,
        "min_p": 0.05,
        "repetition_penalty": 1.05,
        "max_new_tokens": 64,
    }
    assert parse({"eos_token_id": 2}, "g").eos_token_ids == (2,)
    assert parse({"do_sample": False, "temperature": 0.7}, "g").sampling() == {"temperature": 0.0}
    for bad in ({"eos_token_id": "2"}, {"temperature": -1}, {"top_k": 1.5}, {"do_sample": 1}):
        with pytest.raises(ArtifactError, match="g: "):
            parse(bad, "g")


SANDBOX_TEMPLATES = {
    "tojson": "{{ messages | tojson }}|{{ messages[0] | tojson(indent=2, sort_keys=True) }}",
    "loop controls": "{% for m in [1, 2, 3] %}{% if m == 2 %}{% continue %}{% endif %}{{ m }}"
    "{% if m == 3 %}{% break %}{% endif %}{% endfor %}",
    "namespace and dict": "{% set ns = namespace(n=0) %}{% for m in messages %}"
    "{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}{{ dict(a=1) | tojson }}",
    "trim and lstrip blocks": "  {% if true %}\n  x\n  {% endif %}\n{{ 'y' }}",
    "generation tag": "{% generation %}{{ messages[0].content }}{% endgeneration %}!",
    "strftime_now": "{{ strftime_now('%Y') }}",
    "variables": "{{ date_string }}{{ add_generation_prompt }}{{ tools is none }}",
}


@pytest.mark.parametrize("name", list(SANDBOX_TEMPLATES))
def test_the_sandbox_renders_as_transformers(folder, name):
    config = _config(folder)
    _write_config(folder, {**config, "chat_template": SANDBOX_TEMPLATES[name]})
    ours, theirs = _both(folder, date_string="1 Jan 2025")
    assert ours == theirs


@pytest.mark.parametrize(
    "template",
    [
        "{{ messages.__class__.__mro__ }}",
        "{{ ''.__class__ }}",
        "{% set ns = namespace(_x=1) %}",
        "{{ raise_exception('no thanks') }}",
        "{{ messages[0].content + 1 }}",
    ],
)
def test_escapes_and_errors_become_input_errors(folder, template):
    config = _config(folder)
    _write_config(folder, {**config, "chat_template": template})
    tok = Tokenizer.load(folder)
    try:
        text = tok.render_chat(HI)
    except InputError as exc:
        assert "chat template" in str(exc)
    else:  # the sandbox leaves unsafe attributes undefined: nothing leaks
        assert "class" not in text


def test_messages_and_variables_are_checked(folder):
    tok = Tokenizer.load(folder)
    with pytest.raises(InputError, match="role must be a non-empty string"):
        tok.render_chat([{"content": "x"}])
    with pytest.raises(InputError, match="cannot replace messages"):
        tok.render_chat(HI, variables={"messages": []})
    with pytest.raises(InputError, match="must be text, a number or a bool"):
        tok.render_chat(HI, variables={"x": Path(".")})
    # None values are dropped, as transformers drops them.
    assert tok.render_chat([{"role": "user", "content": "x", "name": None}]) == tok.render_chat(
        [{"role": "user", "content": "x"}]
    )


def test_every_family_fixture_names_its_source():
    for family in FAMILIES.values():
        first = Path(__file__).resolve().parents[2] / "fixtures" / "chat_templates"
        head = (first / family.template).read_text(encoding="utf-8").split("\n", 1)[0]
        assert head.startswith("{#- chat_template of ") and head.endswith("-#}")
