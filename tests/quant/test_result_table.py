"""QuantResult.table(): columns stay aligned whatever the layer names' length."""

from __future__ import annotations

import torch
from torch import nn

from losslab.quant import RTN, quantize


def test_long_layer_names_do_not_run_into_the_shape_column() -> None:
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("a_rather_long_decoder_layer_name", nn.Sequential(nn.Linear(8, 8)))
    model.add_module("fc", nn.Linear(8, 3))
    result = quantize(model, RTN(bits=4), [torch.randn(4, 8)], skip=["fc"], progress=False)
    header, rule, long_row, fc_row = result.table().splitlines()
    column = header.index("shape")
    assert long_row.split()[:2] == ["a_rather_long_decoder_layer_name.0", "8x8"]
    assert long_row.index("8x8") == column and fc_row.index("3x8") == column
    assert set(rule) <= {"-", " "}
    assert fc_row.split()[2] == "float" and long_row.split()[2:5] == ["4", "16", "asym"]
