"""The special tokens every PocketLM tokenizer has, at fixed ids 0..6."""

from __future__ import annotations

PAD = "<|pad|>"
BOS = "<|bos|>"  # starts every document and every prompt
EOS = "<|endoftext|>"  # ends every document
SYSTEM = "<|system|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
END_OF_TURN = "<|end|>"  # closes one chat message

SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, SYSTEM, USER, ASSISTANT, END_OF_TURN)
ROLE_TOKENS = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}
