"""Shared test set-up: no progress bars, no hub access, and small synthetic corpora made on the fly."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("POCKETLM_NO_PROGRESS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WORDS = [
    "the",
    "a",
    "an",
    "little",
    "big",
    "small",
    "red",
    "blue",
    "green",
    "happy",
    "sad",
    "dog",
    "cat",
    "bird",
    "tree",
    "house",
    "river",
    "sun",
    "moon",
    "star",
    "girl",
    "boy",
    "mom",
    "dad",
    "friend",
    "ball",
    "game",
    "park",
    "school",
    "book",
    "story",
    "day",
    "night",
    "morning",
    "water",
    "food",
    "cake",
    "play",
    "run",
    "jump",
    "walk",
    "look",
    "see",
    "find",
    "share",
    "help",
    "make",
    "love",
    "like",
    "want",
    "need",
    "go",
    "come",
    "said",
    "asked",
    "smiled",
    "laughed",
    "and",
    "but",
    "so",
    "because",
    "then",
    "when",
    "after",
    "before",
    "while",
    "very",
    "really",
    "always",
    "never",
    "together",
    "again",
    "home",
    "garden",
    "flower",
    "apple",
    "car",
    "boat",
    "train",
    "sky",
    "cloud",
    "rain",
    "snow",
    "wind",
    "kind",
    "brave",
    "quiet",
    "loud",
]


def make_sentence(rng: random.Random, n_words: int | None = None) -> str:
    """A pseudo-English sentence from a fixed vocabulary."""
    n = n_words or rng.randint(6, 16)
    words = [rng.choice(WORDS) for _ in range(n)]
    return " ".join(words).capitalize() + "."


def make_document(rng: random.Random, n_sentences: int = 12) -> str:
    """A pseudo-English document of a few paragraphs."""
    paragraphs = []
    for _ in range(max(1, n_sentences // 4)):
        paragraphs.append(" ".join(make_sentence(rng) for _ in range(4)))
    return "\n\n".join(paragraphs)


@pytest.fixture
def rng() -> random.Random:
    return random.Random(1234)


@pytest.fixture
def text_folder(tmp_path: Path) -> Path:
    """A user folder with prose, code, html, jsonl and csv, one exact and one near duplicate, one short doc."""
    r = random.Random(7)
    root = tmp_path / "notes"
    (root / "sub").mkdir(parents=True)
    docs = [make_document(r, 16) for _ in range(30)]
    for i, doc in enumerate(docs):
        (root / f"doc{i:02d}.txt").write_text(doc, encoding="utf-8")
    (root / "copy_of_doc03.md").write_text(docs[3], encoding="utf-8")  # exact duplicate
    near = docs[5].replace("The ", "A ", 1) + " One more sentence here."
    (root / "sub" / "near_doc05.txt").write_text(near, encoding="utf-8")  # near duplicate
    (root / "tiny.txt").write_text("too short", encoding="utf-8")
    (root / "sub" / "script.py").write_text(
        'def add(a, b):\n    """Add two numbers."""\n    return a + b\n\n\n'
        "class Greeter:\n    def greet(self, name):\n        return f'hello {name}'\n",
        encoding="utf-8",
    )
    (root / "page.html").write_text(
        "<html><head><title>T</title><style>p{color:red}</style></head><body>"
        f"<h1>Heading</h1><p>{make_sentence(r, 20)}</p><script>var x=1;</script>"
        f"<p>{make_sentence(r, 20)} &amp; more</p></body></html>",
        encoding="utf-8",
    )
    (root / "image.bin").write_bytes(bytes(range(256)))  # unsupported type, skipped and counted
    return root


@pytest.fixture(scope="session")
def synthetic_pipeline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """corpus -> tokenizer (vocab 512) -> tokens over a small synthetic folder; built once per session."""
    from pocketlm.data.build import build_corpus
    from pocketlm.data.config import CorpusConfig
    from pocketlm.data.encode import encode_corpus
    from pocketlm.tokenizer.train import TokenizerConfig, train_tokenizer

    base = tmp_path_factory.mktemp("pipeline")
    r = random.Random(99)
    src = base / "src"
    src.mkdir()
    for i in range(120):
        (src / f"d{i:03d}.txt").write_text(make_document(r, 20), encoding="utf-8")
    corpus = build_corpus([str(src)], base / "corpus", CorpusConfig(val_fraction=0.1))
    tok = train_tokenizer(corpus, base / "tokenizer", TokenizerConfig(vocab_size=512))
    tokens = encode_corpus(corpus, tok, base / "tokens")
    return {"src": src, "corpus": corpus, "tokenizer": tok, "tokens": tokens}


def tiny_pretrain_config(budget: str = "12 steps", **train_overrides):
    """A PretrainConfig for a ~30k-parameter model that trains in milliseconds per step."""
    from pocketlm.train.config import ScheduleConfig, TrainConfig
    from pocketlm.train.tasks.pretrain import PretrainConfig, ShapeConfig

    train = dict(
        budget=budget,
        batch_size=4,
        ctx=32,
        log_every=1,
        eval_tokens=512,
        checkpoint_every=3,
        precision="fp32",
        device="cpu",
        schedule=ScheduleConfig(kind="cosine", warmup_steps=2),
    )
    train.update(train_overrides)
    return PretrainConfig(
        model=ShapeConfig(dim=32, n_layers=2, n_heads=2, n_kv_heads=1), train=TrainConfig(**train)
    )


@pytest.fixture(scope="session")
def tiny_model_dir(synthetic_pipeline, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained (a few steps) tiny model artifact on the synthetic tokens."""
    from pocketlm.train.tasks.pretrain import pretrain

    run = tmp_path_factory.mktemp("tiny-run") / "run"
    return pretrain(synthetic_pipeline["tokens"], run, tiny_pretrain_config("6 steps")).model_dir


