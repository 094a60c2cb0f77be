"""The OpenAI-compatible response side: ids, choices, usage, logprobs, chunks and SSE framing.

Pure functions building the JSON objects OpenAI's API returns (`text_completion`,
`chat.completion`, `chat.completion.chunk`), so clients written for it parse ours unchanged.
Nothing here imports a web framework.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from typing import Any

from pocketlm.engine.generation import TokenLogprob
from pocketlm.tokenizer.token_bytes import id_bytes, is_byte_level
from pocketlm.tokenizer.tokenizer import Tokenizer


def new_id(prefix: str) -> str:
    """A fresh response id such as 'chatcmpl-3f2a...'."""
    return f"{prefix}-{secrets.token_hex(12)}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """The usage object."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def sse(data: dict[str, Any] | str) -> bytes:
    """One server-sent event: `data: <json>` and a blank line (UTF-8, non-ASCII kept as is)."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {text}\n\n".encode()


SSE_DONE = sse("[DONE]")


class TokenTexts:
    """A token's text and exact bytes for logprobs, cached per id."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self._byte_level = is_byte_level(tokenizer)
        self._cache: dict[int, tuple[str, list[int]]] = {}

    def get(self, token_id: int) -> tuple[str, list[int]]:
        """(text, bytes) of one token; text shows an incomplete UTF-8 piece as U+FFFD, the bytes
        are exact (a byte-level or SentencePiece byte-fallback piece's own bytes)."""
        hit = self._cache.get(token_id)
        if hit is None:
            text = self.tokenizer.decode([token_id])
            raw = list(id_bytes(self.tokenizer, token_id, self._byte_level))
            hit = self._cache[token_id] = (text, raw)
        return hit

    def visible(self, entries: Sequence[TokenLogprob]) -> list[TokenLogprob]:
        """Entries of tokens that belong in the text (not the end-of-text / end-of-turn token)."""
        specials = self.tokenizer.special_ids
        return [e for e in entries if e.token_id not in specials]


def completion_logprobs(
    entries: Sequence[TokenLogprob], texts: TokenTexts, offset: int = 0
) -> tuple[dict[str, Any], int]:
    """The /v1/completions `logprobs` object for these tokens, and the text offset after them."""
    tokens, token_logprobs, tops, offsets = [], [], [], []
    for entry in texts.visible(entries):
        text, _ = texts.get(entry.token_id)
        tokens.append(text)
        token_logprobs.append(entry.logprob)
        tops.append({texts.get(i)[0]: lp for i, lp in entry.top} if entry.top else None)
        offsets.append(offset)
        offset += len(text)
    top_logprobs = tops if any(t is not None for t in tops) else None
    return {
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": top_logprobs,
        "text_offset": offsets,
    }, offset


def echo_logprobs(
    token_ids: Sequence[int], entries: Sequence[TokenLogprob | None], texts: TokenTexts
) -> tuple[dict[str, Any], int]:
    """The `logprobs` object of an echoed prompt (a None entry: a token nothing predicts, whose
    logprob is null as OpenAI sends the first one), and the text offset after it."""
    tokens, token_logprobs, tops, offsets = [], [], [], []
    offset = 0
    for token_id, entry in zip(token_ids, entries, strict=True):
        text, _ = texts.get(token_id)
        tokens.append(text)
        token_logprobs.append(None if entry is None else entry.logprob)
        top = None if entry is None or not entry.top else entry.top
        tops.append(None if top is None else {texts.get(i)[0]: lp for i, lp in top})
        offsets.append(offset)
        offset += len(text)
    return {
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": tops,
        "text_offset": offsets,
    }, offset


def join_logprobs(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """Two completions `logprobs` objects one after the other (an echoed prompt, its completion)."""
    tops = [*(first["top_logprobs"] or [None] * len(first["tokens"]))]
    tops += second["top_logprobs"] or [None] * len(second["tokens"])
    return {
        "tokens": first["tokens"] + second["tokens"],
        "token_logprobs": first["token_logprobs"] + second["token_logprobs"],
        "top_logprobs": tops if any(t is not None for t in tops) else None,
        "text_offset": first["text_offset"] + second["text_offset"],
    }


def chat_logprobs(entries: Sequence[TokenLogprob], texts: TokenTexts) -> dict[str, Any]:
    """The /v1/chat/completions `logprobs` object: {"content": [{token, logprob, bytes, top_logprobs}]}."""
    content = []
    for entry in texts.visible(entries):
        text, raw = texts.get(entry.token_id)
        top = []
        for i, lp in entry.top:
            t, b = texts.get(i)
            top.append({"token": t, "logprob": lp, "bytes": b})
        content.append({"token": text, "logprob": entry.logprob, "bytes": raw, "top_logprobs": top})
    return {"content": content, "refusal": None}


def completion_choice(
    index: int, text: str, finish_reason: str | None, logprobs: dict[str, Any] | None
) -> dict[str, Any]:
    """One choice of a text_completion (whole or streamed)."""
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}


def chat_choice(
    index: int, text: str, finish_reason: str | None, logprobs: dict[str, Any] | None
) -> dict[str, Any]:
    """One choice of a chat.completion."""
    return {
        "index": index,
        "message": {"role": "assistant", "content": text, "refusal": None},
        "logprobs": logprobs,
        "finish_reason": finish_reason,
    }


def chat_delta(
    index: int,
    delta: dict[str, Any],
    finish_reason: str | None = None,
    logprobs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One choice of a chat.completion.chunk."""
    return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}


def envelope(
    object_type: str,
    response_id: str,
    created: int,
    model: str,
    choices: list[dict[str, Any]],
    usage_obj: dict[str, int] | None = None,
    fingerprint: str | None = None,
) -> dict[str, Any]:
    """The response around the choices: id, object, created, model, choices, usage."""
    out: dict[str, Any] = {
        "id": response_id,
        "object": object_type,
        "created": created,
        "model": model,
        "system_fingerprint": fingerprint,
        "choices": choices,
    }
    if usage_obj is not None or object_type in ("text_completion", "chat.completion"):
        out["usage"] = usage_obj
    return out


def model_card(model_id: str, created: int, parent: str | None = None) -> dict[str, Any]:
    """One entry of /v1/models (an adapter names its base model as `parent`)."""
    card = {"id": model_id, "object": "model", "created": created, "owned_by": "pocketlm"}
    return card if parent is None else {**card, "parent": parent}
