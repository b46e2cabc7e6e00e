"""Turn a :class:`TrainConfig` into the pieces of a run: data loaders, model, objective, regularizers.

Each builder checks its part of the config against the registries (objectives, models, datasets, regularizers)
so an unknown name fails before training with the list of valid choices::

    data = make_loaders(cfg)                        # LoaderSet(train, val, test, spec, kind, reason)
    model, dense_params = build_model(cfg, data.spec)
    objective = build_objective(cfg)
    schedule, always_on = build_regularization(cfg, model)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from losslab.errors import ConfigError, DataNotFoundError
from losslab.runs.device import mps_available
from losslab.train.config import TrainConfig


@dataclass
class LoaderSet:
    """Train / validation / test loaders of one dataset, its :class:`losslab.data.DataSpec`, and which input
    pipeline was chosen (``kind``: ``device`` or ``workers``) and why (``reason``)."""

    train: Iterable[Any]
    val: Iterable[Any]
    test: Iterable[Any]
    spec: Any
    kind: str = "workers"
    reason: str = ""
    train_size: int = 0

    def device_loaders(self) -> list[Any]:
        """The loaders that must be moved to the training device (device pipeline only)."""
        return [self.train, self.val, self.test] if self.kind == "device" else []


def erasing_of(cfg: TrainConfig) -> Any:
    """The cutout / random-erasing settings of ``cfg`` (``losslab.data.transforms.Erasing``)."""
    from losslab.data.transforms import Erasing

    return Erasing(cutout=cfg.cutout, reprob=cfg.reprob, remode=cfg.remode, recount=cfg.recount)


def training_device(cfg: TrainConfig) -> torch.device:
    """The device the run trains on (for one device: the plain engine's; for ``loader=auto``: the first one).

    ``auto`` is a CUDA GPU if there is one, else Apple's GPU (MPS) if there is one, else the CPU, as in
    Lightning; a CUDA run uses the one listed index (``--devices 1,``) or the current device.
    """
    accelerator = cfg.accelerator.lower()
    wants_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if not (wants_gpu and torch.cuda.is_available()):
        use_mps = accelerator == "mps" or (accelerator == "auto" and mps_available())
        return torch.device("mps") if use_mps else torch.device("cpu")
    listed = [d for d in cfg.devices.split(",") if d.strip()] if "," in cfg.devices else []
    return torch.device("cuda", int(listed[0]) if len(listed) == 1 else torch.cuda.current_device())


def choose_loader(cfg: TrainConfig, splits: dict[str, Any], device: torch.device) -> tuple[str, str]:
    """(``device`` | ``workers``, reason): the input pipeline for ``cfg`` on ``device``; ``loader=device`` on data
    or transforms the device pipeline cannot take raises :class:`ConfigError` naming them and the alternative."""
    from losslab.data.device import DEVICE_MEMORY_SHARE, device_pipeline_problem, free_memory, split_nbytes

    spec = splits["train"].spec
    problem = device_pipeline_problem(spec, splits["train"].img_size, cfg.augment, cfg.randaugment)
    if problem is None:
        need = sum(split_nbytes(spec, len(split)) for split in splits.values())
        free = free_memory(device)
        if need > DEVICE_MEMORY_SHARE * free:
            problem = (
                f"the {need / 2**20:,.0f} MiB of {spec.name!r} images exceed {DEVICE_MEMORY_SHARE:.0%} of the "
                f"{free / 2**20:,.0f} MiB free on {device}"
            )
    if cfg.loader == "device" and problem is not None:
        raise ConfigError(f"loader='device' cannot hold this run: {problem}; use --loader workers (or auto)")
    if cfg.loader == "workers":
        return "workers", "asked for with --loader workers"
    if problem is not None:
        return "workers", problem
    return "device", "asked for with --loader device" if cfg.loader == "device" else f"all splits fit on {device}"


def make_loaders(cfg: TrainConfig, eval_batch_size: int | None = None, kind: str | None = None) -> LoaderSet:
    """Loaders for ``cfg.dataset``: shuffled, augmented training split; fixed validation carve-out; test split.

    The pipeline is ``cfg.loader`` (``auto`` resolved by :func:`choose_loader`) unless ``kind`` forces one. Both
    pipelines share the split logic (``losslab.data.load_splits``) and the epoch-seeded, DDP-sharded order
    (``losslab.data.device.ShardSampler``); evaluation shards are neither padded nor cut.
    """
    from losslab.data import as_dataset, load_splits
    from losslab.data.device import DeviceLoader, ShardSampler

    erasing = erasing_of(cfg)
    if cfg.randaugment:  # a bad policy string fails before any file is read
        from losslab.data import build_transform, dataset_info

        build_transform(dataset_info(cfg.dataset), True, cfg.img_size or 1, randaugment=cfg.randaugment)
    splits = load_splits(
        cfg.dataset,
        data_dir=cfg.data_dir,
        download=cfg.download,
        val_fraction=cfg.val_fraction,
        img_size=cfg.img_size,
    )
    if kind is None:
        kind, reason = choose_loader(cfg, splits, training_device(cfg))
    else:
        reason = "asked for by the caller"
    n_train = len(splits["train"])
    drop_last = n_train > cfg.batch_size
    eval_bs = eval_batch_size or max(cfg.batch_size, 256)
    spec = splits["train"].spec
    if kind == "device":
        return LoaderSet(
            train=DeviceLoader.from_split(
                splits["train"],
                cfg.batch_size,
                train=True,
                seed=cfg.seed,
                drop_last=drop_last,
                augment=cfg.augment,
                erasing=erasing,
            ),
            val=DeviceLoader.from_split(splits["val"], eval_bs, train=False),
            test=DeviceLoader.from_split(splits["test"], eval_bs, train=False),
            spec=spec,
            kind=kind,
            reason=reason,
            train_size=n_train,
        )
    loader_kw = {
        "num_workers": cfg.num_workers,
        "persistent_workers": cfg.num_workers > 0,
        "pin_memory": training_device(cfg).type == "cuda",  # page-locked batches: asynchronous copies to the GPU
    }
    datasets = {
        "train": as_dataset(splits["train"], cfg.augment, cfg.randaugment, erasing),
        "val": as_dataset(splits["val"]),
        "test": as_dataset(splits["test"]),
    }
    return LoaderSet(
        train=DataLoader(
            datasets["train"],
            batch_size=cfg.batch_size,
            sampler=ShardSampler(n_train, shuffle=True, seed=cfg.seed, even=True),
            drop_last=drop_last,
            **loader_kw,
        ),
        val=DataLoader(
            datasets["val"],
            batch_size=eval_bs,
            sampler=ShardSampler(len(datasets["val"]), False, even=False),
            **loader_kw,
        ),
        test=DataLoader(
            datasets["test"],
            batch_size=eval_bs,
            sampler=ShardSampler(len(datasets["test"]), False, even=False),
            **loader_kw,
        ),
        spec=spec,
        kind="workers",
        reason=reason,
        train_size=n_train,
    )


def _create(cfg: TrainConfig, create: Callable[[], nn.Module]) -> nn.Module:
    """``create()``; with ``--pretrained`` and the hub unreachable (or ``HF_HUB_OFFLINE``), from the local cache
    only, and a cache miss is one clear error at once instead of a minute of download retries."""
    if not cfg.pretrained:
        return create()
    from losslab.hub import hub_offline

    if not hub_offline():
        return create()
    from huggingface_hub import constants

    previous, cached = os.environ.get("HF_HUB_OFFLINE"), constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"], constants.HF_HUB_OFFLINE = "1", True  # read at call time by hub downloads
    try:
        return create()
    except (OSError, RuntimeError, ValueError) as exc:
        raise DataNotFoundError(
            f"--pretrained: the weights of {cfg.model!r} are not in the local cache and the Hugging Face hub cannot "
            f"be reached ({type(exc).__name__}); go online once to cache them, or train without --pretrained"
        ) from None
    finally:
        constants.HF_HUB_OFFLINE = cached
        if previous is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous


def build_model(cfg: TrainConfig, spec: Any) -> tuple[nn.Module, int]:
    """The network for ``cfg`` (factorized if asked) and the parameter count of its dense version."""
    from losslab.models import create_model
    from losslab.train.recipe import check_model_accepts_drop, drop_kwargs

    try:
        model = _create(
            cfg,
            lambda: create_model(
                cfg.model,
                num_classes=spec.num_classes,
                in_chans=spec.in_chans,
                img_size=cfg.img_size or spec.img_size,
                pretrained=cfg.pretrained,
                **drop_kwargs(cfg),
            ),
        )
    except TypeError as error:
        if drop_kwargs(cfg) and "drop" in str(error):
            raise check_model_accepts_drop(error, cfg) from None
        raise
    if cfg.initial_checkpoint is not None:  # dense weights, so before any factorization
        from losslab.train.checkpoint import load_timm_checkpoint

        load_timm_checkpoint(model, cfg.initial_checkpoint)
    dense = sum(p.numel() for p in model.parameters())
    attention = attention_module_names(cfg, model)
    if cfg.rank_scale is not None or cfg.target_ratio is not None or cfg.tensor_train:
        from losslab.layers import factorize

        factorize(
            model,
            rank_scale=cfg.rank_scale,
            target_ratio=cfg.target_ratio,
            spectral=cfg.spectral,
            square=cfg.square,
            tensor_train=cfg.tensor_train,
            # Attention projections stay dense under the attention options (factorized.md §4, Transformer).
            skip=[f"{name}.{child}" for name in attention for child in ("qkv", "proj")],
        )
    elif cfg.square or cfg.spectral:
        raise ConfigError(
            "spectral/square need a factorized model: pass rank_scale (--rank-scale) or target_ratio (--target-ratio)"
        )
    if cfg.attention_spectral:
        from losslab.layers.attention import spectral_rebalance_attention

        spectral_rebalance_attention(model, **attention_forms(cfg))
    return model, dense


ATTENTION_OPTIONS = ("attention_spectral", "attention_frobenius_decay")


def attention_forms(cfg: TrainConfig) -> dict[str, bool]:
    """``{"qk": ..., "ov": ...}``: the per-head products chosen by ``cfg.attention_products``."""
    return {"qk": cfg.attention_products in ("both", "qk"), "ov": cfg.attention_products in ("both", "ov")}


def attention_module_names(cfg: TrainConfig, model: nn.Module) -> list[str]:
    """Names of the fused-QKV attention modules the attention options act on (``[]`` when none is on).

    Raises ConfigError, naming the options and the fix, when an option is on and the model has no such module.
    """
    asked = [key for key in ATTENTION_OPTIONS if getattr(cfg, key)]
    if not asked:
        return []
    from losslab.layers.attention import attention_modules

    names = [name for name, _ in attention_modules(model)]
    if not names:
        flags = " / ".join(f"--{key.replace('_', '-')}" for key in asked)
        raise ConfigError(
            f"{', '.join(asked)} ({flags}): model {cfg.model!r} has no timm-style attention heads (a module with "
            "qkv and proj Linears and num_heads); choose a ViT, e.g. --model vit_tiny_patch16_224 "
            "(images up to 64 px get patch size img_size // 8: 4 at --img-size 32, 1 on the 8x8 digits), "
            f"or drop {flags}"
        )
    return names


def objective_kwargs(cfg: TrainConfig) -> dict[str, Any]:
    """The constructor arguments of ``cfg.loss``: the config fields the objective declares, forwarded by name
    (:func:`losslab.objectives.config_kwargs`)."""
    from losslab.objectives import config_kwargs

    return config_kwargs(cfg.loss, cfg)


def build_objective(cfg: TrainConfig) -> nn.Module:
    """The training objective named by ``cfg.loss`` (``losslab.objectives.create``).

    With mixup/cutmix the objective returns per-sample losses (``reduction='none'``): the step mixes them with
    each sample's λ (``losslab.train.recipe.mixed_loss``).
    """
    from losslab.objectives import create_from_config

    mixing = cfg.mixup > 0 or cfg.cutmix > 0
    return create_from_config(cfg, **({"reduction": "none"} if mixing else {}))


def build_regularization(cfg: TrainConfig, model: nn.Module) -> tuple[Any | None, list[Any]]:
    """(phase schedule or None, regularizers active in every epoch) for ``cfg``.

    ``--regularizer NAME --lmbda X --reg-start-epoch E`` is the one-phase schedule [E, end); ``--reg-schedule``
    loads phases from YAML; ``--frobenius-decay`` adds Frobenius decay on factor products with λ = weight decay
    (gradient-side on U(M)Vᵀ factors; loss-side on rebuilt tensor-train weights), factors moved to WD = 0;
    ``--attention-frobenius-decay`` adds per-head decay of Q_hᵀK_h and/or O_hV_h with the same λ (gradient-side),
    the qkv (and, with OV, proj) weights moved to WD = 0.
    """
    from losslab.regularizers import Schedule, create

    schedule = None
    if cfg.reg_schedule is not None:
        schedule = Schedule.from_yaml(cfg.reg_schedule, epochs=cfg.epochs)
    elif cfg.regularizer is not None:
        kwargs: dict[str, Any] = {"lam": cfg.lmbda}
        if create_name(cfg.regularizer) in {"lp_grad", "l1grad", "l2grad"}:
            kwargs["activations"] = cfg.activation_gradients
            if create_name(cfg.regularizer) == "lp_grad":
                kwargs["p"] = cfg.p
        schedule = Schedule.from_start_epoch([create(cfg.regularizer, **kwargs)], cfg.reg_start_epoch)
    always_on = []
    if cfg.frobenius_decay:
        if cfg.rank_scale is None and cfg.target_ratio is None:
            raise ConfigError(
                "frobenius_decay (--frobenius-decay) acts on factorized layers: pass rank_scale "
                "(--rank-scale) or target_ratio (--target-ratio)"
            )
        if cfg.tensor_train:
            from losslab.layers import TensorTrainDecay

            always_on.append(TensorTrainDecay(lam=cfg.weight_decay))
        else:
            always_on.append(create("frobenius_decay", lam=cfg.weight_decay))
    if cfg.attention_frobenius_decay:
        from losslab.layers.attention import AttentionFrobeniusDecay

        always_on.append(AttentionFrobeniusDecay(lam=cfg.weight_decay, **attention_forms(cfg)))
    for reg in [*always_on, *(schedule.regularizers() if schedule is not None else [])]:
        reg.attach(model)  # fails now, before training, if the model lacks what the regularizer needs
        reg.detach()
    return schedule, always_on


def create_name(name: str) -> str:
    """Canonical registry name of a regularizer (raises with the valid choices if unknown)."""
    from losslab.regularizers import REGULARIZERS

    return REGULARIZERS.resolve(name)
