"""The synth run's two append-only JSON-lines files, safe against a kill at any moment.

    data.jsonl     the kept records: {"id", "messages", "teacher"} (what finetune reads)
    requests.log   one line per finished request, whatever became of it (the cost/time log
                   and what a re-run skips), after a first line holding the run's settings
                   and one line per run started

A line is written whole by one write, then flushed and fsynced, by one thread. So a kill loses
at most the line being written: on open, a last line without its newline is cut off (a
warning says so); any other unreadable line is an error naming its file and line. A record is
written before its log line; a record without one (the kill fell between) is still answered.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pocketlm.common.errors import InputError
from pocketlm.common.log import get_logger

_log = get_logger("pocketlm.synth")

# outcomes of an answer request that are final: a re-run does not send it again
ANSWERED = ("kept", "duplicate_answer", "truncated", "empty")


class JsonlFile:
    """An append-only JSON-lines file: read (a cut last line repaired) and append durably."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh = None

    def read(self) -> list[dict[str, Any]]:
        """Its lines as objects; a last line cut by a kill is removed from the file first."""
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            _log.warning(
                "%s: removed a partial last line (%d bytes) left by an interrupted run",
                self.path,
                len(data) - end,
            )
            with open(self.path, "r+b") as fh:
                fh.truncate(end)
                fh.flush()
                os.fsync(fh.fileno())
            data = data[:end]
        out = []
        for i, line in enumerate(data.splitlines(), start=1):
            try:
                value = json.loads(line)
            except (ValueError, RecursionError) as exc:
                raise InputError(
                    f"unreadable line ({exc}): the file was changed outside pocketlm synth",
                    path=self.path,
                    line=i,
                    hint="fix or remove the line, or start again with --overwrite",
                ) from None
            if not isinstance(value, dict):
                raise InputError("a line is not a JSON object", path=self.path, line=i)
            out.append(value)
        return out

    def append(self, value: dict[str, Any]) -> None:
        """Write one line whole, flushed and fsynced."""
        if self._fh is None:
            self._fh = open(self.path, "ab")  # noqa: SIM115 - held open across appends
        line = json.dumps(value, ensure_ascii=False, separators=(",", ":")) + "\n"
        self._fh.write(line.encode("utf-8"))
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        """Close the file (appends reopen it)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def answer_key(text: str) -> str:
    """Two answers are the same when equal after folding case and runs of whitespace."""
    folded = " ".join(text.split()).casefold()
    return hashlib.sha256(folded.encode("utf-8")).hexdigest()[:20]


@dataclass
class SynthState:
    """What earlier runs into the same output did: settings, answered ids, topics, the log."""

    settings: dict[str, Any] | None = None
    answered: set[str] = field(default_factory=set)  # prompt ids not to send again
    answer_keys: set[str] = field(default_factory=set)  # answers kept so far
    topics: dict[str, list[str]] = field(default_factory=dict)  # topic id -> its prompts
    entries: list[dict[str, Any]] = field(default_factory=list)  # request lines, all runs
    runs: int = 0
    records: int = 0


def load_state(data: JsonlFile, log: JsonlFile) -> SynthState:
    """The state in an output's data.jsonl and requests.log (both repaired if a kill cut them)."""
    state = SynthState()
    logged: set[str] = set()
    for i, entry in enumerate(log.read(), start=1):
        kind = entry.get("kind")
        if kind == "settings":
            state.settings = entry.get("settings")
        elif kind == "run":
            state.runs += 1
        elif kind in ("answer", "topic"):
            state.entries.append(entry)
            if kind == "topic" and entry.get("outcome") == "ok":
                state.topics[str(entry.get("id"))] = list(entry.get("prompts") or [])
            elif kind == "answer" and entry.get("outcome") in ANSWERED:
                state.answered.add(str(entry.get("id")))
                logged.add(str(entry.get("id")))
        else:
            raise InputError(f"unknown line kind {kind!r}", path=log.path, line=i)
    for i, record in enumerate(data.read(), start=1):
        rid = record.get("id")
        try:
            answer = record["messages"][-1]["content"]
        except (KeyError, IndexError, TypeError):
            raise InputError("a record without an answer", path=data.path, line=i) from None
        state.records += 1
        state.answered.add(str(rid))
        state.answer_keys.add(answer_key(str(answer)))
        if rid not in logged:  # the kill fell between the record and its log line
            usage = (record.get("teacher") or {}).get("usage") or {}
            state.entries.append({"kind": "answer", "id": rid, "outcome": "kept", **usage})
    return state
