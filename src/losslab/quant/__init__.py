"""Post-training weight quantization: grids, per-layer algorithms, the layer-wise engine and packed storage.

One verb quantizes any network with Conv2d/Linear layers (fake quantization: dequantized floats written back)::

    from losslab.quant import GPFQ, GPTQ, RTN, quantize, save_packed, load_packed
    result = quantize(model, GPTQ(bits=4, act_order=True), calib_loader, overrides={"fc": RTN(bits=8)})
    result.summary(); print(result.table())
    save_packed(result, "model.4bit.safetensors"); model = load_packed("model.4bit.safetensors")

The per-layer algorithms are pure tensor functions on an ``[out, in]`` weight (``rtn_weight``, ``pwlq_weight``,
``gpfq_weight``, ``gptq_weight``, ``ldlq_weight``, ``incoherence_quantize``) returning a :class:`WeightQuant`.
"""

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

__all__ = [
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
