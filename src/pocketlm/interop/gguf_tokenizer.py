"""tokenizer.* metadata of a GGUF file: the vocabulary, how llama.cpp must split text, the special
ids, the chat template.

PocketLM's own tokenizers (byte-level BPE, trained here) are written as `gpt2` with the `gpt-2`
pre-tokenizer (their pre-tokenizer is GPT-2's ByteLevel regex: the type is stated, since a freshly
trained vocabulary has no hash llama.cpp's converter would recognise), PocketLM's chat template
and its end-of-turn token.

An imported model's tokenizer (a Hugging Face tokenizer.json) is written as the model brings it:
- byte-level BPE (Llama 3, Qwen, SmolLM2, Phi-4) as `gpt2` with its merges; `tokenizer.ggml.pre`
  names llama.cpp's pre-tokenizer with the same split rule, recognised from tokenizer.json's own
  pre_tokenizer (GPT-2's ByteLevel regex -> gpt-2, Llama 3's regex -> llama-bpe, Qwen2's -> qwen2,
  Phi-4's (GPT-4o) -> gpt-4o, SmolLM's single digits + ByteLevel -> smollm); any other is refused;
- SentencePiece-style BPE ("▁" for spaces, <0xNN> byte fallback: Gemma, Mistral, Phi-3) as
  `llama`: llama.cpp merges the pair whose joined token scores highest, so each token scores
  minus the rank of the first merge that makes it, which merges the pairs in tokenizer.json's
  order; add_space_prefix follows the Metaspace / Prepend("▁") rule. llama.cpp prefixes a space
  after every special token too, where transformers' prepend_scheme "first" does not;
- other kinds (Unigram, WordPiece) are refused.
Added tokens: special ones (and ones that look like control tokens, <|...|>, as llama.cpp's
converter treats them) are CONTROL, the others USER_DEFINED. Ids the model has beyond the
tokenizer's are [PAD<i>], UNUSED. llama.cpp ends generation at eos, eot and eom: eos is the
tokenizer's eos; the other end-of-sequence ids generation_config.json lists become eot and eom,
in its order (llama.cpp also stops at the usual turn-end tokens by their text: <|im_end|>,
<|eot_id|>, <end_of_turn>, <|end|>, ...).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pocketlm.common.errors import ArtifactError, UnsupportedModelError
from pocketlm.tokenizer.chat_template import CHAT_TEMPLATE

# tokenizer.json's Split regex -> llama.cpp's pre-tokenizer with the same rule (llama-vocab.cpp)
_SPLIT_PRE = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+": "llama-bpe",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+": "qwen2",
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+"
    r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"
    r"[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+": "gpt-4o",
}
_BYTE_TOKEN = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")
SPACE = "\u2581"  # SentencePiece's "▁"


def add_tokenizer(writer: Any, gguf: Any, tok: Any, vocab_size: int, directory: Path) -> list[str]:
    """Write the tokenizer.* keys for `tok` (a Tokenizer, its files in `directory`) padded to the
    model's vocab_size; returns notes on where llama.cpp will tokenize differently."""
    if tok.vocab_size > vocab_size:
        raise ArtifactError(
            f"the tokenizer has {tok.vocab_size} tokens but the model only {vocab_size} "
            "embeddings: llama.cpp needs one embedding per token"
        )
    data = json.loads((directory / "tokenizer.json").read_text(encoding="utf-8"))
    if tok.kind == "pocketlm":
        _add_own(writer, gguf, tok, vocab_size, data)
        return []
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise UnsupportedModelError(
            f"{directory / 'tokenizer.json'}: a {model.get('type')} tokenizer; GGUF export writes "
            "BPE tokenizers (byte-level or SentencePiece-style) only"
        )
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    notes: list[str] = []
    if _is_sentencepiece_style(data):
        _add_vocab(writer, gguf, tok, vocab_size, data, byte_tokens=True)
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_scores(_scores(tok, vocab_size, model.get("merges", [])))
        prefix = _space_prefix(data)
        writer.add_bool("tokenizer.ggml.add_space_prefix", prefix != "never")
        if prefix == "first":
            notes.append(
                "llama.cpp's SentencePiece tokenizer prefixes a space after every special token "
                "and before text that starts with one; this tokenizer (Metaspace, prepend_scheme "
                "'first') only at the start of text without one"
            )
        unk = model.get("unk_token")
        if unk is not None and tok.backend.token_to_id(unk) is not None:
            writer.add_unk_token_id(tok.backend.token_to_id(unk))
    else:
        pre, why = _byte_level_pre(data)
        if pre is None:
            raise UnsupportedModelError(
                f"{directory / 'tokenizer.json'}: {why}; llama.cpp has no pre-tokenizer known to "
                "split text this way, so GGUF export cannot say how to tokenize"
            )
        if data.get("normalizer"):
            notes.append(
                f"llama.cpp does not apply the tokenizer's normalizer ({data['normalizer']['type']})"
            )
        if pre == "llama-bpe" and not model.get("ignore_merges"):
            notes.append("llama.cpp's llama-bpe pre-tokenizer ignores merges for whole-word tokens")
        _add_vocab(writer, gguf, tok, vocab_size, data, byte_tokens=False)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre)
        writer.add_token_merges(merges)
    _add_special_ids(writer, tok)
    if tok.chat_template is not None:
        writer.add_chat_template(tok.chat_template)
    return notes


