"""Every shipped study trains what its seed trained: key recipe values checked against values read from the seeds'
own code (each constant cites the seed repository, file and line), so a preset that drifts from its seed fails.

Where losslab differs on purpose the study file's header says so; those differences are not checked here.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from losslab.presets import preset_file, preset_names
from losslab.study import load_study_spec
from losslab.train.config import TrainConfig

# microsoft/fnl_paper pytorch_resnet_cifar10/trainer.py
FNL_RESNET = {
    "lr": 0.1,  # l. 47 --lr default
    "momentum": 0.9,  # l. 49 --momentum default
    "weight_decay": 1e-4,  # l. 51 --weight-decay default
    "batch_size": 128,  # l. 45 --batch-size default
    "epochs": 200,  # l. 41 --epochs default
    "scheduler": "multistep",  # l. 187 MultiStepLR
    "milestones": [100, 150],  # l. 188 [int(0.5 * epochs), int(0.75 * epochs)]
    "gamma": 0.1,  # l. 187 MultiStepLR's default gamma
    "loss": "ce",  # l. 128 nn.CrossEntropyLoss
    "cutout": 0,  # l. 151-156: flip + crop only
    "optimizer": "sgd",  # l. 183 torch.optim.SGD
}
# microsoft/fnl_paper deficient-efficient/main.py (WideResNet path), run by make.py TENSOR_COMMAND
FNL_WRN = {
    "lr": 0.1,  # l. 58
    "momentum": 0.9,  # l. 59
    "gamma": 0.2,  # l. 60 --lr_decay_ratio
    "milestones": [60, 120, 160],  # l. 65 --epoch_step
    "scheduler": "multistep",  # l. 416-418: MultiStepLR for WideResNet (cosine only for DARTS / MobileNetV2)
    "epochs": 200,  # l. 67; make.py l. 152 --epochs 200
    "batch_size": 128,  # l. 70
    "weight_decay": 5e-4,  # l. 72
    "cutout": 16,  # l. 473 Cutout(16)
    "loss": "ce",
    "optimizer": "sgd",  # l. 637 optim.SGD
    "model": "wide_resnet28_10",  # make.py l. 149-150 --wrn_depth 28 --wrn_width 10
}
# microsoft/fnl_paper EigenDamage-Pytorch/main_pretrain.py, run by make.py LOTTERY_COMMAND
FNL_EIGENDAMAGE = {
    "lr": 0.1,  # l. 26 --learning_rate
    "batch_size": 128,  # l. 28
    "momentum": 0.9,  # l. 113 optim.SGD(..., momentum=0.9)
    "epochs": 200,  # make.py l. 110 EPOCH=200
    "milestones": [100, 150],  # l. 114-116 {int(0.5 E): lr * 0.1, int(0.75 E): lr * 0.01}
    "gamma": 0.1,  # l. 115-116
    "scheduler": "multistep",
    "weight_decay": 1e-4,  # make.py l. 101 WD=1E-4 for resnet_32_x2
    "cutout": 0,  # utils/data_utils.py get_transforms('cifar10'): crop + flip only
    "loss": "ce",
    "optimizer": "sgd",
}
# vpabba03/Learning-Rate-Quantization src/model_training.py (the GPFQ learning-rate study)
LR_QUANT = {
    "optimizer": "adam",  # l. 86 optim.Adam(model.parameters(), lr=lr)
    "weight_decay": 0.0,  # l. 86: Adam's default
    "batch_size": 128,  # l. 36
    "epochs": 10,  # l. 42
    "scheduler": "none",  # no scheduler in the training loop (l. 89-115)
    "loss": "ce",  # l. 85 nn.CrossEntropyLoss
}
LR_QUANT_LRS = {1e-3, 1e-4, 1e-2}  # l. 30 --learning_rates default
LR_QUANT_MODELS = {"resnet18", "resnet34", "resnet50", "resnet101"}  # l. 72-79 torchvision.models.resnetXX
LR_QUANT_GPFQ_SCALAR = 1.16  # src/main.py l. 20 --scalar default
LR_QUANT_CALIBRATION = 256  # logs/Q1_Project_Experiments.csv "Quantization Batch Size"
LR_QUANT_BITS = {3, 4, 5, 8}  # logs/Q1_Project_Experiments.csv "Bits"
# bishshoy/softmax-gradient-tampering: README recipe and parser.py defaults (stored as skalien/power-grad-transform)
SGT = {
    "model": "resnet18",  # README --model resnet18
    "lr": 0.1,  # README --lr 1e-1
    "momentum": 0.9,  # README --momentum 0.9
    "weight_decay": 5e-4,  # README --weight-decay 5e-4
    "scheduler": "cosine",  # README --sched cosine
    "batch_size": 256,  # README --batch-size 256
    "epochs": 90,  # README --epochs 90
    "warmup_epochs": 5,  # README --warmup-epochs 5
    "cooldown_epochs": 10,  # README --cooldown-epochs 10
    "warmup_lr": 0.01,  # parser.py --warmup-lr default 0.01
    "min_lr": 1e-4,  # parser.py --min-lr default 1e-4
    "label_smoothing": 0.0,  # parser.py --smoothing default 0
    "loss": "sgt",  # README --modify-softmax
    "logit_stats": True,  # README --logit-stats
    "precision": "16-mixed",  # README --amp
    "optimizer": "nesterov",  # parser.py --opt default "sgd": timm's create_optimizer_v2 makes SGD(nesterov=True)
}
# ellenzhuwang/rooted_loss rlo-dnn/train.py
RLO = {
    "optimizer": "adam",  # l. 36 --opt default "adam"
    "batch_size": 512,  # l. 42 --bs default
    "epochs": 200,  # l. 44 --n_epochs default
    "k": 3.0,  # l. 48
    "m": 3.0,  # l. 49
    "weight_decay": 0.0,  # optim.Adam(net.parameters(), lr=args.lr)
    "scheduler": "cosine",  # CosineAnnealingLR(optimizer, args.n_epochs)
    "randaugment": None,  # l. 65 aug = args.noaug: RandAugment only with --noaug
}
RLO_VIT_LR = 1e-4  # l. 35 --lr default ("Vit..1e-4")
RLO_CONVNET_LR = 1e-3  # l. 35 comment "resnets.. 1e-3"
RLO_LOSSES = {"ce", "focal_rlo_paper", "root"}  # train(): ce / focal (alpha 0.25, gamma 3) / root
RLO_CONVNETS = {"cifar_resnet18", "cifar_vgg19_bn"}  # --net res18 (ResNet18()), vgg (VGG('VGG19'), with BN)
# RegulQuant: its README example (seeds/001 l. 22-23) and specs/regularizers.md §4
REGULQUANT = {
    "lr": 0.1,
    "epochs": 25,
    "scheduler": "exponential",
    "gamma": 0.99,
    "seed": 242,
    "loss": "ce",
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "batch_size": 128,
}

EXPECTED: dict[str, dict[str, Any]] = {
    "fnl_resnet20": FNL_RESNET,
    "fnl_wrn28_10": FNL_WRN,
    "fnl_resnet32_wide": FNL_EIGENDAMAGE,
    "lr_quant_cifar10": LR_QUANT,
    "sgt_imagenet": SGT,
    "rlo_cifar10": RLO,
}


def _configs(name: str) -> list[TrainConfig]:
    return [TrainConfig.build(point) for point in load_study_spec(name).train_points()]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_training_point_follows_its_seed(name: str) -> None:
    configs = _configs(name)
    assert configs
    for cfg in configs:
        got = {key: getattr(cfg, key) for key in EXPECTED[name]}
        assert got == EXPECTED[name], (name, cfg.model)


def test_regulquant_follows_the_seed_readme_except_its_combined_protocol_variant() -> None:
    configs = _configs("regulquant_cifar10")
    plain = [c for c in configs if c.reg_schedule is None]
    assert len(plain) == len(configs) - 1
    for cfg in plain:
        assert {key: getattr(cfg, key) for key in REGULQUANT} == REGULQUANT
    (combined,) = [c for c in configs if c.reg_schedule is not None]
    # configs/combined_protocol.yaml's header: 110 epochs, MultiStep [25, 50], gamma 0.15 (regularizers.md §3)
    assert (combined.epochs, combined.milestones, combined.gamma) == (110, [25, 50], 0.15)


def test_the_learning_rate_study_uses_the_seeds_models_grid_and_gpfq() -> None:
    spec = load_study_spec("lr_quant_cifar10")
    configs = _configs("lr_quant_cifar10")
    assert {c.model for c in configs} == LR_QUANT_MODELS
    assert {c.lr for c in configs} == LR_QUANT_LRS
    assert len(configs) == len(LR_QUANT_MODELS) * len(LR_QUANT_LRS)
    (gpfq,) = spec.compression_groups()
    assert gpfq.method == "gpfq"
    assert {p.bits for p in gpfq.points} >= LR_QUANT_BITS
    assert all(p.options_dict()["scalar"] == LR_QUANT_GPFQ_SCALAR for p in gpfq.points)
    assert spec.file.compress.calibration.samples == LR_QUANT_CALIBRATION


def test_the_learning_rate_study_models_are_torchvisions_resnets() -> None:
    """The seed trains torchvision.models.resnetXX(weights=None) with a 10-class fc: same layers, same keys."""
    torchvision = pytest.importorskip("torchvision")
    import torch

    from losslab.models import create_model

    for name in sorted(LR_QUANT_MODELS):
        ours = create_model(name, num_classes=10, in_chans=3, img_size=32).state_dict()
        seed = getattr(torchvision.models, name)(weights=None)
        seed.fc = torch.nn.Linear(seed.fc.in_features, 10)
        theirs = seed.state_dict()
        assert list(ours) == list(theirs), name
        assert all(ours[k].shape == theirs[k].shape for k in ours), name


def test_rlo_models_losses_and_learning_rates() -> None:
    configs = _configs("rlo_cifar10")
    assert {c.loss for c in configs} == RLO_LOSSES
    assert {c.model for c in configs if c.model.startswith("cifar_")} == RLO_CONVNETS
    for cfg in configs:
        assert cfg.lr == (RLO_CONVNET_LR if cfg.model in RLO_CONVNETS else RLO_VIT_LR), cfg.model


@pytest.mark.parametrize("kind", ["studies", "configs"])
def test_every_preset_names_its_seed_in_its_header(kind: str) -> None:
    """Each shipped file's header names the seed repository (or says it is not a seed recipe)."""
    seeds = (
        "microsoft/fnl_paper",
        "vpabba03/Learning-Rate-Quantization",
        "bishshoy/softmax-gradient-tampering",
        "ellenzhuwang/rooted_loss",
        "RegulQuant",
        "Transformer-PyTorch",  # fnl_paper's translation code (configs/fnl_iwslt14.yaml)
        "Not a seed recipe",
    )
    for name in preset_names(kind):
        lines = preset_file(kind, name).read_text().splitlines()
        header = " ".join(line for line in lines[: next(i for i, s in enumerate(lines) if not s.startswith("#"))])
        assert any(seed in header for seed in seeds), name
        # combined_protocol is a regularizer schedule; fnl_iwslt14's differences are kept with the translate config
        if "Not a seed recipe" not in header and name not in ("combined_protocol", "fnl_iwslt14"):
            assert "Difference" in header or "differs" in header or "differ" in header, name


