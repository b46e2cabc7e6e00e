"""Build any model by name: losslab's own architectures and every timm model, with a rebuildable recipe.

::

    from losslab.models import create_model, list_models, model_recipe, rebuild

    model = create_model("cifar_resnet20", num_classes=10)
    vit = create_model("vit_small_patch16_224", num_classes=10, img_size=32)  # patch 4 at 32x32
    recipe = model_recipe(vit)  # {'name': ..., 'num_classes': 10, 'in_chans': 3, 'img_size': 32, 'kwargs': {...}}
    same_architecture = rebuild(recipe)
    list_models("cifar_*")  # losslab's models first

Small images (``img_size <= 64``) get small-image transformer settings unless given explicitly: ViT, DeiT and CaiT
use patch size ``img_size // 8`` (4 at 32x32, an 8x8 token grid); Swin also uses that patch size and the largest
window (<= 7) that divides the token grid.
"""

from __future__ import annotations

import copy
import difflib
import fnmatch
import inspect
from typing import Any

from torch import nn

from losslab.errors import DataNotFoundError, LosslabError
from losslab.models.registry import ENTRYPOINTS

SMALL_IMAGE_MAX = 64
PATCH_FAMILIES = ("vit_", "deit", "cait", "swin")
RECIPE_KEYS = ("name", "num_classes", "in_chans", "img_size", "kwargs")
#: timm.create_model arguments that fetch weights (network) or read another file; never taken from a recipe.
WEIGHT_SOURCE_KWARGS = frozenset(
    {"pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "cache_dir", "pretrained_strict"}
)


def _is_ours(name: str) -> bool:
    return name in ENTRYPOINTS


def list_models(pattern: str | None = None) -> list[str]:
    """All model names (``fnmatch`` ``pattern``, e.g. ``"cifar_*"``): losslab's own first, then timm's, each sorted."""
    import timm

    names = timm.list_models()
    if pattern is not None:
        names = fnmatch.filter(names, pattern)
    ours = [n for n in names if _is_ours(n)]
    return ours + [n for n in names if n not in set(ours)]


def small_image_kwargs(name: str, img_size: int) -> dict[str, Any]:
    """Patch/window settings for a transformer at ``img_size <= 64``; ``{}`` for other models and larger images."""
    if img_size > SMALL_IMAGE_MAX or not name.startswith(PATCH_FAMILIES) or "_r26_" in name or "resnet" in name:
        return {}
    patch = max(1, img_size // 8)
    kwargs: dict[str, Any] = {"patch_size": patch}
    if name.startswith("swin"):
        grid = img_size // patch
        kwargs["window_size"] = max(w for w in range(1, 8) if grid % w == 0)
    return kwargs


def _unknown_model(name: str) -> LosslabError:
    import timm

    close = difflib.get_close_matches(name, timm.list_models(), n=6, cutoff=0.6)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    return LosslabError(
        f"unknown model {name!r}{hint}. Run `losslab models` or losslab.models.list_models() to see all names."
    )


def _pretrained_missing(name: str, error: Exception, cache_dir: str | None) -> DataNotFoundError:
    import timm
    from huggingface_hub import constants

    cfg = timm.models.get_pretrained_cfg(name, allow_unregistered=True)
    source = getattr(cfg, "hf_hub_id", None) or getattr(cfg, "url", None) or "(no weight source registered)"
    return DataNotFoundError(
        f"pretrained weights for {name!r} could not be loaded ({type(error).__name__}: {error}). timm looked for "
        f"{source} in the Hugging Face cache {cache_dir or constants.HF_HUB_CACHE} and the torch hub cache, then "
        "tried to download it. Connect to the internet once (or copy the weights into that cache, or set HF_HOME to "
        "a cache that holds them), or use pretrained=False (CLI: drop --pretrained)."
    )


def create_model(
    name: str,
    num_classes: int,
    in_chans: int = 3,
    img_size: int | None = None,
    pretrained: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """Build model ``name`` (losslab's or timm's) for ``num_classes`` classes and ``in_chans``-channel images.

    ``img_size`` is passed to models that take it (timm transformers, ``mlp``); for ``img_size <= 64``
    transformers also get :func:`small_image_kwargs` unless ``kwargs`` sets them. Other ``kwargs`` go to the
    model's constructor. The result carries ``model.losslab_recipe`` (see :func:`model_recipe`). losslab's own
    architectures are built from their entrypoints directly (as ``timm.create_model`` would, without importing
    timm); every other name goes through ``timm.create_model``.
    """
    ours = _is_ours(name)
    if not ours:
        import timm

        if not timm.is_model(name):
            raise _unknown_model(name)
    if num_classes < 1 or in_chans < 1 or (img_size is not None and img_size < 1):
        raise LosslabError(
            f"num_classes={num_classes}, in_chans={in_chans}, img_size={img_size} are not allowed for model {name!r}: "
            "all must be positive integers"
        )
    build_kwargs = dict(kwargs)
    if img_size is not None:
        build_kwargs = {**small_image_kwargs(name, img_size), **build_kwargs}
        if not ours or "img_size" in inspect.signature(ENTRYPOINTS[name]).parameters:
            build_kwargs["img_size"] = img_size
    if ours:  # timm.create_model drops None-valued kwargs and calls the entrypoint: the same, without timm
        build = {k: v for k, v in build_kwargs.items() if v is not None}
        model = ENTRYPOINTS[name](pretrained=pretrained, num_classes=num_classes, in_chans=in_chans, **build)
        model.losslab_recipe = _recipe(name, num_classes, in_chans, img_size, kwargs)
        return model
    import timm

    try:
        model = timm.create_model(
            name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans, **build_kwargs
        )
    except TypeError as error:
        # timm CNNs take any input size and refuse an ``img_size`` argument: build them without it.
        if "img_size" not in str(error) or _is_ours(name) or "img_size" in kwargs:
            raise
        del build_kwargs["img_size"]
        model = timm.create_model(
            name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans, **build_kwargs
        )
    except (OSError, RuntimeError) as error:
        if not pretrained or _is_ours(name):
            raise
        raise _pretrained_missing(name, error, kwargs.get("cache_dir")) from error
    model.losslab_recipe = _recipe(name, num_classes, in_chans, img_size, kwargs)
    return model


def _recipe(name: str, num_classes: int, in_chans: int, img_size: int | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "num_classes": num_classes,
        "in_chans": in_chans,
        "img_size": img_size,
        "kwargs": copy.deepcopy(kwargs),
    }


def model_recipe(model: nn.Module) -> dict[str, Any]:
    """The recipe ``{name, num_classes, in_chans, img_size, kwargs}`` stored by :func:`create_model` (a copy)."""
    recipe = getattr(model, "losslab_recipe", None)
    if recipe is None:
        raise LosslabError(
            f"{type(model).__name__} has no losslab_recipe: build models with losslab.models.create_model(...) "
            "so that checkpoints can rebuild the architecture"
        )
    return copy.deepcopy(recipe)


def rebuild(recipe: dict[str, Any]) -> nn.Module:
    """Build a fresh (randomly initialised, never pretrained) model from a :func:`model_recipe` dict.

    A recipe comes from a file (packed models), so it is data to check, not to trust: the types are validated and
    kwargs that would download weights or read another file (:data:`WEIGHT_SOURCE_KWARGS`, e.g.
    ``pretrained=True``) are refused. Rebuilding never reaches the network.
    """
    if not isinstance(recipe, dict):
        raise LosslabError(f"a model recipe is a dict with keys {list(RECIPE_KEYS)}, got {type(recipe).__name__}")
    missing = [k for k in RECIPE_KEYS if k not in recipe]
    if missing:
        raise LosslabError(f"model recipe lacks keys {missing}; a recipe has keys {list(RECIPE_KEYS)}")
    name, kwargs, img_size = recipe["name"], recipe["kwargs"], recipe["img_size"]
    ints_ok = all(type(recipe[k]) is int for k in ("num_classes", "in_chans")) and (
        img_size is None or type(img_size) is int
    )
    if not isinstance(name, str) or not ints_ok or not isinstance(kwargs, dict):
        raise LosslabError(
            f"model recipe has wrong types ({ {k: type(recipe[k]).__name__ for k in RECIPE_KEYS} }): name is a "
            "string, num_classes/in_chans integers, img_size an integer or null, kwargs a dict"
        )
    refused = sorted(WEIGHT_SOURCE_KWARGS & set(kwargs))
    if refused:
        raise LosslabError(
            f"model recipe kwargs {refused} are refused: rebuilding an architecture from a file never downloads "
            "pretrained weights or reads another file. Remove them from the recipe (the weights come from the file "
            "being loaded)"
        )
    return create_model(
        name,
        num_classes=recipe["num_classes"],
        in_chans=recipe["in_chans"],
        img_size=img_size,
        pretrained=False,
        **kwargs,
    )
