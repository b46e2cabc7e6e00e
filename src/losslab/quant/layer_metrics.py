"""Per-layer quantization error metrics (quantization spec §10).

- ``weight_mse``: mean((W − Q)²)
- ``sqnr_db``: 10·log10(Σw² / Σ(w − q)²) dB (inf when Q = W)
- ``proxy_loss``: tr((W − Q)·H·(W − Q)ᵀ), the layer-output error for H = XᵀX/n
- ``sparsity``: fraction of exact zeros in Q

>>> import torch
>>> w = torch.randn(4, 8)
>>> weight_mse(w, w), sparsity(torch.zeros(2, 2))
(0.0, 1.0)
"""

from __future__ import annotations

import math

from torch import Tensor

__all__ = ["proxy_loss", "sparsity", "sqnr_db", "weight_mse"]


def _diff(weight: Tensor, quantized: Tensor) -> Tensor:
    return weight.double() - quantized.double()


def weight_mse(weight: Tensor, quantized: Tensor) -> float:
    """mean((W − Q)²), computed in float64."""
    return _diff(weight, quantized).pow(2).mean().item()


def sqnr_db(weight: Tensor, quantized: Tensor) -> float:
    """Signal-to-quantization-noise ratio 10·log10(Σw²/Σ(w − q)²) in dB; ``inf`` if Q = W."""
    noise = _diff(weight, quantized).pow(2).sum().item()
    signal = weight.double().pow(2).sum().item()
    if noise == 0:
        return math.inf
    return 10 * math.log10(signal / noise) if signal > 0 else -math.inf


def proxy_loss(weight: Tensor, quantized: Tensor, hessian: Tensor) -> float:
    """tr((W − Q)·H·(W − Q)ᵀ) for W, Q ``[out, in]`` and H ``[in, in]``, in float64."""
    e = _diff(weight, quantized)
    return ((e @ hessian.double()) * e).sum().item()


def sparsity(quantized: Tensor) -> float:
    """Fraction of entries of Q that are exactly zero."""
    return (quantized == 0).double().mean().item() if quantized.numel() else 0.0
