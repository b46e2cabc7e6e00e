"""What :func:`losslab.quant.quantize` returns: the fake-quantized model, per-layer rows and a bit budget.

``QuantResult.model`` holds *simulated* (fake) quantization: every quantized layer's weight is the dequantized
float tensor, as in every reference implementation (``result.kind == "fake"``). The integer codes, scales and
zero points behind it are in ``result.weights`` (one :class:`WeightQuant` per conv group) and are what
:func:`losslab.quant.save_packed` stores::

    result = quantize(model, RTN(bits=4), calib)
    result.summary()["avg_bits_per_weight"]     # 4.0 + scale/zero overhead
    for row in result.layers: print(row.name, row.bits, row.sqnr_db)
    result.to_json("out/quant.json")

Bit budget: codes count ``storage_bits`` each, scales 16 bits (fp16, the usual deployment convention), zero
points ``bits`` each, lookup tables 16 bits per entry, act-order group indices ⌈log2 n_groups⌉ bits per column; a
level table defined by parameters (PWLQ: range and breakpoint per row) counts those parameters at their stored width
instead of its entries.
Float (skipped) layers count 32 bits per weight in ``avg_bits_all_layers``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from losslab.io import write_text_atomic
from losslab.quant.weight_quant import WeightQuant
from losslab.tables import format_table

SCALE_BITS = 16
LUT_BITS = 16
FLOAT_BITS = 32


@dataclass
class LayerReport:
    """One quantized (or skipped) layer: what was done and how much the weight moved.

    ``weight_mse`` = mean((W−Q)²); ``sqnr_db`` = 10·log10(Σw²/Σ(w−q)²); ``proxy_loss`` = tr((W−Q)H(W−Q)ᵀ)
    with H = XᵀX/n of the layer's inputs (n rows: samples, conv patches or tokens), summed over conv groups: the
    engine's traced walk uses the *float* network's inputs, the decoder driver the inputs of the partly
    quantized model (GPTQ's H/2); ``gpfq_rel_error`` = ‖XWᵀ − X̃Qᵀ‖_F/‖XWᵀ‖_F (GPFQ only); ``sparsity`` =
    fraction of zero weights in Q.
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    groups: int
    method: str
    bits: int | None
    levels: int | None
    storage_bits: int | None
    grid: str
    group_size: int | None
    n_weights: int
    bits_per_weight: float
    weight_mse: float | None = None
    sqnr_db: float | None = None
    proxy_loss: float | None = None
    gpfq_rel_error: float | None = None
    sparsity: float | None = None
    seconds: float = 0.0

    @property
    def quantized(self) -> bool:
        """False for layers kept in float (``skip``)."""
        return self.bits is not None


def storage_bits_total(wq: WeightQuant) -> int:
    """Bits needed to store one quantized weight block: codes, scales, zeros, LUT and group index."""
    if wq.grid == "identity":
        return int(wq.q.numel()) * wq.storage_bits
    total = int(wq.codes.numel()) * wq.storage_bits
    if wq.scale is not None:
        total += int(wq.scale.numel()) * SCALE_BITS
    if wq.zero is not None:
        total += int(wq.zero.numel()) * wq.bits
    if "lut_params" in wq.extras:  # a level table defined by a few parameters (PWLQ): those are what is stored
        from losslab.quant.pwlq import lut_param_bits

        total += lut_param_bits(wq.extras["lut_params"])
    elif wq.lut is not None:
        total += int(wq.lut.numel()) * LUT_BITS
    if wq.group_index is not None and wq.scale is not None and wq.scale.shape[-1] > 1:
        total += int(wq.group_index.numel()) * math.ceil(math.log2(wq.scale.shape[-1]))
    return total


@dataclass
class QuantResult:
    """Fake-quantized model plus everything needed to report, compare and pack it (see module doc)."""

    model: nn.Module
    layers: list[LayerReport]
    weights: dict[str, list[WeightQuant]]
    method: str
    overrides: dict[str, str]
    calibration: dict[str, Any]
    fold_bn: bool = False
    act_bits: int | None = None
    act_ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    seed: int = 0
    seconds: float = 0.0
    kind: str = "fake"

    def summary(self) -> dict[str, Any]:
        """Flat dict for tables and the CLI: method, bit budget, calibration and aggregate errors.

        Keys: ``kind`` ("fake": dequantized floats written back), ``method``, ``overrides``, ``total_weights``
        (all Conv2d/Linear weights), ``quantized_weights``, ``quantized_layers``, ``float_layers`` (names),
        ``avg_bits_per_weight`` (over quantized weights, incl. scales/zeros/LUTs), ``avg_bits_all_layers``
        (float layers at 32 bits), ``weight_bits`` (distinct code bit widths), ``mean_sqnr_db``,
        ``total_proxy_loss``, ``fold_bn``, ``act_bits``, ``calibration`` (images, batches, seed, name),
        ``seed``, ``seconds``.
        """
        quant = [r for r in self.layers if r.quantized]
        total = sum(r.n_weights for r in self.layers)
        qweights = sum(r.n_weights for r in quant)
        qbits = sum(r.bits_per_weight * r.n_weights for r in quant)
        float_bits = sum(FLOAT_BITS * r.n_weights for r in self.layers if not r.quantized)
        sqnrs = [r.sqnr_db for r in quant if r.sqnr_db is not None and math.isfinite(r.sqnr_db)]
        proxies = [r.proxy_loss for r in quant if r.proxy_loss is not None]
        return {
            "kind": self.kind,
            "method": self.method,
            "overrides": dict(self.overrides),
            "total_weights": total,
            "quantized_weights": qweights,
            "quantized_layers": len(quant),
            "float_layers": [r.name for r in self.layers if not r.quantized],
            "avg_bits_per_weight": qbits / qweights if qweights else None,
            "avg_bits_all_layers": (qbits + float_bits) / total if total else None,
            "weight_bits": sorted({r.bits for r in quant if r.bits is not None}),
            "mean_sqnr_db": sum(sqnrs) / len(sqnrs) if sqnrs else None,
            "total_proxy_loss": sum(proxies) if proxies else None,
            "fold_bn": self.fold_bn,
            "act_bits": self.act_bits,
            "calibration": dict(self.calibration),
            "seed": self.seed,
            "seconds": round(self.seconds, 3),
        }

    def to_dict(self) -> dict[str, Any]:
        """``{"summary": ..., "layers": [...]}`` with plain JSON types (an infinite SQNR, Q = W, becomes "inf")."""
        return _json_safe({"summary": self.summary(), "layers": [asdict(r) for r in self.layers]})

    def to_json(self, path: str | os.PathLike[str] | None = None) -> str:
        """The :meth:`to_dict` content as indented JSON; also written atomically to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2, default=str)
        if path is not None:
            write_text_atomic(path, text)
        return text

    def table(self) -> str:
        """A plain-text per-layer table (name, shape, bits, levels, grid, stored bits per weight with the overhead
        of scales/zeros/tables over the code bits, SQNR, proxy loss, sparsity), aligned to the longest layer name
        (:func:`losslab.tables.format_table`); float layers show only name and shape."""
        rows = []
        for r in self.layers:
            shape = "x".join(map(str, r.shape))
            if not r.quantized:
                rows.append([r.name, shape, "float", "", "", "", "", "", "", ""])
                continue
            overhead = r.bits_per_weight - (r.storage_bits or 0)
            rows.append(
                [
                    r.name,
                    shape,
                    str(r.bits),
                    str(r.levels),
                    r.grid,
                    f"{r.bits_per_weight:.3f}",
                    f"+{overhead:.3f}",
                    _fmt(r.sqnr_db, ".2f"),
                    _fmt(r.proxy_loss, ".3e"),
                    _fmt(r.sparsity, ".3f"),
                ]
            )
        headers = ["layer", "shape", "bits", "levels", "grid", "bits/w", "overhead", "SQNR dB", "proxy", "sparse"]
        return format_table(headers, rows, align="llrrrrrrrr")


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    return obj


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def layer_report(
    name: str,
    kind: str,
    shape: tuple[int, ...],
    method: Any,
    wqs: list[WeightQuant],
    weight: Tensor,
    second_moments: list[Tensor] | None,
    seconds: float,
    groups: int = 1,
) -> LayerReport:
    """The one per-layer report, written by the layer-wise driver (:func:`losslab.quant.driver.drive`) for every source.

    ``method`` None → a float (skipped) row. ``wqs``: one :class:`WeightQuant` per conv group (one for a linear);
    ``weight``: the float weight; ``second_moments``: per group Σ = XᵀX/n of the layer's input rows (proxy loss
    tr((W−Q)Σ(W−Q)ᵀ) summed over groups), or None for no proxy.
    """
    from losslab.quant.layer_metrics import proxy_loss, sparsity, sqnr_db, weight_mse

    n_weights = int(math.prod(shape))
    if method is None:
        return LayerReport(name, kind, shape, groups, "float", None, None, None, "float", None, n_weights, 32.0)
    first = wqs[0]
    q = torch.cat([wq.q for wq in wqs]).reshape(weight.shape).to(weight.dtype)
    proxy = None
    if second_moments:
        w_groups = weight.reshape(len(wqs), -1, first.q.shape[-1])
        q_groups = q.reshape(len(wqs), -1, first.q.shape[-1])
        proxy = sum(
            float(proxy_loss(w_groups[g].double(), q_groups[g].double(), second_moments[g])) for g in range(len(wqs))
        )
    rel = [wq.extras.get("relative_error") for wq in wqs]
    gpfq_rel = None if any(r is None for r in rel) else float(math.sqrt(sum(float(r) ** 2 for r in rel) / len(rel)))
    return LayerReport(
        name=name,
        kind=kind,
        shape=shape,
        groups=groups,
        method=method.describe(),
        bits=first.bits,
        levels=first.levels,
        storage_bits=first.storage_bits,
        grid=first.grid,
        group_size=getattr(method, "group_size", None),
        n_weights=n_weights,
        bits_per_weight=sum(storage_bits_total(wq) for wq in wqs) / n_weights,
        weight_mse=float(weight_mse(weight, q)),
        sqnr_db=float(sqnr_db(weight, q)),
        proxy_loss=proxy,
        gpfq_rel_error=gpfq_rel,
        sparsity=float(sparsity(q)),
        seconds=round(seconds, 4),
    )
