"""Frobenius decay (FD): (λ/2)‖U Vᵀ‖²_F or (λ/2)‖U M Vᵀ‖²_F on factorized layers, from r×r Gram matrices.

Khodak et al., *Initialization and Regularization of Factorized Neural Layers* (ICLR 2021). A factorized
module is any module with a method ``factors() -> (U, V)`` or ``(U, M, V)`` such that W = U Vᵀ or U M Vᵀ,
with U: (…, m, r₁), M: (…, r₁, r₂), V: (…, n, r₂) (leading dims, e.g. attention heads, are summed over).
The factors may be parameters or views of parameters (transposes, reshapes): gradients are routed back
through autograd. With A = UᵀU and B = VᵀV::

    penalty  (λ/2)·tr(Mᵀ A M B)            (M = I for two factors)
    ∂U = λ·U M B Mᵀ,   ∂M = λ·A M B,   ∂V = λ·V Mᵀ A M

Cost O((m + n)·r²); the m×n product is never formed. The default ``side="grad"`` adds these gradients to
``.grad`` after backward and before the optimizer step (so momentum treats them like coupled weight decay);
``side="loss"`` adds the penalty to the loss instead, which gives the same gradients.

Example::

    fd = create("frobenius_decay", lam=1e-4)
    fd.attach(model)                                   # ConfigError if no module has factors()
    groups = [{"params": fd.no_weight_decay_params(model), "weight_decay": 0.0}, ...]
    loss.backward(); fd.grad_term(model); optimizer.step()
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from losslab.errors import ConfigError, LosslabError
from losslab.regularizers.base import REGULARIZERS, Regularizer, at_least_fp32, check_lambda

SIDES = ("grad", "loss")


def factorized_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` for every module of ``model`` with a callable ``factors()`` (duck typing)."""
    return [(name, m) for name, m in model.named_modules() if callable(getattr(m, "factors", None))]


def _check_factors(factors: Sequence[Tensor]) -> None:
    """Raise LosslabError unless ``factors`` is (U, V) or (U, M, V) with matching inner dimensions."""
    if len(factors) not in (2, 3) or any(f.dim() < 2 for f in factors):
        shapes = [tuple(f.shape) for f in factors]
        raise LosslabError(f"factors() must return (U, V) or (U, M, V) matrices, got shapes {shapes}")
    u, v = factors[0], factors[-1]
    r1, r2 = (u.shape[-1], v.shape[-1]) if len(factors) == 2 else tuple(factors[1].shape[-2:])
    if u.shape[-1] != r1 or v.shape[-1] != r2 or (len(factors) == 2 and r1 != r2):
        shapes = [tuple(f.shape) for f in factors]
        raise LosslabError(f"factors() shapes {shapes} do not chain: need U (m, r1), [M (r1, r2),] V (n, r2)")


