"""Test helpers: small float64 models with their dense Hessians from torch.func.hessian (the oracle)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.func import functional_call, hessian

from losslab.landscape import HessianOperator


def mlp(seed: int = 0, width: int = 6, unused: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(4, width), nn.Tanh(), nn.Linear(width, 3)).double()
    if unused:
        net.add_module("unused", nn.Linear(2, 2).double())  # never called in forward: its Hessian rows are zero
        net.forward = lambda x: net[2](net[1](net[0](x)))  # type: ignore[method-assign]
    return net.eval()


class SmallCNN(nn.Module):
    """conv → BatchNorm (eval: running statistics) → ReLU → pool → linear, float64."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3 * 2 * 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.nn.functional.softplus(self.bn(self.conv(x)))  # smooth, so the Hessian is well defined
        return self.fc(torch.nn.functional.avg_pool2d(h, 2).flatten(1))


def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = SmallCNN().double()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.2, 0.2)
        net.bn.running_var.uniform_(0.5, 2.0)
    return net.eval()


def data(n: int, shape: tuple[int, ...], classes: int = 3, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g, dtype=torch.float64), torch.randint(0, classes, (n,), generator=g)


def batches(x: torch.Tensor, y: torch.Tensor, size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(zip(x.split(size), y.split(size)))


def ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(logits, y)


def dense_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor, names: list[str] | None = None) -> torch.Tensor:
    """The full-data CE Hessian over ``names`` (default: every parameter), flattened in named_parameters order."""
    params = {n: p.detach() for n, p in model.named_parameters() if names is None or n in names}
    others = {n: p.detach() for n, p in model.named_parameters() if n not in params}
    others.update(dict(model.named_buffers()))

    def loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return ce(functional_call(model, {**others, **p}, (x,)), y)

    h = hessian(loss)(params)
    sizes = [p.numel() for p in params.values()]
    rows = [torch.cat([h[a][b].reshape(sa, sb) for b, sb in zip(params, sizes)], 1) for a, sa in zip(params, sizes)]
    return torch.cat(rows, 0)


def operator(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, size: int = 16, method: str = "auto", **kwargs: Any
) -> HessianOperator:
    return HessianOperator(model, ce, batches(x, y, size), method=method, **kwargs)
