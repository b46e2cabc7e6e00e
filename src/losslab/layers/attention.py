"""Per-head Frobenius decay and spectral rebalancing for fused-QKV attention (timm ViT ``Attention``).

``specs/factorized.md`` §6 (Khodak et al., ICLR 2021). For H heads of size d_h, ``qkv.weight`` (3·H·d_h × d)
holds row blocks Q_h, K_h, V_h (d_h×d) and ``proj.weight`` (d_out × H·d_h) column blocks O_h. The logits use
the product Q_hᵀK_h and the output O_hV_h, so the penalties act on those products, batched over heads::

    fd = AttentionFrobeniusDecay(lam=1e-4, qk=True, ov=True)
    fd.attach(vit)                                       # ConfigError if the model has no fused-QKV attention
    loss.backward(); fd.grad_term(vit); opt.step()      # λ-gradients added into .grad, returns the penalty
    spectral_rebalance_attention(vit)                    # same function, Q_hQ_hᵀ = K_hK_hᵀ = diag(Σ)
    spectral_rebalance_attention(vit, ov=False)          # the QK form only
    attention_statistics(vit)                            # {'qk_frob_norm': ..., 'ov_nuclear_norm': ..., ...}

Modules are found by duck typing: ``qkv`` and ``proj`` are ``nn.Linear`` and ``num_heads`` is an int.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from losslab.errors import ConfigError
from losslab.regularizers.base import Regularizer, check_lambda

SIDES: tuple[str, ...] = ("grad", "loss")


def attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every fused-QKV attention module (``qkv``/``proj`` Linears, int ``num_heads``)."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(getattr(m, "qkv", None), nn.Linear)
        and isinstance(getattr(m, "proj", None), nn.Linear)
        and isinstance(getattr(m, "num_heads", None), int)
    ]


def _head_blocks(attn: nn.Module, weight_q: Tensor, weight_o: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Views Q, K, V (H, d_h, d) of the qkv weight and O (H, d_out, d_h) of the proj weight."""
    heads = attn.num_heads
    d_h = weight_q.shape[0] // (3 * heads)
    q, k, v = weight_q.view(3, heads, d_h, weight_q.shape[1]).unbind(0)
    o = weight_o.view(weight_o.shape[0], heads, d_h).permute(1, 0, 2)
    return q, k, v, o


def _gram(x: Tensor) -> Tensor:
    """Batched x xᵀ."""
    return torch.bmm(x, x.transpose(1, 2))


def _gram_t(x: Tensor) -> Tensor:
    """Batched xᵀ x."""
    return torch.bmm(x.transpose(1, 2), x)


