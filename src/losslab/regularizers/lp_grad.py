"""LPGrad: p-norms of the task-loss gradient w.r.t. weights and activations, trained by double backprop.

Alizadeh et al., *Gradient ℓ1 Regularization for Quantization Robustness* (ICLR 2020); RegulQuant's L1Grad/L2Grad.
With L the batch-mean task loss, B the batch size, g_l = ∂L/∂W_l and h_k = B·∂L/∂a_k::

    R_w = Σ_l ‖g_l‖_p                  (combine="layer"; "global": ‖concat_l g_l‖_p; squared: Σ_l ‖g_l‖₂²)
    R_a = Σ_k B^(−1/p)·‖h_k‖_p         (legacy_activation_scale=True: R_a / B, RegulQuant's double division)
    R   = lam_w·R_w + lam_a·R_a

Example::

    reg = create("lp_grad", p=2, lam=0.05)          # or create("l2grad", lam=0.05)
    reg.attach(model)                                # hooks model.activation_names (or activation_names=[...])
    loss = F.cross_entropy(model(x), y)
    (loss + reg.loss_term(model, loss, x.shape[0])).backward()

All gradients come from one ``torch.autograd.grad(..., create_graph=True)`` call; nothing goes through ``.grad``.
Norms are taken in fp32 with ``torch.linalg.vector_norm``, whose backward is finite at g = 0.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from losslab.errors import ConfigError, LosslabError, check_range
from losslab.regularizers.base import (
    REGULARIZERS,
    ActivationCapture,
    ModuleSelector,
    Regularizer,
    at_least_fp32,
    check_lambda,
    default_activation_names,
    weight_tensors,
)
from losslab.regularizers.double_backward import use_fast_double_backward

COMBINE_CHOICES = ("layer", "global")


def _norms(grads: Sequence[Tensor | None], p: float, scale: float, device: torch.device) -> Tensor:
    """p-norms (at least fp32) of ``grads`` (``None``: unused input, skipped), each divided by ``scale``."""
    norms = [torch.linalg.vector_norm(at_least_fp32(g), ord=p) for g in grads if g is not None]
    if not norms:
        return torch.zeros(0, device=device)
    out = torch.stack(norms)
    return out / scale if scale != 1.0 else out


@REGULARIZERS.register("lp_grad", "lpgrad")
class LPGrad(Regularizer):
    """λ_w·Σ_l ‖∂L/∂W_l‖_p + λ_a·Σ_k B^(−1/p)‖B·∂L/∂a_k‖_p (see the module docstring).

    Args:
        p: the norm order, any real >= 1 (``math.inf`` allowed).
        lam: strength of both terms (alias ``lmbda``), unless ``lam_w`` / ``lam_a`` override it.
        lam_w, lam_a: separate strengths of the weight and activation terms.
        activations: include the activation term (False: weights only, RegulQuant's ``--no_activation_gradients``).
        combine: ``"layer"`` sums per-tensor norms; ``"global"`` takes one norm of all weight gradients.
        squared: Σ_l ‖g_l‖₂² instead of Σ_l ‖g_l‖₂ (p = 2 only).
        legacy_activation_scale: divide R_a by B as the original code did.
        activation_names: modules whose outputs are the activations a_k (default ``model.activation_names``).
        selector: which modules' ``.weight`` are penalized (default: Conv2d and Linear).
        grad_scale: static loss scale S for AMP: gradients are taken of S·L and divided by S in fp32, so small
            fp16 gradients do not underflow. ``combine`` and ``squared`` act on the weight term only.
        fast_double_backward: while attached, route the model's BatchNorm and Conv2d layers through closed-form
            double backwards (:mod:`losslab.regularizers.double_backward`): same values and gradients (float64
            tests), fewer and faster kernels than PyTorch's generic second-order formulas.

    Activation capture: :meth:`attach` registers forward hooks that record outputs only while ``self.active``
    (see :meth:`set_active`), the module is training and grad mode is on; :meth:`loss_term` consumes them.
    After each call, ``last_parts`` holds the detached unweighted ``{"w": R_w, "a": R_a}`` for logging.
    """

    name = "lp_grad"

    def __init__(
        self,
        *,
        p: float,
        lam: float | None = None,
        lmbda: float | None = None,
        lam_w: float | None = None,
        lam_a: float | None = None,
        activations: bool = True,
        combine: str = "layer",
        squared: bool = False,
        legacy_activation_scale: bool = False,
        activation_names: Sequence[str] | None = None,
        selector: ModuleSelector | None = None,
        grad_scale: float = 1.0,
        fast_double_backward: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, (int, float)):
            raise ConfigError(f"p={p!r} must be a real number >= 1 (e.g. p=1 for L1Grad, p=2 for L2Grad)")
        check_range("p", float(p), low=1.0)
        if lam is not None and lmbda is not None:
            raise ConfigError(f"give lam or its alias lmbda, not both (lam={lam!r}, lmbda={lmbda!r})")
        lam = lmbda if lam is None else lam
        if lam is None and (lam_w is None or (activations and lam_a is None)):
            raise ConfigError("lp_grad needs a strength: lam=... (or lam_w=... and lam_a=...)")
        if combine not in COMBINE_CHOICES:
            raise ConfigError(f"combine={combine!r} is not allowed; choose one of: {', '.join(COMBINE_CHOICES)}")
        if squared and p != 2:
            raise ConfigError(f"squared=True needs p=2 (got p={p!r}); drop squared or set p=2")
        if squared and combine == "global":
            raise ConfigError("squared=True sums per-layer squared norms; it cannot be combined with combine='global'")
        check_range("grad_scale", float(grad_scale), low=0.0, low_inclusive=False)
        self.p = float(p)
        self.lam_w = check_lambda("lam_w", lam if lam_w is None else lam_w)
        self.lam_a = check_lambda("lam_a", lam if lam_a is None else lam_a) if activations else 0.0
        self.activations = bool(activations) and self.lam_a > 0
        self.combine = combine
        self.squared = bool(squared)
        self.legacy_activation_scale = bool(legacy_activation_scale)
        self.activation_names = list(activation_names) if activation_names is not None else None
        self.selector = selector
        self.grad_scale = float(grad_scale)
        self.fast_double_backward = bool(fast_double_backward)
        self._restore_layers: Callable[[], None] | None = None
        self._model: nn.Module | None = None
        self.last_parts: dict[str, Tensor] = {}
        self._capture = ActivationCapture(lambda: self.active)

    def attach(self, model: nn.Module) -> None:
        """Hook the activation modules (if the activation term is on; ConfigError if they cannot be found) and,
        with ``fast_double_backward``, swap in the closed-form BatchNorm/Conv2d double backwards while active."""
        if self.activations:
            names = self.activation_names if self.activation_names is not None else default_activation_names(model)
            self._capture.attach(model, names)
        self._model = model
        self._sync_fast_layers()

    def detach(self) -> None:
        """Remove the activation hooks and give the BatchNorm/Conv2d layers their own forward back."""
        self._capture.detach()
        self._model = None
        self._restore_fast_layers()

    def set_active(self, flag: bool) -> None:
        """Switch on/off; the layer swap of ``fast_double_backward`` follows, so unregularized epochs run as usual."""
        super().set_active(flag)
        self._sync_fast_layers()

    def _sync_fast_layers(self) -> None:
        want = self.fast_double_backward and self.active and self._model is not None
        if want and self._restore_layers is None:
            self._restore_layers = use_fast_double_backward(self._model)
        elif not want:
            self._restore_fast_layers()

    def _restore_fast_layers(self) -> None:
        if self._restore_layers is not None:
            self._restore_layers()
            self._restore_layers = None

    def _weight_term(self, grads: Sequence[Tensor | None], device: torch.device) -> Tensor:
        norms = _norms(grads, self.p, self.grad_scale, device)
        if self.squared:
            return norms.square().sum()
        if self.combine == "global":
            return torch.linalg.vector_norm(norms, ord=self.p)
        return norms.sum()

    def _activation_term(self, grads: Sequence[Tensor | None], batch_size: int, device: torch.device) -> Tensor:
        # ‖h_k‖_p = B·‖∂L/∂a_k‖_p, times B^(-1/p); the legacy scale divides once more by B.
        exponent = (0.0 if self.legacy_activation_scale else 1.0) - 1.0 / self.p
        return _norms(grads, self.p, self.grad_scale, device).sum() * float(batch_size) ** exponent

    def loss_term(self, model: nn.Module, task_loss: Tensor, batch_size: int) -> Tensor | None:
        """λ_w·R_w + λ_a·R_a with graph (double backprop); consumes the captured activations."""
        return self._penalty(model, task_loss, batch_size, fuse=False)

    def fused_loss_term(self, model: nn.Module, task_loss: Tensor, batch_size: int) -> Tensor | None:
        """λ_w·R_w + λ_a·R_a plus S − S.detach(), S = Σ_θ ⟨θ, sg(∂L/∂θ)⟩ over all trainable parameters.

        The first-order gradients of every parameter come from the same ``create_graph`` pass that R needs, so
        backpropagating ``L.detach() + term`` gives ∂L/∂θ + ∂R/∂θ exactly without a second backward pass through
        the task loss (about 1.6× faster per step on a CIFAR ResNet-20; BENCHMARKS.md).
        """
        return self._penalty(model, task_loss, batch_size, fuse=True)

    def _penalty(self, model: nn.Module, task_loss: Tensor, batch_size: int, fuse: bool) -> Tensor | None:
        acts = self._capture.take() if self.activations else []
        if self.activations and not acts:
            raise LosslabError(
                "lp_grad found no captured activations: call attach(model) before training, keep the regularizer "
                "active (set_active(True)) and run the forward pass in train mode with grad enabled"
            )
        weights = weight_tensors(model, self.selector) if self.lam_w > 0 else []
        if not weights and not acts:
            return None
        params = [p for p in model.parameters() if p.requires_grad] if fuse else weights
        position = {id(p): i for i, p in enumerate(params)}
        scaled = task_loss * self.grad_scale if self.grad_scale != 1.0 else task_loss
        grads = torch.autograd.grad(scaled, [*params, *acts], create_graph=True, allow_unused=True)
        total = torch.zeros((), device=task_loss.device)
        self.last_parts = {}
        if weights:
            r_w = self._weight_term([grads[position[id(w)]] for w in weights], task_loss.device)
            self.last_parts["w"] = r_w.detach()
            total = total + self.lam_w * r_w
        if acts:
            r_a = self._activation_term(grads[len(params) :], batch_size, task_loss.device)
            self.last_parts["a"] = r_a.detach()
            total = total + self.lam_a * r_a
        if fuse:
            surrogate = sum(
                ((p * (g.detach() / self.grad_scale)).sum() for p, g in zip(params, grads) if g is not None),
                torch.zeros((), device=task_loss.device),
            )
            total = total + surrogate - surrogate.detach()
        return total


def _preset_p(p: float, name: str) -> Callable[..., LPGrad]:
    """A factory for LPGrad with ``p`` fixed (``l1grad``, ``l2grad``); its signature lists LPGrad's other keys."""

    def factory(**kwargs: object) -> LPGrad:
        reg = LPGrad(p=p, **kwargs)  # type: ignore[arg-type]
        reg.name = name
        return reg

    signature = inspect.signature(LPGrad)
    factory.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[q for q in signature.parameters.values() if q.name != "p"]
    )
    factory.__name__ = name
    factory.__doc__ = f"LPGrad with p={p:g} (RegulQuant's {name}); same keys as LPGrad except p."
    return factory


l1grad = REGULARIZERS.register("l1grad")(_preset_p(1.0, "l1grad"))
l2grad = REGULARIZERS.register("l2grad")(_preset_p(2.0, "l2grad"))
