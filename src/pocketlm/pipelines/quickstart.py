"""The quickstart: corpus -> tokenizer -> tokens -> plan -> pretrain -> eval -> samples ->
int8/int4 variants and the ONNX/GGUF exports compared with the model -> report.md.

Each stage writes its own artifact under `out/` and is reused on the next run when its inputs
are unchanged; an interrupted training run is resumed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pocketlm.common.errors import ArtifactError
from pocketlm.common.log import get_logger
from pocketlm.common.manifest import read_manifest
from pocketlm.common.units import format_count, format_duration
from pocketlm.pipelines.machine_load import LOAD_FILE, load_row, load_warning, machine_load
from pocketlm.pipelines.quickstart_variants import (
    VARIANT_SCHEMES,
    build_variants,
    missing_exports,
    variants_section,
)

_log = get_logger("pocketlm.quickstart")
STATE_FILE = "quickstart.json"
# No trailing spaces: byte-level BPE attaches a space to the next word, so a prompt ending in
# one asks the model to continue after an unnatural token.
PYTHON_PROMPTS = ("def", "class", "import", "    def __init__(self", "#")


@dataclass(frozen=True)
class QuickstartConfig:
    """What the quickstart builds."""

    corpus: tuple[str, ...] = ("stdlib",)
    budget: str = "5m"
    vocab_size: int = 4096
    ctx: int = 256
    batch_size: int = 16
    model: str = ""  # a preset; "" = let the planner choose for the budget
    precision: str = "auto"
    device: str = "auto"
    seed: int = 0
    chat: bool = False  # add a chat fine-tuning stage on the stdlib instruction set
    chat_budget: str = "2m"
    variants: bool = True  # int8, int4, ONNX and GGUF compared with the model (quickstart_variants)


def sample_prompts(config: QuickstartConfig) -> tuple[str, ...]:
    """The prompts of the report's samples (and of the variants' greedy token agreement)."""
    return PYTHON_PROMPTS if "stdlib" in config.corpus else ("The", "In", "A", "We", "It")


def _complete(path: Path, kind: str) -> bool:
    try:
        read_manifest(path, kind=kind)
        return True
    except ArtifactError:
        return False


def run_quickstart(
    config: QuickstartConfig,
    out: str | Path,
    *,
    command: Sequence[str] | None = None,
    echo: Callable[[str], None] = print,
) -> Path:
    """Run (or resume) every stage under `out`; returns the path of report.md."""
    from pocketlm.common.device import resolve_device, resolve_precision
    from pocketlm.data.build import build_corpus
    from pocketlm.data.encode import encode_corpus
    from pocketlm.tokenizer.train import TokenizerConfig, train_tokenizer

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / STATE_FILE
    previous = json.loads(state_path.read_text(encoding="utf-8")) if state_path.exists() else {}
    signatures = {
        "corpus": {"sources": list(config.corpus)},
        "tokenizer": {"vocab_size": config.vocab_size},
        "tokens": {},
        "chat": {"budget": config.chat_budget},
        # the exports the installed extras allow: installing one rebuilds the stage
        "variants": {"schemes": list(VARIANT_SCHEMES), "missing": sorted(missing_exports())},
        "pretrain": {
            "budget": config.budget,
            "model": config.model,
            "ctx": config.ctx,
            "batch_size": config.batch_size,
            "precision": config.precision,
            "seed": config.seed,
        },
    }
    reuse = True
    state: dict[str, Any] = {}
    n_stages = 4 + int(config.chat) + int(config.variants)

    def stage(index: int, name: str, kind: str, path: Path, build: Callable[[], Any]) -> None:
        nonlocal reuse
        same = previous.get(name) == signatures[name]
        if reuse and same and _complete(path, kind):
            echo(f"[{index}/{n_stages}] {name}: reusing {path}")
        else:
            reuse = False
            t0 = time.perf_counter()
            echo(f"[{index}/{n_stages}] {name}: building {path}")
            # marked as started, so a run interrupted in this stage can continue it next time
            started = {**previous, **state, f"{name}:started": signatures[name]}
            state_path.write_text(json.dumps(started, indent=2), encoding="utf-8")
            build()
            echo(f"        done in {format_duration(time.perf_counter() - t0)}")
        state[name] = signatures[name]
        state_path.write_text(json.dumps({**previous, **state}, indent=2), encoding="utf-8")

    corpus_dir, tok_dir, tokens_dir, run_dir = (
        out / "corpus",
        out / "tokenizer",
        out / "tokens",
        out / "pretrain",
    )
    stage(
        1,
        "corpus",
        "corpus",
        corpus_dir,
        lambda: build_corpus(list(config.corpus), corpus_dir, command=command, overwrite=True),
    )
    stage(
        2,
        "tokenizer",
        "tokenizer",
        tok_dir,
        lambda: train_tokenizer(
            corpus_dir,
            tok_dir,
            TokenizerConfig(vocab_size=config.vocab_size),
            command=command,
            overwrite=True,
        ),
    )
    stage(
        3,
        "tokens",
        "tokens",
        tokens_dir,
        lambda: encode_corpus(corpus_dir, tok_dir, tokens_dir, command=command, overwrite=True),
    )

    upstream_reused = reuse
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    chosen: dict[str, Any] = {}

    def train_model() -> None:
        from pocketlm.common.config import replace
        from pocketlm.train.tasks.pretrain import PretrainConfig, pretrain

        # An interrupted training stage with the same settings continues where it stopped
        # (with the size it had chosen; measuring again could pick another).
        resume = (
            upstream_reused
            and previous.get("pretrain:started") == signatures["pretrain"]
            and bool(previous.get("pretrain:preset"))
            and run_dir.is_dir()
        )
        preset = (
            previous["pretrain:preset"]
            if resume
            else config.model or _plan(config, tokens_dir, device, precision, echo)
        )
        chosen["preset"] = preset
        recorded = json.loads(state_path.read_text(encoding="utf-8"))
        state_path.write_text(
            json.dumps({**recorded, "pretrain:preset": preset}, indent=2), encoding="utf-8"
        )
        pc = replace(
            PretrainConfig(),
            **{
                "model.preset": preset,
                "train.budget": config.budget,
                "train.ctx": config.ctx,
                "train.batch_size": config.batch_size,
                "train.precision": precision,
                "train.device": config.device,
                "train.seed": config.seed,
            },
        )
        if not resume and run_dir.exists():
            import shutil

            shutil.rmtree(run_dir)
        echo(
            f"        training {preset} for {config.budget}"
            + (" (resuming)" if resume else "")
            + f" — progress, loss and tokens/s below; metrics in {run_dir / 'metrics.jsonl'}"
        )
        with machine_load(run_dir / LOAD_FILE):
            pretrain(tokens_dir, run_dir, pc, resume=resume, command=command)

    stage(4, "pretrain", "model", run_dir / "model", train_model)
    prompts = sample_prompts(config)
    chat_dir = out / "chat"
    if config.chat:
        stage(
            5,
            "chat",
            "model",
            chat_dir / "model",
            lambda: _chat_stage(config, out, run_dir, command, echo),
        )
    if config.variants:
        stage(
            n_stages,
            "variants",
            "compare",
            out / "compare",
            lambda: build_variants(out, run_dir, tokens_dir, config.ctx, prompts, command),
        )
    report = _report(config, out, tokens_dir, run_dir, echo)
    echo(f"\nReport: {report}")
    echo("Next, try:")
    if config.chat:
        echo(
            f"  pocketlm chat --model {chat_dir}   # ask it for a function, e.g. 'Return the sum of a list.'"
        )
    echo(f"  pocketlm generate --model {run_dir} --prompt 'def fibonacci(n):'")
    echo(f"  pocketlm eval --model {run_dir} --tokens {tokens_dir}")
    if not config.variants:
        echo(
            f"  pocketlm quantize --model {run_dir} --scheme int8 --tokens {tokens_dir} --out {out / 'int8'}"
        )
    else:
        echo(f"  pocketlm generate --model {out / 'int4'} --prompt 'def'   # the int4 variant")
    echo(
        f"  pocketlm serve --model {run_dir}   # OpenAI API + chat page (pip install 'pocketlm[serve]')"
    )
    echo(f"  pocketlm export hf --model {run_dir} --out {out / 'hf'}")
    echo(
        f"  pocketlm export gguf --model {run_dir} --out {out / 'model.gguf'}   # needs pocketlm[gguf]"
    )
    echo(f"  pocketlm inspect {run_dir / 'model'}")
    return report


def _chat_stage(
    config: QuickstartConfig,
    out: Path,
    run_dir: Path,
    command: Sequence[str] | None,
    echo: Callable[[str], None],
) -> None:
    """Fine-tune the pretrained model on the stdlib instruction set (request -> code)."""
    import shutil

    from pocketlm.common.config import replace
    from pocketlm.data.sources import stdlib_files
    from pocketlm.data.stdlib_instructions import stdlib_instruction_records
    from pocketlm.train.tasks.sft import SFTConfig, sft

    records = stdlib_instruction_records(stdlib_files())
    data = out / "chat-data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    chat_dir = out / "chat"
    if chat_dir.exists():
        shutil.rmtree(chat_dir)
    settings = replace(
        SFTConfig(),
        **{
            "train.budget": config.chat_budget,
            "train.ctx": config.ctx,
            "train.batch_size": config.batch_size,
            "train.device": config.device,
            "train.seed": config.seed,
            "train.optim.lr": 1e-3,  # a small model fine-tuned briefly: a larger step than 2e-4
        },
    )
    echo(
        f"        fine-tuning on {len(records)} requests from the standard library (a docstring's "
        f"first sentence -> the function's code) for {config.chat_budget}"
    )
    sft(run_dir / "model", [str(data)], chat_dir, settings, command=command)


def _plan(
    config: QuickstartConfig,
    tokens_dir: Path,
    device: Any,
    precision: str,
    echo: Callable[[str], None],
) -> str:
    from pocketlm.data.token_shards import TokenShards
    from pocketlm.train.budget import parse_budget
    from pocketlm.train.plan import plan_sizes, recommend

    vocab = TokenShards(tokens_dir).vocab_size
    echo("        measuring candidate sizes on this machine ...")
    budget = parse_budget(config.budget)
    rows = plan_sizes(vocab, config.ctx, config.batch_size, device, precision, budget=budget)
    best = recommend(rows, budget)
    for r in rows:
        mark = "  <- chosen" if r is best else ""
        echo(
            f"        {r.name:<12} {format_count(r.config.num_params()):>6} params  {format_count(r.tokens_per_s):>6} tok/s  {format_count(r.tokens_in(budget)):>6} tokens in budget{mark}"
        )
    return best.name


def _samples(model_dir: Path, prompts: Sequence[str], device: str) -> list[tuple[str, str]]:
    from pocketlm.engine.load import load_engine
    from pocketlm.engine.sampling import SamplingParams

    engine = load_engine(model_dir, device=device)
    return [
        (
            p,
            engine.complete(
                p, SamplingParams(max_new_tokens=80, temperature=0.7, top_p=0.95, seed=i)
            ).text,
        )
        for i, p in enumerate(prompts)
    ]


def _report(
    config: QuickstartConfig,
    out: Path,
    tokens_dir: Path,
    run_dir: Path,
    echo: Callable[[str], None],
) -> Path:
    model_manifest = read_manifest(run_dir / "model", kind="model")
    s = model_manifest["summary"]
    prompts = sample_prompts(config)
    samples = _samples(run_dir / "model", prompts, config.device)
    run_cfg = json.loads((run_dir / "run_config.json").read_text(encoding="utf-8"))
    model = run_cfg["model"]
    lines = [
        "# PocketLM quickstart report",
        "",
        f"Corpus: {', '.join(config.corpus)} — see [corpus/data_report.md](corpus/data_report.md).",
        "",
        "| | |",
        "|---|---|",
        f"| model | {model['n_layers']} layers × {model['dim']} dim, {model['n_heads']}/{model['n_kv_heads']} heads, ffn {model.get('ffn_dim') or 'auto'}, vocab {model['vocab_size']} |",
        f"| parameters | {format_count(s['params'])} |",
        f"| tokens seen | {format_count(s['tokens'])} in {format_duration(s['train_seconds'])} |",
        f"| throughput | {format_count(s['tokens_per_s'])} tokens/s"
        + (
            f", MFU {s['mfu']:.0%} of the measured {s['peak_tflops_measured'] * 1000:.0f} GFLOP/s matmul peak ({s.get('precision', 'fp32')})"
            if "mfu" in s
            else ""
        )
        + " |",
        load_row(run_dir / LOAD_FILE),
        f"| validation loss | {s.get('val_loss', float('nan')):.4f} nats/token |",
        f"| **validation bits per byte** | **{s.get('val_bpb', float('nan')):.4f}** |",
        "",
        "![loss curve](pretrain/loss.png)",
        "",
        "## Samples (temperature 0.7, top-p 0.95)",
        "",
    ]
    for prompt, completion in samples:
        lines += ["```", prompt + completion, "```", ""]
    if config.variants and _complete(out / "compare", "compare"):  # not a stale one
        lines += variants_section(out / "compare")
    warning = load_warning(run_dir / LOAD_FILE)
    if warning:
        lines[lines.index("![loss curve](pretrain/loss.png)")] = (
            f"> **Warning:** {warning}\n\n![loss curve](pretrain/loss.png)"
        )
    report = out / "report.md"
    report.write_text("\n".join(lines), encoding="utf-8")
    echo(
        f"\nval bpb {s.get('val_bpb', float('nan')):.4f} after {format_count(s['tokens'])} tokens ({format_count(s['params'])} params)"
    )
    if warning:
        echo(f"warning: {warning}")
    echo("Sample:\n" + samples[0][0] + samples[0][1])
    return report
