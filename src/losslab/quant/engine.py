"""The layer-wise quantization engine: quantize every Conv2d/Linear of any PyTorch network (spec §8).

Layers are processed in registration order. Layer i's statistics use its input in the float network and/or in
the partly quantized network (layers < i already quantized), for every cached calibration batch. Statistics are
streamed batch by batch (no unfolded patches are kept): GPTQ/LDLQ accumulate H = (2/n)ΣX̃ᵀX̃ from the partly
quantized network (as the sequential GPTQ driver does), GPFQ accumulates G = X̃ᵀX, H̃ = X̃ᵀX̃ and XᵀX. Convs are
unfolded with their real stride, padding, dilation and groups (:mod:`losslab.quant.unfold`); grouped convs are
quantized per group. The dequantized weight is written back (fake quantization); the user's model is never
modified::

    from losslab.quant import GPFQ, RTN, quantize, quantize_many
    result = quantize(model, GPFQ(bits=4), calib_loader, overrides={"fc": RTN(bits=8)}, skip=["conv1"])
    print(result.table()); result.summary()
    results = quantize_many(model, [RTN(bits=b) for b in (8, 4, 3)], calib_loader)   # one calibration cache

``calib`` is a DataLoader, any iterable of batches, or a list of tensors; a batch is an input tensor or a
``(inputs, labels, ...)`` tuple/list (the first element is used).

How the inputs are reached (:mod:`losslab.quant.walk`, ``walk=``), with bit-identical results either way:

- ``"segments"`` (default): the model is traced module by module with torch.fx and replayed once over all
  batches, each layer being quantized when the replay reaches its first call. Cost: about one forward pass per
  batch for each network that is needed (GPTQ/LDLQ: the quantized one; GPFQ or ``metrics=True``: both), plus
  k/2 passes through any module that cannot be replayed (it has k layers). Memory: every activation that a later
  node still needs is cached per batch and network on ``device`` (a chain: one activation per batch; a residual
  block: two or three), the same order as the calibration set's activations at one layer;
  ``summary()["calibration"]["walk_cache_bytes"]`` records the peak.
- ``"prefix"``: for layer i, each network is rerun from the input up to layer i with a hook that records the
  input and aborts: about L/2 full forward passes per batch for L layers, no cache. Used automatically when the
  model cannot be replayed exactly (untraceable root, layers not first called in registration order).
"""

from __future__ import annotations

import copy
import fnmatch
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from losslab.errors import ConfigError, LosslabError, check_range
from losslab.quant.bn_fold import fold_batchnorm
from losslab.quant.driver import Collected, LayerJob, drive
from losslab.quant.engine_act import calibrate_act_ranges, install_act_quant
from losslab.quant.methods import LayerStats, QuantMethod
from losslab.quant.result import LayerReport, QuantResult
from losslab.quant.unfold import QuantLayer, grouped_weight, n_groups
from losslab.quant.walk import (
    WALKS,
    Walker,
    WalkPlan,
    capture_input,
    estimate_cache_bytes,
    free_memory_bytes,
    guard_memory,
    plan_walk,
)
from losslab.quant.weight_quant import WeightQuant

__all__ = ["capture_input", "quant_layers", "quantize", "quantize_many"]