def _grams(factors: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """A = UᵀU and B = VᵀV (r×r, batched over leading dims), in at least fp32."""
    u, v = at_least_fp32(factors[0]), at_least_fp32(factors[-1])
    return u.mT @ u, v.mT @ v


def squared_frobenius_norm(factors: Sequence[Tensor]) -> Tensor:
    """‖U (M) Vᵀ‖²_F = tr(Mᵀ A M B), summed over leading dims; differentiable, at least fp32."""
    _check_factors(factors)
    a, b = _grams(factors)
    if len(factors) == 2:
        return (a * b).sum()
    m = at_least_fp32(factors[1])
    return ((a @ m) * (m @ b)).sum()


def frobenius_decay_grads(factors: Sequence[Tensor], lam: float) -> list[Tensor]:
    """The gradients of (λ/2)‖U (M) Vᵀ‖²_F w.r.t. each factor, in closed form (no graph; at least fp32).

    Two factors: [λ·U B, λ·V A]; three: [λ·U M B Mᵀ, λ·A M B, λ·V Mᵀ A M] with A = UᵀU, B = VᵀV.
    """
    _check_factors(factors)
    with torch.no_grad():
        a, b = _grams(factors)
        u, v = at_least_fp32(factors[0]), at_least_fp32(factors[-1])
        if len(factors) == 2:
            return [lam * (u @ b), lam * (v @ a)]
        m = at_least_fp32(factors[1])
        mb, am = m @ b, a @ m
        return [lam * (u @ (mb @ m.mT)), lam * (a @ mb), lam * (v @ (m.mT @ am))]


def frobenius_norm(module: nn.Module) -> Tensor:
    """‖U (M) Vᵀ‖_F = sqrt(tr((VᵀV)(UᵀU))) of a factorized module (with M: sqrt(tr(Mᵀ A M B))), detached."""
    with torch.no_grad():
        return squared_frobenius_norm(module.factors()).sqrt()


def _leaf_parameters(tensor: Tensor) -> list[Tensor]:
    """The leaf tensors requiring grad that ``tensor`` is computed from (itself if it is one)."""
    if tensor.grad_fn is None:
        return [tensor] if tensor.requires_grad else []
    leaves, seen, stack = [], set(), [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)
        if variable is not None:
            leaves.append(variable)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return leaves


@REGULARIZERS.register("frobenius_decay", "fd", "frobeniusdecay")
class FrobeniusDecay(Regularizer):
    """(λ/2)·Σ over factorized modules of ‖U (M) Vᵀ‖²_F, gradient-side by default.

    Args:
        lam: strength λ >= 0, normally the run's weight decay (alias ``lmbda``).
        side: ``"grad"`` (add closed-form gradients in :meth:`grad_term`) or ``"loss"`` (penalty in :meth:`loss_term`).
        after_clip: tells the trainer to call :meth:`grad_term` after gradient clipping instead of before
            (the default, as in the original Transformer code, is before clipping: FD is clipped too).
    """

    name = "frobenius_decay"

    def __init__(
        self, *, lam: float | None = None, lmbda: float | None = None, side: str = "grad", after_clip: bool = False
    ) -> None:
        super().__init__()
        if (lam is None) == (lmbda is None):
            raise ConfigError(f"frobenius_decay needs exactly one of lam or lmbda (got lam={lam!r}, lmbda={lmbda!r})")
        self.lam = check_lambda("lam", lam if lam is not None else lmbda)  # type: ignore[arg-type]
        if side not in SIDES:
            raise ConfigError(f"side={side!r} is not allowed; choose one of: {', '.join(SIDES)}")
        self.side = side
        self.after_clip = bool(after_clip)

    def attach(self, model: nn.Module) -> None:
        """Check that ``model`` has factorized modules (ConfigError otherwise)."""
        if not factorized_modules(model):
            raise ConfigError(
                f"frobenius_decay found no module with a factors() method in {type(model).__name__}; "
                "factorize the model first (losslab.layers) or drop frobenius_decay"
            )

    def loss_term(self, model: nn.Module, task_loss: Tensor, batch_size: int) -> Tensor | None:
        """With ``side="loss"``: (λ/2)·Σ ‖U (M) Vᵀ‖²_F in the graph; otherwise ``None``."""
        if self.side != "loss":
            return None
        return 0.5 * self.lam * sum(squared_frobenius_norm(m.factors()) for _, m in factorized_modules(model))

    def grad_term(self, model: nn.Module) -> Tensor | None:
        """With ``side="grad"``: add λ·∂(½‖W‖²_F)/∂factor to the factors' ``.grad``; return the detached penalty."""
        if self.side != "grad":
            return None
        penalties = []
        with torch.enable_grad():
            for _, module in factorized_modules(model):
                factors = module.factors()
                grads = frobenius_decay_grads(factors, self.lam)
                pairs = [(f, g.to(f.dtype)) for f, g in zip(factors, grads) if f.requires_grad]
                if pairs:
                    torch.autograd.backward([f for f, _ in pairs], [g for _, g in pairs])
                with torch.no_grad():
                    penalties.append(0.5 * self.lam * squared_frobenius_norm(factors))
        return torch.stack(penalties).sum() if penalties else None

    def no_weight_decay_params(self, model: nn.Module) -> list[nn.Parameter]:
        """The parameters the factors are made of, in module order, without duplicates."""
        params: dict[int, nn.Parameter] = {}
        with torch.enable_grad():
            for _, module in factorized_modules(model):
                for factor in module.factors():
                    for leaf in _leaf_parameters(factor):
                        params.setdefault(id(leaf), leaf)
        return list(params.values())
