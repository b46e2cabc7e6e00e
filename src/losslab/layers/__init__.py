"""Factorized neural layers: low-rank Linear/Conv2d/Embedding, tensor-train convs, factorized attention.

``specs/factorized.md``; Khodak et al., *Initialization and Regularization of Factorized Neural Layers* (ICLR
2021)::

    import timm, losslab.models
    from losslab.layers import factorize, collapse
    model = timm.create_model("cifar_resnet20")
    report = factorize(model, rank_scale=0.111)      # spectral init; report.params_after == 63850
    collapse(model)                                  # back to plain Conv2d/Linear, same function

The Lightning callbacks of the normalization experiment (``RecordFrobNorms``, ``NormalizeToRecorded``,
and the Lightning-free ``factor_stats``) live in :mod:`losslab.layers.normalization` and
:mod:`losslab.layers.factor_norms`, imported lazily from here.
"""

from __future__ import annotations

from losslab.layers.attention import (
    AttentionFrobeniusDecay,
    attention_layout,
    attention_linears,
    attention_modules,
    attention_statistics,
    spectral_rebalance_attention,
)
from losslab.layers.factorize import (
    FactorizeReport,
    LayerFactorization,
    collapse,
    count_params_factorized,
    factorize,
    factorized_modules,
    rank_scale_for_target,
)
from losslab.layers.lowrank import (
    LowRankBase,
    LowRankConv2d,
    LowRankEmbedding,
    LowRankLinear,
    conv_rank_for_scale,
    matrix_rank_for_scale,
)
from losslab.layers.spectral import conv_kernel_to_matrix, factor_kaiming, matrix_to_conv_kernel, spectral_factors
from losslab.layers.tensor_train import (
    TensorTrainConv2d,
    TensorTrainDecay,
    tensor_train_penalty,
    tt_modes,
    tt_param_count,
    tt_ranks,
    tt_svd,
)
from losslab.lazy import lazy_exports

_LAZY = {
    "RecordFrobNorms": "losslab.layers.normalization",
    "NormalizeToRecorded": "losslab.layers.normalization",
    "factor_stats": "losslab.layers.factor_norms",
    "rescale_to_norms": "losslab.layers.factor_norms",
    "product_frobenius_norms": "losslab.layers.factor_norms",
}
__getattr__ = lazy_exports(__name__, _LAZY)


__all__ = [
    "AttentionFrobeniusDecay",
    "FactorizeReport",
    "LayerFactorization",
    "LowRankBase",
    "LowRankConv2d",
    "LowRankEmbedding",
    "LowRankLinear",
    "NormalizeToRecorded",
    "RecordFrobNorms",
    "TensorTrainConv2d",
    "TensorTrainDecay",
    "attention_layout",
    "attention_linears",
    "attention_modules",
    "attention_statistics",
    "collapse",
    "conv_kernel_to_matrix",
    "conv_rank_for_scale",
    "count_params_factorized",
    "factor_kaiming",
    "factor_stats",
    "factorize",
    "factorized_modules",
    "matrix_rank_for_scale",
    "matrix_to_conv_kernel",
    "product_frobenius_norms",
    "rank_scale_for_target",
    "rescale_to_norms",
    "spectral_factors",
    "spectral_rebalance_attention",
    "tensor_train_penalty",
    "tt_modes",
    "tt_param_count",
    "tt_ranks",
    "tt_svd",
]
