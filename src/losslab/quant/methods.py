"""Quantization method configs: typed, validated at construction, each able to quantize one weight matrix.

A method is a frozen dataclass that owns its calibration statistics (:class:`LayerStats`: ``new_stats`` /
``update(x, x̃)`` / ``finalize``; ``reads_float`` / ``reads_quantized`` say which inputs it needs: none for
RTN/PWLQ, X̃ for GPTQ/LDLQ's H, both for GPFQ's Gram matrices) and turns one ``[out, in]`` weight plus those
statistics into a :class:`~losslab.quant.weight_quant.WeightQuant` by calling the pure per-layer algorithms::

    from losslab.quant import GPTQ, RTN, quantize
    result = quantize(model, GPTQ(bits=4, act_order=True, group_size=64), calib, overrides={"fc": RTN(bits=8)})

    method = method_from_name("gpfq", bits=3, scalar=1.16)   # CLI path; unknown names list the choices

Bad values raise :class:`losslab.errors.ConfigError` naming the field (e.g. ``bits=9``) before any work.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor, nn

from losslab.errors import ConfigError, check_range
from losslab.quant.bits import BITS_RANGE
from losslab.quant.gpfq import SEED_GRID, GPFQStats, check_gpfq_grid, check_sparsity, gpfq_weight_from_stats
from losslab.quant.gptq import HessianStats, gptq_weight
from losslab.quant.grids import CLIP_METHODS, GRID_NAMES, RANGE_GRIDS
from losslab.quant.incoherence import incoherence_quantize
from losslab.quant.ldlq import LDLQ_ORDERS, ldlq_weight
from losslab.quant.pwlq import SCHEMES as PWLQ_SCHEMES
from losslab.quant.pwlq import pwlq_weight
from losslab.quant.rtn import rtn_weight
from losslab.quant.unfold import layer_inputs, legacy_gpfq_patches, unfold_conv_pair
from losslab.quant.weight_quant import WeightQuant
from losslab.registry import Registry

INCOHERENCE_TRANSFORMS = (None, "hadamard", "kron", "butterfly")

QUANT_METHODS: Registry[QuantMethod] = Registry("quantization method")


def _check_choice(key: str, value: Any, choices: tuple[Any, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is not allowed: choose one of {', '.join(map(repr, choices))}")


def _check_bits(bits: int, low: int, high: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise ConfigError(f"bits={bits!r} must be an integer between {low} and {high}")
    check_range("bits", bits, low=low, high=high)


def _check_group_size(group_size: int | None) -> None:
    if group_size is not None and (isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1):
        raise ConfigError(f"group_size={group_size!r} must be a positive integer or None (one group per row)")


class LayerStats(Protocol):
    """Calibration statistics of one layer (or conv group), owned by its method: ``method.new_stats(dim, device)``
    makes one, ``update(x, x_tilde)`` adds a batch of input rows ``[rows, dim]`` (``x`` from the float network,
    ``x_tilde`` from the partly quantized one), ``finalize()`` returns what ``method.quantize_layer`` reads."""

    def update(self, x: Tensor, x_tilde: Tensor) -> None: ...

    def finalize(self) -> Any: ...


class HessianAccumulator:
    """GPTQ/LDLQ: H = (2/n)·ΣX̃ᵀX̃ over the partly quantized network's rows (``finalize()`` → HessianStats)."""

    def __init__(self, dim: int, device: torch.device) -> None:
        self.stats = HessianStats(dim, device=device)

    def update(self, x: Tensor, x_tilde: Tensor) -> None:
        self.stats.update(x_tilde)

    def finalize(self) -> HessianStats:
        return self.stats


class GPFQAccumulator:
    """GPFQ: G = X̃ᵀX, H̃ = X̃ᵀX̃ and XᵀX from paired rows in ``dtype`` (``solve_only``: the lower triangles of G
    and H̃ only; ``finalize()`` → GPFQStats)."""

    def __init__(
        self, dim: int, device: torch.device, dtype: torch.dtype = torch.float64, solve_only: bool = False
    ) -> None:
        self.stats = GPFQStats(dim, dtype=dtype, device=device, solve_only=solve_only)

    def update(self, x: Tensor, x_tilde: Tensor) -> None:
        self.stats.update(x, x_tilde)

    def finalize(self) -> GPFQStats:
        return self.stats


