"""The Tokenizer used everywhere: a thin wrapper over a `tokenizers` byte-level BPE with our specials."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from pocketlm.common.errors import ArtifactError
from pocketlm.common.hashing import sha256_bytes
from pocketlm.tokenizer.chat_template import CHAT_TEMPLATE, render_chat
from pocketlm.tokenizer.special_tokens import BOS, END_OF_TURN, EOS, PAD, SPECIAL_TOKENS

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
TOKENIZER_FILES = (TOKENIZER_FILE, TOKENIZER_CONFIG_FILE, SPECIAL_TOKENS_MAP_FILE)


class Tokenizer:
    """Encode/decode text, render chats, and describe itself (vocab size, special ids, fingerprint)."""

    def __init__(self, backend, chat_template: str = CHAT_TEMPLATE) -> None:
        self.backend = backend
        self.chat_template = chat_template
        self.vocab_size: int = backend.get_vocab_size(with_added_tokens=True)
        ids = {tok: backend.token_to_id(tok) for tok in SPECIAL_TOKENS}
        missing = [t for t, i in ids.items() if i is None]
        if missing:
            raise ArtifactError(
                f"tokenizer lacks the special tokens {missing}; train it with `pocketlm tokenizer train`"
            )
        self.pad_id: int = ids[PAD]
        self.bos_id: int = ids[BOS]
        self.eos_id: int = ids[EOS]
        self.end_of_turn_id: int = ids[END_OF_TURN]
        self.special_ids: frozenset[int] = frozenset(ids.values())
        self.fingerprint: str = sha256_bytes(backend.to_str().encode("utf-8"))[:16]

    @classmethod
    def load(cls, directory: str | Path) -> Tokenizer:
        """Load from a directory holding tokenizer.json (a tokenizer artifact or a model checkpoint)."""
        from tokenizers import Tokenizer as Backend

        path = Path(directory) / TOKENIZER_FILE
        if not path.is_file():
            raise ArtifactError(
                f"{directory}: no {TOKENIZER_FILE}; train one with `pocketlm tokenizer train`"
            )
        try:
            backend = Backend.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
            raise ArtifactError(f"{path}: cannot load tokenizer ({exc})") from exc
        # One chat template for every PocketLM model (render_chat); tokenizer_config.json carries
        # the same text for transformers.
        return cls(backend)

    def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
        """Token ids of `text` (no special tokens added unless add_bos)."""
        ids = self.backend.encode(text, add_special_tokens=False).ids
        return [self.bos_id, *ids] if add_bos else ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of many texts, encoded in parallel by the Rust backend."""
        # encode_batch_fast (tokenizers >= 0.21) skips character offsets we never use: ~20% faster.
        encode = getattr(self.backend, "encode_batch_fast", self.backend.encode_batch)
        return [e.ids for e in encode(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int], *, skip_special: bool = False) -> str:
        """Text of token ids (special tokens kept unless skip_special)."""
        return self.backend.decode(list(ids), skip_special_tokens=skip_special)

    def render_chat(
        self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True
    ) -> str:
        """The chat template applied to messages (see tokenizer.chat_template)."""
        return render_chat(messages, add_generation_prompt)

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes a (non-special) token stands for."""
        return self.decode([token_id]).encode("utf-8", errors="surrogatepass")

    def save(self, directory: str | Path, model_max_length: int = 2048) -> None:
        """Write tokenizer.json + tokenizer_config.json + special_tokens_map.json (HF-loadable)."""
        write_tokenizer_files(self.backend, Path(directory), model_max_length, self.chat_template)


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


def write_tokenizer_files(
    backend, directory: Path, model_max_length: int, chat_template: str = CHAT_TEMPLATE
) -> None:
    """Save `backend` as HF-compatible files in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    backend.save(str(directory / TOKENIZER_FILE))
    specials = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD, "unk_token": None}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **specials,
        "additional_special_tokens": [t for t in SPECIAL_TOKENS if t not in (BOS, EOS, PAD)],
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
        "add_bos_token": True,
        "add_eos_token": False,
        "chat_template": chat_template,
    }
    (directory / TOKENIZER_CONFIG_FILE).write_text(
        json.dumps(config, indent=2) + "\n", encoding="utf-8"
    )
    smap = {k: v for k, v in specials.items() if v is not None}
    smap["additional_special_tokens"] = config["additional_special_tokens"]
    (directory / SPECIAL_TOKENS_MAP_FILE).write_text(
        json.dumps(smap, indent=2) + "\n", encoding="utf-8"
    )
