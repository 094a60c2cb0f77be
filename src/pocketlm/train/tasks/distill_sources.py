"""What a language-model distillation run reads: token windows (--tokens, pretraining-style:
every position is a target), chat rows (--data, SFT-style: the loss only on the assistant
tokens) or a teacher cache (--cache: the cached windows with the teacher's top-k at each
position). Each source gives the run's batches for a rank, the student's evaluation, on-policy
prompts and what the manifests record; the data is read before any model loads.

Every batch is a dict of host arrays: input_ids and targets (B, T) (-100: no target), packed
chat rows add doc_ids and positions, cached windows add teacher_ids and teacher_logprobs
(B, T, k).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from pocketlm.common.errors import ArtifactError, ConfigError, InputError
from pocketlm.common.manifest import parent_ref
from pocketlm.data.loader import BatchLoader
from pocketlm.data.sft_examples import SFTDataConfig
from pocketlm.data.sft_loader import PackedBatches, eval_batches
from pocketlm.data.teacher_cache import CachedBatches, TeacherCache
from pocketlm.data.token_shards import TokenShards, TokenSplit
from pocketlm.evals.bpb import evaluate_bpb, token_byte_lengths
from pocketlm.tokenizer.tokenizer import Tokenizer
from pocketlm.train.config import TrainConfig
from pocketlm.train.end_of_turn import reply_prompts
from pocketlm.train.on_policy import SampleRequest
from pocketlm.train.task import ResumableBatches, RunContext
from pocketlm.train.tasks.sft import chat_rows, held_out_loss

Evaluate = Callable[[nn.Module, RunContext], dict[str, float]]
# (the rank's batches, the run context) -> the request of on-policy batch n
Requests = Callable[[ResumableBatches, RunContext], Callable[[int], SampleRequest]]


@dataclass
class DistillData:
    """A distillation run's data: `batches(ctx)` the rank's batches, `evaluate` the student's
    held-out metrics (also run on the teacher once at the end), `requests` the on-policy
    prompts (None: the source has none), the manifests' parents and the data report."""

    kind: str  # "tokens" | "chat" | "cache"
    batches: Callable[[RunContext], ResumableBatches]
    evaluate: Evaluate | None
    requests: Requests | None
    parents: list[dict] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)
    cache: TeacherCache | None = None


class WindowBatches:
    """BatchLoader's (inputs, targets) windows as batch dicts (same position, same state)."""

    def __init__(self, loader: BatchLoader) -> None:
        self.loader = loader

    def __iter__(self) -> WindowBatches:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        inputs, targets = next(self.loader)
        return {"input_ids": inputs, "targets": targets}

    def state_dict(self) -> dict[str, Any]:
        """The loader's position."""
        return self.loader.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the loader's position."""
        self.loader.load_state_dict(state)


def _bpb_evaluate(split: TokenSplit, tokenizer: Tokenizer, tc: TrainConfig) -> Evaluate:
    """The held-out loss and bits per byte of a model on `split` (validation windows)."""
    lengths = token_byte_lengths(tokenizer)

    def evaluate(m: nn.Module, run_ctx: RunContext) -> dict[str, float]:
        r = evaluate_bpb(
            m, split, lengths, ctx=tc.ctx, batch_size=tc.batch_size, max_tokens=tc.eval_tokens,
            device=run_ctx.device, autocast=run_ctx.autocast(),
        )  # fmt: skip
        return {"val_loss": r.loss, "val_bpb": r.bpb}

    return evaluate


def _window_requests(tc: TrainConfig, prompt_tokens: int) -> Requests:
    """On-policy requests from token windows: each window's first prompt_tokens ids (default
    half the window), continued by the student to a full window."""
    n_prompt = prompt_tokens or tc.ctx // 2
    if not 1 <= n_prompt < tc.ctx:
        raise ConfigError(f"prompt_tokens must be in 1..{tc.ctx - 1} (below --ctx), got {n_prompt}")

    def requests(batches: ResumableBatches, ctx: RunContext) -> Callable[[int], SampleRequest]:
        def request(n: int) -> SampleRequest:
            inputs = next(batches)["input_ids"]  # (B, ctx): a data batch lends its prompts
            seed = _sample_seed(tc.seed, n, ctx.dist.rank)
            return SampleRequest(inputs[:, :n_prompt].tolist(), seed, tc.ctx)

        return request

    return requests


def _sample_seed(seed: int, n: int, rank: int) -> int:
    """A distinct, repeatable sampling seed per run seed, batch and rank."""
    return int(np.random.default_rng([seed, n, rank]).integers(0, 2**62))


