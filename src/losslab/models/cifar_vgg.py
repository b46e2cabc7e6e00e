"""VGG-11/13/16/19 with BatchNorm for 32x32 images (Simonyan & Zisserman 2015; kuangliu/pytorch-cifar layout).

``features``: ConvBNReLU blocks (3x3, padding 1) with 2x2 max-pools at the ``"M"`` entries; then global average
pooling and a single ``Linear(512, num_classes)`` named ``classifier`` (no FC head). Convs use ``kaiming_normal_``
(fan_in, N(0, 2/(9 c_in)), as factorized.md §5 states for VGG)::

    model = timm.create_model("cifar_vgg16_bn", num_classes=100)
    model(torch.randn(2, 3, 32, 32)).shape  # (2, 100)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from losslab.errors import unknown_name_error
from losslab.models.conv_bn_relu import ConvBNReLU
from losslab.models.entrypoint import build
from losslab.models.registry import register_model

CONFIGS: dict[str, tuple[int | str, ...]] = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg13": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    "vgg19": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"),
}


class CifarVGG(nn.Module):
    """VGG ``variant`` (a key of ``CONFIGS``) with BN; input (N, in_chans, H, W) with H, W >= 32, output logits."""

    def __init__(self, variant: str = "vgg16", num_classes: int = 10, in_chans: int = 3) -> None:
        super().__init__()
        if variant not in CONFIGS:
            raise unknown_name_error("VGG variant", variant, CONFIGS)
        self.num_classes = num_classes
        layers: list[nn.Module] = []
        c_in = in_chans
        for entry in CONFIGS[variant]:
            if entry == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers.append(ConvBNReLU(c_in, int(entry)))
                c_in = int(entry)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


@register_model
def cifar_vgg11_bn(pretrained: bool = False, **kwargs: Any) -> CifarVGG:
    """VGG-11 with BN for CIFAR."""
    return build("cifar_vgg11_bn", CifarVGG, pretrained, kwargs, variant="vgg11")


@register_model
def cifar_vgg13_bn(pretrained: bool = False, **kwargs: Any) -> CifarVGG:
    """VGG-13 with BN for CIFAR."""
    return build("cifar_vgg13_bn", CifarVGG, pretrained, kwargs, variant="vgg13")


@register_model
def cifar_vgg16_bn(pretrained: bool = False, **kwargs: Any) -> CifarVGG:
    """VGG-16 with BN for CIFAR."""
    return build("cifar_vgg16_bn", CifarVGG, pretrained, kwargs, variant="vgg16")


@register_model
def cifar_vgg19_bn(pretrained: bool = False, **kwargs: Any) -> CifarVGG:
    """VGG-19 with BN for CIFAR."""
    return build("cifar_vgg19_bn", CifarVGG, pretrained, kwargs, variant="vgg19")
