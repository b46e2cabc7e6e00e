"""Token loss oracles (llm.md §1–§2, objectives.md §3): float64 references, the classifier objectives on flattened
logits, gradcheck, chunking, ignore_index, accumulation, extreme logits."""

from __future__ import annotations

import pytest
import torch

from losslab.errors import LosslabError
from losslab.objectives.registry import create
from losslab.objectives.rooted import rooted_loss, rooted_loss_convex
from losslab.objectives.token import TokenLossSpec, causal_lm_loss, shift_labels, token_loss

SPECS = [
    TokenLossSpec("ce"),
    TokenLossSpec("root", k=5.0, m=5.0),
    TokenLossSpec("root", k=3.0, m=7.0),
    TokenLossSpec("root_convex", k=4.0),
    TokenLossSpec("root_convex", k=2.0, max_log_weight=0.5),
]


def reference(logits: torch.Tensor, target: torch.Tensor, spec: TokenLossSpec) -> torch.Tensor:
    """Per-row float64 reference: the objectives package's functional losses (or plain CE)."""
    z = logits.double()
    if spec.kind == "ce":
        return torch.nn.functional.cross_entropy(z, target, reduction="none")
    if spec.kind == "root":
        return rooted_loss(z, target, k=spec.k, m=spec.m, reduction="none")
    return rooted_loss_convex(
        z, target, k=spec.k, subtract_k=True, max_log_weight=spec.max_log_weight, reduction="none"
    )


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.kind}-{s.k}-{s.m}-{s.max_log_weight}")
def test_value_and_gradient_match_float64_reference(spec: TokenLossSpec) -> None:
    logits = (3 * torch.randn(37, 11, dtype=torch.float64)).requires_grad_()
    target = torch.randint(0, 11, (37,))
    target[[3, 8]] = -100
    got = token_loss(logits, target, spec, workspace_mib=4 * 11 * 5 / 2**20)  # 5-row chunks
    (g_got,) = torch.autograd.grad(got, logits)
    ref_logits = logits.detach().clone().requires_grad_()
    valid = target != -100
    ref = reference(ref_logits[valid], target[valid], spec).mean()
    (g_ref,) = torch.autograd.grad(ref, ref_logits)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_got, g_ref, rtol=1e-10, atol=1e-12)
    assert torch.all(g_got[~valid] == 0)


@pytest.mark.parametrize("spec", SPECS[:4], ids=lambda s: f"{s.kind}-{s.k}")
def test_gradcheck(spec: TokenLossSpec) -> None:
    logits = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, 4, -100, 2, 1, 3])
    assert torch.autograd.gradcheck(lambda z: token_loss(z, target, spec, workspace_mib=4 * 5 * 4 / 2**20), (logits,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", ["ce", "root"])
def test_chunked_equals_unchunked(kind: str, dtype: torch.dtype) -> None:
    spec = TokenLossSpec(kind)
    logits = torch.randn(24, 100).mul(4).to(dtype).requires_grad_()
    target = torch.randint(0, 100, (24,))
    results = []
    for mib in (1e-3, 256.0):  # 1 row per chunk vs one chunk
        loss = token_loss(logits, target, spec, workspace_mib=mib)
        (grad,) = torch.autograd.grad(loss, logits)
        results.append((loss, grad))
    assert results[0][1].dtype == dtype
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=0, atol=0)


def test_causal_shift_and_ignore_index_match_manual_slicing() -> None:
    logits = torch.randn(3, 9, 13, requires_grad=True)
    labels = torch.randint(0, 13, (3, 9))
    labels[1, 5:] = -100  # padding
    shifted = shift_labels(labels)
    assert torch.equal(shifted[:, :-1], labels[:, 1:]) and torch.all(shifted[:, -1] == -100)
    got = causal_lm_loss(logits, labels, TokenLossSpec("ce"))
    ref = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 13), labels[:, 1:].reshape(-1))
    torch.testing.assert_close(got, ref)


