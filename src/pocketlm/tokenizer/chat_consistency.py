"""Do a chat model's template, special tokens and stop ids agree? The end-of-turn check.

A chat model stops when it writes a token generation stops at. That only works when four files
agree: the chat template (which token closes an assistant turn), tokenizer.json (that token
exists), tokenizer_config.json (eos_token) and generation_config.json (eos_token_id: every id
that ends generation). Any one of them edited by hand, or dropped by an export, leaves a model
that trains fine and then never stops, or stops at once. No file on its own shows it; this
check renders a probe conversation and compares:

- the template renders a user turn and an assistant reply, with and without a generation prompt;
- the generation prompt ends where an assistant reply begins (the reply's ids follow the
  prompt's ids exactly, so what the model learned to continue is what it is given);
- the first special token the template writes after the reply (its end of turn) is a stop id;
- every eos id of generation_config.json is a token of the vocabulary;
- every special token tokenizer_config.json names is a token of the vocabulary.

The result is a list of problems (empty when consistent): the commands print them as warnings
and carry on, since a model with a broken stop still generates up to its token budget.
"""

from __future__ import annotations

from pathlib import Path

from pocketlm.common.errors import PocketLMError
from pocketlm.tokenizer.tokenizer import Tokenizer

PROBE_REQUEST = "What is two plus two?"
PROBE_REPLY = "Four."


def check_chat_consistency(model_dir: str | Path) -> list[str]:
    """Problems between the chat template, special tokens and stop ids of the tokenizer in
    `model_dir` (a model artifact or a Hugging Face folder); [] when they agree or the model
    has no chat template."""
    try:
        tokenizer = Tokenizer.load(model_dir)
    except PocketLMError as exc:
        return [f"the tokenizer does not load: {exc}"]
    return chat_consistency_problems(tokenizer)


def chat_consistency_problems(tokenizer: Tokenizer) -> list[str]:
    """Problems between a tokenizer's chat template, special tokens and stop ids ([] if none)."""
    problems = _vocabulary_problems(tokenizer)
    if not tokenizer.has_chat_template:
        return problems
    user = [{"role": "user", "content": PROBE_REQUEST}]
    turn = [*user, {"role": "assistant", "content": PROBE_REPLY}]
    try:
        prompt = tokenizer.encode_chat(user, add_generation_prompt=True)
        full = tokenizer.encode_chat(turn, add_generation_prompt=False)
    except Exception as exc:  # a Jinja template raises its own errors (raise_exception, ...)
        return [*problems, f"the chat template does not render a user turn and a reply: {exc}"]
    if full[: len(prompt)] != prompt:
        at = next(k for k, (a, b) in enumerate(zip(prompt, full)) if a != b) if full else 0
        problems.append(
            "the generation prompt does not end where an assistant reply begins: the prompt "
            f"{tokenizer.decode(prompt[at:])!r} is rendered as {tokenizer.decode(full[at:])!r} "
            "once the reply follows, so a fine-tuned model is prompted with text it never saw "
            "before a reply"
        )
        return problems
    reply = full[len(prompt) :]
    marks = tokenizer.special_ids | tokenizer.stop_ids
    end = next((i for i in reply if i in marks), None)
    named = [i for i in tokenizer.stop_ids if 0 <= i < tokenizer.vocab_size]
    stops = ", ".join(sorted(repr(tokenizer.decode([i])) for i in named)) or "none"
    if end is None:
        problems.append(
            "the chat template closes an assistant reply with no special token, so no stop id "
            f"(stop ids: {stops}) ends a turn: a model would not stop after its reply"
        )
    elif end not in tokenizer.stop_ids:
        problems.append(
            f"the chat template closes an assistant reply with {tokenizer.decode([end])!r} "
            f"(id {end}), which is not a stop id ({stops}): a model would not stop after its "
            f"reply; add {end} to eos_token_id in generation_config.json"
        )
    return problems


def _vocabulary_problems(tokenizer: Tokenizer) -> list[str]:
    """generation_config.json's eos ids and tokenizer_config.json's special tokens that are no
    token of the vocabulary."""
    problems = []
    defaults = tokenizer.generation_defaults
    outside = [i for i in defaults.eos_token_ids if not 0 <= i < tokenizer.vocab_size]
    if outside:
        problems.append(
            f"{defaults.source or 'generation_config.json'}: eos_token_id {outside} "
            f"outside the vocabulary of {tokenizer.vocab_size} tokens, so generation never "
            "meets it; list the end-of-turn token's id"
        )
    for key, text in sorted(tokenizer.special_tokens.items()):
        if text is not None and tokenizer.backend.token_to_id(text) is None:
            problems.append(
                f"tokenizer_config.json (or special_tokens_map.json): {key} {text!r} is not "
                "a token of tokenizer.json"
            )
    return problems
