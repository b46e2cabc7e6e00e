"""RegulQuant's 9-layer ConvNet for CIFAR-10 (specs/regularizers.md §4).

Nine ``ConvBNReLU`` blocks (3x3 conv without bias, BN, ReLU) with channels/strides
3→32 (1), 32→32 (1), 32→64 (2), 64→64 (1), 64→64 (1), 64→128 (2), 128→128 (1), 128→256 (1), 256→256 (1),
so 32x32 inputs go 32→16→8; then AdaptiveAvgPool(1) and ``Linear(256, num_classes)``. No dropout, no residuals.
1,212,778 parameters at 10 classes (conv 1,208,160 + BN 2,048 + linear 2,570).

``forward`` returns the logits only. The original also returned the nine post-ReLU outputs for the LPGrad
activation terms; here ``model.activation_names`` lists the nine ReLU module names so a regularizer hooks them::

    model = timm.create_model("regulquant_convnet")
    acts = {}
    for name in model.activation_names:
        model.get_submodule(name).register_forward_hook(lambda m, i, o, name=name: acts.__setitem__(name, o))
    logits = model(torch.randn(2, 3, 32, 32))  # (2, 10); acts holds 9 tensors
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from losslab.models.conv_bn_relu import ConvBNReLU
from losslab.models.entrypoint import build
from losslab.models.registry import register_model

BLOCKS: tuple[tuple[int, int], ...] = (
    (32, 1),
    (32, 1),
    (64, 2),
    (64, 1),
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 1),
    (256, 1),
)
"""(output channels, stride) of the nine blocks."""


class RegulQuantConvNet(nn.Module):
    """The 9-block ConvNet; input (N, in_chans, H, W), output logits (N, num_classes)."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3) -> None:
        super().__init__()
        self.num_classes = num_classes
        layers = []
        c_in = in_chans
        for c_out, stride in BLOCKS:
            layers.append(ConvBNReLU(c_in, c_out, stride))
            c_in = c_out
        self.blocks = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(c_in, num_classes)
        self.activation_names: list[str] = [f"blocks.{i}.relu" for i in range(len(BLOCKS))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.pool(self.blocks(x)).flatten(1))


@register_model
def regulquant_convnet(pretrained: bool = False, **kwargs: Any) -> RegulQuantConvNet:
    """RegulQuant's 9-layer ConvNet (1,212,778 parameters at 10 classes)."""
    return build("regulquant_convnet", RegulQuantConvNet, pretrained, kwargs)