def _add_own(writer: Any, gguf: Any, tok: Any, vocab_size: int, data: dict[str, Any]) -> None:
    """PocketLM's own tokenizer: byte-level BPE, its special tokens and chat format."""
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    tokens, types = [], []
    for i in range(vocab_size):
        piece = tok.backend.id_to_token(i) if i < tok.vocab_size else None
        if piece is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(piece)
            types.append(gguf.TokenType.CONTROL if i in tok.special_ids else gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tok.bos_id)
    writer.add_eos_token_id(tok.eos_id)
    writer.add_pad_token_id(tok.pad_id)
    writer.add_eot_token_id(tok.end_of_turn_id)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)


def _add_vocab(
    writer: Any, gguf: Any, tok: Any, vocab_size: int, data: dict[str, Any], *, byte_tokens: bool
) -> None:
    """tokenizer.ggml.tokens and token_type of an imported tokenizer."""
    added = tok.backend.get_added_tokens_decoder()  # id -> AddedToken
    unk = (data.get("model") or {}).get("unk_token")
    tokens, types = [], []
    for i in range(vocab_size):
        piece = tok.backend.id_to_token(i) if i < tok.vocab_size else None
        if piece is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif byte_tokens and piece == unk:  # SentencePiece's unknown piece, added or not
            tokens.append(piece)
            types.append(gguf.TokenType.UNKNOWN)
        elif i in added:
            special = added[i].special or (piece.startswith("<|") and piece.endswith("|>"))
            if not special and byte_tokens:  # llama.cpp matches user-defined text with spaces
                piece = piece.replace(SPACE, " ")
            tokens.append(piece)
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(piece)
            if byte_tokens and _BYTE_TOKEN.match(piece):
                types.append(gguf.TokenType.BYTE)
            else:
                types.append(gguf.TokenType.NORMAL)
    writer.add_token_list(tokens)
    writer.add_token_types(types)


def _add_special_ids(writer: Any, tok: Any) -> None:
    """bos/eos/eot/eom/pad ids and whether llama.cpp starts every text with bos."""
    if tok.bos_id is not None:
        writer.add_bos_token_id(tok.bos_id)
    if tok.eos_id is not None:
        writer.add_eos_token_id(tok.eos_id)
    ends = [i for i in tok.generation_defaults.eos_token_ids if i != tok.eos_id]
    ends = list(dict.fromkeys(ends))
    if ends:
        writer.add_eot_token_id(ends[0])
    if len(ends) > 1:
        writer.add_eom_token_id(ends[1])
    if tok.pad_id is not None:
        writer.add_pad_token_id(tok.pad_id)
    writer.add_add_bos_token(bool(tok.add_bos))
    writer.add_add_eos_token(False)


