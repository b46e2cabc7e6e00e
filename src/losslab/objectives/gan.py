"""Logistic and rooted non-saturating GAN losses on raw discriminator logits (gan_and_regression spec §2).

    >>> terms = gan_losses(fake_logits, real_logits, kind="rooted", k=2.0)
    >>> g_loss = terms.g.mean(); d_loss = (terms.d_fake + terms.d_real).mean()
    >>> g_loss = gan_term(fake_logits, "g", kind="rooted", k=2.0).mean()   # one term (one training phase)

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
GAN_KIND_ALIASES = {"root": "rooted", "rlo": "rooted"}  # the objective registry's names for the rooted loss


class GanLosses(NamedTuple):
    """Per-sample GAN loss terms, each shaped like the logits they came from ([N, 1] in StyleGAN2)."""

    g: Tensor
    """generator loss on the fake logits"""
    d_fake: Tensor
    """discriminator loss on the fake logits"""
    d_real: Tensor
    """discriminator loss on the real logits"""


GAN_TERMS = ("g", "d_fake", "d_real")


def gan_term(logits: Tensor, term: str, kind: str = "logistic", k: float = 2.0, *, subtract_k: bool = False) -> Tensor:
    """One per-sample term on raw logits: ``g`` (generator, on fake logits), ``d_fake`` or ``d_real`` (discriminator).

    logistic: g = softplus(−D), d_fake = softplus(D), d_real = softplus(−D). rooted: softplus(s) → ℓ_k(−s), i.e.
    g = ℓ_k(D), d_fake = ℓ_k(−D), d_real = ℓ_k(D). Float32 math with autocast off; shaped like ``logits``.
    """
    kind = GAN_KIND_ALIASES.get(kind, kind)
    if kind not in GAN_KINDS:
        raise ConfigError(f"kind={kind!r} is not allowed: choose one of {', '.join(GAN_KINDS)}")
    if term not in GAN_TERMS:
        raise ConfigError(f"term={term!r} is not allowed: choose one of {', '.join(GAN_TERMS)}")
    sign = 1.0 if term == "d_fake" else -1.0  # the softplus argument is sign·D
    if kind == "rooted":
        check_k(k)
        return rooted_logistic(-sign * logits, k, subtract_k)
    with torch.autocast(device_type=logits.device.type, enabled=False):
        return softplus(sign * logits.to(compute_dtype(logits.dtype)))


def gan_losses(
    fake_logits: Tensor, real_logits: Tensor, kind: str = "logistic", k: float = 2.0, *, subtract_k: bool = False
) -> GanLosses:
    """Per-sample non-saturating GAN terms for ``kind`` ``logistic`` or ``rooted`` (reference k = 2, no multiplier).

    ``subtract_k`` subtracts the constant k from the rooted terms (same gradients); they then tend to the
    logistic terms as k → ∞. ``k`` is ignored for ``logistic``.
    """
    return GanLosses(
        g=gan_term(fake_logits, "g", kind, k, subtract_k=subtract_k),
        d_fake=gan_term(fake_logits, "d_fake", kind, k, subtract_k=subtract_k),
        d_real=gan_term(real_logits, "d_real", kind, k, subtract_k=subtract_k),
    )
