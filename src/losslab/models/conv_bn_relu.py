"""The Conv3x3 -> BatchNorm -> ReLU block shared by the ConvNet, the CIFAR VGGs and ``small_cnn``.

Children are named ``conv``, ``bn`` and ``relu`` (a separate, not in-place ``nn.ReLU``), so a forward hook on
``<block>.relu`` sees the block's post-activation output::

    block = ConvBNReLU(3, 32, stride=1)
    block(torch.randn(2, 3, 32, 32)).shape  # (2, 32, 32, 32)
"""

from __future__ import annotations

from torch import nn


class ConvBNReLU(nn.Sequential):
    """``relu(bn(conv(x)))`` with a 3x3 conv (padding 1, no bias); (N, c_in, H, W) -> (N, c_out, H/stride, W/stride)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=False)
