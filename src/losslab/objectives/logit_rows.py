"""Shared plumbing for every loss in :mod:`losslab.objectives`: flattening, ignore_index, smoothing, reduction.

Each loss only writes its per-row math; :func:`row_loss` does the rest under one contract (objectives spec §0)::

    def per_row(rows: LogitRows) -> Tensor:       # [N] values, one per flattened row
        return -rows.target_log_prob(rows.log_probs())

    loss = row_loss(logits, target, per_row, reduction="mean", ignore_index=-100)

The contract: the class dim is last and leading dims are flattened; fp16/bf16 logits are upcast to float32 and
autocast is disabled inside; ignored rows give 0 loss and 0 gradient; ``mean`` divides by the number of valid rows;
an all-ignored batch gives a finite 0 that keeps the graph (PyTorch would return NaN).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from losslab.errors import ConfigError, LosslabError, check_range

REDUCTIONS = ("mean", "sum", "none")


def check_reduction(reduction: str) -> None:
    """Raise :class:`ConfigError` unless ``reduction`` is one of ``mean``, ``sum``, ``none``."""
    if reduction not in REDUCTIONS:
        raise ConfigError(f"reduction={reduction!r} is not allowed: choose one of {', '.join(REDUCTIONS)}")


def check_ignore_index(ignore_index: int) -> None:
    """Raise :class:`ConfigError` unless ``ignore_index`` is a plain int (e.g. -100)."""
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise ConfigError(f"ignore_index={ignore_index!r} is not allowed: pass an int such as -100")


def check_label_smoothing(label_smoothing: float) -> None:
    """Raise :class:`ConfigError` unless ``0 <= label_smoothing < 1``."""
    check_range("label_smoothing", label_smoothing, low=0.0, high=1.0, high_inclusive=False)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half/bfloat16/float32 inputs; float64 stays float64 (so gradcheck works)."""
    return torch.promote_types(dtype, torch.float32)


@dataclass(frozen=True)
class LogitRows:
    """Logits flattened to rows, with their targets.

    ``logits`` [N, C] in the compute dtype; ``target`` [N] int64 class ids (ignored rows replaced by class 0, never
    used as an index with the ignore value) or [N, C] probabilities when ``soft``; ``valid`` [N] bool;
    ``row_shape`` the leading shape of the caller's logits, used by ``reduction="none"``.
    """

    logits: Tensor
    target: Tensor
    valid: Tensor
    row_shape: torch.Size
    soft: bool

    @property
    def num_classes(self) -> int:
        """C, the size of the class dim."""
        return self.logits.shape[-1]

    def log_probs(self, scale: float = 1.0) -> Tensor:
        """log softmax(scale·z) per row, [N, C]."""
        z = self.logits if scale == 1.0 else self.logits * scale
        return torch.log_softmax(z, dim=-1)

    def target_log_prob(self, log_probs: Tensor) -> Tensor:
        """log p_y per row, [N], by ``gather``; 0 (p_y = 1) at ignored rows so no loss sees extreme values there."""
        if self.soft:
            raise LosslabError("this loss needs integer class targets; soft (probability) targets are not defined")
        picked = log_probs.gather(1, self.target[:, None]).squeeze(1)
        return torch.where(self.valid, picked, picked.new_zeros(()))


