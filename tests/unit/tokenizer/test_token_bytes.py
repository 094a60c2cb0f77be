"""Exact token bytes: the pieces of byte-level BPE and SentencePiece read as bytes, the same
bytes the server sends in logprobs for every id, and the reverse map back to ids."""

from __future__ import annotations

from pocketlm.serve.openai_responses import TokenTexts
from pocketlm.tokenizer.token_bytes import is_byte_level, piece_bytes, vocab_bytes
from pocketlm.tokenizer.tokenizer import Tokenizer


def test_pieces_of_each_kind_read_as_their_bytes():
    assert piece_bytes("Ġcat", True) == b" cat"  # byte-level BPE: "Ġ" is the space byte
    assert piece_bytes("Ã©", True) == "é".encode()  # the two bytes of é
    assert piece_bytes("<0x0A>", True) == b"<0x0A>"  # text in a byte-level vocabulary
    assert piece_bytes("Ωmega", True) is None  # not a byte-level piece: the caller decodes it
    assert piece_bytes("<0x0A>", False) == b"\n"  # SentencePiece byte fallback
    assert piece_bytes("▁naïve", False) == " naïve".encode()  # SentencePiece's space mark


def test_every_id_has_the_bytes_the_server_sends_and_maps_back(synthetic_pipeline):
    tokenizer = Tokenizer.load(synthetic_pipeline["tokenizer"])
    assert is_byte_level(tokenizer)
    vb = vocab_bytes(tokenizer)
    texts = TokenTexts(tokenizer)
    assert len(vb.table) == tokenizer.vocab_size
    for token_id, raw in enumerate(vb.table):
        assert raw == bytes(texts.get(token_id)[1]), token_id
        assert vb.table[vb.index[raw]] == raw
    ids = tokenizer.encode("a naïve café 🙂", parse_special=False)
    assert b"".join(vb.table[i] for i in ids) == "a naïve café 🙂".encode()
    assert vb.index[vb.table[tokenizer.end_of_turn_id]] == tokenizer.end_of_turn_id
