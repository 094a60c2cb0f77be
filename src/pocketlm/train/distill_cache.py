"""`pocketlm distill cache`: run the teacher once over a token split and store its top-k
log-probabilities per position (data/teacher_cache.py holds the format), streaming shard by
shard and resumable after a kill, so that students train from the cache on a CPU budget
without the teacher in memory or in the step time.

The windows are the student loader's unshifted windows (window j = tokens j*ctx ... j*ctx+ctx),
each pass shifted by pass * ctx // passes tokens (data/teacher_cache.window_starts), so
`pocketlm distill --cache` reads each batch's teacher rows by window index. The teacher's
logits are trimmed to the tokenizer's vocabulary (a padded teacher's extra rows are no tokens)
and rounded as train/distill_loss.top_k_logprobs rounds them, the same function a live top-k
teacher uses: training from the cache computes what training with the live teacher would.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from pocketlm.checkpoint.model_io import load_model
from pocketlm.common.device import resolve_device, resolve_precision
from pocketlm.common.errors import ConfigError, InputError
from pocketlm.common.log import get_logger
from pocketlm.common.manifest import parent_ref
from pocketlm.data.teacher_cache import CacheWriter, id_dtype, pass_windows, window_starts
from pocketlm.data.token_shards import TokenShards
from pocketlm.train.distill_loss import top_k_logprobs
from pocketlm.train.distill_pair import open_language_model, teacher_logits, tokenizer_files
from pocketlm.train.task import autocast_context

_log = get_logger("pocketlm.train.distill_cache")


@dataclass(frozen=True)
class CacheConfig:
    """What a cache holds and how it is computed: the k most likely tokens per position, the
    window length (the student's --ctx), teacher forwards of batch_size windows, shards of
    shard_windows windows (the unit a killed run loses), at most max_tokens tokens of the
    split (0: all of it) in each of `passes` passes over it (pass p shifted by p * ctx //
    passes tokens: the positions a student sees in its epoch p)."""

    top_k: int = 32
    ctx: int = 256
    batch_size: int = 16
    shard_windows: int = 1024
    max_tokens: int = 0
    passes: int = 1
    split: str = "train"
    device: str = "auto"
    precision: str = "auto"  # the teacher's autocast precision (THE precision rule)

    def __post_init__(self) -> None:
        if self.top_k < 1 or self.ctx < 2 or self.batch_size < 1 or self.shard_windows < 1:
            raise ConfigError("top_k, batch_size and shard_windows must be >= 1 and ctx >= 2")
        if not 1 <= self.passes <= self.ctx:
            raise ConfigError(f"passes must be between 1 and ctx ({self.ctx}), got {self.passes}")
        if self.max_tokens < 0:
            raise ConfigError(f"max_tokens must be >= 0, got {self.max_tokens}")


def cache_teacher(
    teacher_dir: str | Path,
    tokens_dir: str | Path,
    out: str | Path,
    config: CacheConfig | None = None,
    *,
    overwrite: bool = False,
    command: Sequence[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write the teacher's top-k cache of `tokens_dir`'s split into `out` (resuming an
    unfinished one with the same settings); `progress(done, total)` is called after each shard."""
    config = config or CacheConfig()
    teacher = open_language_model(teacher_dir, "teacher")
    tokenizer = teacher.tokenizer
    tokens_dir = Path(tokens_dir)
    shards = TokenShards(tokens_dir)
    shards.check_tokenizer(
        tokenizer.fingerprint, teacher.config.vocab_size, f"the teacher {teacher.directory}"
    )
    split = shards.split(config.split)
    per_pass = pass_windows(len(split), config.ctx, config.passes)
    if config.max_tokens:
        per_pass = min(per_pass, config.max_tokens // config.ctx)
    num_windows = per_pass * config.passes
    if num_windows < 1:
        raise InputError(
            f"the {config.split} split of {tokens_dir} has {len(split):,} tokens: fewer than one "
            f"window of ctx + 1 = {config.ctx + 1} (or --max-tokens is below ctx)"
        )
    if config.ctx > teacher.config.max_seq_len:
        raise ConfigError(
            f"ctx {config.ctx} exceeds the teacher's context {teacher.config.max_seq_len}"
        )
    vocab = tokenizer.vocab_size  # the real tokens: a padded teacher's extra rows are none
    if config.top_k > vocab:
        raise ConfigError(f"top_k {config.top_k} exceeds the vocabulary ({vocab})")
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    teacher_ref, tokens_ref = parent_ref(teacher.directory), parent_ref(tokens_dir)
    settings = {
        **{k: v for k, v in asdict(config).items() if k not in ("batch_size", "device")},
        "precision": precision,
        "num_windows": num_windows,
        "pass_windows": per_pass,
        "vocab_size": vocab,
        "id_dtype": id_dtype(vocab).name,
        "tokenizer_fingerprint": tokenizer.fingerprint,
        "teacher": {**teacher_ref, "max_seq_len": teacher.config.max_seq_len},
        "tokens": tokens_ref,
    }
    writer = CacheWriter(out, settings, overwrite=overwrite)
    total = -(-num_windows // config.shard_windows)
    if writer.done:
        _log.info("resuming the cache in %s at shard %d of %d", writer.partial, writer.done, total)
    model = load_model(teacher.directory, dtype=torch.float32).model.to(device).eval()
    started = time.perf_counter()
    for index in range(writer.done, total):
        first = index * config.shard_windows
        windows = np.arange(first, min(first + config.shard_windows, num_windows))
        starts = window_starts(windows, per_pass, config.ctx, config.passes)
        ids, logprobs = _shard_top_k(model, split.tokens, starts, config, vocab, device, precision)
        writer.write_shard(index, ids, logprobs)
        if progress is not None:
            progress(index + 1, total)
    seconds = time.perf_counter() - started
    shard_bytes = sum(f.stat().st_size for f in writer.partial.iterdir() if f.name.endswith(".npy"))
    cached_tokens = num_windows * config.ctx
    summary = {
        "windows": num_windows,
        "passes": config.passes,
        "tokens": cached_tokens,
        "bytes": shard_bytes,
        "bytes_per_token": round(shard_bytes / cached_tokens, 3),
        "seconds_this_run": round(seconds, 2),
        "teacher_params": teacher.config.num_params(),
    }
    path = writer.commit(
        tokenizer_files(teacher.directory), parents=[teacher_ref, tokens_ref],
        summary=summary, command=command,
    )  # fmt: skip
    _log.info(
        "cached %d tokens at %.1f bytes each -> %s", cached_tokens, summary["bytes_per_token"], path
    )
    return path


@torch.no_grad()
def _shard_top_k(
    model: torch.nn.Module,
    tokens: np.ndarray,
    starts: np.ndarray,
    config: CacheConfig,
    vocab: int,
    device: torch.device,
    precision: str,
) -> tuple[np.ndarray, np.ndarray]:
    """(ids (n, ctx, k) in the cache's id dtype, log-probs (n, ctx, k) float16) of the windows
    starting at token `starts` (n,)."""
    n, ctx, k = len(starts), config.ctx, config.top_k
    ids = np.empty((n, ctx, k), dtype=id_dtype(vocab))
    logprobs = np.empty((n, ctx, k), dtype=np.float16)
    offsets = np.arange(ctx, dtype=np.int64)
    for first in range(0, n, config.batch_size):
        chunk = starts[first : first + config.batch_size]
        inputs = np.asarray(tokens[chunk[:, None] + offsets[None, :]], dtype=np.int64)
        x = torch.from_numpy(inputs).to(device)  # (b, ctx)
        with autocast_context(device, precision):
            logits = teacher_logits(model, x, vocab)  # (b, ctx, vocab)
        top_ids, top_lp = top_k_logprobs(logits, k)  # (b, ctx, k) each
        ids[first : first + len(chunk)] = top_ids.cpu().numpy()
        logprobs[first : first + len(chunk)] = top_lp.cpu().numpy()
    return ids, logprobs
