"""The TinyStories benchmark data, prepared by the issue's convention.

The last 10% of ../shared/data/tinystories-train-excerpt-lowercase.txt (cut at a line boundary)
is validation; the byte-level BPE tokenizer (vocab 4096 unless asked) is trained on the first
90% only; each split is one document, so the validation text is tokenized as one stream.
bits per byte = validation loss in nats / ln 2 / bytes per token of the validation text.
"""

from __future__ import annotations

import json
from pathlib import Path

SHARED = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "data"
    / "tinystories-train-excerpt-lowercase.txt"
)


def prepare(workdir: str | Path, vocab_size: int = 4096) -> Path:
    """Build (or reuse) corpus, tokenizer and tokens for the benchmark; returns the tokens dir."""
    from pocketlm.common.doc_shards import DocShardWriter
    from pocketlm.common.manifest import ArtifactWriter, read_manifest
    from pocketlm.data.encode import encode_corpus
    from pocketlm.tokenizer.train import TokenizerConfig, train_tokenizer

    work = Path(workdir)
    tokens = work / f"tokens-{vocab_size}"
    if (tokens / "manifest.json").exists():
        return tokens
    if not SHARED.is_file():
        raise SystemExit(f"benchmark data not found: {SHARED}")
    text = SHARED.read_text(encoding="utf-8")
    cut = text.rfind("\n", 0, int(len(text) * 0.9)) + 1  # line boundary at 90%
    corpus = work / "corpus"
    if not (corpus / "manifest.json").exists():
        with ArtifactWriter(
            corpus, "corpus", config={"source": str(SHARED), "cut": cut}, overwrite=True
        ) as art:
            docs = art.path("docs/.keep").parent
            summary = {"splits": {}}
            for split, part in (("train", text[:cut]), ("val", text[cut:])):
                w = DocShardWriter(docs, split, 1 << 40)
                w.write(part, "tinystories", str(SHARED), len(part.encode("utf-8")))
                summary["splits"][split] = {"docs": 1, "bytes": w.bytes, "files": w.close()}
            (docs / ".keep").unlink(missing_ok=True)
            art.commit(summary)
    tok = work / f"tokenizer-{vocab_size}"
    if not (tok / "manifest.json").exists():
        train_tokenizer(corpus, tok, TokenizerConfig(vocab_size=vocab_size), overwrite=True)
    encode_corpus(corpus, tok, tokens, overwrite=True)
    s = read_manifest(tokens)["summary"]
    print(
        json.dumps(
            {
                "train_tokens": s["splits"]["train"]["tokens"],
                "val_tokens": s["splits"]["val"]["tokens"],
                "val_bytes_per_token": s["splits"]["val"]["bytes_per_token"],
            }
        )
    )
    return tokens
