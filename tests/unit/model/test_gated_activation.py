"""act(gate) * up keeping only gate and up for backward: same values and gradients as autograd."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pocketlm.model.gated_activation import gated_activation


@pytest.mark.parametrize(
    "act", [F.silu, F.gelu, lambda x: F.gelu(x, approximate="tanh")], ids=["silu", "gelu", "tanh"]
)
def test_values_and_gradients_equal_plain_autograd(act) -> None:
    g = torch.Generator().manual_seed(0)
    gate = torch.randn(3, 5, 16, generator=g, dtype=torch.float64, requires_grad=True)
    up = torch.randn(3, 5, 16, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: gated_activation(a, b, act), (gate, up))
    out = gated_activation(gate, up, act)
    torch.testing.assert_close(out, act(gate) * up, rtol=0, atol=0)


def test_keeps_two_tensors_for_backward_where_autograd_keeps_three() -> None:
    gate = torch.randn(4, 8, requires_grad=True)
    up = torch.randn(4, 8, requires_grad=True)

    def saved_by(fn) -> int:
        saved: list[torch.Tensor] = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            fn()
        return len({t.data_ptr() for t in saved})

    assert saved_by(lambda: gated_activation(gate, up, F.silu)) == 2
    assert saved_by(lambda: F.silu(gate) * up) == 3


def test_without_grad_it_is_the_plain_product() -> None:
    gate, up = torch.randn(2, 4), torch.randn(2, 4)
    with torch.no_grad():
        torch.testing.assert_close(gated_activation(gate, up, F.silu), F.silu(gate) * up)