@dataclass(frozen=True)
class QuantMethod:
    """Base class: a per-layer quantizer config. Subclasses implement ``quantize_layer`` and, if they read
    calibration data, ``new_stats`` plus the class flags ``reads_float`` (X from the float network) and
    ``reads_quantized`` (X̃ from the partly quantized network). The drivers branch on nothing else.

    ``bits`` may be positional (``RTN(4)``); every other option is keyword-only. ``bits_range`` is the allowed
    (lowest, highest) width, :data:`losslab.quant.bits.BITS_RANGE` (also what ``--bits`` is checked against).
    """

    bits: int
    bits_range: ClassVar[tuple[int, int]] = BITS_RANGE
    reads_float: ClassVar[bool] = False
    reads_quantized: ClassVar[bool] = False
    name: ClassVar[str] = "method"

    def __post_init__(self) -> None:
        _check_bits(self.bits, *self.bits_range)

    @property
    def needs_data(self) -> bool:
        """Whether the method reads any calibration input."""
        return self.reads_float or self.reads_quantized

    def new_stats(self, dim: int, device: torch.device) -> LayerStats | None:
        """Empty statistics for a layer with ``dim`` input coordinates (None: the method reads no data)."""
        return None

    def calibration_batches(self, index: int, n_batches: int) -> Sequence[int]:
        """Which cached calibration batches layer ``index`` reads (all; GPFQ's reproduction mode: one)."""
        return range(n_batches)

    @property
    def splits_batches(self) -> bool:
        """Whether the engine may feed a batch to the statistics in slices of whole samples (the same statistics up
        to float rounding); not where ``layer_rows`` draws random numbers per call (GPFQ's legacy unfold)."""
        return True

    def layer_rows(
        self, flayer: nn.Module, qlayer: nn.Module, x: Tensor, x_tilde: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """Input rows ``[groups, rows, dim]`` of a layer for float input ``x`` and quantized input ``x_tilde``."""
        rows = layer_inputs(flayer, x).float()
        rows_tilde = layer_inputs(qlayer, x_tilde).float() if x_tilde is not x else rows
        return rows, rows_tilde

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

    ``grid``: ``asym`` (default), ``sym`` or ``narrow`` — 2^b (narrow 2^b − 1) levels per row, or per ``group_size``
    columns, fitted on the original W with range choice ``clip`` (max, mse, percentile): b stored bits per weight
    plus scales, like GPTQ/LDLQ/RTN; statistics in float32. ``grid="gpfq"`` is the seed's alphabet {−K…K}·δ,
    K = 2^(b−1), δ = scalar·mean_rows(max|W|)/K: **2^b + 1 levels** (b+1 storage bits), one scale per layer,
    statistics in float64 (the faithful reproduction). ``legacy_unfold`` / ``fresh_batch_per_layer`` /
    ``legacy_alphabet`` reproduce the original code (spec §5.2; ``legacy_alphabet`` needs ``grid="gpfq"``).
    ``sparsity``: ``"l1"`` (q = 𝒬(sign(x)·max(|x| − lam, 0)), on every grid) or ``"l0"`` (seed alphabet only:
    δ = (C·rad − lam)/K, levels {0} ∪ ±(lam + jδ), j = 0…K, zero when |x| ≤ lam; 2^b + 3 levels); ``lam`` ≥ 0 is in
    weight units and, for ``l0``, must stay below every quantized layer's C·rad (see
    :class:`losslab.quant.gpfq.SparseAlphabet`).
    """

    scalar: float = 1.16
    legacy_unfold: bool = False
    fresh_batch_per_layer: bool = False
    legacy_alphabet: bool = False
    stochastic: bool = False
    sparsity: str | None = None
    lam: float = 0.0
    grid: str = "asym"
    group_size: int | None = None
    clip: str = "max"
    reads_float: ClassVar[bool] = True
    reads_quantized: ClassVar[bool] = True
    name: ClassVar[str] = "gpfq"

    @property
    def reproduces_seed(self) -> bool:
        """The seed alphabet: float64 statistics with XᵀX (bit-exact reproduction and the ‖U‖_F report); the range
        grids take the fast path, the lower triangles of G and H̃ in float32 (about 1.1 GEMMs per batch instead of
        three; no residual report)."""
        return self.grid == SEED_GRID

    def new_stats(self, dim: int, device: torch.device) -> GPFQAccumulator:
        seed = self.reproduces_seed
        return GPFQAccumulator(dim, device, torch.float64 if seed else torch.float32, solve_only=not seed)

    def calibration_batches(self, index: int, n_batches: int) -> Sequence[int]:
        return [index % n_batches] if self.fresh_batch_per_layer else range(n_batches)

    @property
    def splits_batches(self) -> bool:
        return not self.legacy_unfold

    def layer_rows(
        self, flayer: nn.Module, qlayer: nn.Module, x: Tensor, x_tilde: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        if isinstance(flayer, nn.Conv2d) and self.legacy_unfold:
            return legacy_gpfq_patches(flayer, x, x_tilde, generator)
        if isinstance(flayer, nn.Conv2d) and x_tilde is not x:  # X̃ᵀ then Xᵀ in one buffer (GPFQStats reads it whole)
            pair = unfold_conv_pair(flayer, x_tilde, x)
            d = pair.shape[1] // 2
            return pair[:, d:].transpose(1, 2), pair[:, :d].transpose(1, 2)
        return super().layer_rows(flayer, qlayer, x, x_tilde, generator)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("scalar", self.scalar, low=0, low_inclusive=False)
        check_gpfq_grid(self.grid, self.group_size, self.clip, scalar=self.scalar, legacy_alphabet=self.legacy_alphabet)
        check_sparsity(self.sparsity, self.lam, self.stochastic, self.legacy_alphabet, self.grid)

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
            grid=self.grid,
            group_size=self.group_size,
            clip=self.clip,
        )


@dataclass(frozen=True, kw_only=True)
class _HessianMethod(QuantMethod):
    """Shared options of GPTQ and LDLQ: damping, grid and optional QuIP incoherence processing."""

    percdamp: float = 0.01
    grid: str = "asym"
    clip: str = "max"
    incoherence: str | None = None
    reads_quantized: ClassVar[bool] = True

    def new_stats(self, dim: int, device: torch.device) -> HessianAccumulator:
        return HessianAccumulator(dim, device)

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


@QUANT_METHODS.register("identity16", "identity", "fp16", internal=True)
@dataclass(frozen=True)
class Identity16(QuantMethod):
    """A 16-bit no-op: the weight is kept exactly (for engine tests). Packed files store it as a float tensor."""

    bits: int = 16
    bits_range: ClassVar[tuple[int, int]] = (16, 16)
    name: ClassVar[str] = "identity16"

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
    """Build a method by registry name (``rtn``, ``pwlq``, ``gpfq``, ``gptq``, ``ldlq``; ``identity16`` for tests)."""
    try:
        return QUANT_METHODS.create(name, **kwargs)
    except TypeError as err:
        cls = QUANT_METHODS.get(name)
        raise ConfigError(f"bad option for quantization method {name!r}: {err} (see help({cls.__name__}))") from err


# ---------------------------------------------------------------------------------------------------------------
# Method options as data: one flag / study key per dataclass field, generated from the registered dataclasses.

METHOD_OPTION_HELP: dict[str, str] = {
    "grid": "Uniform grid: asym (min/max with zero point), sym, narrow; tensor grids gpfq (the GPFQ seed's alphabet, "
    "2^b+1 levels, one scale per layer), quip (QuIP's 2.4·RMS), regulquant_uniform. GPFQ: asym, sym, narrow, gpfq.",
    "group_size": "Columns per scale group (default: one group per row).",
    "clip": "Range choice: max (min-max), mse (best shrink on the squared error) or percentile.",
    "per_tensor": "One range for the whole tensor instead of one per row/group.",
    "scalar": "Radius scalar C of the GPFQ alphabet / gpfq grid (delta = C·mean_rows(max|W|)/K).",
    "breakpoint": "PWLQ breakpoint: gaussian, laplace, search, or a float ratio r in (0, 0.5).",
    "bias_correction": "PWLQ: correct the per-channel mean shift of the quantized weight.",
    "scheme": "PWLQ scheme: pw2 (non-overlapping) or pw1 (overlapping; reproduction only).",
    "per_channel": "PWLQ: one breakpoint per output channel (off: per tensor, the RegulQuant preset).",
    "legacy_unfold": "GPFQ: sample conv patches as the original code did (reproduction).",
    "fresh_batch_per_layer": "GPFQ: one calibration batch per layer, as the original code did (reproduction).",
    "legacy_alphabet": "GPFQ: the original code's alphabet (reproduction).",
    "stochastic": "GPFQ: stochastic rounding (seeded).",
    "sparsity": "Sparse GPFQ: l1 (soft threshold by lam) or l0 (zero |arg| <= lam); none = dense.",
    "lam": "Sparse GPFQ threshold lambda in weight units (needs sparsity).",
    "percdamp": "Hessian damping as a fraction of the mean diagonal.",
    "incoherence": "QuIP incoherence processing around GPTQ/LDLQ: none, hadamard, kron, butterfly.",
    "blocksize": "GPTQ column block size (lazy batch updates).",
    "act_order": "GPTQ/LDLQ: quantize columns by decreasing Hessian diagonal, then restore their order.",
    "static_groups": "GPTQ: fit the group grids on the original weight before the error feedback.",
    "order": "LDLQ column order: natural, act (= act_order) or ldlqRG (QuIP's --quant ldlqRG).",
    "npasses": "LDLQ greedy passes after ldlqRG.",
}

OptionValue = bool | int | float | str | None


@dataclass(frozen=True)
class MethodOption:
    """One method option (a dataclass field shared by the methods that have it) as the CLI and studies see it.

    ``kinds`` are the accepted value types in parse order (``breakpoint``: float, then str); ``nullable``: the
    field accepts ``None``, spelled ``none`` on the command line.
    """

    name: str
    kinds: tuple[type, ...]
    nullable: bool
    methods: tuple[str, ...]
    defaults: tuple[tuple[str, Any], ...]
    help: str

    @property
    def flag(self) -> str:
        """``--group-size`` for ``group_size``."""
        return "--" + self.name.replace("_", "-")

    @property
    def is_bool(self) -> bool:
        return self.kinds == (bool,)

    def parse(self, text: str) -> OptionValue:
        """A command-line string as this option's value (``"none"`` → None where allowed)."""
        if self.nullable and text.lower() == "none":
            return None
        for kind in self.kinds:
            if kind is str:
                return text
            try:
                return kind(text)
            except ValueError:
                continue
        names = " or ".join(k.__name__ for k in self.kinds)
        raise ConfigError(f"{self.flag} {text!r} is not a valid value: give {names}")