def quant_layers(model: nn.Module) -> list[tuple[str, QuantLayer]]:
    """All Conv2d and Linear modules of ``model`` with their names, in registration order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]


def cache_calibration(calib: Iterable[Any], device: torch.device) -> list[Tensor]:
    """Read the calibration batches once into a list of input tensors on ``device``."""
    if isinstance(calib, Tensor):
        calib = [calib]
    batches = []
    for batch in calib:
        x = batch[0] if isinstance(batch, tuple | list) else batch
        if isinstance(x, Mapping) or not isinstance(x, Tensor):
            raise LosslabError(
                f"calibration batch of type {type(x).__name__} is not supported: give tensors or (inputs, labels)"
            )
        batches.append(x.to(device))
    if not batches or all(b.shape[0] == 0 for b in batches):
        raise LosslabError("the calibration loader is empty: give at least one batch of inputs (calib=...)")
    return batches


PATTERN_FLAGS = {"overrides": "--keep-8bit / --override", "skip": "--skip"}  # how the CLI spells each kind


def _check_patterns(kind: str, patterns: Iterable[str], names: Sequence[str]) -> None:
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            raise ConfigError(
                f"layer pattern {pattern!r} ({kind}; CLI {PATTERN_FLAGS.get(kind, kind)}) matches no Conv2d/Linear "
                f"layer; layer names are: {', '.join(names)}"
            )


def _check_method(key: str, method: Any) -> None:
    if not isinstance(method, QuantMethod):
        raise ConfigError(
            f"{key}={method!r} is not a quantization method: use RTN(...), PWLQ(...), GPFQ(...), GPTQ(...), "
            "LDLQ(...) or Identity16() from losslab.quant"
        )


def plan_layers(
    names: Sequence[str],
    method: QuantMethod,
    overrides: Mapping[str, QuantMethod] | None,
    skip: Sequence[str] | None,
) -> dict[str, QuantMethod | None]:
    """Method per layer name: None if a ``skip`` pattern matches, else the first matching override, else
    ``method``. Patterns are fnmatch patterns on module names (``"layer1.*.conv2"``); one that matches no layer
    raises :class:`ConfigError` listing the layer names."""
    overrides = dict(overrides or {})
    skip = [skip] if isinstance(skip, str) else list(skip or [])
    _check_method("method", method)
    for pattern, m in overrides.items():
        _check_method(f"overrides[{pattern!r}]", m)
    _check_patterns("overrides", overrides, names)
    _check_patterns("skip", skip, names)
    plan: dict[str, QuantMethod | None] = {}
    for name in names:
        if any(fnmatch.fnmatchcase(name, p) for p in skip):
            plan[name] = None
            continue
        plan[name] = next((m for p, m in overrides.items() if fnmatch.fnmatchcase(name, p)), method)
    return plan


def _check_model(model: Any) -> list[tuple[str, QuantLayer]]:
    if not isinstance(model, nn.Module):
        raise LosslabError(
            f"model must be a torch.nn.Module, got {type(model).__name__}; to quantize a checkpoint or state dict, "
            "build the architecture first and load_state_dict() into it"
        )
    layers = quant_layers(model)
    if not layers:
        raise LosslabError("the model has no Conv2d or Linear layer to quantize")
    for name, layer in layers:
        if not torch.isfinite(layer.weight).all():
            raise LosslabError(f"layer {name!r} has NaN or Inf weights; fix the checkpoint before quantizing")
    return layers


@dataclass
class _LayerStats:
    """Per-group method statistics plus the float-network Gram XᵀX and row count for the proxy loss."""

    method_stats: list[LayerStats | None]
    gram: list[Tensor]
    rows: int = 0


def _stream_use(method: QuantMethod | None, metrics: bool) -> tuple[bool, bool] | None:
    """Which streams a layer's statistics read: (float network X, partly quantized network X̃); None = no data."""
    if method is None or not (method.needs_data or metrics):
        return None
    return metrics or method.reads_float, method.reads_quantized


def _collect(
    method: QuantMethod,
    fmodel: nn.Module,
    qmodel: nn.Module,
    name: str,
    pairs: Iterable[tuple[Tensor | None, Tensor | None]],
    metrics: bool,
    generator: torch.Generator,
) -> _LayerStats:
    """Accumulate this layer's statistics from per-batch inputs ``(x, x̃)`` (a missing one means "the other one")."""
    flayer, qlayer = fmodel.get_submodule(name), qmodel.get_submodule(name)
    groups, dim = n_groups(flayer), grouped_weight(flayer).shape[-1]
    device = flayer.weight.device
    stats = _LayerStats(
        [method.new_stats(dim, device) for _ in range(groups)],
        [torch.zeros(dim, dim, device=device, dtype=torch.float64) for _ in range(groups)] if metrics else [],
    )
    for x_float, x_quant in pairs:
        x = x_float if x_float is not None else x_quant
        x_tilde = x_quant if x_quant is not None else x
        for xs, xs_tilde in _sample_slices(method, flayer, x, x_tilde):
            rows, rows_tilde = method.layer_rows(flayer, qlayer, xs, xs_tilde, generator)  # [groups, rows, dim]
            for g in range(groups):
                if stats.method_stats[g] is not None:
                    stats.method_stats[g].update(rows[g], rows_tilde[g])
                if metrics:
                    stats.gram[g] += (rows[g].T @ rows[g]).double()
            stats.rows += rows.shape[1]
    return stats


