"""The normalization experiment's pieces without Lightning: factor-product norms, their recording and following,
and the per-epoch factor statistics (factorized.md §8).

Run 1 (``frob``) records n_l(e, i) = ‖U_l(M_l)V_lᵀ‖_F of every low-rank layer after every optimizer step; run 2
(``norm``) rescales the factors after every step so each product has the recorded norm::

    recorder = FrobNormRecorder("frob/frobnorms.pt"); recorder.start(model)
    ...optimizer.step(); recorder.after_step(epoch, i)      # end of each epoch: recorder.end_epoch()
    follower = FrobNormFollower("frob/frobnorms.pt"); follower.start(model, batches_per_epoch, epochs)
    ...optimizer.step(); follower.after_step(epoch, i)      # start/end of each epoch: start_epoch() / end_epoch()

The plain training engine calls them from its loop; :mod:`losslab.layers.normalization` wraps them as Lightning
callbacks. Layers are the model's :class:`LowRankBase` modules in ``modules()`` order.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor, nn

from losslab.errors import ConfigError, DataNotFoundError
from losslab.io import save_torch_atomic
from losslab.layers.lowrank import LowRankBase


def lowrank_layers(model: nn.Module) -> list[LowRankBase]:
    """The low-rank layers of ``model`` in ``modules()`` order (ConfigError if there are none)."""
    layers = [m for m in model.modules() if isinstance(m, LowRankBase)]
    if not layers:
        raise ConfigError(f"{type(model).__name__} has no low-rank layers; factorize it first (losslab.layers)")
    return layers


def product_frobenius_norms(layers: list[LowRankBase]) -> Tensor:
    """‖U(M)Vᵀ‖_F of each layer, float64 on CPU, shape [layers]."""
    with torch.no_grad():
        return torch.stack([torch.linalg.matrix_norm(m.weight_matrix().double()).cpu() for m in layers])


@torch.no_grad()
def rescale_to_norms(layers: list[LowRankBase], targets: Tensor) -> None:
    """Multiply U_l and V_l each by sqrt(n_l / ‖U_l(M_l)V_lᵀ‖_F) so the product's norm becomes n_l (in place)."""
    for layer, target, current in zip(layers, targets.tolist(), product_frobenius_norms(layers).tolist()):
        scale = math.sqrt(target / current)
        layer.U.mul_(scale)
        layer.V.mul_(scale)


