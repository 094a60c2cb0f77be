"""The exact bytes each token id stands for, and the reverse map (bytes -> id).

`Tokenizer.decode([id])` cannot say what a token that is part of a character stands for (it
shows U+FFFD), so the bytes are read off the vocabulary's pieces: a byte-level BPE piece spells
each byte as one character of GPT-2's 256-symbol alphabet (BYTE_DECODER undoes it); a
SentencePiece byte-fallback piece is "<0xNN>"; a SentencePiece word piece marks a space with
"▁". Special tokens stand for their text. Black-box distillation maps a teacher's alternatives
(given as bytes by an OpenAI-compatible API) to a student's ids with these.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from pocketlm.tokenizer.tokenizer import Tokenizer

_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_SPACE_MARK = "\u2581"  # SentencePiece's "▁"


def _byte_decoder() -> dict[str, int]:
    """The inverse of GPT-2's byte-to-unicode map that byte-level BPE token strings are written in."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


BYTE_DECODER = _byte_decoder()  # a byte-level BPE piece character -> the byte it stands for


def piece_bytes(piece: str, byte_level: bool) -> bytes | None:
    """The bytes a vocabulary piece stands for, in a byte-level BPE vocabulary or another
    (SentencePiece's); None where the piece does not say (the caller decodes the token)."""
    if byte_level:
        return (
            bytes(BYTE_DECODER[c] for c in piece) if all(c in BYTE_DECODER for c in piece) else None
        )
    fallback = _BYTE_PIECE.fullmatch(piece)
    if fallback:
        return bytes([int(fallback.group(1), 16)])
    return piece.replace(_SPACE_MARK, " ").encode("utf-8")


def is_byte_level(tokenizer: Tokenizer) -> bool:
    """Whether the tokenizer's decoder is byte-level (its pieces spell bytes as characters)."""
    decoder = json.loads(tokenizer.backend.to_str()).get("decoder") or {}
    parts = decoder.get("decoders") or [decoder]
    return any(isinstance(d, dict) and d.get("type") == "ByteLevel" for d in parts)


def id_bytes(tokenizer: Tokenizer, token_id: int, byte_level: bool) -> bytes:
    """The exact bytes of one id: a special token its text, another its vocabulary piece
    (`byte_level`: is_byte_level(tokenizer), worked out once by the caller)."""
    piece = tokenizer.backend.id_to_token(token_id)
    raw = None
    if piece is not None and token_id not in tokenizer.special_ids:
        raw = piece_bytes(piece, byte_level)
    if raw is None:
        raw = tokenizer.decode([token_id]).encode("utf-8", "surrogatepass")
    return raw


def token_bytes_table(tokenizer: Tokenizer) -> list[bytes]:
    """(vocab,) the exact bytes of every id: special tokens their text, others their piece."""
    byte_level = is_byte_level(tokenizer)
    return [id_bytes(tokenizer, i, byte_level) for i in range(tokenizer.vocab_size)]


@dataclass(frozen=True)
class VocabBytes:
    """A tokenizer's ids as bytes (`table[id]`) and back (`index[bytes]`: the lowest id of
    those bytes, a plain token before a special one)."""

    table: list[bytes]
    index: dict[bytes, int]


def vocab_bytes(tokenizer: Tokenizer) -> VocabBytes:
    """Both directions of the tokenizer's id <-> bytes map."""
    table = token_bytes_table(tokenizer)
    index: dict[bytes, int] = {}
    specials = tokenizer.special_ids
    for plain_first in (True, False):
        for token_id, raw in enumerate(table):
            if raw and (token_id not in specials) == plain_first:
                index.setdefault(raw, token_id)
    return VocabBytes(table, index)