# The native engine's kernel sets by ISA cap level (POCKETLM_ISA), and what each level reports
# (avx512bf16 adds the vdpbf16ps prefill GEMM to the avx512 set).
ENGINE_KERNELS = {
    "portable": "portable",
    "avx2": "avx2",
    "avx512": "avx512-vnni",
    "avx512bf16": "avx512-bf16",
}


def engine_isa_params() -> list:
    """pytest params over every engine ISA level; the ones this CPU cannot run skip, saying why."""
    ISA_LEVELS = tuple(ENGINE_KERNELS)
    try:
        from pocketlm.engine import _native

        best = {v: k for k, v in ENGINE_KERNELS.items()}[_native.cpu_isa()]
    except ImportError:
        best = None
    params = []
    for level in ISA_LEVELS:
        if best is None:
            mark = pytest.mark.skip(reason="the native extension is not built")
        elif ISA_LEVELS.index(level) > ISA_LEVELS.index(best):
            need = {
                "avx2": "AVX2 + FMA + F16C",
                "avx512": "AVX-512 F/BW/VL/DQ + VNNI",
                "avx512bf16": "AVX512-BF16",
            }[level]
            mark = pytest.mark.skip(reason=f"this CPU lacks {need}: its best kernels are {best}")
        else:
            mark = ()
        params.append(pytest.param(level, marks=mark, id=level))
    return params


@pytest.fixture(scope="session")
def tiny_classifier_dir(tiny_model_dir, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model turned into a two-label classifier (an untrained head, spread wide enough
    that the labels differ between texts), saved as a model artifact."""
    from pocketlm.checkpoint.model_io import load_model, save_model
    from pocketlm.model.classifier import to_classifier

    model = to_classifier(load_model(tiny_model_dir).model, ["negative", "positive"], std=1.0)
    return save_model(tmp_path_factory.mktemp("tiny-classifier") / "model", model, tiny_model_dir)