class FrobNormRecorder:
    """Record ‖U(M)Vᵀ‖_F per low-rank layer after every optimizer step into ``path`` ([epochs, iters, layers]).

    The tensor is saved atomically at the end of every training epoch (complete epochs only). Unlike the original,
    the norm includes M for ``square`` layers.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._epochs: list[Tensor] = []
        self._current: list[Tensor] = []
        self._layers: list[LowRankBase] = []

    def start(self, model: nn.Module, keep_epochs: int = 0) -> None:
        """Begin recording; a run resumed at epoch ``keep_epochs`` keeps the epochs already in ``path``."""
        from losslab.serialization import load_torch_file

        self._layers = lowrank_layers(model)
        self._epochs, self._current = [], []
        if keep_epochs > 0 and self.path.is_file():
            held = load_torch_file(self.path, what="recorded norms")
            self._epochs = list(held[:keep_epochs]) if isinstance(held, Tensor) and held.dim() == 3 else []
            if len(self._epochs) != keep_epochs:
                raise ConfigError(
                    f"RecordFrobNorms: the run resumes at epoch {keep_epochs} but {self.path} holds "
                    f"{len(self._epochs)} recorded epochs; record again from the start (a new run)"
                )

    def after_step(self, epoch: int, batch_idx: int) -> None:
        self._current.append(product_frobenius_norms(self._layers))

    def end_epoch(self) -> None:
        if self._epochs and len(self._current) != self._epochs[0].shape[0]:
            raise ConfigError(
                f"RecordFrobNorms: epoch {len(self._epochs)} ran {len(self._current)} optimizer steps but epoch 0 ran "
                f"{self._epochs[0].shape[0]}; use the same number of batches every epoch (e.g. drop_last=True)"
            )
        self._epochs.append(torch.stack(self._current))
        self._current = []
        self.save()

    def save(self) -> None:
        if self._epochs:
            save_torch_atomic(self.path, torch.stack(self._epochs))


class FrobNormFollower:
    """After every optimizer step rescale U_l and V_l (under ``no_grad``; momentum untouched) so that
    ‖U_l(M_l)V_lᵀ‖_F equals the norm recorded by :class:`FrobNormRecorder` at the same (epoch, iteration).

    ``start`` raises ConfigError if the layer count, iterations per epoch or epoch count cannot match.
    """

    def __init__(self, path: str | Path) -> None:
        from losslab.serialization import load_torch_file

        self.path = Path(path)
        if not self.path.is_file():
            raise DataNotFoundError(f"NormalizeToRecorded: no recorded norms at {self.path}; run RecordFrobNorms first")
        self.targets: Tensor = load_torch_file(self.path, what="recorded norms")
        if not isinstance(self.targets, Tensor) or self.targets.dim() != 3:
            raise ConfigError(f"{self.path} does not hold an [epochs, iters, layers] tensor from RecordFrobNorms")
        self._seen = 0
        self._layers: list[LowRankBase] = []

    def start(self, model: nn.Module, batches_per_epoch: float, max_epochs: int | None) -> None:
        epochs, iters, n_layers = self.targets.shape
        self._layers = lowrank_layers(model)
        if len(self._layers) != n_layers:
            raise ConfigError(
                f"NormalizeToRecorded: the model has {len(self._layers)} low-rank layers but {self.path} recorded "
                f"{n_layers}; factorize the same architecture with the same rank scale"
            )
        if math.isfinite(batches_per_epoch) and batches_per_epoch != iters:
            raise ConfigError(
                f"NormalizeToRecorded: {batches_per_epoch} iterations per epoch but {self.path} recorded {iters}; "
                "use the same batch size, dataset and drop_last as the recording run"
            )
        if max_epochs is not None and max_epochs > epochs:
            raise ConfigError(
                f"NormalizeToRecorded: max_epochs={max_epochs} but {self.path} recorded only {epochs} epochs"
            )

    def start_epoch(self) -> None:
        self._seen = 0

    def after_step(self, epoch: int, batch_idx: int) -> None:
        epochs, iters, _ = self.targets.shape
        if epoch >= epochs or batch_idx >= iters:
            raise ConfigError(
                f"NormalizeToRecorded: step (epoch {epoch}, iteration {batch_idx}) is outside the record "
                f"({epochs} epochs × {iters} iterations) in {self.path}"
            )
        rescale_to_norms(self._layers, self.targets[epoch, batch_idx])
        self._seen += 1

    def end_epoch(self) -> None:
        iters = self.targets.shape[1]
        if self._seen != iters:
            raise ConfigError(f"NormalizeToRecorded: this epoch ran {self._seen} steps but the record has {iters}")


def _offdiag_ratio(gram: Tensor) -> float:
    off = gram - torch.diag_embed(torch.diagonal(gram))
    return (torch.linalg.matrix_norm(off) / torch.linalg.matrix_norm(gram)).item()


@torch.no_grad()
def factor_stats(model: nn.Module, lr: float | None = None) -> dict[str, float]:
    """Layer means of the §8 per-epoch logs over the low-rank layers of ``model``.

    Keys: ``frob_norm`` ‖W‖_F, ``nuclear_norm`` ‖W‖_*, ``factor_sq_norm`` ½Σ‖factor‖²_F (½(‖U‖²+‖V‖²), + ‖M‖²
    with M), ``gram_offdiag_u`` ‖offdiag(UᵀU)‖_F/‖UᵀU‖_F, ``gram_offdiag_v`` the same for VᵀV; with ``lr`` also
    ``lr_over_frob`` lr/‖W‖_F and ``lr_over_frob_sq`` lr/‖W‖²_F. W = U(M)Vᵀ in float64.
    """
    rows: list[dict[str, float]] = []
    for layer in lowrank_layers(model):
        w = layer.weight_matrix().double()
        u, v = layer.U.double(), layer.V.double()
        frob = torch.linalg.matrix_norm(w).item()
        row = {
            "frob_norm": frob,
            "nuclear_norm": torch.linalg.matrix_norm(w, "nuc").item(),
            "factor_sq_norm": 0.5 * sum(f.double().pow(2).sum().item() for f in layer.factors()),
            "gram_offdiag_u": _offdiag_ratio(u.T @ u),
            "gram_offdiag_v": _offdiag_ratio(v.T @ v),
        }
        if lr is not None:
            row["lr_over_frob"] = lr / frob
            row["lr_over_frob_sq"] = lr / frob**2
        rows.append(row)
    return {key: sum(r[key] for r in rows) / len(rows) for key in rows[0]}
