"""Named data sets read from small files in the real on-disk formats, the splits, and the missing-data error."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from losslab.data import calibration_loader, create_dataloaders, create_dataset, dataset_info
from losslab.errors import ConfigError, DataNotFoundError


def test_cifar10_batches_shapes_labels_normalisation(cifar10_dir: Path) -> None:
    test = create_dataset("cifar10", "test", data_dir=cifar10_dir)
    assert len(test) == 3 and test.targets == [7, 8, 9] and test.classes[7] == "c7"
    x, y = test[0]
    spec = dataset_info("cifar10")
    expected = (70 / 255 - torch.tensor(spec.mean)) / torch.tensor(spec.std)
    assert x.shape == (3, 32, 32) and y == 7
    torch.testing.assert_close(x[:, 5, 5], expected)


def test_cifar10_train_val_carve_out(cifar10_dir: Path) -> None:
    kwargs = {"data_dir": cifar10_dir, "val_fraction": 0.25, "split_seed": 3, "augment": False}
    train = create_dataset("cifar10", "train", **kwargs)
    val = create_dataset("cifar10", "val", **kwargs)
    assert (len(train), len(val)) == (15, 5)
    assert not set(train.indices) & set(val.indices) and sorted(train.indices + val.indices) == list(range(20))
    again = create_dataset("cifar10", "val", **kwargs)
    assert again.indices == val.indices
    other = create_dataset("cifar10", "val", **{**kwargs, "split_seed": 4})
    assert other.indices != val.indices
    # pixel value 10 * label + batch identifies each item: labels line up with images
    spec = dataset_info("cifar10")
    for x, y in (val[i] for i in range(len(val))):
        raw = round((x[0, 0, 0].item() * spec.std[0] + spec.mean[0]) * 255)
        assert raw // 10 == y


def test_cifar_train_augmentation_only_on_train(cifar10_dir: Path) -> None:
    train = create_dataset("cifar10", "train", data_dir=cifar10_dir)
    val = create_dataset("cifar10", "val", data_dir=cifar10_dir)
    assert any(type(t).__name__ == "RandomCrop" for t in train.transform.transforms)
    assert not any(type(t).__name__ in ("RandomCrop", "RandomHorizontalFlip") for t in val.transform.transforms)
    torch.testing.assert_close(val[0][0], val[0][0])
    # zero padding of the random crop shows up as the normalised value of pixel 0 at some border
    zero = (0 - torch.tensor(dataset_info("cifar10").mean)) / torch.tensor(dataset_info("cifar10").std)
    torch.manual_seed(1)
    borders = [train[0][0][:, 0, 0] for _ in range(30)]
    assert any(torch.allclose(b, zero) for b in borders)


def test_cifar100_fine_labels_and_channels(cifar100_dir: Path) -> None:
    train = create_dataset("cifar100", "train", data_dir=cifar100_dir, val_fraction=0.0, augment=False)
    assert train.targets == [0, 5, 99, 42, 3, 7] and len(train.classes) == 100
    x, _ = train[0]
    spec = dataset_info("cifar100")
    torch.testing.assert_close(
        x[:, 0, 0], (torch.tensor([1.0, 0, 0]) - torch.tensor(spec.mean)) / torch.tensor(spec.std)
    )
    assert create_dataset("cifar100", "test", data_dir=cifar100_dir).targets == [1, 98]


def test_tiny_imagenet_folders(tiny_imagenet_dir: Path) -> None:
    test = create_dataset("tiny_imagenet", "test", data_dir=tiny_imagenet_dir)
    assert test.classes == ["n01", "n02", "n03"] and test.targets == [1, 0, 2, 0]
    x, y = test[0]
    assert x.shape == (3, 64, 64) and y == 1
    spec = dataset_info("tiny_imagenet")
    torch.testing.assert_close(
        x[:, 10, 10], (100 / 255 - torch.tensor(spec.mean)) / torch.tensor(spec.std), atol=0.03, rtol=0
    )
    train = create_dataset("tiny_imagenet", "train", data_dir=tiny_imagenet_dir, val_fraction=0.2)
    val = create_dataset("tiny_imagenet", "val", data_dir=tiny_imagenet_dir, val_fraction=0.2)
    assert (len(train), len(val)) == (12, 3)
    assert sorted(train.targets + val.targets) == [0] * 5 + [1] * 5 + [2] * 5


def test_tiny_imagenet_resized(tiny_imagenet_dir: Path) -> None:
    test = create_dataset("tiny_imagenet", "test", data_dir=tiny_imagenet_dir, img_size=32)
    assert test[0][0].shape == (3, 32, 32)


def test_imagenet_folder_layout(imagenet_dir: Path) -> None:
    train = create_dataset("imagenet", "train", data_dir=imagenet_dir, val_fraction=0.0, img_size=24)
    test = create_dataset("imagenet", "test", data_dir=imagenet_dir, img_size=24)
    assert train.classes == ["n0a", "n0b"] and sorted(train.targets) == [0, 0, 0, 1, 1, 1]
    assert test.targets == [0, 1]
    assert train[0][0].shape == (3, 24, 24) and test[1][0].shape == (3, 24, 24)


@pytest.mark.parametrize(
    ("name", "folder"),
    [
        ("cifar10", "cifar-10-batches-py"),
        ("cifar100", "cifar-100-python"),
        ("tiny_imagenet", "tiny-imagenet-200"),
        ("food101", "food-101"),
        ("imagenet", "imagenet"),
    ],
)
def test_missing_data_names_path_and_fixes(tmp_path: Path, name: str, folder: str) -> None:
    with pytest.raises(DataNotFoundError) as info:
        create_dataset(name, "train", data_dir=tmp_path)
    message = str(info.value)
    assert str(tmp_path / folder) in message and "--data-dir" in message
    assert ("--download" in message) == (name != "imagenet")
    assert not any(tmp_path.iterdir())  # nothing downloaded or created


def test_missing_single_file_is_named(cifar10_dir: Path) -> None:
    (cifar10_dir / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(DataNotFoundError, match="test_batch"):
        create_dataset("cifar10", "test", data_dir=cifar10_dir)


def test_bad_arguments_fail_before_loading(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="split='dev'"):
        create_dataset("cifar10", "dev", data_dir=tmp_path)
    with pytest.raises(ConfigError, match="val_fraction"):
        create_dataset("cifar10", "train", data_dir=tmp_path, val_fraction=1.0)
    with pytest.raises(ConfigError, match="val_fraction > 0"):
        create_dataset("digits", "val", val_fraction=0.0)
    with pytest.raises(ConfigError, match="randaugment"):
        create_dataset("cifar10", "test", data_dir=tmp_path, randaugment="nonsense")
    with pytest.raises(ConfigError, match="RGB"):
        create_dataset("digits", "train", randaugment="rand-m9")
    with pytest.raises(ConfigError, match="only allowed for data set 'fake'"):
        create_dataset("digits", "train", num_samples=3)
    with pytest.raises(ValueError, match="unknown data set 'cifar11'"):
        dataset_info("cifar11")


def test_randaugment_changes_train_images(cifar10_dir: Path) -> None:
    train = create_dataset("cifar10", "train", data_dir=cifar10_dir, randaugment="rand-m9-n2-mstd0.5")
    assert any("RandAugment" in type(t).__name__ for t in train.transform.transforms)
    assert train[0][0].shape == (3, 32, 32)


def test_loaders_and_calibration(cifar10_dir: Path) -> None:
    loaders = create_dataloaders("cifar10", batch_size=4, data_dir=cifar10_dir, val_fraction=0.2)
    assert {k: len(v.dataset) for k, v in loaders.items()} == {"train": 16, "val": 4, "test": 3}
    calib = calibration_loader("cifar10", n_samples=6, batch_size=4, seed=1, data_dir=cifar10_dir)
    batches = list(calib)
    assert [len(b[1]) for b in batches] == [4, 2]
    again = torch.cat([b[0] for b in calibration_loader("cifar10", 6, 4, seed=1, data_dir=cifar10_dir)])
    torch.testing.assert_close(torch.cat([b[0] for b in batches]), again)  # eval transform: deterministic
    train_idx = set(create_dataset("cifar10", "train", data_dir=cifar10_dir).indices)
    assert set(calib.dataset.dataset.indices[i] for i in calib.dataset.indices) <= train_idx
    with pytest.raises(ConfigError, match="n_samples=99"):
        calibration_loader("cifar10", n_samples=99, data_dir=cifar10_dir)
