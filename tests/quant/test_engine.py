"""The layer-wise engine (spec §8, §11): identity, sequential RTN = direct RTN, statistics, patterns, errors."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest
import torch
import torch.nn.functional as F
from quant_doubles import RecordingMethod
from torch import Tensor, nn

from losslab.errors import ConfigError, LosslabError
from losslab.quant import GPFQ, GPTQ, RTN, Identity16, quantize, quantize_many
from losslab.quant.methods import GPFQAccumulator
from losslab.quant.rtn import rtn_weight
from losslab.quant.weight_quant import WeightQuant


class _ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=2, padding_mode="reflect")
        self.fc = nn.Linear(8, 4)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x)) + x[:, :, ::2, ::2]
        return self.fc(x.mean(dim=(2, 3)))


def _calib(n_batches: int = 3, batch: int = 4) -> list[tuple[Tensor, Tensor]]:
    return [(torch.randn(batch, 3, 8, 8), torch.zeros(batch, dtype=torch.long)) for _ in range(n_batches)]


def test_identity_leaves_outputs_unchanged_and_model_untouched() -> None:
    model = _ConvNet().eval()
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(5, 3, 8, 8)
    result = quantize(model, Identity16(), _calib(), progress=False)
    assert torch.equal(result.model(x), model(x))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert result.kind == "fake" and result.summary()["kind"] == "fake"
    assert [r.name for r in result.layers] == ["conv1", "conv2", "fc"]


@pytest.mark.parametrize("method", [RTN(bits=3), RTN(bits=4, grid="sym", group_size=4)])
def test_sequential_rtn_equals_direct_rtn(method: RTN) -> None:
    model = _ConvNet().eval()
    result = quantize(model, method, _calib(), progress=False)
    for name in ("conv1", "conv2", "fc"):
        layer = model.get_submodule(name)
        groups = layer.groups if isinstance(layer, nn.Conv2d) else 1
        w = layer.weight.detach().reshape(groups, layer.weight.shape[0] // groups, -1)
        direct = torch.cat(
            [rtn_weight(w[g], method.bits, grid=method.grid, group_size=method.group_size).q for g in range(groups)]
        )
        assert torch.equal(result.model.get_submodule(name).weight, direct.reshape(layer.weight.shape))
    row = result.layers[0]
    assert row.bits == method.bits and row.levels == 2**method.bits and row.kind == "conv"
    assert row.sqnr_db > 0 and row.proxy_loss > 0


@pytest.mark.parametrize("metrics", [True, False])
def test_hessian_comes_from_partly_quantized_network(metrics: bool) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).eval()
    calib = [torch.randn(5, 4), torch.randn(7, 4)]
    recorder = RecordingMethod()
    result = quantize(model, RTN(bits=2), calib, overrides={"2": recorder}, progress=False, metrics=metrics)
    q1 = result.model[0]
    x_tilde = torch.cat([torch.relu(q1(b)) for b in calib])  # inputs of layer 2 after layer 0 is quantized
    expected = 2 * x_tilde.T @ x_tilde / x_tilde.shape[0]
    (stats,) = recorder.seen
    torch.testing.assert_close(stats.hessian.to(expected.dtype), expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(x_tilde, torch.relu(model[0](torch.cat(calib))))  # layer 0 really changed


@dataclass(frozen=True)
class _GramRecorder(RecordingMethod):
    """GPFQ's statistics protocol: both streams, paired Gram matrices, optionally one batch per layer."""

    fresh_batch_per_layer: bool = False
    reads_float: ClassVar[bool] = True

    def new_stats(self, dim: int, device: torch.device) -> GPFQAccumulator:
        return GPFQAccumulator(dim, device)

    def calibration_batches(self, index: int, n_batches: int) -> Sequence[int]:
        return [index % n_batches] if self.fresh_batch_per_layer else range(n_batches)


