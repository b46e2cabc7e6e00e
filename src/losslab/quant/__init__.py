"""Post-training weight quantization: grids, per-layer algorithms, the layer-wise engine and packed storage.

One verb quantizes any network with Conv2d/Linear layers (fake quantization: dequantized floats written back)::

    from losslab.quant import GPFQ, GPTQ, RTN, quantize, save_packed, load_packed
    result = quantize(model, GPTQ(bits=4, act_order=True), calib_loader, overrides={"fc": RTN(bits=8)})
    result.summary(); print(result.table())
    save_packed(result, "model.4bit.safetensors"); model = load_packed("model.4bit.safetensors")

The per-layer algorithms are pure tensor functions on an ``[out, in]`` weight (``rtn_weight``, ``pwlq_weight``,
``gpfq_weight``, ``gptq_weight``, ``ldlq_weight``, ``incoherence_quantize``) returning a :class:`WeightQuant`.

The names load their modules on first use (``import losslab.quant`` imports no torch), so the torch-free
:mod:`losslab.quant.bits` (the allowed bit widths, ``--bits`` parsing) serves the command line while it parses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from losslab.lazy import lazy_exports
from losslab.quant.bits import BITS_RANGE, parse_bits

if TYPE_CHECKING:
    from losslab.quant.bn_fold import find_bn_pairs, fold_batchnorm
    from losslab.quant.clipping import mse_clip_alpha
    from losslab.quant.engine import capture_input, quant_layers, quantize, quantize_many
    from losslab.quant.gpfq import (
        GPFQGram,
        GPFQStats,
        gpfq_alphabet,
        gpfq_weight,
        gpfq_weight_from_stats,
        gpfq_weight_sample_form,
    )
    from losslab.quant.gptq import HessianStats, gptq_weight, hessian_from_inputs
    from losslab.quant.grids import GRID_NAMES, fit_grid, grid_levels
    from losslab.quant.incoherence import incoherence_quantize, random_orthogonal, unrotate
    from losslab.quant.layer_metrics import proxy_loss, sparsity, sqnr_db, weight_mse
    from losslab.quant.ldlq import ldl_decompose, ldlq_weight
    from losslab.quant.methods import (
        GPFQ,
        GPTQ,
        LDLQ,
        PWLQ,
        QUANT_METHODS,
        RTN,
        Identity16,
        LayerStats,
        QuantMethod,
        build_methods,
        method_from_name,
        method_options,
    )
    from losslab.quant.packed import load_packed, packed_size_bytes, read_packed_metadata, save_packed
    from losslab.quant.pwlq import optimal_breakpoint, pwlq_weight
    from losslab.quant.result import LayerReport, QuantResult
    from losslab.quant.rtn import rtn_weight
    from losslab.quant.unfold import layer_inputs, unfold_conv_input
    from losslab.quant.weight_quant import WeightQuant

__getattr__ = lazy_exports(
    __name__,
    {
        "find_bn_pairs": "losslab.quant.bn_fold",
        "fold_batchnorm": "losslab.quant.bn_fold",
        "mse_clip_alpha": "losslab.quant.clipping",
        "capture_input": "losslab.quant.engine",
        "quant_layers": "losslab.quant.engine",
        "quantize": "losslab.quant.engine",
        "quantize_many": "losslab.quant.engine",
        "GPFQGram": "losslab.quant.gpfq",
        "GPFQStats": "losslab.quant.gpfq",
        "gpfq_alphabet": "losslab.quant.gpfq",
        "gpfq_weight": "losslab.quant.gpfq",
        "gpfq_weight_from_stats": "losslab.quant.gpfq",
        "gpfq_weight_sample_form": "losslab.quant.gpfq",
        "HessianStats": "losslab.quant.gptq",
        "gptq_weight": "losslab.quant.gptq",
        "hessian_from_inputs": "losslab.quant.gptq",
        "GRID_NAMES": "losslab.quant.grids",
        "fit_grid": "losslab.quant.grids",
        "grid_levels": "losslab.quant.grids",
        "incoherence_quantize": "losslab.quant.incoherence",
        "random_orthogonal": "losslab.quant.incoherence",
        "unrotate": "losslab.quant.incoherence",
        "proxy_loss": "losslab.quant.layer_metrics",
        "sparsity": "losslab.quant.layer_metrics",
        "sqnr_db": "losslab.quant.layer_metrics",
        "weight_mse": "losslab.quant.layer_metrics",
        "ldl_decompose": "losslab.quant.ldlq",
        "ldlq_weight": "losslab.quant.ldlq",
        "GPFQ": "losslab.quant.methods",
        "GPTQ": "losslab.quant.methods",
        "Identity16": "losslab.quant.methods",
        "LDLQ": "losslab.quant.methods",
        "LayerStats": "losslab.quant.methods",
        "PWLQ": "losslab.quant.methods",
        "QUANT_METHODS": "losslab.quant.methods",
        "QuantMethod": "losslab.quant.methods",
        "RTN": "losslab.quant.methods",
        "build_methods": "losslab.quant.methods",
        "method_from_name": "losslab.quant.methods",
        "method_options": "losslab.quant.methods",
        "load_packed": "losslab.quant.packed",
        "packed_size_bytes": "losslab.quant.packed",
        "read_packed_metadata": "losslab.quant.packed",
        "save_packed": "losslab.quant.packed",
        "optimal_breakpoint": "losslab.quant.pwlq",
        "pwlq_weight": "losslab.quant.pwlq",
        "LayerReport": "losslab.quant.result",
        "QuantResult": "losslab.quant.result",
        "rtn_weight": "losslab.quant.rtn",
        "layer_inputs": "losslab.quant.unfold",
        "unfold_conv_input": "losslab.quant.unfold",
        "WeightQuant": "losslab.quant.weight_quant",
    },
)

__all__ = [
    "BITS_RANGE",
    "GPFQ",
    "GPTQ",
    "GRID_NAMES",
    "LDLQ",
    "PWLQ",
    "QUANT_METHODS",
    "RTN",
    "GPFQGram",
    "GPFQStats",
    "HessianStats",
    "Identity16",
    "LayerReport",
    "LayerStats",
    "QuantMethod",
    "QuantResult",
    "WeightQuant",
    "build_methods",
    "capture_input",
    "find_bn_pairs",
    "fit_grid",
    "fold_batchnorm",
    "gpfq_alphabet",
    "gpfq_weight",
    "gpfq_weight_from_stats",
    "gpfq_weight_sample_form",
    "gptq_weight",
    "grid_levels",
    "hessian_from_inputs",
    "incoherence_quantize",
    "layer_inputs",
    "ldl_decompose",
    "ldlq_weight",
    "load_packed",
    "method_from_name",
    "method_options",
    "mse_clip_alpha",
    "optimal_breakpoint",
    "packed_size_bytes",
    "parse_bits",
    "proxy_loss",
    "pwlq_weight",
    "quant_layers",
    "quantize",
    "quantize_many",
    "random_orthogonal",
    "read_packed_metadata",
    "rtn_weight",
    "save_packed",
    "sparsity",
    "sqnr_db",
    "unfold_conv_input",
    "unrotate",
    "weight_mse",
]