def readme_train_recipes() -> dict[str, list[str]]:
    """The README's ``losslab train`` recipe lines (continuations joined), keyed by their trailing comment."""
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text().replace("\\\n", " ")
    recipes = {}
    for line in text.splitlines():
        if line.startswith("losslab train ") and "#" in line:
            command, _, comment = line.partition("#")
            recipes[comment.strip()] = shlex.split(command)[2:]
    return recipes


REGULQUANT_COMBINED = {**REGULQUANT, "epochs": 110, "scheduler": "multistep", "milestones": [25, 50], "gamma": 0.15}
README_EXPECTED: dict[str, dict[str, Any]] = {
    "GPFQ lr study": {**LR_QUANT, "model": "resnet18", "lr": 1e-3},
    "FNL": {**FNL_RESNET, "model": "cifar_resnet20", "rank_scale": 0.111, "spectral": True, "frobenius_decay": True},
    "RegulQuant combined": REGULQUANT_COMBINED,
    "RLO": {key: RLO[key] for key in ("optimizer", "batch_size", "epochs", "weight_decay", "scheduler")}
    | {"lr": RLO_VIT_LR, "loss": "root"},
    "SGT recipe": SGT,
    "SGT's own line, pasted (docs/cli.md)": SGT,
}


@pytest.mark.parametrize("comment", sorted(README_EXPECTED))
def test_readme_recipes_train_what_the_seeds_trained(comment: str, tmp_path: Path) -> None:
    """The README's recipe lines, run through ``losslab train --print-config``, give the seeds' key values."""
    from click.testing import CliRunner

    from losslab.cli import cli

    args = readme_train_recipes()[comment]
    if "/data/imagenet" in args:  # the SGT lines' data folder: an ImageNet-style tree
        for split in ("train", "val"):
            (tmp_path / split / "n01440764").mkdir(parents=True)
        args = [str(tmp_path) if a == "/data/imagenet" else a for a in args]
    result = CliRunner().invoke(cli, ["train", *args, "--print-config"])
    assert result.exit_code == 0, result.output
    cfg = yaml.safe_load(result.stdout)
    expected = README_EXPECTED[comment]
    assert {key: cfg[key] for key in expected} == expected
