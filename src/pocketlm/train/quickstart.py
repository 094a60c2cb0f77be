"""The quickstart pipeline: corpus -> tokenizer -> tokens (-> model, in a later stage of the project)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pocketlm.common.errors import ArtifactError
from pocketlm.common.log import get_logger
from pocketlm.common.manifest import read_manifest

_log = get_logger("pocketlm.quickstart")


def _finished(path: Path, kind: str) -> bool:
    try:
        read_manifest(path, kind=kind)
        return True
    except ArtifactError:
        return False


def run_quickstart(corpus: Sequence[str], out: str | Path, *, vocab_size: int = 4096) -> Path:
    """Run (or resume) every stage under `out`; returns `out`."""
    from pocketlm.data.build import build_corpus
    from pocketlm.data.encode import encode_corpus
    from pocketlm.tokenizer.train import TokenizerConfig, train_tokenizer

    out = Path(out)
    corpus_dir, tok_dir, tokens_dir = out / "corpus", out / "tokenizer", out / "tokens"
    if _finished(corpus_dir, "corpus"):
        print(f"[1/3] corpus: reusing {corpus_dir}")
    else:
        print(f"[1/3] corpus: building from {', '.join(corpus)}")
        build_corpus(corpus, corpus_dir, overwrite=True)
    if _finished(tok_dir, "tokenizer"):
        print(f"[2/3] tokenizer: reusing {tok_dir}")
    else:
        print(f"[2/3] tokenizer: training (vocab {vocab_size})")
        train_tokenizer(corpus_dir, tok_dir, TokenizerConfig(vocab_size=vocab_size), overwrite=True)
    if _finished(tokens_dir, "tokens"):
        print(f"[3/3] tokens: reusing {tokens_dir}")
    else:
        print("[3/3] tokens: encoding")
        encode_corpus(corpus_dir, tok_dir, tokens_dir, overwrite=True)
    print(f"\nDone. Corpus report: {corpus_dir / 'data_report.md'}")
    print("Next: inspect what was made with")
    print(f"  pocketlm inspect {tokens_dir}")
    return out
