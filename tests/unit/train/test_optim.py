"""Optimizer construction: the fused AdamW kernel where torch has it, same updates as foreach."""

from __future__ import annotations

import pytest
import torch

from pocketlm.model.config import ModelConfig
from pocketlm.model.transformer import build_model
from pocketlm.train.config import OptimConfig
from pocketlm.train.optim import adamw_kernel, build_optimizers
from pocketlm.train.roles import roles_by_structure


def test_cpu_uses_the_fused_adamw_kernel_when_torch_has_it() -> None:
    torch_version = tuple(int(v) for v in torch.__version__.split(".")[:2])
    expected = {"fused": True} if torch_version >= (2, 4) else {"foreach": True}
    assert adamw_kernel(torch.device("cpu")) == expected
    model = build_model(ModelConfig(vocab_size=64, dim=32, n_layers=1, n_heads=2, n_kv_heads=2))
    roles = roles_by_structure(model, heads=[model.lm_head])
    named = [(n, p, roles[n]) for n, p in model.named_parameters()]
    (adamw,) = build_optimizers(named, OptimConfig(kind="adamw"), torch.device("cpu"))
    assert adamw.defaults.get("fused") == expected.get("fused")


@pytest.mark.skipif(
    adamw_kernel(torch.device("cpu")) != {"fused": True}, reason="no fused CPU AdamW in this torch"
)
def test_fused_and_foreach_adamw_take_the_same_steps() -> None:
    config = ModelConfig(vocab_size=64, dim=32, n_layers=2, n_heads=2, n_kv_heads=2, max_seq_len=8)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 64, (2, 8), generator=g), torch.randint(0, 64, (2, 8), generator=g)
    models = [build_model(config, seed=1) for _ in range(2)]
    opts = [
        torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.1, **kw)
        for m, kw in zip(
            models, ({"foreach": True}, adamw_kernel(torch.device("cpu"))), strict=True
        )
    ]
    for _ in range(3):
        for m, o in zip(models, opts, strict=True):
            m(x, targets=y).backward()
            o.step()
            o.zero_grad(set_to_none=True)
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_resume_keeps_this_runs_adamw_kernel(tmp_path) -> None:
    """A checkpoint written by a foreach AdamW resumes on the fused kernel (and vice versa)."""
    from pocketlm.checkpoint.train_state import load_train_state, save_train_state
    from pocketlm.train.opt_state import load_named_optimizer_state, named_optimizer_state

    config = ModelConfig(vocab_size=64, dim=32, n_layers=1, n_heads=2, n_kv_heads=2, max_seq_len=8)
    model = build_model(config, seed=1)
    names = {id(p): n for n, p in model.named_parameters()}
    old = torch.optim.AdamW(model.parameters(), lr=1e-2, foreach=True)
    model(
        torch.zeros(1, 8, dtype=torch.long), targets=torch.ones(1, 8, dtype=torch.long)
    ).backward()
    old.step()
    save_train_state(tmp_path, [named_optimizer_state(old, names, keep=True)], {"step": 1}, {})
    new = torch.optim.AdamW(model.parameters(), lr=1e-2, **adamw_kernel(torch.device("cpu")))
    _, (saved,), _ = load_train_state(tmp_path)
    load_named_optimizer_state(new, saved, names, str(tmp_path))
    now = adamw_kernel(torch.device("cpu"))
    assert all(g.get("fused") == now.get("fused") for g in new.param_groups)
    assert all(g.get("foreach") == now.get("foreach") for g in new.param_groups)
    torch.testing.assert_close(
        new.state_dict()["state"][0]["exp_avg"], old.state_dict()["state"][0]["exp_avg"]
    )
    new.step()  # the restored state works with this run's kernel


def test_optimizer_state_is_keyed_by_name_not_by_order(tmp_path) -> None:
    """Saved from one parameter order, restored into an optimizer that lists them reversed."""
    from pocketlm.checkpoint.train_state import load_train_state, save_train_state
    from pocketlm.train.opt_state import load_named_optimizer_state, named_optimizer_state

    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2, 2))
    names = {id(a): "a", id(b): "b"}
    first = torch.optim.AdamW([a, b], lr=0.1)
    (a.sum() * 2 + b.sum() * 3).backward()
    first.step()
    save_train_state(tmp_path, [named_optimizer_state(first, names, keep=True)], {}, {})
    second = torch.optim.AdamW([b, a], lr=0.1)
    _, (saved,), _ = load_train_state(tmp_path)
    load_named_optimizer_state(second, saved, names, "test")
    assert torch.equal(second.state[a]["exp_avg"], first.state[a]["exp_avg"])
    assert torch.equal(second.state[b]["exp_avg"], first.state[b]["exp_avg"])
