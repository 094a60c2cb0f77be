"""A chat.completion reply read into what synth keeps: the text, why it ended, the usage and the
teacher's top log-probabilities as sparse targets.

Sparse targets are stored in the teacher's own text form, per assistant token:
    {"token": TEXT, "logprob": LP, "top": [[TEXT, LP], ...]}
(plus "bytes": [...] where the token's exact bytes are not its UTF-8 text: a token that is part
of a character; an alternative then has its bytes as a third element). They are not mapped to a
student tokenizer's ids here: a consumer that shares the teacher's tokenizer maps the texts
(bytes) itself. A log-probability the API sends as null (minus infinity) stays null; the others
are rounded to LOGPROB_DECIMALS places (a relative error in probability under 1e-5, and half the
bytes of full float text).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

LOGPROB_DECIMALS = 5


class ReplyProblem(Exception):
    """The reply is JSON but not a chat.completion synth can read (names the field)."""


@dataclass(frozen=True)
class Reply:
    """The first choice of a chat.completion."""

    text: str
    finish_reason: str | None
    model: str | None
    prompt_tokens: int | None  # None: the API sent no usage
    completion_tokens: int | None
    logprobs: list[dict[str, Any]] | None  # sparse targets, None when the API sent none


def parse_reply(data: Mapping[str, Any]) -> Reply:
    """The first choice's message, finish reason, usage and sparse targets (ReplyProblem if bad)."""
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
        raise ReplyProblem("the reply has no 'choices' (is the URL a chat-completions API?)")
    choice = choices[0]
    message = choice.get("message")
    if not isinstance(message, Mapping):
        raise ReplyProblem("'choices[0].message' is missing")
    text = message.get("content")
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise ReplyProblem(f"'choices[0].message.content' is {type(text).__name__}, not text")
    finish = choice.get("finish_reason")
    usage = data.get("usage") if isinstance(data.get("usage"), Mapping) else {}
    model = data.get("model")
    return Reply(
        text=text,
        finish_reason=finish if isinstance(finish, str) else None,
        model=model if isinstance(model, str) else None,
        prompt_tokens=_count(usage.get("prompt_tokens")),
        completion_tokens=_count(usage.get("completion_tokens")),
        logprobs=sparse_targets(choice.get("logprobs")),
    )


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def sparse_targets(logprobs: object) -> list[dict[str, Any]] | None:
    """Per token {"token", "logprob", "top": [[text, lp], ...]} from a chat `logprobs` object."""
    if logprobs is None:
        return None
    content = logprobs.get("content") if isinstance(logprobs, Mapping) else None
    if content is None:
        return None
    if not isinstance(content, list):
        raise ReplyProblem("'choices[0].logprobs.content' is not a list")
    out = []
    for i, entry in enumerate(content):
        where = f"choices[0].logprobs.content[{i}]"
        token, lp, raw = _token(entry, where)
        item: dict[str, Any] = {"token": token, "logprob": lp}
        if raw is not None:
            item["bytes"] = raw
        top = entry.get("top_logprobs") or []
        if not isinstance(top, list):
            raise ReplyProblem(f"'{where}.top_logprobs' is not a list")
        item["top"] = []
        for j, alt in enumerate(top):
            alt_token, alt_lp, alt_raw = _token(alt, f"{where}.top_logprobs[{j}]")
            item["top"].append(
                [alt_token, alt_lp] if alt_raw is None else [alt_token, alt_lp, alt_raw]
            )
        out.append(item)
    return out


def _token(entry: object, where: str) -> tuple[str, float | None, list[int] | None]:
    """(text, logprob, bytes when they are not the text's UTF-8) of one logprob entry."""
    if not isinstance(entry, Mapping) or not isinstance(entry.get("token"), str):
        raise ReplyProblem(f"'{where}' has no 'token' text")
    lp = entry.get("logprob")
    if lp is not None and (isinstance(lp, bool) or not isinstance(lp, int | float)):
        raise ReplyProblem(f"'{where}.logprob' is {type(lp).__name__}, not a number")
    raw = entry.get("bytes")
    exact = None
    valid = isinstance(raw, list) and all(isinstance(b, int) and 0 <= b < 256 for b in raw)
    if valid and bytes(raw) != entry["token"].encode("utf-8", "surrogatepass"):
        exact = list(raw)
    return entry["token"], None if lp is None else round(float(lp), LOGPROB_DECIMALS), exact
