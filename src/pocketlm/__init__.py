"""PocketLM: build, shrink and run small language models on your own hardware, offline.

The Python API is the library behind the CLI, one call per stage (every stage reads artifact
directories and returns the new one's path):

    import pocketlm
    corpus = pocketlm.build_corpus(["~/notes"], "runs/corpus")
    tok = pocketlm.train_tokenizer(corpus, "runs/tok", pocketlm.TokenizerConfig(vocab_size=8192))
    tokens = pocketlm.encode_corpus(corpus, tok, "runs/tokens")
    config = pocketlm.configure(pocketlm.PretrainConfig(), {"model.preset": "micro-6m", "train.budget": "10m"})
    run = pocketlm.pretrain(tokens, "runs/pretrain", config)
    print(pocketlm.generate(run.model_dir, "def fibonacci(n):", max_new_tokens=60, temperature=0))

Names load on first use: `import pocketlm` itself imports neither torch nor numpy.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> "module:attribute"
_API = {
    # data and tokenizer
    "build_corpus": "pocketlm.data.build:build_corpus",
    "CorpusConfig": "pocketlm.data.config:CorpusConfig",
    "train_tokenizer": "pocketlm.tokenizer.train:train_tokenizer",
    "TokenizerConfig": "pocketlm.tokenizer.train:TokenizerConfig",
    "Tokenizer": "pocketlm.tokenizer.tokenizer:Tokenizer",
    "encode_corpus": "pocketlm.data.encode:encode_corpus",
    # training
    "pretrain": "pocketlm.train.tasks.pretrain:pretrain",
    "PretrainConfig": "pocketlm.train.tasks.pretrain:PretrainConfig",
    "finetune": "pocketlm.train.tasks.finetune:finetune",
    "FinetuneConfig": "pocketlm.train.tasks.finetune:FinetuneConfig",
    "LoRAConfig": "pocketlm.model.lora:LoRAConfig",
    "with_lora": "pocketlm.train.tasks.lora:with_lora",  # LoRA for any TrainTask factory
    # THE loop for any TrainTask factory ("train" is the subpackage's name)
    "train_task": "pocketlm.train.loop:train",
    "TrainConfig": "pocketlm.train.config:TrainConfig",
    "TrainTask": "pocketlm.train.task:TrainTask",
    "Role": "pocketlm.train.task:Role",
    "RunContext": "pocketlm.train.task:RunContext",
    "quickstart": "pocketlm.pipelines.quickstart:run_quickstart",
    "QuickstartConfig": "pocketlm.pipelines.quickstart:QuickstartConfig",
    "configure": "pocketlm.api:configure",
    # models, shrinking, evaluation, export
    "load_model": "pocketlm.checkpoint.model_io:load_model",
    "import_hf": "pocketlm.interop.hf_import:import_hf",
    "load_adapted_model": "pocketlm.checkpoint.adapted_model:load_adapted_model",
    "merge_adapter": "pocketlm.checkpoint.adapted_model:merge_adapter",
    "quantize": "pocketlm.compress.quantize:quantize_model_dir",
    "evaluate": "pocketlm.evals.evaluate:evaluate_model",
    "compare": "pocketlm.pipelines.compare:compare_models",
    "CompareSettings": "pocketlm.pipelines.compare:CompareSettings",
    "export_hf": "pocketlm.interop.hf_export:export_hf",
    "export_gguf": "pocketlm.interop.gguf_export:export_gguf",
    "export_peft": "pocketlm.interop.peft:export_peft",
    # inference
    "load": "pocketlm.engine.load:load_engine",
    "generate": "pocketlm.api:generate",
    "SamplingParams": "pocketlm.engine.sampling:SamplingParams",
    "ChatSession": "pocketlm.engine.chat_session:ChatSession",
    "bench": "pocketlm.engine.bench:bench_model",
    # errors
    "PocketLMError": "pocketlm.common.errors:PocketLMError",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    """Import a public name on first use (PEP 562)."""
    target = _API.get(name)
    if target is None:
        raise AttributeError(f"module 'pocketlm' has no attribute {name!r}")
    module, attribute = target.split(":")
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
