"""Packed storage: bit packing round-trips, packed == fake bit-exactly, real file size, wrong-model errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from losslab.errors import LosslabError
from losslab.quant import GPFQ, GPTQ, LDLQ, PWLQ, RTN, Identity16, QuantMethod, load_packed, quantize, save_packed
from losslab.quant.packed import pack_bits, read_packed_metadata, unpack_bits


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, groups=2)
        self.fc = nn.Linear(16, 8)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.bn(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.fc(x.mean(dim=(2, 3)))


def _calib() -> list[Tensor]:
    return [torch.randn(4, 3, 8, 8) for _ in range(2)]


@pytest.mark.parametrize("nbits", [1, 2, 3, 5, 8, 9])
def test_pack_bits_round_trip(nbits: int) -> None:
    values = torch.randint(0, 2**nbits, (37,))
    packed = pack_bits(values, nbits)
    assert packed.dtype == torch.uint8 and packed.numel() == (37 * nbits + 7) // 8
    assert torch.equal(unpack_bits(packed, nbits, 37), values)


METHODS = [
    RTN(bits=4),
    RTN(bits=3, grid="sym"),
    RTN(bits=4, group_size=8),
    RTN(bits=3, grid="gpfq"),
    GPTQ(bits=4, act_order=True, group_size=8),
    GPTQ(bits=3, grid="sym", static_groups=True, group_size=8, act_order=True),
    RTN(bits=3, grid="narrow", clip="mse"),
    RTN(bits=3, grid="quip"),
    RTN(bits=4, grid="regulquant_uniform"),
    GPFQ(bits=3),
    GPFQ(bits=4, grid="sym", group_size=8),
    GPFQ(bits=3, grid="narrow", clip="mse"),
    GPFQ(bits=3, grid="asym", group_size=8, sparsity="l1", lam=0.01),
    GPFQ(bits=3, grid="gpfq"),
    GPFQ(bits=3, grid="gpfq", legacy_alphabet=True),
    GPFQ(bits=3, grid="gpfq", sparsity="l0", lam=0.01),
    PWLQ(bits=4),
    PWLQ(bits=3, scheme="pw1", per_channel=False),
    PWLQ(bits=4, bias_correction=True),
    LDLQ(bits=3, order="ldlqRG", npasses=2),
    GPTQ(bits=3, grid="quip", incoherence="hadamard"),
    LDLQ(bits=2, grid="quip", incoherence="butterfly"),
    Identity16(),
]


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.describe())
def test_packed_equals_fake_bit_exactly(method: QuantMethod, tmp_path: Path) -> None:
    model = _Net().eval()
    result = quantize(model, method, _calib(), progress=False, act_bits=8 if method.bits == 4 else None)
    path = tmp_path / "m.safetensors"
    size = save_packed(result, path)
    assert size == os.path.getsize(path)
    loaded = load_packed(path, model=_Net())
    fake = result.model.state_dict()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, fake[key]), key
    x = torch.randn(3, 3, 8, 8)
    assert torch.equal(loaded(x), result.model(x))  # incl. activation fake-quant when act_bits is set
    meta = read_packed_metadata(path)
    assert meta["kind"] == "packed" and meta["layers"]["conv1"]["groups"][0]["grid"] == result.layers[0].grid


def test_file_size_shrinks_with_bits(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 64)).eval()
    calib = [torch.randn(8, 256)]
    sizes = {}
    for bits in (8, 4, 2):
        sizes[bits] = save_packed(quantize(model, RTN(bits=bits), calib, progress=False), tmp_path / f"{bits}.st")
    assert sizes[8] > sizes[4] > sizes[2]
    codes_bytes = (256 * 256 + 256 * 64) * (8 - 4) / 8
    assert sizes[8] - sizes[4] == pytest.approx(codes_bytes, abs=16)
    float_size = 4 * sum(p.numel() for p in model.parameters())
    assert sizes[4] < float_size / 6


def test_recipe_rebuild_and_wrong_model(tmp_path: Path) -> None:
    model = _Net().eval()
    result = quantize(model, RTN(bits=4), _calib(), progress=False)
    path = tmp_path / "m.safetensors"
    save_packed(result, path)
    with pytest.raises(LosslabError, match="no model recipe"):
        load_packed(path)
    with pytest.raises(LosslabError, match="another architecture"):
        load_packed(path, model=nn.Sequential(nn.Linear(3, 4)))
    with pytest.raises(LosslabError, match="not a losslab packed file"):
        from safetensors.torch import save_file

        save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
        load_packed(tmp_path / "plain.safetensors", model=_Net())


def test_load_rebuilds_architecture_from_recipe(tmp_path: Path) -> None:
    from losslab.models import create_model

    model = create_model("small_cnn", num_classes=10, in_chans=1).eval()
    result = quantize(model, GPTQ(bits=3), [torch.randn(8, 1, 8, 8)], progress=False)
    path = tmp_path / "small.safetensors"
    save_packed(result, path)
    assert read_packed_metadata(path)["recipe"]["name"] == "small_cnn"
    loaded = load_packed(path)
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(loaded(x), result.model(x))


def test_fold_bn_packed(tmp_path: Path) -> None:
    model = _Net().eval()
    model.bn.running_var.uniform_(0.5, 2)
    result = quantize(model, RTN(bits=4), _calib(), fold_bn=True, progress=False)
    path = tmp_path / "m.safetensors"
    save_packed(result, path)
    loaded = load_packed(path, model=_Net())
    x = torch.randn(2, 3, 8, 8)
    assert isinstance(loaded.bn, nn.Identity)
    assert torch.equal(loaded(x), result.model(x))
