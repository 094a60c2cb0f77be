"""Loss masks for chat fine-tuning, derived from the model's OWN chat template.

`sft_tokens(tokenizer, messages)` gives the conversation's ids exactly as the one chat interface
encodes it (`Tokenizer.encode_chat` without a generation prompt: PocketLM's template or the
model's Jinja one) and a mask of the tokens the model should learn to write: each assistant
turn's content and the stop token that closes it. System and user turns, the template's own text
(role headers, the generation prompt header) and whatever follows a turn's stop token (the "\\n"
after ChatML's <|im_end|>, Phi-3's closing <|endoftext|>) are context only.

How, for every template, with no per-family code: for assistant turn i, the prompt the model
gets at inference is P = encode_chat(messages[:i], add_generation_prompt=True) and the history
before its header is H = encode_chat(messages[:i], add_generation_prompt=False). The reply starts
where the full conversation's ids stop agreeing with P; the header starts where P and H part.
The turn's targets run from the reply's start to the first stop id of the tokenizer (what ends
generation), which must come before the next assistant turn's header.

Templates that rewrite history are masked against the full render, as they train: Qwen3 drops
the <think> block of assistant turns before the last user message, so those turns' targets are
their replies without reasoning, and the last turn's targets include its <think> block. A
template that renders text BEFORE a turn's header differently once the reply follows (Mistral
v0.3 moves the system message into the last user turn) cannot give the model the prompt it sees
at inference: that conversation is refused (RecordProblem "template_rewrites_history").

Where the reply's first token merges with the end of the prompt (a reply starting with "\\n"
after ChatML's "assistant\\n"), the merged token is a target, and the turn is counted in
`stats["prompt_mismatched_turns"]`: the model then saw slightly different ids before that reply
than a chat prompt gives it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, Literal, NamedTuple

from pocketlm.data.sft_formats import RecordProblem
from pocketlm.tokenizer.tokenizer import Tokenizer

TooLong = Literal["drop", "truncate"]


class SFTTokens(NamedTuple):
    """A conversation's ids and which of them are targets (True: the model learns to write it)."""

    ids: list[int]
    loss_mask: list[bool]


def sft_tokens(
    tokenizer: Tokenizer,
    messages: Sequence[Mapping[str, str]],
    *,
    variables: Mapping[str, Any] | None = None,
    stats: Counter | None = None,
) -> SFTTokens:
    """The conversation's ids through the model's chat template and its loss mask: True on each
    assistant turn's content and closing stop token (InputError when the template refuses the
    messages, RecordProblem when a turn's targets cannot be found)."""
    ids = tokenizer.encode_chat(messages, add_generation_prompt=False, variables=variables)
    turns = []  # (header start, reply start) of each assistant turn, in ids
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = tokenizer.encode_chat(
            messages[:i], add_generation_prompt=True, variables=variables
        )
        history = tokenizer.encode_chat(
            messages[:i], add_generation_prompt=False, variables=variables
        )
        header = _common_prefix(prompt, history)
        start = _common_prefix(prompt, ids)
        if start < header:
            raise RecordProblem(
                "template_rewrites_history",
                f"the chat template renders the conversation before assistant turn {i} "
                "differently once the reply follows (it moves or rewrites earlier text), so "
                "training on it would not match the prompt at inference; drop or move the "
                "message it rewrites (for Mistral: the system message)",
            )
        if start < len(prompt) and stats is not None:
            stats["prompt_mismatched_turns"] += 1
        turns.append((header, start))
    mask = [False] * len(ids)
    stops = tokenizer.stop_ids
    for n, (_, start) in enumerate(turns):
        limit = turns[n + 1][0] if n + 1 < len(turns) else len(ids)
        end = next((k for k in range(start, limit) if ids[k] in stops), None)
        if end is None:
            names = ", ".join(sorted(repr(tokenizer.decode([s])) for s in stops)) or "none"
            raise RecordProblem(
                "turn_not_closed",
                f"assistant turn {n + 1} of the conversation is not closed by one of the "
                f"tokenizer's stop tokens ({names}): a model trained on it would not stop; "
                "check the chat template and the end ids of generation_config.json",
            )
        mask[start : end + 1] = [True] * (end + 1 - start)
    return SFTTokens(ids, mask)


def fit_length(tokens: SFTTokens, max_tokens: int, policy: TooLong) -> SFTTokens | None:
    """The example within max_tokens: unchanged, cut to its first max_tokens ("truncate", None
    when no target is left), or None ("drop") when it is longer."""
    if len(tokens.ids) <= max_tokens:
        return tokens
    if policy == "drop":
        return None
    cut = SFTTokens(tokens.ids[:max_tokens], tokens.loss_mask[:max_tokens])
    return cut if any(cut.loss_mask[1:]) else None


def target_count(tokens: SFTTokens) -> int:
    """Targets the example trains on: masked tokens after the first (the first is never predicted)."""
    return sum(tokens.loss_mask[1:])


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for k in range(n):
        if a[k] != b[k]:
            return k
    return n
