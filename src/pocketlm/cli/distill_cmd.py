"""`pocketlm distill` (a teacher language model -> a smaller student) and `pocketlm distill
cache` (the teacher's top-k log-probabilities, stored once for CPU budgets)."""

from __future__ import annotations

import argparse

from pocketlm.cli.options import (
    MODEL_HELP,
    add_config_options,
    add_parser,
    add_precision_option,
    add_training_options,
    command_line,
    config_from_args,
    training_budget,
    training_flag_keys,
)

_FLAGS = {
    "loss": "loss",
    "temperature": "temperature",
    "beta": "beta",
    "hard_weight": "hard_weight",
    "top_k": "top_k",
    "on_policy": "on_policy",
    "prompt_tokens": "prompt_tokens",
    "lora_rank": "lora.rank",
    "lora_alpha": "lora.alpha",
    "lora_dropout": "lora.dropout",
    "lora_targets": "lora.targets",
    **training_flag_keys(),
    "val_fraction": "data.val_fraction",
    "on_bad_record": "data.on_bad_record",
    "too_long": "data.too_long",
    "packing": "data.packing",
}

_CACHE_FLAGS = {
    "top_k": "top_k",
    "ctx": "ctx",
    "batch_size": "batch_size",
    "shard_windows": "shard_windows",
    "max_tokens": "max_tokens",
    "passes": "passes",
    "device": "device",
    "precision": "precision",
}

_DESCRIPTION = """\
Knowledge distillation: a student model learns to reproduce a teacher's next-token
distribution at every position, not only the one right token a corpus holds - far more signal
per token, which is how DistilBERT, Minitron and friends got small models from big ones.

Teacher and student read the same token ids, so they need the same tokenizer (a student with
another tokenizer is refused: distill it in black-box mode with `pocketlm synth`, below). A
teacher whose vocabulary is padded with extra rows is trimmed to the student's.

The student (--student) is
  DIR      a model (a pruned copy of the teacher, a smaller trained model): trained whole, or
           through a LoRA adapter with --lora-rank (the student's base stays frozen), or
  PRESET   a named size (`pocketlm presets`), built fresh with the teacher's tokenizer and context.
  draft[:N] a speculative-decoding draft for the teacher, in one command: the teacher cut to N
           layers (default: a quarter) by importance on --tokens, distilled from it, and
           quantized to int4 in OUT/draft-int4 for `pocketlm generate --draft`.

The data is one of
  --tokens DIR     token shards made with the teacher's tokenizer (`pocketlm data encode`):
                   windows of --ctx tokens, every position a target, as in pretraining
  --data FILE...   chat records, as in `pocketlm finetune`: the loss only on assistant tokens
  --cache DIR      a teacher cache from `pocketlm distill cache` (below): the teacher is never
                   loaded; the student trains on the cached windows (--ctx is the cache's)

Black-box, from stored targets: `--data SYNTH` with neither --teacher nor --cache reads a
`pocketlm synth` output (its directory or data.jsonl) made with --top-logprobs K: the teacher
(any OpenAI-compatible API) is known by its top-K log-probabilities per reply token, stored as
text. The records are formatted in the student's own chat template, as in `pocketlm finetune`;
each student token of a reply spanning exactly the bytes of a teacher token gets that token's
top-K (and the token it chose) as a target, mapped to the student's ids (alternatives its
vocabulary lacks join the "rest" outcome): there the loss is (1 - h) * sparse forward KL +
h * CE; the other tokens (another split, the end of turn) train on the hard label alone. Any
student tokenizer works; with the teacher's own nearly every token aligns. The log and the
summary report the aligned share (distill_data.stored_targets). The student is a model
directory (a PRESET has no tokenizer here); forward KL only, no --on-policy.

Loss per target position: (1 - h) * D(teacher || student) + h * cross-entropy on the data's
token, h = --hard-weight. D (--loss) is
  forward_kl   KL(teacher || student), the classic (Hinton): the student covers all the
               teacher's modes; scaled by T^2 at --temperature T
  reverse_kl   KL(student || teacher): mode-seeking, good with --on-policy
  jsd          generalised Jensen-Shannon of weight --beta (GKD): between the two KLs
  tv           total variation: bounded, robust to a noisy teacher
With --top-k K (or a cache) the teacher is known only by its K most likely tokens: the forward
KL runs over those K plus one outcome for the rest, so the missing mass is matched, not dropped.

On-policy (--on-policy F): a share F of the batches are the student's own continuations of data
prompts (half a window, or a chat's conversation up to its first reply), sampled at
temperature 1 by a batched loop on the student's live torch weights with a KV cache, and
scored by the teacher with D (no hard-label term there): the student learns on what it
actually writes (GKD, MiniLLM). Needs a live --teacher.

The run directory holds checkpoints/ (exact resume with --resume), metrics.jsonl, loss.png and
model/ (the student: a model, or an adapter on it with LoRA). The summary reports the student's
validation loss (and bits per byte on token data) and, at the end, the teacher's.
Memory: a step holds both models' logits, batch x ctx x vocab floats each: lower --batch-size
for large vocabularies.
"""

