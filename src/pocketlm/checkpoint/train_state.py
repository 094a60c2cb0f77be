"""Train state for exact resume, without pickle: optimizer tensors and RNG state in safetensors,
everything else (step, tokens, schedule, data-loader position, optimizer hyper-parameters) in JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from pocketlm.common.errors import ArtifactError

STATE_TENSORS_FILE = "train_state.safetensors"
STATE_JSON_FILE = "train_state.json"


def _flatten_optimizer(opt_state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, per_param in opt_state["state"].items():
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{key}"] = value.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": opt_state["param_groups"], "scalars": scalars}


def save_train_state(
    directory: Path,
    optimizers: list[torch.optim.Optimizer],
    state: dict[str, Any],
    rng: dict[str, torch.Tensor],
) -> None:
    """Write train_state.safetensors (optimizer moments, RNG states) and train_state.json."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    meta: list[dict[str, Any]] = []
    for i, opt in enumerate(optimizers):
        t, m = _flatten_optimizer(opt.state_dict())
        tensors.update({f"{i}.{k}": v for k, v in t.items()})
        meta.append(m)
    for name, value in rng.items():
        tensors[f"rng.{name}"] = value.detach().to("cpu").contiguous()
    save_file(tensors, str(directory / STATE_TENSORS_FILE))
    (directory / STATE_JSON_FILE).write_text(
        json.dumps({**state, "optimizers": meta}, indent=2) + "\n", encoding="utf-8"
    )


def load_train_state(
    directory: Path, optimizers: list[torch.optim.Optimizer]
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Restore optimizer states in place; returns (the JSON state, RNG tensors)."""
    from safetensors.torch import load_file

    json_path, tensor_path = directory / STATE_JSON_FILE, directory / STATE_TENSORS_FILE
    if not json_path.is_file() or not tensor_path.is_file():
        raise ArtifactError(
            f"{directory}: no train state to resume from (it is a final model, not a checkpoint)"
        )
    try:
        state = json.loads(json_path.read_text(encoding="utf-8"))
        tensors = load_file(str(tensor_path), device="cpu")
    except Exception as exc:  # safetensors and json raise several types on corruption
        raise ArtifactError(f"{directory}: the train state is corrupt ({exc})") from exc
    meta = state.pop("optimizers")
    if len(meta) != len(optimizers):
        raise ArtifactError(
            f"{directory}: saved {len(meta)} optimizers, this run has {len(optimizers)}"
        )
    for i, (opt, m) in enumerate(zip(optimizers, meta)):
        per_param: dict[int, dict[str, Any]] = {}
        prefix = f"{i}.optim."
        for key, value in tensors.items():
            if key.startswith(prefix):
                idx, name = key[len(prefix) :].split(".", 1)
                per_param.setdefault(int(idx), {})[name] = (
                    value  # load_state_dict moves it to the param's device
                )
        for idx, scalars in m["scalars"].items():
            per_param.setdefault(int(idx), {}).update(scalars)
        # Keep this run's kernel choice (fused/foreach), not the saving run's: a checkpoint from
        # an older version or another torch must not switch the optimizer's implementation.
        groups = [
            {**saved, **{k: now[k] for k in ("fused", "foreach") if k in now}}
            for saved, now in zip(m["param_groups"], opt.param_groups)
        ]
        opt.load_state_dict({"state": per_param, "param_groups": groups})
    rng = {k[4:]: v for k, v in tensors.items() if k.startswith("rng.")}
    return state, rng
