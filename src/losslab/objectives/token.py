"""Token-level losses of the sequence models (causal LM finetuning, translation): the classifier objectives
``ce``, ``root`` and ``root_convex`` (:mod:`losslab.objectives.cross_entropy`, :mod:`losslab.objectives.rooted`)
applied to every token's row of the ``(B, T, V)`` logits, chunked for memory. Per token they equal the registry's
``create("ce")``, ``create("root", k=k, m=m)`` and ``create("root_convex", k=k, subtract_k=True,
max_log_weight=c)`` on the flattened ``(B·T, V)`` logits with ``ignore_index`` rows masked
(``tests/objectives/test_token_loss.py``).

One :class:`torch.autograd.Function` serves every kind. Its forward walks row chunks of the ``(N, V)`` logits in
a float32 workspace (at most ``workspace_mib``), computes logsumexp, the per-token loss and the logit gradient, and
writes that gradient into one preallocated buffer of the logits' dtype, the only tensor it saves. Backward
scales the buffer in place by ``grad_output`` and returns it. Peak extra memory is therefore one logits-sized
buffer plus one float32 chunk, never more than ``F.cross_entropy`` (which saves a full log-softmax and then
allocates the gradient). See specs llm.md §1–§2 and objectives.md §3.

Kinds (``p_y`` the model's probability of the next token, ``CE = -log p_y``):

- ``ce``:          ℓ = CE,                           ∂ℓ/∂z = p − e_y
- ``root``:        ℓ = m·(1 − p_y^{1/k}) = m·(1 − e^{−CE/k}),  ∂ℓ/∂z = (m/k)·p_y^{1/k}·(p − e_y)   (RLO, k = m = 5)
- ``root_convex``: ℓ = k·(e^{CE/k} − 1),              ∂ℓ/∂z = e^{CE/k}·(p − e_y); beyond CE/k > c
  (``max_log_weight``) the C¹ linear continuation k·e^c·(1 + CE/k − c) − k, whose weight stays e^c.

``fused=True`` computes each chunk by one function, :func:`fused_chunk` (logsumexp, loss and gradient from the
logits chunk, the gradient written straight into the buffer), compiled with ``torch.compile`` on CUDA so the chunk
costs two reads of the logits and one write (the eager chunk loop above makes about five passes); on the CPU it
runs eagerly and equals the default path (tests compare them in float64).

Example::

    logits = model(input_ids).logits                    # (B, T, V)
    loss = causal_lm_loss(logits, input_ids, kind="root", k=5.0, m=5.0)
    loss.backward()
    ppl = math.exp(causal_lm_loss(logits, input_ids, kind="ce").item())   # perplexity is always exp(CE)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from losslab.errors import check_range, unknown_name_error

IGNORE_INDEX = -100
TOKEN_LOSS_KINDS = ("ce", "root", "root_convex")


#: Upper bound of the rooted loss's k and m (larger values are typos; it also rejects inf).
MAX_KM = 1e6


@dataclass(frozen=True)
class TokenLossSpec:
    """Which token loss to use: ``kind`` in ``ce | root | root_convex`` with its hyper-parameters.

    ``k`` and ``m`` are floats (> 0); ``max_log_weight`` guards ``root_convex`` against overflow (None = off).
    Note: ``m`` only rescales the loss, so under Adam/AdamW it is almost a no-op; it matters with SGD, gradient
    clipping or loss-scale limits.
    """

    kind: str = "root"
    k: float = 5.0
    m: float = 5.0
    max_log_weight: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in TOKEN_LOSS_KINDS:
            raise unknown_name_error("token loss", self.kind, TOKEN_LOSS_KINDS)
        check_range("k", self.k, low=0.0, high=MAX_KM, low_inclusive=False)
        check_range("m", self.m, low=0.0, high=MAX_KM, low_inclusive=False)
        if self.max_log_weight is not None:
            check_range("max_log_weight", self.max_log_weight, low=0.0, low_inclusive=False)

    def loss_and_weight(self, logp_y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token loss ℓ and gradient weight w (∂ℓ/∂z = w·(p − e_y)) from float32 log p_y."""
        if self.kind == "ce":
            return -logp_y, torch.ones_like(logp_y)
        if self.kind == "root":
            scaled = logp_y / self.k  # log p_y^{1/k}; exp underflows cleanly to 0
            return -self.m * torch.expm1(scaled), (self.m / self.k) * torch.exp(scaled)
        scaled = -logp_y / self.k  # CE / k
        capped = scaled if self.max_log_weight is None else scaled.clamp(max=self.max_log_weight)
        weight = torch.exp(capped)
        return self.k * torch.expm1(capped) + self.k * weight * (scaled - capped), weight


