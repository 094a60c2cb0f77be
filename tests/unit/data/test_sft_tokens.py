"""Loss masks from the model's own chat template, checked token by token for each family.

The expectation is built independently of sft_tokens: the conversation's render is written out
by hand as segments (scaffolding or target), the render is checked against the template, and
each token is a target exactly when its first character lies in a target segment (character
offsets from the tokenizer itself).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pocketlm.data.sft_formats import RecordProblem
from pocketlm.data.sft_tokens import SFTTokens, fit_length, sft_tokens, target_count
from pocketlm.tokenizer.special_tokens import SPECIAL_TOKENS
from pocketlm.tokenizer.tokenizer import Tokenizer
from tests.unit.tokenizer.hf_folders import FAMILIES, write_folder

SYSTEM = {"role": "system", "content": "Be kind."}
TURNS = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "Tell me a story."},
    {"role": "assistant", "content": "Once upon a time..."},
]
R1, R2 = TURNS[1]["content"], TURNS[3]["content"]
LLAMA_SYSTEM = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
    "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nBe kind.<|eot_id|>"
)
LLAMA_USER = "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>"
LLAMA_REPLY = "<|start_header_id|>assistant<|end_header_id|>\n\n"
CHATML = [
    "<|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    f"{R1}<|im_end|>",
    "\n<|im_start|>user\nTell me a story.<|im_end|>\n<|im_start|>assistant\n",
    f"{R2}<|im_end|>",
    "\n",
]
PHI3 = [
    "<|system|>\nBe kind.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\n",
    f"{R1}<|end|>\n",  # <|end|> eats the whitespace after it (rstrip): its token spans "\n"
    "<|user|>\nTell me a story.<|end|>\n<|assistant|>\n",
    f"{R2}<|end|>\n",
    "<|endoftext|>",  # the end of a conversation without a generation prompt: not learned
]
# The conversation's render by family, alternating scaffolding and target segments.
EXPECTED = {
    "qwen2_5": CHATML,
    "smollm2": CHATML,
    "qwen3": [*CHATML[:3], f"<think>\n\n</think>\n\n{R2}<|im_end|>", "\n"],  # the last turn's
    # reasoning block is the template's own, empty here, and learned with the reply
    "llama3_1": [
        f"{LLAMA_SYSTEM}{LLAMA_USER.format('Hi')}{LLAMA_REPLY}",
        f"{R1}<|eot_id|>",
        f"{LLAMA_USER.format('Tell me a story.')}{LLAMA_REPLY}",
        f"{R2}<|eot_id|>",
    ],
    "gemma2": [  # no system turn in Gemma 2
        "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n",
        f"{R1}<end_of_turn>",
        "\n<start_of_turn>user\nTell me a story.<end_of_turn>\n<start_of_turn>model\n",
        f"{R2}<end_of_turn>",
        "\n",
    ],
    "gemma3": [  # the system text opens the first user turn
        "<bos><start_of_turn>user\nBe kind.\n\nHi<end_of_turn>\n<start_of_turn>model\n",
        f"{R1}<end_of_turn>",
        "\n<start_of_turn>user\nTell me a story.<end_of_turn>\n<start_of_turn>model\n",
        f"{R2}<end_of_turn>",
        "\n",
    ],
    "phi3": PHI3,
    "phi3_5": PHI3,
    "phi4_mini": [
        "<|system|>Be kind.<|end|><|user|>Hi<|end|><|assistant|>",
        f"{R1}<|end|>",
        "<|user|>Tell me a story.<|end|><|assistant|>",
        f"{R2}<|end|>",
        "<|endoftext|>",
    ],
}
EXPECTED["llama3_2"] = EXPECTED["llama3_1"]
_tokenizers: dict[str, Tokenizer] = {}


@pytest.fixture(scope="module")
def family_tokenizer(tmp_path_factory):
    def get(name: str) -> Tokenizer:
        if name not in _tokenizers:
            folder = write_folder(name, tmp_path_factory.mktemp(name), "jinja")
            _tokenizers[name] = Tokenizer.load(folder)
        return _tokenizers[name]

    yield get
    _tokenizers.clear()


def expected_mask(tok: Tokenizer, segments: list[str], ids: list[int]) -> list[bool]:
    """Targets from the hand-written segments: a token whose first character is in a target one."""
    text = "".join(segments)
    encoding = tok.backend.encode(text, add_special_tokens=False)
    assert encoding.ids == ids, "the chat interface's ids are not those of the rendered text"
    target_chars = []
    for k, segment in enumerate(segments):
        target_chars += [k % 2 == 1] * len(segment)
    return [target_chars[start] for start, _ in encoding.offsets]


def assert_token_by_token(tok: Tokenizer, segments: list[str], tokens: SFTTokens) -> None:
    expected = expected_mask(tok, segments, tokens.ids)
    for k, (got, want) in enumerate(zip(tokens.loss_mask, expected, strict=True)):
        piece = tok.decode([tokens.ids[k]])
        assert got == want, f"token {k} {piece!r}: target {got}, expected {want}"


@pytest.mark.parametrize("name", list(EXPECTED))
def test_mask_token_by_token(family_tokenizer, name):
    tok = family_tokenizer(name)
    family = FAMILIES[name]
    messages = [SYSTEM, *TURNS] if family.system else TURNS
    segments = EXPECTED[name]
    assert tok.render_chat(messages, False, variables=family.variables) == "".join(segments)
    stats: Counter = Counter()
    tokens = sft_tokens(tok, messages, variables=family.variables, stats=stats)
    assert tokens.ids == tok.encode_chat(messages, False, variables=family.variables)
    assert_token_by_token(tok, segments, tokens)
    assert stats["prompt_mismatched_turns"] == 0
    # Each reply ends with the one stop token that ends generation.
    ends = [tokens.ids[k] for k in range(len(tokens.ids)) if tokens.loss_mask[k]]
    assert ends[-1] in tok.stop_ids and sum(i in tok.stop_ids for i in ends) == 2


def test_pocketlm_template_token_by_token(synthetic_pipeline):
    tok = Tokenizer.load(synthetic_pipeline["tokenizer"])
    segments = [
        "<|bos|><|system|>\nBe kind.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\n",
        f"{R1}<|end|>",
        "\n<|user|>\nTell me a story.<|end|>\n<|assistant|>\n",
        f"{R2}<|end|>",
        "\n",
    ]
    messages = [SYSTEM, *TURNS]
    assert tok.render_chat(messages, False) == "".join(segments)
    tokens = sft_tokens(tok, messages)
    assert_token_by_token(tok, segments, tokens)


def test_qwen3_thinking_blocks(family_tokenizer):
    """Qwen3 drops the reasoning of turns before the last user message: those targets are the
    replies without it (as the template trains them); the last turn learns its <think> block."""
    tok = family_tokenizer("qwen3")
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "<think>\nThe user greets me.\n</think>\n\nHello!"},
        {"role": "user", "content": "And now?"},
        {"role": "assistant", "content": "<think>\nStill greeting.\n</think>\n\nHi again."},
    ]
    segments = [
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
        "Hello!<|im_end|>",
        "\n<|im_start|>user\nAnd now?<|im_end|>\n<|im_start|>assistant\n",
        "<think>\nStill greeting.\n</think>\n\nHi again.<|im_end|>",
        "\n",
    ]
    assert tok.render_chat(messages, False) == "".join(segments)
    tokens = sft_tokens(tok, messages)
    assert_token_by_token(tok, segments, tokens)
    think = tok.backend.token_to_id("<think>")
    assert tokens.loss_mask[tokens.ids.index(think)]  # the model learns to open its reasoning
    # A reply typed with <think> by a user is text; only the template's markup is the token.
    assert tokens.ids.count(think) == 1


def test_reply_merged_with_the_prompt_is_counted(family_tokenizer):
    tok = family_tokenizer("qwen2_5")
    messages = [TURNS[0], {"role": "assistant", "content": "\n\nHello"}]
    stats: Counter = Counter()
    tokens = sft_tokens(tok, messages, stats=stats)
    assert stats["prompt_mismatched_turns"] == 1
    targets = [i for i, m in zip(tokens.ids, tokens.loss_mask, strict=True) if m]
    # ChatML's "assistant\n" ends in the newline that merges with the reply's: that token is
    # learned (the prompt at inference ends with "\n" as its own token)
    assert tok.decode(targets) == "\n\n\nHello<|im_end|>"


def test_a_template_that_moves_history_is_refused(family_tokenizer):
    tok = family_tokenizer("mistral_v0_3")
    tokens = sft_tokens(tok, TURNS)  # Mistral without a system message: fine
    targets = [i for i, m in zip(tokens.ids, tokens.loss_mask, strict=True) if m]
    assert tok.decode(targets).replace(" ", "") == f"{R1}</s>{R2}</s>".replace(" ", "")
    with pytest.raises(RecordProblem) as err:  # the system text moves into the last user turn
        sft_tokens(tok, [SYSTEM, *TURNS])
    assert err.value.kind == "template_rewrites_history" and "Mistral" in err.value.reason


def test_a_turn_without_a_stop_token_is_refused(tmp_path):
    """A model whose stop ids miss its template's turn end would never stop: refused, said why."""
    folder = write_folder("qwen2_5", tmp_path / "qwen", "jinja")
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        config = json.loads((folder / name).read_text())
        config["eos_token"] = "<|endoftext|>"
        (folder / name).write_text(json.dumps(config))
    end = Tokenizer.load(folder).backend.token_to_id("<|endoftext|>")
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": end}))
    tok = Tokenizer.load(folder)
    assert tok.backend.token_to_id("<|im_end|>") not in tok.stop_ids
    with pytest.raises(RecordProblem, match="not closed by one of the tokenizer's stop tokens"):
        sft_tokens(tok, TURNS)


