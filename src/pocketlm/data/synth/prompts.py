"""The requests synth sends: prompts read from files or written by the teacher from seed topics,
each with a stable id, de-duplicated.

A prompts file is
    .txt            one prompt per line (blank lines skipped)
    .jsonl / .json  records (JSON lines, or one JSON array): {"prompt": TEXT}, {"messages": [...]}
                    or Alpaca's {"instruction": ..., "input": ...}; an optional "system" text.
                    A conversation's trailing assistant turns are dropped, so an existing chat
                    data set can be answered again by a stronger teacher.
A prompt's id hashes its messages with case and runs of whitespace folded: two prompts that
differ only there are one prompt (the first one is sent).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pocketlm.common.errors import InputError

Messages = list[dict[str, str]]
_ROLES = ("system", "user", "assistant")
_SUFFIXES = (".txt", ".jsonl", ".ndjson", ".json")


@dataclass(frozen=True)
class Prompt:
    """One request: its messages (ending with a user turn), its id and where it came from."""

    id: str
    messages: Messages = field(compare=False)
    origin: str = field(default="", compare=False)  # file:line, or topic:NAME
    topic: str | None = field(default=None, compare=False)


def prompt_id(messages: Sequence[Mapping[str, str]]) -> str:
    """A stable id for a conversation: case and whitespace runs folded, then hashed."""
    folded = [[m["role"], " ".join(m["content"].split()).casefold()] for m in messages]
    text = json.dumps(folded, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


def make_prompt(
    messages: Messages, system: str | None, origin: str, topic: str | None = None
) -> Prompt:
    """A Prompt of these messages, with `system` first unless they have a system turn."""
    if system and not any(m["role"] == "system" for m in messages):
        messages = [{"role": "system", "content": system}, *messages]
    return Prompt(prompt_id(messages), messages, origin, topic)


def read_prompt_files(paths: Iterable[str | Path], system: str | None = None) -> list[Prompt]:
    """Every prompt of the files in order (duplicates kept: see unique_prompts)."""
    out: list[Prompt] = []
    for path in map(Path, paths):
        if not path.is_file():
            raise InputError("no such file", path=path, hint="--prompts takes .txt or .jsonl files")
        suffix = path.suffix.lower()
        if suffix not in _SUFFIXES:
            raise InputError(
                f"unsupported prompts file type {suffix or '(none)'}",
                path=path,
                hint="one prompt per line in a .txt file, or .jsonl/.json records",
            )
        for line_no, messages in _read_file(path, suffix):
            out.append(make_prompt(messages, system, f"{path}:{line_no}"))
    return out


def _read_file(path: Path, suffix: str) -> Iterable[tuple[int, Messages]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"not UTF-8 text ({exc.reason})", path=path) from None
    if suffix == ".txt":
        for i, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                yield i, [{"role": "user", "content": line.strip()}]
        return
    if suffix == ".json" and text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"invalid JSON ({exc.msg})", path=path, line=exc.lineno) from None
        for i, record in enumerate(records, start=1):
            yield i, _record_messages(record, path, None, f"record {i}")
        return
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"invalid JSON ({exc.msg})", path=path, line=i) from None
        yield i, _record_messages(record, path, i, "the record")


def _record_messages(record: object, path: Path, line: int | None, what: str) -> Messages:
    """A prompt record's messages, ending with a user turn (InputError naming the field)."""

    def bad(reason: str) -> InputError:
        return InputError(f"{what}: {reason}", path=path, line=line)

    if not isinstance(record, Mapping):
        raise bad(f"is {type(record).__name__}, not an object")
    if "messages" in record:
        raw = record["messages"]
        if not isinstance(raw, list) or not raw:
            raise bad("'messages' must be a non-empty list")
        messages = []
        for j, m in enumerate(raw):
            ok = isinstance(m, Mapping) and m.get("role") in _ROLES
            if not ok or not isinstance(m.get("content"), str):
                raise bad(f"'messages[{j}]' needs a role ({', '.join(_ROLES)}) and text content")
            messages.append({"role": m["role"], "content": m["content"]})
        while messages and messages[-1]["role"] == "assistant":
            messages.pop()  # an answered conversation: the teacher answers it again
    elif "prompt" in record:
        messages = [{"role": "user", "content": _text(record["prompt"], "prompt", bad)}]
    elif "instruction" in record:
        request = _text(record["instruction"], "instruction", bad)
        extra = record.get("input")
        if extra:
            request += "\n\n" + _text(extra, "input", bad)
        messages = [{"role": "user", "content": request}]
    else:
        fields = ", ".join(sorted(map(str, record))) or "none"
        raise bad(f"no prompt field (it has: {fields}); expected prompt, messages or instruction")
    if not messages or messages[-1]["role"] != "user" or not messages[-1]["content"].strip():
        raise bad("the conversation must end with a non-empty user turn")
    system = record.get("system")
    if system and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": _text(system, "system", bad)})
    return messages


def _text(value: object, name: str, bad) -> str:
    if not isinstance(value, str):
        raise bad(f"'{name}' is {type(value).__name__}, not text")
    return value


def unique_prompts(prompts: Iterable[Prompt]) -> tuple[list[Prompt], int]:
    """(the prompts with each id once, the first kept; how many duplicates were dropped)."""
    seen: set[str] = set()
    out, dropped = [], 0
    for p in prompts:
        if p.id in seen:
            dropped += 1
        else:
            seen.add(p.id)
            out.append(p)
    return out, dropped


# ---- prompts from seed topics ------------------------------------------------------------------
TOPIC_REQUEST = (
    "Write {n} diverse requests that a user might send to an AI assistant about {topic}. "
    "Vary their length, style and difficulty; each must make sense on its own. "
    "Write one request per line, with no numbering, no quotes and no other text."
)
# a list marker a teacher puts in front of a line anyway: "1.", "2)", "(3)", "-", "*", "•"
_MARKER = re.compile(r"^\s*(?:\(?\d{1,3}[.):]|[-*\u2022])\s+")
_QUOTES = "\"'\u201c\u201d\u2018\u2019`"


def topic_id(topic: str, n: int) -> str:
    """A stable id for the request asking the teacher for n prompts about a topic."""
    text = json.dumps(["topic", " ".join(topic.split()).casefold(), n], ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


def topic_messages(topic: str, n: int) -> Messages:
    """The request asking the teacher for n user requests about `topic`."""
    return [{"role": "user", "content": TOPIC_REQUEST.format(n=n, topic=topic.strip())}]


def parse_topic_reply(text: str, n: int) -> list[str]:
    """Up to n requests from the teacher's reply: one a line, list markers and quotes stripped,
    a line introducing the list ("Here are ...:") and repeated lines dropped."""
    out: list[str] = []
    seen: set[str] = set()
    for line in text.splitlines():
        line = _MARKER.sub("", line).strip().strip(_QUOTES).strip()
        if not line or line.endswith(":"):
            continue
        key = " ".join(line.split()).casefold()
        if key not in seen:
            seen.add(key)
            out.append(line)
        if len(out) == n:
            break
    return out