#: On a CPU a calibration batch reaches the statistics in slices of whole samples whose unfolded rows (every stream
#: read) fill at most this many bytes: each slice is still in cache when its Gram product reads it, and the buffer
#: stays below the C allocator's mmap threshold (no fresh pages to fault in per batch). Accelerators take whole batches.
SLICE_BYTES = 16 * 2**20


def _sample_slices(method: QuantMethod, layer: nn.Module, x: Tensor, x_tilde: Tensor) -> list[tuple[Tensor, Tensor]]:
    """``(x, x̃)`` split along the sample axis into slices of about :data:`SLICE_BYTES` of unfolded rows (one slice
    on an accelerator, for a method that does not allow it, or for a small batch)."""
    if x.device.type != "cpu" or not method.splits_batches or x.ndim == 0 or x.shape[0] < 2:
        return [(x, x_tilde)]
    per_sample = x[0].numel() * 4 * (1 if x_tilde is x else 2)
    if isinstance(layer, nn.Conv2d):
        (kh, kw), (sh, sw) = layer.kernel_size, layer.stride
        per_sample = per_sample * kh * kw // (sh * sw)
    n_slices = -(-x.shape[0] * per_sample // SLICE_BYTES)
    if n_slices <= 1:
        return [(x, x_tilde)]
    size = -(-x.shape[0] // n_slices)  # equal slices
    slices = []
    for i in range(0, x.shape[0], size):
        xs = x[i : i + size]
        slices.append((xs, xs if x_tilde is x else x_tilde[i : i + size]))
    return slices


class WalkSource:
    """The driver's source for any network (:mod:`losslab.quant.driver`): one unit per Conv2d/Linear layer in
    registration order, its inputs reached by the traced walk (:class:`losslab.quant.walk.Walker`) over the cached
    calibration batches, for the float network ``base`` (X) and the network being quantized ``qmodel`` (X̃)."""

    def __init__(
        self,
        base: nn.Module,
        qmodel: nn.Module,
        plan: dict[str, QuantMethod | None],
        batches: list[Tensor],
        walker: Walker,
        *,
        seed: int,
        metrics: bool,
        progress: bool | str,
        label: str,
    ) -> None:
        self.base, self.qmodel, self.plan, self.batches, self.walker = base, qmodel, plan, batches, walker
        self.metrics, self.progress, self.label = metrics, progress, label
        self.generator = torch.Generator().manual_seed(seed)
        self.uses = {name: _stream_use(method, metrics) for name, method in plan.items()}
        self.last_data = max((i for i, u in enumerate(self.uses.values()) if u is not None), default=-1)
        self.modified = False  # X̃ = X until a weight changes
        self._index = -1

    def units(self) -> Iterator[list[LayerJob]]:
        for index, name in layer_progress(list(self.plan), self.progress, self.label):
            self._index = index
            layer = self.qmodel.get_submodule(name)
            kind = "conv" if isinstance(layer, nn.Conv2d) else "linear"
            yield [LayerJob(name, index, layer, self.plan[name], kind, n_groups(layer))]

    def collect(self, jobs: list[LayerJob]) -> dict[str, Collected]:
        (job,) = jobs
        provider = self.walker.reach(job.name) if self._index <= self.last_data else None
        use, out = self.uses[job.name], {}
        if use is not None and provider is not None:
            batch_ids = job.method.calibration_batches(self._index, len(self.batches))
            want_f, want_q = use[0], use[1] and (self.modified or not use[0])
            pairs = provider(batch_ids, want_f, want_q)
            stats = _collect(job.method, self.base, self.qmodel, job.name, pairs, self.metrics, self.generator)
            moments = [g / stats.rows for g in stats.gram] if stats.gram and stats.rows else None
            out[job.name] = Collected(list(stats.method_stats), moments)
        if self._index == self.last_data:
            self.walker.close()  # nothing after this layer needs data
        return out

    def float_weight(self, job: LayerJob) -> Tensor:
        return job.module.weight.detach().clone()

    def weight_groups(self, weight: Tensor, job: LayerJob) -> list[Tensor]:
        return list(grouped_weight(job.module))

    def write(self, job: LayerJob, q: Tensor) -> None:
        with torch.no_grad():
            self.modified = self.modified or not torch.equal(q, job.module.weight)
            job.module.weight.copy_(q)

    def keep(self, wqs: list[WeightQuant]) -> list[WeightQuant]:
        return wqs


#: ``progress`` value for one plain stderr line per group of layers (logs, pipes), instead of a tqdm bar.
LINES = "lines"


def layer_progress(names: list[str], progress: bool | str, label: str, lines: int = 10) -> Iterator[tuple[int, str]]:
    """``enumerate(names)`` with progress on stderr: a tqdm bar (``progress=True``), nothing (``False``), or
    (``"lines"``) one line per group of about ``len(names) / lines`` layers, printed once the group is quantized::

        gpfq 4-bit: 12/54 layers quantized (layer2.0.conv1), 3.1 s
    """
    if progress != LINES:
        yield from enumerate(tqdm(names, desc=label, disable=not progress, leave=False))
        return
    import sys

    every, start = max(1, -(-len(names) // lines)), time.perf_counter()
    for index, name in enumerate(names):
        yield index, name
        if (index + 1) % every == 0 or index + 1 == len(names):
            elapsed = time.perf_counter() - start
            print(f"{label}: {index + 1}/{len(names)} layers quantized ({name}), {elapsed:.1f} s", file=sys.stderr)


def _run_one(
    base: nn.Module,
    plan: dict[str, QuantMethod | None],
    batches: list[Tensor],
    walk_plan: WalkPlan,
    *,
    act_bits: int | None,
    seed: int,
    metrics: bool,
    progress: bool | str,
    label: str,
) -> tuple[nn.Module, list[LayerReport], dict[str, list[WeightQuant]], dict[str, tuple[float, float]], int]:
    qmodel = copy.deepcopy(base)
    uses = {name: _stream_use(method, metrics) for name, method in plan.items()}
    streams = [s for i, s in enumerate(("f", "q")) if any(u is not None and u[i] for u in uses.values())]
    skipped = [name for name, method in plan.items() if method is None]
    walker = Walker(walk_plan, {"f": base, "q": qmodel}, batches, streams, skipped)
    source = WalkSource(base, qmodel, plan, batches, walker, seed=seed, metrics=metrics, progress=progress, label=label)
    try:
        reports, weights = drive(source, seed=seed)
    finally:
        walker.close()
    ranges: dict[str, tuple[float, float]] = {}
    if act_bits is not None:
        ranges = calibrate_act_ranges(qmodel, list(weights), batches)
        install_act_quant(qmodel, ranges, act_bits)
    return qmodel, reports, weights, ranges, walker.peak_bytes


def quantize_many(
    model: nn.Module,
    methods: Sequence[QuantMethod],
    calib: Iterable[Any],
    overrides: Mapping[str, QuantMethod] | None = None,
    skip: Sequence[str] | None = None,
    fold_bn: bool = False,
    act_bits: int | None = None,
    device: str | torch.device | None = None,
    progress: bool | str = True,
    *,
    seed: int = 0,
    metrics: bool = True,
    calib_seed: int | None = None,
    calib_name: str | None = None,
    walk: str = "segments",
) -> list[QuantResult]:
    """Quantize ``model`` once per method in ``methods``, sharing one calibration cache (see :func:`quantize`)."""
    if not methods:
        raise ConfigError("methods is empty: give at least one quantization method, e.g. [RTN(bits=4)]")
    layers = _check_model(model)
    names = [n for n, _ in layers]
    plans = [plan_layers(names, m, overrides, skip) for m in methods]
    if act_bits is not None:
        check_range("act_bits", act_bits, low=2, high=16)
    if walk not in WALKS:
        raise ConfigError(f"walk={walk!r} is not allowed: choose one of {', '.join(map(repr, WALKS))}")
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    batches = cache_calibration(calib, dev)
    base = copy.deepcopy(model).to(dev).eval()
    if fold_bn:
        fold_batchnorm(base, inplace=True)
    calibration = {
        "images": sum(b.shape[0] for b in batches),
        "batches": len(batches),
        "input_shape": list(batches[0].shape[1:]),
        "seed": calib_seed,
        "name": calib_name,
    }
    planned = [n for n in names if plans[0][n] is not None]  # skip patterns are shared by all methods
    if any(_stream_use(m, metrics) for plan in plans for m in plan.values()):
        probe = next((b for b in batches if b.shape[0] > 0), batches[0])
        walk_plan = plan_walk(base, names, planned, probe, walk)
        if walk_plan.kind == "segments":
            uses = [u for plan in plans for m in plan.values() if (u := _stream_use(m, metrics)) is not None]
            streams = sum(any(u[i] for u in uses) for i in (0, 1))
            estimate = estimate_cache_bytes(base, probe, len(batches), streams)
            walk_plan = guard_memory(walk_plan, estimate, free_memory_bytes(dev), names)
    else:
        walk_plan = WalkPlan.prefix(names, "no layer needs calibration data")
    override_labels = {p: m.describe() for p, m in (overrides or {}).items()}
    results = []
    for method, plan in zip(methods, plans):
        start = time.perf_counter()
        qmodel, reports, weights, ranges, cache_bytes = _run_one(
            base,
            plan,
            batches,
            walk_plan,
            act_bits=act_bits,
            seed=seed,
            metrics=metrics,
            progress=progress,
            label=method.describe(),
        )
        results.append(
            QuantResult(
                model=qmodel,
                layers=reports,
                weights=weights,
                method=method.describe(),
                overrides=override_labels,
                calibration={
                    **calibration,
                    "walk": walk_plan.kind,
                    "walk_cache_bytes": cache_bytes,
                    "walk_note": walk_plan.reason,
                },
                fold_bn=fold_bn,
                act_bits=act_bits,
                act_ranges=ranges,
                seed=seed,
                seconds=time.perf_counter() - start,
            )
        )
    return results


def quantize(
    model: nn.Module,
    method: QuantMethod,
    calib: Iterable[Any],
    overrides: Mapping[str, QuantMethod] | None = None,
    skip: Sequence[str] | None = None,
    fold_bn: bool = False,
    act_bits: int | None = None,
    device: str | torch.device | None = None,
    progress: bool | str = True,
    *,
    seed: int = 0,
    metrics: bool = True,
    calib_seed: int | None = None,
    calib_name: str | None = None,
    walk: str = "segments",
) -> QuantResult:
    """Quantize every Conv2d/Linear weight of a deep copy of ``model`` with ``method`` (fake quantization).

    Args:
        model: any ``nn.Module``; it is deep-copied, put in eval mode and never modified.
        method: a config from :mod:`losslab.quant.methods` (``RTN(bits=4)``, ``GPTQ(bits=3, act_order=True)``).
        calib: calibration batches (DataLoader, iterable, or list of tensors; ``(inputs, labels)`` batches ok).
        overrides: ``{fnmatch pattern on module name: method}``, first matching pattern wins.
        skip: fnmatch patterns of layers kept in float.
        fold_bn: fold eval BatchNorms into the preceding layer before quantizing (spec §9).
        act_bits: if set, per-tensor fake-quantize each quantized layer's input with min/max ranges calibrated
            on ``calib`` after the weights are quantized; default weight-only.
        device: where to run (default: the model's device).
        progress: a tqdm bar over layers (True), nothing (False), or ``"lines"``: one stderr line per group of
            layers, for logs and pipes (:func:`layer_progress`).
        seed: seed for random parts (layer i uses ``seed + 2i``: incoherence U/V seeds, dither, stochastic
            rounding; legacy GPFQ patch sampling uses ``seed``).
        metrics: accumulate the float-network XᵀX per layer for the proxy loss (extra cost for RTN/PWLQ).
        calib_seed, calib_name: labels recorded in ``summary()["calibration"]``.
        walk: how layer inputs are reached (:mod:`losslab.quant.walk`): ``"segments"`` (default; replays the
            traced model once per batch, keeping live activations, and falls back to the prefix walk where the
            structure does not allow it) or ``"prefix"`` (reruns the network up to each layer; no cache). Both give
            bit-identical results; ``summary()["calibration"]`` records the walk used (``walk``) and the peak
            activation cache in bytes (``walk_cache_bytes``).

    Returns:
        :class:`QuantResult` with ``kind == "fake"``. Bad input raises :class:`LosslabError` before any work.
    """
    return quantize_many(
        model,
        [method],
        calib,
        overrides,
        skip,
        fold_bn,
        act_bits,
        device,
        progress,
        seed=seed,
        metrics=metrics,
        calib_seed=calib_seed,
        calib_name=calib_name,
        walk=walk,
    )[0]
