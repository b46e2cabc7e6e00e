"""factorize/collapse/rank selection on real models (factorized.md §3, §4, §7, §10): closed-form counts vs modules."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn
from wrn_meta import wide_resnet

import losslab.models  # noqa: F401  (registers cifar_resnet* in timm)
from losslab.errors import ConfigError
from losslab.layers import (
    LowRankConv2d,
    collapse,
    count_params_factorized,
    factorize,
    factorized_modules,
    rank_scale_for_target,
)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.slow
def test_resnet20_dense_and_s0111_ranks_and_layers() -> None:
    model = timm.create_model("cifar_resnet20")
    assert n_params(model) == 269_722
    report = factorize(model, rank_scale=0.111)
    assert report.params_after == n_params(model) == 63_850
    assert abs(report.ratio - 63_850 / 269_722) < 1e-12
    assert [x.rank for x in report.layers] == [5] * 6 + [11] * 6 + [21] * 6
    assert all(x.name.endswith(("conv1", "conv2")) and x.name.startswith("layer") for x in report.layers)
    assert report.skipped["conv1"] == "stem conv" and report.skipped["linear"] == "classifier"
    assert all(m.path == "two_conv" for _, m in factorized_modules(model))


@pytest.mark.parametrize(
    ("scale", "expected"),
    [(0.037, 23_482), (0.111, 63_850), (0.333, 188_314), (1.0, 560_026), (3.0, 1_675_162), (9.0, 5_020_570)],
)
def test_resnet20_closed_form_counts(scale: float, expected: int) -> None:
    with torch.device("meta"):
        model = timm.create_model("cifar_resnet20")
    assert count_params_factorized(model, scale) == expected


@pytest.mark.parametrize("scale", [0.037, 0.333, 1.0, 3.0])
def test_closed_form_count_equals_built_modules(scale: float) -> None:
    model = timm.create_model("cifar_resnet20")
    expected = count_params_factorized(model, scale)
    report = factorize(model, rank_scale=scale, spectral=False)
    assert report.params_after == n_params(model) == expected


def test_resnet32_counts() -> None:
    with torch.device("meta"):
        model = timm.create_model("cifar_resnet32")
        deep = timm.create_model("cifar_resnet32", num_classes=100)
    assert count_params_factorized(model, 0.111) == 107_370
    assert n_params(deep) == 470_004
    assert count_params_factorized(deep, 1.0, square=True) == 1_437_684


@pytest.mark.slow
def test_resnet32_cifar100_square_collapse_restores_dense_count_and_function() -> None:
    model = timm.create_model("cifar_resnet32", num_classes=100).eval()
    x = torch.randn(2, 3, 32, 32)
    dense_out = model(x)
    report = factorize(model, rank_scale=1.0, square=True)
    assert report.params_after == n_params(model) == 1_437_684
    assert all(m.square and m.path == "one_conv" for _, m in factorized_modules(model))
    factorized_out = model(x)  # SI + M = I: the product equals the dense init
    assert ((factorized_out - dense_out).norm() / dense_out.norm()).item() < 1e-5
    for _, m in factorized_modules(model):
        m.M.data.add_(0.05 * torch.randn_like(m.M))
    before = model(x)
    collapse(model)
    assert not factorized_modules(model) and n_params(model) == 470_004
    assert ((model(x) - before).norm() / before.norm()).item() < 1e-5


@pytest.mark.parametrize(
    ("target", "scale", "params"), [(0.01667, 0.0075684, 610_282), (0.06667, 0.0319824, 2_435_034)]
)
def test_wrn_bisection_oracle(target: float, scale: float, params: int) -> None:
    with torch.device("meta"):
        model = wide_resnet()
    s, ratio = rank_scale_for_target(model, target)
    assert abs(s - scale) < 5e-8
    assert count_params_factorized(model, s) == params
    assert ratio == params / 36_479_194


@pytest.mark.parametrize("target", [0.1, 0.3, 0.6])
def test_target_ratio_on_resnet20_matches_real_count(target: float) -> None:
    model = timm.create_model("cifar_resnet20")
    report = factorize(model, target_ratio=target, spectral=False)
    assert report.params_after == n_params(model)
    assert report.ratio == report.params_after / 269_722
    assert abs(report.ratio - target) < 0.01  # the achievable ratios are a fine step function of s


def test_unreachable_target_names_the_range() -> None:
    model = timm.create_model("cifar_resnet20")
    with pytest.raises(ConfigError, match=r"target_ratio=0.001 cannot be reached: ratios from 0\.0"):
        factorize(model, target_ratio=0.001)
    with pytest.raises(ConfigError, match="cannot be reached"):
        factorize(model, target_ratio=1.5)
    assert isinstance(model.layer1[0].conv1, nn.Conv2d)  # nothing was replaced


def test_argument_errors() -> None:
    model = timm.create_model("cifar_resnet20")
    with pytest.raises(ConfigError, match="rank_scale=0"):
        factorize(model, rank_scale=0)
    with pytest.raises(ConfigError, match="rank_scale=-1"):
        factorize(model, rank_scale=-1)
    with pytest.raises(ConfigError, match="exactly one"):
        factorize(model)
    with pytest.raises(ConfigError, match="exactly one"):
        factorize(model, rank_scale=0.5, target_ratio=0.2)
    with pytest.raises(ConfigError, match="init="):
        factorize(model, rank_scale=0.5, init="xavier")
    with pytest.raises(ConfigError, match="skip pattern 'nothing\\*'"):
        factorize(model, rank_scale=0.5, skip=["nothing*"])
    assert not factorized_modules(model)


def test_skip_patterns_and_non_shrinking_layers() -> None:
    model = timm.create_model("cifar_resnet20")
    report = factorize(model, rank_scale=0.111, skip=["layer3.*"])
    assert all(not x.name.startswith("layer3") for x in report.layers)
    assert report.skipped["layer3.0.conv1"] == "matches skip pattern"
    small = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 64, 1), nn.Conv2d(64, 64, 3), nn.Flatten(), nn.Linear(8, 2))
    report = factorize(small, rank_scale=0.3)  # 1×1 4→64: r = 19 costs 1,292 > 256; 3×3 64→64: 22,272 < 36,864
    assert isinstance(small[1], nn.Conv2d) and report.skipped["1"] == "would not shrink at s < 1"
    assert isinstance(small[2], LowRankConv2d)


def test_factorize_linear_and_embeddings_and_grouped_convs() -> None:
    model = nn.Sequential(nn.Embedding(50, 16), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.Linear(32, 4))
    report = factorize(model, rank_scale=0.25, embeddings=True)
    assert {x.name: x.kind for x in report.layers} == {"0": "embedding", "1": "linear", "3": "linear"}
    grouped = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3, groups=8), nn.Conv2d(8, 16, 3))
    report = factorize(grouped, rank_scale=0.3)
    assert report.skipped["1"] == "grouped conv (groups=8)"