def flatten_rows(logits: Tensor, target: Tensor, ignore_index: int) -> LogitRows:
    """Flatten ``logits`` [..., C] and ``target`` ([...] ints or [..., C] floats) into :class:`LogitRows`."""
    if logits.dim() < 1 or logits.shape[-1] < 1:
        raise LosslabError(f"logits must have a class dim last with C >= 1; got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise LosslabError(f"logits must be a floating-point tensor; got dtype {logits.dtype}")
    num_classes = logits.shape[-1]
    row_shape = logits.shape[:-1]
    flat = logits.reshape(-1, num_classes).to(compute_dtype(logits.dtype))
    if target.is_floating_point():
        if target.shape != logits.shape:
            raise LosslabError(
                f"soft (float) targets must have the logits' shape {tuple(logits.shape)}; got {tuple(target.shape)}. "
                "Pass integer class ids of shape logits.shape[:-1] for hard targets."
            )
        soft_target = target.reshape(-1, num_classes).to(flat.dtype)
        valid = torch.ones(flat.shape[0], dtype=torch.bool, device=flat.device)
        return LogitRows(flat, soft_target, valid, row_shape, soft=True)
    if target.dtype == torch.bool or target.shape != row_shape:
        raise LosslabError(
            f"integer targets must have shape logits.shape[:-1] = {tuple(row_shape)}; got {tuple(target.shape)} "
            f"({target.dtype}). Class dim must be last in the logits."
        )
    ids = target.reshape(-1).long()
    if ids.device.type == "cpu":  # free here; on an accelerator RowLoss checks its first batch (one sync)
        check_targets(ids, num_classes, ignore_index)
    valid = ids != ignore_index
    return LogitRows(flat, ids.masked_fill(~valid, 0), valid, row_shape, soft=False)


def check_targets(target: Tensor, num_classes: int, ignore_index: int) -> None:
    """Raise :class:`LosslabError` unless every integer target is a class id in [0, C) or ``ignore_index``.

    On a GPU an out-of-range id would otherwise surface as a device-side assert with no hint of the cause.
    """
    if target.is_floating_point() or target.numel() == 0:
        return
    ids = target[target != ignore_index]
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= num_classes):
        raise LosslabError(
            f"targets must be class ids in [0, {num_classes}) (or ignore_index={ignore_index}); got values from "
            f"{int(ids.min())} to {int(ids.max())}. The labels do not fit the model's {num_classes} outputs: check "
            "the dataset's labels and the model's num_classes"
        )


def smoothed_cross_entropy(log_probs: Tensor, rows: LogitRows, label_smoothing: float) -> Tensor:
    """Per-row CE against q = (1−s)·t + s/C, where t is e_y or the soft target: −Σ_j q_j log p_j, [N]."""
    nll = -(rows.target * log_probs).sum(-1) if rows.soft else -rows.target_log_prob(log_probs)
    if label_smoothing == 0.0:
        return nll
    return (1.0 - label_smoothing) * nll - label_smoothing * log_probs.mean(-1)


def subtract_smoothed_target_(probs: Tensor, rows: LogitRows, label_smoothing: float) -> Tensor:
    """In place: ``probs − q`` with q = (1−s)·t + s/C as in :func:`smoothed_cross_entropy`; returns ``probs``."""
    s = label_smoothing
    if rows.soft:
        return probs.sub_(rows.target * (1.0 - s) + s / rows.num_classes)
    if s:
        probs.sub_(s / rows.num_classes)
    on_target = torch.full((probs.shape[0], 1), -(1.0 - s), dtype=probs.dtype, device=probs.device)
    return probs.scatter_add_(1, rows.target[:, None], on_target)


def reduce_rows(per_row: Tensor, rows: LogitRows, reduction: str) -> Tensor:
    """Zero ignored rows (value and gradient), then ``none`` (shape ``row_shape``), ``sum`` or ``mean`` over valid rows.

    With every row ignored ``mean`` is 0/1 = 0: finite, and still a function of the logits (zero gradient).
    """
    per_row = torch.where(rows.valid, per_row, per_row.new_zeros(()))
    if reduction == "none":
        return per_row.reshape(rows.row_shape)
    total = per_row.sum()
    if reduction == "sum":
        return total
    return total / rows.valid.sum().clamp_min(1)


def row_loss(
    logits: Tensor,
    target: Tensor,
    per_row: Callable[[LogitRows], Tensor],
    *,
    reduction: str,
    ignore_index: int,
) -> Tensor:
    """Run ``per_row`` on flattened fp32 rows with autocast off, then mask and reduce (see module docstring)."""
    check_reduction(reduction)
    check_ignore_index(ignore_index)
    with torch.autocast(device_type=logits.device.type, enabled=False):
        rows = flatten_rows(logits, target, ignore_index)
        return reduce_rows(per_row(rows), rows, reduction)


class RowLoss(torch.nn.Module):
    """Base for the loss modules: holds and validates ``reduction`` and ``ignore_index``."""

    def __init__(self, *, reduction: str = "mean", ignore_index: int = -100) -> None:
        super().__init__()
        check_reduction(reduction)
        check_ignore_index(ignore_index)
        self.reduction = reduction
        self.ignore_index = ignore_index
        self.targets_checked = False
        self.register_forward_pre_hook(RowLoss._check_first_targets)

    @staticmethod
    def _check_first_targets(module: RowLoss, args: tuple[Tensor, ...]) -> None:
        """Check the targets of the first batch (once: on a GPU this is one host sync per loss module)."""
        if not module.targets_checked:
            check_targets(args[1], args[0].shape[-1], module.ignore_index)
            module.targets_checked = True

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}, ignore_index={self.ignore_index}"
