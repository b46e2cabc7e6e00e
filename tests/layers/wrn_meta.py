"""A WRN-28-10 skeleton (Zagoruyko & Komodakis) for closed-form parameter-count tests; build it on ``meta``."""

from __future__ import annotations

from torch import nn


def _block(c_in: int, c_out: int, stride: int) -> nn.Module:
    block = nn.Module()
    block.bn1 = nn.BatchNorm2d(c_in)
    block.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
    block.bn2 = nn.BatchNorm2d(c_out)
    block.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
    if c_in != c_out:
        block.shortcut = nn.Conv2d(c_in, c_out, 1, stride, 0, bias=False)
    return block


def wide_resnet(depth: int = 28, width: int = 10, num_classes: int = 10) -> nn.Sequential:
    """Pre-activation WRN-depth-width skeleton (parameters only; no forward); 36,479,194 params for 28-10."""
    n = (depth - 4) // 6
    widths = [16, 16 * width, 32 * width, 64 * width]
    layers: list[nn.Module] = [nn.Conv2d(3, 16, 3, 1, 1, bias=False)]
    c_in = 16
    for stage, c_out in enumerate(widths[1:]):
        for i in range(n):
            layers.append(_block(c_in, c_out, 2 if (i == 0 and stage > 0) else 1))
            c_in = c_out
    layers += [nn.BatchNorm2d(c_in), nn.Linear(c_in, num_classes)]
    return nn.Sequential(*layers)
