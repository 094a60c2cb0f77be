"""LoRA for any task: `with_lora(factory, lora, base_dir)` wraps a TrainTask factory so that the
model the inner task builds (with the base's weights loaded) gets LoRA layers, its base is frozen
(QLoRA: quantized first when asked), only the A/B matrices train (role ADAPTER: AdamW, no decay),
and checkpoints and the final artifact hold only the adapter tensors plus the base's hashed
reference (checkpoint/adapters.py). Batches, loss and evaluation stay the inner task's.

Modules named in `keep` (a classifier's fresh score layer) train whole next to the adapter and
are saved in it, as peft's modules_to_save; the adapter's config lists them, and a classifier's
labels, so that loading rebuilds the same model (checkpoint/adapted_model.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch

from pocketlm.checkpoint.adapted_model import CLASSIFIER_KEY, KEPT_KEY, lora_adapter_config
from pocketlm.checkpoint.adapters import load_adapter, save_adapter
from pocketlm.checkpoint.layout import resolve_model_dir
from pocketlm.common.errors import ConfigError
from pocketlm.model.lora import (
    LoRAConfig,
    apply_lora,
    cast_frozen_linears,
    lora_parameter_names,
    quantize_base,
)
from pocketlm.train.task import Role, RunContext, SaveRequest, TaskFactory, TrainTask


def with_lora(
    factory: TaskFactory,
    lora: LoRAConfig,
    base_dir: str | Path,
    *,
    command: Sequence[str] | None = None,
    keep: Sequence[str] = (),
) -> TaskFactory:
    """A factory for the same task training a LoRA adapter on its model instead of the model.

    `base_dir` is the model artifact whose weights the inner factory loads: the adapter's
    reference and the hash loading it checks. The adapter's A matrices start from the run's seed.
    `keep`: module paths of the inner model trained whole and saved in the adapter (their
    inner roles kept).
    """
    if lora.rank < 1:
        raise ConfigError("LoRA needs a rank >= 1 (--lora-rank)")
    base = resolve_model_dir(base_dir)

    def factory_with_lora(ctx: RunContext) -> TrainTask:
        task = factory(ctx)
        model = task.model
        quantize_base(model, lora)
        targets = apply_lora(
            model,
            lora.rank,
            lora.alpha,
            lora.targets,
            lora.dropout,
            rslora=lora.rslora,
            seed=ctx.seed,
        )
        model.train(model.training)  # the new layers take the model's mode (dropout on or off)
        kept = _kept_roles(task, keep)  # trainable again before the frozen base is cast
        if ctx.precision == "bf16":  # the frozen base as autocast would use it: half the bytes
            cast_frozen_linears(model, torch.bfloat16)
        names = [*lora_parameter_names(model), *kept]
        adapter_config = lora_adapter_config(lora, targets)
        if keep:
            adapter_config[KEPT_KEY] = list(keep)
        labels = getattr(getattr(model, "config", None), "labels", ())
        if labels:  # the adapter's model is a classifier: loading rebuilds its head first
            adapter_config[CLASSIFIER_KEY] = {
                "labels": list(labels),
                "pooling": model.config.pooling,
            }

        def save(request: SaveRequest) -> Path:
            return save_adapter(
                request.out,
                {name: request.state[name] for name in names},
                base,
                config={**adapter_config, "task": task.name},
                summary=request.summary,
                command=command,
                overwrite=request.overwrite,
                extra=request.add_files,
            )

        def load(checkpoint: Path) -> dict[str, torch.Tensor]:
            tensors, _ = load_adapter(checkpoint, base=base)
            return tensors

        trainable = sum(model.get_parameter(n).numel() for n in names)
        # A frozen base needs no weight gradients: its forward and input gradients are 2/3 of
        # full training; the adapter adds its own 6 FLOPs per parameter and token.
        flops = task.flops_per_token * 2 / 3 + 6 * trainable if task.flops_per_token else 0.0
        return TrainTask(
            name=f"{task.name}+lora",
            model=model,
            batches=task.batches,
            loss=task.loss,
            to_device=task.to_device,
            tokens_per_batch=task.tokens_per_batch,
            roles={**{name: Role.ADAPTER for name in lora_parameter_names(model)}, **kept},
            save=save,
            load=load,
            evaluate=task.evaluate,
            finish=task.finish,
            flops_per_token=flops,
            describe={
                **task.describe,
                "lora": {**asdict(lora), "modules": len(targets)},
                "base": str(base),
                "trainable_params": trainable,
            },
        )

    return factory_with_lora


def _kept_roles(task: TrainTask, keep: Sequence[str]) -> dict[str, Role]:
    """The inner task's roles of the parameters under the `keep` modules, made trainable again
    (apply_lora froze everything); ConfigError for a module the model lacks or the task freezes."""
    roles: dict[str, Role] = {}
    for path in keep:
        try:
            module = task.model.get_submodule(path)
        except AttributeError as exc:
            raise ConfigError(
                f"with_lora keeps {path!r}, which the model has no module for"
            ) from exc
        for name, param in module.named_parameters(prefix=path):
            if name not in task.roles:
                raise ConfigError(
                    f"with_lora keeps {name}, which task {task.name!r} does not train"
                )
            param.requires_grad_(True)
            roles[name] = task.roles[name]
    return roles
