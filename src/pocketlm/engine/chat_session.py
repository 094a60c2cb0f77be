"""A chat conversation over the generation engine: history, the context window, streamed replies.

The prompt is always the model's chat template (`Tokenizer.encode_chat`: PocketLM's own, or an
imported model's Jinja template; text typed in a message never becomes a control token) over the
system message and the turns that fit: when the history outgrows the context, the oldest turns leave the window (they
stay in `messages` and in saved files) and the reply says how many were dropped.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pocketlm.common.errors import InputError
from pocketlm.engine.generation import GenerationEngine
from pocketlm.engine.sampling import SamplingParams


class ChatReply:
    """A reply being generated: iterate for text pieces; it joins the history when it ends.

    Closing it early (or interrupting the iteration) stops generation and keeps the partial text.
    """

    def __init__(self, session: ChatSession, chunks: Iterator, dropped: int) -> None:
        self.session = session
        self.dropped = dropped  # messages that left the context window for this reply
        self.text = ""
        self.finish_reason: str | None = None
        self.generated_tokens = 0
        self._chunks = chunks
        self._recorded = False

    @property
    def interrupted(self) -> bool:
        """True when the reply was stopped before the model finished it."""
        return self._recorded and self.finish_reason is None

    def __iter__(self) -> Iterator[str]:
        try:
            for chunk in self._chunks:
                self.generated_tokens += len(chunk.token_ids)
                if chunk.finish_reason is not None:
                    self.finish_reason = chunk.finish_reason
                if chunk.text:
                    self.text += chunk.text
                    yield chunk.text
        finally:
            self.close()

    def close(self) -> None:
        """Stop generating (if still going) and record the reply in the history once."""
        if self._recorded:
            return
        self._recorded = True
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()
        self.session.messages.append({"role": "assistant", "content": self.text})


class ChatSession:
    """Messages, the system prompt and the context window of one conversation."""

    def __init__(
        self,
        engine: GenerationEngine,
        params: SamplingParams,
        *,
        system: str | None = None,
    ) -> None:
        self.engine = engine
        self.params = params
        self.system = system or None
        self.messages: list[dict[str, str]] = []  # user/assistant turns, oldest first
        self.window_start = 0  # messages before this index no longer fit the context

    @property
    def context_length(self) -> int:
        """The model's context in tokens."""
        return self.engine.backend.context_length

    def reset(self) -> None:
        """Forget the conversation (the system prompt stays)."""
        self.messages = []
        self.window_start = 0

    def set_system(self, text: str | None) -> None:
        """Set (or with empty text clear) the system prompt for the next replies."""
        self.system = (text or "").strip() or None

    def _encode(self, messages: list[dict[str, str]]) -> list[int]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return self.engine.tokenizer.encode_chat(head + messages, add_generation_prompt=True)

    def _prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        return len(self._encode(messages))

    def _fit(self, pending: dict[str, str]) -> tuple[list[dict[str, str]], int]:
        """The window's messages plus `pending` that fit with room for a reply; how many dropped."""
        reserve = max(1, min(self.params.max_new_tokens, self.context_length // 2))
        start = self.window_start
        window = [*self.messages[start:], pending]
        dropped = 0
        while self._prompt_tokens(window) + reserve > self.context_length and len(window) > 1:
            take = 2 if len(window) > 2 and window[1]["role"] == "assistant" else 1
            window = window[take:]
            dropped += take
        size = self._prompt_tokens(window)
        if size > self.context_length - 1:
            raise InputError(
                f"the message needs {size} tokens with the chat template, but the model's "
                f"context is {self.context_length} tokens",
                hint="send a shorter message (or a shorter /system prompt)",
            )
        return window, dropped

    def send(self, text: str) -> ChatReply:
        """Add a user message and start the reply (InputError when it cannot fit the context)."""
        pending = {"role": "user", "content": text}
        window, dropped = self._fit(pending)
        ids = self.engine.encode_prompt(self._encode(window), add_bos=False)  # starts with bos
        self.messages.append(pending)
        self.window_start = len(self.messages) - len(window)
        return ChatReply(self, self.engine.generate(ids, self.params, add_bos=False), dropped)

    def to_dict(self) -> dict[str, Any]:
        """The conversation as JSON-ready data (all messages, and where the context window starts)."""
        messages = ([{"role": "system", "content": self.system}] if self.system else []) + [
            dict(m) for m in self.messages
        ]
        return {
            "messages": messages,
            "context_window_start": self.window_start + (1 if self.system else 0),
            "sampling": asdict(self.params),
        }

    def save(self, path: str | Path) -> Path:
        """Write the conversation as JSON (UTF-8) and return the path."""
        out = Path(path).expanduser()
        if out.parent and not out.parent.exists():
            raise InputError(f"cannot save to {out}: the folder {out.parent} does not exist")
        data = json.dumps(self.to_dict(), ensure_ascii=False, indent=2) + "\n"
        out.write_text(data, encoding="utf-8")
        return out
