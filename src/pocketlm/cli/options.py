"""Shared CLI option helpers: --config/--set/--overwrite and mapping flags onto config keys."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from pocketlm.engine.sampling import SamplingParams
    from pocketlm.tokenizer.generation_config import GenerationDefaults

T = TypeVar("T")

# --model everywhere: what a model path may be (interop.open_model resolves it).
MODEL_HELP = (
    "model directory, a training run (its final model) or a Hugging Face model folder "
    "(imported once into PocketLM's cache: see `pocketlm import --help`)"
)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the hand-written layout of descriptions and examples; shows defaults."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" not in text and action.default not in (None, False, argparse.SUPPRESS, []):
            text += " (default: %(default)s)"
        return text


def add_parser(
    subparsers, name: str, *, help: str, description: str, examples: str = ""
) -> argparse.ArgumentParser:
    """A subcommand parser with our formatter and an 'examples:' epilog."""
    epilog = "examples:\n" + examples.rstrip() if examples else None
    return subparsers.add_parser(
        name, help=help, description=description, epilog=epilog, formatter_class=HelpFormatter
    )


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """--config FILE.toml, --set key.sub=value (repeatable), --overwrite."""
    group = parser.add_argument_group("configuration")
    group.add_argument(
        "--config", metavar="FILE", help="TOML file with settings (CLI flags and --set override it)"
    )
    group.add_argument(
        "--set",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="override one setting, e.g. --set clean.min_chars=200 (repeatable)",
    )
    group.add_argument(
        "--overwrite", action="store_true", help="replace --out if it already exists"
    )


def config_from_args(cls: type[T], args: argparse.Namespace, flag_keys: Mapping[str, str]) -> T:
    """Build config `cls` from --config, the flags named in flag_keys (dest -> dotted key) and --set."""
    from pocketlm.common.config import load_config

    flags: dict[str, Any] = {
        key: getattr(args, dest)
        for dest, key in flag_keys.items()
        if getattr(args, dest, None) is not None
    }
    return load_config(cls, file=args.config, flags=flags, overrides=args.set)


def command_line() -> list[str]:
    """The command as typed, recorded in manifests."""
    return ["pocketlm", *sys.argv[1:]]


def done(path: object) -> int:
    """Print the artifact path on stdout (the one line scripts can capture) and succeed."""
    print(path)
    return 0


SAMPLING_FLAGS = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty", "max_new_tokens")


def add_sampling_options(
    group: argparse._ArgumentGroup,
    *,
    defaults: Mapping[str, float | int],
    max_tokens_flag: str,
    max_tokens_help: str,
    seed_help: str,
) -> None:
    """The sampling flags sampling_from_args reads (generate and chat differ in defaults and in
    the name of the length flag). A flag left out takes the model's generation_config.json value,
    else `defaults`."""

    def note(name: str) -> str:
        return f"(default: the model's generation_config.json, else {defaults[name]})"

    group.add_argument(
        max_tokens_flag,
        dest="max_new_tokens",
        type=int,
        help=f"{max_tokens_help} {note('max_new_tokens')}",
    )
    group.add_argument(
        "--temperature", type=float, help=f"0 = greedy (argmax) {note('temperature')}"
    )
    group.add_argument(
        "--top-k", type=int, help=f"keep the k most likely tokens (0 = off) {note('top_k')}"
    )
    group.add_argument(
        "--top-p",
        type=float,
        help=f"keep the smallest set with this mass (1 = off) {note('top_p')}",
    )
    group.add_argument(
        "--min-p",
        type=float,
        help=f"drop tokens less likely than this times the top one (0 = off) {note('min_p')}",
    )
    group.add_argument(
        "--repetition-penalty",
        type=float,
        help=f"> 1 discourages tokens already seen (1 = off) {note('repetition_penalty')}",
    )
    group.add_argument("--seed", type=int, help=seed_help)


def add_precision_option(group: Any, what: str, default: str | None) -> None:
    """--precision with THE rule in its help (common.device.resolve_precision)."""
    from pocketlm.common.device import PRECISION_RULE

    group.add_argument(
        "--precision",
        default=default,
        choices=["auto", "fp32", "bf16", "fp16"],
        help=f"{what} ({PRECISION_RULE}; default: auto)",
    )


def add_runtime_options(parser: argparse.ArgumentParser, *, threads_help: str) -> None:
    """The "runtime" group: --device, --precision, --backend, --threads (generate, chat, serve)."""
    r = parser.add_argument_group("runtime")
    r.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    add_precision_option(r, "precision of the torch backend's weights and compute", "auto")
    r.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "torch", "native", "onnx", "llamacpp"],
        help="forward passes in PyTorch or the native C kernels (CPU only); onnx: an `export "
        "onnx` directory in onnxruntime; llamacpp: a .gguf file in llama.cpp; auto: onnx or "
        "llamacpp by the path, else native on the CPU when it can run the model, else torch",
    )
    r.add_argument(
        "--threads", type=int, default=0, help=f"{threads_help}; more than the usable cores: capped"
    )


def cap_threads(requested: int) -> int:
    """--threads as given, or the usable cores when it asks for more (saying so on stderr).

    More threads than cores only adds contention: --threads 1000 took minutes for 8 tokens.
    """
    from pocketlm.common.device import usable_cores
    from pocketlm.common.errors import ConfigError

    if requested < 0:
        raise ConfigError(f"--threads must be >= 0 (0: automatic), got {requested}")
    cores = usable_cores()
    if requested > cores:
        print(
            f"warning: --threads {requested} is more than the {cores} usable cores: using {cores}",
            file=sys.stderr,
        )
        return cores
    return requested


def sampling_from_args(
    args: argparse.Namespace,
    *,
    defaults: Mapping[str, float | int],
    model: GenerationDefaults | None = None,
    stop: Sequence[str] = (),
) -> SamplingParams:
    """SamplingParams from the shared flags (--temperature/--top-k/--top-p/--min-p/
    --repetition-penalty/--seed and the length flag); a flag left out takes the model's
    generation_config.json value (`model`), else `defaults`."""
    from pocketlm.engine.sampling import SamplingParams

    values = dict(defaults)
    if model is not None:
        values.update(model.sampling())
    for name in SAMPLING_FLAGS:
        if getattr(args, name, None) is not None:
            values[name] = getattr(args, name)
    return SamplingParams(**values, seed=args.seed, stop=tuple(stop))


def add_adapter_option(parser: argparse.ArgumentParser) -> None:
    """--adapter DIR: a LoRA adapter applied on top of --model (its base)."""
    parser.add_argument(
        "--adapter",
        metavar="DIR",
        help="a LoRA adapter (or a LoRA fine-tuning run) to apply on top of --model, the base it "
        "was trained on (checked by hash); runs on the torch backend",
    )


# add_training_options' flags -> their key in a TrainConfig
_TRAINING_KEYS = {
    "ctx": "ctx",
    "batch_size": "batch_size",
    "grad_accum": "grad_accum",
    "lr": "optim.lr",
    "budget": "budget",
    "precision": "precision",
    "device": "device",
    "seed": "seed",
    "compile": "compile",
    "checkpoint_activations": "checkpoint_activations",
}


def training_flag_keys(prefix: str = "train") -> dict[str, str]:
    """dest -> dotted config key of add_training_options' flags, the TrainConfig at `prefix`."""
    return {dest: f"{prefix}.{key}" for dest, key in _TRAINING_KEYS.items()}


