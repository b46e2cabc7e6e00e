"""Per-head Frobenius decay and spectral rebalancing of attention, for timm's fused-QKV ViT and for seq2seq.

``specs/factorized.md`` §6 (Khodak et al., ICLR 2021). For H heads of size d_h, the Q/K/V weights hold row blocks
Q_h, K_h, V_h (d_h×d) and the output weight (d_out × H·d_h) column blocks O_h. The logits use the product
Q_hᵀK_h and the output O_hV_h, so the penalties act on those products, batched over heads. Two layouts are read
through one adapter (:func:`attention_layout`, :func:`_head_blocks`), so every function here serves both:

- ``fused``: timm's ``Attention`` — ``qkv`` (3·H·d_h × d) and ``proj`` Linears;
- ``separate``: ``q_proj``, ``k_proj``, ``v_proj``, ``out_proj`` Linears (losslab.seq2seq, HF BART/Marian style).

Usage::

    fd = AttentionFrobeniusDecay(lam=1e-4, qk=True, ov=True)
    fd.attach(model)                                     # ConfigError if the model has no attention module
    loss.backward(); fd.grad_term(model); opt.step()    # λ-gradients added into .grad, returns the penalty
    spectral_rebalance_attention(model)                  # same products, Q_hQ_hᵀ = K_hK_hᵀ = diag(Σ)
    spectral_rebalance_attention(model, ov=False)        # the QK form only
    attention_statistics(model)                          # {'qk_frob_norm': ..., 'ov_nuclear_norm': ..., ...}

Modules are found by duck typing: the Linears of one layout and an int ``num_heads``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from losslab.errors import ConfigError
from losslab.regularizers.base import Regularizer, check_lambda

SIDES: tuple[str, ...] = ("grad", "loss")
# layout name -> (Linear attribute names, index of the Linear that holds Q, K, V, O)
LAYOUTS: dict[str, tuple[tuple[str, ...], tuple[int, int, int, int]]] = {
    "fused": (("qkv", "proj"), (0, 0, 0, 1)),
    "separate": (("q_proj", "k_proj", "v_proj", "out_proj"), (0, 1, 2, 3)),
}
BLOCKS = ("q", "k", "v", "o")


def attention_layout(module: nn.Module) -> str | None:
    """``"fused"`` or ``"separate"`` when ``module`` is a multi-head attention of that layout, else ``None``."""
    if not isinstance(getattr(module, "num_heads", None), int):
        return None
    for name, (linears, _) in LAYOUTS.items():
        if all(isinstance(getattr(module, key, None), nn.Linear) for key in linears):
            return name
    return None


def attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every attention module of a known layout (see :func:`attention_layout`)."""
    return [(name, m) for name, m in model.named_modules() if attention_layout(m) is not None]


def attention_linears(attn: nn.Module) -> list[nn.Linear]:
    """The module's projection Linears in layout order (fused: qkv, proj; separate: q, k, v, out)."""
    return [getattr(attn, key) for key in LAYOUTS[attention_layout(attn)][0]]


def _block_owner(attn: nn.Module) -> tuple[int, int, int, int]:
    """Index into :func:`attention_linears` of the Linear holding Q, K, V and O."""
    return LAYOUTS[attention_layout(attn)][1]


