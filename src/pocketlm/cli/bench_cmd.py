"""`pocketlm bench`."""

from __future__ import annotations

import argparse
import json

from pocketlm.cli.options import MODEL_HELP, add_parser, add_precision_option, cap_threads


def register(subparsers) -> None:
    p = add_parser(
        subparsers,
        "bench",
        help="prefill/decode speed, time to first token, memory and size of a model",
        description=(
            "Measure a model (any variant: fp32, bf16, int8, int4) on this machine: load time, time to\n"
            "first token, prefill and decode tokens/s (greedy, exactly --new-tokens tokens), peak memory\n"
            "and file size. --backend auto uses the native CPU kernels when they are built and the device\n"
            "is the CPU, else PyTorch."
        ),
        examples="  pocketlm bench --model runs/quickstart/pretrain\n  pocketlm bench --model runs/q4 --prompt-tokens 128 --new-tokens 64 --json",
    )
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument(
        "--repeats", type=int, default=3, help="timed repetitions (medians are reported)"
    )
    p.add_argument(
        "--backend", choices=["auto", "native", "torch", "onnx", "llamacpp"], default="auto"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="CPU threads (default: all usable cores; more are capped to them)",
    )
    p.add_argument("--device", default="cpu", help="for the torch backend: cpu, cuda, auto")
    add_precision_option(p, "for the torch backend", "auto")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=_bench)


def _bench(args: argparse.Namespace) -> int:
    from pocketlm.engine.bench import bench_model

    r = bench_model(
        args.model,
        prompt_tokens=args.prompt_tokens,
        new_tokens=args.new_tokens,
        backend=args.backend,
        threads=cap_threads(args.threads),
        repeats=args.repeats,
        device=args.device,
        precision=args.precision,
    )
    if args.json:
        print(json.dumps(r))
        return 0
    print(
        f"{r['model']}  [{r['backend']}{', ' + r['isa'] if r['isa'] else ''}, {r['model_bytes'] / 1e6:.1f} MB]"
    )
    print(
        f"  prefill  {r['prefill_tokens_per_s']:>10,.1f} tokens/s   ({r['prompt_tokens']} tokens)"
    )
    print(f"  decode   {r['decode_tokens_per_s']:>10,.1f} tokens/s   ({r['new_tokens']} tokens)")
    print(
        f"  load {r['load_s']:.3f} s, time to first token {r['time_to_first_token_s']:.3f} s, peak memory {r['peak_memory_mb']:.0f} MB"
    )
    return 0