def add_training_options(run: Any, *, lr_help: str, seed_help: str) -> None:
    """The training loop's flags every training command shares (sequence, batch, learning rate,
    budget, precision, device, compile, seed); read back with `training_budget`."""
    run.add_argument("--ctx", type=int, help="sequence length in tokens (default: 256)")
    run.add_argument("--batch-size", type=int, help="sequences per micro-batch (default: 16)")
    run.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step (default: 1)")
    run.add_argument("--lr", type=float, help=lr_help)
    budget = run.add_mutually_exclusive_group()
    budget.add_argument(
        "--budget",
        help="time budget, e.g. 5m, 90s, 1h (default: 5m); '10m cpu' counts this process's CPU time instead of the wall clock (the same compute on a busy machine)",
    )
    budget.add_argument("--max-tokens", help="token budget, e.g. 20M")
    budget.add_argument("--max-steps", type=int, help="optimizer-step budget")
    add_precision_option(run, "autocast precision of the training step", None)
    run.add_argument("--device", help="auto, cpu, cuda, cuda:N, mps (default: auto)")
    run.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    run.add_argument("--seed", type=int, help=seed_help)
    run.add_argument(
        "--checkpoint-activations",
        action="store_true",
        default=None,
        help="recompute each layer in backward instead of keeping its activations: much less "
        "memory (most of a LoRA/QLoRA step's peak) for about a third more time a step",
    )


def training_budget(args: argparse.Namespace) -> None:
    """Fold --max-tokens / --max-steps into args.budget and --compile into train.compile's "on"."""
    if args.max_tokens:
        args.budget = f"{args.max_tokens} tokens"
    elif args.max_steps:
        args.budget = f"{args.max_steps} steps"
    if args.compile:
        args.compile = "on"
