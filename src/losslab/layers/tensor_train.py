"""Tensor-train (TT) conv: a depthwise k×k conv followed by a 1×1 conv whose weight is a 3-core TT.

``specs/factorized.md`` §9 (Gray, Crowley & Storkey, arXiv:1906.00859; TT-SVD from Oseledets 2011). The
c_out×c_in weight of the 1×1 conv is reshaped to a (d₁, d₂, d₃) tensor (:func:`tt_modes`) and stored as cores
G₁ (1×d₁×r₁), G₂ (r₁×d₂×r₂), G₃ (r₂×d₃×1); it is rebuilt from the cores at every forward::

    tt = TensorTrainConv2d.from_dense(nn.Conv2d(640, 640, 3, padding=1), rank_scale=0.234)
    tt.tt_modes, tt.tt_ranks          # [80, 80, 64], [19, 15]
    loss = task_loss + tt.frobenius_penalty(lam=5e-4)   # FD goes into the loss BEFORE backward()
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from losslab.errors import ConfigError, check_range
from losslab.layers.spectral import conv_geometry, dense_conv
from losslab.regularizers.base import Regularizer


def _smallest_divisor_at_least(n: int, low: int) -> int:
    return next(d for d in range(max(low, 1), n + 1) if n % d == 0)


def tt_modes(out_channels: int, in_channels: int) -> list[int]:
    """Three modes of N = c_out·c_in: [e, e, e] if e = N^{1/3} is an integer (within 1e-6); else d₁ = smallest
    divisor of N ≥ round(e), d₂ = smallest divisor of N/d₁ ≥ round(e) (N/d₁ itself if smaller), d₃ = N/(d₁d₂)."""
    n = out_channels * in_channels
    e = n ** (1.0 / 3.0)
    if abs(e - round(e)) < 1e-6 and round(e) ** 3 == n:
        return [round(e)] * 3
    target = round(e)
    d1 = _smallest_divisor_at_least(n, target)
    rest = n // d1
    d2 = rest if rest < target else _smallest_divisor_at_least(rest, target)
    return [d1, d2, rest // d2]


def tt_ranks(modes: list[int], rank_scale: float) -> list[int]:
    """Inner TT ranks r_i = max(1, round(s·min(d_i, d_{i+1}))) for i = 1, 2."""
    return [max(1, round(rank_scale * min(a, b))) for a, b in itertools.pairwise(modes)]


def tt_param_count(modes: list[int], ranks: list[int]) -> int:
    """Core parameters Σ_k r_{k-1}·d_k·r_k with r_0 = r_3 = 1 (d₁r₁ + r₁d₂r₂ + r₂d₃ for three cores)."""
    full = [1, *ranks, 1]
    return sum(full[k] * d * full[k + 1] for k, d in enumerate(modes))


def tt_conv_param_count(out_channels: int, in_channels: int, kernel_area: int, rank_scale: float, bias: bool) -> int:
    """Parameters of a :class:`TensorTrainConv2d`: depthwise c_in·k_h·k_w + TT cores + bias."""
    modes = tt_modes(out_channels, in_channels)
    return (
        in_channels * kernel_area + tt_param_count(modes, tt_ranks(modes, rank_scale)) + (out_channels if bias else 0)
    )


def tt_svd(tensor: Tensor, ranks: list[int], balanced: bool = False) -> list[Tensor]:
    """TT-SVD (Oseledets 2011, Alg. 1) in float64 with fixed inner ``ranks``; returns cores r_{k-1}×d_k×r_k.

    Sweep left to right: SVD of the (r_{k-1}·d_k) × rest unfolding, keep r_k terms. Standard (``balanced=False``):
    left-orthonormal cores, the last core carries the scale. ``balanced=True`` splits each Σ as Σ^{1/2} to both
    sides. Ranks above the unfolding's rank are padded with zero columns.
    """
    modes = list(tensor.shape)
    if len(ranks) != len(modes) - 1:
        raise ConfigError(f"ranks={ranks} must have {len(modes) - 1} entries for a {len(modes)}-way tensor")
    rest = tensor.detach().to(torch.float64).reshape(1, -1)
    cores: list[Tensor] = []
    r_prev = 1
    for d, r in zip(modes[:-1], ranks):
        a, s, bh = torch.linalg.svd(rest.reshape(r_prev * d, -1), full_matrices=False)
        k = min(r, s.numel())
        root = s[:k].sqrt()
        left = torch.zeros(r_prev * d, r, dtype=torch.float64, device=tensor.device)
        left[:, :k] = a[:, :k] * root if balanced else a[:, :k]
        rest = torch.zeros(r, bh.shape[1], dtype=torch.float64, device=tensor.device)
        rest[:k] = (root if balanced else s[:k])[:, None] * bh[:k]
        cores.append(left.reshape(r_prev, d, r))
        r_prev = r
    cores.append(rest.reshape(r_prev, modes[-1], 1))
    return [c.to(tensor.dtype) for c in cores]


def tt_full(cores: list[Tensor] | nn.ParameterList) -> Tensor:
    """Contract cores G_k (r_{k-1}×d_k×r_k) into the full d₁×…×d_K tensor."""
    out = cores[0]
    for core in list(cores)[1:]:
        out = torch.tensordot(out, core, dims=([out.dim() - 1], [0]))
    return out.squeeze(0).squeeze(-1)


class TensorTrainConv2d(nn.Module):
    """Depthwise k×k conv (groups = c_in, no bias) then a 1×1 conv with a 3-core TT weight (+ the dense bias).

    Parameters: c_in·k_h·k_w + d₁r₁ + r₁d₂r₂ + r₂d₃ + bias. The cores start from the TT-SVD of a fresh 1×1
    weight: PyTorch's default uniform init, or N(0, 2/c_out) with ``spectral=True``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        rank_scale: float,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        bias: bool = True,
        *,
        spectral: bool = False,
        balanced: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_range("rank_scale", rank_scale, low=0.0, high=1.0, low_inclusive=False)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.rank_scale = rank_scale
        self.depthwise = nn.Conv2d(
            in_channels,
            in_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=in_channels,
            bias=False,
            device=device,
            dtype=dtype,
        )
        self.tt_modes = tt_modes(out_channels, in_channels)
        self.tt_ranks = tt_ranks(self.tt_modes, rank_scale)
        w = torch.empty(out_channels, in_channels, device=device, dtype=dtype)
        if spectral:
            nn.init.normal_(w, std=math.sqrt(2.0 / out_channels))
        else:
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))  # nn.Conv2d's default weight init
        self.cores = nn.ParameterList(
            nn.Parameter(c) for c in tt_svd(w.reshape(self.tt_modes), self.tt_ranks, balanced)
        )
        self.bias: nn.Parameter | None = None
        if bias:
            bound = 1.0 / math.sqrt(in_channels)
            self.bias = nn.Parameter(torch.empty(out_channels, device=device, dtype=dtype).uniform_(-bound, bound))

    @classmethod
    def from_dense(
        cls, conv: nn.Conv2d, rank_scale: float, *, spectral: bool = False, balanced: bool = False
    ) -> TensorTrainConv2d:
        """A TT conv with ``conv``'s geometry and bias; its weights are freshly initialized (not fitted)."""
        if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ConfigError(
                "TensorTrainConv2d needs groups=1, padding_mode='zeros' and integer padding; "
                f"got groups={conv.groups}, padding_mode={conv.padding_mode!r}, padding={conv.padding!r}"
            )
        w = conv.weight
        layer = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            rank_scale,
            **conv_geometry(conv),
            spectral=spectral,
            balanced=balanced,
            device=w.device,
            dtype=w.dtype,
        )
        if conv.bias is not None:
            layer.bias.data.copy_(conv.bias.data)
        return layer

    def pointwise_weight(self) -> Tensor:
        """The c_out×c_in weight of the 1×1 conv, contracted from the cores."""
        return tt_full(self.cores).reshape(self.out_channels, self.in_channels)

    def forward(self, x: Tensor) -> Tensor:
        w = self.pointwise_weight()[:, :, None, None]
        return F.conv2d(self.depthwise(x), w, self.bias)

    def dense_weight(self) -> Tensor:
        """The equivalent dense k×k kernel K[o,c,i,j] = W[o,c]·D[c,i,j] (1×1 after depthwise = one conv)."""
        return self.pointwise_weight()[:, :, None, None] * self.depthwise.weight[:, 0][None]

    def frobenius_penalty(self, lam: float) -> Tensor:
        """Loss-side FD (λ/2)‖W‖²_F of the rebuilt 1×1 weight; add it to the loss before ``backward()``."""
        return 0.5 * lam * self.pointwise_weight().pow(2).sum()

    @torch.no_grad()
    def to_dense(self) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` computing the same function (kernel :meth:`dense_weight`, the bias)."""
        return dense_conv(self.dense_weight(), self.bias, self.depthwise)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, modes={self.tt_modes}, ranks={self.tt_ranks}"


def tensor_train_penalty(model: nn.Module, lam: float) -> Tensor:
    """Σ over the model's :class:`TensorTrainConv2d` of (λ/2)‖W_l‖²_F, to add to the task loss before backward.

    The original added this after ``backward()`` (a no-op); put the cores in a weight-decay-0 optimizer group.
    """
    terms = [m.frobenius_penalty(lam) for m in model.modules() if isinstance(m, TensorTrainConv2d)]
    if not terms:
        raise ConfigError(
            "tensor_train_penalty: the model has no TensorTrainConv2d; factorize(tensor_train=True) first"
        )
    return torch.stack(terms).sum()


class TensorTrainDecay(Regularizer):
    """Frobenius decay for tensor-train convs as a regularizer: loss-side (λ/2)Σ_l‖W_l‖²_F, cores at WD 0.

    ``W_l`` is the 1×1 weight rebuilt from layer l's cores (factorized.md §9). The penalty is added to the loss
    before ``backward()``; the original added it after backward, so its cores were never regularized.
    """

    name = "tt_frobenius_decay"

    def __init__(self, lam: float) -> None:
        super().__init__()
        check_range("lam", lam, low=0.0)
        self.lam = lam

    def attach(self, model: nn.Module) -> None:
        """Check that ``model`` has tensor-train convs (ConfigError otherwise)."""
        if not any(isinstance(m, TensorTrainConv2d) for m in model.modules()):
            raise ConfigError("tt_frobenius_decay: the model has no TensorTrainConv2d; pass tensor_train=True")

    def loss_term(self, model: nn.Module, task_loss: Tensor, batch_size: int) -> Tensor:
        return tensor_train_penalty(model, self.lam)

    def no_weight_decay_params(self, model: nn.Module) -> list[nn.Parameter]:
        return [c for m in model.modules() if isinstance(m, TensorTrainConv2d) for c in m.cores]
