"""FNL's CIFAR models: WRN-d-k and EigenDamage's wide ResNet-32 — parameter counts against closed forms, forward."""

from __future__ import annotations

import pytest
import timm
import torch

import losslab.models  # noqa: F401  (registers the models)
from losslab.errors import ConfigError
from losslab.models import create_model
from losslab.models.wide_resnet import WideResNet


def _bn(c: int) -> int:
    return 2 * c


def wrn_param_count(depth: int, width: int, classes: int) -> int:
    """Closed form of Zagoruyko & Komodakis' WRN: stem, pre-activation blocks with 1x1 shortcuts, BN, Linear."""
    n = (depth - 4) // 6
    total, c_in = 3 * 16 * 9, 16
    for c in (16 * width, 32 * width, 64 * width):
        for i in range(n):
            cin = c_in if i == 0 else c
            total += _bn(cin) + 9 * cin * c + _bn(c) + 9 * c * c + (cin * c if cin != c else 0)
        c_in = c
    return total + _bn(c_in) + c_in * classes + classes


def resnet_param_count(widths: tuple[int, int, int], n: int, classes: int, conv_shortcut: bool = False) -> int:
    """He et al.'s CIFAR ResNet: option-A (parameter-free) shortcuts, or option B (1x1 conv without bias + BN where
    the channel count changes), as the FNL seed's EigenDamage-Pytorch/models/resnet.py BasicBlock builds them."""
    total, c_in = 3 * widths[0] * 9 + _bn(widths[0]), widths[0]
    for c in widths:
        for i in range(n):
            cin = c_in if i == 0 else c
            total += 9 * cin * c + 9 * c * c + 2 * _bn(c)
            if conv_shortcut and cin != c:
                total += cin * c + _bn(c)
        c_in = c
    return total + c_in * classes + classes


def _count(name: str, classes: int = 10) -> int:
    with torch.device("meta"):
        model = timm.create_model(name, num_classes=classes)
    return sum(p.numel() for p in model.parameters())


def test_wrn28_10_has_the_published_parameter_count() -> None:
    assert _count("wrn28_10") == 36_479_194  # FNL Table / Zagoruyko & Komodakis: 36.5 M on CIFAR-10
    assert _count("wide_resnet28_10") == 36_479_194
    assert wrn_param_count(28, 10, 10) == 36_479_194


@pytest.mark.parametrize(("depth", "width"), [(16, 4), (16, 8), (22, 8), (40, 4)])
def test_registered_wrn_variants_match_closed_form(depth: int, width: int) -> None:
    assert _count(f"wide_resnet{depth}_{width}", 100) == wrn_param_count(depth, width, 100)


def test_eigendamage_resnet32_widths_and_count() -> None:
    with torch.device("meta"):
        model = timm.create_model("cifar_resnet32_wide", num_classes=10)
    assert [model.layer1[0].conv1.out_channels, model.layer2[0].conv1.out_channels] == [64, 128]
    assert model.layer3[-1].conv2.out_channels == 256 and len(model.layer3) == 5
    assert isinstance(model.layer2[0].shortcut[0], torch.nn.Conv2d)  # the seed's 1x1 downsample + bn3
    assert _count("cifar_resnet32_wide") == resnet_param_count((64, 128, 256), 5, 10, conv_shortcut=True)
    assert resnet_param_count((64, 128, 256), 5, 10, True) - resnet_param_count((64, 128, 256), 5, 10) == 41_728
    assert _count("cifar_resnet32") == resnet_param_count((16, 32, 64), 5, 10)  # the formula's own check


def test_forward_shapes_and_training_step() -> None:
    torch.manual_seed(0)
    model = create_model("wide_resnet16_4", num_classes=7)
    x = torch.randn(4, 3, 32, 32)
    logits = model(x)
    assert logits.shape == (4, 7)
    logits.logsumexp(1).mean().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert model.activation_names[:2] == ["layer1.0", "layer1.1"]
    small = WideResNet(depth=10, width=1, num_classes=3, drop_rate=0.3).eval()
    assert torch.equal(small(x[:2]), small(x[:2]))  # dropout off in eval


def test_bad_depth_raises_config_error() -> None:
    with pytest.raises(ConfigError, match="6n\\+4"):
        WideResNet(depth=27, width=2)
