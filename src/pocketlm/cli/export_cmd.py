"""`pocketlm export FORMAT`: a model as a directory another tool loads as is.

Each format is one subcommand registered by a function in `_FORMATS`. To add one,
write `register(subparsers)` in its own module (e.g. cli/export_gguf_cmd.py), building its parser
with `add_format_parser` so every format shares --model/--out/--overwrite, and append that
function to `_FORMATS`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from pocketlm.cli.options import MODEL_HELP, add_parser, command_line, done


def add_format_parser(
    subparsers, name: str, *, help: str, description: str, examples: str
) -> argparse.ArgumentParser:
    """An `export NAME` parser with the options every format takes: --model, --out, --overwrite."""
    p = add_parser(subparsers, name, help=help, description=description, examples=examples)
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it already exists")
    return p


def register_hf(subparsers) -> None:
    """`pocketlm export hf`."""
    p = add_format_parser(
        subparsers,
        "hf",
        help="a directory transformers loads as is (LlamaForCausalLM)",
        description=(
            "Write a model as a Hugging Face `transformers` directory: config.json\n"
            "(LlamaForCausalLM), generation_config.json (stops at <|endoftext|> and <|end|>),\n"
            "model.safetensors, the tokenizer files with the chat template, and a README.md model\n"
            "card. AutoModelForCausalLM / AutoTokenizer.from_pretrained(DIR) load it offline and\n"
            "give the same logits and token ids as PocketLM. Models transformers cannot represent\n"
            "exactly are refused."
        ),
        examples=(
            "  pocketlm export hf --model runs/pretrain --out runs/hf\n"
            "  pocketlm export hf --model runs/pretrain/model --out runs/hf-bf16 --dtype bf16"
        ),
    )
    p.add_argument(
        "--dtype",
        choices=["fp32", "bf16", "fp16"],
        default="fp32",
        help="weight precision in model.safetensors",
    )
    p.set_defaults(handler=_hf)


def register_gguf(subparsers) -> None:
    """`pocketlm export gguf`."""
    p = add_parser(
        subparsers,
        "gguf",
        help="one .gguf file for llama.cpp / Ollama, plus a Modelfile",
        description=(
            "Write a model as a single GGUF file that llama.cpp and Ollama run unchanged, and an\n"
            "Ollama Modelfile beside it (model.gguf -> model.Modelfile). The architecture is the\n"
            "model's family's in llama.cpp (PocketLM's own models and Llama, Mistral, Mixtral: llama;\n"
            "qwen2, qwen3, qwen2moe, qwen3moe, phi2, phi3, gemma, gemma2, gemma3), with its tokenizer,\n"
            "chat template and special tokens in the metadata. A model option llama.cpp's\n"
            "architecture does not compute is refused, naming it; what llama.cpp runs differently\n"
            "(e.g. no sliding window) is logged and kept in <out>.manifest.json. --type picks the\n"
            "weight format; an int4 model exports to q4_0 exactly."
        ),
        examples=(
            "  pocketlm export gguf --model runs/pretrain --out runs/model.gguf\n"
            "  pocketlm export gguf --model runs/q4 --out runs/model-q4_0.gguf --type q4_0\n"
            "  pocketlm export gguf --model ~/models/Qwen2.5-0.5B-Instruct --out runs/qwen.gguf\n"
            "  cd runs && ollama create model -f model.Modelfile && ollama run model"
        ),
    )
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--out", required=True, help="output .gguf file")
    p.add_argument(
        "--type",
        dest="gguf_type",
        choices=["f32", "f16", "bf16", "q8_0", "q4_0"],
        default="f32",
        help="weight format",
    )
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(handler=_gguf)


def _gguf(args: argparse.Namespace) -> int:
    from pocketlm.cli.chat_check import warn_chat_consistency
    from pocketlm.interop.gguf_export import export_gguf

    out = export_gguf(
        args.model,
        args.out,
        out_type=args.gguf_type,
        command=command_line(),
        overwrite=args.overwrite,
    )
    warn_chat_consistency(args.model)  # the GGUF carries this model's template and stop ids
    return done(out)


def register_peft(subparsers) -> None:
    """`pocketlm export peft`."""
    p = add_format_parser(
        subparsers,
        "peft",
        help="a LoRA adapter as a peft adapter directory",
        description=(
            "Write a LoRA adapter (from `pocketlm finetune --lora-rank`) as the directory the `peft`\n"
            "library loads: adapter_config.json (r, lora_alpha, target_modules, ...) and\n"
            "adapter_model.safetensors with peft's tensor names. Loaded onto the base's `export hf`\n"
            "output it gives the logits PocketLM gives for base + adapter:\n"
            "  PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(HF_DIR), OUT)\n"
            "--model is the base the adapter was trained on (checked by hash)."
        ),
        examples=(
            "  pocketlm export hf --model runs/pretrain --out runs/hf\n"
            "  pocketlm export peft --model runs/pretrain --adapter runs/lora --hf-base runs/hf --out runs/peft"
        ),
    )
    p.add_argument(
        "--adapter", required=True, help="LoRA adapter directory (or a LoRA fine-tuning run)"
    )
    p.add_argument(
        "--hf-base",
        metavar="DIR",
        help="the base's `export hf` directory, recorded as base_model_name_or_path (so "
        "AutoPeftModelForCausalLM finds it); default: none recorded",
    )
    p.set_defaults(handler=_peft)


def _peft(args: argparse.Namespace) -> int:
    from pocketlm.interop.peft import export_peft

    return done(
        export_peft(
            args.model,
            args.adapter,
            args.out,
            hf_base=args.hf_base,
            command=command_line(),
            overwrite=args.overwrite,
        )
    )


def register_onnx(subparsers) -> None:
    """`pocketlm export onnx`."""
    p = add_format_parser(
        subparsers,
        "onnx",
        help="a directory onnxruntime runs: the decoder with its KV cache, or a classifier",
        description=(
            "Write a model as an ONNX directory: model.onnx, onnx_config.json, the tokenizer files\n"
            "with the chat template, config.json (where transformers has the family) and a\n"
            "manifest. A language model's graph takes input_ids, attention_mask, position_ids and\n"
            "past_key_values.{i}.key/value and returns logits and present.{i}.key/value (Hugging\n"
            "Face Optimum's names; dynamic batch, sequence and past lengths, the past empty on the\n"
            "first call); a classifier's takes input_ids and attention_mask and returns logits.\n"
            "Run it with `pocketlm generate --model OUT` (or bench, serve, --backend onnx).\n"
            "--precision int8 stores the matrices as 8-bit blocks (onnxruntime's MatMulNBits).\n"
            "Needs the onnx extra: pip install 'pocketlm[onnx]'."
        ),
        examples=(
            "  pocketlm export onnx --model runs/pretrain --out runs/onnx\n"
            "  pocketlm export onnx --model runs/pretrain --out runs/onnx-int8 --precision int8\n"
            "  pocketlm generate --model runs/onnx --prompt 'Once upon a time'"
        ),
    )
    p.add_argument(
        "--precision",
        choices=["fp32", "int8"],
        default="fp32",
        help="weights: fp32, or int8 blocks of 32 (about a third of the size, faster on CPU)",
    )
    p.set_defaults(handler=_onnx)


def _onnx(args: argparse.Namespace) -> int:
    from pocketlm.interop.onnx_export import export_onnx

    out = export_onnx(
        args.model,
        args.out,
        precision=args.precision,
        command=command_line(),
        overwrite=args.overwrite,
    )
    return done(out)


# One registration function per export format; `pocketlm export --help` lists them in this order.
_FORMATS: tuple[Callable[..., None], ...] = (
    register_hf,
    register_gguf,
    register_onnx,
    register_peft,
)


def register(subparsers) -> None:
    """`pocketlm export` and its format subcommands."""
    group = add_parser(
        subparsers,
        "export",
        help="write a model in another tool's format (hf, gguf, onnx, peft)",
        description="Export a model directory for other tools; one subcommand per format.",
        examples="  pocketlm export hf --model runs/pretrain --out runs/hf",
    )
    sub = group.add_subparsers(dest="export_format", required=True, metavar="FORMAT")
    for register_format in _FORMATS:
        register_format(sub)


def _hf(args: argparse.Namespace) -> int:
    from pocketlm.cli.chat_check import warn_chat_consistency
    from pocketlm.interop.hf_export import export_hf

    out = export_hf(
        args.model,
        args.out,
        dtype=args.dtype,
        command=command_line(),
        overwrite=args.overwrite,
    )
    warn_chat_consistency(out)  # the folder as transformers and llama.cpp will read it
    return done(out)
