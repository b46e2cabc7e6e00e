"""losslab's own architectures: parameter-count oracles, layouts the other packages rely on, forward/backward."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from losslab.errors import ConfigError, DataNotFoundError
from losslab.models import create_model, list_models

OURS = [n for n in list_models() if timm.models.model_entrypoint(n).__module__.startswith("losslab.models")]
INPUT = {"small_cnn": (1, 8), "mlp": (1, 8), **{n: (3, 32) for n in OURS if "vgg" in n}}  # others: (3, 8)
HEAVY = {"cifar_resnet101", "cifar_resnet110", "cifar_resnet50", "cifar_resnet34", "cifar_resnet56", "cifar_vgg19_bn"}
HEAVY |= {n for n in OURS if n.startswith(("wide_resnet", "wrn"))} | {"cifar_resnet32_wide"}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_lists_all_families() -> None:
    expected = {
        *(f"cifar_resnet{d}" for d in (20, 32, 44, 56, 110, 18, 34, 50, 101)),
        "cifar_resnet18_nobn",
        *(f"cifar_vgg{d}_bn" for d in (11, 13, 16, 19)),
        "regulquant_convnet",
        "small_cnn",
        "mlp",
        *(f"wide_resnet{d}_{w}" for d, w in ((16, 4), (16, 8), (22, 8), (28, 10), (40, 4))),
        "wrn28_10",
        "cifar_resnet32_wide",
    }
    assert set(OURS) == expected


def test_resnet20_parameter_oracle() -> None:
    model = create_model("cifar_resnet20", num_classes=10)
    convs = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d))
    bns = sum(n_params(m) for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert (n_params(model), convs, bns, n_params(model.linear)) == (269_722, 267_696, 1_376, 650)


def test_resnet32_parameter_oracle() -> None:
    assert n_params(create_model("cifar_resnet32", num_classes=10)) == 464_154


def test_resnet20_layout_for_factorization() -> None:
    model = create_model("cifar_resnet20", num_classes=10)
    assert model.conv1.weight.shape == (16, 3, 3, 3)
    names = {n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert len(names) == 19 and "conv1" in names
    assert all(n == "conv1" or n.rsplit(".", 1)[-1] in ("conv1", "conv2") for n in names)
    # option A shortcuts: no 1x1 convs, the down-sampling block zero-pads channels 16 -> 32
    block = model.layer2[0]
    x = torch.randn(2, 16, 8, 8)
    shortcut = block.shortcut(x)
    assert shortcut.shape == (2, 32, 4, 4)
    torch.testing.assert_close(shortcut[:, 8:24], x[:, :, ::2, ::2])
    assert shortcut[:, :8].abs().sum() == 0 and shortcut[:, 24:].abs().sum() == 0


def test_resnet20_kaiming_init_variance() -> None:
    model = create_model("cifar_resnet20", num_classes=10)
    w = model.layer3[1].conv2.weight  # 64 x 64 x 3 x 3: fan_in 576, He variance 2/576
    assert abs(w.var().item() / (2 / 576) - 1) < 0.05


def test_convnet_parameter_oracle_and_blocks() -> None:
    model = create_model("regulquant_convnet", num_classes=10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    bns = sum(n_params(m) for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert n_params(model) == 1_212_778
    assert (sum(c.weight.numel() for c in convs), bns, n_params(model.linear)) == (1_208_160, 2_048, 2_570)
    assert [(c.in_channels, c.out_channels, c.stride[0]) for c in convs] == [
        (3, 32, 1), (32, 32, 1), (32, 64, 2), (64, 64, 1), (64, 64, 1),
        (64, 128, 2), (128, 128, 1), (128, 256, 1), (256, 256, 1),
    ]  # fmt: skip
    assert all(c.bias is None and c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)


def test_convnet_activation_names_hook_the_nine_post_relu_outputs() -> None:
    model = create_model("regulquant_convnet", num_classes=10).eval()
    assert len(model.activation_names) == 9
    seen: dict[str, torch.Tensor] = {}
    for name in model.activation_names:
        module = model.get_submodule(name)
        assert isinstance(module, nn.ReLU) and not module.inplace
        module.register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o))
    out = model(torch.randn(2, 3, 32, 32))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 10)
    sizes = [seen[n].shape[-1] for n in model.activation_names]
    assert sizes == [32, 32, 16, 16, 16, 8, 8, 8, 8]
    assert all((seen[n] >= 0).all() for n in model.activation_names)


def test_nobn_resnet_has_no_batchnorm_and_starts_as_identity_blocks() -> None:
    model = create_model("cifar_resnet18_nobn", num_classes=10)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    block = model.layer1[0]
    x = torch.randn(2, 64, 8, 8).relu()
    torch.testing.assert_close(block(x), x)  # residual scale starts at 0: block = relu(identity)


def test_nobn_resnet_residual_scales_get_gradients() -> None:
    model = create_model("cifar_resnet18_nobn", num_classes=3)
    model(torch.randn(2, 3, 8, 8)).square().sum().backward()
    scales = [m.residual_scale for m in model.modules() if getattr(m, "residual_scale", None) is not None]
    assert len(scales) == 8 and all(s.grad is not None and s.grad.abs() > 0 for s in scales)


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in OURS],
)
def test_forward_backward_every_model(name: str) -> None:
    in_chans, size = INPUT.get(name, (3, 8))
    model = create_model(name, num_classes=7, in_chans=in_chans, img_size=size)
    x = torch.randn(2, in_chans, size, size)
    out = model(x)
    assert out.shape == (2, 7)
    out.square().sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum().item() for g in grads) > 0


@pytest.mark.parametrize("name", ["cifar_resnet20", "cifar_resnet18", "regulquant_convnet", "cifar_vgg11_bn"])
def test_in_chans_sets_stem_input_channels(name: str) -> None:
    model = create_model(name, num_classes=3, in_chans=1).eval()
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first.in_channels == 1
    assert model(torch.randn(1, 1, 32, 32)).shape == (1, 3)


def test_mlp_takes_img_size_and_hidden() -> None:
    model = create_model("mlp", num_classes=5, in_chans=3, img_size=4, hidden=(7,))
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(48, 7), (7, 5)]
    with pytest.raises(ConfigError, match="hidden"):
        create_model("mlp", num_classes=5, hidden=(0,))


def test_bad_depth_and_pretrained_ours_raise() -> None:
    from losslab.models.cifar_resnet import CifarResNet

    with pytest.raises(ConfigError, match="6n\\+2"):
        CifarResNet(depth=21)
    with pytest.raises(DataNotFoundError, match="no pretrained weights"):
        create_model("cifar_resnet20", num_classes=10, pretrained=True)


def test_timm_create_model_builds_ours() -> None:
    model = timm.create_model("cifar_resnet20", num_classes=100)
    assert model.linear.out_features == 100