def token_source(
    tokens_dir: str | Path, tokenizer: Tokenizer, vocab: int, tc: TrainConfig, prompt_tokens: int
) -> DistillData:
    """Pretraining-style windows of a tokens artifact made with the teacher's tokenizer."""
    tokens_dir = Path(tokens_dir)
    shards = TokenShards(tokens_dir)
    shards.check_tokenizer(tokenizer.fingerprint, vocab, "the teacher")
    train_split = shards.split("train")
    has_val = shards.has_split("val")

    def batches(ctx: RunContext) -> ResumableBatches:
        return WindowBatches(BatchLoader(
            train_split, tc.batch_size, tc.ctx, seed=tc.seed,
            rank=ctx.dist.rank, world_size=ctx.dist.world_size,
        ))  # fmt: skip

    return DistillData(
        kind="tokens",
        batches=batches,
        evaluate=_bpb_evaluate(shards.split("val" if has_val else "train"), tokenizer, tc),
        requests=_window_requests(tc, prompt_tokens),
        parents=[parent_ref(tokens_dir)],
        report={
            "tokens_dir": str(tokens_dir),
            "train_tokens": len(train_split),
            "validation": "val" if has_val else "train (no val split)",
        },
    )


def cache_source(cache_dir: str | Path, tc: TrainConfig) -> DistillData:
    """The cached windows (the cache's tokens artifact, which must be unchanged) with the
    teacher's top-k per position; no on-policy prompts (a cache scores no new samples)."""
    cache = TeacherCache(cache_dir)
    if tc.ctx != cache.ctx:
        raise ConfigError(
            f"the cache {cache.directory} holds windows of {cache.ctx} tokens: train with "
            f"--ctx {cache.ctx} (got {tc.ctx})"
        )
    tokens_dir = Path(cache.tokens["path"])
    try:
        current = parent_ref(tokens_dir)
    except ArtifactError as exc:
        raise InputError(
            f"the cache {cache.directory} was made from {tokens_dir}, which is gone: the student "
            "reads its token windows from there"
        ) from exc
    if current.get("sha256") != cache.tokens.get("sha256"):
        raise InputError(
            f"{tokens_dir} changed since the cache {cache.directory} was made from it: the "
            "cached positions no longer match its tokens; re-run `pocketlm distill cache`"
        )
    shards = TokenShards(tokens_dir)
    tokenizer = Tokenizer.load(cache.tokenizer_dir)
    has_val = shards.has_split("val")

    def batches(ctx: RunContext) -> ResumableBatches:
        return CachedBatches(
            cache, shards.split(cache.split), tc.batch_size, seed=tc.seed,
            rank=ctx.dist.rank, world_size=ctx.dist.world_size,
        )  # fmt: skip

    return DistillData(
        kind="cache",
        batches=batches,
        evaluate=_bpb_evaluate(shards.split("val" if has_val else "train"), tokenizer, tc),
        requests=None,
        parents=[parent_ref(cache.directory), current],
        report={
            "cache": str(cache.directory),
            "top_k": cache.top_k,
            "cached_tokens": cache.num_windows * cache.ctx,
            "tokens_dir": str(tokens_dir),
            "validation": "val" if has_val else "train (no val split)",
        },
        cache=cache,
    )


def chat_source(
    data_files: Sequence[str],
    val_files: Sequence[str],
    tokenizer: Tokenizer,
    data_config: SFTDataConfig,
    tc: TrainConfig,
) -> DistillData:
    """Chat records in the teacher's chat template, SFT-style: packed rows, the loss on the
    assistant tokens; on-policy prompts are the conversations up to their first reply."""
    if not tokenizer.has_chat_template:
        raise InputError(
            "the teacher's tokenizer has no chat template, so chat data has no format to train in",
            hint="distill on --tokens instead",
        )
    chat = chat_rows(tokenizer, data_files, data_config, tc.ctx, val_files=val_files)
    packing = data_config.packing
    prompts = [p for p in reply_prompts(chat.data.train, len(chat.data.train)).prompts
               if len(p) < tc.ctx]  # fmt: skip
    pad_id = next((i for i in (tokenizer.pad_id, tokenizer.eos_id) if i is not None), 0)
    held_out = eval_batches(
        chat.val.select(np.arange(min(len(chat.val), max(1, tc.eval_tokens // tc.ctx)))),
        tc.batch_size,
        packed=packing,
    )

    def batches(ctx: RunContext) -> ResumableBatches:
        return PackedBatches(
            chat.train, tc.batch_size, seed=tc.seed, rank=ctx.dist.rank,
            world_size=ctx.dist.world_size, packed=packing,
        )  # fmt: skip

    def evaluate(m: nn.Module, run_ctx: RunContext) -> dict[str, float]:
        total, count = held_out_loss(m, held_out, run_ctx.device, run_ctx.autocast())
        return {"val_loss": total / max(count, 1), "val_targets": float(count)}

    def requests(_: ResumableBatches, ctx: RunContext) -> Callable[[int], SampleRequest]:
        if not prompts:
            raise InputError("no training conversation has a reply to prompt the student with")

        def request(n: int) -> SampleRequest:
            seed = _sample_seed(tc.seed, n, ctx.dist.rank)
            picked = np.random.default_rng(seed).integers(0, len(prompts), tc.batch_size)
            return SampleRequest(
                [prompts[i] for i in picked], seed, tc.ctx,
                stop_ids=tuple(sorted(tokenizer.stop_ids)), pad_id=pad_id,
            )  # fmt: skip

        return request

    return DistillData(
        kind="chat",
        batches=batches,
        evaluate=evaluate if held_out else None,
        requests=requests,
        parents=chat.parents,
        report={k: v for k, v in chat.report.items() if k != "bad_records"},
    )
