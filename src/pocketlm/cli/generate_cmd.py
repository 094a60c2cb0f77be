"""`pocketlm generate`: stream text from a model."""

from __future__ import annotations

import argparse
import sys

from pocketlm.cli.options import (
    MODEL_HELP,
    add_adapter_option,
    add_parser,
    add_runtime_options,
    add_sampling_options,
    cap_threads,
    sampling_from_args,
)
from pocketlm.cli.terminal import write_text

# PocketLM's sampling defaults; a model's generation_config.json replaces the values it sets.
DEFAULTS = {
    "max_new_tokens": 256,
    "temperature": 0.8,
    "top_k": 0,
    "top_p": 1.0,
    "min_p": 0.0,
    "repetition_penalty": 1.0,
}


def register(subparsers) -> None:
    p = add_parser(
        subparsers,
        "generate",
        help="stream text from a model",
        description=(
            "Continue a prompt with a model, printing the text as it is generated. Sampling:\n"
            "repetition penalty, then temperature (0 = greedy), top-k, top-p (nucleus) and min-p.\n"
            "Generation stops at the end-of-text or end-of-turn token (and at every end id the\n"
            "model's generation_config.json lists), at a --stop string (not printed) or after\n"
            "--max-new-tokens. Sampling flags left out take the model's generation_config.json\n"
            "values (imported models ship one), else PocketLM's defaults. A one-line summary\n"
            "(tokens, speed, backend) goes to stderr. The same --seed gives the same text on the\n"
            "same backend, device and precision."
        ),
        examples=(
            '  pocketlm generate --model runs/pretrain --prompt "Once upon a time"\n'
            '  pocketlm generate --model runs/pretrain/model --prompt "The cat" --temperature 0 --max-new-tokens 40\n'
            "  pocketlm generate --model runs/pretrain --prompt 'def add(' --top-p 0.9 --seed 1 --stop $'\\n\\n'\n"
            '  pocketlm generate --model runs/big --draft runs/small --prompt "def " --temperature 0'
        ),
    )
    p.add_argument("--model", required=True, help=MODEL_HELP)
    add_adapter_option(p)
    p.add_argument("--prompt", required=True, help="text to continue")
    s = p.add_argument_group("sampling")
    add_sampling_options(
        s,
        defaults=DEFAULTS,
        max_tokens_flag="--max-new-tokens",
        max_tokens_help="most tokens to generate",
        seed_help="seed for reproducible sampling (default: random)",
    )
    s.add_argument(
        "--stop",
        action="append",
        default=[],
        metavar="TEXT",
        help="stop before this text (repeatable)",
    )
    add_runtime_options(p, threads_help="native backend threads (0 = all cores)")
    d = p.add_argument_group("speculative decoding")
    d.add_argument(
        "--draft",
        metavar="DIR",
        help="a cheaper model with the same tokenizer that proposes tokens for --model to check "
        "in one pass: a smaller model, or an int4 copy of the same one (pocketlm quantize). The "
        "text is the same as without it at --temperature 0 (the same distribution when "
        "sampling); it pays off when the model is large and the draft guesses well",
    )
    d.add_argument("--draft-tokens", type=int, default=4, help="tokens the draft proposes per step")
    p.set_defaults(handler=_generate)


def _draft_note(engine) -> str:
    if engine.last_acceptance is None:
        return ""
    return f", draft accepted {engine.last_acceptance:.0%}"


def _generate(args: argparse.Namespace) -> int:
    from pocketlm.engine.load import load_engine

    sampling_from_args(args, defaults=DEFAULTS, stop=args.stop)  # bad flags fail before loading
    engine = load_engine(
        args.model,
        device=args.device,
        precision=args.precision,
        backend=args.backend,
        threads=cap_threads(args.threads),
        draft=args.draft,
        draft_tokens=args.draft_tokens,
        adapter=args.adapter,
    )
    model = engine.tokenizer.generation_defaults
    params = sampling_from_args(args, defaults=DEFAULTS, model=model, stop=args.stop)
    last = None
    for chunk in engine.generate(args.prompt, params):
        if chunk.text:
            write_text(chunk.text)
        last = chunk
    write_text("\n")
    if last is not None and last.timings is not None and not getattr(args, "quiet", False):
        t = last.timings
        print(
            f"[{t.generated_tokens} tokens, prompt {t.prompt_tokens} tokens, "
            f"prefill {t.prefill_s:.3f}s, {t.decode_tokens_per_s:.1f} tokens/s, "
            f"backend {engine.name}{_draft_note(engine)}, finish: {last.finish_reason}]",
            file=sys.stderr,
        )
    return 0