_CACHE_DESCRIPTION = """\
Run the teacher once over the train split of a tokens directory and store its top-k
log-probabilities at every position: then `pocketlm distill --cache DIR` trains students
without the teacher in memory or in the step time (the CPU-budget way to distill, and to try
several students on one teacher).

Cost: k * (2 + 2) bytes per token (uint16 ids for vocabularies up to 65,536, fp16 log-probs):
128 bytes at --top-k 32, so 1M tokens take 128 MB. The windows are the student's: window j is
tokens j*ctx .. j*ctx+ctx, so --ctx here is the --ctx students train with.

Several epochs: a live-teacher run shifts its windows by a random offset every epoch, so a
student sees each token at many positions; a one-pass cache repeats the same windows every
epoch (measured: 0.04 bits/byte worse than live over four epochs). --passes N caches the split
N times, pass p shifted by p*ctx/N tokens; the student reads pass e mod N in its epoch e. Give
it about as many passes as the student will run epochs (N times the teacher time and size).

Streaming and resumable: shards of --shard-windows windows are written atomically as they are
done, with a progress marker; after a kill, run the same command again and it continues from
the last finished shard (other settings are refused; --overwrite starts over).
"""


def register(subparsers) -> None:
    p = add_parser(
        subparsers,
        "distill",
        help="distill a teacher language model into a smaller student (live or from a cache)",
        description=_DESCRIPTION,
        examples=(
            "  pocketlm distill --teacher runs/big --student nano-3m --tokens runs/tokens --budget 10m --out runs/student\n"
            "  pocketlm distill --teacher runs/big --student runs/pruned --tokens runs/tokens --hard-weight 0.2 --out runs/healed\n"
            "  pocketlm distill --teacher runs/chat --student runs/small-chat --data chats.jsonl --loss reverse_kl --on-policy 0.5 --out runs/d\n"
            "  pocketlm distill --teacher runs/big --student runs/small --tokens runs/tokens --lora-rank 16 --out runs/lora\n"
            "  pocketlm distill --teacher runs/big --student draft --tokens runs/tokens --budget 10m --out runs/draft   # then generate --draft runs/draft/draft-int4\n"
            "  pocketlm distill cache --teacher runs/big --tokens runs/tokens --ctx 256 --out runs/cache\n"
            "  pocketlm distill --cache runs/cache --student nano-3m --budget 10m --out runs/from-cache\n"
            "  pocketlm synth --teacher-url http://127.0.0.1:8000 --prompts p.txt --top-logprobs 8 --out runs/synth\n"
            "  pocketlm distill --data runs/synth --student runs/small --hard-weight 0.1 --out runs/black-box"
        ),
    )
    teacher = p.add_argument_group("teacher and student")
    teacher.add_argument(
        "--teacher", help=f"the teacher: {MODEL_HELP} (none: --cache, or --data's stored targets)"
    )
    teacher.add_argument(
        "--student",
        metavar="DIR|PRESET|draft",
        help="the student: a model directory with the teacher's tokenizer, a preset name "
        "built fresh (see `pocketlm presets`), or draft[:LAYERS] (a speculative draft cut from "
        "the teacher)",
    )
    source = p.add_argument_group("data (one of)")
    source.add_argument("--tokens", help="token shards encoded with the teacher's tokenizer")
    source.add_argument(
        "--data", nargs="+", metavar="FILE",
        help="chat/instruction records; without --teacher: a synth output's stored targets",
    )  # fmt: skip
    source.add_argument(
        "--cache", help="a teacher cache from `pocketlm distill cache` (instead of --teacher)"
    )
    chat = p.add_argument_group("chat records (with --data)")
    chat.add_argument(
        "--val", nargs="+", metavar="FILE", help="held-out records (default: a share of --data)"
    )
    chat.add_argument(
        "--val-fraction", type=float, help="share held out without --val (default: 0.05)"
    )
    chat.add_argument(
        "--on-bad-record", choices=("error", "skip"), help="stop on a malformed record, or count it"
    )
    chat.add_argument(
        "--too-long",
        choices=("drop", "truncate"),
        help="an example longer than --ctx (default: drop)",
    )
    chat.add_argument(
        "--no-packing", dest="packing", action="store_false", default=None,
        help="one example per row, padded (default: several short examples per row)",
    )  # fmt: skip
    p.add_argument("--out", help="run directory")
    d = p.add_argument_group("distillation")
    d.add_argument(
        "--loss",
        choices=("forward_kl", "reverse_kl", "jsd", "tv"),
        help="the divergence D (default: forward_kl)",
    )
    d.add_argument(
        "--temperature",
        type=float,
        help="softens both distributions; KLs scaled by T^2 (default: 1)",
    )
    d.add_argument("--beta", type=float, help="jsd's weight in (0, 1) (default: 0.5)")
    d.add_argument(
        "--hard-weight",
        type=float,
        help="share h of the data's cross-entropy: (1 - h) D + h CE (default: 0; 1 = plain training)",
    )
    d.add_argument(
        "--top-k",
        type=int,
        help="a live teacher known by its top-K tokens only, as a cache is (default: 0, all)",
    )
    d.add_argument(
        "--on-policy",
        type=float,
        metavar="FRACTION",
        help="share of batches that are the student's own samples scored by the teacher (default: 0)",
    )
    d.add_argument(
        "--prompt-tokens",
        type=int,
        help="on-policy on --tokens: prompt length before the student continues (default: ctx/2)",
    )
    lora = p.add_argument_group("LoRA student (a frozen student base and a trained adapter)")
    lora.add_argument(
        "--lora-rank", type=int, help="train a LoRA adapter of this rank (default: 0)"
    )
    lora.add_argument(
        "--lora-alpha", type=float, help="scale of the update: alpha / rank (default: 16)"
    )
    lora.add_argument(
        "--lora-dropout", type=float, help="dropout on the adapter's input (default: 0)"
    )
    lora.add_argument(
        "--lora-targets", help="comma-separated module-name suffixes, or all-linear (default)"
    )
    run = p.add_argument_group("training")
    add_training_options(
        run,
        lr_help="peak learning rate (default: 3e-3 with Muon, for a fresh student; lower it, "
        "e.g. 3e-4, for a trained one)",
        seed_help="seed for a fresh student's weights, the data order and on-policy samples",
    )
    run.add_argument("--resume", action="store_true", help="continue the run in --out")
    add_config_options(p)
    p.set_defaults(handler=_distill)
    sub = p.add_subparsers(dest="distill_command", metavar="{cache}", title="subcommand")
    _register_cache(sub)


