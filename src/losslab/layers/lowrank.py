"""Low-rank (factorized) Linear, Conv2d and Embedding layers: W = U Vᵀ, optionally W = U M Vᵀ.

``specs/factorized.md`` §1, §2, §7. Every layer exposes ``factors()`` -> (U, V) or (U, M, V) as matrices in the
W = U(M)Vᵀ layout (U is m×r, V is n×r), ``dense_weight()`` in the original layer's shape and ``to_dense()``
returning a plain layer that computes the same function::

    lin = LowRankLinear.from_dense(nn.Linear(512, 256), rank=32)          # spectral init by default
    conv = LowRankConv2d.from_dense(nn.Conv2d(64, 64, 3, padding=1), rank=21, path="two_conv")
    y = conv(torch.randn(8, 64, 32, 32)); dense = conv.to_dense()          # same function, plain Conv2d
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from losslab.errors import ConfigError
from losslab.layers.spectral import (
    PadMode,
    conv_geometry,
    conv_kernel_to_matrix,
    dense_conv,
    factor_kaiming,
    matrix_to_conv_kernel,
    spectral_factors,
)

ConvPath = Literal["two_conv", "one_conv"]
_Layer = TypeVar("_Layer", bound="LowRankBase")


def matrix_rank_for_scale(rank_scale: float, rows: int, cols: int) -> int:
    """Linear/Embedding rank r = max(round(s·min(rows, cols)), 1) (Python round, half to even)."""
    return max(round(rank_scale * min(rows, cols)), 1)


def conv_rank_for_scale(rank_scale: float, out_channels: int, kernel_height: int) -> int:
    """Conv rank r = max(round(s·c_out·k_h), 1), relative to the row count of the §2 matricization."""
    return max(round(rank_scale * out_channels * kernel_height), 1)


def lowrank_param_count(rows: int, cols: int, rank: int, square: bool, bias: int) -> int:
    """Parameters of U (rows×r), V (cols×r), optional M (r×r) and a bias of ``bias`` entries."""
    return rank * (rows + cols) + (rank * rank if square else 0) + bias


class LowRankBase(nn.Module):
    """Shared factor storage: U (m×r), V (n×r) and, with ``square=True``, M (r×r) starting at I + N(0, m_noise²).

    The initial U, V come from :func:`~losslab.layers.spectral.factor_kaiming`; ``from_dense`` constructors
    overwrite them with spectral factors of a dense weight.
    """

    def __init__(
        self,
        rows: int,
        cols: int,
        rank: int,
        *,
        square: bool = False,
        m_noise: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if rank < 1:
            raise ConfigError(f"rank={rank} is out of range: allowed rank >= 1")
        if m_noise < 0:
            raise ConfigError(f"m_noise={m_noise} is out of range: allowed m_noise >= 0")
        like = torch.empty(0, device=device, dtype=dtype)
        u, v = factor_kaiming(rows, cols, rank, like)
        self.U = nn.Parameter(u)
        self.V = nn.Parameter(v)
        self.M: nn.Parameter | None = None
        if square:
            eye = torch.eye(rank, device=like.device, dtype=like.dtype)
            self.M = nn.Parameter(eye + m_noise * torch.randn_like(eye))

    @property
    def rank(self) -> int:
        """Inner dimension r of the factorization."""
        return self.U.shape[1]

    @property
    def square(self) -> bool:
        """Whether the layer holds the middle factor M (W = U M Vᵀ)."""
        return self.M is not None

    def factors(self) -> tuple[Tensor, ...]:
        """(U, V) or (U, M, V) with W = U(M)Vᵀ; U is m×r, V is n×r."""
        return (self.U, self.V) if self.M is None else (self.U, self.M, self.V)

    def inner_v(self) -> Tensor:
        """(M Vᵀ)ᵀ = V Mᵀ (n×r): the right factor with M folded in (V itself without M)."""
        return self.V if self.M is None else self.V @ self.M.T

    def weight_matrix(self) -> Tensor:
        """The product U(M)Vᵀ (m×n)."""
        return self.U @ self.inner_v().T

    @torch.no_grad()
    def init_factors(self, matrix: Tensor, *, spectral: bool = True, pad: PadMode = "zero_u") -> None:
        """Set U, V from the m×n ``matrix`` by SI (:func:`spectral_factors`); keep the factor-Kaiming init otherwise."""
        if spectral:
            u, v = spectral_factors(matrix, self.rank, pad=pad)
            self.U.copy_(u)
            self.V.copy_(v)

    @classmethod
    def _dense_geometry(cls, dense: nn.Module) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The constructor's positional (before ``rank``) and keyword arguments giving ``dense``'s geometry.

        Subclasses also reject here the dense layers they cannot represent (ConfigError).
        """
        raise NotImplementedError

    @classmethod
    def _dense_matrix(cls, weight: Tensor) -> Tensor:
        """The m×n matrix W = U(M)Vᵀ approximates, from the dense layer's ``weight`` (the weight itself here)."""
        return weight

    @classmethod
    def from_dense(
        cls: type[_Layer],
        dense: nn.Module,
        rank: int,
        *,
        spectral: bool = True,
        pad: PadMode = "zero_u",
        square: bool = False,
        m_noise: float = 0.0,
        **options: Any,
    ) -> _Layer:
        """Factorize ``dense`` (geometry and bias copied); SI of its weight unless ``spectral=False`` (factor-Kaiming).

        ``options`` are the subclass's own constructor keywords (``path`` for :class:`LowRankConv2d`).
        """
        args, geometry = cls._dense_geometry(dense)
        w = dense.weight
        layer = cls(*args, rank, **geometry, **options, square=square, m_noise=m_noise, device=w.device, dtype=w.dtype)
        layer.init_factors(cls._dense_matrix(w), spectral=spectral, pad=pad)
        bias = getattr(dense, "bias", None)
        if bias is not None:
            layer.bias.data.copy_(bias.data)
        return layer


