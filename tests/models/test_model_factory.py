"""create_model / list_models / model_recipe / rebuild, including timm models at small image sizes."""

from __future__ import annotations

import pytest
import torch

from losslab.errors import DataNotFoundError, LosslabError
from losslab.models import create_model, list_models, model_recipe, rebuild, small_image_kwargs


def test_list_models_puts_ours_first_and_filters() -> None:
    names = list_models()
    assert names[0].startswith("cifar_") and "vit_small_patch16_224" in names
    assert names.index("small_cnn") < names.index("resnet18")
    assert list_models("cifar_vgg*") == ["cifar_vgg11_bn", "cifar_vgg13_bn", "cifar_vgg16_bn", "cifar_vgg19_bn"]


def test_unknown_name_lists_close_matches() -> None:
    with pytest.raises(LosslabError, match="cifar_resnet20") as info:
        create_model("cifar_resnet21", num_classes=10)
    assert "list_models()" in str(info.value) and "losslab models" in str(info.value)


def test_bad_sizes_raise_before_building() -> None:
    with pytest.raises(LosslabError, match="num_classes=0"):
        create_model("cifar_resnet20", num_classes=0)


def test_small_image_kwargs_rules() -> None:
    assert small_image_kwargs("vit_small_patch16_224", 32) == {"patch_size": 4}
    assert small_image_kwargs("swin_tiny_patch4_window7_224", 32) == {"patch_size": 4, "window_size": 4}
    assert small_image_kwargs("cait_xxs24_224", 64) == {"patch_size": 8}
    assert small_image_kwargs("vit_small_patch16_224", 224) == {}
    assert small_image_kwargs("resnet18", 32) == {}


def _check_forward_backward(model: torch.nn.Module, num_classes: int) -> None:
    """A batch of two 32×32 RGB images gives (2, num_classes) logits and finite gradients."""
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, num_classes)
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.slow
def test_vit_small_at_32x32_uses_patch_4() -> None:
    model = create_model("vit_small_patch16_224", num_classes=10, img_size=32, depth=2)
    assert model.patch_embed.patch_size == (4, 4) and model.patch_embed.num_patches == 64
    _check_forward_backward(model, 10)


@pytest.mark.slow
def test_swin_at_32x32_forward_backward() -> None:
    model = create_model("swin_tiny_patch4_window7_224", num_classes=10, img_size=32, depths=(1, 1, 1, 1))
    _check_forward_backward(model, 10)


@pytest.mark.slow
def test_timm_cnn_ignores_img_size_and_records_it() -> None:
    model = create_model("resnet18", num_classes=4, in_chans=1, img_size=32)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 4)
    assert model_recipe(model) == {"name": "resnet18", "num_classes": 4, "in_chans": 1, "img_size": 32, "kwargs": {}}


def test_recipe_rebuilds_same_architecture() -> None:
    model = create_model("mlp", num_classes=3, in_chans=2, img_size=4, hidden=(5, 6))
    recipe = model_recipe(model)
    assert recipe == {"name": "mlp", "num_classes": 3, "in_chans": 2, "img_size": 4, "kwargs": {"hidden": (5, 6)}}
    copy = rebuild(recipe)
    assert {k: v.shape for k, v in copy.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    copy.load_state_dict(model.state_dict())
    x = torch.randn(2, 2, 4, 4)
    torch.testing.assert_close(copy(x), model(x))


def test_recipe_errors() -> None:
    with pytest.raises(LosslabError, match="create_model"):
        model_recipe(torch.nn.Linear(2, 2))
    with pytest.raises(LosslabError, match="lacks keys"):
        rebuild({"name": "mlp"})


def test_pretrained_timm_model_offline_raises_data_not_found(tmp_path, monkeypatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataNotFoundError, match="pretrained weights for 'resnet18'") as info:
        create_model("resnet18", num_classes=10, pretrained=True, cache_dir=str(tmp_path))
    assert str(tmp_path) in str(info.value) and "pretrained=False" in str(info.value)


def test_losslab_models_are_built_as_timm_builds_them() -> None:
    """create_model builds losslab's architectures from their entrypoints without timm; timm.create_model gives the
    same module with the same initial weights from the same seed."""
    import timm

    from losslab.models import create_model

    for name, kwargs in (("cifar_resnet20", {}), ("mlp", {"img_size": 8}), ("small_cnn", {})):
        torch.manual_seed(0)
        ours = create_model(name, num_classes=10, in_chans=1, **kwargs)
        torch.manual_seed(0)
        theirs = timm.create_model(name, num_classes=10, in_chans=1, **kwargs)
        assert type(ours) is type(theirs)
        a, b = ours.state_dict(), theirs.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_models_enter_timms_registry_when_timm_is_imported_later() -> None:
    """Importing losslab.models does not import timm; importing timm afterwards registers losslab's names."""
    import subprocess
    import sys

    code = (
        "import sys; import losslab.models; before = 'timm' in sys.modules; import timm; "
        "print(before, timm.is_model('cifar_resnet20'), timm.is_model('wrn28_10'), "
        "timm.models.model_entrypoint('small_cnn').__module__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True", "True", "losslab.models.small_nets"]
