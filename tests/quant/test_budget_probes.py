"""The loss-based sensitivity probes against closed forms: Hutchinson on a diagonal Hessian is exact, the
empirical Fisher of a least-squares model is mean(4 r² x²), and a one-layer swap is restored afterwards."""

from __future__ import annotations

import copy

import torch
from torch import nn

from losslab.quant.budget.probes import calibration_loss, fisher_diagonal, hutchinson_traces, loss_with_weights


class Quadratic(nn.Module):
    """loss = Σ a_ij W_ij² + Σ b_ij W_ij (the Hessian is diagonal, 2a)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2, bias=False)


def quadratic_loss(a: torch.Tensor, b: torch.Tensor):
    def loss(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        w = model.lin.weight
        return (a * w**2).sum() + (b * w).sum() + 0 * batch.sum()

    return loss


def test_hutchinson_is_exact_for_a_diagonal_hessian() -> None:
    torch.manual_seed(0)
    model = Quadratic().double()
    a, b = torch.rand(2, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    traces = hutchinson_traces(model, ["lin"], [torch.zeros(4, 1), torch.zeros(2, 1)], quadratic_loss(a, b), probes=3)
    assert abs(traces["lin"] - 2 * float(a.sum())) < 1e-12


def test_fisher_diagonal_of_least_squares_is_mean_4r2x2() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 1, bias=False)).double()
    x, y = torch.randn(10, 4, dtype=torch.float64), torch.randn(10, 1, dtype=torch.float64)

    def loss(net: nn.Module, batch: tuple) -> torch.Tensor:
        return ((net(batch[0]) - batch[1]) ** 2).mean()

    fisher = fisher_diagonal(model, ["0"], [(x[:6], y[:6]), (x[6:], y[6:])], loss)["0"]
    r = (x @ model[0].weight.detach().T - y).squeeze(1)
    expected = (4 * r[:, None] ** 2 * x**2).mean(0, keepdim=True)
    torch.testing.assert_close(fisher, expected, rtol=1e-12, atol=1e-14)


def test_loss_with_one_layer_swapped_matches_a_copy_and_restores() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))

    def ce(net: nn.Module, batch: tuple) -> torch.Tensor:
        return nn.functional.cross_entropy(net(batch[0]), batch[1])

    q = torch.round(model[2].weight.detach() * 4) / 4
    before = model[2].weight.detach().clone()
    swapped = loss_with_weights(model, {"2": q}, [(x[:8], y[:8]), (x[8:], y[8:])], ce)
    assert torch.equal(model[2].weight, before)
    ref = copy.deepcopy(model)
    with torch.no_grad():
        ref[2].weight.copy_(q)
    with torch.no_grad():
        assert abs(swapped - float(ce(ref, (x, y)))) < 1e-6
        assert abs(calibration_loss(model, [(x, y)], ce) - float(ce(model, (x, y)))) < 1e-7


def test_loss_entry_stderr_is_the_standard_error_of_per_image_differences() -> None:
    """The ``loss`` entry with per-sample losses: mean and std(d)/√n of d_i = ℓ_i(W→Q) − ℓ_i(W), against a float64
    loop over single images; the mean is also the batch-weighted calibration-loss difference."""
    from losslab.quant.budget.probes import mean_and_stderr, sample_losses_with_weights
    from losslab.quant.budget.runner import Probe, _sensitivity

    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    x, y = torch.randn(21, 4), torch.randint(0, 3, (21,))
    batches = [(x[:8], y[:8]), (x[8:16], y[8:16]), (x[16:], y[16:])]
    q = torch.round(model[0].weight.detach() * 2) / 2

    def ce(net: nn.Module, batch: tuple) -> torch.Tensor:
        return nn.functional.cross_entropy(net(batch[0]), batch[1])

    def ce_samples(net: nn.Module, batch: tuple) -> torch.Tensor:
        return nn.functional.cross_entropy(net(batch[0]), batch[1], reduction="none")

    ref = copy.deepcopy(model).double()
    swapped = copy.deepcopy(ref)
    with torch.no_grad():
        swapped[0].weight.copy_(q.double())
        d = [
            float(nn.functional.cross_entropy(swapped(x[i : i + 1].double()), y[i : i + 1]))
            - float(nn.functional.cross_entropy(ref(x[i : i + 1].double()), y[i : i + 1]))
            for i in range(len(x))
        ]
    mean = sum(d) / len(d)
    se = (sum((v - mean) ** 2 for v in d) / (len(d) - 1)) ** 0.5 / len(d) ** 0.5
    probe = Probe(model, batches, ce, ["0"], sample_loss_fn=ce_samples)
    value, stderr = _sensitivity("loss", "0", None, q, probe)
    assert abs(value - mean) < 1e-6 and abs(stderr - se) < 1e-6 and se > 0
    before = model[0].weight.detach().clone()
    per_image = sample_losses_with_weights(model, {"0": q}, batches, ce_samples)
    assert torch.equal(model[0].weight, before) and per_image.dtype == torch.float64 and per_image.shape == (21,)
    old = loss_with_weights(model, {"0": q}, batches, ce) - calibration_loss(model, batches, ce)
    assert abs(value - old) < 1e-6
    assert mean_and_stderr(torch.tensor([2.0])) == (2.0, 0.0)
    no_samples = Probe(model, batches, ce, ["0"])
    assert _sensitivity("loss", "0", None, q, no_samples)[1] is None
