"""Initial factors for low-rank layers: spectral initialization (SI) and the factor-wise Kaiming baseline.

Khodak et al., *Initialization and Regularization of Factorized Neural Layers* (ICLR 2021), §5 of
``specs/factorized.md``. A dense weight W (m×n, in the forward layout of the layer) is split as W ≈ U Vᵀ with
U (m×r), V (n×r)::

    U, V = spectral_factors(weight_matrix, rank=8)              # best rank-8 approximation, balanced
    U, V = factor_kaiming(m, n, rank=8, like=weight_matrix)     # non-SI baseline

Convolution kernels are matricized with :func:`conv_kernel_to_matrix` (the spatially separable convention).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn

from losslab.errors import ConfigError

PadMode = Literal["zero_u", "zero"]
PAD_MODES: tuple[str, ...] = ("zero_u", "zero")


def conv_kernel_to_matrix(kernel: Tensor) -> Tensor:
    """Matricize a (c_out, c_in, k_h, k_w) kernel as W_mat[(o,i),(c,j)] = K[o,c,i,j].

    Returns a (c_out·k_h) × (c_in·k_w) matrix: rows index (output channel, vertical tap), columns
    (input channel, horizontal tap), so a rank-r factorization is a k_w-wide conv followed by a k_h-tall one.
    """
    c_out, c_in, k_h, k_w = kernel.shape
    return kernel.permute(0, 2, 1, 3).reshape(c_out * k_h, c_in * k_w)


def matrix_to_conv_kernel(matrix: Tensor, c_out: int, c_in: int, k_h: int, k_w: int) -> Tensor:
    """Inverse of :func:`conv_kernel_to_matrix`: (c_out·k_h)×(c_in·k_w) -> (c_out, c_in, k_h, k_w)."""
    return matrix.reshape(c_out, k_h, c_in, k_w).permute(0, 2, 1, 3)


def check_pad(pad: str) -> None:
    """Raise ConfigError unless ``pad`` is one of :data:`PAD_MODES`."""
    if pad not in PAD_MODES:
        raise ConfigError(f"pad={pad!r} is not allowed; choose one of: {', '.join(PAD_MODES)}")


def spectral_factors(weight: Tensor, rank: int, pad: PadMode = "zero_u") -> tuple[Tensor, Tensor]:
    """Balanced factors of the best rank-``rank`` approximation of ``weight`` (m×n).

    Thin SVD in float64, W = A Σ Bᵀ; U = A_r Σ_r^{1/2} (m×r), V = B_r Σ_r^{1/2} (n×r), so U Vᵀ is the
    truncated SVD and UᵀU = VᵀV = Σ_r. If ``rank`` exceeds min(m, n) the extra columns are padded:
    ``pad="zero_u"`` sets extra U columns to 0 and draws extra V columns from N(0, σ²) with σ the RMS of the
    existing V entries (product unchanged, gradients alive); ``pad="zero"`` zero-fills both (the original,
    whose extra columns then receive zero gradient forever). Returned in ``weight``'s dtype and device.
    """
    check_pad(pad)
    if rank < 1:
        raise ConfigError(f"rank={rank} is out of range: allowed rank >= 1")
    m, n = weight.shape
    a, s, bh = torch.linalg.svd(weight.detach().to(torch.float64), full_matrices=False)
    k = min(rank, s.numel())
    root = s[:k].sqrt()
    u = torch.zeros(m, rank, dtype=torch.float64, device=weight.device)
    v = torch.zeros(n, rank, dtype=torch.float64, device=weight.device)
    u[:, :k] = a[:, :k] * root
    v[:, :k] = bh[:k].T * root
    if rank > k and pad == "zero_u":
        sigma = v[:, :k].pow(2).mean().sqrt()
        v[:, k:] = torch.randn(n, rank - k, dtype=torch.float64, device=weight.device) * sigma
    return u.to(weight.dtype), v.to(weight.dtype)


def factor_kaiming(m: int, n: int, rank: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """Non-SI baseline: ``kaiming_normal_`` (fan_in, ReLU gain) on U (m×r) and on Vᵀ (r×n) separately.

    Var(U) = 2/r and Var(V) = 2/n, so the product has variance 4/n (2k× dense He for a k×k conv with n = c_in·k).
    """
    u = torch.empty(m, rank, dtype=like.dtype, device=like.device)
    vt = torch.empty(rank, n, dtype=like.dtype, device=like.device)
    torch.nn.init.kaiming_normal_(u, nonlinearity="relu")
    torch.nn.init.kaiming_normal_(vt, nonlinearity="relu")
    return u, vt.T.contiguous()


@torch.no_grad()
def conv_geometry(conv: nn.Conv2d) -> dict[str, Any]:
    """The stride, padding, dilation and ``bias`` flag of ``conv``, as constructor keywords of a layer replacing it."""
    return {"stride": conv.stride, "padding": conv.padding, "dilation": conv.dilation, "bias": conv.bias is not None}


def dense_conv(weight: Tensor, bias: Tensor | None, like: nn.Module) -> nn.Conv2d:
    """A plain ``nn.Conv2d`` holding ``weight`` (c_out, c_in, k_h, k_w) and ``bias``, with the stride, padding and
    dilation of ``like`` (any module exposing them); used to collapse factorized convs back to dense."""
    out = nn.Conv2d(
        weight.shape[1],
        weight.shape[0],
        tuple(weight.shape[2:]),
        like.stride,
        like.padding,
        like.dilation,
        bias=bias is not None,
        device=weight.device,
        dtype=weight.dtype,
    )
    out.weight.copy_(weight)
    if bias is not None:
        out.bias.copy_(bias)
    return out
