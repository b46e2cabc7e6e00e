"""Replace a network's dense layers by factorized ones, pick the rank scale, count parameters, and collapse back.

``specs/factorized.md`` §3, §4, §7, §10::

    model = timm.create_model("cifar_resnet20")
    report = factorize(model, rank_scale=0.111)          # BasicBlock convs -> LowRankConv2d, ranks 5/11/21
    report.params_after, report.ratio                    # 63850, 0.2367
    factorize(other, target_ratio=0.1)                   # bisect s on [0, 1] with closed-form counts
    collapse(model)                                      # plain Conv2d/Linear computing the same function

Default rule: every ``nn.Conv2d``/``nn.Linear`` (and ``nn.Embedding`` with ``embeddings=True``) is factorized
except the stem (first Conv2d), the classifier (last Linear), grouped convs, MultiheadAttention projections and
names matching ``skip`` (fnmatch patterns); norms and biases stay dense. With ``tensor_train=True`` only k×k
convs (k > 1) are replaced (1×1 shortcuts and Linears stay dense, as in the WRN oracle of §9). For s < 1 a
layer that would not shrink is left dense.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from torch import nn

from losslab.errors import ConfigError, check_range
from losslab.layers.lowrank import (
    ConvPath,
    LowRankBase,
    LowRankConv2d,
    LowRankEmbedding,
    LowRankLinear,
    conv_rank_for_scale,
    lowrank_param_count,
    matrix_rank_for_scale,
)
from losslab.layers.spectral import PadMode, check_pad
from losslab.layers.tensor_train import TensorTrainConv2d, tt_conv_param_count, tt_modes, tt_ranks

NonSpectralInit = Literal["factor_kaiming"]
NON_SPECTRAL_INITS: tuple[str, ...] = ("factor_kaiming",)
FACTORIZED_TYPES: tuple[type[nn.Module], ...] = (LowRankBase, TensorTrainConv2d)
BISECTION_TOL = 1e-6


@dataclass(frozen=True)
class LayerFactorization:
    """One replaced layer: its name, kind (conv/linear/embedding/tensor_train), dense weight shape, rank(s), counts."""

    name: str
    kind: str
    shape: tuple[int, ...]
    rank: int | tuple[int, ...]
    params_before: int
    params_after: int


@dataclass(frozen=True)
class FactorizeReport:
    """What :func:`factorize` did: whole-model parameter counts (biases, norms, stem and classifier included)."""

    params_before: int
    params_after: int
    ratio: float
    rank_scale: float
    target_ratio: float | None
    layers: list[LayerFactorization] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        """One line per replaced layer plus the totals, for logs."""
        lines = [
            f"{x.name}: {x.kind} {tuple(x.shape)} rank={x.rank} {x.params_before}->{x.params_after}"
            for x in self.layers
        ]
        lines.append(
            f"params {self.params_before} -> {self.params_after} (ratio {self.ratio:.6f}) "
            f"at rank_scale={self.rank_scale:.7g}"
            + (f", target_ratio={self.target_ratio:g}" if self.target_ratio is not None else "")
        )
        return "\n".join(lines)


def _own_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters(recurse=False))


def _layer_after(
    module: nn.Module, rank_scale: float, square: bool, tensor_train: bool
) -> tuple[str, int | tuple[int, ...], int]:
    """Closed form (kind, rank, parameter count) of ``module``'s replacement at rank scale s."""
    bias = getattr(module, "bias", None)
    n_bias = 0 if bias is None else bias.numel()
    if isinstance(module, nn.Conv2d):
        k_h, k_w = module.kernel_size
        c_out, c_in = module.out_channels, module.in_channels
        if tensor_train:
            ranks = tuple(tt_ranks(tt_modes(c_out, c_in), rank_scale))
            return "tensor_train", ranks, tt_conv_param_count(c_out, c_in, k_h * k_w, rank_scale, n_bias > 0)
        r = conv_rank_for_scale(rank_scale, c_out, k_h)
        return "conv", r, lowrank_param_count(c_out * k_h, c_in * k_w, r, square, n_bias)
    rows, cols = module.weight.shape
    r = matrix_rank_for_scale(rank_scale, rows, cols)
    kind = "linear" if isinstance(module, nn.Linear) else "embedding"
    return kind, r, lowrank_param_count(rows, cols, r, square, n_bias)


