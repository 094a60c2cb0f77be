"""Fine-tuning record formats, detected per record from its fields and normalised to messages.

    chat               {"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}
    sharegpt           {"conversations": [{"from": "system"|"human"|"gpt", "value": ...}, ...]}
    prompt_completion  {"prompt": ..., "completion": ...}  (text, or lists of chat messages)
    alpaca             {"instruction": ..., "input": ... (optional), "output": ...}

prompt_completion and alpaca records may carry a "system" text. `messages` and `conversations`
may arrive as JSON text (a CSV column). Content is text, or a list of {"type": "text", "text": ...} parts
(joined). Messages keep only role and content. A record without an assistant turn has nothing
to learn from and is refused. Pure: a problem is a RecordProblem (kind, reason) that the
reader turns into a located bad record.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

CHAT, SHAREGPT, PROMPT_COMPLETION, ALPACA = "chat", "sharegpt", "prompt_completion", "alpaca"
FORMATS = (CHAT, SHAREGPT, PROMPT_COMPLETION, ALPACA)
ROLES = ("system", "user", "assistant")
# ShareGPT's speaker names (and the chat names some exports use) -> roles
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
}
EXPECTED = (
    "messages (chat), conversations (ShareGPT), prompt + completion, "
    "or instruction (+ input) + output (Alpaca)"
)

Messages = list[dict[str, str]]


class RecordProblem(Exception):
    """Why one record cannot be used: a kind to count it by and a reason naming the field."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


def detect_format(record: object) -> str:
    """The format a record's fields say it is in (RecordProblem naming the fields when none)."""
    if not isinstance(record, Mapping):
        raise RecordProblem("unknown_format", f"a record is an object, not {type(record).__name__}")
    if "messages" in record:
        return CHAT
    if "conversations" in record:
        return SHAREGPT
    if "prompt" in record and "completion" in record:
        return PROMPT_COMPLETION
    if "instruction" in record and "output" in record:
        return ALPACA
    fields = ", ".join(sorted(map(str, record))) or "none"
    raise RecordProblem(
        "unknown_format",
        f"no fine-tuning format matches the fields ({fields}); expected {EXPECTED}",
    )


def to_messages(record: object) -> tuple[str, Messages]:
    """(format, messages) of one record, whatever its format (RecordProblem when it is bad)."""
    kind = detect_format(record)
    assert isinstance(record, Mapping)
    if kind == CHAT:
        messages = _message_list(record["messages"], "messages", "role", "content", None)
    elif kind == SHAREGPT:
        messages = _message_list(
            record["conversations"], "conversations", "from", "value", SHAREGPT_ROLES
        )
    elif kind == PROMPT_COMPLETION:
        messages = [
            *_system(record),
            *_side(record["prompt"], "prompt", "user"),
            *_side(record["completion"], "completion", "assistant"),
        ]
    else:
        instruction = _text(record["instruction"], "instruction")
        extra = record.get("input")
        extra = "" if extra is None else _text(extra, "input")
        request = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        output = _text(record["output"], "output")
        messages = [
            *_system(record),
            {"role": "user", "content": request},
            {"role": "assistant", "content": output},
        ]
    if not any(m["role"] == "assistant" for m in messages):
        raise RecordProblem(
            "no_assistant_turn", f"the {kind} record has no assistant turn: nothing to learn"
        )
    return kind, messages


def _system(record: Mapping) -> Messages:
    value = record.get("system")
    if value is None or value == "":
        return []
    return [{"role": "system", "content": _text(value, "system")}]


def _side(value: object, field: str, role: str) -> Messages:
    """A prompt or completion: text (one message of `role`) or a list of chat messages."""
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    return _message_list(value, field, "role", "content", None)


def _message_list(
    value: object, field: str, role_key: str, content_key: str, names: dict[str, str] | None
) -> Messages:
    if isinstance(value, str):  # a JSON column of a CSV file
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise RecordProblem(
                "invalid_json", f"'{field}' is text but not a JSON list ({exc.msg})"
            ) from None
    if not isinstance(value, list) or not value:
        what = "an empty list" if isinstance(value, list) else type(value).__name__
        raise RecordProblem("wrong_type", f"'{field}' must be a non-empty list, got {what}")
    messages = []
    for i, item in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(item, Mapping):
            raise RecordProblem("wrong_type", f"'{where}' is {type(item).__name__}, not an object")
        # ShareGPT exports sometimes use role/content inside "conversations"
        keys = (role_key, content_key) if role_key in item else ("role", "content")
        if keys[0] not in item or keys[1] not in item:
            found = ", ".join(sorted(map(str, item))) or "none"
            raise RecordProblem(
                "missing_field",
                f"'{where}' needs '{role_key}' and '{content_key}' (it has: {found})",
            )
        name = item[keys[0]]
        role = (names or {}).get(name, name) if isinstance(name, str) else name
        if role not in ROLES:
            known = ", ".join(names or ROLES)
            raise RecordProblem(
                "unknown_role", f"'{where}.{keys[0]}' is {name!r}; fine-tuning reads {known}"
            )
        messages.append({"role": role, "content": _text(item[keys[1]], f"{where}.{keys[1]}")})
    return messages


def _text(value: object, field: str) -> str:
    """Text content: a string, or a list of {"type": "text", "text": ...} parts joined."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(
        isinstance(p, Mapping) and p.get("type") == "text" and isinstance(p.get("text"), str)
        for p in value
    ):
        return "".join(p["text"] for p in value)
    kind = "null" if value is None else type(value).__name__
    raise RecordProblem("wrong_type", f"'{field}' is {kind}, not text")
