"""Pretraining: next-token prediction on a tokens artifact, through the one training loop."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pocketlm.checkpoint.model_io import load_model, read_weights, save_model_state
from pocketlm.common.config import to_dict
from pocketlm.common.errors import ArtifactError, ConfigError, InputError
from pocketlm.common.manifest import parent_ref
from pocketlm.data.loader import BatchLoader
from pocketlm.data.replay import ReplayBatches
from pocketlm.data.token_shards import TokenShards
from pocketlm.evals.bpb import evaluate_bpb, token_byte_lengths
from pocketlm.model.config import ModelConfig
from pocketlm.model.presets import preset_config
from pocketlm.model.summary import describe as describe_shape
from pocketlm.model.transformer import build_model
from pocketlm.tokenizer.tokenizer import Tokenizer
from pocketlm.train.config import TrainConfig
from pocketlm.train.loop import RunResult, train
from pocketlm.train.roles import roles_by_structure
from pocketlm.train.task import RunContext, SaveRequest, TrainTask


@dataclass(frozen=True)
class ShapeConfig:
    """The model's shape: a preset, and/or explicit dimensions (0 = take it from the preset)."""

    preset: str = ""
    dim: int = 0
    n_layers: int = 0
    n_heads: int = 0
    n_kv_heads: int = 0
    ffn_dim: int = 0
    tie_embeddings: bool = True
    qkv_bias: bool = False
    rope_theta: float = 10000.0
    dropout: float = 0.0  # helps when the budget runs many epochs over a small corpus


