"""PocketLM's Muon: torch's update rule, fp32 Newton–Schulz where bf16 is not native, batched."""

from __future__ import annotations

import copy

import pytest
import torch

from pocketlm.train.muon import Muon, newton_schulz


def _params(seed: int = 0) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(32, 32), (32, 32), (96, 32), (32, 96)]
    return [torch.nn.Parameter(torch.randn(s, generator=g) * 0.1) for s in shapes]


def _run(opt_factory, params, steps: int = 3, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    opt = opt_factory(params)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()
    return [p.detach().clone() for p in params]


def test_matches_torch_muon_with_the_same_bf16_iteration():
    ours = _run(lambda ps: Muon(ps, lr=0.02, ns_dtype=torch.bfloat16), _params())
    ref = _run(lambda ps: torch.optim.Muon(ps, lr=0.02, adjust_lr_fn="match_rms_adamw"), _params())
    for a, b, start in zip(ours, ref, _params(), strict=True):
        assert (a - start).abs().max() > 0.01  # the parameters really moved
        torch.testing.assert_close(a, b, atol=2e-3, rtol=0)


def test_fp32_iteration_is_close_to_the_bf16_one():
    fp32 = _run(lambda ps: Muon(ps, lr=0.02, ns_dtype=torch.float32), _params())
    bf16 = _run(lambda ps: Muon(ps, lr=0.02, ns_dtype=torch.bfloat16), _params())
    for a, b in zip(fp32, bf16, strict=True):
        torch.testing.assert_close(a, b, atol=5e-3, rtol=0)


@pytest.mark.parametrize("shape", [(4, 48, 48), (3, 96, 32), (2, 32, 96)])
def test_newton_schulz_flattens_the_singular_values(shape):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    s = torch.linalg.svdvals(newton_schulz(x))
    assert s.min() > 0.3 and s.max() < 1.4  # every direction gets a comparable step
    s_in = torch.linalg.svdvals(x)
    assert (s_in.max(-1).values / s_in.min(-1).values).min() > 3  # the input was far from flat


def test_batched_iteration_equals_one_matrix_at_a_time():
    x = torch.randn(3, 40, 24, generator=torch.Generator().manual_seed(2))
    together = newton_schulz(x)
    alone = torch.stack([newton_schulz(m[None])[0] for m in x])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)


def test_state_dict_round_trip_continues_identically():
    params_a = _params()
    opt_a = Muon(params_a, lr=0.02)
    g = torch.Generator().manual_seed(3)
    grads = [[torch.randn(p.shape, generator=g) for p in params_a] for _ in range(4)]
    for step in grads[:2]:
        for p, gr in zip(params_a, step, strict=True):
            p.grad = gr
        opt_a.step()
    params_b = [torch.nn.Parameter(p.detach().clone()) for p in params_a]
    opt_b = Muon(params_b, lr=0.02)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))
    for step in grads[2:]:
        for pa, pb, gr in zip(params_a, params_b, step, strict=True):
            pa.grad, pb.grad = gr, gr.clone()
        opt_a.step()
        opt_b.step()
    for a, b in zip(params_a, params_b, strict=True):
        assert torch.equal(a, b)


def test_refuses_non_matrix_parameters():
    with pytest.raises(ValueError, match="2-D"):
        Muon([torch.nn.Parameter(torch.zeros(4))], lr=0.01)