class AttentionFrobeniusDecay(Regularizer):
    """Σ_h (λ/2)‖Q_hᵀK_h‖²_F (``qk``) + Σ_h (λ/2)‖O_hV_h‖²_F (``ov``) over all fused-QKV attention modules.

    Gradients (§6): ∂Q_h = λ(K_hK_hᵀ)Q_h, ∂K_h = λ(Q_hQ_hᵀ)K_h, ∂O_h = λO_h(V_hV_hᵀ), ∂V_h = λ(O_hᵀO_h)V_h, formed
    with ``bmm`` over heads; biases and the 1/√d_h scale are not penalized. Enabling a form moves its raw weights
    (the whole fused ``qkv.weight``; ``proj.weight`` for ``ov``) to the weight-decay-0 group; rows of the fused
    weight that no enabled form covers (V rows with only ``qk``, Q/K rows with only ``ov``) then get plain
    (λ/2)‖·‖² decay here, which equals the coupled weight decay they lost when λ is the run's weight decay.
    ``side="grad"`` adds gradients in :meth:`grad_term`; ``side="loss"`` returns the penalty from :meth:`loss_term`.
    """

    name = "attention_frobenius_decay"

    def __init__(self, lam: float, *, qk: bool = True, ov: bool = True, side: str = "grad") -> None:
        super().__init__()
        self.lam = check_lambda("lam", lam)
        if not (qk or ov):
            raise ConfigError("AttentionFrobeniusDecay needs qk=True or ov=True (both are off)")
        if side not in SIDES:
            raise ConfigError(f"side={side!r} is not allowed; choose one of: {', '.join(SIDES)}")
        self.qk, self.ov, self.side = bool(qk), bool(ov), side

    def attach(self, model: nn.Module) -> None:
        """Check that ``model`` has fused-QKV attention modules (ConfigError otherwise)."""
        if not attention_modules(model):
            raise ConfigError(
                f"AttentionFrobeniusDecay found no attention module with qkv/proj Linears and num_heads in "
                f"{type(model).__name__}; use a timm ViT-style model or drop the attention FD"
            )

    def _penalty_and_grads(self, attn: nn.Module) -> tuple[Tensor, Tensor, Tensor]:
        """(penalty, grad of qkv.weight, grad of proj.weight) of one module; differentiable penalty."""
        w_qkv, w_o = attn.qkv.weight, attn.proj.weight
        q, k, v, o = _head_blocks(attn, w_qkv, w_o)
        lam = self.lam
        g_qkv = torch.zeros_like(w_qkv).view(3, *q.shape)
        g_o = torch.zeros_like(o)
        penalty = w_qkv.new_zeros(())
        if self.qk:
            qq, kk = _gram(q), _gram(k)
            penalty = penalty + 0.5 * lam * (qq * kk).sum()
            g_qkv[0], g_qkv[1] = lam * torch.bmm(kk.detach(), q.detach()), lam * torch.bmm(qq.detach(), k.detach())
        else:
            penalty = penalty + 0.5 * lam * (q.pow(2).sum() + k.pow(2).sum())
            g_qkv[0], g_qkv[1] = lam * q.detach(), lam * k.detach()
        if self.ov:
            oo, vv = _gram_t(o), _gram(v)
            penalty = penalty + 0.5 * lam * (oo * vv).sum()
            g_o = lam * torch.bmm(o.detach(), vv.detach())
            g_qkv[2] = lam * torch.bmm(oo.detach(), v.detach())
        else:
            penalty = penalty + 0.5 * lam * v.pow(2).sum()
            g_qkv[2] = lam * v.detach()
        return penalty, g_qkv.reshape(w_qkv.shape), g_o.permute(1, 0, 2).reshape(w_o.shape)

    def loss_term(self, model: nn.Module, task_loss: Tensor, batch_size: int) -> Tensor | None:
        """With ``side="loss"``: the penalty in the autograd graph; otherwise ``None``."""
        if self.side != "loss":
            return None
        return self.penalty(model)

    def penalty(self, model: nn.Module) -> Tensor:
        """The penalty summed over attention modules, in the autograd graph."""
        return torch.stack([self._penalty_and_grads(m)[0] for _, m in attention_modules(model)]).sum()

    def grad_term(self, model: nn.Module) -> Tensor | None:
        """With ``side="grad"``: add the closed-form λ-gradients into ``.grad`` in place; return the penalty."""
        if self.side != "grad":
            return None
        total = []
        with torch.no_grad():
            for _, attn in attention_modules(model):
                penalty, g_qkv, g_o = self._penalty_and_grads(attn)
                total.append(penalty)
                targets = [(attn.qkv.weight, g_qkv)] + ([(attn.proj.weight, g_o)] if self.ov else [])
                for param, grad in targets:
                    if param.grad is None:
                        param.grad = grad.clone()
                    else:
                        param.grad.add_(grad)
        return torch.stack(total).sum()

    def no_weight_decay_params(self, model: nn.Module) -> list[nn.Parameter]:
        """``qkv.weight`` of every module, plus ``proj.weight`` when ``ov`` is on."""
        out = []
        for _, attn in attention_modules(model):
            out.append(attn.qkv.weight)
            if self.ov:
                out.append(attn.proj.weight)
        return out


