"""The common contract of objectives spec §0 for every registered loss, plus §1-§3 oracles and bad-input errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from losslab.errors import ConfigError, LosslabError
from losslab.objectives import (
    OBJECTIVES,
    FocalLoss,
    create,
    cross_entropy,
    focal_loss,
    list_objectives,
    objective_kwargs,
    rooted_loss,
    rooted_loss_convex,
)

ALL = list_objectives()
# root_convex overflows float32 once CE/k > 88.7 by design; the C¹ continuation keeps it finite
FINITE_KWARGS = {"root_convex": {"max_log_weight": 20.0}}


def make_batch(n: int = 12, c: int = 5, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    return (3 * torch.randn(n, c, dtype=dtype)).requires_grad_(), torch.randint(0, c, (n,))


def float64_reference(name: str, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-row loss by a plain loop over rows in float64, straight from the spec's formulas (default hparams)."""
    out = []
    for zi, yi in zip(z.double(), y.tolist()):
        p = torch.softmax(zi, 0)[yi]
        ce = -torch.log(p)
        out.append(
            {
                "ce": ce,
                "focal": 0.25 * (1 - p) ** 2 * ce,
                "focal_rlo_paper": 0.25 * (1 - p) ** 3 * ce,
                "root": 3 * (1 - p ** (1 / 3)),
                "root_convex": 3 * torch.exp(ce / 3),
                "sgt": ce,
            }[name]
        )
    return torch.stack(out)


def test_registry_lists_every_objective_and_aliases() -> None:
    assert ALL == ["ce", "focal", "focal_rlo_paper", "root", "root_convex", "sgt"]
    assert "rooted" in OBJECTIVES and "cross_entropy" in OBJECTIVES and "softmax-gradient-tampering" in OBJECTIVES
    assert isinstance(create("focal_rlo_paper"), FocalLoss) and create("focal_rlo_paper").gamma == 3.0


def test_constructor_kwargs_are_the_trainer_flags() -> None:
    common = ["reduction", "ignore_index"]
    assert objective_kwargs("ce") == ["label_smoothing", *common]
    assert objective_kwargs("focal") == ["gamma", "alpha", *common]
    assert objective_kwargs("root") == ["k", "m", *common]
    assert objective_kwargs("root_convex") == ["k", "subtract_k", "max_log_weight", *common]
    assert objective_kwargs("sgt") == ["alpha", "label_smoothing", *common]


@pytest.mark.parametrize("name", ALL)
def test_matches_float64_reference_loop(name: str) -> None:
    z, y = make_batch()
    got = create(name, reduction="none")(z, y)
    torch.testing.assert_close(got.double(), float64_reference(name, z.detach(), y), rtol=1e-5, atol=1e-6)
    assert got.dtype == torch.float32


@pytest.mark.parametrize("name", ALL)
def test_gradient_rows_sum_to_zero(name: str) -> None:
    """Unifying fact: the logit gradient is w·(p − q) (SGT: softmax(αz) − q), so every row sums to 0."""
    z, y = make_batch(n=32, c=7)
    create(name)(z, y).backward()
    torch.testing.assert_close(z.grad.sum(-1), torch.zeros(32), atol=1e-7, rtol=0)
    assert z.grad.abs().sum() > 0


@pytest.mark.parametrize("name", [n for n in ALL if n != "sgt"])  # SGT: softmax(αz) − q, see test_sgt_objective.py
def test_gradient_is_weight_times_p_minus_onehot(name: str) -> None:
    """Per-row gradient is parallel to p − e_y for the non-SGT losses (spec §0); each row's weight is > 0."""
    z, y = make_batch(n=16, c=6, dtype=torch.float64)
    create(name, reduction="sum")(z, y).backward()
    direction = torch.softmax(z.detach(), -1) - F.one_hot(y, 6).double()
    weight = (z.grad * direction).sum(-1) / (direction * direction).sum(-1)
    torch.testing.assert_close(z.grad, weight[:, None] * direction, rtol=1e-10, atol=1e-12)
    assert (weight > 0).all()