@pytest.mark.parametrize("fresh", [False, True])
def test_gpfq_sees_float_and_quantized_streams(fresh: bool) -> None:
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).eval()
    calib = [torch.randn(5, 4), torch.randn(7, 4)]
    recorder = _GramRecorder(fresh_batch_per_layer=fresh)
    result = quantize(model, RTN(bits=2), calib, overrides={"2": recorder}, progress=False)
    used = [calib[1]] if fresh else calib  # layer index 1 takes cached batch 1 % 2 when fresh_batch_per_layer
    x = torch.cat([torch.relu(model[0](b)) for b in used]).detach()
    x_tilde = torch.cat([torch.relu(result.model[0](b)) for b in used]).detach()
    (stats,) = recorder.seen
    assert stats.count == x.shape[0]
    torch.testing.assert_close(stats.g.float(), x_tilde.T @ x, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stats.h_tilde.float(), x_tilde.T @ x_tilde, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stats.xx.float(), x.T @ x, rtol=1e-5, atol=1e-5)


def test_proxy_loss_uses_float_inputs() -> None:
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).eval()
    calib = [torch.randn(9, 4)]
    result = quantize(model, RTN(bits=2), calib, progress=False)
    x = torch.relu(model[0](calib[0]))
    err = model[2].weight - result.model[2].weight
    expected = torch.trace(err @ (x.T @ x / x.shape[0]) @ err.T).detach()
    assert result.layers[1].proxy_loss == pytest.approx(float(expected), rel=1e-5)


def test_overrides_and_skip() -> None:
    model = _ConvNet().eval()
    result = quantize(model, RTN(bits=3), _calib(), overrides={"conv*": RTN(bits=8)}, skip=["fc"], progress=False)
    rows = {r.name: r for r in result.layers}
    assert rows["conv1"].bits == 8 and rows["conv2"].bits == 8
    assert rows["fc"].bits is None and torch.equal(result.model.fc.weight, model.fc.weight)
    summary = result.summary()
    assert summary["float_layers"] == ["fc"]
    assert summary["quantized_weights"] == model.conv1.weight.numel() + model.conv2.weight.numel()
    assert 8 < summary["avg_bits_per_weight"] < 8 + 16 * 2 / 27 + 1e-9  # codes + per-row scale/zero


def test_quantize_many_shares_calibration_and_bits_shrink() -> None:
    model = _ConvNet().eval()
    results = quantize_many(model, [RTN(bits=8), RTN(bits=4), RTN(bits=2)], _calib(), progress=False)
    sqnr = [r.summary()["mean_sqnr_db"] for r in results]
    assert sqnr[0] > sqnr[1] > sqnr[2]
    assert [r.summary()["weight_bits"] for r in results] == [[8], [4], [2]]
    assert results[0].summary()["calibration"]["images"] == 12


def test_gpfq_and_gptq_run_on_grouped_convs() -> None:
    model = _ConvNet().eval()
    x = torch.randn(6, 3, 8, 8)
    for method in (GPFQ(bits=4), GPTQ(bits=4, act_order=True)):
        result = quantize(model, method, _calib(), progress=False)
        assert len(result.weights["conv2"]) == 2  # one WeightQuant per conv group
        out, ref = result.model(x), model(x)
        assert (out - ref).norm() < 0.5 * ref.norm()


def test_act_bits_quantizes_inputs() -> None:
    model = nn.Sequential(nn.Linear(4, 3)).eval()
    calib = [torch.randn(16, 4)]
    weights_only = quantize(model, Identity16(), calib, progress=False)
    result = quantize(model, Identity16(), calib, act_bits=2, progress=False)
    lo, hi = result.act_ranges["0"]
    assert lo == pytest.approx(float(calib[0].min())) and hi == pytest.approx(float(calib[0].max()))
    x = calib[0]
    assert torch.equal(weights_only.model(x), model(x))
    assert not torch.allclose(result.model(x), model(x))
    assert result.model[0]._forward_pre_hooks  # the fake-quant hook is installed


