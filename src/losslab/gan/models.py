"""GAN networks: a DCGAN generator/discriminator pair for square images and an MLP pair for 2-D toy data.

DCGAN (Radford et al. 2016): G maps z [N, z_dim] → 4×4 feature map → transposed convs (stride 2, BN, ReLU) doubling
the side up to ``img_size`` → tanh images [N, C, S, S] in [−1, 1]; D mirrors it with strided convs and LeakyReLU 0.2
(no BN on its first layer; BN elsewhere unless ``d_norm=False``, which R1 users may prefer) to one raw logit [N, 1]::

    G = DCGANGenerator(img_size=32, channels=1, z_dim=64, width=64)
    D = DCGANDiscriminator(img_size=32, channels=1, width=64)
    logits = D(G(torch.randn(8, 64)))                         # [8, 1]
    G2, D2 = MLPGenerator(z_dim=16), MLPDiscriminator()      # 2-D points [N, 2] → [N, 1]

``img_size`` is a power of two ≥ 8 (8, 16, 32, 64, ...); weights are initialised as in DCGAN (N(0, 0.02) convs,
BN weight N(1, 0.02)).
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor, nn

from losslab.errors import ConfigError


def check_img_size(img_size: int) -> int:
    """The number of stride-2 stages from 4×4 to ``img_size``; raises ConfigError unless a power of two ≥ 8."""
    stages = math.log2(img_size) - 2 if img_size > 0 else -1
    if stages < 1 or stages != int(stages):
        raise ConfigError(f"img_size={img_size} is not allowed for DCGAN: use a power of two >= 8 (16, 32, 64)")
    return int(stages)


def _dcgan_init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class DCGANGenerator(nn.Module):
    """z [N, z_dim] → images [N, channels, img_size, img_size] in [−1, 1]."""

    def __init__(self, img_size: int = 32, channels: int = 3, z_dim: int = 64, width: int = 64) -> None:
        super().__init__()
        stages = check_img_size(img_size)
        self.z_dim = z_dim
        chans = [width * 2 ** (stages - 1 - i) for i in range(stages)]  # e.g. 32×32: [4w, 2w, w]
        self.stem = nn.Sequential(
            nn.ConvTranspose2d(z_dim, chans[0], 4, 1, 0, bias=False), nn.BatchNorm2d(chans[0]), nn.ReLU(True)
        )
        blocks: list[nn.Module] = []
        for c_in, c_out in itertools.pairwise(chans):
            blocks += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(True)]
        blocks += [nn.ConvTranspose2d(chans[-1], channels, 4, 2, 1), nn.Tanh()]
        self.blocks = nn.Sequential(*blocks)
        _dcgan_init(self)

    def forward(self, z: Tensor) -> Tensor:
        return self.blocks(self.stem(z[:, :, None, None]))  # [N, z, 1, 1] → [N, c0, 4, 4] → [N, C, S, S]


class DCGANDiscriminator(nn.Module):
    """Images [N, channels, img_size, img_size] → raw logits [N, 1]."""

    def __init__(self, img_size: int = 32, channels: int = 3, width: int = 64, norm: bool = True) -> None:
        super().__init__()
        stages = check_img_size(img_size)
        chans = [width * 2**i for i in range(stages)]  # e.g. 32×32: [w, 2w, 4w]
        layers: list[nn.Module] = [nn.Conv2d(channels, chans[0], 4, 2, 1), nn.LeakyReLU(0.2, True)]
        for c_in, c_out in itertools.pairwise(chans):
            layers += [nn.Conv2d(c_in, c_out, 4, 2, 1, bias=not norm)]
            layers += [nn.BatchNorm2d(c_out)] if norm else []
            layers += [nn.LeakyReLU(0.2, True)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Conv2d(chans[-1], 1, 4, 1, 0)  # 4×4 → 1×1: the linear logit
        _dcgan_init(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x)).flatten(1)  # [N, 1]


def _mlp(sizes: list[int], act: nn.Module) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(act)
    return nn.Sequential(*layers)


class MLPGenerator(nn.Module):
    """z [N, z_dim] → points [N, out_dim] (ReLU MLP, ``depth`` hidden layers of ``width``)."""

    def __init__(self, z_dim: int = 16, out_dim: int = 2, width: int = 128, depth: int = 3) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.net = _mlp([z_dim, *[width] * depth, out_dim], nn.ReLU())

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


class MLPDiscriminator(nn.Module):
    """Points [N, in_dim] → raw logits [N, 1] (LeakyReLU 0.2 MLP)."""

    def __init__(self, in_dim: int = 2, width: int = 128, depth: int = 3) -> None:
        super().__init__()
        self.net = _mlp([in_dim, *[width] * depth, 1], nn.LeakyReLU(0.2))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def count_parameters(module: nn.Module) -> int:
    """Number of parameters, whether or not they currently require grad (D is frozen during G's step)."""
    return sum(p.numel() for p in module.parameters())


def build_pair(data_shape: tuple[int, ...], z_dim: int, width: int, d_norm: bool = True) -> tuple[nn.Module, nn.Module]:
    """(G, D) for data of ``data_shape``: (2,) points → the MLP pair; (C, S, S) images → the DCGAN pair."""
    if len(data_shape) == 1:
        return MLPGenerator(z_dim, data_shape[0], width), MLPDiscriminator(data_shape[0], width)
    channels, size, _ = data_shape
    gen = DCGANGenerator(size, channels, z_dim, width)
    return gen, DCGANDiscriminator(size, channels, width, norm=d_norm)


def generate(gen: nn.Module, n: int, z_dim: int, batch_size: int = 500, seed: int = 0) -> Tensor:
    """``n`` samples of ``gen`` (in its current mode) from seeded z, in batches, no grad: [n, ...] on gen's device."""
    device = next(gen.parameters()).device
    z = torch.randn(n, z_dim, generator=torch.Generator().manual_seed(seed)).to(device)
    with torch.no_grad():
        return torch.cat([gen(z[i : i + batch_size]) for i in range(0, n, batch_size)])
