"""BatchNorm folding (spec §9): eval outputs unchanged to 1e-5, BNs replaced by Identity, input untouched."""

from __future__ import annotations

import torch
from torch import nn

from losslab.quant.bn_fold import find_bn_pairs, fold_batchnorm


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 5)
        self.bn3 = nn.BatchNorm1d(5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = x + torch.relu(self.bn2(self.conv2(x)))
        return self.bn3(self.fc(x.mean(dim=(2, 3))))


def _randomize_bn(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.2, 3)
            m.weight.data.uniform_(0.5, 2)
            m.bias.data.uniform_(-1, 1)


def test_fold_keeps_eval_outputs() -> None:
    model = _Net().eval()
    _randomize_bn(model)
    x = torch.randn(4, 3, 8, 8)
    ref = model(x)
    folded = fold_batchnorm(model)
    assert find_bn_pairs(model) == [("conv1", "bn1"), ("conv2", "bn2"), ("fc", "bn3")]
    assert not any(isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d) for m in folded.modules())
    torch.testing.assert_close(folded(x), ref, rtol=1e-5, atol=1e-5)
    assert isinstance(model.bn1, nn.BatchNorm2d)  # the input model is untouched
    assert model.conv1.bias is None and folded.conv1.bias is not None


def test_fold_formula() -> None:
    conv, bn = nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3)
    _randomize_bn(bn)
    model = nn.Sequential(conv, bn).eval()
    folded = fold_batchnorm(model)
    factor = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    torch.testing.assert_close(folded[0].weight, conv.weight * factor[:, None, None, None])
    torch.testing.assert_close(folded[0].bias, bn.bias + (conv.bias - bn.running_mean) * factor)
