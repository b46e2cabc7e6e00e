"""The bundled digits and the synthetic fake data set: sizes, determinism, normalisation, learnability."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from losslab.data import calibration_loader, create_dataloaders, create_dataset, dataset_info
from losslab.errors import ConfigError
from losslab.models import create_model


def test_digits_sizes_and_split() -> None:
    sizes = {s: len(create_dataset("digits", s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 1293, "val": 144, "test": 360}
    x, y = create_dataset("digits", "test")[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and 0 <= y <= 9
    test = create_dataset("digits", "test")
    assert sorted(set(test.targets)) == list(range(10)) and min(test.targets.count(c) for c in range(10)) >= 35


def test_digits_normalisation_constants_match_training_statistics() -> None:
    train = create_dataset("digits", "train", augment=False, val_fraction=0.0)
    stacked = torch.stack([train[i][0] for i in range(len(train))])
    assert abs(stacked.mean().item()) < 1e-3 and abs(stacked.std().item() - 1) < 1e-3


def test_digits_val_disjoint_and_deterministic() -> None:
    a = create_dataset("digits", "val", split_seed=5)
    b = create_dataset("digits", "val", split_seed=5)
    train = create_dataset("digits", "train", split_seed=5)
    assert a.indices == b.indices and not set(a.indices) & set(train.indices)


def test_digits_shift_augmentation_keeps_content() -> None:
    train = create_dataset("digits", "train")
    plain = create_dataset("digits", "train", augment=False)
    x, y = train[3]
    assert y == plain[3][1] and x.shape == (1, 8, 8)
    assert not any(type(t).__name__ == "RandomHorizontalFlip" for t in train.transform.transforms)


def test_fake_is_seeded_and_configurable() -> None:
    kwargs = {"num_samples": 40, "num_classes": 4, "in_chans": 2, "img_size": 12, "seed": 3}
    a = create_dataset("fake", "train", **kwargs)
    b = create_dataset("fake", "train", **kwargs)
    torch.testing.assert_close(a[5][0], b[5][0])
    assert a[5][0].shape == (2, 12, 12) and len(a) == 36 and set(a.targets) == {0, 1, 2, 3}
    test = create_dataset("fake", "test", **kwargs)
    assert not torch.allclose(test[0][0], a.source[0][0])  # test noise differs from train noise
    assert dataset_info("fake", num_classes=4, in_chans=2).std == (1.0, 1.0)
    with pytest.raises(ConfigError, match="num_classes"):
        create_dataset("fake", "train", num_classes=0)
    with pytest.raises(ConfigError, match="unknown option"):
        create_dataset("fake", "train", colours=3)


def _train(model: nn.Module, loaders: dict, epochs: int, lr: float) -> float:
    """Adam with cosine decay to 0 over ``epochs``; returns test accuracy."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    for _ in range(epochs):
        model.train()
        for x, y in loaders["train"]:
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    model.eval()
    with torch.no_grad():
        correct = sum((model(x).argmax(1) == y).sum().item() for x, y in loaders["test"])
    return correct / len(loaders["test"].dataset)


@pytest.mark.slow
def test_fake_is_learnable_by_a_linear_model() -> None:
    loaders = create_dataloaders("fake", batch_size=32, num_samples=400, num_classes=5, img_size=8)
    model = create_model("mlp", num_classes=5, in_chans=3, img_size=8, hidden=())
    assert _train(model, loaders, epochs=5, lr=0.01) >= 0.9


@pytest.mark.slow
def test_small_cnn_reaches_95_percent_on_digits() -> None:
    loaders = create_dataloaders("digits", batch_size=64, splits=("train", "test"))
    model = create_model("small_cnn", num_classes=10, in_chans=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convs: one thread is faster than two on a shared machine
    try:
        accuracy = _train(model, loaders, epochs=10, lr=0.01)
    finally:
        torch.set_num_threads(threads)
    assert accuracy >= 0.95


def test_calibration_loader_digits_seeded_eval_transform() -> None:
    a = torch.cat([x for x, _ in calibration_loader("digits", n_samples=20, batch_size=8, seed=2)])
    b = torch.cat([x for x, _ in calibration_loader("digits", n_samples=20, batch_size=8, seed=2)])
    c = torch.cat([x for x, _ in calibration_loader("digits", n_samples=20, batch_size=8, seed=3)])
    assert a.shape == (20, 1, 8, 8)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_digits_equal_scikit_learns_split() -> None:
    """The digits read without scikit-learn and split by the kept indices equal load_digits + train_test_split."""
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from losslab.data.digits import bundled_file, load_digits_images
    from losslab.data.digits_split import TEST_INDICES

    assert bundled_file() is not None  # the fast path is the one under test
    bunch = load_digits()
    train_idx, test_idx = train_test_split(
        list(range(len(bunch.target))), test_size=0.2, random_state=0, stratify=bunch.target
    )
    assert tuple(sorted(test_idx)) == TEST_INDICES
    for train, idx in ((True, sorted(train_idx)), (False, sorted(test_idx))):
        source = load_digits_images(train)
        assert torch.equal(source.images, torch.tensor(bunch.images[idx] / 16.0, dtype=torch.float32).unsqueeze(1))
        assert source.targets == [int(bunch.target[i]) for i in idx]


def test_digits_load_without_importing_scikit_learn() -> None:
    """Loading the digits imports neither scikit-learn nor scipy (about a second of start-up)."""
    import subprocess
    import sys

    code = (
        "import sys; from losslab.data.digits import load_digits_images; "
        "print(len(load_digits_images(True)), len(load_digits_images(False)), 'sklearn' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1437", "360", "False"]
