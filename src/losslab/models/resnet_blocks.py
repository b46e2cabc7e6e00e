"""Residual blocks shared by the CIFAR ResNets (He et al. 2016, arXiv:1512.03385).

``BasicBlock`` (two 3x3 convs named ``conv1``/``conv2``; the factorization code relies on these names) and
``Bottleneck`` (1x1 -> 3x3 -> 1x1, expansion 4), each with a choice of shortcut:

- option ``"A"``: parameter-free; subsample by 2 and zero-pad the new channels (He et al. §4.2, CIFAR ResNet-20..110);
- option ``"B"``: 1x1 projection conv (+ BN) whenever the shape changes (ResNet-18..101).

``norm=False`` builds the block without BatchNorm (convs get biases) and scales the residual branch by a learnable
scalar initialised at 0 (SkipInit, De & Smith 2020, arXiv:2002.10444), so a deep net trains without normalisation::

    block = BasicBlock(16, 32, stride=2, shortcut="A")
    y = block(torch.randn(2, 16, 32, 32))  # (2, 32, 16, 16)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PadShortcut(nn.Module):
    """Option-A shortcut: ``x[:, :, ::s, ::s]`` zero-padded from ``in_planes`` to ``planes`` channels (half a side)."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.pad_front = (planes - in_planes) // 2
        self.pad_back = planes - in_planes - self.pad_front

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_front, self.pad_back))


def _norm(planes: int, norm: bool) -> nn.Module:
    return nn.BatchNorm2d(planes) if norm else nn.Identity()


def _shortcut(in_planes: int, planes: int, stride: int, kind: str, norm: bool) -> nn.Module:
    if stride == 1 and in_planes == planes:
        return nn.Identity()
    if kind == "A":
        return PadShortcut(in_planes, planes, stride)
    conv = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=not norm)
    return nn.Sequential(conv, _norm(planes, norm))


class _ResidualBlock(nn.Module):
    """``relu(scale * branch(x) + shortcut(x))``; ``scale`` is a learnable scalar (init 0) only when ``norm=False``."""

    def __init__(self, norm: bool) -> None:
        super().__init__()
        self.residual_scale = None if norm else nn.Parameter(torch.zeros(()))

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branch(x)
        if self.residual_scale is not None:
            out = out * self.residual_scale
        return F.relu(out + self.shortcut(x))


def residual_block_names(model: nn.Module) -> list[str]:
    """Module names of every residual block of ``model``: their outputs are post-ReLU activations.

    CIFAR ResNets expose these as ``activation_names``, the modules LPGrad hooks for its activation-gradient term.
    """
    return [name for name, module in model.named_modules() if isinstance(module, _ResidualBlock)]


class BasicBlock(_ResidualBlock):
    """Two 3x3 convs: ``conv1`` (stride ``stride``) -> BN -> ReLU -> ``conv2`` -> BN, plus shortcut, then ReLU.

    Input (N, in_planes, H, W) -> output (N, planes, H/stride, W/stride).
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "A", norm: bool = True) -> None:
        super().__init__(norm)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=not norm)
        self.bn1 = _norm(planes, norm)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=not norm)
        self.bn2 = _norm(planes, norm)
        self.shortcut = _shortcut(in_planes, planes, stride, shortcut, norm)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))


class Bottleneck(_ResidualBlock):
    """1x1 ``conv1`` -> 3x3 ``conv2`` (stride) -> 1x1 ``conv3`` to ``4 * planes`` channels, each followed by BN."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "B", norm: bool = True) -> None:
        super().__init__(norm)
        out_planes = self.expansion * planes
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=not norm)
        self.bn1 = _norm(planes, norm)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=not norm)
        self.bn2 = _norm(planes, norm)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=not norm)
        self.bn3 = _norm(out_planes, norm)
        self.shortcut = _shortcut(in_planes, out_planes, stride, shortcut, norm)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))


def make_stage(
    block: type[BasicBlock | Bottleneck],
    in_planes: int,
    planes: int,
    num_blocks: int,
    stride: int,
    shortcut: str,
    norm: bool = True,
) -> tuple[nn.Sequential, int]:
    """``num_blocks`` blocks, the first with ``stride``; returns the stage and its output channel count."""
    layers = []
    for s in [stride] + [1] * (num_blocks - 1):
        layers.append(block(in_planes, planes, s, shortcut=shortcut, norm=norm))
        in_planes = planes * block.expansion
    return nn.Sequential(*layers), in_planes