def _register_cache(sub) -> None:
    c = add_parser(
        sub,
        "cache",
        help="store a teacher's top-k log-probabilities per position for later students",
        description=_CACHE_DESCRIPTION,
        examples=(
            "  pocketlm distill cache --teacher runs/big --tokens runs/tokens --ctx 256 --out runs/cache\n"
            "  pocketlm distill cache --teacher runs/big --tokens runs/tokens --max-tokens 20M --top-k 16 --out runs/cache16\n"
            "  pocketlm distill cache --teacher runs/big --tokens runs/tokens --passes 4 --out runs/cache4   # a 4-epoch student"
        ),
    )
    c.add_argument("--teacher", required=True, help=f"the teacher: {MODEL_HELP}")
    c.add_argument("--tokens", required=True, help="token shards encoded with its tokenizer")
    c.add_argument("--out", required=True, help="the cache directory")
    c.add_argument("--top-k", type=int, help="tokens kept per position (default: 32)")
    c.add_argument("--ctx", type=int, help="window length: the students' --ctx (default: 256)")
    c.add_argument("--batch-size", type=int, help="windows per teacher forward (default: 16)")
    c.add_argument(
        "--shard-windows",
        type=int,
        help="windows per shard file, the unit of resuming (default: 1024)",
    )
    c.add_argument(
        "--max-tokens", help="cache only the first N tokens of the split, e.g. 20M (default: all)"
    )
    c.add_argument(
        "--passes", type=int,
        help="passes over the split, each shifted by ctx/N tokens: a student's epoch e reads "
        "pass e mod N (default: 1)",
    )  # fmt: skip
    c.add_argument("--device", help="auto, cpu, cuda, cuda:N, mps (default: auto)")
    add_precision_option(c, "the teacher's autocast precision", None)
    add_config_options(c)
    c.set_defaults(handler=_cache)


