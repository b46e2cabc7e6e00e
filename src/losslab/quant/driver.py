"""The one layer-wise driver of losslab: every method, any network, with a pluggable source of layer inputs.

GPTQ, LDLQ, GPFQ, RTN and PWLQ all quantize a network the same way: visit the layers in order; for each layer
collect its statistics from the inputs it sees (float network X and/or partly quantized network X̃); quantize its
weight with the method; write the result back so later layers see it; report the error. Only *how the inputs are
reached* differs between networks, so that is the one pluggable part, a :class:`LayerSource`:

* :class:`losslab.quant.engine.WalkSource` — any ``nn.Module`` with Conv2d/Linear layers: the traced walk of
  :mod:`losslab.quant.walk` (one unit = one layer);
* :class:`losslab.lm.quantize.DecoderSource` — Hugging Face causal LMs: the decoder-block catcher (one unit = the
  linears of one block, or of one true-sequential group of it, collected in one pass over the cached windows).

Everything else is here, once: the seed rule (layer ``i`` of the plan uses ``seed + 2i``, :func:`layer_seed`), the
quantize → write back → report step, the per-layer report (:func:`losslab.quant.result.layer_report`) and the kept
codes. ::

    reports, weights = drive(source, seed=0)   # source.units() yields lists of LayerJob, collect() their stats
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from losslab.quant.methods import QuantMethod
from losslab.quant.result import LayerReport, layer_report
from losslab.quant.weight_quant import WeightQuant

__all__ = ["Collected", "LayerJob", "LayerSource", "drive", "layer_seed"]


def layer_seed(seed: int, index: int) -> int:
    """The seed of the random parts (incoherence transforms, dither, stochastic rounding) of plan layer ``index``."""
    return seed + 2 * index


@dataclass
class LayerJob:
    """One layer of the plan: its full module name, its position in the plan (the seed rule's ``i``), the module
    whose weight is quantized, the method (None: kept in float) and how it reports (``conv``/``linear``, groups)."""

    name: str
    index: int
    module: nn.Module
    method: QuantMethod | None
    kind: str = "linear"
    groups: int = 1


@dataclass
class Collected:
    """A layer's collected statistics: per weight group, the method's statistics (``finalize()`` gives what
    ``quantize_layer`` reads; None when the method keeps none) and Σ = XᵀX/n for the proxy loss (or None)."""

    stats: list[Any | None]
    moments: list[Tensor] | None


class LayerSource(Protocol):
    """Where the driver's layers and their inputs come from."""

    def units(self) -> Iterator[list[LayerJob]]:
        """Lists of layers whose statistics are collected in one pass, in order. The generator may do work between
        units (a decoder source runs the quantized block forward after its last unit)."""
        ...

    def collect(self, jobs: list[LayerJob]) -> dict[str, Collected]:
        """Statistics of ``jobs`` (all with a method) from the inputs they see now."""
        ...

    def float_weight(self, job: LayerJob) -> Tensor:
        """A copy of the layer's current float weight, in the shape the report shows."""
        ...

    def weight_groups(self, weight: Tensor, job: LayerJob) -> list[Tensor]:
        """``weight`` as the 2-D matrices the method quantizes, one per group (``[out, in]``)."""
        ...

    def write(self, job: LayerJob, q: Tensor) -> None:
        """Write the dequantized weight ``q`` (the shape of :meth:`float_weight`) back into the layer."""
        ...

    def keep(self, wqs: list[WeightQuant]) -> list[WeightQuant] | None:
        """What ``weights[name]`` keeps of a quantized layer (codes for packing), or None to keep nothing."""
        ...


def drive(source: LayerSource, *, seed: int) -> tuple[list[LayerReport], dict[str, list[WeightQuant]]]:
    """Quantize every layer ``source`` yields, in order; the per-layer reports and the kept quantized weights."""
    reports: list[LayerReport] = []
    weights: dict[str, list[WeightQuant]] = {}
    for unit in source.units():
        active = [job for job in unit if job.method is not None]
        start = time.perf_counter()
        collected = source.collect(active) if active else {}
        collect_s = (time.perf_counter() - start) / max(len(active), 1)  # shared pass: an equal share each
        for job in unit:
            weight = source.float_weight(job)
            if job.method is None:
                reports.append(
                    layer_report(job.name, job.kind, tuple(weight.shape), None, [], weight, None, 0.0, job.groups)
                )
                continue
            t0 = time.perf_counter()
            got = collected.get(job.name)
            wqs = [
                job.method.quantize_layer(
                    w,
                    None if got is None or got.stats[g] is None else got.stats[g].finalize(),
                    seed=layer_seed(seed, job.index),
                )
                for g, w in enumerate(source.weight_groups(weight, job))
            ]
            q = wqs[0].q if len(wqs) == 1 else _cat(wqs)
            source.write(job, q.reshape(weight.shape).to(weight.dtype))
            moments = None if got is None else got.moments
            seconds = collect_s + time.perf_counter() - t0
            reports.append(
                layer_report(
                    job.name, job.kind, tuple(weight.shape), job.method, wqs, weight, moments, seconds, job.groups
                )
            )
            kept = source.keep(wqs)
            if kept is not None:
                weights[job.name] = kept
    return reports, weights


def _cat(wqs: list[WeightQuant]) -> Tensor:
    return torch.cat([wq.q for wq in wqs])
