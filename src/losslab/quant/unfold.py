"""Turn a layer's input into the rows X of the layer-wise least-squares problem ``y = X Wᵀ``.

For a ``Linear`` layer the rows are the samples (or tokens). For a ``Conv2d`` layer the rows are the image
patches that the convolution sees, unfolded with the conv's *real* stride, padding (``F.pad`` for the
``reflect`` / ``replicate`` / ``circular`` modes), dilation and groups, so that per group ``g``

    conv(x)[:, g-th output block] == (X_g @ W_gᵀ + b_g) reshaped,   W_g = W[g-th block].reshape(C_out/groups, -1)

holds exactly (tested against ``F.conv2d``). Shapes: ``layer_inputs(layer, x)`` returns ``[groups, m, d]`` with
``m`` = batch·output positions and ``d`` = (C_in/groups)·kh·kw, or ``[1, m, in_features]`` for a Linear.

``legacy_gpfq_patches`` reproduces the original GPFQ code (stride = kernel size, ⌊0.25·L + 1⌋ patches per image
sampled with replacement, spec §5.2) for reproduction runs only::

    X = layer_inputs(conv, images)                 # [groups, B·H_out·W_out, C_in/groups·kh·kw]
    Wg = grouped_weight(conv)                      # [groups, C_out/groups, C_in/groups·kh·kw]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

QuantLayer = nn.Conv2d | nn.Linear


def _pad(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """Apply the conv's own padding (any padding mode, including ``padding="same"``) with ``F.pad``."""
    pad = conv._reversed_padding_repeated_twice
    if not any(pad):
        return x
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    return F.pad(x, pad, mode=mode)


def _patches(conv: nn.Conv2d, x: Tensor, stride: tuple[int, int] | None = None) -> Tensor:
    """The patches of ``x`` [B, C_in, H, W] as one strided view of the padded input, indexed (group, channel,
    kernel row, kernel column, image, output row, output column)."""
    x = _pad(conv, x)
    (kh, kw), (dh, dw) = conv.kernel_size, conv.dilation
    sh, sw = stride or conv.stride
    batch, channels, height, width = x.shape
    h_out, w_out = (height - dh * (kh - 1) - 1) // sh + 1, (width - dw * (kw - 1) - 1) // sw + 1
    sb, sc, sy, sx = x.stride()
    per_group = channels // conv.groups
    return x.as_strided(
        (conv.groups, per_group, kh, kw, batch, h_out, w_out),
        (per_group * sc, sc, dh * sy, dw * sx, sb, sh * sy, sw * sx),
        x.storage_offset(),
    )


def unfold_conv_input(conv: nn.Conv2d, x: Tensor, *, stride: tuple[int, int] | None = None) -> Tensor:
    """Patches of ``x`` [B, C_in, H, W] as ``[groups, B·L, (C_in/groups)·kh·kw]`` (L output positions).

    The column order (channel, kernel row, kernel column) matches ``conv.weight.reshape(C_out, -1)``, as
    ``F.unfold`` orders it. The strided view of the patches is copied once into ``[groups, d, B·L]`` with the
    output column innermost (contiguous runs on both sides of the copy for stride 1); the result is its transposed
    view, so ``rows[g].T`` is a contiguous ``[d, B·L]`` matrix (4–6× faster on a CPU than stacking the kh·kw taps
    and permuting). ``stride`` overrides the conv's stride (only the legacy GPFQ unfold uses this).
    """
    patches = _patches(conv, x, stride)
    groups, per_group, kh, kw, batch, h_out, w_out = patches.shape
    return patches.reshape(groups, per_group * kh * kw, batch * h_out * w_out).transpose(1, 2)


def unfold_conv_pair(conv: nn.Conv2d, first: Tensor, second: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """The transposed patches of two inputs of ``conv`` stacked in one buffer ``[groups, 2d, B·L]`` of ``dtype``:
    rows [0, d) of group g are ``unfold_conv_input(conv, first)[g].T``, rows [d, 2d) the same for ``second``.

    GPFQ's two streams (X̃ and X) land side by side, so X̃ᵀ[X̃ | X] is one GEMM per row block
    (:func:`losslab.quant.gpfq.add_pair_gram`) without a concatenation; the dtype cast happens in the same copy.
    """
    a, b = _patches(conv, first), _patches(conv, second)
    groups, per_group, kh, kw, batch, h_out, w_out = a.shape
    out = torch.empty((groups, 2, *a.shape[1:]), dtype=dtype, device=a.device)
    out[:, 0].copy_(a)
    out[:, 1].copy_(b)
    return out.reshape(groups, 2 * per_group * kh * kw, batch * h_out * w_out)


def layer_inputs(layer: QuantLayer, x: Tensor) -> Tensor:
    """Rows of the least-squares problem for ``layer`` given its input ``x``, shape ``[groups, m, d]``."""
    if isinstance(layer, nn.Conv2d):
        return unfold_conv_input(layer, x)
    return x.reshape(1, -1, x.shape[-1])


def n_groups(layer: QuantLayer) -> int:
    """Number of independent weight blocks: ``conv.groups`` for a Conv2d, 1 for a Linear."""
    return layer.groups if isinstance(layer, nn.Conv2d) else 1


def grouped_weight(layer: QuantLayer) -> Tensor:
    """The weight as ``[groups, out/groups, d]``: a conv is flattened to (C_out, C_in/groups·kh·kw)."""
    weight = layer.weight.detach()
    return weight.reshape(n_groups(layer), weight.shape[0] // n_groups(layer), -1)


def legacy_gpfq_patches(
    conv: nn.Conv2d, x: Tensor, x_tilde: Tensor, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """The original GPFQ unfold (spec §5.2): stride = kernel size, ⌊0.25·L + 1⌋ patches per image.

    Patches are drawn with replacement, with the same indices for the float input ``x`` and the quantized-stream
    input ``x_tilde``. Returns two ``[groups, B·n, d]`` tensors. Reproduces the original's defect that taps which
    only see padding on small maps get zero columns (and hence zero weights).
    """
    # Always unfold with the kernel size as stride; n positions per image.
    ux = unfold_conv_input(conv, x, stride=conv.kernel_size)
    ut = unfold_conv_input(conv, x_tilde, stride=conv.kernel_size)
    batch = x.shape[0]
    rows = ux.shape[1]
    n_pos = rows // batch
    n_pick = int(0.25 * n_pos + 1)
    idx = torch.randint(n_pos, (batch, n_pick), generator=generator).to(x.device)
    flat = (idx + torch.arange(batch, device=x.device)[:, None] * n_pos).reshape(-1)
    return ux[:, flat], ut[:, flat]
