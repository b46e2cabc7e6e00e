"""One width's rows of the sensitivity table from one uniform run of the driver (any source: engine or decoder).

:class:`Probe` holds the calibration batches, the loss and the float network for the loss-based metrics and
computes each probe once (Hessian traces, Fisher diagonal, float loss); :func:`width_run` turns a
:class:`losslab.quant.result.QuantResult` into a :class:`losslab.quant.budget.table.WidthRun`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from losslab.errors import ConfigError
from losslab.quant.budget.probes import (
    LossFn,
    SampleLossFn,
    calibration_loss,
    fisher_diagonal,
    hutchinson_traces,
    loss_with_weights,
    mean_and_stderr,
    sample_losses,
    sample_losses_with_weights,
)
from losslab.quant.budget.table import LayerRow, WidthRun
from losslab.quant.methods import QuantMethod
from losslab.quant.result import QuantResult, storage_bits_total

__all__ = ["Probe", "budgeted_layers", "width_run"]


def budgeted_layers(plan: Mapping[str, QuantMethod | None], method: QuantMethod) -> list[str]:
    """The layers whose width the budget chooses: those the plan gives the main ``method`` itself (not skipped,
    not matched by an override)."""
    names = [n for n, m in plan.items() if m is method]
    if not names:
        raise ConfigError("every layer is skipped or overridden: --budget has no layer to choose a width for")
    return names


@dataclass
class Probe:
    """The float network (BatchNorm folded when the run folds it), calibration batches, the batch loss and,
    optionally, the per-sample loss (then the ``loss`` metric has a standard error per entry)."""

    model: nn.Module
    batches: Sequence[Any]
    loss_fn: LossFn
    names: Sequence[str]
    hutchinson_probes: int = 8
    seed: int = 0
    sample_loss_fn: SampleLossFn | None = None
    _cache: dict[str, Any] = field(default_factory=dict)

    def traces(self) -> dict[str, float]:
        if "traces" not in self._cache:
            self._cache["traces"] = hutchinson_traces(
                self.model, self.names, self.batches, self.loss_fn, self.hutchinson_probes, self.seed
            )
        return self._cache["traces"]

    def fisher(self) -> dict[str, Tensor]:
        if "fisher" not in self._cache:
            self._cache["fisher"] = fisher_diagonal(self.model, self.names, self.batches, self.loss_fn)
        return self._cache["fisher"]

    def float_loss(self) -> float:
        if "loss" not in self._cache:
            self._cache["loss"] = calibration_loss(self.model, self.batches, self.loss_fn)
        return self._cache["loss"]

    def float_samples(self) -> Tensor:
        """The float network's per-sample calibration losses (float64)."""
        if "samples" not in self._cache:
            assert self.sample_loss_fn is not None
            self._cache["samples"] = sample_losses(self.model, self.batches, self.sample_loss_fn)
        return self._cache["samples"]

    def weight(self, name: str) -> Tensor:
        return self.model.get_submodule(name).weight.detach()


def _sensitivity(metric: str, name: str, report: Any, q: Tensor, probe: Probe | None) -> tuple[float, float | None]:
    """The entry's sensitivity and, for ``loss`` with per-sample losses, its standard error (else None)."""
    if metric == "proxy":
        if report.proxy_loss is None:
            raise ConfigError(f"layer {name!r} reported no proxy loss: the run must collect input statistics")
        return float(report.proxy_loss), None
    assert probe is not None
    diff = (probe.weight(name).double() - q.to(probe.weight(name).device).double()) ** 2
    if metric == "hawq":
        return probe.traces()[name] / diff.numel() * float(diff.sum()), None
    if metric == "fisher":
        return float((probe.fisher()[name].double() * diff).sum()), None
    if probe.sample_loss_fn is not None:
        losses = sample_losses_with_weights(probe.model, {name: q}, probe.batches, probe.sample_loss_fn)
        return mean_and_stderr(losses - probe.float_samples())
    return loss_with_weights(probe.model, {name: q}, probe.batches, probe.loss_fn) - probe.float_loss(), None


def width_run(
    result: QuantResult,
    budgeted: Sequence[str],
    metric: str,
    probe: Probe | None = None,
    metrics: Mapping[str, Any] | None = None,
    keep_weights: bool = False,
) -> WidthRun:
    """Rows of the budgeted layers (stored bits by :func:`storage_bits_total`, the packed file's count) and the
    stored bits of the fixed quantized layers, from one uniform run; with ``keep_weights`` also each budgeted
    layer's quantized weight (on the CPU)."""
    reports = {r.name: r for r in result.layers}
    wanted = set(budgeted)
    rows: dict[str, LayerRow] = {}
    kept: dict[str, Tensor] = {}
    fixed = 0
    for name, wqs in result.weights.items():
        bits = sum(storage_bits_total(wq) for wq in wqs)
        if name not in wanted:
            fixed += bits
            continue
        q = result.model.get_submodule(name).weight.detach()
        value, stderr = _sensitivity(metric, name, reports[name], q, probe)
        rows[name] = LayerRow(value, bits, stderr)
        if keep_weights:
            kept[name] = q.cpu().clone()
    summary = result.summary()["avg_bits_per_weight"]
    return WidthRun(rows, fixed, dict(metrics or {}), summary, kept if keep_weights else None)
