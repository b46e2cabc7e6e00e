"""Quantization method configs: typed, validated at construction, each able to quantize one weight matrix.

A method is a frozen dataclass that says which calibration statistics it needs (``stats``: ``"none"``,
``"hessian"`` for GPTQ/LDLQ, ``"gpfq"`` for GPFQ's Gram matrices) and turns one ``[out, in]`` weight plus those
statistics into a :class:`~losslab.quant.weight_quant.WeightQuant` by calling the pure per-layer algorithms::

    from losslab.quant import GPTQ, RTN, quantize
    result = quantize(model, GPTQ(bits=4, act_order=True, group_size=64), calib, overrides={"fc": RTN(bits=8)})

    method = method_from_name("gpfq", bits=3, scalar=1.16)   # CLI path; unknown names list the choices

Bad values raise :class:`losslab.errors.ConfigError` naming the field (e.g. ``bits=9``) before any work.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from losslab.errors import ConfigError, check_range
from losslab.quant.gpfq import GPFQStats, check_sparsity, gpfq_weight_from_stats
from losslab.quant.gptq import HessianStats, gptq_weight
from losslab.quant.grids import CLIP_METHODS, GRID_NAMES, RANGE_GRIDS
from losslab.quant.incoherence import incoherence_quantize
from losslab.quant.ldlq import LDLQ_ORDERS, ldlq_weight
from losslab.quant.pwlq import SCHEMES as PWLQ_SCHEMES
from losslab.quant.pwlq import pwlq_weight
from losslab.quant.rtn import rtn_weight
from losslab.quant.weight_quant import WeightQuant
from losslab.registry import Registry

StatsKind = Literal["none", "hessian", "gpfq"]
INCOHERENCE_TRANSFORMS = (None, "hadamard", "kron", "butterfly")

QUANT_METHODS: Registry[QuantMethod] = Registry("quantization method")


def _check_choice(key: str, value: Any, choices: tuple[Any, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is not allowed: choose one of {', '.join(map(repr, choices))}")


def _check_bits(bits: int, low: int = 2, high: int = 8) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise ConfigError(f"bits={bits!r} must be an integer between {low} and {high}")
    check_range("bits", bits, low=low, high=high)


def _check_group_size(group_size: int | None) -> None:
    if group_size is not None and (isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1):
        raise ConfigError(f"group_size={group_size!r} must be a positive integer or None (one group per row)")


@dataclass(frozen=True)
class QuantMethod:
    """Base class: a per-layer quantizer config. Subclasses set ``stats`` and implement ``quantize_layer``.

    ``bits`` may be positional (``RTN(4)``); every other option is keyword-only.
    """

    bits: int
    stats: ClassVar[StatsKind] = "none"
    name: ClassVar[str] = "method"

    def __post_init__(self) -> None:
        _check_bits(self.bits)

    def new_stats(self, dim: int, device: torch.device) -> Any:
        """Empty statistics accumulator for a layer with ``dim`` input coordinates (None if not needed)."""
        if self.stats == "hessian":
            return HessianStats(dim, device=device)
        if self.stats == "gpfq":
            return GPFQStats(dim, device=device)
        return None

    def update_stats(self, stats: Any, x: Tensor, x_tilde: Tensor) -> None:
        """Add one batch of rows: ``x`` from the float network, ``x_tilde`` from the partly quantized one."""
        if self.stats == "hessian":
            stats.update(x_tilde)
        elif self.stats == "gpfq":
            stats.update(x, x_tilde)

    def quantize_layer(self, weight: Tensor, stats: Any, *, seed: int = 0) -> WeightQuant:
        """Quantize one ``[out, in]`` weight given the statistics from :meth:`new_stats`."""
        raise NotImplementedError

    def describe(self) -> str:
        """Short label with every non-default option, e.g. ``GPTQ(bits=4, act_order=True)``."""
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "bits" or value != f.default:
                parts.append(f"{f.name}={value!r}")
        return f"{type(self).__name__}({', '.join(parts)})"


@QUANT_METHODS.register("rtn", "uniform")
@dataclass(frozen=True, kw_only=True)
class RTN(QuantMethod):
    """Round to nearest on a uniform grid (spec §2/§3): per row, or per ``group_size`` consecutive columns.

    ``grid``: ``asym`` (2^b levels, min/max incl. 0), ``sym``, ``narrow``, or the tensor grids ``gpfq`` (alphabet
    δ = scalar·mean_rows(max|W|)/2^(b−1), 2^b + 1 levels), ``quip`` and ``regulquant_uniform`` (dithered, seeded by
    the engine's ``seed + layer index``); ``per_tensor`` fits one range per tensor; ``clip``: ``max`` (min–max range),
    ``mse`` (best of α ∈ {1, 0.99, …, 0.21} on Σ|Q(w) − w|²) or ``percentile``.
    """

    grid: str = "asym"
    group_size: int | None = None
    clip: str = "max"
    per_tensor: bool = False
    scalar: float = 1.16
    name: ClassVar[str] = "rtn"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_choice("grid", self.grid, GRID_NAMES)
        _check_group_size(self.group_size)
        _check_choice("clip", self.clip, CLIP_METHODS)
        check_range("scalar", self.scalar, low=0, low_inclusive=False)

    def quantize_layer(self, weight: Tensor, stats: Any, *, seed: int = 0) -> WeightQuant:
        return rtn_weight(
            weight,
            self.bits,
            grid=self.grid,
            group_size=self.group_size,
            clip=self.clip,
            per_tensor=self.per_tensor,
            scalar=self.scalar,
            generator=torch.Generator(device=weight.device).manual_seed(seed),
        )


@QUANT_METHODS.register("pwlq")
@dataclass(frozen=True, kw_only=True)
class PWLQ(QuantMethod):
    """Piecewise linear quantization (Fang et al. 2020, spec §4): 2^(b+1) levels, b + 1 storage bits.

    ``scheme``: ``pw2`` (non-overlapping: b-bit centre on [−p, p], (b−1)-bit tails on [p, m]) or ``pw1``
    (overlapping: the same centre, tails on a b-bit grid over [−m, m]; optional and worse).
    ``breakpoint``: ``gaussian`` / ``laplace`` (the scheme's optimum for that density), ``search``, or a float
    r ∈ (0, 0.5) giving p = r·max|w|. ``per_channel=False`` is the RegulQuant per-tensor preset.
    """

    breakpoint: str | float = "gaussian"
    bias_correction: bool = False
    scheme: str = "pw2"
    per_channel: bool = True
    name: ClassVar[str] = "pwlq"

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.breakpoint, float):
            check_range("breakpoint", self.breakpoint, low=0, high=0.5, low_inclusive=False, high_inclusive=False)
        else:
            _check_choice("breakpoint", self.breakpoint, ("gaussian", "laplace", "search"))
        _check_choice("scheme", self.scheme, PWLQ_SCHEMES)

    def quantize_layer(self, weight: Tensor, stats: Any, *, seed: int = 0) -> WeightQuant:

        return pwlq_weight(
            weight,
            self.bits,
            breakpoint=self.breakpoint,
            scheme=self.scheme,
            per_channel=self.per_channel,
            bias_correction=self.bias_correction,
        )


@QUANT_METHODS.register("gpfq")
@dataclass(frozen=True, kw_only=True)
class GPFQ(QuantMethod):
    """Greedy path-following quantization (Zhang, Zhou, Saab 2023; spec §5), Gram form.

    Alphabet {−K…K}·δ, K = 2^(b−1), δ = scalar·mean_rows(max|W|)/K: **2^b + 1 levels** (b+1 storage bits).
    ``legacy_unfold`` / ``fresh_batch_per_layer`` / ``legacy_alphabet`` reproduce the original code (spec §5.2).
    ``sparsity``: ``"l1"`` (q = 𝒬(sign(x)·max(|x| − lam, 0)) on the same alphabet) or ``"l0"`` (δ = (C·rad − lam)/K,
    levels {0} ∪ ±(lam + jδ), j = 0…K, zero when |x| ≤ lam; 2^b + 3 levels); ``lam`` ≥ 0 is in weight units and,
    for ``l0``, must stay below every quantized layer's C·rad (see :class:`losslab.quant.gpfq.SparseAlphabet`).
    """

    scalar: float = 1.16
    legacy_unfold: bool = False
    fresh_batch_per_layer: bool = False
    legacy_alphabet: bool = False
    stochastic: bool = False
    sparsity: str | None = None
    lam: float = 0.0
    stats: ClassVar[StatsKind] = "gpfq"
    name: ClassVar[str] = "gpfq"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("scalar", self.scalar, low=0, low_inclusive=False)
        check_sparsity(self.sparsity, self.lam, self.stochastic, self.legacy_alphabet)

    def quantize_layer(self, weight: Tensor, stats: Any, *, seed: int = 0) -> WeightQuant:

        return gpfq_weight_from_stats(
            weight,
            stats,
            self.bits,
            self.scalar,
            stochastic=self.stochastic,
            generator=torch.Generator(device=weight.device).manual_seed(seed),
            legacy_alphabet=self.legacy_alphabet,
            sparsity=self.sparsity,
            lam=self.lam,
        )


@dataclass(frozen=True, kw_only=True)
class _HessianMethod(QuantMethod):
    """Shared options of GPTQ and LDLQ: damping, grid and optional QuIP incoherence processing."""

    percdamp: float = 0.01
    grid: str = "asym"
    clip: str = "max"
    incoherence: str | None = None
    stats: ClassVar[StatsKind] = "hessian"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("percdamp", self.percdamp, low=0)
        _check_choice("grid", self.grid, (*RANGE_GRIDS, "gpfq", "quip"))
        _check_choice("incoherence", self.incoherence, INCOHERENCE_TRANSFORMS)
        _check_choice("clip", self.clip, CLIP_METHODS)
        if getattr(self, "group_size", None) is not None and self.grid not in RANGE_GRIDS:
            raise ConfigError(f"group_size needs a range grid ({', '.join(RANGE_GRIDS)}), got grid={self.grid!r}")

    def _core(self, weight: Tensor, hessian: Tensor) -> WeightQuant:
        raise NotImplementedError

    def quantize_layer(self, weight: Tensor, stats: Any, *, seed: int = 0) -> WeightQuant:
        hessian = stats.hessian
        if self.incoherence is None:
            return self._core(weight, hessian)

        return incoherence_quantize(weight, hessian, self._core, transform=self.incoherence, seed=seed)


@QUANT_METHODS.register("gptq", "optq")
@dataclass(frozen=True, kw_only=True)
class GPTQ(_HessianMethod):
    """GPTQ/OPTQ (Frantar et al. 2023, spec §6): Cholesky error feedback with H = (2/n)·ΣXᵀX."""

    blocksize: int = 128
    act_order: bool = False
    group_size: int | None = None
    static_groups: bool = False
    name: ClassVar[str] = "gptq"

    def __post_init__(self) -> None:
        _check_group_size(self.group_size)
        super().__post_init__()
        check_range("blocksize", self.blocksize, low=1)

    def _core(self, weight: Tensor, hessian: Tensor) -> WeightQuant:

        return gptq_weight(
            weight,
            hessian,
            bits=self.bits,
            blocksize=self.blocksize,
            percdamp=self.percdamp,
            act_order=self.act_order,
            group_size=self.group_size,
            grid=self.grid,
            static_groups=self.static_groups,
            clip=self.clip,
        )


@QUANT_METHODS.register("ldlq")
@dataclass(frozen=True, kw_only=True)
class LDLQ(_HessianMethod):
    """LDLQ (Chee et al. 2023, spec §7): q_k = 𝒬(w_k + Σ_{j<k}(w_j − q_j)U_jk), H = UDUᵀ.

    ``order``: ``natural``, ``act`` (descending diag H) or ``ldlqRG``, which sorts columns by diag H and adds
    ``npasses`` greedy passes (QuIP's ``--quant ldlqRG``).

    ``act_order=True`` is GPTQ's spelling of ``order="act"`` (perm = argsort(diag H, descending); permute W's
    columns and H, quantize, undo with argsort(perm)), so one option works for both Hessian methods; with the same
    grid and no groups the codes equal ``GPTQ(act_order=True)``'s. The two are normalized to agree
    (``act_order == (order == "act")``, so ``LDLQ(act_order=True) == LDLQ(order="act")``); ``act_order`` with
    ``order="ldlqRG"`` is refused.
    """

    order: str = "natural"
    act_order: bool = False
    npasses: int = 0
    name: ClassVar[str] = "ldlq"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_choice("order", self.order, LDLQ_ORDERS)
        _check_choice("act_order", self.act_order, (False, True))
        if self.act_order and self.order == "ldlqRG":
            raise ConfigError(
                "act_order=True conflicts with order='ldlqRG' (which sorts by ascending diag H and sweeps from the "
                "end); use act_order=True (= order='act') or order='ldlqRG', not both"
            )
        act = self.act_order or self.order == "act"
        object.__setattr__(self, "order", "act" if act else self.order)
        object.__setattr__(self, "act_order", act)
        check_range("npasses", self.npasses, low=0)
        if self.npasses > 0 and self.order != "ldlqRG":
            raise ConfigError(f"npasses={self.npasses!r} is not allowed with order={self.order!r}: use order='ldlqRG'")

    def _core(self, weight: Tensor, hessian: Tensor) -> WeightQuant:

        return ldlq_weight(
            weight,
            hessian,
            self.bits,
            grid=self.grid,
            order=self.order,
            npasses=self.npasses,
            percdamp=self.percdamp,
            clip=self.clip,
        )


@QUANT_METHODS.register("identity16", "identity", "fp16")
@dataclass(frozen=True)
class Identity16(QuantMethod):
    """A 16-bit no-op: the weight is kept exactly (for engine tests). Packed files store it as a float tensor."""

    bits: int = 16
    name: ClassVar[str] = "identity16"

    def __post_init__(self) -> None:
        _check_bits(self.bits, 16, 16)

    def quantize_layer(self, weight: Tensor, stats: Any, *, seed: int = 0) -> WeightQuant:
        return identity_weight_quant(weight)


def identity_weight_quant(weight: Tensor) -> WeightQuant:
    """A :class:`WeightQuant` whose dequantized weight is ``weight`` itself (grid ``"identity"``)."""
    return WeightQuant(
        q=weight.clone(),
        codes=torch.zeros(0, dtype=torch.int32),
        scale=None,
        zero=None,
        group_index=None,
        lut=None,
        bits=16,
        levels=2**16,
        storage_bits=16,
        grid="identity",
        extras={},
    )


def method_from_name(name: str, **kwargs: Any) -> QuantMethod:
    """Build a method by registry name (``rtn``, ``pwlq``, ``gpfq``, ``gptq``, ``ldlq``, ``identity16``)."""
    try:
        return QUANT_METHODS.create(name, **kwargs)
    except TypeError as err:
        cls = QUANT_METHODS.get(name)
        raise ConfigError(f"bad option for quantization method {name!r}: {err} (see help({cls.__name__}))") from err
