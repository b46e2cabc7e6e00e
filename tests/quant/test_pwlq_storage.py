"""PWLQ's stored size (issue 21 item 4): b + 1 bits per weight plus its range and breakpoint (per channel or per
tensor) and, with bias correction, a shift and gain per channel — never a float level table of 2^(b+1) entries per
row. The packed file is that size, and unpacking rebuilds the simulated weights bit-exactly."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from torch import nn

from losslab.quant import PWLQ, load_packed, quantize, save_packed
from losslab.quant.packed import META_KEY
from losslab.quant.pwlq import pwlq_level_table, pwlq_weight

OUT, IN = 64, 256


def _expected_bits_per_weight(bits: int, per_channel: bool, bias_correction: bool) -> float:
    """From the definition: b + 1 code bits; m and p (float32) per row or once; shift and gain per row."""
    params = 2 * (OUT if per_channel else 1) + (2 * OUT if bias_correction else 0)
    return bits + 1 + params * 32 / (OUT * IN)


@pytest.mark.parametrize("bits", [8, 4, 2])
@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("bias_correction", [False, True])
def test_bits_per_weight_is_b_plus_one_plus_parameters(bits: int, per_channel: bool, bias_correction: bool) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(IN, OUT)).eval()
    method = PWLQ(bits=bits, per_channel=per_channel, bias_correction=bias_correction)
    result = quantize(model, method, [torch.randn(4, IN)], progress=False)
    row = result.layers[0]
    assert row.bits_per_weight == pytest.approx(_expected_bits_per_weight(bits, per_channel, bias_correction))
    assert result.summary()["avg_bits_per_weight"] < bits + 2
    overhead = row.bits_per_weight - row.storage_bits
    assert f"+{overhead:.3f}" in result.table().splitlines()[2]  # the table shows the overhead


@pytest.mark.parametrize("scheme", ["pw2", "pw1"])
@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("bias_correction", [False, True])
def test_level_table_is_a_function_of_the_stored_parameters(scheme: str, per_channel: bool, bias_correction: bool):
    w = torch.randn(OUT, IN)
    wq = pwlq_weight(w, 4, scheme=scheme, per_channel=per_channel, bias_correction=bias_correction)
    params = wq.extras["lut_params"]
    assert params["m"].numel() == (OUT if per_channel else 1)
    assert torch.equal(pwlq_level_table(params, OUT), wq.lut)
    assert torch.equal(pwlq_level_table(params, OUT).gather(1, wq.codes.long()), wq.q)


def test_packed_file_is_smaller_than_float_and_exact(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(IN, OUT), nn.ReLU(), nn.Linear(OUT, 10)).eval()
    result = quantize(model, PWLQ(bits=8, bias_correction=True), [torch.randn(4, IN)], progress=False)
    path = tmp_path / "pwlq8.safetensors"
    size = save_packed(result, path)
    float_bytes = 4 * sum(p.numel() for p in model.parameters())
    with safe_open(os.fspath(path), framework="pt") as fh:
        names = list(fh.keys())
        header = len(fh.metadata()[META_KEY]) + len(json.dumps(names))
        tensor_bytes = sum(fh.get_tensor(k).numel() * fh.get_tensor(k).element_size() for k in names)
    stored_bits = sum(r.bits_per_weight * r.n_weights for r in result.layers)
    biases = 4 * (OUT + 10)
    assert tensor_bytes == pytest.approx(stored_bits / 8 + biases, abs=2)  # codes rounded up to whole bytes
    assert size < 2 * header + tensor_bytes  # nothing else in the file
    assert tensor_bytes < float_bytes * 10 / 32  # 9-bit codes plus under 1 bit per weight of parameters
    loaded = load_packed(path, model=model)
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, result.model.state_dict()[key]), key
