"""ResNet-18/34/50/101 adapted to 32x32 images (kuangliu/pytorch-cifar): 3x3 stride-1 stem, no max-pool.

Four stages of 64/128/256/512 channels (strides 1/2/2/2) with option-B (1x1 conv + BN) shortcuts, global
average pooling and a Linear classifier ``linear``. ``cifar_resnet18_nobn`` is ResNet-18 without BatchNorm
(the Softmax-Gradient-Tampering seed's ``resnet18_wobn``): convs carry biases and each residual branch is scaled by a
learnable scalar initialised at 0 (SkipInit), so it trains without normalisation::

    model = timm.create_model("cifar_resnet18", num_classes=100)
    model(torch.randn(2, 3, 32, 32)).shape  # (2, 100)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from losslab.models.entrypoint import build
from losslab.models.registry import register_model
from losslab.models.resnet_blocks import BasicBlock, Bottleneck, make_stage, residual_block_names


class CifarImageNetResNet(nn.Module):
    """ImageNet-depth ResNet with a CIFAR stem. ``blocks`` = blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18."""

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        blocks: tuple[int, int, int, int],
        num_classes: int = 10,
        in_chans: int = 3,
        norm: bool = True,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(in_chans, 64, 3, stride=1, padding=1, bias=not norm)
        self.bn1 = nn.BatchNorm2d(64) if norm else nn.Identity()
        planes = 64
        self.layer1, planes = make_stage(block, planes, 64, blocks[0], 1, "B", norm)
        self.layer2, planes = make_stage(block, planes, 128, blocks[1], 2, "B", norm)
        self.layer3, planes = make_stage(block, planes, 256, blocks[2], 2, "B", norm)
        self.layer4, planes = make_stage(block, planes, 512, blocks[3], 2, "B", norm)
        self.linear = nn.Linear(planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @property
    def activation_names(self) -> list[str]:
        """Post-ReLU block outputs (``layer1.0`` ...), hooked by LPGrad's activation term."""
        return residual_block_names(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


@register_model
def cifar_resnet18(pretrained: bool = False, **kwargs: Any) -> CifarImageNetResNet:
    """ResNet-18 (BasicBlock x [2, 2, 2, 2]) with a CIFAR stem, 11.2 M parameters at 10 classes."""
    return build("cifar_resnet18", CifarImageNetResNet, pretrained, kwargs, block=BasicBlock, blocks=(2, 2, 2, 2))


@register_model
def cifar_resnet18_nobn(pretrained: bool = False, **kwargs: Any) -> CifarImageNetResNet:
    """ResNet-18 without BatchNorm (biased convs, SkipInit residual scales); SGT's ``resnet18_wobn``."""
    return build(
        "cifar_resnet18_nobn",
        CifarImageNetResNet,
        pretrained,
        kwargs,
        block=BasicBlock,
        blocks=(2, 2, 2, 2),
        norm=False,
    )


@register_model
def cifar_resnet34(pretrained: bool = False, **kwargs: Any) -> CifarImageNetResNet:
    """ResNet-34 (BasicBlock x [3, 4, 6, 3]) with a CIFAR stem."""
    return build("cifar_resnet34", CifarImageNetResNet, pretrained, kwargs, block=BasicBlock, blocks=(3, 4, 6, 3))


@register_model
def cifar_resnet50(pretrained: bool = False, **kwargs: Any) -> CifarImageNetResNet:
    """ResNet-50 (Bottleneck x [3, 4, 6, 3]) with a CIFAR stem."""
    return build("cifar_resnet50", CifarImageNetResNet, pretrained, kwargs, block=Bottleneck, blocks=(3, 4, 6, 3))


@register_model
def cifar_resnet101(pretrained: bool = False, **kwargs: Any) -> CifarImageNetResNet:
    """ResNet-101 (Bottleneck x [3, 4, 23, 3]) with a CIFAR stem."""
    return build("cifar_resnet101", CifarImageNetResNet, pretrained, kwargs, block=Bottleneck, blocks=(3, 4, 23, 3))
