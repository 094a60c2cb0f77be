"""The Tokenizer used everywhere: a thin wrapper over a `tokenizers` tokenizer and its chat format.

Two kinds, one interface. PocketLM's own tokenizers (byte-level BPE, the fixed special tokens of
special_tokens.py) use THE chat template of chat_template.py. A Hugging Face model folder's
tokenizer (tokenizer.json, tokenizer_config.json, special_tokens_map.json, chat_template.jinja,
generation_config.json) keeps its own special tokens, its bos rule, every end-of-sequence id and
its Jinja chat template (jinja_chat.py). Chat, the server and SFT call `render_chat` and
`encode_chat` and never need to know which kind they hold.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pocketlm.common.errors import ArtifactError, InputError
from pocketlm.common.hashing import sha256_bytes
from pocketlm.tokenizer.chat_template import CHAT_TEMPLATE, chat_turns, render_chat
from pocketlm.tokenizer.generation_config import (
    GENERATION_CONFIG_FILE,
    GenerationDefaults,
    read_generation_config,
)
from pocketlm.tokenizer.hf_files import (
    CHAT_TEMPLATE_FILE,
    CHAT_TEMPLATE_JSON_FILE,
    SPECIAL_TOKENS_MAP_FILE,
    TOKENIZER_CONFIG_FILE,
    TokenizerSettings,
    read_tokenizer_settings,
)
from pocketlm.tokenizer.special_tokens import (
    ASSISTANT,
    BOS,
    END_OF_TURN,
    EOS,
    PAD,
    SPECIAL_TOKENS,
)

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_FILES = (TOKENIZER_FILE, TOKENIZER_CONFIG_FILE, SPECIAL_TOKENS_MAP_FILE)
# What a model folder from Hugging Face may add: the files an import copies when present.
HF_TOKENIZER_FILES = (
    *TOKENIZER_FILES,
    CHAT_TEMPLATE_FILE,
    CHAT_TEMPLATE_JSON_FILE,
    GENERATION_CONFIG_FILE,
)


class Tokenizer:
    """Encode/decode text, render chats, and describe itself (vocab size, special ids, stop ids,
    fingerprint).

    `Tokenizer(backend)` is PocketLM's own kind; with `settings` (read from a Hugging Face
    folder by `load`) it is an imported one. Ids that may be absent in an imported tokenizer
    (bos, pad, end of turn) are None there.
    """

    def __init__(
        self,
        backend,
        chat_template: str | None = CHAT_TEMPLATE,
        *,
        settings: TokenizerSettings | None = None,
        generation: GenerationDefaults | None = None,
    ) -> None:
        self.backend = backend
        self.generation_defaults = generation or GenerationDefaults()
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
        serialized = backend.to_str()
        self.fingerprint: str = sha256_bytes(serialized.encode("utf-8"))[:16]
        self._plain_backend = _plain_twin(type(backend), serialized)
        self._jinja = None
        if settings is None:
            self._init_own(chat_template)
        else:
            self._init_imported(settings)
        # Generation stops at any of these: eos, the end of a chat turn, and every id
        # generation_config.json lists (Llama 3.2: end of text, of message and of turn).
        ends = {self.eos_id, self.end_of_turn_id, *self.generation_defaults.eos_token_ids}
        self.stop_ids: frozenset[int] = frozenset(i for i in ends if i is not None)

    def _init_own(self, chat_template: str | None) -> None:
        backend = self.backend
        ids = {tok: backend.token_to_id(tok) for tok in SPECIAL_TOKENS}
        missing = [t for t, i in ids.items() if i is None]
        if missing:
            raise ArtifactError(
                f"tokenizer lacks the special tokens {missing}; train it with `pocketlm tokenizer train`"
            )
        self.kind = "pocketlm"
        self.chat_template = chat_template
        self.pad_id: int | None = ids[PAD]
        self.bos_id: int | None = ids[BOS]
        self.eos_id: int | None = ids[EOS]
        self.end_of_turn_id: int | None = ids[END_OF_TURN]
        self.add_bos = True  # every document and prompt starts with <|bos|>
        self.special_ids: frozenset[int] = frozenset(ids.values())
        self.special_tokens = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD}
        self._special_id: dict[str, int] = ids

    def _init_imported(self, settings: TokenizerSettings) -> None:
        from pocketlm.tokenizer import jinja_chat

        backend = self.backend
        self.kind = "imported"
        self.special_tokens = dict(settings.special_tokens)

        def token_id(key: str, required: bool) -> int | None:
            text = settings.special_tokens.get(key)
            found = None if text is None else backend.token_to_id(text)
            if text is not None and found is None and required:
                raise ArtifactError(
                    f"{TOKENIZER_CONFIG_FILE} names {key} {text!r}, which is not a token of it"
                )
            return found

        self.bos_id = token_id("bos_token", True)
        self.eos_id = token_id("eos_token", True)
        self.pad_id = token_id("pad_token", False)
        self.end_of_turn_id = None  # the template's turn end is a stop id when eos lists it
        added = backend.get_added_tokens_decoder()  # id -> AddedToken
        named = {token_id(k, False) for k in settings.special_tokens}
        self.special_ids = frozenset({i for i, t in added.items() if t.special} | (named - {None}))
        self.add_bos = self.bos_id is not None and _adds_bos(backend, self.bos_id)
        self.chat_template = settings.chat_template
        if settings.chat_template is not None:
            self._jinja = jinja_chat.JinjaChatTemplate(
                settings.chat_template, settings.chat_template_source or "chat template"
            )
            control = jinja_chat.control_tokens(
                [(t.content, t.special) for t in added.values()],
                self._jinja.literal_text,
                settings.chat_control_tokens,
            )
            special = [t.content for t in added.values() if t.special]
            self._control = jinja_chat.token_pattern(control)
            self._control_special = jinja_chat.token_pattern(t for t in control if t in special)
            self._markers = jinja_chat.marker_pattern(self._control)

    @classmethod
    def load(cls, directory: str | Path) -> Tokenizer:
        """Load from a directory holding tokenizer.json: a PocketLM tokenizer or model artifact,
        or a Hugging Face model folder (its special tokens, chat template and generation_config)."""
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
        settings = read_tokenizer_settings(directory)
        generation = read_generation_config(directory)
        own = all(backend.token_to_id(t) is not None for t in SPECIAL_TOKENS) and (
            settings.chat_template in (None, CHAT_TEMPLATE)
        )
        try:
            if own:  # PocketLM's chat format; tokenizer_config.json carries it for transformers
                return cls(backend, generation=generation)
            return cls(backend, settings=settings, generation=generation)
        except ArtifactError as exc:
            if str(Path(directory)) in str(exc):  # it names its file already
                raise
            raise ArtifactError(f"{path}: {exc}") from exc

    def encode(
        self,
        text: str,
        *,
        add_bos: bool = False,
        parse_special: bool = True,
        add_special_tokens: bool = False,
    ) -> list[int]:
        """Token ids of `text` (no special tokens added unless add_bos or add_special_tokens).

        With parse_special (trusted text: corpora, raw prompts) special-token text such as
        "<|end|>" becomes that token; without it (untrusted text) it is encoded as plain bytes.
        add_bos prepends bos when this tokenizer's model starts sequences with one (`add_bos`).
        add_special_tokens applies tokenizer.json's post-processor instead, as transformers'
        `tokenizer(text)` does: an encoder's [CLS] text [SEP] (what it classifies), a bos.
        """
        if add_bos and add_special_tokens:
            raise ValueError("add_bos and add_special_tokens both add special tokens: pick one")
        backend = self.backend if parse_special else self._plain_backend
        ids = backend.encode(text, add_special_tokens=add_special_tokens).ids
        return [self.bos_id, *ids] if add_bos and self.add_bos else ids

    def encode_batch(
        self,
        texts: Sequence[str],
        *,
        parse_special: bool = True,
        add_special_tokens: bool = False,
    ) -> list[list[int]]:
        """Token ids of many texts, encoded in parallel by the Rust backend (see encode)."""
        backend = self.backend if parse_special else self._plain_backend
        # encode_batch_fast (tokenizers >= 0.21) skips character offsets we never use: ~20% faster.
        encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
        return [e.ids for e in encode(list(texts), add_special_tokens=add_special_tokens)]

    def encode_inputs(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of untrusted texts a model takes whole (a classifier's inputs), as
        transformers' `tokenizer(text)` makes them: with the special tokens the tokenizer's
        post-processor adds (bos; an encoder's [CLS] ... [SEP]); special-token text typed in
        them stays plain text."""
        backend = self._plain_backend
        encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
        return [e.ids for e in encode(list(texts), add_special_tokens=True)]

    @property
    def has_chat_template(self) -> bool:
        """True when render_chat/encode_chat can format a conversation for this model."""
        return self.kind == "pocketlm" or self._jinja is not None

    def render_chat(
        self,
        messages: Sequence[Mapping[str, str]],
        add_generation_prompt: bool = True,
        *,
        variables: Mapping[str, Any] | None = None,
    ) -> str:
        """The model's chat template applied to messages, as text (for ids use encode_chat).

        An imported template renders exactly as transformers' apply_chat_template(tokenize=False);
        `variables` are extra template variables (e.g. date_string, enable_thinking).
        """
        if self.kind == "pocketlm":
            return render_chat(messages, add_generation_prompt)
        from pocketlm.tokenizer.jinja_chat import plain_messages

        return self._template().render(
            plain_messages(messages), add_generation_prompt, self.special_tokens, variables
        )

    def encode_chat(
        self,
        messages: Sequence[Mapping[str, str]],
        add_generation_prompt: bool = True,
        *,
        variables: Mapping[str, Any] | None = None,
    ) -> list[int]:
        """Token ids of the chat template over messages; message text never becomes control tokens.

        For messages without control-token text the ids equal `encode(render_chat(...))`, which
        for an imported template is transformers' apply_chat_template(tokenize=True); otherwise
        that text is kept as plain text (transformers' sanitize_control_tokens).
        """
        if self.kind == "pocketlm":
            return self._encode_own_chat(messages, add_generation_prompt)
        from pocketlm.tokenizer import jinja_chat

        template = self._template()
        marked = []
        for message in jinja_chat.plain_messages(messages):
            # Assistant text is escaped for special tokens only: its <think> stays markup.
            tokens = self._control_special if message["role"] == "assistant" else self._control
            marked.append({k: jinja_chat.mark(v, tokens) for k, v in message.items()})
        extra = {
            k: jinja_chat.mark(v, self._control) if isinstance(v, str) else v
            for k, v in (variables or {}).items()
        }
        rendered = template.render(marked, add_generation_prompt, self.special_tokens, extra)
        return jinja_chat.encode_marked(
            rendered,
            self._markers,
            lambda text: self.encode(text),
            lambda text: self.encode(text, parse_special=False),
            self.backend.token_to_id,
        )

    def _template(self):
        if self._jinja is None:
            raise InputError(
                "this model has no chat template (no chat_template.jinja, and none in "
                "tokenizer_config.json): chat needs one; use `pocketlm generate` for plain text"
            )
        return self._jinja

    def _encode_own_chat(
        self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool
    ) -> list[int]:
        """PocketLM's template as ids: bos, role and end-of-turn tokens go in as ids; the text
        between them is encoded with special tokens off, as the pieces "\\n{content}" and "\\n".
        The backend cuts a string at its special tokens before pre-tokenizing, so these are
        exactly the pieces encoded on their own in render_chat's text: for messages without
        special-token text the ids equal `encode(render_chat(messages, add_generation_prompt))`.
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

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes a (non-special) token stands for."""
        return self.decode([token_id]).encode("utf-8", errors="surrogatepass")

    def save(self, directory: str | Path, model_max_length: int = 2048) -> None:
        """Write tokenizer.json + tokenizer_config.json + special_tokens_map.json (HF-loadable)."""
        if self.kind != "pocketlm":
            raise ArtifactError(
                "an imported tokenizer is saved by copying its model folder's tokenizer files"
            )
        write_tokenizer_files(self.backend, Path(directory), model_max_length, self.chat_template)


def _plain_twin(backend_type, serialized: str):
    """A twin backend that reads every added token's text ("<|end|>", "<think>") as plain text,
    for untrusted text. A second instance rather than toggling the flag on the shared backend,
    so threads encoding at once never see each other's setting; the flag is not serialized.
    encode_special_tokens skips special added tokens only, so the twin marks them all special."""
    if '"special": false' in serialized or '"special":false' in serialized:
        data = json.loads(serialized)  # a large vocabulary: only when there is one to change
        for token in data.get("added_tokens") or []:
            token["special"] = True
        serialized = json.dumps(data)
    twin = backend_type.from_str(serialized)
    twin.encode_special_tokens = True
    return twin


def _adds_bos(backend, bos_id: int) -> bool:
    """True when the tokenizer's post-processor starts every encoding with bos (as
    transformers' `tokenizer(text)` then does; transformers 5 ignores add_bos_token here)."""
    with_specials = backend.encode("a", add_special_tokens=True).ids
    plain = backend.encode("a", add_special_tokens=False).ids
    return with_specials[:1] == [bos_id] and plain[:1] != [bos_id]


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