@dataclass
class _Plan:
    """Candidate layers of a model and the options that fix their replacements; counts in closed form."""

    candidates: list[tuple[str, nn.Module]]
    skipped: dict[str, str]
    params_dense: int
    square: bool
    tensor_train: bool

    def replaced(self, rank_scale: float) -> list[LayerFactorization]:
        """Layers replaced at ``rank_scale`` (for s < 1, layers that would not shrink stay dense)."""
        out = []
        for name, module in self.candidates:
            kind, rank, after = _layer_after(module, rank_scale, self.square, self.tensor_train)
            before = _own_params(module)
            if rank_scale < 1 and after >= before:
                continue
            out.append(LayerFactorization(name, kind, tuple(module.weight.shape), rank, before, after))
        return out

    def count(self, rank_scale: float) -> int:
        """Total parameters of the model after factorizing at ``rank_scale``."""
        return self.params_dense + sum(x.params_after - x.params_before for x in self.replaced(rank_scale))


def _plan(model: nn.Module, skip: Sequence[str] | None, embeddings: bool, square: bool, tensor_train: bool) -> _Plan:
    names = [name for name, _ in model.named_modules()]
    patterns = [skip] if isinstance(skip, str) else list(skip or [])
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            raise ConfigError(
                f"skip pattern {pattern!r} matches no module name; names look like: {', '.join(names[1:6])}"
            )
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    mha_children = {
        f"{n}.{c}" if n else c
        for n, m in model.named_modules()
        if isinstance(m, nn.MultiheadAttention)
        for c, _ in m.named_children()
    }
    reasons = {convs[0]: "stem conv"} if convs else {}
    if linears:
        reasons[linears[-1]] = "classifier"
    candidates: list[tuple[str, nn.Module]] = []
    skipped: dict[str, str] = {}
    types: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear) + ((nn.Embedding,) if embeddings else ())
    for name, module in model.named_modules():
        if not isinstance(module, types) or isinstance(module, FACTORIZED_TYPES):
            continue
        if name in reasons:
            skipped[name] = reasons[name]
        elif any(fnmatch.fnmatchcase(name, p) for p in patterns):
            skipped[name] = "matches skip pattern"
        elif name in mha_children:
            skipped[name] = "nn.MultiheadAttention projection (read directly by its parent)"
        elif isinstance(module, nn.Conv2d) and module.groups != 1:
            skipped[name] = f"grouped conv (groups={module.groups})"
        elif tensor_train and (not isinstance(module, nn.Conv2d) or module.kernel_size == (1, 1)):
            skipped[name] = "tensor_train replaces k×k convs (k > 1) only, as in deficient-efficient"
        else:
            candidates.append((name, module))
    return _Plan(candidates, skipped, sum(p.numel() for p in model.parameters()), square, tensor_train)


def count_params_factorized(
    model: nn.Module,
    rank_scale: float,
    *,
    square: bool = False,
    tensor_train: bool = False,
    skip: Sequence[str] | None = None,
    embeddings: bool = False,
) -> int:
    """All parameters of ``model`` after :func:`factorize` at ``rank_scale``, in closed form (nothing built).

    Works on models on the ``meta`` device. E.g. CIFAR ResNet-20 at s = 0.111 gives 63,850 (dense 269,722).
    """
    check_range("rank_scale", rank_scale, low=0.0, low_inclusive=False)
    return _plan(model, skip, embeddings, square, tensor_train).count(rank_scale)


def _bisect_rank_scale(plan: _Plan, target_ratio: float) -> tuple[float, float]:
    """The original's bisection of s on [0, 1]: go to the half bracketing t, stop when the width or
    |ratio − t| < 1e-6, return the visited (s, ratio) with ratio closest to t (the first one on ties)."""
    lo_ratio = plan.count(BISECTION_TOL) / plan.params_dense
    hi_ratio = plan.count(1.0 - BISECTION_TOL) / plan.params_dense
    if not lo_ratio <= target_ratio <= hi_ratio:
        raise ConfigError(
            f"target_ratio={target_ratio:g} cannot be reached: ratios from {lo_ratio:.6f} (every factorized layer at "
            f"rank 1) to {hi_ratio:.6f} (rank scale -> 1) are possible for this model; pick a target in that range"
        )
    lo, hi = 0.0, 1.0
    visited: list[tuple[float, float]] = []
    while True:
        mid = 0.5 * (lo + hi)
        ratio = plan.count(mid) / plan.params_dense
        visited.append((mid, ratio))
        if hi - lo < BISECTION_TOL or abs(ratio - target_ratio) < BISECTION_TOL:
            break
        if ratio > target_ratio:
            hi = mid
        else:
            lo = mid
    return min(visited, key=lambda v: abs(v[1] - target_ratio))


def rank_scale_for_target(
    model: nn.Module,
    target_ratio: float,
    *,
    square: bool = False,
    tensor_train: bool = False,
    skip: Sequence[str] | None = None,
    embeddings: bool = False,
) -> tuple[float, float]:
    """(s, achieved ratio) whose all-parameter ratio is closest to ``target_ratio`` (§3 bisection, closed form).

    Raises ConfigError naming the reachable range when no rank reaches the target.
    """
    check_range("target_ratio", target_ratio, low=0.0, low_inclusive=False)
    return _bisect_rank_scale(_plan(model, skip, embeddings, square, tensor_train), target_ratio)