def test_all_ignored_gives_finite_zero_with_zero_gradient() -> None:
    logits = torch.randn(4, 7, requires_grad=True)
    loss = token_loss(logits, torch.full((4,), -100), TokenLossSpec("root"))
    loss.backward()
    assert loss.item() == 0.0 and torch.all(logits.grad == 0)


def test_extreme_logits_no_nan() -> None:
    # objectives.md §3a: z = (1e4, −1e4, 0): y = 0 → L = 0, grad 0; y = 1 → L = m, grad 0.
    logits = torch.tensor([[1e4, -1e4, 0.0], [1e4, -1e4, 0.0]], requires_grad=True)
    spec = TokenLossSpec("root", k=5.0, m=5.0)
    per_row = [token_loss(logits[i : i + 1], torch.tensor([i]), spec) for i in range(2)]
    assert per_row[0].item() == 0.0 and per_row[1].item() == 5.0
    (grad,) = torch.autograd.grad(per_row[0] + per_row[1], logits)
    assert torch.all(torch.isfinite(grad)) and torch.all(grad == 0)
    ce = token_loss(logits, torch.tensor([0, 1]), TokenLossSpec("ce"))
    assert torch.isfinite(ce)


def test_four_accumulated_micro_batches_equal_one_batch() -> None:
    torch.manual_seed(1)
    layer = torch.nn.Linear(8, 17)
    x = torch.randn(4, 6, 8)
    labels = torch.randint(0, 17, (4, 6))
    labels[0, 2:] = -100
    labels[3, 4:] = -100  # uneven valid counts per micro-batch
    spec = TokenLossSpec("root")
    causal_lm_loss(layer(x), labels, spec).backward()
    full = layer.weight.grad.clone()
    layer.weight.grad = None
    n_items = int((labels[:, 1:] != -100).sum())
    for i in range(4):
        causal_lm_loss(layer(x[i : i + 1]), labels[i : i + 1], spec, num_items=n_items).backward()
    torch.testing.assert_close(layer.weight.grad, full, rtol=1e-5, atol=1e-7)


def test_bad_spec_raises() -> None:
    with pytest.raises(LosslabError, match="k=0"):
        TokenLossSpec("root", k=0.0)
    with pytest.raises(LosslabError, match="cee"):
        TokenLossSpec("cee")


def classifier_objective(spec: TokenLossSpec) -> torch.nn.Module:
    """The classifier objective (the registry's module) a token loss kind is defined to equal, per token."""
    if spec.kind == "ce":
        return create("ce")
    if spec.kind == "root":
        return create("root", k=spec.k, m=spec.m)
    return create("root_convex", k=spec.k, subtract_k=True, max_log_weight=spec.max_log_weight)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.kind}-{s.k}-{s.m}-{s.max_log_weight}")
def test_causal_token_loss_is_the_classifier_objective_on_flattened_logits(spec: TokenLossSpec) -> None:
    """[B, T, V] next-token loss = the classifier objective on the [B·T, V] rows with shifted, -100-masked targets:
    the same value and the same gradient (float64), so the token losses are the objectives, chunked."""
    gen = torch.Generator().manual_seed(3)
    logits = (3 * torch.randn(3, 7, 11, generator=gen, dtype=torch.float64)).requires_grad_()
    labels = torch.randint(0, 11, (3, 7), generator=gen)
    labels[0, 4:] = -100  # a padded block
    labels[2, 1] = -100  # an unscored position inside a block
    got = causal_lm_loss(logits, labels, spec, workspace_mib=4 * 11 * 4 / 2**20)  # 4-row chunks
    (g_got,) = torch.autograd.grad(got, logits)
    targets = torch.cat([labels[:, 1:], torch.full((3, 1), -100)], dim=1).reshape(-1)  # next token, by definition
    ref_logits = logits.detach().clone().requires_grad_()
    ref = classifier_objective(spec)(ref_logits.reshape(-1, 11), targets)
    (g_ref,) = torch.autograd.grad(ref, ref_logits)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_got, g_ref, rtol=1e-10, atol=1e-12)
    assert torch.all(g_got[:, -1] == 0) and torch.all(g_got[0, 3:] == 0)  # unscored rows get no gradient