class LowRankLinear(LowRankBase):
    """y = (x V)(M)ᵀ Uᵀ + b, i.e. a Linear with W = U(M)Vᵀ (out×in); r·(out + in) (+ r²) + bias parameters."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        bias: bool = True,
        *,
        square: bool = False,
        m_noise: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(out_features, in_features, rank, square=square, m_noise=m_noise, device=device, dtype=dtype)
        self.in_features = in_features
        self.out_features = out_features
        self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype)) if bias else None

    @classmethod
    def _dense_geometry(cls, dense: nn.Linear) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """(in_features, out_features) and whether ``dense`` has a bias."""
        return (dense.in_features, dense.out_features), {"bias": dense.bias is not None}

    def forward(self, x: Tensor) -> Tensor:
        h = F.linear(x, self.V.T)
        if self.M is not None:
            h = F.linear(h, self.M)
        return F.linear(h, self.U, self.bias)

    def dense_weight(self) -> Tensor:
        """W = U(M)Vᵀ, shape (out_features, in_features)."""
        return self.weight_matrix()

    @torch.no_grad()
    def to_dense(self) -> nn.Linear:
        """A plain ``nn.Linear`` holding U(M)Vᵀ and the bias."""
        w = self.dense_weight()
        out = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device=w.device, dtype=w.dtype)
        out.weight.copy_(w)
        if self.bias is not None:
            out.bias.copy_(self.bias)
        return out

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, square={self.square}"
        )


class LowRankEmbedding(LowRankBase):
    """Embedding with table W = U(M)Vᵀ (vocab×d): U (vocab×r) is looked up, then multiplied by (M)Vᵀ (r×d)."""

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        rank: int,
        padding_idx: int | None = None,
        *,
        square: bool = False,
        m_noise: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            num_embeddings, embedding_dim, rank, square=square, m_noise=m_noise, device=device, dtype=dtype
        )
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.padding_idx = padding_idx

    @classmethod
    def _dense_geometry(cls, dense: nn.Embedding) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """(num_embeddings, embedding_dim) and the padding index; ``max_norm`` and ``sparse`` are rejected."""
        if dense.max_norm is not None or dense.sparse:
            raise ConfigError(
                "LowRankEmbedding does not support max_norm or sparse embeddings; "
                f"got max_norm={dense.max_norm}, sparse={dense.sparse}. Skip this layer."
            )
        return (dense.num_embeddings, dense.embedding_dim), {"padding_idx": dense.padding_idx}

    def forward(self, idx: Tensor) -> Tensor:
        return F.linear(F.embedding(idx, self.U, self.padding_idx), self.inner_v())

    def dense_weight(self) -> Tensor:
        """The table U(M)Vᵀ, shape (num_embeddings, embedding_dim)."""
        return self.weight_matrix()

    @torch.no_grad()
    def to_dense(self) -> nn.Embedding:
        """A plain ``nn.Embedding`` holding U(M)Vᵀ."""
        w = self.dense_weight()
        out = nn.Embedding(self.num_embeddings, self.embedding_dim, self.padding_idx, device=w.device, dtype=w.dtype)
        out.weight.copy_(w)
        return out

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, rank={self.rank}, square={self.square}"


def _pair(value: int | tuple[int, ...], key: str) -> tuple[int, int]:
    if isinstance(value, str):
        raise ConfigError(f"{key}={value!r} is not supported by LowRankConv2d; give explicit integers")
    if isinstance(value, int):
        return (value, value)
    if len(value) != 2:
        raise ConfigError(f"{key}={value!r} must be an int or a pair of ints")
    return (int(value[0]), int(value[1]))


class LowRankConv2d(LowRankBase):
    """Conv2d whose kernel matricization (§2) is W_mat = U(M)Vᵀ: U (c_out·k_h)×r, V (c_in·k_w)×r.

    ``path="two_conv"``: a (1×k_w, c_in→r) conv with weight A[ρ,c,0,j] = ((M)Vᵀ)[ρ, c·k_w+j], horizontal
    stride/padding/dilation, no bias; then a (k_h×1, r→c_out) conv with B[o,ρ,i,0] = U[o·k_h+i, ρ], vertical
    stride/padding/dilation and the bias. ``path="one_conv"`` rebuilds the kernel and runs one dense conv.
    Both compute the dense conv with that kernel exactly. ``groups`` must be 1; padding mode must be zeros.
    Parameters: r·(c_out·k_h + c_in·k_w) (+ r²) + bias.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        rank: int,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        *,
        path: ConvPath = "two_conv",
        square: bool = False,
        m_noise: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if groups != 1:
            raise ConfigError(
                f"groups={groups} is not supported by LowRankConv2d (only groups=1); leave grouped or depthwise "
                "convs dense (factorize() skips them) or use TensorTrainConv2d"
            )
        if path not in ("two_conv", "one_conv"):
            raise ConfigError(f"path={path!r} is not allowed; choose one of: two_conv, one_conv")
        k_h, k_w = _pair(kernel_size, "kernel_size")
        super().__init__(
            out_channels * k_h, in_channels * k_w, rank, square=square, m_noise=m_noise, device=device, dtype=dtype
        )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = (k_h, k_w)
        self.stride = _pair(stride, "stride")
        self.padding = _pair(padding, "padding")
        self.dilation = _pair(dilation, "dilation")
        self.path: ConvPath = path
        self.bias = nn.Parameter(torch.zeros(out_channels, device=device, dtype=dtype)) if bias else None

    @classmethod
    def _dense_geometry(cls, dense: nn.Conv2d) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Channels, kernel size, stride/padding/dilation, groups and bias of ``dense`` (zero padding only)."""
        if dense.padding_mode != "zeros":
            raise ConfigError(f"padding_mode={dense.padding_mode!r} is not supported by LowRankConv2d (only 'zeros')")
        args = (dense.in_channels, dense.out_channels, dense.kernel_size)
        return args, {**conv_geometry(dense), "groups": dense.groups}

    @classmethod
    def _dense_matrix(cls, weight: Tensor) -> Tensor:
        """The kernel's §2 matricization (:func:`conv_kernel_to_matrix`), the forward layout SI factorizes."""
        return conv_kernel_to_matrix(weight)

    def dense_weight(self) -> Tensor:
        """The kernel (c_out, c_in, k_h, k_w) whose matricization is U(M)Vᵀ."""
        return matrix_to_conv_kernel(self.weight_matrix(), self.out_channels, self.in_channels, *self.kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        if self.path == "one_conv":
            return F.conv2d(x, self.dense_weight(), self.bias, self.stride, self.padding, self.dilation)
        k_h, k_w = self.kernel_size
        r = self.rank
        a = self.inner_v().T.reshape(r, self.in_channels, 1, k_w)
        b = self.U.reshape(self.out_channels, k_h, r).permute(0, 2, 1).unsqueeze(3)
        h = F.conv2d(x, a, None, (1, self.stride[1]), (0, self.padding[1]), (1, self.dilation[1]))
        return F.conv2d(h, b, self.bias, (self.stride[0], 1), (self.padding[0], 0), (self.dilation[0], 1))

    @torch.no_grad()
    def to_dense(self) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` with the rebuilt kernel, the same geometry and the bias."""
        return dense_conv(self.dense_weight(), self.bias, self)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, rank={self.rank}, "
            f"stride={self.stride}, padding={self.padding}, path={self.path}, square={self.square}"
        )
