"""Optional per-tensor activation fake-quantization on the inputs of quantized layers.

Ranges are calibrated as the min/max of each layer's input over the calibration batches; the input is then
rounded to ``2^b`` uniform levels on [lo, hi] (asymmetric, 0 representable when lo ≤ 0 ≤ hi) by a forward
pre-hook. Weight-only quantization (the default) installs nothing::

    ranges = calibrate_act_ranges(model, ["conv1", "fc"], batches)
    install_act_quant(model, ranges, bits=8)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn


class ActFakeQuant:
    """Forward pre-hook: x ↦ s·(clamp(round(x/s) + z, 0, 2^b − 1) − z), s = (hi − lo)/(2^b − 1), z = round(−lo/s)."""

    def __init__(self, lo: float, hi: float, bits: int) -> None:
        self.lo, self.hi = min(lo, 0.0), max(hi, 0.0)
        if self.hi == self.lo:
            self.lo, self.hi = -1.0, 1.0
        self.bits = bits
        self.scale = (self.hi - self.lo) / (2**bits - 1)
        self.zero = round(-self.lo / self.scale)

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0]
        codes = torch.clamp(torch.round(x / self.scale) + self.zero, 0, 2**self.bits - 1)
        return (self.scale * (codes - self.zero), *args[1:])


def calibrate_act_ranges(
    model: nn.Module, names: Sequence[str], batches: Sequence[Tensor]
) -> dict[str, tuple[float, float]]:
    """Min and max of each named layer's input over ``batches`` (one full forward pass per batch)."""
    ranges: dict[str, list[float]] = {}

    def make_hook(name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0].detach()
            lo, hi = float(x.min()), float(x.max())
            old = ranges.get(name)
            ranges[name] = [lo, hi] if old is None else [min(old[0], lo), max(old[1], hi)]

        return hook

    handles = [model.get_submodule(n).register_forward_pre_hook(make_hook(n)) for n in names]
    try:
        with torch.no_grad():
            for batch in batches:
                model(batch)
    finally:
        for h in handles:
            h.remove()
    return {n: (r[0], r[1]) for n, r in ranges.items()}


def install_act_quant(model: nn.Module, ranges: dict[str, tuple[float, float]], bits: int) -> None:
    """Register an :class:`ActFakeQuant` pre-hook on each named layer, in place."""
    for name, (lo, hi) in ranges.items():
        model.get_submodule(name).register_forward_pre_hook(ActFakeQuant(lo, hi, bits))
