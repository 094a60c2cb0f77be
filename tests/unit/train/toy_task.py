"""A second TrainTask, unlike pretraining in every way the loop must not care about: a regression
loss with masked targets, a frozen base with a trained adapter and head, checkpoints that hold
only the trained tensors plus a hashed reference to the base, and its own batch source."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pocketlm.checkpoint.adapters import load_adapter, save_adapter
from pocketlm.common.manifest import ArtifactWriter
from pocketlm.train.task import Role, RunContext, SaveRequest, TrainTask

DIM, HIDDEN, ROWS = 8, 16, 6


class ToyModel(nn.Module):
    """y = head(relu(adapter(base(x)))) + base's frozen bias path."""

    def __init__(self) -> None:
        super().__init__()
        self.base = nn.Linear(DIM, HIDDEN)
        self.adapter = nn.Linear(HIDDEN, HIDDEN, bias=False)
        self.head = nn.Linear(HIDDEN, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.base(x))
        return self.head(h + torch.relu(self.adapter(h))).squeeze(-1)  # (B,)


def make_base(directory: Path) -> Path:
    """A 'base model' artifact: the frozen layer's weights, with a manifest to hash."""
    from safetensors.torch import save_file

    torch.manual_seed(123)
    base = nn.Linear(DIM, HIDDEN)
    with ArtifactWriter(directory, "toy-base") as art:
        save_file(
            {"weight": base.weight.detach(), "bias": base.bias.detach()},
            str(art.path("base.safetensors")),
        )
        return art.commit()


class ToyBatches:
    """Batch i is a pure function of i: (x (ROWS, DIM), y (ROWS,), mask (ROWS,)); the number of
    valid targets varies from batch to batch (1 to ROWS)."""

    def __init__(self, seed: int = 0) -> None:
        self.seed, self.i = seed, 0
        self.truth = torch.randn(DIM, generator=torch.Generator().manual_seed(seed + 99))

    def batch(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + i)
        x = torch.randn(ROWS, DIM, generator=g)
        y = torch.sin(x @ self.truth)
        mask = torch.arange(ROWS) < 1 + i % ROWS  # 1..ROWS valid targets
        return x, y, mask

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.batch(self.i)
        self.i += 1
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"i": self.i, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.i = int(state["i"])


def toy_factory(
    base_dir: Path, *, seed: int = 0, on_loss: Callable[[], None] | None = None
) -> Callable[[RunContext], TrainTask]:
    """A task factory; `on_loss` runs on every loss call (tests advance a fake clock there)."""

    def factory(ctx: RunContext) -> TrainTask:
        from safetensors.torch import load_file

        torch.manual_seed(seed)
        model = ToyModel()
        base = load_file(str(base_dir / "base.safetensors"))
        with torch.no_grad():
            model.base.weight.copy_(base["weight"])
            model.base.bias.copy_(base["bias"])
        batches = ToyBatches(seed)

        def loss(m: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
            if on_loss is not None:
                on_loss()
            x, y, mask = batch
            err = (m(x) - y) ** 2  # (B,)
            return (err * mask).sum(), mask.sum()

        def evaluate(m: nn.Module, run_ctx: RunContext) -> dict[str, float]:
            x, y, _ = ToyBatches(seed + 1).batch(0)
            with torch.no_grad():
                return {"val_loss": float(((m(x) - y) ** 2).mean())}

        trained = ("adapter.weight", "head.weight", "head.bias")

        def save(request: SaveRequest) -> Path:
            return save_adapter(
                request.out,
                {k: request.state[k] for k in trained},
                base_dir,
                summary=request.summary,
                overwrite=request.overwrite,
                extra=request.add_files,
            )

        def load(checkpoint: Path) -> dict[str, torch.Tensor]:
            return load_adapter(checkpoint, base=base_dir)[0]

        return TrainTask(
            name="toy-regression",
            model=model,
            batches=batches,
            loss=loss,
            to_device=lambda b, device: tuple(t.to(device) for t in b),
            tokens_per_batch=ROWS,
            roles={
                "adapter.weight": Role.ADAPTER,
                "head.weight": Role.HEAD,
                "head.bias": Role.NORM,
            },
            save=save,
            load=load,
            evaluate=evaluate,
        )

    return factory
