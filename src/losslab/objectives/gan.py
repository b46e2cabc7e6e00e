"""Logistic and rooted non-saturating GAN losses on raw discriminator logits (gan_and_regression spec §2).

    >>> terms = gan_losses(fake_logits, real_logits, kind="rooted", k=2.0)
    >>> g_loss = terms.g.mean(); d_loss = (terms.d_fake + terms.d_real).mean()

Logistic (StyleGAN2-ADA): G softplus(−D(G(z))); D softplus(D(G(z))) + softplus(−D(x)). Rooted: each softplus(s)
becomes k·exp(softplus(s)/k) = ℓ_k(−s) (see :func:`~losslab.objectives.rooted_logistic`), i.e. G ℓ_k(D(G(z))),
D on fakes ℓ_k(−D(G(z))), D on reals ℓ_k(D(x)). Math in float32 (fp16 logits are safe up to |D| ≈ 88·k, where exp
overflows float32); the caller reduces.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from losslab.errors import ConfigError
from losslab.objectives.logit_rows import compute_dtype
from losslab.objectives.rooted import check_k, rooted_logistic, softplus

GAN_KINDS = ("logistic", "rooted")


class GanLosses(NamedTuple):
    """Per-sample GAN loss terms, each shaped like the logits they came from ([N, 1] in StyleGAN2)."""

    g: Tensor
    """generator loss on the fake logits"""
    d_fake: Tensor
    """discriminator loss on the fake logits"""
    d_real: Tensor
    """discriminator loss on the real logits"""


def gan_losses(
    fake_logits: Tensor, real_logits: Tensor, kind: str = "logistic", k: float = 2.0, *, subtract_k: bool = False
) -> GanLosses:
    """Per-sample non-saturating GAN terms for ``kind`` ``logistic`` or ``rooted`` (reference k = 2, no multiplier).

    ``subtract_k`` subtracts the constant k from the rooted terms (same gradients); they then tend to the
    logistic terms as k → ∞. ``k`` is ignored for ``logistic``.
    """
    if kind not in GAN_KINDS:
        raise ConfigError(f"kind={kind!r} is not allowed: choose one of {', '.join(GAN_KINDS)}")
    if kind == "rooted":
        check_k(k)
        return GanLosses(
            g=rooted_logistic(fake_logits, k, subtract_k),
            d_fake=rooted_logistic(-fake_logits, k, subtract_k),
            d_real=rooted_logistic(real_logits, k, subtract_k),
        )
    with torch.autocast(device_type=fake_logits.device.type, enabled=False):
        fake = fake_logits.to(compute_dtype(fake_logits.dtype))
        real = real_logits.to(compute_dtype(real_logits.dtype))
        return GanLosses(g=softplus(-fake), d_fake=softplus(fake), d_real=softplus(-real))