def _field_kinds(annotation: Any) -> tuple[tuple[type, ...], bool]:
    args = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else ()
    members = list(args) if args else [annotation]
    nullable = type(None) in members
    kinds = [m for m in members if m is not type(None)]
    order = {bool: 0, int: 1, float: 2, str: 3}
    return tuple(sorted(kinds, key=lambda k: order.get(k, 9))), nullable


def method_classes() -> dict[str, type[QuantMethod]]:
    """Canonical registry name → method dataclass, in registration order."""
    return {name: QUANT_METHODS.get(name) for name in QUANT_METHODS.names() if QUANT_METHODS.resolve(name) == name}


def method_options() -> list[MethodOption]:
    """Every option of every registered method except ``bits`` (given by ``--bits`` / ``bits:``), in field order.

    Generated from the dataclasses: adding a field to a method adds its flag to ``losslab quantize`` and
    ``losslab lm quantize`` and its key to study files. Raises :class:`ConfigError` if a field has no help text in
    :data:`METHOD_OPTION_HELP` or if two methods give one name different types (one name, one meaning).
    """
    found: dict[str, dict[str, Any]] = {}
    for method_name, cls in method_classes().items():
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            if f.name == "bits":
                continue
            kinds, nullable = _field_kinds(hints[f.name])
            entry = found.setdefault(f.name, {"kinds": kinds, "nullable": nullable, "methods": [], "defaults": []})
            if (entry["kinds"], entry["nullable"]) != (kinds, nullable):
                raise ConfigError(f"method option {f.name!r} has different types in different methods")
            entry["methods"].append(method_name)
            entry["defaults"].append((method_name, f.default))
    missing = sorted(set(found) - set(METHOD_OPTION_HELP))
    if missing:
        raise ConfigError(f"method options without help text in METHOD_OPTION_HELP: {', '.join(missing)}")
    return [
        MethodOption(
            name, e["kinds"], e["nullable"], tuple(e["methods"]), tuple(e["defaults"]), METHOD_OPTION_HELP[name]
        )
        for name, e in found.items()
    ]