def _head_blocks(attn: nn.Module, *tensors: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Views Q, K, V (H, d_h, d) and O (H, d_out, d_h) of the layout's weight-shaped ``tensors`` (weights or grads).

    Writing into the views writes into the tensors (``copy_`` on a parameter's view updates the parameter).
    """
    heads = attn.num_heads
    *ins, w_o = tensors
    if attention_layout(attn) == "fused":
        (w_qkv,) = ins
        d_h = w_qkv.shape[0] // (3 * heads)
        q, k, v = w_qkv.view(3, heads, d_h, w_qkv.shape[1]).unbind(0)
    else:
        q, k, v = (w.view(heads, w.shape[0] // heads, w.shape[1]) for w in ins)
    d_h = q.shape[1]
    o = w_o.view(w_o.shape[0], heads, d_h).permute(1, 0, 2)
    return q, k, v, o


def _bias_blocks(attn: nn.Module) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Views (H, d_h) of the q, k, v biases (``None`` where a projection has no bias)."""
    heads = attn.num_heads
    linears = attention_linears(attn)
    if attention_layout(attn) == "fused":
        bias = linears[0].bias
        return (None, None, None) if bias is None else tuple(bias.view(3, heads, -1).unbind(0))
    return tuple(None if lin.bias is None else lin.bias.view(heads, -1) for lin in linears[:3])


def _gram(x: Tensor) -> Tensor:
    """Batched x xᵀ."""
    return torch.bmm(x, x.transpose(1, 2))


def _gram_t(x: Tensor) -> Tensor:
    """Batched xᵀ x."""
    return torch.bmm(x.transpose(1, 2), x)


class AttentionFrobeniusDecay(Regularizer):
    """Σ_h (λ/2)‖Q_hᵀK_h‖²_F (``qk``) + Σ_h (λ/2)‖O_hV_h‖²_F (``ov``) over all attention modules.

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
        """Check that ``model`` has attention modules (ConfigError otherwise)."""
        if not attention_modules(model):
            raise ConfigError(
                f"AttentionFrobeniusDecay found no attention module (qkv/proj or q_proj/k_proj/v_proj/out_proj "
                f"Linears and num_heads) in {type(model).__name__}; use a timm ViT-style or losslab seq2seq model "
                "or drop the attention FD"
            )

    def _covered(self) -> tuple[bool, bool, bool, bool]:
        """Which of Q, K, V, O an enabled form penalizes."""
        return (self.qk, self.qk, self.ov, self.ov)

    def _no_decay_linears(self, attn: nn.Module) -> set[int]:
        """Indices of the Linears whose weight holds a penalized block (moved to the weight-decay-0 group)."""
        return {owner for owner, on in zip(_block_owner(attn), self._covered()) if on}

    def _penalty_and_grads(self, attn: nn.Module) -> tuple[Tensor, ...]:
        """(penalty, grad of each projection weight in layout order) of one module; differentiable penalty.

        Blocks no enabled form covers but whose weight is in the WD-0 group (V rows of a fused ``qkv`` with only
        ``qk``, ...) get plain (λ/2)‖·‖²; blocks in weights that keep their weight decay get nothing here.
        """
        weights = [lin.weight for lin in attention_linears(attn)]
        q, k, v, o = _head_blocks(attn, *weights)
        grads = [torch.zeros_like(w) for w in weights]
        g_q, g_k, g_v, g_o = _head_blocks(attn, *grads)
        lam = self.lam
        penalty = weights[0].new_zeros(())
        if self.qk:
            qq, kk = _gram(q), _gram(k)
            penalty = penalty + 0.5 * lam * (qq * kk).sum()
            g_q.copy_(lam * torch.bmm(kk.detach(), q.detach()))
            g_k.copy_(lam * torch.bmm(qq.detach(), k.detach()))
        if self.ov:
            oo, vv = _gram_t(o), _gram(v)
            penalty = penalty + 0.5 * lam * (oo * vv).sum()
            g_o.copy_(lam * torch.bmm(o.detach(), vv.detach()))
            g_v.copy_(lam * torch.bmm(oo.detach(), v.detach()))
        no_decay = self._no_decay_linears(attn)
        for block, grad, owner, on in zip((q, k, v, o), (g_q, g_k, g_v, g_o), _block_owner(attn), self._covered()):
            if not on and owner in no_decay:
                penalty = penalty + 0.5 * lam * block.pow(2).sum()
                grad.copy_(lam * block.detach())
        return (penalty, *grads)

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
                penalty, *grads = self._penalty_and_grads(attn)
                total.append(penalty)
                linears = attention_linears(attn)
                for index in sorted(self._no_decay_linears(attn)):
                    param = linears[index].weight
                    if param.grad is None:
                        param.grad = grads[index].clone()
                    else:
                        param.grad.add_(grads[index])
        return torch.stack(total).sum()

    def no_weight_decay_params(self, model: nn.Module) -> list[nn.Parameter]:
        """Projection weights holding a penalized block (fused: ``qkv.weight``, and ``proj.weight`` with ``ov``)."""
        out = []
        for _, attn in attention_modules(model):
            linears = attention_linears(attn)
            out.extend(linears[i].weight for i in sorted(self._no_decay_linears(attn)))
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
        raise ConfigError(f"spectral_rebalance_attention found no attention module in {type(model).__name__}")
    for name, attn in modules:
        if not all(_is_identity(getattr(attn, key, None)) for key in ("q_norm", "k_norm", "norm", "gate")):
            raise ConfigError(
                f"spectral_rebalance_attention cannot keep {name!r}'s output: it has q/k normalization, scale norm "
                "or a gate between the projections; build the model without them or skip the rebalance"
            )
    for _, attn in modules:
        views = _head_blocks(attn, *(lin.weight for lin in attention_linears(attn)))
        q, k, v, o = (t.to(torch.float64) for t in views)
        d_h = q.shape[1]
        new = [q, k, v, o]
        if qk:
            q_t, new[1] = _balanced_split(q.transpose(1, 2), k, d_h)
            new[0] = q_t.transpose(1, 2)
        if ov:
            new[3], new[2] = _balanced_split(o, v, d_h)
        # biases follow their rows: b' = R b with R = W_new W_old⁺ (d_h×d_h per head)
        for old, fresh, bias in zip((q, k, v), new[:3], _bias_blocks(attn)):
            if bias is not None and fresh is not old:
                mapped = fresh @ torch.linalg.pinv(old) @ bias.to(torch.float64).unsqueeze(-1)
                bias.copy_(mapped.squeeze(-1).to(bias.dtype))
        for view, old, fresh in zip(views, (q, k, v, o), new):
            if fresh is not old:
                view.copy_(fresh.to(view.dtype))
    return len(modules)


@torch.no_grad()
def attention_statistics(model: nn.Module) -> dict[str, float]:
    """Per-head means over all attention modules of the products' norms, float64; ``{}`` without any.

    For the QK form (P_h = Q_hᵀK_h, factors Q_h, K_h) and the OV form (P_h = O_hV_h, factors O_h, V_h):
    ``<form>_frob_norm`` ‖P_h‖_F, ``<form>_nuclear_norm`` ‖P_h‖_*, ``<form>_factor_sq_norm`` ½(‖first‖²_F +
    ‖second‖²_F). The last is what weight decay on the raw weights penalizes; it is ≥ the nuclear norm, with
    equality exactly when the head's factors are balanced (after :func:`spectral_rebalance_attention`).
    These are the attention analogues of the §8 factor logs of :func:`losslab.layers.normalization.factor_stats`.
    """
    rows: list[Tensor] = []
    for _, attn in attention_modules(model):
        q, k, v, o = (t.to(torch.float64) for t in _head_blocks(attn, *(x.weight for x in attention_linears(attn))))
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
