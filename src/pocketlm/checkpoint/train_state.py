"""Train state for exact resume, without pickle: optimizer tensors and RNG state in safetensors,
everything else (step, tokens, schedule, data-loader position, optimizer hyper-parameters) in JSON.

Optimizer state is keyed by parameter NAME, with whole (unsharded) tensors, so a checkpoint
resumes in one process or many, with DDP or FSDP2, whatever the parameter order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from pocketlm.common.errors import ArtifactError

STATE_TENSORS_FILE = "train_state.safetensors"
STATE_JSON_FILE = "train_state.json"
FORMAT = 2  # 1 (round 1) keyed optimizer state by parameter index


def save_train_state(
    directory: Path,
    optimizer_states: list[dict[str, Any]],
    state: dict[str, Any],
    rng: dict[str, torch.Tensor],
) -> None:
    """Write train_state.safetensors (optimizer moments, RNG states) and train_state.json.

    optimizer_states: per optimizer {"state": {param name: {key: tensor | scalar}},
    "param_groups": [{hyper-parameters..., "params": [param names]}]}.
    """
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    meta: list[dict[str, Any]] = []
    for i, opt_state in enumerate(optimizer_states):
        scalars: dict[str, dict[str, Any]] = {}
        for name, per_param in opt_state["state"].items():
            for key, value in per_param.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optim.{i}.{name}.{key}"] = value.detach().to("cpu").contiguous()
                else:
                    scalars.setdefault(name, {})[key] = value
        meta.append({"param_groups": opt_state["param_groups"], "scalars": scalars})
    for name, value in rng.items():
        tensors[f"rng.{name}"] = value.detach().to("cpu").contiguous()
    save_file(tensors, str(directory / STATE_TENSORS_FILE))
    (directory / STATE_JSON_FILE).write_text(
        json.dumps({**state, "format": FORMAT, "optimizers": meta}, indent=2) + "\n",
        encoding="utf-8",
    )


def load_train_state(
    directory: Path,
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, torch.Tensor]]:
    """(the JSON state, optimizer states as save_train_state takes them, RNG tensors)."""
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
    if state.get("format") != FORMAT:
        raise ArtifactError(
            f"{directory}: this checkpoint's train state has format {state.get('format', 1)}, "
            f"this PocketLM reads format {FORMAT}; resume it with the PocketLM that wrote it, "
            "or start a new run from its weights"
        )
    optimizer_states = []
    for i, meta in enumerate(state.pop("optimizers")):
        per_param: dict[str, dict[str, Any]] = {}
        prefix = f"optim.{i}."
        for key, value in tensors.items():
            if key.startswith(prefix):
                name, field = key[len(prefix) :].rsplit(".", 1)
                per_param.setdefault(name, {})[field] = value
        for name, scalars in meta["scalars"].items():
            per_param.setdefault(name, {}).update(scalars)
        optimizer_states.append({"state": per_param, "param_groups": meta["param_groups"]})
    rng = {k[4:]: v for k, v in tensors.items() if k.startswith("rng.")}
    return state, optimizer_states, rng