def test_bad_input_raises_before_work() -> None:
    model = _ConvNet().eval()
    with pytest.raises(ConfigError, match="conv1, conv2, fc"):
        quantize(model, RTN(bits=4), _calib(), overrides={"layer9": RTN(bits=8)}, progress=False)
    with pytest.raises(ConfigError, match="skip"):
        quantize(model, RTN(bits=4), _calib(), skip=["nothing*"], progress=False)
    with pytest.raises(LosslabError, match="empty"):
        quantize(model, RTN(bits=4), [], progress=False)
    with pytest.raises(ConfigError, match="not a quantization method"):
        quantize(model, "rtn", _calib(), progress=False)
    with pytest.raises(LosslabError, match="state dict"):
        quantize(model.state_dict(), RTN(bits=4), _calib(), progress=False)
    with pytest.raises(ConfigError, match="act_bits"):
        quantize(model, RTN(bits=4), _calib(), act_bits=1, progress=False)
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.conv2.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(LosslabError, match="conv2"):
        quantize(broken, RTN(bits=4), _calib(), progress=False)


def test_fold_bn_option() -> None:
    model = _ConvNet().eval()
    model.bn1.running_mean.uniform_(-1, 1)
    result = quantize(model, Identity16(), _calib(), fold_bn=True, progress=False)
    assert isinstance(result.model.bn1, nn.Identity) and result.fold_bn
    x = torch.randn(3, 3, 8, 8)
    torch.testing.assert_close(result.model(x), model(x), rtol=1e-5, atol=1e-5)


@dataclass(frozen=True, kw_only=True)
class _GPFQRecorder(GPFQ):
    """The real GPFQ (paired unfold, solve-only statistics) that also keeps the statistics it is handed."""

    seen: list = field(default_factory=list)

    def quantize_layer(self, weight: Tensor, stats: Any, *, seed: int = 0) -> WeightQuant:
        self.seen.append(stats.finalize())
        return super().quantize_layer(weight, stats, seed=seed)


def test_gpfq_statistics_of_sliced_conv_batches_match_the_definition(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches fed in sample slices (SLICE_BYTES made tiny) through the paired unfold give, per conv group, the lower
    triangles of X̃ᵀX and X̃ᵀX̃ of F.unfold's patches of the float and quantized inputs (float64 reference)."""
    import losslab.quant.engine as engine

    torch.manual_seed(0)
    model = _ConvNet().eval()
    calib = _calib(n_batches=2, batch=5)
    x = torch.randn(5, 8, 8, 8)
    assert len(engine._sample_slices(GPFQ(bits=4), model.conv2, x, x + 1)) == 1  # 40 kB of rows: one slice
    monkeypatch.setattr(engine, "SLICE_BYTES", 4096)
    slices = engine._sample_slices(GPFQ(bits=4), model.conv2, x, x + 1)
    assert [len(s[0]) for s in slices] == [1] * 5 and all(torch.equal(b, a + 1) for a, b in slices)
    assert len(engine._sample_slices(GPFQ(bits=4, legacy_unfold=True), model.conv2, x, x + 1)) == 1
    recorder = _GPFQRecorder(bits=3)
    result = quantize(model, RTN(bits=3), calib, overrides={"conv2": recorder}, progress=False, metrics=False)

    def conv2_rows(net: nn.Module) -> Tensor:  # [groups, B·L, d] from F.unfold on the reflect-padded input
        inp = torch.cat([torch.relu(net.bn1(net.conv1(b))) for b, _ in calib]).double()
        cols = F.unfold(F.pad(inp, (1, 1, 1, 1), mode="reflect"), 3, stride=2)
        return cols.permute(0, 2, 1).reshape(-1, 2, 36).transpose(0, 1)

    rows, rows_tilde = conv2_rows(model), conv2_rows(result.model)
    assert len(recorder.seen) == 2 and not torch.allclose(rows, rows_tilde)
    for g, gram in enumerate(recorder.seen):  # both groups' statistics are collected before either is quantized
        assert gram.count == rows.shape[1]
        want_g, want_h = rows_tilde[g].T @ rows[g], rows_tilde[g].T @ rows_tilde[g]
        torch.testing.assert_close(torch.tril(gram.g).double(), torch.tril(want_g), rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(torch.tril(gram.h_tilde).double(), torch.tril(want_h), rtol=1e-5, atol=1e-4)
