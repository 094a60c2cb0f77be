"""The context check on prompt text before it is tokenized.

One token stands for at most `max_token_bytes` bytes of UTF-8 text, so a prompt of more than
context_length x max_token_bytes bytes is more tokens than the context holds, whatever it says.
Refusing it by its size spares the tokenizer a long prompt (the body cap allows a megabyte) that
the token check would refuse anyway.
"""

from __future__ import annotations

from collections.abc import Sequence

from pocketlm.serve.openai_protocol import ProtocolError
from pocketlm.tokenizer.token_bytes import BYTE_DECODER
from pocketlm.tokenizer.tokenizer import Tokenizer


def max_token_bytes(tokenizer: Tokenizer) -> int | None:
    """The most bytes of text one token stands for; None when the tokenizer normalizes text first
    (a normalizer may shrink text, so its size would bound nothing)."""
    backend = tokenizer.backend
    if getattr(backend, "normalizer", None) is not None:
        return None
    longest = 1
    for piece in backend.get_vocab(with_added_tokens=True):
        if all(c in BYTE_DECODER for c in piece):  # byte-level piece: one character a byte
            size = len(piece)
        else:  # added tokens and other pieces: their text (never less than what they stand for)
            size = len(piece.encode("utf-8", "surrogatepass"))
        longest = max(longest, size)
    return longest


class PromptBound:
    """Refuses prompt text too long for the context, by its size in bytes, before tokenizing."""

    def __init__(self, tokenizer: Tokenizer, context_length: int) -> None:
        self.context_length = context_length
        self.token_bytes = max_token_bytes(tokenizer)
        self.max_bytes = None if self.token_bytes is None else context_length * self.token_bytes

    def check(self, texts: Sequence[str], param: str) -> None:
        """ProtocolError (400 context_length_exceeded) when `texts` together cannot fit."""
        if self.max_bytes is None:
            return
        size_bytes = 0
        for text in texts:
            # A character is at least a byte: a long text is refused without encoding it.
            size_bytes += len(text) if len(text) > self.max_bytes else len(text.encode("utf-8"))
            if size_bytes > self.max_bytes:
                break
        if size_bytes > self.max_bytes:
            context = self.context_length
            raise ProtocolError(
                f"This model's maximum context length is {context} tokens. However, your "
                f"{param} has more than {self.max_bytes} bytes of text, more than {context} "
                f"tokens can hold (a token is at most {self.token_bytes} bytes). Please reduce "
                f"the length of the {param}.",
                param=param,
                code="context_length_exceeded",
            )