def shift_labels(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Next-token targets: ``out[:, t] = labels[:, t+1]``, last position ``ignore_index`` (shape (B, T) kept).

    Shifting the labels instead of the logits keeps the logits a contiguous ``(B·T, V)`` view (slicing
    ``logits[:, :-1]`` would copy the whole tensor).
    """
    out = torch.full_like(labels, ignore_index)
    out[..., :-1] = labels[..., 1:]
    return out


def _chunk_rows(vocab: int, workspace_mib: float) -> int:
    return max(1, int(workspace_mib * 2**20) // (4 * max(vocab, 1)))


def fused_chunk(
    z: torch.Tensor,
    target: torch.Tensor,
    out: torch.Tensor | None,
    spec: TokenLossSpec,
    denominator: float,
    ignore_index: int,
) -> torch.Tensor:
    """Loss sum of one chunk ``z`` (R, V) with ``target`` (R,); the gradient (÷ ``denominator``) goes to ``out``.

    The whole chunk is one expression so that ``torch.compile`` fuses it: max and Σexp in one reduction over z,
    then w·(p − e_y) written once into ``out`` (logits' dtype).
    """
    zf = z.to(torch.promote_types(z.dtype, torch.float32))  # (R, V) work dtype
    valid = target != ignore_index  # (R,)
    safe = torch.where(valid, target, torch.zeros_like(target)).unsqueeze(1)  # (R, 1)
    z_max = zf.amax(dim=1, keepdim=True)  # (R, 1)
    total_exp = torch.exp(zf - z_max).sum(dim=1, keepdim=True)  # (R, 1)
    logp_y = (zf.gather(1, safe) - z_max - total_exp.log()).squeeze(1)  # (R,)
    loss, weight = spec.loss_and_weight(logp_y)
    loss = torch.where(valid, loss, torch.zeros_like(loss))
    if out is not None:
        coef = torch.where(valid, weight / denominator, torch.zeros_like(weight)).unsqueeze(1)  # (R, 1)
        hot = torch.arange(zf.shape[1], device=zf.device).unsqueeze(0) == safe  # (R, V) bool, fused
        out.copy_(torch.exp(zf - z_max) * (coef / total_exp) - torch.where(hot, coef, torch.zeros_like(coef)))
    return loss.sum()


_COMPILED_CHUNK: dict[str, Any] = {}


def _chunk_function(device: torch.device) -> Any:
    """``fused_chunk`` compiled for CUDA (cached), eager elsewhere."""
    if device.type != "cuda":
        return fused_chunk
    if "cuda" not in _COMPILED_CHUNK:
        _COMPILED_CHUNK["cuda"] = torch.compile(fused_chunk, dynamic=False)
    return _COMPILED_CHUNK["cuda"]


def in_place_chunk(
    z: torch.Tensor,
    target: torch.Tensor,
    out: torch.Tensor | None,
    spec: TokenLossSpec,
    denominator: float,
    ignore_index: int,
) -> torch.Tensor:
    """:func:`fused_chunk`'s contract in eager in-place steps, with one (R, V) workspace: for fp32 logits the
    gradient buffer ``out`` itself is the workspace (no extra pass over the logits)."""
    work_dtype = torch.promote_types(z.dtype, torch.float32)  # fp32, or fp64 for fp64 logits
    in_place = out is not None and out.dtype == work_dtype
    w = out if in_place else torch.empty(z.shape, dtype=work_dtype, device=z.device)  # (R, V)
    w.copy_(z)
    valid = target != ignore_index  # (R,)
    safe = torch.where(valid, target, torch.zeros_like(target)).unsqueeze(1)  # (R, 1)
    z_y = w.gather(1, safe)
    z_max = w.amax(dim=1, keepdim=True)
    w.sub_(z_max).exp_()  # exp(z − max)
    total_exp = w.sum(dim=1, keepdim=True)
    logp_y = (z_y - z_max - total_exp.log()).squeeze(1)
    loss, weight = spec.loss_and_weight(logp_y)
    if out is not None:
        coef = torch.where(valid, weight / denominator, torch.zeros_like(weight)).unsqueeze(1)
        w.mul_(coef / total_exp)  # w·p
        w.scatter_add_(1, safe, -coef)  # w·(p − e_y)
        if not in_place:
            out.copy_(w)
    return torch.where(valid, loss, torch.zeros_like(loss)).sum(dtype=torch.float64)


class _ChunkedTokenLoss(torch.autograd.Function):
    """Sum of per-token losses divided by ``denominator``, computed chunk by chunk with ``chunk``
    (:func:`in_place_chunk` or :func:`fused_chunk`); see the module docstring for the memory contract."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        logits: torch.Tensor,
        targets: torch.Tensor,
        spec: TokenLossSpec,
        denominator: float,
        ignore_index: int,
        workspace_mib: float,
        chunk: Any,
    ) -> torch.Tensor:
        n, vocab = logits.shape
        grad = torch.empty_like(logits) if logits.requires_grad else None
        rows = _chunk_rows(vocab, workspace_mib)
        total = torch.zeros((), dtype=torch.float64, device=logits.device)
        for start in range(0, n, rows):
            stop = min(start + rows, n)
            out = grad[start:stop] if grad is not None else None  # (R, V) view of the gradient
            total += chunk(logits[start:stop], targets[start:stop], out, spec, denominator, ignore_index).double()
        if grad is not None:
            ctx.save_for_backward(grad)
        return (total / denominator).to(torch.promote_types(logits.dtype, torch.float32))

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        if grad_output.item() != 1.0:  # in place; a second backward through this graph then raises
            grad.mul_(grad_output.to(grad.dtype))
        return grad, None, None, None, None, None, None


def token_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    spec: TokenLossSpec | None = None,
    *,
    num_items: int | float | torch.Tensor | None = None,
    reduction: str = "mean",
    ignore_index: int = IGNORE_INDEX,
    workspace_mib: float = 256.0,
    fused: bool = False,
) -> torch.Tensor:
    """Token loss on already-aligned ``logits`` (…, V) and ``targets`` (…) (no shifting here).

    ``reduction="mean"`` divides by ``num_items`` when given (the valid-token count of the whole accumulated
    batch, HF's ``num_items_in_batch``), otherwise by this call's valid-token count; ``"sum"`` does not divide.
    Ignored rows add 0 and get 0 gradient; if every row is ignored the result is 0 with a zero gradient.
    Computed in float32 whatever the logits' dtype (float64 for float64 logits; autocast is off inside);
    returns a float32 (float64) scalar. ``fused=True``: each chunk by :func:`fused_chunk` (compiled on CUDA).
    """
    spec = spec or TokenLossSpec()
    if reduction not in ("mean", "sum"):
        raise unknown_name_error("reduction", reduction, ("mean", "sum"))
    vocab = logits.shape[-1]
    flat_logits = logits.reshape(-1, vocab)
    flat_targets = targets.reshape(-1).to(flat_logits.device)
    if flat_targets.numel() != flat_logits.shape[0]:
        raise ValueError(f"targets have {flat_targets.numel()} entries but logits have {flat_logits.shape[0]} rows")
    if reduction == "sum":
        denominator = 1.0
    elif num_items is not None:
        denominator = float(num_items)
    else:
        denominator = float((flat_targets != ignore_index).sum().item())
    denominator = max(denominator, 1.0)
    with torch.autocast(device_type=flat_logits.device.type, enabled=False):
        chunk = _chunk_function(flat_logits.device) if fused else in_place_chunk
        return _ChunkedTokenLoss.apply(flat_logits, flat_targets, spec, denominator, ignore_index, workspace_mib, chunk)


def causal_lm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    spec: TokenLossSpec | None = None,
    *,
    num_items: int | float | torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
    workspace_mib: float = 256.0,
) -> torch.Tensor:
    """Mean next-token loss of a causal LM: ``logits`` (B, T, V) predict ``labels`` (B, T) shifted by one.

    Labels use ``ignore_index`` (−100) for padding and anything not to be scored.
    """
    return token_loss(
        logits,
        shift_labels(labels, ignore_index),
        spec,
        num_items=num_items,
        ignore_index=ignore_index,
        workspace_mib=workspace_mib,
    )


def count_predicted_tokens(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> int:
    """Number of scored next-token predictions in ``labels`` (B, T): valid entries after the shift."""
    return int((labels[..., 1:] != ignore_index).sum().item())


def perplexity_from_ce(mean_ce: float) -> float:
    """Perplexity = exp(mean token cross entropy in nats). Never exp of the rooted loss."""
    return math.exp(mean_ce)
