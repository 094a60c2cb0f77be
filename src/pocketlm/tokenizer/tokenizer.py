"""The Tokenizer used everywhere: a thin wrapper over a `tokenizers` byte-level BPE with our specials."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from pocketlm.common.errors import ArtifactError
from pocketlm.common.hashing import sha256_bytes
from pocketlm.tokenizer.chat_template import CHAT_TEMPLATE, chat_turns, render_chat
from pocketlm.tokenizer.special_tokens import (
    ASSISTANT,
    BOS,
    END_OF_TURN,
    EOS,
    PAD,
    SPECIAL_TOKENS,
)

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
TOKENIZER_FILES = (TOKENIZER_FILE, TOKENIZER_CONFIG_FILE, SPECIAL_TOKENS_MAP_FILE)


class Tokenizer:
    """Encode/decode text, render chats, and describe itself (vocab size, special ids, fingerprint)."""

    def __init__(self, backend, chat_template: str = CHAT_TEMPLATE) -> None:
        self.backend = backend
        self.chat_template = chat_template
        # Ids must run 0..n-1: the count must bound every id encode() returns, and serializing
        # a vocabulary with a huge id allocates for every id below it (the tokenizers library
        # aborts the process when that fails), so check before to_str() below.
        in_use = set(backend.get_vocab(with_added_tokens=True).values())
        self.vocab_size: int = backend.get_vocab_size(with_added_tokens=True)
        if len(in_use) != self.vocab_size or max(in_use, default=-1) != self.vocab_size - 1:
            raise ArtifactError(
                f"token ids must be 0..{self.vocab_size - 1} without gaps, found {len(in_use)} "
                f"distinct ids up to {max(in_use, default=-1)}"
            )
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
        self._special_id: dict[str, int] = ids
        serialized = backend.to_str()
        self.fingerprint: str = sha256_bytes(serialized.encode("utf-8"))[:16]
        # A twin backend that reads special-token text ("<|end|>") as plain bytes, for untrusted
        # text. A second instance rather than toggling the flag on `backend`, so threads encoding
        # at once never see each other's setting. The flag is not serialized: save() is unchanged.
        self._plain_backend = type(backend).from_str(serialized)
        self._plain_backend.encode_special_tokens = True

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
            with _panic_output_held() as held:
                backend = Backend.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
            raise ArtifactError(f"{path}: cannot load tokenizer ({exc})") from exc
        except BaseException as exc:
            # A Rust panic while parsing (e.g. a corrupt precompiled charsmap) surfaces as pyo3's
            # PanicException, which derives from BaseException only; its message carries what
            # the panic printed.
            if type(exc).__name__ != "PanicException":
                raise
            raise ArtifactError(f"{path}: cannot load tokenizer ({exc})") from None
        if held:  # printed without a panic: not ours to drop
            sys.stderr.write(held[0])
        # One chat template for every PocketLM model (render_chat); tokenizer_config.json carries
        # the same text for transformers.
        try:
            return cls(backend)
        except ArtifactError as exc:
            raise ArtifactError(f"{path}: {exc}") from exc

    def encode(self, text: str, *, add_bos: bool = False, parse_special: bool = True) -> list[int]:
        """Token ids of `text` (no special tokens added unless add_bos).

        With parse_special (trusted text: corpora, raw prompts) special-token text such as
        "<|end|>" becomes that token; without it (untrusted text) it is encoded as plain bytes.
        """
        backend = self.backend if parse_special else self._plain_backend
        ids = backend.encode(text, add_special_tokens=False).ids
        return [self.bos_id, *ids] if add_bos else ids

    def encode_batch(self, texts: Sequence[str], *, parse_special: bool = True) -> list[list[int]]:
        """Token ids of many texts, encoded in parallel by the Rust backend (see encode)."""
        backend = self.backend if parse_special else self._plain_backend
        # encode_batch_fast (tokenizers >= 0.21) skips character offsets we never use: ~20% faster.
        encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
        return [e.ids for e in encode(list(texts), add_special_tokens=False)]

    def encode_chat(
        self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True
    ) -> list[int]:
        """Token ids of the chat template over messages; message text never becomes special tokens.

        bos, role and end-of-turn tokens go in as ids; the text between them is encoded with
        special tokens off, as the pieces "\\n{content}" and "\\n". The backend cuts a string at
        its special tokens before pre-tokenizing, so these are exactly the pieces encoded on their
        own in render_chat's text: for messages without special-token text the ids equal
        `encode(render_chat(messages, add_generation_prompt))`.
        """
        turns = chat_turns(messages)
        pieces = self.encode_batch(["\n", *(f"\n{c}" for _, c in turns)], parse_special=False)
        if any(i in self.special_ids for piece in pieces for i in piece):
            # Impossible with the byte-level regex pre-tokenizer (it cuts "<|end|>" at the letters).
            raise ArtifactError("this tokenizer encodes plain text to special tokens; retrain it")
        newline = pieces[0]
        ids = [self.bos_id]
        for (role_token, _), body in zip(turns, pieces[1:], strict=True):
            ids += [self._special_id[role_token], *body, self.end_of_turn_id, *newline]
        if add_generation_prompt:
            ids += [self._special_id[ASSISTANT], *newline]
        return ids

    def decode(self, ids: Iterable[int], *, skip_special: bool = False) -> str:
        """Text of token ids (special tokens kept unless skip_special)."""
        return self.backend.decode(list(ids), skip_special_tokens=skip_special)

    def render_chat(
        self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True
    ) -> str:
        """The chat template applied to messages, as text (for ids use encode_chat)."""
        return render_chat(messages, add_generation_prompt)

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes a (non-special) token stands for."""
        return self.decode([token_id]).encode("utf-8", errors="surrogatepass")

    def save(self, directory: str | Path, model_max_length: int = 2048) -> None:
        """Write tokenizer.json + tokenizer_config.json + special_tokens_map.json (HF-loadable)."""
        write_tokenizer_files(self.backend, Path(directory), model_max_length, self.chat_template)


@contextlib.contextmanager
def _panic_output_held() -> Iterator[list[str]]:
    """Hold what native code writes to stderr (fd 2) during the block, e.g. the message and
    backtrace a Rust panic prints before it becomes a Python exception, so that a corrupt
    tokenizer file is one clear error line, not a backtrace. Yields a list that holds the text
    afterwards (falsy when nothing was printed)."""
    held: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield held
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read().decode("utf-8", errors="replace")
            if text:
                held.append(text)


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