@pytest.mark.parametrize("name", ALL)
def test_gradcheck_float64(name: str) -> None:
    z = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 3, -100, 2, 1, 3])
    kwargs = {"alpha": 1.0} if name == "sgt" else {}  # SGT's backward is the gradient of its value only at α = 1
    loss_fn = create(name, **kwargs)
    assert torch.autograd.gradcheck(lambda x: loss_fn(x, y), (z,))


@pytest.mark.parametrize("name", ALL)
def test_ignore_index_rows_give_zero_and_no_wrap(name: str) -> None:
    """C = 200 > 100: a wrapped −100 would silently pick class 100; ignored rows must contribute nothing."""
    z, _ = make_batch(n=6, c=200)
    y = torch.tensor([5, -100, 199, -100, 100, 0])
    keep = y != -100
    per_row = create(name, reduction="none")(z, y)
    assert per_row.shape == (6,) and (per_row[~keep] == 0).all()
    mean = create(name)(z, y)
    mean.backward()
    assert (z.grad[~keep] == 0).all()
    reference = create(name, reduction="none")(z.detach()[keep], y[keep])
    torch.testing.assert_close(mean, reference.mean(), rtol=1e-6, atol=0)
    torch.testing.assert_close(per_row[keep], reference, rtol=1e-6, atol=0)
    assert create(name, reduction="sum")(z, y).item() == pytest.approx(reference.sum().item(), rel=1e-6)


@pytest.mark.parametrize("name", ALL)
def test_custom_ignore_index(name: str) -> None:
    z, _ = make_batch(n=4, c=3)
    y = torch.tensor([0, 2, 1, 2])
    per_row = create(name, reduction="none", ignore_index=2)(z, y)
    assert per_row[1] == 0 and per_row[3] == 0 and (per_row[[0, 2]] > 0).all()


@pytest.mark.parametrize("name", ALL)
def test_all_ignored_batch_is_finite_zero_with_graph(name: str) -> None:
    z, _ = make_batch(n=3, c=4)
    loss = create(name)(z, torch.full((3,), -100))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert (z.grad == 0).all()


@pytest.mark.parametrize("name", ALL)
def test_leading_dims_are_flattened(name: str) -> None:
    """LM-style logits [B, T, V] with targets [B, T] equal the flattened [(B·T), V] call."""
    z = torch.randn(2, 5, 11)
    y = torch.randint(0, 11, (2, 5))
    y[1, 3] = -100
    loss_fn = create(name, reduction="none")
    per_row = loss_fn(z, y)
    assert per_row.shape == (2, 5)
    torch.testing.assert_close(per_row.reshape(-1), loss_fn(z.reshape(10, 11), y.reshape(10)), rtol=0, atol=0)
    torch.testing.assert_close(create(name)(z, y), per_row.sum() / 9, rtol=1e-6, atol=0)