def _distill(args: argparse.Namespace) -> int:
    from pocketlm.common.env import dist_env
    from pocketlm.common.errors import ConfigError
    from pocketlm.train.tasks.distill_lm import DistillConfig, distill

    if not args.student or not args.out:
        raise ConfigError("pocketlm distill needs --student and --out (see --help)")
    if args.cache and args.ctx is None:
        from pocketlm.common.manifest import read_manifest

        args.ctx = read_manifest(args.cache, kind="teacher_cache")["config"]["ctx"]
    training_budget(args)
    config = config_from_args(DistillConfig, args, _FLAGS)
    draft = _draft(args, config)
    if draft is not None:
        result = draft.run
    else:
        result = distill(
            args.student, args.out, config, teacher_dir=args.teacher, tokens_dir=args.tokens,
            data_files=args.data or (), val_files=args.val or (), cache_dir=args.cache,
            resume=args.resume, command=command_line(),
        )  # fmt: skip
    if dist_env().rank != 0:
        return 0
    final = result.final
    if "val_bpb" in final:
        print(f"student: val loss {final['val_loss']:.4f}, val bpb {final['val_bpb']:.4f}")
    elif "val_loss" in final:
        print(f"student: val loss {final['val_loss']:.4f} (assistant tokens)")
    if "teacher_val_bpb" in final:
        print(
            f"teacher: val loss {final['teacher_val_loss']:.4f}, val bpb {final['teacher_val_bpb']:.4f}"
        )
    elif "teacher_val_loss" in final:
        print(f"teacher: val loss {final['teacher_val_loss']:.4f} (assistant tokens)")
    if draft is not None:
        print(f"draft at int4: {draft.int4_dir}")
        print(f"  pocketlm generate --model {args.teacher} --draft {draft.int4_dir} --prompt ...")
    print(result.model_dir)
    return 0


def _draft(args: argparse.Namespace, config):
    """`--student draft[:LAYERS]`: the one-command draft (pipelines/draft), else None."""
    from pocketlm.common.errors import ConfigError
    from pocketlm.pipelines.draft import distill_draft, draft_layers

    layers = draft_layers(args.student)
    if layers is None:
        return None
    if not args.teacher or args.cache or args.data:
        raise ConfigError("--student draft needs a live --teacher and --tokens DIR")
    return distill_draft(
        args.teacher, args.tokens, args.out, config, layers=layers, resume=args.resume,
        command=command_line(),
    )  # fmt: skip


def _cache(args: argparse.Namespace) -> int:
    from pocketlm.common.progress import progress_bar
    from pocketlm.common.units import parse_count
    from pocketlm.train.distill_cache import CacheConfig, cache_teacher

    if args.max_tokens is not None:
        args.max_tokens = parse_count(args.max_tokens)
    config = config_from_args(CacheConfig, args, _CACHE_FLAGS)
    bar = progress_bar(None, desc="teacher cache", unit="shard")

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        path = cache_teacher(
            args.teacher, args.tokens, args.out, config, overwrite=args.overwrite,
            command=command_line(), progress=progress,
        )  # fmt: skip
    finally:
        bar.close()
    print(path)
    return 0