def _product_svd(left: Tensor, right: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Thin SVD (A, σ, Bᵀ) of the batched low-rank product P = left·right, left (H, m, r), right (H, r, n).

    Through QR: left = Q_l R_l, rightᵀ = Q_r R_r, so P = Q_l (R_l R_rᵀ) Q_rᵀ and only the small core R_l R_rᵀ
    (at most r×r) is decomposed; exact, and O(H·(m+n)·r²) instead of an SVD of the m×n product.
    """
    q_l, r_l = torch.linalg.qr(left)
    q_r, r_r = torch.linalg.qr(right.transpose(1, 2))
    u, s, vh = torch.linalg.svd(torch.bmm(r_l, r_r.transpose(1, 2)))
    return torch.bmm(q_l, u), s, torch.bmm(vh, q_r.transpose(1, 2))


def _balanced_split(left: Tensor, right: Tensor, d_h: int) -> tuple[Tensor, Tensor]:
    """For P = left·right = A Σ Bᵀ (batched): (A_k Σ_k^{1/2}, Σ_k^{1/2} B_kᵀ) with the top k = d_h terms."""
    a, s, bh = _product_svd(left, right)
    root = s[:, :d_h].sqrt()
    return a[:, :, :d_h] * root[:, None, :], root[:, :, None] * bh[:, :d_h, :]


def _is_identity(module: nn.Module | None) -> bool:
    return module is None or isinstance(module, nn.Identity)


@torch.no_grad()
def spectral_rebalance_attention(model: nn.Module, *, qk: bool = True, ov: bool = True) -> int:
    """Attention SI (§6): per head set Q_hᵀ = AΣ^{1/2}, K_h = Σ^{1/2}Bᵀ from the SVD of Q_hᵀK_h (``qk``), and
    O_h = AΣ^{1/2}, V_h = Σ^{1/2}Bᵀ from the SVD of O_hV_h (``ov``); top d_h terms, float64.

    The products are unchanged; the q/k/v biases are mapped by the same per-head d_h×d_h transforms
    (b' = R b with R = Q'Q⁺), so the module output is unchanged when each head's blocks have full rank d_h.
    Afterwards Q_hQ_hᵀ = K_hK_hᵀ = diag(Σ) and O_hᵀO_h = V_hV_hᵀ = diag(Σ) (so ‖Q_h‖_F = ‖K_h‖_F and
    ‖O_h‖_F = ‖V_h‖_F). Returns the number of modules; ConfigError when there is none or a module has
    normalization or a gate between the projections.
    """
    if not (qk or ov):
        raise ConfigError("spectral_rebalance_attention needs qk=True or ov=True (both are off)")
    modules = attention_modules(model)
    if not modules:
        raise ConfigError(f"spectral_rebalance_attention found no fused-QKV attention module in {type(model).__name__}")
    for name, attn in modules:
        if not all(_is_identity(getattr(attn, key, None)) for key in ("q_norm", "k_norm", "norm", "gate")):
            raise ConfigError(
                f"spectral_rebalance_attention cannot keep {name!r}'s output: it has q/k normalization, scale norm "
                "or a gate between the projections; build the model without them or skip the rebalance"
            )
    for _, attn in modules:
        w_qkv, w_o = attn.qkv.weight, attn.proj.weight
        q, k, v, o = (t.to(torch.float64) for t in _head_blocks(attn, w_qkv, w_o))
        d_h = q.shape[1]
        old = torch.stack([q, k, v])
        new = old.clone()
        if qk:
            q_t, new[1] = _balanced_split(q.transpose(1, 2), k, d_h)
            new[0] = q_t.transpose(1, 2)
        if ov:
            o_new, new[2] = _balanced_split(o, v, d_h)
            w_o.copy_(o_new.permute(1, 0, 2).reshape(w_o.shape).to(w_o.dtype))
        bias = attn.qkv.bias
        if bias is not None:
            b = bias.to(torch.float64).view(3, q.shape[0], d_h, 1)
            changed = [i for i, on in ((0, qk), (1, qk), (2, ov)) if on]
            b[changed] = new[changed] @ torch.linalg.pinv(old[changed]) @ b[changed]
            bias.copy_(b.reshape(bias.shape).to(bias.dtype))
        w_qkv.copy_(new.reshape(w_qkv.shape).to(w_qkv.dtype))
    return len(modules)


@torch.no_grad()
def attention_statistics(model: nn.Module) -> dict[str, float]:
    """Per-head means over all fused-QKV attention modules of the products' norms, float64; ``{}`` without any.

    For the QK form (P_h = Q_hᵀK_h, factors Q_h, K_h) and the OV form (P_h = O_hV_h, factors O_h, V_h):
    ``<form>_frob_norm`` ‖P_h‖_F, ``<form>_nuclear_norm`` ‖P_h‖_*, ``<form>_factor_sq_norm`` ½(‖first‖²_F +
    ‖second‖²_F). The last is what weight decay on the raw weights penalizes; it is ≥ the nuclear norm, with
    equality exactly when the head's factors are balanced (after :func:`spectral_rebalance_attention`).
    These are the attention analogues of the §8 factor logs of :func:`losslab.layers.normalization.factor_stats`.
    """
    rows: list[Tensor] = []
    for _, attn in attention_modules(model):
        q, k, v, o = (t.to(torch.float64) for t in _head_blocks(attn, attn.qkv.weight, attn.proj.weight))
        row = []
        for left, right in ((q.transpose(1, 2), k), (o, v)):
            sigma = _product_svd(left, right)[1]
            row.append(sigma.pow(2).sum(1).sqrt())
            row.append(sigma.sum(1))
            row.append(0.5 * (left.pow(2).sum((1, 2)) + right.pow(2).sum((1, 2))))
        rows.append(torch.stack(row, 1))
    if not rows:
        return {}
    means = torch.cat(rows).mean(0).tolist()
    keys = [f"{form}_{stat}" for form in ("qk", "ov") for stat in ("frob_norm", "nuclear_norm", "factor_sq_norm")]
    return dict(zip(keys, means))
