"""Incremental detokenization for streaming: only whole characters ever leave it."""

from __future__ import annotations

from pocketlm.tokenizer.tokenizer import Tokenizer


class StreamDecoder:
    """Incremental detokenizer: feed ids, get only complete UTF-8 text (no split characters)."""

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special = skip_special
        self._ids: list[int] = []
        self._emitted = 0  # characters of the decoded buffer already returned
        self._waiting = 0  # tokens pushed since text was last returned

    def push(self, token_id: int) -> str:
        """Add one token; return the new printable text (may be '' while a character is incomplete)."""
        self._ids.append(token_id)
        self._waiting += 1
        text = self.tokenizer.decode(self._ids, skip_special=self.skip_special)
        # A UTF-8 character spans at most 4 bytes, so at most 3 more tokens can complete it;
        # after that the bytes are invalid for good and are emitted as U+FFFD.
        if text.endswith("\ufffd") and self._waiting < 4:
            return ""
        new = text[self._emitted :]
        self._emitted = len(text)
        self._waiting = 0
        if len(self._ids) > 64:
            # Keep the buffer short: restart at this character boundary (byte-level BPE concatenates).
            self._ids, self._emitted = [], 0
        return new

    def flush(self) -> str:
        """Whatever is left (an incomplete character becomes U+FFFD)."""
        text = self.tokenizer.decode(self._ids, skip_special=self.skip_special)
        new = text[self._emitted :]
        self._ids, self._emitted, self._waiting = [], 0, 0
        return new
