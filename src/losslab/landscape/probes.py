"""All probes of one model on one probe set, as one JSON-ready dict: what ``losslab landscape`` stores.

    settings = ProbeSettings(probes=("eig", "trace"), top_k=3, seed=0)
    result = run_probes(HessianOperator(model, loss_fn, batches), settings, model=model)
    result["eigenvalues"], result["eigen_residuals"], result["trace"], result["trace_stderr"]

Probes (:data:`PROBES`): ``eig`` (top-k, and the smallest with ``smallest``, by Lanczos), ``trace`` (Hutch++; Hutchinson
with the same number of products too with ``trace_compare``), ``density`` (SLQ), ``layers`` (per-module trace, raw
and per parameter as HAWQ-v2 normalizes it, and top eigenvalue of each diagonal block), ``sharpness`` (average and
worst case, plain and adaptive), ``surface`` (1-D and 2-D filter-normalized loss) and ``kurtosis`` (the weight-shape
statistics training logs, :func:`losslab.train.task.weight_statistics`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from losslab.errors import ConfigError, check_range
from losslab.landscape.operator import HessianOperator
from losslab.landscape.sharpness_probe import sharpness
from losslab.landscape.spectrum import lanczos_eigenvalues, spectral_density
from losslab.landscape.surface import loss_line, loss_plane
from losslab.landscape.trace import hutch_plus_plus, hutchinson

PROBES = ("eig", "trace", "density", "layers", "sharpness", "surface", "kurtosis")
#: The probes run when none are named: every one but ``layers``, which costs one Lanczos run per module.
DEFAULT_PROBES = ("eig", "trace", "density", "sharpness", "surface", "kurtosis")

__all__ = ["DEFAULT_PROBES", "PROBES", "ProbeSettings", "parse_probes", "run_probes"]


@dataclass(frozen=True)
class ProbeSettings:
    """What to compute and how precisely; every field is stored in the JSON so a cached result is only reused for
    identical settings."""

    probes: tuple[str, ...] = DEFAULT_PROBES
    top_k: int = 3
    smallest: bool = False
    seed: int = 0
    eig_tol: float = 1e-3
    eig_steps: int = 100
    eig_warm: int = 256
    eig_measure: bool = False
    trace_stratum: int | None = 256
    trace_rank: int = 10
    trace_samples: int = 50
    trace_tol: float = 2e-2
    trace_compare: bool = False
    density_starts: int = 4
    density_steps: int = 20
    layer_rank: int = 2
    layer_samples: int = 4
    layer_steps: int = 10
    rho: float = 0.05
    adaptive_rho: float = 0.5
    sharpness_samples: int = 5
    sharpness_steps: int = 5
    surface_points: int = 21
    surface_plane_points: int = 9
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_range("top_k", self.top_k, low=1)
        parse_probes(",".join(self.probes))

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["probes"] = list(self.probes)
        return out


def parse_probes(text: str) -> tuple[str, ...]:
    """``"eig,trace"`` → ("eig", "trace"); ``"all"`` → every probe; an unknown name is a :class:`ConfigError`."""
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    if names == ("all",):
        return PROBES
    unknown = [n for n in names if n not in PROBES]
    if unknown or not names:
        raise ConfigError(
            f"unknown probe {', '.join(unknown) or repr(text)}: choose from {', '.join(PROBES)} "
            "(comma-separated) or all"
        )
    return names


def module_groups(op: HessianOperator) -> dict[str, list[str]]:
    """Probed parameter names grouped by their module (``features.0.weight`` → ``features.0``)."""
    groups: dict[str, list[str]] = {}
    for name in op.names:
        groups.setdefault(name.rpartition(".")[0] or name, []).append(name)
    return groups


def warm_start(op: HessianOperator, s: ProbeSettings, which: str) -> dict[str, Any]:
    """Lanczos's start on the whole probe set from its first ``s.eig_warm`` samples (when the set has at least 4×
    as many; else nothing): the sum of that subsample Hessian's k wanted Ritz vectors, and its next Ritz value as
    the gap hint of the ``value`` criterion (:func:`lanczos_eigenvalues`). The subsample's eigenvalues are taken to
    ``eig_tol``/10: their vectors' error is what the first product on the whole set inherits, and the subsample's
    products are cheap (on 2,048 ResNet-20 images: 9.8e-4 after that product at ``eig_tol``, 2.3e-4 at a tenth of
    it, where the subsample's own sampling error takes over)."""
    if s.eig_warm <= 0 or op.samples < 4 * s.eig_warm:
        return {}
    head = op.head(s.eig_warm)
    kw = {"tol": s.eig_tol / 10, "max_steps": s.eig_steps, "seed": s.seed, "dtype": op.dtype, "device": op.device}
    sub = lanczos_eigenvalues(
        head.hvp, head.dim, k=s.top_k, which=which, criterion="value", measure=False, others=1, **kw
    )
    op.hvp_count += head.hvp_count
    return {"start": sub.vectors.sum(0), "hints": sub.others}


def probe_eig(op: HessianOperator, s: ProbeSettings) -> dict[str, Any]:
    """Top-k eigenvalues (descending) with residuals, and the k smallest (ascending) with ``s.smallest``: Lanczos
    with the ``value`` stopping rule (eigenvalues to ``eig_tol``·max|θ|) from :func:`warm_start`."""
    most = min(s.eig_steps, op.dim)
    if s.top_k > most:
        raise ConfigError(
            f"--top-k {s.top_k:,}: Lanczos with {s.eig_steps} steps on {op.dim:,} parameters finds at most {most:,} "
            f"eigenvalues; pass --top-k <= {most:,}"
        )
    kw = {"tol": s.eig_tol, "max_steps": s.eig_steps, "seed": s.seed, "dtype": op.dtype, "device": op.device}
    kw |= {"criterion": "value", "measure": s.eig_measure}
    top = lanczos_eigenvalues(op.hvp, op.dim, k=s.top_k, **kw, **warm_start(op, s, "largest"))
    out: dict[str, Any] = {"eigenvalues": top.values, "eigen_residuals": top.residuals, "lanczos_steps": top.steps}
    if s.smallest:
        low = lanczos_eigenvalues(op.hvp, op.dim, k=s.top_k, which="smallest", **kw, **warm_start(op, s, "smallest"))
        out |= {"smallest_eigenvalues": low.values, "smallest_residuals": low.residuals, "smallest_steps": low.steps}
    return out


def probe_trace(op: HessianOperator, s: ProbeSettings) -> dict[str, Any]:
    """Hutch++ trace with its standard error (and with ``trace_compare`` Hutchinson's, same number of products)."""
    kw = {"seed": s.seed, "dtype": op.dtype, "device": op.device}
    kw["quadratic"] = op.stratified_quadratic
    pp = hutch_plus_plus(op.hvp, op.dim, rank=s.trace_rank, samples=s.trace_samples, tol=s.trace_tol, **kw)
    out = {"trace": pp.trace, "trace_stderr": pp.stderr, "trace_matvecs": pp.matvecs}
    if s.trace_compare:
        plain = hutchinson(op.hvp, op.dim, samples=max(pp.matvecs, 2), **kw)
        out |= {"trace_hutchinson": plain.trace, "trace_hutchinson_stderr": plain.stderr}
    return out


def probe_density(op: HessianOperator, s: ProbeSettings) -> dict[str, Any]:
    """SLQ density and spectral moments."""
    dens = spectral_density(
        op.hvp, op.dim, starts=s.density_starts, steps=s.density_steps, seed=s.seed, dtype=op.dtype, device=op.device
    )
    return {"density": dens.to_json()}


def probe_layers(op: HessianOperator, s: ProbeSettings) -> dict[str, Any]:
    """Per module: trace of its diagonal Hessian block (Hutch++; exact when the block is small), per parameter,
    and the block's top eigenvalue."""
    layers = {}
    for i, (name, names) in enumerate(module_groups(op).items()):
        sub = op.restricted(names)
        kw = {"seed": s.seed + i, "dtype": op.dtype, "device": op.device}
        tr = hutch_plus_plus(sub.hvp, sub.dim, rank=s.layer_rank, samples=s.layer_samples, tol=s.trace_tol, **kw)
        top = lanczos_eigenvalues(sub.hvp, sub.dim, k=1, tol=s.eig_tol, max_steps=s.layer_steps, **kw)
        layers[name] = {
            "params": sub.dim,
            "trace": tr.trace,
            "trace_stderr": tr.stderr,
            "trace_per_param": tr.trace / sub.dim,
            "top_eigenvalue": top.values[0],
            "top_residual": top.residuals[0],
        }
        op.hvp_count += sub.hvp_count
    return {"layers": layers}


def probe_sharpness(op: HessianOperator, s: ProbeSettings) -> dict[str, Any]:
    """Average- and worst-case sharpness, plain (radius ``rho``) and adaptive (``adaptive_rho``)."""
    out: dict[str, Any] = {"rho": s.rho, "adaptive_rho": s.adaptive_rho}
    for adaptive in (False, True):
        rho = s.adaptive_rho if adaptive else s.rho
        for kind in ("average", "worst"):
            r = sharpness(op, rho, kind, adaptive, samples=s.sharpness_samples, steps=s.sharpness_steps, seed=s.seed)
            out[f"{kind}{'_adaptive' if adaptive else ''}"] = r["value"]
    return {"sharpness": out}


def probe_surface(op: HessianOperator, s: ProbeSettings) -> dict[str, Any]:
    """1-D and 2-D filter-normalized loss surfaces."""
    return {
        "surface": {
            "line": loss_line(op, s.surface_points, seed=s.seed),
            "plane": loss_plane(op, s.surface_plane_points, seed=s.seed),
        }
    }


def probe_kurtosis(model: nn.Module) -> dict[str, Any]:
    """The weight-shape statistics losslab logs in training (kurtosis, max|w|/std per layer and their means)."""
    from losslab.train.task import weight_statistics

    return {"weights": weight_statistics(model, per_layer=True)}


def run_probes(
    op: HessianOperator,
    settings: ProbeSettings,
    model: nn.Module | None = None,
    done: dict[str, Any] | None = None,
    on_probe: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Every probe of ``settings.probes`` not already in ``done`` (a previous result for the same settings), merged.

    Raises :class:`losslab.landscape.operator.NonFiniteLossError` before any work when L(θ) is NaN or infinite.
    """
    base = op.check_finite()
    result: dict[str, Any] = dict(done or {})
    result.setdefault("seconds", {})
    result |= {"base_loss": base, "parameters": op.dim, "samples": op.samples}
    result["probes_done"] = list(result.get("probes_done", []))
    funcs: dict[str, Callable[[], dict[str, Any]]] = {
        "eig": lambda: probe_eig(op, settings),
        "trace": lambda: probe_trace(op, settings),
        "density": lambda: probe_density(op, settings),
        "layers": lambda: probe_layers(op, settings),
        "sharpness": lambda: probe_sharpness(op, settings),
        "surface": lambda: probe_surface(op, settings),
        "kurtosis": lambda: probe_kurtosis(model if model is not None else op.model),
    }
    for name in settings.probes:
        if name in result["probes_done"]:
            continue
        if on_probe is not None:
            on_probe(name)
        start = time.perf_counter()
        result |= funcs[name]()
        result["seconds"][name] = round(time.perf_counter() - start, 3)
        result["probes_done"].append(name)
    return result
