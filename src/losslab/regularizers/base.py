"""The regularizer protocol, the registry, and the weight/activation selectors every regularizer shares.

A regularizer is a small object the trainer calls at fixed points of a training step::

    reg = create("lp_grad", p=2, lam=0.05)
    reg.attach(model)                                  # once, before training (registers forward hooks)
    reg.set_active(True)                               # hooks record only while active (see Schedule.set_epoch)
    logits = model(x)
    loss = cross_entropy(logits, y)
    r = reg.loss_term(model, loss, batch_size=x.shape[0])   # lambda * R, in the graph, or None
    (loss + r).backward()
    reg.grad_term(model)                               # gradient-side terms (Frobenius decay), before step
    optimizer.step()
    reg.detach()                                       # after training

Weights are selected by module type (a callable on modules), never by name substrings: by default the
``.weight`` of every ``nn.Conv2d`` and ``nn.Linear`` in ``model.modules()`` order.
"""

from __future__ import annotations

import abc
import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from losslab.errors import ConfigError, LosslabError, check_range
from losslab.registry import Registry

ModuleSelector = Callable[[nn.Module], bool]


def is_conv_or_linear(module: nn.Module) -> bool:
    """The default weight selector: ``True`` for ``nn.Conv2d`` and ``nn.Linear`` (subclasses included)."""
    return isinstance(module, (nn.Conv2d, nn.Linear))


def named_weight_tensors(model: nn.Module, selector: ModuleSelector | None = None) -> list[tuple[str, nn.Parameter]]:
    """``(module name, module.weight)`` for every module the selector accepts, in ``model.modules()`` order.

    Modules without a ``weight`` Parameter, and weights that do not require grad, are skipped. Biases,
    normalization γ/β and running statistics are never included.
    """
    select = selector or is_conv_or_linear
    out = []
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if select(module) and isinstance(weight, nn.Parameter) and weight.requires_grad:
            out.append((name, weight))
    return out


def weight_tensors(model: nn.Module, selector: ModuleSelector | None = None) -> list[nn.Parameter]:
    """The weight tensors a regularizer covers (default: ``.weight`` of every Conv2d and Linear, modules() order)."""
    return [w for _, w in named_weight_tensors(model, selector)]


def default_activation_names(model: nn.Module) -> list[str]:
    """The module names whose outputs are the model's activations: ``model.activation_names`` if it exists.

    Raises :class:`ConfigError` when the model declares none, telling the user how to pass names instead.
    """
    names = getattr(model, "activation_names", None)
    if not names:
        raise ConfigError(
            f"{type(model).__name__} has no 'activation_names' attribute, so the activations to regularize are "
            "unknown; pass activation_names=[module names] (e.g. the post-ReLU modules) or activations=False "
            "(CLI: --no-activation-gradients)"
        )
    return list(names)


