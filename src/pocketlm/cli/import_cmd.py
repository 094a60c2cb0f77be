"""`pocketlm import`: a local Hugging Face model folder -> a PocketLM model artifact."""

from __future__ import annotations

import argparse

from pocketlm.cli.options import add_parser, command_line, done

_FAMILIES = """\
Families (chosen from config.json's "architectures", never from the folder's name):
  LlamaForCausalLM (Llama 2/3.x, SmolLM2)   MistralForCausalLM
  Qwen2ForCausalLM (Qwen2, Qwen2.5)         Qwen3ForCausalLM
  PhiForCausalLM (Phi-2)                    Phi3ForCausalLM (Phi-3, Phi-3.5, Phi-4-mini)
  GemmaForCausalLM   Gemma2ForCausalLM      Gemma3ForCausalLM (text-only Gemma 3)
  MixtralForCausalLM   Qwen2MoeForCausalLM  Qwen3MoeForCausalLM (mixtures of experts)
  each family's *ForSequenceClassification (a classifier: `pocketlm classify`)
Encoders (classifiers, or bases for `pocketlm classify train`):
  BertModel / BertFor…   DistilBertModel / DistilBertFor…   AlbertModel / AlbertFor…
  MobileBertModel / MobileBertFor… (their *ForSequenceClassification heads are kept)"""


def register(subparsers) -> None:
    p = add_parser(
        subparsers,
        "import",
        help="turn a Hugging Face model folder into a PocketLM model",
        description=(
            "Convert a local Hugging Face model folder (config.json, model.safetensors or shards\n"
            "with model.safetensors.index.json, tokenizer.json) into a PocketLM model directory\n"
            "that every command loads. Weights stream one tensor at a time (memory stays near the\n"
            "largest tensor, whatever the model's size); bf16 and fp32 weights keep their dtype,\n"
            "fp16 becomes fp32 exactly. The tokenizer files, chat template and generation_config.json\n"
            "are copied unchanged; manifest.json records the source files and their sha256.\n"
            "Pickle checkpoints (pytorch_model.bin) are refused: convert them to safetensors.\n\n"
            "You rarely need this command: every --model also takes a Hugging Face folder and\n"
            "imports it once into PocketLM's cache ($POCKETLM_CACHE, default ~/.cache/pocketlm).\n"
            "Import explicitly to choose where the copy lives, or to ship it.\n\n" + _FAMILIES
        ),
        examples=(
            "  pocketlm import ~/models/SmolLM2-135M-Instruct --out runs/smollm2\n"
            "  pocketlm chat --model runs/smollm2\n"
            "  pocketlm quantize --model runs/smollm2 --scheme int8 --out runs/smollm2-q8\n"
            '  pocketlm generate --model ~/models/Qwen2.5-0.5B --prompt "def fib(n):"  # no import step'
        ),
    )
    p.add_argument("folder", metavar="DIR", help="the Hugging Face model folder (local)")
    p.add_argument("--out", required=True, help="output model directory")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it already exists")
    p.set_defaults(handler=_import)


def _import(args: argparse.Namespace) -> int:
    from pocketlm.interop.hf_import import import_hf

    return done(import_hf(args.folder, args.out, command=command_line(), overwrite=args.overwrite))
