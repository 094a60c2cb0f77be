"""`pocketlm tokenizer train`: byte-level BPE on a corpus's training split, with a compression report."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pocketlm.common.config import to_dict
from pocketlm.common.doc_shards import iter_texts
from pocketlm.common.errors import ConfigError, InputError
from pocketlm.common.log import get_logger
from pocketlm.common.manifest import ArtifactWriter, parent_ref, read_manifest
from pocketlm.common.progress import progress_bar
from pocketlm.tokenizer.special_tokens import BOS, SPECIAL_TOKENS
from pocketlm.tokenizer.tokenizer import Tokenizer, write_tokenizer_files

TOKENIZER_KIND = "tokenizer"
_log = get_logger("pocketlm.tokenizer.train")


@dataclass(frozen=True)
class TokenizerConfig:
    """Byte-level BPE training settings."""

    vocab_size: int = 8192
    min_frequency: int = 2
    max_train_bytes: int = (
        0  # 0 = the whole training split; else stop reading after this many bytes
    )
    model_max_length: int = 2048

    def __post_init__(self) -> None:
        if not 256 + len(SPECIAL_TOKENS) < self.vocab_size <= 1 << 20:
            raise ValueError(
                f"vocab_size must be in ({256 + len(SPECIAL_TOKENS)}, {1 << 20}], got {self.vocab_size}"
            )


def _texts(corpus_dir: Path, split: str, max_bytes: int, bar) -> Iterator[str]:
    seen = 0
    for batch in iter_texts(corpus_dir, split):
        for text in batch:
            n = len(text.encode("utf-8"))
            seen += n
            bar.update(n)
            yield text
            if max_bytes and seen >= max_bytes:
                return


def train_tokenizer(
    corpus_dir: str | Path,
    out: str | Path,
    config: TokenizerConfig | None = None,
    *,
    command: Sequence[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Train a byte-level BPE tokenizer on the corpus's train split; write a tokenizer artifact."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers

    config = config or TokenizerConfig()
    corpus_dir = Path(corpus_dir)
    manifest = read_manifest(corpus_dir, kind="corpus")
    train_bytes = manifest["summary"]["splits"]["train"]["bytes"]
    if config.max_train_bytes:
        train_bytes = min(train_bytes, config.max_train_bytes)

    backend = Backend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=config.vocab_size,
        min_frequency=config.min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    started = time.perf_counter()
    bar = progress_bar(train_bytes, desc="tokenizer: reading", unit="B")
    backend.train_from_iterator(
        _texts(corpus_dir, "train", config.max_train_bytes, bar), trainer=trainer
    )
    bar.close()
    seconds = time.perf_counter() - started
    # Like Llama tokenizers, HF's tokenizer(text) prepends <|bos|>; PocketLM's own encode adds it explicitly.
    bos_id = backend.token_to_id(BOS)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )

    vocab = backend.get_vocab_size(with_added_tokens=True)
    if vocab < config.vocab_size:
        _log.warning(
            "corpus too small for %d tokens: learned %d (every merge seen >= %d times)",
            config.vocab_size,
            vocab,
            config.min_frequency,
        )
    tokenizer = Tokenizer(backend)
    report = compression_report(tokenizer, corpus_dir)
    parents = [parent_ref(corpus_dir)]
    with ArtifactWriter(
        out,
        TOKENIZER_KIND,
        config=to_dict(config),
        parents=parents,
        command=command,
        overwrite=overwrite,
    ) as art:
        write_tokenizer_files(backend, art.tmp, config.model_max_length)
        summary = {
            "vocab_size": vocab,
            "fingerprint": tokenizer.fingerprint,
            "train_seconds": round(seconds, 2),
            "train_bytes": train_bytes,
            **report,
        }
        art.path("tokenizer_report.md").write_text(_render_report(summary), encoding="utf-8")
        path = art.commit(summary)
    _log.info(
        "tokenizer: vocab %d, %.2f bytes/token on validation -> %s",
        vocab,
        report["bytes_per_token"],
        path,
    )
    return path


def compression_report(tokenizer: Tokenizer, corpus_dir: Path, max_bytes: int = 20_000_000) -> dict:
    """Bytes per token on the validation split (falls back to train when val is empty)."""
    for split in ("val", "train"):
        n_bytes = n_tokens = n_docs = 0
        for batch in iter_texts(corpus_dir, split):
            for ids, text in zip(tokenizer.encode_batch(batch), batch):
                n_tokens += len(ids)
                n_bytes += len(text.encode("utf-8"))
                n_docs += 1
            if n_bytes >= max_bytes:
                break
        if n_tokens:
            return {
                "bytes_per_token": round(n_bytes / n_tokens, 4),
                "measured_on": split,
                "measured_bytes": n_bytes,
                "measured_tokens": n_tokens,
            }
    raise InputError("the corpus has no text to measure the tokenizer on", path=corpus_dir)


def _render_report(s: dict) -> str:
    return (
        "# Tokenizer report\n\n"
        f"- vocabulary: {s['vocab_size']:,} tokens (byte-level BPE, {len(SPECIAL_TOKENS)} special tokens)\n"
        f"- trained on {s['train_bytes'] / 1e6:.1f} MB in {s['train_seconds']:.1f} s\n"
        f"- compression on the {s['measured_on']} split: **{s['bytes_per_token']:.3f} bytes per token** "
        f"({s['measured_bytes']:,} bytes -> {s['measured_tokens']:,} tokens)\n"
        f"- fingerprint: `{s['fingerprint']}`\n"
    )


def check_vocab_size(vocab_size: int) -> None:
    """Refuse vocabulary sizes the token shards cannot store."""
    if vocab_size > 1 << 32:
        raise ConfigError("vocab_size too large for uint32 token shards")
