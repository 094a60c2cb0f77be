"""Optimizer state by parameter name, with whole tensors: what checkpoints store, whatever the
world size, the wrapping (DDP, FSDP2) or the order in which optimizers list their parameters."""

from __future__ import annotations

from typing import Any

import torch

from pocketlm.common.errors import ArtifactError
from pocketlm.train.distributed import full_tensor, shard_like

# Keys that belong to the running process, not to the run: a checkpoint never switches kernels.
_PROCESS_KEYS = ("fused", "foreach", "capturable", "differentiable")


def _ordered_params(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Parameters in the order torch numbers them in state_dict() (group by group)."""
    return [p for group in opt.param_groups for p in group["params"]]


def named_optimizer_state(
    opt: torch.optim.Optimizer, names: dict[int, str], keep: bool
) -> dict[str, Any]:
    """{"state": {name: {key: whole CPU tensor | scalar}}, "param_groups": [... "params": names]}.

    Every rank must call it (sharded state is gathered); only where `keep` is the result filled.
    names: id(parameter) -> its name.
    """
    raw = opt.state_dict()
    ordered = _ordered_params(opt)
    state: dict[str, dict[str, Any]] = {}
    for index in sorted(raw["state"]):
        per_param = {}
        for key, value in raw["state"][index].items():
            if isinstance(value, torch.Tensor):
                value = full_tensor(value)
                value = value.detach().to("cpu").clone() if keep else None
            per_param[key] = value
        state[names[id(ordered[index])]] = per_param
    groups = []
    for saved, live in zip(raw["param_groups"], opt.param_groups, strict=True):
        group = {k: v for k, v in saved.items() if k != "params" and k not in _PROCESS_KEYS}
        group["params"] = [names[id(p)] for p in live["params"]]
        groups.append(group)
    return {"state": state, "param_groups": groups} if keep else {}


def load_named_optimizer_state(
    opt: torch.optim.Optimizer, saved: dict[str, Any], names: dict[int, str], where: str
) -> None:
    """Restore a state from named_optimizer_state into `opt` (shards cut to its parameters)."""
    if len(saved["param_groups"]) != len(opt.param_groups):
        raise ArtifactError(
            f"{where}: the checkpoint's optimizer has {len(saved['param_groups'])} parameter "
            f"groups, this run's has {len(opt.param_groups)} (were other parameters trained?)"
        )
    state: dict[int, dict[str, Any]] = {}
    groups = []
    index = 0
    for saved_group, live in zip(saved["param_groups"], opt.param_groups, strict=True):
        live_names = [names[id(p)] for p in live["params"]]
        if sorted(saved_group["params"]) != sorted(live_names):
            missing = sorted(set(live_names) - set(saved_group["params"]))
            extra = sorted(set(saved_group["params"]) - set(live_names))
            raise ArtifactError(
                f"{where}: the checkpoint trained other parameters (missing here: {extra[:3]}, "
                f"new here: {missing[:3]})"
            )
        for p, name in zip(live["params"], live_names, strict=True):
            if name in saved["state"]:
                state[index] = {
                    key: _place(value, p) for key, value in saved["state"][name].items()
                }
            index += 1
        hyper = {k: v for k, v in saved_group.items() if k != "params"}
        process = {k: live[k] for k in _PROCESS_KEYS if k in live}
        groups.append({**hyper, **process, "params": list(range(index - len(live_names), index))})
    opt.load_state_dict({"state": state, "param_groups": groups})


def _place(value: Any, param: torch.Tensor) -> Any:
    """A saved whole tensor shaped like its parameter goes to the parameter's shards; others
    (step counters) stay as saved and torch places them."""
    if isinstance(value, torch.Tensor) and tuple(value.shape) == tuple(param.shape) and value.ndim:
        return shard_like(value, param)
    return value
