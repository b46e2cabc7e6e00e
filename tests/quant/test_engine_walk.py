"""The segment walk gives bit-identical results to the prefix walk (spec §8), and falls back where it must."""

from __future__ import annotations

from typing import Any

import pytest
import timm
import torch
from torch import Tensor, nn

import losslab.models  # noqa: F401  (registers the CIFAR models in timm)
from losslab.errors import ConfigError
from losslab.quant import GPFQ, GPTQ, LDLQ, PWLQ, RTN, QuantMethod, quantize
from losslab.quant.engine import quant_layers
from losslab.quant.result import QuantResult
from losslab.quant.walk import plan_walk

_METHODS = [
    RTN(bits=4),
    PWLQ(bits=4),
    GPTQ(bits=4, act_order=True, group_size=8),
    LDLQ(bits=3),
    GPFQ(bits=4),
    GPFQ(bits=3, legacy_unfold=True, fresh_batch_per_layer=True),
]


def _calib(chans: int, side: int, n_batches: int = 2, batch: int = 3) -> list[Tensor]:
    return [torch.randn(batch, chans, side, side) for _ in range(n_batches)]


def _both(model: nn.Module, method: QuantMethod, calib: list[Tensor], **kwargs: Any) -> tuple[QuantResult, ...]:
    return tuple(quantize(model, method, calib, progress=False, walk=w, **kwargs) for w in ("prefix", "segments"))


def _assert_identical(old: QuantResult, new: QuantResult) -> None:
    """Same weights, buffers, per-layer statistics and activation ranges, bit for bit."""
    a, b = old.model.state_dict(), new.model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [r.name for r in old.layers] == [r.name for r in new.layers]
    for r, s in zip(old.layers, new.layers):
        assert (r.weight_mse, r.sqnr_db, r.proxy_loss, r.gpfq_rel_error, r.sparsity) == (
            s.weight_mse,
            s.sqnr_db,
            s.proxy_loss,
            s.gpfq_rel_error,
            s.sparsity,
        ), r.name
    assert old.act_ranges == new.act_ranges
    assert old.calibration["walk"] == "prefix" and old.calibration["walk_cache_bytes"] == 0


@pytest.mark.parametrize("method", _METHODS, ids=lambda m: m.describe())
@pytest.mark.parametrize("fold_bn", [False, True])
def test_cifar_resnet20_segments_equal_prefix(method: QuantMethod, fold_bn: bool) -> None:
    model = timm.create_model("cifar_resnet20", num_classes=10).eval()
    for m in model.modules():  # non-trivial BN statistics so folding changes the weights
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    old, new = _both(model, method, _calib(3, 8), fold_bn=fold_bn)
    _assert_identical(old, new)
    assert new.calibration["walk"] == "segments" and new.calibration["walk_cache_bytes"] > 0


@pytest.mark.parametrize("name,chans,side", [("small_cnn", 1, 8), ("regulquant_convnet", 3, 8)])
@pytest.mark.parametrize("method", [GPTQ(bits=4, act_order=True), GPFQ(bits=4)], ids=lambda m: m.describe())
def test_small_models_segments_equal_prefix(name: str, chans: int, side: int, method: QuantMethod) -> None:
    model = timm.create_model(name, in_chans=chans, num_classes=10).eval()
    old, new = _both(model, method, _calib(chans, side), fold_bn=True)
    _assert_identical(old, new)
    assert new.calibration["walk"] == "segments"


@pytest.mark.parametrize("method", [GPTQ(bits=4), GPFQ(bits=4)], ids=lambda m: m.describe())
def test_a_pre_hook_that_edits_the_input_in_place_runs_once_per_call(method: QuantMethod) -> None:
    """The segment walk hands a layer's cached input to the statistics without a copy only where nothing runs before
    the capture; a pre-hook that doubles the input in place must see a copy, or the layer's real call would get 4x.
    Checked against the prefix walk (a fresh forward per capture) and against the unhooked model with 2x inputs."""
    model = timm.create_model("small_cnn", in_chans=1, num_classes=10).eval()
    name, layer = quant_layers(model)[1]

    def double(module: nn.Module, args: tuple[Tensor, ...]) -> None:
        args[0].mul_(2.0)

    layer.register_forward_pre_hook(double)
    old, new = _both(model, method, _calib(1, 8), fold_bn=True)
    _assert_identical(old, new)
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        hooked = new.model(x)
        for handle in list(new.model.get_submodule(name)._forward_pre_hooks):
            del new.model.get_submodule(name)._forward_pre_hooks[handle]
        assert not torch.equal(hooked, new.model(x))  # the hook is live in the quantized model


