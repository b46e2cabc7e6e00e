"""Small models for quick offline runs on the bundled ``digits`` data set (1x8x8 images, 10 classes).

- ``small_cnn``: ConvBNReLU(in_chans→16) → ConvBNReLU(16→32) → MaxPool 2 → ConvBNReLU(32→64) → global average
  pool → ``Linear(64, num_classes)`` named ``fc``. Has BatchNorm, so BN-folding code is exercised; 24,058
  parameters at 1 channel and 10 classes.
- ``mlp``: flatten → [Linear → ReLU] per hidden width → ``Linear`` to ``num_classes``; needs ``img_size``.

Both list their post-ReLU modules in ``activation_names`` (the activations LPGrad's activation term hooks).

::

    model = timm.create_model("small_cnn", in_chans=1, num_classes=10)
    model(torch.randn(4, 1, 8, 8)).shape  # (4, 10)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from losslab.errors import ConfigError
from losslab.models.conv_bn_relu import ConvBNReLU
from losslab.models.entrypoint import build
from losslab.models.registry import register_model


class SmallCNN(nn.Module):
    """Three ConvBNReLU blocks and a linear classifier; input (N, in_chans, H, W) with H, W >= 2."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1, width: int = 16) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.features = nn.Sequential(
            ConvBNReLU(in_chans, width),
            ConvBNReLU(width, 2 * width),
            nn.MaxPool2d(2),
            ConvBNReLU(2 * width, 4 * width),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes)
        self.activation_names: list[str] = ["features.0", "features.1", "features.3"]  # ConvBNReLU outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


class MLP(nn.Module):
    """Fully connected net on flattened images: (N, in_chans, img_size, img_size) -> (N, num_classes)."""

    def __init__(
        self, num_classes: int = 10, in_chans: int = 1, img_size: int = 8, hidden: Sequence[int] = (128, 64)
    ) -> None:
        super().__init__()
        if any(int(h) < 1 for h in hidden):
            raise ConfigError(f"hidden={list(hidden)} is not allowed: every hidden width must be >= 1")
        self.num_classes = num_classes
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_chans * img_size * img_size
        for h in hidden:
            layers += [nn.Linear(width, int(h)), nn.ReLU()]
            width = int(h)
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)
        self.activation_names: list[str] = [f"net.{i}" for i, m in enumerate(layers) if isinstance(m, nn.ReLU)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@register_model
def small_cnn(pretrained: bool = False, **kwargs: Any) -> SmallCNN:
    """Three-block CNN with BN for 8x8 digits (>= 95 % test accuracy in a few seconds on CPU)."""
    return build("small_cnn", SmallCNN, pretrained, kwargs)


@register_model
def mlp(pretrained: bool = False, img_size: int = 8, **kwargs: Any) -> MLP:
    """MLP on flattened ``img_size`` x ``img_size`` images (hidden widths ``hidden``, default (128, 64))."""
    return build("mlp", MLP, pretrained, kwargs, img_size=img_size)
