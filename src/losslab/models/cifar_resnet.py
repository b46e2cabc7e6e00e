"""CIFAR ResNet-20/32/44/56/110 of He et al. 2016 (arXiv:1512.03385, §4.2), as in akamaster/pytorch_resnet_cifar10.

Depth 6n+2: a 3x3 stem conv to 16 channels, three stages of n BasicBlocks with 16/32/64 channels (strides 1/2/2),
option-A (zero-pad) shortcuts, global average pooling and a Linear classifier. Convs and the Linear layer use
``kaiming_normal_`` (fan_in). ResNet-20 has 269,722 parameters (convs 267,696 + BN 1,376 + linear 650)::

    import timm, losslab.models
    model = timm.create_model("cifar_resnet20", num_classes=10)
    logits = model(torch.randn(8, 3, 32, 32))  # (8, 10)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from losslab.errors import ConfigError
from losslab.models.entrypoint import build
from losslab.models.registry import register_model
from losslab.models.resnet_blocks import BasicBlock, make_stage, residual_block_names


class CifarResNet(nn.Module):
    """He et al.'s CIFAR ResNet of depth 6n+2 (n BasicBlocks per stage). Input (N, in_chans, H, W), output logits."""

    def __init__(
        self,
        depth: int = 20,
        num_classes: int = 10,
        in_chans: int = 3,
        widths: tuple[int, ...] = (16, 32, 64),
        shortcut: str = "A",
    ):
        """``shortcut``: "A" zero-pads (He et al.'s CIFAR choice), "B" is a 1x1 conv + BatchNorm where shapes change."""
        super().__init__()
        if shortcut not in ("A", "B"):
            raise ConfigError(f"shortcut={shortcut!r} is not allowed: use 'A' (zero-pad) or 'B' (1x1 conv + BN)")
        if depth < 8 or (depth - 2) % 6:
            raise ConfigError(f"depth={depth} is not allowed: CIFAR ResNets have depth 6n+2 (20, 32, 44, 56, 110)")
        n = (depth - 2) // 6
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        planes = widths[0]
        self.layer1, planes = make_stage(BasicBlock, planes, widths[0], n, 1, shortcut)
        self.layer2, planes = make_stage(BasicBlock, planes, widths[1], n, 2, shortcut)
        self.layer3, planes = make_stage(BasicBlock, planes, widths[2], n, 2, shortcut)
        self.linear = nn.Linear(planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight)

    @property
    def activation_names(self) -> list[str]:
        """Post-ReLU block outputs (``layer1.0`` ...), hooked by LPGrad's activation term."""
        return residual_block_names(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


@register_model
def cifar_resnet20(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-20 for CIFAR (3 BasicBlocks per stage, 0.27 M parameters)."""
    return build("cifar_resnet20", CifarResNet, pretrained, kwargs, depth=20)


@register_model
def cifar_resnet32(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-32 for CIFAR (5 BasicBlocks per stage, 0.46 M parameters)."""
    return build("cifar_resnet32", CifarResNet, pretrained, kwargs, depth=32)


@register_model
def cifar_resnet44(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-44 for CIFAR (7 BasicBlocks per stage)."""
    return build("cifar_resnet44", CifarResNet, pretrained, kwargs, depth=44)


@register_model
def cifar_resnet56(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-56 for CIFAR (9 BasicBlocks per stage)."""
    return build("cifar_resnet56", CifarResNet, pretrained, kwargs, depth=56)


@register_model
def cifar_resnet110(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-110 for CIFAR (18 BasicBlocks per stage, 1.7 M parameters)."""
    return build("cifar_resnet110", CifarResNet, pretrained, kwargs, depth=110)