class ActivationCapture:
    """Forward hooks that keep the outputs of named modules in the autograd graph.

    A hook records a module's output only while ``gate()`` is true (the owner's ``active`` flag), the module
    is in training mode and grad mode is enabled, so evaluation under ``no_grad`` and unregularized epochs
    keep nothing alive.
    ``take()`` returns the recorded tensors (in call order) and forgets them.
    """

    def __init__(self, gate: Callable[[], bool]) -> None:
        self._gate = gate
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._captured: list[Tensor] = []

    def attach(self, model: nn.Module, names: Sequence[str]) -> None:
        """Hook the modules ``names`` of ``model`` (``ConfigError`` for a name that is not a submodule)."""
        self.detach()
        modules = dict(model.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            shown = ", ".join(list(modules)[1:12])
            raise ConfigError(
                f"activation_names {missing} are not modules of {type(model).__name__}; "
                f"use names from model.named_modules(), e.g. {shown}, ..."
            )
        self._handles = [modules[n].register_forward_hook(self._record) for n in names]

    def _record(self, module: nn.Module, inputs: Any, output: Any) -> None:
        if not (self._gate() and module.training and torch.is_grad_enabled()):
            return
        if not isinstance(output, Tensor):
            raise LosslabError(
                f"activation hook on {type(module).__name__} got a {type(output).__name__}, not a Tensor; "
                "hook a module whose forward returns one tensor"
            )
        self._captured.append(output)

    def take(self) -> list[Tensor]:
        """The tensors recorded since the last call, in forward order; the internal list is cleared."""
        captured, self._captured = self._captured, []
        return captured

    def detach(self) -> None:
        """Remove all hooks and forget recorded tensors."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._captured = []


class Regularizer(abc.ABC):
    """A penalty on a model, switched on per epoch by a :class:`~losslab.regularizers.schedule.Schedule`.

    Subclasses set ``name`` (the log key is ``f"reg/{name}"``) and implement :meth:`loss_term` and/or
    :meth:`grad_term`. ``active`` gates activation capture; the trainer flips it with :meth:`set_active`
    (``Schedule.set_epoch`` does this for every regularizer of a schedule).
    """

    name: str = "regularizer"

    def __init__(self) -> None:
        self.active = True

    def attach(self, model: nn.Module) -> None:  # noqa: B027 - optional hook, no-op by default
        """Prepare for training on ``model`` (e.g. register forward hooks). Called once before training."""

    def detach(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Undo :meth:`attach` (remove hooks, drop captured tensors)."""

    def set_active(self, flag: bool) -> None:
        """Switch the regularizer on or off; while off, hooks record nothing."""
        self.active = bool(flag)

    @abc.abstractmethod
    def loss_term(self, model: nn.Module, task_loss: Tensor, batch_size: int) -> Tensor | None:
        """λ·R as a scalar in the autograd graph (added to the batch-mean ``task_loss``), or ``None``."""

    def fused_loss_term(self, model: nn.Module, task_loss: Tensor, batch_size: int) -> Tensor | None:
        """Optional faster path: :meth:`loss_term` plus a surrogate whose gradient is ∂task_loss/∂θ for every
        trainable parameter, taken from the same autograd pass. A caller that gets a tensor backpropagates
        ``task_loss.detach() + term`` instead of ``task_loss + term`` (same gradients, one backward pass fewer).
        ``None`` (the default) means unsupported: use :meth:`loss_term`."""
        return None

    def grad_term(self, model: nn.Module) -> Tensor | None:
        """Add a gradient-side term to ``.grad`` (after backward, before the step); return its detached value."""
        return None

    def no_weight_decay_params(self, model: nn.Module) -> list[nn.Parameter]:
        """Parameters the optimizer must place in a ``weight_decay=0`` group (default: none)."""
        return []

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def at_least_fp32(tensor: Tensor) -> Tensor:
    """``tensor`` in float32, or unchanged if it already is float32/float64 (fp16/bf16 are upcast)."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def check_lambda(key: str, value: float) -> float:
    """Validate a regularization strength (a finite real >= 0) and return it as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key}={value!r} must be a number >= 0")
    check_range(key, float(value), low=0.0)
    if not math.isfinite(value):
        raise ConfigError(f"{key}={value!r} must be finite")
    return float(value)


REGULARIZERS: Registry[Regularizer] = Registry("regularizer")


def create(name: str, **kwargs: Any) -> Regularizer:
    """Build the regularizer registered as ``name`` (or an alias) with ``kwargs``.

    Unknown names and keyword arguments the factory does not take raise :class:`ConfigError` listing the
    valid choices, before anything is built.
    """
    try:
        factory = REGULARIZERS.get(name)
    except LosslabError as err:
        raise ConfigError(str(err)) from None
    params = inspect.signature(factory).parameters
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        allowed = ", ".join(p for p in params if p != "self")
        raise ConfigError(f"regularizer {name!r} does not take {unknown}; allowed keys: {allowed}")
    return factory(**kwargs)


def list_regularizers() -> list[str]:
    """Canonical names of all registered regularizers, sorted."""
    return REGULARIZERS.names()