@dataclass(frozen=True)
class PretrainConfig:
    """`pocketlm pretrain` settings: model shape + the training loop's settings."""

    model: ShapeConfig = field(default_factory=ShapeConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def resolve_model_config(shape: ShapeConfig, vocab_size: int, ctx: int) -> ModelConfig:
    """ModelConfig from a preset and/or explicit dims; vocabulary from the tokenizer, context from the run."""
    explicit = {
        k: getattr(shape, k)
        for k in ("dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim")
        if getattr(shape, k)
    }
    common = dict(
        vocab_size=vocab_size,
        max_seq_len=ctx,
        tie_embeddings=shape.tie_embeddings,
        qkv_bias=shape.qkv_bias,
        rope_theta=shape.rope_theta,
        dropout=shape.dropout,
    )
    if shape.preset:
        return preset_config(shape.preset, **common, **explicit)
    missing = [k for k in ("dim", "n_layers", "n_heads") if k not in explicit]
    if missing:
        raise ConfigError(
            f"choose a model: --model PRESET, or all of --layers, --dim, --heads (missing: {', '.join(missing)})"
        )
    explicit.setdefault("n_kv_heads", explicit["n_heads"])
    return ModelConfig(**common, **explicit)


def pretrain_task(
    tokens_dir: str | Path,
    config: PretrainConfig,
    ctx: RunContext,
    *,
    command: Sequence[str] | None = None,
    model_config: ModelConfig | None = None,
    init_from: str | Path | None = None,
    replay_dir: str | Path | None = None,
    replay_share: float = 0.0,
) -> TrainTask:
    """The pretraining TrainTask over a tokens artifact, for this process's context; with
    `init_from` (a model artifact) it continues that model's training (continued pretraining):
    its shape, weights and tokenizer, which must be the one the tokens were encoded with. With
    `replay_dir` (tokens of the original data, same tokenizer) a `replay_share` of the
    micro-batches comes from it, and evaluation reports its validation loss too (forgetting)."""
    tokens_dir = Path(tokens_dir)
    shards = TokenShards(tokens_dir)
    tc = config.train
    parents = [parent_ref(tokens_dir)]
    tokenizer_dir = shards.tokenizer_dir
    initial = None
    if init_from is not None:
        initial = load_model(init_from)
        shards.check_tokenizer(
            initial.tokenizer.fingerprint,
            initial.config.vocab_size,
            f"the model {initial.directory}",
        )
        model_config, tokenizer_dir = initial.config, initial.directory
        parents.append(parent_ref(initial.directory))
    tokenizer = Tokenizer.load(tokenizer_dir)
    model_config = model_config or resolve_model_config(config.model, shards.vocab_size, tc.ctx)
    if model_config.vocab_size < shards.vocab_size:
        raise InputError(
            f"the model's vocabulary ({model_config.vocab_size}) is smaller than the tokenizer's ({shards.vocab_size}) in {tokens_dir}"
        )
    if model_config.max_seq_len < tc.ctx:
        raise ConfigError(
            f"ctx {tc.ctx} exceeds the model's context {model_config.max_seq_len}: lower --ctx"
        )
    batches = BatchLoader(
        shards.split("train"),
        tc.batch_size,
        tc.ctx,
        seed=tc.seed,
        rank=ctx.dist.rank,
        world_size=ctx.dist.world_size,
    )
    replay_split = None
    if replay_dir is not None:
        replay_shards = TokenShards(replay_dir)
        replay_shards.check_tokenizer(
            shards.tokenizer_fingerprint, shards.vocab_size, str(tokens_dir)
        )
        parents.append(parent_ref(Path(replay_dir)))
        replay_split = replay_shards.split("val" if replay_shards.has_split("val") else "train")
        replay_batches = BatchLoader(
            replay_shards.split("train"), tc.batch_size, tc.ctx, seed=tc.seed + 1,
            rank=ctx.dist.rank, world_size=ctx.dist.world_size,
        )  # fmt: skip
        batches = ReplayBatches(batches, replay_batches, replay_share)
    model = build_model(model_config, seed=tc.seed) if initial is None else initial.model.train()
    byte_lengths = token_byte_lengths(tokenizer, model_config.vocab_size)
    has_val = shards.has_split("val")
    eval_split = shards.split("val" if has_val else "train")

    def loss(m: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, int]:
        x, y = batch
        # LM head fused with the loss: no (B, T, vocab) logits; every position is a target
        return m(x, targets=y, reduction="sum"), y.numel()

    def to_device(
        batch: tuple[np.ndarray, np.ndarray], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        return torch.from_numpy(x).to(device, non_blocking=True), torch.from_numpy(y).to(
            device, non_blocking=True
        )

    def evaluate(m: nn.Module, run_ctx: RunContext) -> dict[str, float]:
        def on(split) -> tuple[float, float]:
            r = evaluate_bpb(
                m,
                split,
                byte_lengths,
                ctx=tc.ctx,
                batch_size=tc.batch_size,
                max_tokens=tc.eval_tokens,
                device=run_ctx.device,
                autocast=run_ctx.autocast(),
            )
            return r.loss, r.bpb

        loss_, bpb = on(eval_split)
        out = {"val_loss": loss_, "val_bpb": bpb}
        if replay_split is not None:  # the original data: how much the model forgets
            out["replay_val_loss"], out["replay_val_bpb"] = on(replay_split)
        return out

    def save(request: SaveRequest) -> Path:
        return save_model_state(
            request.out,
            request.state,
            model_config,
            tokenizer_dir,
            parents=parents,
            config=to_dict(config),
            summary={**request.summary, "bytes_per_token": shards.bytes_per_token},
            command=command,
            overwrite=request.overwrite,
            extra=request.add_files,
        )

    def load(checkpoint: Path) -> dict[str, torch.Tensor]:
        tensors = read_weights(checkpoint)
        expected = set(model.state_dict())
        if model_config.tie_embeddings:
            expected.discard("lm_head.weight")
        missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        if missing or unexpected:
            raise ArtifactError(
                f"{checkpoint}: weights do not match this model (missing {missing[:3]}, unexpected {unexpected[:3]})"
            )
        return tensors

    return TrainTask(
        name="pretrain",
        model=model,
        batches=batches,
        loss=loss,
        to_device=to_device,
        tokens_per_batch=tc.batch_size * tc.ctx,
        roles=roles_by_structure(model, heads=[model.lm_head]),
        save=save,
        load=load,
        evaluate=evaluate,
        flops_per_token=model_config.flops_per_token(tc.ctx, training=True),
        describe={
            "model": model_config.to_dict(),
            **describe_shape(model_config, tc.ctx),
            "tokens_dir": str(tokens_dir),
            **({"init_from": str(initial.directory)} if initial is not None else {}),
            "validation": "val" if has_val else "train (no val split)",
        },
    )


def _check_resume_tokenizer(run_dir: Path, shards: TokenShards) -> None:
    from pocketlm.checkpoint.run_checkpoints import latest_checkpoint

    latest = latest_checkpoint(run_dir / "checkpoints")
    if latest is not None:
        saved = Tokenizer.load(latest)
        shards.check_tokenizer(
            saved.fingerprint, saved.vocab_size, f"the run being resumed ({latest})"
        )


def pretrain(
    tokens_dir: str | Path,
    out: str | Path,
    config: PretrainConfig | None = None,
    *,
    resume: bool = False,
    command: Sequence[str] | None = None,
    now: Callable[[], float] | None = None,
) -> RunResult:
    """Pretrain a model on `tokens_dir` into the run directory `out`."""
    config = config or PretrainConfig()
    if resume:
        _check_resume_tokenizer(Path(out), TokenShards(tokens_dir))

    def factory(ctx: RunContext) -> TrainTask:
        return pretrain_task(tokens_dir, config, ctx, command=command)

    return train(factory, config.train, out, resume=resume, command=command, now=now)
