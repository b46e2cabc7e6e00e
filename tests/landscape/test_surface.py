"""Filter-normalized directions (Li et al. 2018) and the loss surfaces along them."""

from __future__ import annotations

import pytest
import torch

from landscape.oracle import ce, data, operator, small_cnn
from losslab.landscape import loss_line, loss_plane
from losslab.landscape.surface import filter_normalized_direction


def test_direction_filters_have_the_weights_norms_and_biases_zero() -> None:
    model = small_cnn(0)
    x, y = data(8, (1, 6, 6))
    op = operator(model, x, y)
    d = op.unflatten(filter_normalized_direction(op, torch.Generator().manual_seed(0)))
    for (name, p), dp in zip(op.params.items(), d):
        if p.dim() <= 1:
            assert dp.abs().max() == 0, name
        else:
            w_norms = p.detach().reshape(p.shape[0], -1).norm(dim=1)
            torch.testing.assert_close(dp.reshape(p.shape[0], -1).norm(dim=1), w_norms)


def test_surfaces_evaluate_the_perturbed_loss() -> None:
    model = small_cnn(1)
    x, y = data(32, (1, 6, 6))
    op = operator(model, x, y, size=8)
    theta = op.theta()
    line = loss_line(op, points=5, span=0.5, seed=3)
    assert line["alpha"][2] == 0.0 and line["loss"][2] == pytest.approx(op.loss(), rel=1e-12)
    d = filter_normalized_direction(op, torch.Generator().manual_seed(3))
    op.set_theta(theta + line["alpha"][0] * d)
    with torch.no_grad():
        want = float(ce(model(x), y))
    op.set_theta(theta)
    assert line["loss"][0] == pytest.approx(want, rel=1e-12)
    plane = loss_plane(op, points=3, seed=3)
    assert plane["loss"][1][1] == pytest.approx(op.loss(), rel=1e-12)
    assert torch.equal(op.theta(), theta)
