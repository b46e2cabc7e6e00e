"""Per-epoch statistics of factorized layers (factorized.md §8) and the factor-product norms, without Lightning.

The Lightning callbacks of the normalization experiment that use these live in :mod:`losslab.layers.normalization`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from losslab.errors import ConfigError
from losslab.layers.lowrank import LowRankBase


def lowrank_layers(model: nn.Module) -> list[LowRankBase]:
    """The low-rank layers of ``model`` in ``modules()`` order (ConfigError if there are none)."""
    layers = [m for m in model.modules() if isinstance(m, LowRankBase)]
    if not layers:
        raise ConfigError(f"{type(model).__name__} has no low-rank layers; factorize it first (losslab.layers)")
    return layers


def product_frobenius_norms(layers: list[LowRankBase]) -> Tensor:
    """‖U(M)Vᵀ‖_F of each layer, float64 on CPU, shape [layers]."""
    with torch.no_grad():
        return torch.stack([torch.linalg.matrix_norm(m.weight_matrix().double()).cpu() for m in layers])


@torch.no_grad()
def rescale_to_norms(layers: list[LowRankBase], targets: Tensor) -> None:
    """Multiply U_l and V_l each by sqrt(n_l / ‖U_l(M_l)V_lᵀ‖_F) so the product's norm becomes n_l (in place)."""
    for layer, target, current in zip(layers, targets.tolist(), product_frobenius_norms(layers).tolist()):
        scale = math.sqrt(target / current)
        layer.U.mul_(scale)
        layer.V.mul_(scale)


def _offdiag_ratio(gram: Tensor) -> float:
    off = gram - torch.diag_embed(torch.diagonal(gram))
    return (torch.linalg.matrix_norm(off) / torch.linalg.matrix_norm(gram)).item()


@torch.no_grad()
def factor_stats(model: nn.Module, lr: float | None = None) -> dict[str, float]:
    """Layer means of the §8 per-epoch logs over the low-rank layers of ``model``.

    Keys: ``frob_norm`` ‖W‖_F, ``nuclear_norm`` ‖W‖_*, ``factor_sq_norm`` ½Σ‖factor‖²_F (½(‖U‖²+‖V‖²), + ‖M‖²
    with M), ``gram_offdiag_u`` ‖offdiag(UᵀU)‖_F/‖UᵀU‖_F, ``gram_offdiag_v`` the same for VᵀV; with ``lr`` also
    ``lr_over_frob`` lr/‖W‖_F and ``lr_over_frob_sq`` lr/‖W‖²_F. W = U(M)Vᵀ in float64.
    """
    rows: list[dict[str, float]] = []
    for layer in lowrank_layers(model):
        w = layer.weight_matrix().double()
        u, v = layer.U.double(), layer.V.double()
        frob = torch.linalg.matrix_norm(w).item()
        row = {
            "frob_norm": frob,
            "nuclear_norm": torch.linalg.matrix_norm(w, "nuc").item(),
            "factor_sq_norm": 0.5 * sum(f.double().pow(2).sum().item() for f in layer.factors()),
            "gram_offdiag_u": _offdiag_ratio(u.T @ u),
            "gram_offdiag_v": _offdiag_ratio(v.T @ v),
        }
        if lr is not None:
            row["lr_over_frob"] = lr / frob
            row["lr_over_frob_sq"] = lr / frob**2
        rows.append(row)
    return {key: sum(r[key] for r in rows) / len(rows) for key in rows[0]}
