"""The segment walk falls back to the prefix walk (same results) when its cache would not fit in memory."""

from __future__ import annotations

import pytest
import timm
import torch

import losslab.models  # noqa: F401 - registers the models
from losslab.quant import GPTQ, quantize
from losslab.quant import walk as walk_module
from losslab.quant.walk import estimate_cache_bytes


def _batches() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(4, 1, 8, 8, generator=gen) for _ in range(3)]


def test_estimate_is_three_largest_outputs_per_batch_and_stream() -> None:
    model = timm.create_model("small_cnn", in_chans=1, num_classes=10).eval()
    batch = _batches()[0]
    largest = 4 * 16 * 2 * 8 * 8 * 4  # the 32-channel 8×8 activation of 4 images, float32
    assert estimate_cache_bytes(model, batch, n_batches=3, n_streams=2) == 3 * largest * 3 * 2


def test_too_little_memory_selects_the_prefix_walk_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = timm.create_model("small_cnn", in_chans=1, num_classes=10).eval()
    roomy = quantize(model, GPTQ(bits=3), _batches(), progress=False)
    monkeypatch.setattr(walk_module, "free_memory_bytes", lambda device: 1024)
    monkeypatch.setattr("losslab.quant.engine.free_memory_bytes", lambda device: 1024)
    tight = quantize(model, GPTQ(bits=3), _batches(), progress=False)
    assert roomy.summary()["calibration"]["walk"] == "segments"
    calibration = tight.summary()["calibration"]
    assert calibration["walk"] == "prefix" and "free memory" in calibration["walk_note"]
    for name, tensor in roomy.model.state_dict().items():
        assert torch.equal(tensor, tight.model.state_dict()[name]), name
