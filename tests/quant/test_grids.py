"""Grid oracles (quantization spec §2, §3, §11): idempotence, zero, half-step bound, level counts, MSE clipping."""

from __future__ import annotations

import pytest
import torch

from losslab.errors import ConfigError
from losslab.quant.grids import UniformGrid, check_bits, fit_grid, fit_weight_grid, grid_from_range, grid_levels

ALL_GRIDS = ["asym", "sym", "narrow", "gpfq", "quip", "regulquant_uniform"]


@pytest.mark.parametrize("grid", ALL_GRIDS)
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_grid_idempotent_and_half_step_bound(grid: str, bits: int) -> None:
    w = torch.randn(8, 200, dtype=torch.float64)
    g = fit_grid(w, bits, grid).grid
    q = g.quantize(w)
    assert torch.equal(g.quantize(q), q)
    lo, hi = g.decode(torch.full_like(w, g.qmin)), g.decode(torch.full_like(w, g.qmax))
    inside = (w >= lo) & (w <= hi)
    assert ((w - q).abs()[inside] <= g.scale.expand_as(w)[inside] / 2 + 1e-12).all()


@pytest.mark.parametrize("grid", ALL_GRIDS)
@pytest.mark.parametrize("bits", [2, 3, 5])
def test_exact_level_counts(grid: str, bits: int) -> None:
    w = torch.randn(1, 100, dtype=torch.float64)
    g = fit_grid(w, bits, grid).grid
    sweep = torch.linspace(-50, 50, 200001, dtype=torch.float64)[None, :] * w.abs().max()
    assert g.quantize(sweep).unique().numel() == grid_levels(grid, bits) == g.levels


@pytest.mark.parametrize("grid", ["asym", "sym", "narrow", "gpfq"])
def test_zero_is_representable(grid: str) -> None:
    w = torch.randn(6, 50) + 0.7
    g = fit_grid(w, 3, grid).grid
    assert torch.equal(g.quantize(torch.zeros(6, 1)), torch.zeros(6, 1))


@pytest.mark.parametrize("grid", ["quip", "regulquant_uniform"])
def test_midrise_grids_have_no_zero_level(grid: str) -> None:
    g = fit_grid(torch.randn(4, 64), 2, grid).grid
    levels = g.decode(torch.arange(4.0)[None, :])
    assert (levels.abs() > 0).all()
    assert torch.allclose(levels[0, 1].abs() * 3, levels[0, 0].abs())  # ±s, ±s/3


def test_quip_scale_is_2_4_rms() -> None:
    w = torch.randn(16, 64, dtype=torch.float64)
    g = fit_grid(w, 2, "quip").grid
    top = g.decode(torch.tensor([[3.0]]))[0, 0]
    assert torch.isclose(top, 2.4 * w.pow(2).mean().sqrt())


def test_round_half_to_even_and_gpfq_half_up() -> None:
    even = UniformGrid(torch.ones(1, 1), None, -8, 7)
    assert even.encode(torch.tensor([[0.5, 1.5, 2.5, -0.5]])).tolist() == [[0.0, 2.0, 2.0, -0.0]]
    up = UniformGrid(torch.ones(1, 1), None, -8, 8, half_up=True)
    assert up.encode(torch.tensor([[0.5, 1.5, -0.5, -1.5]])).tolist() == [[1.0, 2.0, 0.0, -1.0]]


def test_asym_formula_and_all_zero_row() -> None:
    w = torch.tensor([[-1.0, 0.2, 3.0], [0.0, 0.0, 0.0]])
    g = fit_grid(w, 2, "asym").grid
    s, z = 4.0 / 3, round(1 / (4.0 / 3))
    expected = s * (torch.clamp(torch.round(w[0] / s) + z, 0, 3) - z)
    assert torch.equal(g.quantize(w)[0], expected)
    assert g.scale[1, 0] == 2.0 / 3  # [-1, 1] when lo = hi = 0


@pytest.mark.parametrize("norm", [2.0, 2.4])
@pytest.mark.parametrize("grid", ["asym", "sym"])
def test_mse_clipping_never_worse_than_min_max(grid: str, norm: float) -> None:
    w = torch.distributions.StudentT(2.0).sample((32, 256))
    err_max = (fit_grid(w, 3, grid).grid.quantize(w) - w).abs().pow(norm).sum(1)
    fitted = fit_grid(w, 3, grid, clip="mse", mse_norm=norm)
    err_mse = (fitted.grid.quantize(w) - w).abs().pow(norm).sum(1)
    assert (err_mse <= err_max).all()
    assert (err_mse < err_max).any()
    assert fitted.alpha is not None and ((fitted.alpha >= 0.21 - 1e-9) & (fitted.alpha <= 1)).all()


def test_percentile_clip_shrinks_range() -> None:
    w = torch.randn(4, 1000)
    w[:, 0] = 50
    assert fit_grid(w, 4, "asym", clip="percentile", percentile=99.0).grid.scale.max() < 1
    assert fit_grid(w, 4, "asym").grid.scale.min() > 3


def test_grid_from_range_narrow_is_symmetric() -> None:
    g = grid_from_range(torch.tensor([-2.0]), torch.tensor([1.0]), 3, "narrow")
    assert (g.qmin, g.qmax) == (-3, 3) and g.scale.item() == pytest.approx(2 / 3)


@pytest.mark.parametrize("bits", [1, 9, 0, 2.5, True, "4"])
def test_bad_bits_raise(bits: object) -> None:
    with pytest.raises(ConfigError, match="bits"):
        check_bits(bits)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        fit_grid(torch.randn(2, 4), bits, "asym")  # type: ignore[arg-type]


def test_bad_grid_clip_and_groups_raise() -> None:
    w = torch.randn(2, 8)
    with pytest.raises(ConfigError, match="grid"):
        fit_grid(w, 4, "fp4")
    with pytest.raises(ConfigError, match="clip"):
        fit_grid(w, 4, "asym", clip="kl")
    with pytest.raises(ConfigError, match="group_size"):
        fit_weight_grid(w, 4, "quip", group_size=4)
    with pytest.raises(ConfigError, match="group_size"):
        fit_weight_grid(w, 4, "asym", group_size=0)
    with pytest.raises(ConfigError, match="exclusive"):
        fit_weight_grid(w, 4, "asym", group_size=4, per_tensor=True)
