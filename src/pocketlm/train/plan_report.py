"""The text `pocketlm plan` prints (library side of the command)."""

from __future__ import annotations

import argparse
from typing import Any

from pocketlm.common.errors import ConfigError
from pocketlm.common.units import format_bytes, format_count


def run_plan(args: argparse.Namespace) -> str:
    """Measure and describe the requested shape (or the candidates); return the report text."""
    from pocketlm.common.device import resolve_device, resolve_precision
    from pocketlm.data.token_shards import TokenShards
    from pocketlm.model.config import ModelConfig
    from pocketlm.model.presets import preset_config
    from pocketlm.train.budget import parse_budget
    from pocketlm.train.plan import (
        DEFAULT_CANDIDATES,
        measure_row,
        memory_estimate,
        plan_sizes,
        recommend,
        runtime_baseline_bytes,
    )

    text = args.budget.strip()
    budget = parse_budget(
        f"{text} tokens" if text[-1:] in ("k", "K", "M", "B", "G") else text
    )  # "20M": tokens; "10m": minutes
    corpus_tokens = None
    if args.tokens:
        shards = TokenShards(args.tokens)
        vocab = shards.vocab_size
        corpus_tokens = shards.manifest["summary"]["splits"]["train"]["tokens"]
    elif args.vocab_size:
        vocab = args.vocab_size
    else:
        raise ConfigError("give --tokens DIR (or --vocab-size N) so the plan knows the vocabulary")
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    baseline = runtime_baseline_bytes()
    if args.preset or args.dim:
        if args.preset:
            config = preset_config(args.preset, vocab_size=vocab, max_seq_len=args.ctx)
            name = args.preset
        else:
            if not (args.layers and args.heads):
                raise ConfigError("with --dim also give --layers and --heads")
            config = ModelConfig(
                vocab_size=vocab,
                dim=args.dim,
                n_layers=args.layers,
                n_heads=args.heads,
                n_kv_heads=args.kv_heads or args.heads,
                max_seq_len=args.ctx,
            )
            name = f"{args.layers}x{args.dim}"
        rows = [measure_row(name, config, args.batch_size, args.ctx, device, precision, budget)]
    else:
        rows = plan_sizes(
            vocab, args.ctx, args.batch_size, device, precision, DEFAULT_CANDIDATES, budget=budget
        )
    best = recommend(rows, budget)
    lines = [
        f"plan on {device} ({precision}), batch {args.batch_size} x {args.ctx} tokens, vocab {vocab}, budget {budget.describe()}",
        f"process baseline (Python, torch): {format_bytes(baseline)}",
        "",
    ]
    header = f"{'model':<14}{'params':>8}{'memory':>10}{'weights':>9}{'optim':>9}{'activ.':>9}{'step':>8}{'tok/s':>8}{'tokens':>9}{'epochs':>8}"
    lines.append(header)
    for r in rows:
        mem = memory_estimate(r.config, batch_size=args.batch_size, ctx=args.ctx)
        tokens = r.tokens_in(budget)
        epochs = f"{tokens / corpus_tokens:.1f}" if corpus_tokens else "-"
        mark = "  <- recommended" if r is best else ""
        lines.append(
            f"{r.name:<14}{format_count(r.config.num_params()):>8}{format_bytes(mem['total'] + baseline):>10}{format_bytes(mem['weights']):>9}"
            f"{format_bytes(mem['optimizer']):>9}{format_bytes(mem['activations']):>9}{r.seconds_per_step:>7.2f}s{format_count(r.tokens_per_s):>8}"
            f"{format_count(tokens):>9}{epochs:>8}{mark}"
        )
    lines += [
        "",
        f"recommended: {best.name} ({format_count(best.config.num_params())} parameters)",
        "  " + pretrain_command(best, args, budget),
    ]
    return "\n".join(lines)


def pretrain_command(best: Any, args: argparse.Namespace, budget: Any) -> str:
    """The whole `pocketlm pretrain` command that trains the recommended size, ready to run."""
    from pocketlm.model.presets import PRESETS

    if best.name in PRESETS:
        shape = f"--model {best.name}"
    else:
        c = best.config
        shape = f"--layers {c.n_layers} --dim {c.dim} --heads {c.n_heads} --kv-heads {c.n_kv_heads}"
    amount = {
        "time": f"--budget {args.budget}",
        "tokens": f"--max-tokens {format_count(budget.amount)}",
        "steps": f"--max-steps {int(budget.amount)}",
    }[budget.kind]
    parts = [
        "pocketlm pretrain",
        f"--tokens {args.tokens or 'TOKENS_DIR'}",
        shape,
        amount,
        f"--ctx {args.ctx}" if args.ctx != 256 else "",
        f"--batch-size {args.batch_size}" if args.batch_size != 16 else "",
        f"--precision {args.precision}" if args.precision != "auto" else "",
        "--out runs/pretrain",
    ]
    return " ".join(p for p in parts if p)