def test_fit_length():
    tokens = SFTTokens([1, 2, 3, 4, 5, 6], [False, False, False, True, True, True])
    assert fit_length(tokens, 6, "drop") is tokens
    assert fit_length(tokens, 5, "drop") is None
    assert fit_length(tokens, 5, "truncate") == SFTTokens([1, 2, 3, 4, 5], [False] * 3 + [True] * 2)
    assert fit_length(tokens, 3, "truncate") is None  # no target left
    assert target_count(tokens) == 3 and target_count(SFTTokens([1], [True])) == 0


benign = st.text(max_size=40).filter(lambda s: not any(t in s for t in SPECIAL_TOKENS))


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    system=st.none() | benign,
    pairs=st.lists(st.tuples(benign, benign), min_size=1, max_size=3),
)
def test_pocketlm_targets_are_exactly_the_replies_and_their_ends(synthetic_pipeline, system, pairs):
    """Any conversation: the target tokens decode to each reply followed by <|end|>."""
    tok = _own(synthetic_pipeline["tokenizer"])
    messages = [] if system is None else [{"role": "system", "content": system}]
    for user, reply in pairs:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
    tokens = sft_tokens(tok, messages)
    runs: list[tuple[bool, list[int]]] = []
    for i, m in zip(tokens.ids, tokens.loss_mask, strict=True):
        if runs and runs[-1][0] == m:
            runs[-1][1].append(i)
        else:
            runs.append((m, [i]))
    replies = [tok.decode(ids) for m, ids in runs if m]
    expected = [f"{reply}<|end|>" for _, reply in pairs]
    # a reply starting with whitespace may merge with its header's "\n": then that is learned
    assert all(r in (e, "\n" + e) for r, e in zip(replies, expected, strict=True)), replies
    assert tok.decode(tokens.ids) == tok.render_chat(messages, False)


_own_cache: dict[Path, Tokenizer] = {}


def _own(path: Path) -> Tokenizer:
    if path not in _own_cache:
        _own_cache[path] = Tokenizer.load(path)
    return _own_cache[path]
