"""Loss-based sensitivity probes on the float network: Hutchinson Hessian traces, the empirical Fisher diagonal,
and the calibration loss with one layer's weight replaced.

``batches`` are calibration batches (a tensor, or a tuple whose tensors share the batch dimension) and
``loss_fn(model, batch)`` the mean loss of one batch (cross-entropy for a classifier, the causal-LM loss for a
decoder). Every probe weights a batch by its number of samples. ``sample_loss_fn(model, batch)`` (optional) gives
the loss of each sample of a batch (shape [n]); with it the ``loss`` metric also has a standard error per entry
(:func:`mean_and_stderr` of the per-sample differences).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "calibration_loss",
    "fisher_diagonal",
    "hutchinson_traces",
    "loss_with_weights",
    "mean_and_stderr",
    "sample_losses",
    "sample_losses_with_weights",
]

LossFn = Callable[[nn.Module, Any], Tensor]
SampleLossFn = Callable[[nn.Module, Any], Tensor]  # per-sample losses of one batch, shape [n]


def _size(batch: Any) -> int:
    return int((batch[0] if isinstance(batch, tuple | list) else batch).shape[0])


def _slice(batch: Any, i: int) -> Any:
    if isinstance(batch, tuple | list):
        return type(batch)(t[i : i + 1] for t in batch)
    return batch[i : i + 1]


def calibration_loss(model: nn.Module, batches: Sequence[Any], loss_fn: LossFn) -> float:
    """Σ_batches n_b · loss_b / Σ n_b, no gradients."""
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            n = _size(batch)
            total += float(loss_fn(model, batch)) * n
            count += n
    return total / count


@contextmanager
def _weights_replaced(model: nn.Module, weights: Mapping[str, Tensor]) -> Iterator[None]:
    """The listed layers' weights replaced for the duration (restored afterwards, also on error)."""
    saved = {}
    with torch.no_grad():
        for name, w in weights.items():
            layer = model.get_submodule(name)
            saved[name] = layer.weight.detach().clone()
            layer.weight.copy_(w)
    try:
        yield
    finally:
        with torch.no_grad():
            for name, w in saved.items():
                model.get_submodule(name).weight.copy_(w)


def loss_with_weights(
    model: nn.Module, weights: Mapping[str, Tensor], batches: Sequence[Any], loss_fn: LossFn
) -> float:
    """The calibration loss with the listed layers' weights replaced (restored afterwards)."""
    with _weights_replaced(model, weights):
        return calibration_loss(model, batches, loss_fn)


def sample_losses(model: nn.Module, batches: Sequence[Any], sample_loss_fn: SampleLossFn) -> Tensor:
    """Every calibration sample's loss, in batch order (float64 on the CPU, no gradients)."""
    with torch.no_grad():
        return torch.cat([sample_loss_fn(model, b).detach().reshape(-1).double().cpu() for b in batches])


def sample_losses_with_weights(
    model: nn.Module, weights: Mapping[str, Tensor], batches: Sequence[Any], sample_loss_fn: SampleLossFn
) -> Tensor:
    """:func:`sample_losses` with the listed layers' weights replaced (restored afterwards)."""
    with _weights_replaced(model, weights):
        return sample_losses(model, batches, sample_loss_fn)


def mean_and_stderr(diff: Tensor) -> tuple[float, float]:
    """Mean of per-sample differences d and its standard error std(d) / √n (sample std, n − 1 in the
    denominator; 0 for one sample): the noise of a loss increase measured on n calibration samples."""
    d = diff.double().reshape(-1)
    n = d.numel()
    se = float(d.std(unbiased=True)) / n**0.5 if n > 1 else 0.0
    return float(d.mean()), se


@contextmanager
def _grad_on(params: Sequence[Tensor]) -> Iterator[None]:
    """Gradients enabled and flowing to ``params`` (a loaded model may hold frozen weights); restored after."""
    frozen = [p for p in params if not p.requires_grad]
    for p in frozen:
        p.requires_grad_(True)
    try:
        with torch.enable_grad():
            yield
    finally:
        for p in frozen:
            p.requires_grad_(False)


def hutchinson_traces(
    model: nn.Module, names: Sequence[str], batches: Sequence[Any], loss_fn: LossFn, probes: int = 8, seed: int = 0
) -> dict[str, float]:
    """Tr(∂²L/∂W²) per layer by Hutchinson (Tr H = E[vᵀHv], v Rademacher; HAWQ-V2), ``probes`` vectors, each
    Hessian-vector product through double backpropagation over every calibration batch."""
    params = [model.get_submodule(n).weight for n in names]
    generator = torch.Generator().manual_seed(seed)
    sums = [0.0] * len(names)
    count = sum(_size(b) for b in batches)
    with _grad_on(params):
        for _ in range(probes):
            vs = [(torch.randint(0, 2, p.shape, generator=generator) * 2 - 1).to(p) for p in params]
            for batch in batches:
                grads = torch.autograd.grad(loss_fn(model, batch), params, create_graph=True)
                hvs = torch.autograd.grad(grads, params, vs)
                for k, (v, hv) in enumerate(zip(vs, hvs)):
                    sums[k] += float((v * hv).sum()) * _size(batch) / count
    return {n: s / probes for n, s in zip(names, sums)}


def fisher_diagonal(
    model: nn.Module, names: Sequence[str], batches: Sequence[Any], loss_fn: LossFn
) -> dict[str, Tensor]:
    """The empirical Fisher diagonal F = (1/N) Σ_samples (∂ℓ_n/∂W)², one backward pass per sample."""
    params = [model.get_submodule(n).weight for n in names]
    acc = [torch.zeros_like(p) for p in params]
    count = 0
    with _grad_on(params):
        for batch in batches:
            for i in range(_size(batch)):
                grads = torch.autograd.grad(loss_fn(model, _slice(batch, i)), params)
                for a, g in zip(acc, grads):
                    a += g.detach() ** 2
                count += 1
    return {n: a / count for n, a in zip(names, acc)}
