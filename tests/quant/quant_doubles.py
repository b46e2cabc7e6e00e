"""Test doubles for the layer-wise quantization drivers (the engine's walk and the decoder-block catcher)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from losslab.quant.methods import HessianAccumulator, QuantMethod, identity_weight_quant
from losslab.quant.weight_quant import WeightQuant


@dataclass(frozen=True)
class RecordingMethod(QuantMethod):
    """Keeps every weight and records a copy of the statistics the driver hands it (a stand-in for GPTQ/GPFQ)."""

    bits: int = 16
    seen: list = None  # type: ignore[assignment]
    reads_quantized: ClassVar[bool] = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "seen", [])

    def new_stats(self, dim: int, device: torch.device) -> HessianAccumulator:
        return HessianAccumulator(dim, device)

    def quantize_layer(self, weight: Tensor, stats: Any, *, seed: int = 0) -> WeightQuant:
        self.seen.append(copy.deepcopy(stats))
        return identity_weight_quant(weight)

    def hessians(self) -> list[Tensor]:
        """The H of every layer quantized so far, in the driver's order."""
        return [stats.hessian for stats in self.seen]