@pytest.mark.parametrize("s", [0.0, 0.1])
def test_cross_entropy_matches_torch_with_ignored_rows(s: float) -> None:
    z, y = make_batch(n=20, c=9)
    y[[2, 7, 11]] = -100
    for reduction in ("mean", "sum", "none"):
        got = cross_entropy(z, y, label_smoothing=s, reduction=reduction)
        want = F.cross_entropy(z, y, label_smoothing=s, reduction=reduction)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    (g,) = torch.autograd.grad(cross_entropy(z, y, label_smoothing=s), z)
    (want,) = torch.autograd.grad(F.cross_entropy(z, y, label_smoothing=s), z)
    torch.testing.assert_close(g, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("s", [0.0, 0.2])
def test_cross_entropy_soft_targets_match_torch(s: float) -> None:
    z, _ = make_batch(n=8, c=6)
    q = torch.softmax(torch.randn(8, 6), -1)
    torch.testing.assert_close(
        cross_entropy(z, q, label_smoothing=s), F.cross_entropy(z, q, label_smoothing=s), rtol=1e-6, atol=1e-6
    )
    # a one-hot probability target equals the integer target
    y = torch.randint(0, 6, (8,))
    torch.testing.assert_close(
        cross_entropy(z, F.one_hot(y, 6).float(), label_smoothing=s), cross_entropy(z, y, label_smoothing=s)
    )


def test_focal_gamma0_alpha1_equals_ce_exactly() -> None:
    z, y = make_batch(n=10, c=4)
    y[3] = -100
    assert torch.equal(focal_loss(z, y, gamma=0.0, alpha=1.0, reduction="none"), cross_entropy(z, y, reduction="none"))


def test_focal_per_class_alpha_indexes_the_target() -> None:
    z, y = make_batch(n=10, c=4)
    alpha = torch.tensor([0.1, 0.2, 0.3, 0.4])
    got = FocalLoss(gamma=2.0, alpha=alpha, reduction="none")(z, y)
    want = focal_loss(z, y, gamma=2.0, alpha=1.0, reduction="none") * alpha[y]
    torch.testing.assert_close(got, want)
    with pytest.raises(LosslabError, match="C = 4"):
        focal_loss(z, y, alpha=torch.ones(3))


def test_rooted_k_to_infinity_is_ce_and_m_scales() -> None:
    z, y = make_batch(n=10, c=4, dtype=torch.float64)
    torch.testing.assert_close(rooted_loss(z, y, k=1e7, m=1e7), cross_entropy(z, y), rtol=1e-6, atol=0)
    torch.testing.assert_close(rooted_loss(z, y, k=3.0, m=6.0), 2 * rooted_loss(z, y, k=3.0, m=3.0))
    assert (rooted_loss(z, y, reduction="none", k=2.0, m=7.0) < 7.0).all()  # bounded in [0, m)


def test_root_convex_linear_continuation_is_c1() -> None:
    """Beyond CE/k = c the value is k·e^c·(1 + CE/k − c) and the gradient stays e^c·(p − e_y); below c unchanged."""
    k, c = 2.0, 1.0
    z = torch.tensor([[0.0, 5.0, -1.0], [2.0, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 0])
    ce = cross_entropy(z.detach(), y, reduction="none")
    assert ce[0] / k > c and ce[1] / k < c
    got = rooted_loss_convex(z, y, k=k, max_log_weight=c, reduction="none")
    plain = rooted_loss_convex(z, y, k=k, reduction="none")
    assert got[0].item() == pytest.approx(k * torch.e**c * (1 + ce[0].item() / k - c), rel=1e-12)
    assert got[1] == plain[1]
    got.sum().backward()
    direction = torch.softmax(z.detach(), -1) - F.one_hot(y, 3).double()
    torch.testing.assert_close(z.grad[0], torch.e**c * direction[0])

    # C¹ at the junction: for z = (0, t), y = 0, CE = softplus(t) and CE/k = c at t* = log(e^{ck} − 1)
    def value(t: float) -> float:
        zz = torch.tensor([[0.0, t]], dtype=torch.float64)
        return rooted_loss_convex(zz, torch.tensor([0]), k=k, max_log_weight=c).item()

    t_star, h = math.log(math.expm1(c * k)), 1e-6
    left = (value(t_star) - value(t_star - h)) / h
    right = (value(t_star + h) - value(t_star)) / h
    assert left == pytest.approx(right, rel=1e-4)


def test_soft_targets_rejected_where_undefined() -> None:
    z, _ = make_batch(n=4, c=3)
    q = torch.softmax(torch.randn(4, 3), -1)
    for name in ("focal", "root", "root_convex"):
        with pytest.raises(LosslabError, match="integer class targets"):
            create(name)(z, q)


@pytest.mark.parametrize("name", ALL)
def test_extreme_logits_finite(name: str) -> None:
    z = torch.tensor([[1e4, -1e4, 0.0]] * 3 + [[-1e4, 1e4, 5e3]], requires_grad=True)
    y = torch.tensor([0, 1, 2, 0])
    loss = create(name, **FINITE_KWARGS.get(name, {}))(z, y)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()


def test_extreme_logits_spec_cases_for_rooted() -> None:
    """z = (1e4, −1e4, 0): y = 0 gives L = 0 and gradient 0; y = 1 gives L = m and gradient 0 (clean underflow)."""
    for y, value in ((0, 0.0), (1, 3.0)):
        z = torch.tensor([[1e4, -1e4, 0.0]], requires_grad=True)
        loss = rooted_loss(z, torch.tensor([y]), k=3.0, m=3.0)
        loss.backward()
        assert loss.item() == value and (z.grad == 0).all()
    z = torch.tensor([[1e4, -1e4, 0.0]], requires_grad=True)
    assert cross_entropy(z, torch.tensor([1])).item() == 2e4  # a hand-written log(softmax) gives inf here


@pytest.mark.parametrize("name", ALL)
def test_bf16_autocast_on_cpu_is_finite_and_close(name: str) -> None:
    x = torch.randn(16, 8)
    y = torch.randint(0, 5, (16,))
    layer = torch.nn.Linear(8, 5)
    loss_fn = create(name)
    reference = loss_fn(layer(x), y)
    (ref_grad,) = torch.autograd.grad(reference, layer.weight)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = layer(x)
        loss = loss_fn(logits, y)
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    (grad,) = torch.autograd.grad(loss, layer.weight)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    # bf16 has an 8-bit mantissa: the logits carry ~4e-3 relative error
    torch.testing.assert_close(loss, reference, rtol=3e-2, atol=3e-2)
    torch.testing.assert_close(grad, ref_grad, rtol=5e-2, atol=5e-2)


@pytest.mark.parametrize("name", ALL)
def test_half_logits_are_upcast(name: str) -> None:
    z, y = make_batch(n=8, c=5)
    half = z.detach().half().requires_grad_()
    loss = create(name)(half, y)
    loss.backward()
    assert loss.dtype == torch.float32 and half.grad.dtype == torch.float16
    torch.testing.assert_close(loss, create(name)(half.detach().float(), y), rtol=1e-6, atol=0)


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("root", {"k": 0.0}, "k=0.0 is out of range: allowed k > 0"),
        ("root", {"k": -1.0}, "allowed k > 0"),
        ("root", {"m": 0.0}, "allowed m > 0"),
        ("root_convex", {"k": -2.0}, "allowed k > 0"),
        ("root_convex", {"max_log_weight": 100.0}, "max_log_weight <= 88"),
        ("sgt", {"alpha": 0.0}, "alpha=0.0 is out of range: allowed alpha > 0 and alpha <= 1"),
        ("sgt", {"alpha": 1.5}, "alpha <= 1"),
        ("sgt", {"label_smoothing": 1.0}, "label_smoothing < 1"),
        ("ce", {"label_smoothing": -0.1}, "label_smoothing >= 0"),
        ("focal", {"gamma": 0.5}, "gamma = 0 or gamma >= 1"),
        ("focal", {"alpha": -0.25}, "alpha > 0"),
        ("focal", {"alpha": torch.tensor([0.5, -1.0])}, "per-class weights >= 0"),
        ("ce", {"reduction": "avg"}, "reduction='avg' is not allowed: choose one of mean, sum, none"),
        ("ce", {"ignore_index": 1.5}, "ignore_index=1.5"),
        ("ce", {"k": 3.0}, "objective 'ce' does not take k; accepted keyword arguments: label_smoothing"),
    ],
)
def test_bad_hyperparameters_raise_config_error(name: str, kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        create(name, **kwargs)


def test_functional_forms_validate_too() -> None:
    z, y = make_batch()
    with pytest.raises(ConfigError, match="allowed k > 0"):
        rooted_loss(z, y, k=0.0)
    with pytest.raises(ConfigError, match="reduction="):
        cross_entropy(z, y, reduction="mean ")
    with pytest.raises(ConfigError, match="gamma"):
        focal_loss(z, y, gamma=0.9)


def test_unknown_name_lists_choices() -> None:
    with pytest.raises(LosslabError, match="unknown objective 'cee'; choose one of: ce, focal, focal_rlo_paper, root"):
        create("cee")


def test_bad_shapes_raise() -> None:
    z, y = make_batch(n=6, c=4)
    with pytest.raises(LosslabError, match=r"integer targets must have shape logits.shape\[:-1\] = \(6,\)"):
        cross_entropy(z, y[:5])
    with pytest.raises(LosslabError, match="soft \\(float\\) targets must have the logits' shape"):
        cross_entropy(z, torch.rand(6, 3))
    with pytest.raises(LosslabError, match="floating-point"):
        cross_entropy(torch.ones(6, 4, dtype=torch.long), y)
