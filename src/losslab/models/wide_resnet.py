"""Wide ResNets (Zagoruyko & Komodakis 2016, arXiv:1605.07146) and EigenDamage's wide ResNet-32, for FNL's CIFAR runs.

WRN-d-k: a 3x3 stem conv to 16 channels, three stages of (d−4)/6 pre-activation blocks (BN-ReLU-conv3x3,
BN-ReLU-[dropout]-conv3x3) with 16k/32k/64k channels (strides 1/2/2), a 1x1 conv shortcut where the channel count
or stride changes, a final BN-ReLU, global average pooling and a Linear classifier. WRN-28-10 on 10 classes has
36,479,194 parameters (FNL's "36.5 M"). Every ``wide_resnet{depth}_{width}`` in :data:`WRN_VARIANTS` is registered
in timm's registry; other sizes through ``WideResNet(depth, width)``::

    import timm, losslab.models
    wrn = timm.create_model("wide_resnet28_10", num_classes=10)            # also: wrn28_10
    r32 = timm.create_model("cifar_resnet32_wide", num_classes=10)         # EigenDamage's ResNet-32, 64/128/256

``cifar_resnet32_wide`` is He et al.'s CIFAR ResNet-32 (:mod:`losslab.models.cifar_resnet`) at 4x width, stage
widths 64/128/256, as EigenDamage (Wang et al. 2019, §5) and FNL's model-compression table build it: option-B
shortcuts (a 1x1 conv + BatchNorm where the shape changes, as the seed's ``EigenDamage-Pytorch/models/resnet.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from losslab.errors import ConfigError
from losslab.models.cifar_resnet import CifarResNet
from losslab.models.entrypoint import build
from losslab.models.registry import register_model

WRN_VARIANTS: tuple[tuple[int, int], ...] = ((16, 4), (16, 8), (22, 8), (28, 10), (40, 4))


class WideBlock(nn.Module):
    """Pre-activation wide basic block; ``shortcut`` is a 1x1 conv when the shape changes, else identity."""

    def __init__(self, c_in: int, c_out: int, stride: int, drop_rate: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.drop_rate = drop_rate
        self.shortcut = nn.Conv2d(c_in, c_out, 1, stride, 0, bias=False) if c_in != c_out or stride != 1 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        out = self.conv1(pre)
        out = F.relu(self.bn2(out))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        # the shortcut conv sees the pre-activated input, as in the reference implementation
        return out + (x if self.shortcut is None else self.shortcut(pre))


class WideResNet(nn.Module):
    """WRN-``depth``-``width`` for 32x32 images; input (N, in_chans, H, W), output logits (N, num_classes)."""

    def __init__(
        self, depth: int = 28, width: int = 10, num_classes: int = 10, in_chans: int = 3, drop_rate: float = 0.0
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ConfigError(f"depth={depth} is not allowed: wide ResNets have depth 6n+4 (16, 22, 28, 40)")
        if width < 1:
            raise ConfigError(f"width={width} is not allowed: the widening factor is an integer >= 1")
        n = (depth - 4) // 6
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(in_chans, 16, 3, 1, 1, bias=False)
        c_in = 16
        stages = []
        for stage, c_out in enumerate((16 * width, 32 * width, 64 * width)):
            blocks = [
                WideBlock(c_in if i == 0 else c_out, c_out, 2 if i == 0 and stage > 0 else 1, drop_rate)
                for i in range(n)
            ]
            stages.append(nn.Sequential(*blocks))
            c_in = c_out
        self.layer1, self.layer2, self.layer3 = stages
        self.bn = nn.BatchNorm2d(c_in)
        self.linear = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    @property
    def activation_names(self) -> list[str]:
        """Block outputs (``layer1.0`` ...), hooked by LPGrad's activation term."""
        return [f"layer{s}.{i}" for s in (1, 2, 3) for i in range(len(getattr(self, f"layer{s}")))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        out = F.adaptive_avg_pool2d(F.relu(self.bn(out)), 1).flatten(1)
        return self.linear(out)


def _wrn_entrypoint(depth: int, width: int) -> Callable[..., WideResNet]:
    name = f"wide_resnet{depth}_{width}"

    def entry(pretrained: bool = False, **kwargs: Any) -> WideResNet:
        return build(name, WideResNet, pretrained, kwargs, depth=depth, width=width)

    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = f"WRN-{depth}-{width} for CIFAR (pre-activation wide basic blocks)."
    entry.__module__ = __name__
    return entry


for _depth, _width in WRN_VARIANTS:
    globals()[f"wide_resnet{_depth}_{_width}"] = register_model(_wrn_entrypoint(_depth, _width))


@register_model
def wrn28_10(pretrained: bool = False, **kwargs: Any) -> WideResNet:
    """WRN-28-10 (36.5 M parameters), FNL's and deficient-efficient's name for ``wide_resnet28_10``."""
    return build("wrn28_10", WideResNet, pretrained, kwargs, depth=28, width=10)


@register_model
def cifar_resnet32_wide(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """EigenDamage's ResNet-32 for CIFAR: 5 BasicBlocks per stage with 64/128/256 channels, 1x1-conv shortcuts."""
    return build("cifar_resnet32_wide", CifarResNet, pretrained, kwargs, depth=32, widths=(64, 128, 256), shortcut="B")