@pytest.mark.parametrize("metrics", [True, False])
def test_overrides_skip_and_act_bits(metrics: bool) -> None:
    model = timm.create_model("cifar_resnet20", num_classes=10).eval()
    overrides = {"layer2.*": GPFQ(bits=3), "linear": RTN(bits=8), "layer3.0.conv1": PWLQ(bits=4)}
    old, new = _both(
        model,
        GPTQ(bits=4, act_order=True),
        _calib(3, 8),
        overrides=overrides,
        skip=["conv1", "layer1.1.*"],
        act_bits=6,
        metrics=metrics,
    )
    _assert_identical(old, new)
    assert new.act_ranges and new.calibration["walk"] == "segments"
    assert {r.name for r in new.layers if not r.quantized} == {"conv1", "layer1.1.conv1", "layer1.1.conv2"}


class _DataDependent(nn.Module):
    """A residual block that branches on the data (torch.fx cannot trace it) and scales its input in place."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(4, 4, 3, padding=1)
        self.conv_b = nn.Conv2d(4, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        x.mul_(0.5)
        y = torch.relu(self.conv_a(x))
        if float(y.mean()) > 0:
            y = y * 2
        return self.conv_b(y) + x


class _Mutates(nn.Module):
    """Changes its input in place (the caller sees it): replaying it must keep that effect exactly once."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        x.mul_(0.5)
        return out


class _Mixed(nn.Module):
    """Traceable root around an untraceable block, an in-place block, a shared layer and a hooked container."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.block = _DataDependent()
        self.mutate = _Mutates()
        self.hooked = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
        self.shared = nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(4, 5)
        self.hooked.register_forward_hook(lambda m, i, o: o + 1.0)  # replaying the Sequential would skip this

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.stem(x))
        x = self.block(x)
        y = self.mutate(x)
        x = self.hooked(x + y)
        x = self.shared(self.shared(x))
        return self.fc(x.mean(dim=(2, 3)))


@pytest.mark.parametrize("method", [GPTQ(bits=3, act_order=True), GPFQ(bits=3), RTN(bits=3)], ids=lambda m: m.name)
def test_opaque_parts_fall_back_inside_segments(method: QuantMethod) -> None:
    model = _Mixed().eval()
    old, new = _both(model, method, _calib(3, 6, n_batches=3))
    _assert_identical(old, new)
    assert new.calibration["walk"] == "segments"
    names = [n for n, _ in quant_layers(model)]
    plan = plan_walk(model, names, names, _calib(3, 6)[0])
    assert plan.kind == "segments" and "" in plan.graphs and "mutate" in plan.graphs
    assert "block" not in plan.graphs and "hooked" not in plan.graphs  # untraceable / graph differs: opaque
    assert plan.owner["block.conv_a"] == "block" and plan.owner["hooked.0"] == "hooked"
    assert plan.owner["stem"] == "stem" and plan.order == names


class _OutOfOrder(nn.Module):
    """``fc`` is registered before ``conv`` but called after it: quantizing in registration order needs the
    prefix walk (fc's statistics must see the float conv)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


class _Untraceable(nn.Module):
    """Layers in call order, but the root branches on the data: it cannot be traced."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        y = torch.relu(self.conv(x)).mean(dim=(2, 3))
        return self.fc(y) if float(y.sum()) > -1e9 else -self.fc(y)


@pytest.mark.parametrize("cls,note", [(_OutOfOrder, "registration order"), (_Untraceable, "traced graph")])
def test_structure_that_defeats_the_walk_falls_back_to_prefix(cls: type[nn.Module], note: str) -> None:
    model = cls().eval()
    old, new = _both(model, GPTQ(bits=3), _calib(3, 5))
    _assert_identical(old, new)
    assert new.calibration["walk"] == "prefix" and note in new.calibration["walk_note"]


def test_chain_cache_size_is_two_activations() -> None:
    """Sequential(Linear 4→6, ReLU, Linear 6→3), float stream only (RTN + metrics): at the ReLU node the cache
    holds the Linear output and the ReLU output, 2·6 floats per row; the walk stops at the last layer."""
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).eval()
    calib = [torch.randn(5, 4), torch.randn(7, 4)]
    result = quantize(model, RTN(bits=4), calib, progress=False)
    assert result.calibration["walk_cache_bytes"] == 2 * 6 * 4 * 12
    gptq_gpfq = quantize(model, GPFQ(bits=4), calib, progress=False)  # two streams: twice the cache
    assert gptq_gpfq.calibration["walk_cache_bytes"] == 2 * 2 * 6 * 4 * 12


def test_no_data_needed_runs_no_walk() -> None:
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).eval()
    result = quantize(model, RTN(bits=4), [torch.randn(5, 4)], progress=False, metrics=False)
    assert result.calibration["walk"] == "prefix" and result.calibration["walk_cache_bytes"] == 0


def test_bad_walk_raises() -> None:
    model = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(ConfigError, match=r"walk='chain'.*'segments', 'prefix'"):
        quantize(model, RTN(bits=4), [torch.randn(2, 4)], progress=False, walk="chain")
