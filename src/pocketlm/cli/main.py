"""The `pocketlm` command: one entry point, lazily importing each command's library code."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pocketlm import __version__
from pocketlm.cli import (
    bench_cmd,
    chat_cmd,
    classify_cmd,
    compare_cmd,
    data_cmd,
    distill_cmd,
    eval_cmd,
    export_cmd,
    finetune_cmd,
    generate_cmd,
    import_cmd,
    inspect_cmd,
    merge_cmd,
    plan_cmd,
    presets_cmd,
    pretrain_cmd,
    prune_cmd,
    quantize_cmd,
    quickstart_cmd,
    serve_cmd,
    synth_cmd,
    tokenizer_cmd,
)
from pocketlm.cli.options import HelpFormatter

_DESCRIPTION = """\
PocketLM builds, shrinks and runs small language models on your own hardware, offline.

The life of a model, one command per stage (each writes a directory with a manifest.json):
  data build       text files / folders / 'stdlib' / HF datasets -> clean, deduplicated corpus
  tokenizer train  corpus -> byte-level BPE tokenizer
  data encode      corpus + tokenizer -> token shards
  presets          the named model sizes: parameters, FLOPs and KV bytes per token
  plan             what each model size costs (memory, step time) and buys in a budget
  pretrain         token shards -> a Llama-compatible model (checkpoints, metrics, loss plot)
  import           a Hugging Face model folder (Llama, Qwen, Phi, Gemma, Mistral, Mixtral;
                   BERT, DistilBERT, ALBERT, MobileBERT) -> a model
  finetune         a model + chat records or token shards -> the model trained further, or a
                   LoRA/QLoRA adapter
  merge            base model + LoRA adapter -> one plain model
  classify         labelled texts -> a text classifier (train, eval, predict, distill)
  synth            a teacher behind an OpenAI-compatible API -> a chat data set (distillation)
  distill          a teacher model -> a smaller student that learns its distributions
                   (live, or from `distill cache`: the teacher's top-k stored once)
  generate         stream text from a model
  chat             chat with a model in the terminal
  serve            an OpenAI-compatible local server and chat page
  eval             validation loss and bits per byte
  quantize         bf16 / int8 / int4 weights, with the quality cost measured
  prune            cut layers, heads and channels by importance (heal with distill)
  bench            prefill/decode tokens/s, time to first token, memory
  compare          variants side by side: size, speed, memory, quality; a Pareto plot
  export hf|gguf   a directory transformers loads / one file llama.cpp and Ollama run
  export peft      a LoRA adapter as peft's adapter_config.json + adapter_model.safetensors
  inspect          what an artifact is, how it was made, from which parents

Start here:  pocketlm quickstart      (the whole pipeline on Python's own stdlib text)
"""

_EPILOG = """\
Every command takes --help. Settings come from flags, a --config TOML file and --set key=value.
Docs: README.md in the PocketLM repository; every command's --help has examples.
"""

_COMMANDS = (
    quickstart_cmd,
    data_cmd,
    tokenizer_cmd,
    presets_cmd,
    plan_cmd,
    pretrain_cmd,
    import_cmd,
    finetune_cmd,
    merge_cmd,
    classify_cmd,
    synth_cmd,
    distill_cmd,
    generate_cmd,
    chat_cmd,
    serve_cmd,
    eval_cmd,
    quantize_cmd,
    prune_cmd,
    bench_cmd,
    compare_cmd,
    export_cmd,
    inspect_cmd,
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (cheap: no heavy imports)."""
    parser = argparse.ArgumentParser(
        prog="pocketlm", description=_DESCRIPTION, epilog=_EPILOG, formatter_class=HelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"pocketlm {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for module in _COMMANDS:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; user errors print one clear message and exit 2 (no traceback)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 0 if args.command is None else 2
    from pocketlm.common.errors import PocketLMError
    from pocketlm.common.log import setup_logging

    setup_logging(-1 if args.quiet else args.verbose)
    try:
        return int(args.handler(args) or 0)
    except PocketLMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