def build_methods(names: Sequence[str], bits: Sequence[int], options: Mapping[str, Any]) -> list[QuantMethod]:
    """One method config per (name, bits), each given the options its dataclass has (the CLI and studies' path).

    An option that none of the chosen methods has raises :class:`ConfigError` naming the methods it applies to;
    the values are validated by the dataclasses themselves. With ``incoherence`` set and no ``grid`` the Hessian
    methods use QuIP's ``quip`` grid (QuIP's ``--incoh_processing``).
    """
    canonical = [QUANT_METHODS.resolve(n) for n in names]
    classes = {n: QUANT_METHODS.get(n) for n in canonical}
    have = {n: {f.name for f in fields(cls)} for n, cls in classes.items()}
    for key in options:
        if not any(key in h for h in have.values()):
            owners = sorted(n for n, cls in method_classes().items() if key in {f.name for f in fields(cls)})
            flag = "--" + key.replace("_", "-")
            if not owners:
                raise ConfigError(f"{flag} is not a quantization method option")
            chosen = ", ".join(canonical)
            raise ConfigError(f"{flag} applies to {', '.join(owners)}, not to the chosen method(s) {chosen}")
    methods = []
    for name in canonical:
        kwargs = {k: v for k, v in options.items() if k in have[name]}
        if kwargs.get("incoherence") is not None and "grid" not in kwargs and "grid" in have[name]:
            kwargs["grid"] = "quip"
        methods.extend(method_from_name(name, bits=b, **kwargs) for b in bits)
    return methods
