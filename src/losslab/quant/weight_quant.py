"""The result type every per-layer quantizer returns: :class:`WeightQuant`.

A ``WeightQuant`` holds the fake-quantized weight ``q`` (dense, same shape and dtype as the input) together with
what packed storage needs to rebuild it exactly: integer codes plus either uniform-grid parameters
(``q = scale[:, g(j)] · (codes − zero[:, g(j)])``) or a per-row level table (``q = lut.gather(1, codes)``).

>>> import torch
>>> from losslab.quant.rtn import rtn_weight
>>> wq = rtn_weight(torch.randn(4, 8), bits=4)
>>> bool(torch.equal(wq.dequantize(), wq.q))
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = ["WeightQuant", "code_dtype", "expand_groups", "storage_bits_for"]


def storage_bits_for(levels: int) -> int:
    """Bits per code when packed: ``ceil(log2(levels))`` (e.g. 17 GPFQ levels at b = 4 need 5 bits)."""
    return max(1, math.ceil(math.log2(levels)))


def code_dtype(levels: int) -> torch.dtype:
    """Smallest signed integer dtype (int16 or int32) that holds codes for ``levels`` levels."""
    return torch.int16 if levels <= 2**15 else torch.int32


def expand_groups(params: Tensor, group_index: Tensor | None) -> Tensor:
    """Per-group parameters ``[out, n_groups]`` → per-column ``[out, in]`` via ``params[:, group_index]``.

    ``group_index=None`` requires a single group and returns ``params`` (``[out, 1]``, broadcasts over columns).
    The quantizers of this package always set ``group_index`` when there is more than one group.
    """
    if group_index is None:
        if params.shape[1] != 1:
            raise ValueError(f"{params.shape[1]} groups need a group_index, got None")
        return params
    return params[:, group_index]


@dataclass
class WeightQuant:
    """A quantized weight ``[out, in]`` and everything needed to rebuild it from integer codes.

    Fields:

    - ``q``: dequantized weight (input shape and dtype);
    - ``codes``: integer codes ``[out, in]`` (int16) in the order of the input columns;
    - ``scale``: ``[out, n_groups]`` (uniform grids, else ``None``);
    - ``zero``: ``[out, n_groups]`` integer zero points (``asym``) or ``None``;
    - ``group_index``: ``[in]`` group of each column; ``None`` = a single group (set whenever there is more than
      one group, also for consecutive groups);
    - ``lut``: ``[out, n_levels]`` per-row level table for non-uniform grids (``q = lut.gather(1, codes)``);
    - ``bits`` nominal b; ``levels`` representable levels; ``storage_bits`` bits per packed code; ``grid`` name;
    - ``extras``: method-specific information (residual norms, chosen clip, breakpoint, transform seeds, ...).

    When ``extras`` carries an ``"incoherence"`` entry the codes live in a rotated basis and :meth:`dequantize`
    undoes the rotation (see :func:`losslab.quant.incoherence.unrotate`).
    """

    q: Tensor
    codes: Tensor
    scale: Tensor | None
    zero: Tensor | None
    group_index: Tensor | None
    lut: Tensor | None
    bits: int
    levels: int
    storage_bits: int
    grid: str
    extras: dict[str, Any] = field(default_factory=dict)

    def dequantize(self) -> Tensor:
        """Rebuild ``q`` from codes and grid parameters; equals ``self.q`` bit-exactly in the weight's dtype."""
        if "incoherence" in self.extras:
            from losslab.quant.incoherence import unrotate  # local import: incoherence builds on this module

            return unrotate(self.dequantize_codes(), self.extras["incoherence"]).to(self.q.dtype)
        return self.dequantize_codes().to(self.q.dtype)

    def dequantize_codes(self) -> Tensor:
        """Values of the codes in the basis the codes live in (rotated basis for incoherence), in the grid dtype."""
        if self.lut is not None:
            return self.lut.gather(1, self.codes.long())
        if self.scale is None:
            raise ValueError("WeightQuant has neither lut nor scale; cannot dequantize")
        scale = expand_groups(self.scale, self.group_index)
        values = self.codes.to(scale.dtype)
        if self.zero is not None:
            values = values - expand_groups(self.zero, self.group_index).to(scale.dtype)
        return scale * values
