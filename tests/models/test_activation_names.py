"""CIFAR ResNets name their post-ReLU block outputs so LPGrad can hook them."""

from __future__ import annotations

import timm
import torch

import losslab.models  # noqa: F401  (registers the models)
from losslab.regularizers import create


def test_resnet20_activation_names_are_block_outputs() -> None:
    model = timm.create_model("cifar_resnet20", num_classes=10)
    names = model.activation_names
    assert names[0] == "layer1.0" and names[-1] == "layer3.2" and len(names) == 9
    modules = dict(model.named_modules())
    captured: list[torch.Tensor] = []
    handles = [modules[n].register_forward_hook(lambda m, i, o: captured.append(o)) for n in names]
    model(torch.randn(2, 3, 32, 32))
    for handle in handles:
        handle.remove()
    assert len(captured) == 9 and all(bool((t >= 0).all()) for t in captured)  # post-ReLU


def test_lp_grad_with_activations_on_resnet20() -> None:
    model = timm.create_model("cifar_resnet20", num_classes=10)
    reg = create("lp_grad", p=2, lam=0.1, activations=True)
    reg.attach(model)
    reg.set_active(True)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    loss = torch.nn.functional.cross_entropy(model(x), y)
    term = reg.loss_term(model, loss, 4)
    reg.detach()
    assert term is not None and torch.isfinite(term) and float(term) > 0
    assert reg.last_parts["a"] > 0  # the activation term is present


def test_small_models_name_their_post_relu_outputs() -> None:
    """The default CLI model (small_cnn) and mlp work with LPGrad's activation term out of the box."""
    for name, kwargs, x in (
        ("small_cnn", {"in_chans": 1}, torch.randn(4, 1, 8, 8)),
        ("mlp", {"in_chans": 1, "img_size": 8}, torch.randn(4, 1, 8, 8)),
    ):
        model = timm.create_model(name, num_classes=10, **kwargs)
        modules = dict(model.named_modules())
        assert all(
            isinstance(modules[n][-1] if isinstance(modules[n], torch.nn.Sequential) else modules[n], torch.nn.ReLU)
            for n in model.activation_names
        ), name
        reg = create("lp_grad", p=2, lam=0.1)
        reg.attach(model)
        loss = torch.nn.functional.cross_entropy(model(x), torch.randint(0, 10, (4,)))
        captured = reg._capture.take()
        assert len(captured) == len(model.activation_names) and all(bool((t >= 0).all()) for t in captured)
        reg.detach()
        assert loss.requires_grad