def _is_sentencepiece_style(data: dict[str, Any]) -> bool:
    """Whether tokenizer.json spells spaces as "▁" (Metaspace, or a Replace normalizer) rather
    than byte-level."""
    text = json.dumps([data.get("pre_tokenizer"), data.get("normalizer")])
    return (
        "Metaspace" in text or SPACE in text or bool((data.get("model") or {}).get("byte_fallback"))
    )


def _space_prefix(data: dict[str, Any]) -> str:
    """Where text gets a leading "▁": "always" (each piece between added tokens: a Prepend
    normalizer, Metaspace's "always"), "first" (the start only) or "never"."""
    for part in _parts(data.get("pre_tokenizer")):
        if part.get("type") == "Metaspace":
            legacy = "always" if part.get("add_prefix_space") else "never"
            return part.get("prepend_scheme", legacy)
    normalizers = _parts(data.get("normalizer"))
    if any(p.get("type") == "Prepend" and p.get("prepend") == SPACE for p in normalizers):
        return "always"
    return "never"


def _parts(node: Any) -> list[dict[str, Any]]:
    """A pre-tokenizer or normalizer as the list of its steps (a Sequence flattened)."""
    if not isinstance(node, dict):
        return []
    if node.get("type") == "Sequence":
        key = "pretokenizers" if "pretokenizers" in node else "normalizers"
        return [p for sub in node.get(key, []) for p in _parts(sub)]
    return [node]


def _byte_level_pre(data: dict[str, Any]) -> tuple[str | None, str]:
    """(llama.cpp's pre-tokenizer name, or None with why) for a byte-level tokenizer.json."""
    steps = _parts(data.get("pre_tokenizer"))
    kinds = [s.get("type") for s in steps]
    level = [s for s in steps if s.get("type") == "ByteLevel"]
    if len(level) != 1 or level[0].get("add_prefix_space"):
        return None, f"pre_tokenizer {kinds} is not byte-level BPE without a prefix space"
    if kinds == ["ByteLevel"] and level[0].get("use_regex", True):
        return "gpt-2", ""
    digits = kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits")
    if digits and level[0].get("use_regex", True):
        return "smollm", ""
    if kinds == ["Split", "ByteLevel"] and not level[0].get("use_regex", True):
        split = steps[0]
        pattern = (split.get("pattern") or {}).get("Regex")
        if (
            split.get("behavior") == "Isolated"
            and not split.get("invert")
            and pattern in _SPLIT_PRE
        ):
            return _SPLIT_PRE[pattern], ""
        return None, f"its Split pre-tokenizer's regex {pattern!r} is not one llama.cpp has"
    return None, f"pre_tokenizer {kinds} is not one llama.cpp has"


def _scores(tok: Any, vocab_size: int, merges: list[Any]) -> list[float]:
    """SentencePiece scores from BPE merges (tokenizer.json's: "a b" or ["a", "b"]): minus the rank
    of the first merge making each token (llama.cpp then merges pairs in the same order); tokens
    no merge makes score below all."""
    rank: dict[str, int] = {}
    for i, merge in enumerate(merges):
        rank.setdefault(merge.replace(" ", "", 1) if isinstance(merge, str) else "".join(merge), i)
    floor = -float(len(merges) + 1)
    scores = []
    for i in range(vocab_size):
        piece = tok.backend.id_to_token(i) if i < tok.vocab_size else None
        if piece is None:
            scores.append(-1e4 + floor)
        elif piece in rank:
            scores.append(-float(rank[piece]))
        else:
            scores.append(0.0 if len(piece) == 1 else floor)
    return scores