def _replacement(
    module: nn.Module,
    entry: LayerFactorization,
    *,
    rank_scale: float,
    spectral: bool,
    square: bool,
    pad: PadMode,
    m_noise: float,
    conv_path: ConvPath,
) -> nn.Module:
    common = {"spectral": spectral, "pad": pad, "square": square, "m_noise": m_noise}
    if entry.kind == "tensor_train":
        return TensorTrainConv2d.from_dense(module, rank_scale, spectral=spectral)
    if entry.kind == "conv":
        return LowRankConv2d.from_dense(module, entry.rank, path=conv_path, **common)
    if entry.kind == "linear":
        return LowRankLinear.from_dense(module, entry.rank, **common)
    return LowRankEmbedding.from_dense(module, entry.rank, **common)


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, new)


def factorize(
    model: nn.Module,
    rank_scale: float | None = None,
    target_ratio: float | None = None,
    *,
    spectral: bool = True,
    square: bool = False,
    tensor_train: bool = False,
    skip: Sequence[str] | None = None,
    pad: PadMode = "zero_u",
    init: NonSpectralInit = "factor_kaiming",
    m_noise: float = 0.0,
    embeddings: bool = False,
    conv_path: ConvPath | None = None,
) -> FactorizeReport:
    """Replace ``model``'s dense layers in place by low-rank (or tensor-train) ones; return a report.

    Give exactly one of ``rank_scale`` (s > 0; s ≥ 1 over-parameterizes) or ``target_ratio`` (t in the reachable
    range; s found by bisection on [0, 1]). ``spectral``: SI from the current dense weights (§5); otherwise
    ``init`` ("factor_kaiming"). ``square``: U M Vᵀ with M = I + N(0, m_noise²). ``pad``: "zero_u" or "zero"
    (original) for ranks above min(m, n). ``conv_path``: default "two_conv" for s < 1 without M, else "one_conv".
    """
    if (rank_scale is None) == (target_ratio is None):
        raise ConfigError(
            f"give exactly one of rank_scale or target_ratio (got rank_scale={rank_scale}, target_ratio={target_ratio})"
        )
    if rank_scale is not None:
        check_range("rank_scale", rank_scale, low=0.0, low_inclusive=False)
        if tensor_train:
            check_range("rank_scale", rank_scale, high=1.0)
    check_pad(pad)
    if init not in NON_SPECTRAL_INITS:
        raise ConfigError(f"init={init!r} is not allowed; choose one of: {', '.join(NON_SPECTRAL_INITS)}")
    if tensor_train and square:
        raise ConfigError("square=True does not apply to tensor_train=True; choose one of them")
    if conv_path not in (None, "two_conv", "one_conv"):
        raise ConfigError(f"conv_path={conv_path!r} is not allowed; choose one of: two_conv, one_conv (or None)")
    check_range("m_noise", m_noise, low=0.0)
    plan = _plan(model, skip, embeddings, square, tensor_train)
    if target_ratio is not None:
        check_range("target_ratio", target_ratio, low=0.0, low_inclusive=False)
        rank_scale, _ = _bisect_rank_scale(plan, target_ratio)
    path: ConvPath = conv_path or ("two_conv" if rank_scale < 1 and not square else "one_conv")
    entries = plan.replaced(rank_scale)
    modules = dict(plan.candidates)
    skipped = dict(plan.skipped)
    replaced_names = {e.name for e in entries}
    skipped.update({n: "would not shrink at s < 1" for n in modules if n not in replaced_names})
    for entry in entries:
        new = _replacement(
            modules[entry.name],
            entry,
            rank_scale=rank_scale,
            spectral=spectral,
            square=square,
            pad=pad,
            m_noise=m_noise,
            conv_path=path,
        )
        _set_submodule(model, entry.name, new)
    after = sum(p.numel() for p in model.parameters())
    return FactorizeReport(
        params_before=plan.params_dense,
        params_after=after,
        ratio=after / plan.params_dense,
        rank_scale=rank_scale,
        target_ratio=target_ratio,
        layers=entries,
        skipped=skipped,
    )


def factorized_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every factorized layer (low-rank or tensor-train) in ``model.modules()`` order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, FACTORIZED_TYPES)]


def collapse(model: nn.Module) -> nn.Module:
    """Replace every factorized layer by a plain Conv2d/Linear/Embedding computing the same function.

    In place for containers (the model is returned); a bare factorized layer is returned as its dense twin.
    """
    if isinstance(model, FACTORIZED_TYPES):
        return model.to_dense()
    for name, module in factorized_modules(model):
        _set_submodule(model, name, module.to_dense())
    return model
