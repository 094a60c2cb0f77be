"""`pocketlm data encode`: corpus + tokenizer -> memory-mappable token shards per split.

Layout of a tokens artifact:
    {split}.bin   token ids, uint16 when the vocabulary fits, else uint32 (<bos> doc <eos> ...)
    {split}.idx   uint64 offsets where each document starts in {split}.bin
    tokenizer/    a copy of the tokenizer files, so later stages need only this directory
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from pocketlm.common.config import to_dict
from pocketlm.common.doc_shards import iter_texts
from pocketlm.common.errors import InputError
from pocketlm.common.log import get_logger
from pocketlm.common.manifest import ArtifactWriter, parent_ref, read_manifest
from pocketlm.common.progress import progress_bar
from pocketlm.data.config import EncodeConfig
from pocketlm.tokenizer.tokenizer import HF_TOKENIZER_FILES, Tokenizer

TOKENS_KIND = "tokens"
_log = get_logger("pocketlm.data.encode")


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits in 16 bits, else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def encode_corpus(
    corpus_dir: str | Path,
    tokenizer_dir: str | Path,
    out: str | Path,
    config: EncodeConfig | None = None,
    *,
    command: Sequence[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Tokenize every split of a corpus into flat token arrays with document offsets."""
    config = config or EncodeConfig()
    corpus_dir, tokenizer_dir = Path(corpus_dir), Path(tokenizer_dir)
    corpus = read_manifest(corpus_dir, kind="corpus")
    read_manifest(tokenizer_dir, kind=("tokenizer", "model"))
    tokenizer = Tokenizer.load(tokenizer_dir)
    if tokenizer.eos_id is None:
        raise InputError(
            "the tokenizer has no end-of-sequence token to separate documents with",
            path=tokenizer_dir,
        )
    # a tokenizer without a bos rule (Qwen) gets none: documents as the model saw them
    config = replace(config, add_bos=config.add_bos and tokenizer.add_bos)
    dtype = token_dtype(tokenizer.vocab_size)
    total_bytes = sum(corpus["summary"]["splits"][s]["bytes"] for s in ("train", "val"))
    started = time.perf_counter()
    parents = [parent_ref(corpus_dir), parent_ref(tokenizer_dir)]
    with ArtifactWriter(
        out,
        TOKENS_KIND,
        config=to_dict(config),
        parents=parents,
        command=command,
        overwrite=overwrite,
    ) as art:
        bar = progress_bar(total_bytes, desc="data encode", unit="B")
        splits = {
            split: _encode_split(corpus_dir, split, tokenizer, dtype, art, config, bar.update)
            for split in ("train", "val")
        }
        bar.close()
        for name in HF_TOKENIZER_FILES:  # an imported model's template and end ids too
            if (tokenizer_dir / name).is_file():
                shutil.copyfile(tokenizer_dir / name, art.path(f"tokenizer/{name}"))
        if splits["train"]["tokens"] == 0:
            raise InputError("the corpus's train split is empty", path=corpus_dir)
        seconds = time.perf_counter() - started
        val = splits["val"] if splits["val"]["tokens"] else splits["train"]
        summary = {
            "dtype": dtype.name,
            "vocab_size": tokenizer.vocab_size,
            "tokenizer_fingerprint": tokenizer.fingerprint,
            "bos_id": tokenizer.bos_id,
            "eos_id": tokenizer.eos_id,
            "add_bos": config.add_bos,
            "splits": splits,
            "bytes_per_token": val["bytes_per_token"],
            "seconds": round(seconds, 2),
            "mb_per_s": round(total_bytes / 1e6 / max(seconds, 1e-9), 2),
        }
        path = art.commit(summary)
    _log.info(
        "tokens: train %s, val %s tokens, %.3f bytes/token -> %s",
        f"{splits['train']['tokens']:,}",
        f"{splits['val']['tokens']:,}",
        summary["bytes_per_token"],
        path,
    )
    return path


def _encode_split(
    corpus_dir: Path,
    split: str,
    tokenizer: Tokenizer,
    dtype: np.dtype,
    art: ArtifactWriter,
    config: EncodeConfig,
    on_bytes,
) -> dict:
    n_tokens = n_docs = n_bytes = 0
    with (
        open(art.path(f"{split}.bin"), "wb") as bin_fh,
        open(art.path(f"{split}.idx"), "wb") as idx_fh,
    ):
        for texts in iter_texts(corpus_dir, split, batch_rows=config.batch_docs):
            encoded = tokenizer.encode_batch(texts)
            lengths = np.fromiter((len(ids) for ids in encoded), dtype=np.int64, count=len(encoded))
            extra = 1 + int(config.add_bos)  # <eos> (and <bos>) around each document
            starts = n_tokens + np.concatenate([[0], np.cumsum(lengths + extra)[:-1]])
            flat = np.empty(
                int(lengths.sum()) + extra * len(encoded), dtype=dtype
            )  # (batch tokens,)
            pos = 0
            for ids in encoded:
                if config.add_bos:
                    flat[pos] = tokenizer.bos_id
                    pos += 1
                flat[pos : pos + len(ids)] = ids
                pos += len(ids)
                flat[pos] = tokenizer.eos_id
                pos += 1
            bin_fh.write(flat.tobytes())
            idx_fh.write(starts.astype(np.uint64).tobytes())
            batch_bytes = sum(len(t.encode("utf-8")) for t in texts)
            n_tokens += flat.size
            n_docs += len(texts)
            n_bytes += batch_bytes
            on_bytes(batch_bytes)
    # bytes per token counts only text tokens: the specials stand for no bytes of the original text.
    text_tokens = n_tokens - n_docs * (1 + int(config.add_bos))
    return {
        "tokens": n_tokens,
        "docs": n_docs,
        "bytes": n_bytes,
        "bytes_per_token": round(n_bytes / text_tokens, 4) if text_tokens else 0.0,
        "bytes_per_token_with_specials": round(n_bytes / n_tokens, 4) if n_tokens else 0.0,
    }
