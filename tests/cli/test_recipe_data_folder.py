"""SGT's timm recipe pasted as is: its data folder picks the data set (never ignored), and the SGT fork's own
parser defaults fill what the line leaves out."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from losslab.data.layout import dataset_in_folder
from losslab.errors import ConfigError

# The Softmax Gradient Tampering README's training line (seeds/003, "Training recipies"), minus the launcher.
SGT_LINE = [
    "--dali",
    "--amp",
    "--momentum",
    "0.9",
    "--weight-decay",
    "5e-4",
    "--sched",
    "cosine",
    "--model",
    "resnet18",
    "--batch-size",
    "256",
    "--lr",
    "1e-1",
    "--epochs",
    "90",
    "--warmup-epochs",
    "5",
    "--cooldown-epochs",
    "10",
    "--modify-softmax",
    "0.25",
    "--logit-stats",
]
# bishshoy/softmax-gradient-tampering parser.py: --warmup-lr default 0.01, --min-lr default 1e-4
SEED_WARMUP_LR, SEED_MIN_LR = 0.01, 1e-4


def image_folder_tree(root: Path) -> Path:
    for split in ("train", "val"):
        (root / split / "n01440764").mkdir(parents=True)
    return root


def test_the_pasted_line_with_a_missing_folder_is_a_one_line_error(
    cli_main: Callable[[list[str]], tuple[int, str, str]],
) -> None:
    code, out, err = cli_main(["train", "--data_dir", "IMAGENET_DIR", *SGT_LINE, "--print-config"])
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "IMAGENET_DIR" in err and "does not exist" in err


def test_an_image_folder_tree_selects_imagenet_and_the_forks_defaults(
    tmp_path: Path, cli_main: Callable[[list[str]], tuple[int, str, str]]
) -> None:
    tree = image_folder_tree(tmp_path / "imagenet_dir")
    code, out, err = cli_main(["train", "--data_dir", str(tree), *SGT_LINE, "--print-config"])
    assert code == 0, err
    cfg = yaml.safe_load(out)
    assert cfg["dataset"] == "imagenet" and cfg["data_dir"] == str(tree)
    assert (cfg["warmup_lr"], cfg["min_lr"]) == (SEED_WARMUP_LR, SEED_MIN_LR)
    assert (cfg["loss"], cfg["sgt_alpha"], cfg["precision"]) == ("sgt", 0.25, "16-mixed")
    assert cfg["optimizer"] == "nesterov"  # parser.py --opt sgd, which timm builds with nesterov=True
    assert "holds 'imagenet'" in err
    assert "the SGT fork's own defaults apply: --warmup-lr 0.01 --min-lr 0.0001 --optimizer nesterov" in err
    # timm's positional data folder means the same
    code, out2, _ = cli_main(["train", str(tree), *SGT_LINE, "--print-config"])
    assert code == 0 and yaml.safe_load(out2) == cfg


def test_a_given_value_wins_over_the_forks_default(
    tmp_path: Path, cli_main: Callable[[list[str]], tuple[int, str, str]]
) -> None:
    tree = image_folder_tree(tmp_path / "tree")
    code, out, _ = cli_main(["train", tree.as_posix(), *SGT_LINE, "--warmup-lr", "0.001", "--print-config"])
    assert code == 0 and yaml.safe_load(out)["warmup_lr"] == 0.001


def test_the_forks_defaults_need_its_spelling(cli_main: Callable[[list[str]], tuple[int, str, str]]) -> None:
    """``--sgt-alpha`` is losslab's own flag: losslab's defaults stay."""
    code, out, _ = cli_main(["train", "--loss", "sgt", "--sgt-alpha", "0.25", "--print-config"])
    from losslab.train.config import TrainConfig

    defaults = TrainConfig()
    assert code == 0
    assert (yaml.safe_load(out)["warmup_lr"], yaml.safe_load(out)["min_lr"]) == (defaults.warmup_lr, defaults.min_lr)


@pytest.mark.parametrize("dataset", ["digits", "fake"])
def test_a_folder_for_a_data_set_that_reads_none_is_refused(
    dataset: str, tmp_path: Path, cli_main: Callable[[list[str]], tuple[int, str, str]]
) -> None:
    code, out, err = cli_main(["train", "--dataset", dataset, "--data-dir", str(tmp_path), "--print-config"])
    assert code == 2 and out == ""
    assert "reads no data folder" in err and str(tmp_path) in err


def test_two_different_folders_are_refused(
    tmp_path: Path, cli_main: Callable[[list[str]], tuple[int, str, str]]
) -> None:
    code, _, err = cli_main(["train", str(tmp_path / "a"), "--data-dir", str(tmp_path / "b"), "--print-config"])
    assert code == 2 and "differ" in err


def test_folder_layouts(tmp_path: Path) -> None:
    (tmp_path / "one" / "cifar-10-batches-py").mkdir(parents=True)
    assert dataset_in_folder(tmp_path / "one") == "cifar10"
    (tmp_path / "one" / "food-101").mkdir()
    with pytest.raises(ConfigError, match="several data sets"):
        dataset_in_folder(tmp_path / "one")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no data set layout"):
        dataset_in_folder(tmp_path / "empty")
    (tmp_path / "nested" / "imagenet").mkdir(parents=True)
    assert dataset_in_folder(tmp_path / "nested") == "imagenet"


def test_imagenet_reads_a_tree_given_as_the_folder_itself(imagenet_tree: Path) -> None:
    """timm's --data_dir is the tree (train/, val/ inside); losslab's own layout nests it under imagenet/."""
    from losslab.data import create_dataset

    itself = create_dataset("imagenet", "test", data_dir=imagenet_tree / "imagenet", img_size=24)
    nested = create_dataset("imagenet", "test", data_dir=imagenet_tree, img_size=24)
    assert len(itself) == len(nested) == 2
    assert [itself[i][1] for i in range(2)] == [nested[i][1] for i in range(2)]


@pytest.fixture
def imagenet_tree(tmp_path: Path) -> Path:
    from PIL import Image

    for split in ("train", "val"):
        for c, wnid in enumerate(("n0a", "n0b")):
            path = tmp_path / "imagenet" / split / wnid / "0.JPEG"
            path.parent.mkdir(parents=True)
            Image.new("RGB", (40, 30), (100 * c, 0, 0)).save(path, format="JPEG")
    return tmp_path
