"""The device-resident pipeline: augmentation distributions, seeding, epoch coverage, DDP shards, loader choice."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from scipy import stats

from losslab.data import dataset_info, load_split, load_splits
from losslab.data.device import (
    DeviceLoader,
    RawImages,
    ShardSampler,
    apply_erasing,
    cutout_mask,
    erasing_mask,
    random_crop,
    random_flip,
    raw_images,
)
from losslab.data.transforms import Cutout, Erasing, build_transform
from losslab.errors import ConfigError
from losslab.train import TrainConfig
from losslab.train.build import make_loaders


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_crop_offsets_uniform_over_padded_range() -> None:
    n, pad, side = 5000, 2, 8
    ones = torch.ones(n, 1, side, side, dtype=torch.uint8)
    out = random_crop(ones, pad, gen(0))[:, 0]  # (N, H, W); zero rows/cols are the padding that came in
    mid = side // 2  # the middle row and column always hold image content
    top = (out[:, :, mid] == 0).int().cumprod(1).sum(1)  # leading zero rows
    bottom = (out[:, :, mid] == 0).int().flip(1).cumprod(1).sum(1)
    left = (out[:, mid, :] == 0).int().cumprod(1).sum(1)
    right = (out[:, mid, :] == 0).int().flip(1).cumprod(1).sum(1)
    oy, ox = pad - top + bottom, pad - left + right  # offset into the padded image, 0..2*pad
    assert int(oy.min()) == 0 and int(oy.max()) == 2 * pad and int(ox.min()) == 0 and int(ox.max()) == 2 * pad
    counts = torch.bincount(oy * (2 * pad + 1) + ox, minlength=(2 * pad + 1) ** 2).tolist()
    assert stats.chisquare(counts).pvalue > 1e-3  # 25 cells, 200 expected each
    assert int(out.sum()) == int(((side - (oy - pad).abs()) * (side - (ox - pad).abs())).sum())


def test_crop_moves_content_like_torchvision() -> None:
    image = torch.arange(64, dtype=torch.uint8).reshape(1, 1, 8, 8) + 1
    out = random_crop(image.expand(200, 1, 8, 8), 1, gen(1))
    padded = torch.nn.functional.pad(image, (1, 1, 1, 1))[0, 0]
    windows = {tuple(padded[i : i + 8, j : j + 8].flatten().tolist()) for i in range(3) for j in range(3)}
    assert {tuple(o.flatten().tolist()) for o in out[:, 0]} == windows  # every crop is one of the 9 windows


def test_flip_rate_is_half() -> None:
    n = 4000
    image = torch.arange(4, dtype=torch.uint8).reshape(1, 1, 1, 4).expand(n, 1, 1, 4)
    out = random_flip(image, gen(2))
    flipped = out[:, 0, 0, 0] == 3
    assert bool(((out[:, 0, 0] == image[:, 0, 0]).all(1) | (out[:, 0, 0] == image[:, 0, 0].flip(-1)).all(1)).all())
    assert stats.binomtest(int(flipped.sum()), n, 0.5).pvalue > 1e-3


def test_cutout_squares_and_erasing_boxes() -> None:
    mask = cutout_mask(3000, 32, 32, 16, gen(3), torch.device("cpu"))
    area = mask.sum((1, 2))
    assert int(area.max()) == 256 and int(area.min()) >= 64  # a corner centre keeps at least a quarter
    frac = mask.float().mean(0)
    assert float(frac[16, 16]) == pytest.approx(256 / 1024, abs=0.03)  # P(pixel covered) = 16*16/32/32 in the middle
    boxes = erasing_mask(4000, 32, 32, 0.5, 1, gen(4), torch.device("cpu"))
    erased = boxes.any((1, 2))
    assert stats.binomtest(int(erased.sum()), 4000, 0.5).pvalue > 1e-3
    covered = boxes.sum((1, 2))[erased].float() / 1024
    assert float(covered.min()) >= 0.01 and float(covered.max()) <= 0.36  # U(0.02, 1/3) of the area, rounded sides
    x = torch.ones(8, 3, 32, 32)
    out = apply_erasing(x, Erasing(reprob=1.0, remode="pixel", recount=3), gen(5))
    assert bool((out != 1).any((1, 2, 3)).all()) and float(out[out != 1].std()) == pytest.approx(1.0, abs=0.1)


def test_worker_path_has_the_same_occlusions() -> None:
    tf = build_transform(dataset_info("cifar10"), True, 32, erasing=Erasing(cutout=8, reprob=0.5))
    names = [type(op).__name__ for op in tf.transforms]
    assert names[-2:] == ["Cutout", "RandomErasing"]
    torch.manual_seed(0)
    out = Cutout(8)(torch.ones(3, 32, 32))
    assert 16 <= int((out == 0).sum() / 3) <= 64
    with pytest.raises(ConfigError, match="reprob"):
        Erasing(reprob=1.5)


def digits_loader(seed: int, **kw: object) -> DeviceLoader:
    return DeviceLoader.from_split(load_split("digits", "train"), 64, train=True, seed=seed, drop_last=True, **kw)


def first_batches(loader: DeviceLoader, epoch: int, k: int = 3) -> list[torch.Tensor]:
    loader.sampler.set_epoch(epoch)
    return [x for (x, _), _ in zip(loader, range(k), strict=False)]


def test_same_seed_same_batches_different_seed_differs() -> None:
    a, b, c = digits_loader(0, erasing=Erasing(cutout=3)), digits_loader(0, erasing=Erasing(cutout=3)), digits_loader(1)
    for xa, xb in zip(first_batches(a, 4), first_batches(b, 4), strict=True):
        assert torch.equal(xa, xb)
    assert not torch.equal(first_batches(a, 4)[0], first_batches(c, 4)[0])
    assert not torch.equal(first_batches(a, 4)[0], first_batches(a, 5)[0])  # a fresh permutation per epoch


def test_each_sample_once_per_epoch() -> None:
    raw = RawImages(torch.zeros(103, 1, 4, 4, dtype=torch.uint8), 1 / 255, torch.arange(103))
    spec = dataset_info("digits")
    loader = DeviceLoader(raw, spec, 10, train=True, seed=0, drop_last=False)
    for epoch in (0, 1):
        loader.sampler.set_epoch(epoch)
        seen = torch.cat([y for _, y in loader])
        assert sorted(seen.tolist()) == list(range(103))
    dropped = DeviceLoader(raw, spec, 10, train=True, seed=0, drop_last=True)
    seen = torch.cat([y for _, y in dropped])
    assert len(dropped) == 10 and len(set(seen.tolist())) == 100


@pytest.mark.parametrize("n", [100, 103])
def test_ddp_shards_disjoint_and_covering(n: int) -> None:
    world = 3
    for even in (True, False):
        shards = []
        for rank in range(world):
            sampler = ShardSampler(n, shuffle=True, seed=7, even=even, rank=rank, world=world)
            sampler.set_epoch(2)
            shards.append(sampler.indices().tolist())
            assert len(sampler) == len(shards[-1])
        flat = [i for s in shards for i in s]
        assert len(flat) == len(set(flat))  # disjoint
        if even:
            assert len({len(s) for s in shards}) == 1 and len(flat) == n - n % world
        else:
            assert sorted(flat) == list(range(n))  # evaluation: every sample exactly once, nothing padded


def test_raw_digits_are_exact_uint8() -> None:
    split = load_split("digits", "test")
    raw = raw_images(split)
    assert raw.images.dtype == torch.uint8 and raw.scale == 1 / 16
    assert torch.equal(raw.images.float() * raw.scale, split.source.images)


def test_eval_batches_match_the_worker_transform(cifar10_dir: Path) -> None:
    cfg = TrainConfig(dataset="cifar10", data_dir=cifar10_dir, batch_size=4, val_fraction=0.25)
    device, workers = make_loaders(cfg, kind="device"), make_loaders(cfg, kind="workers")
    for split in ("val", "test"):
        xd = torch.cat([x for x, _ in getattr(device, split)])
        xw = torch.cat([x for x, _ in getattr(workers, split)])
        assert torch.allclose(xd, xw, atol=1e-6)
    splits = load_splits("cifar10", data_dir=cifar10_dir, val_fraction=0.25)
    assert [len(s) for s in splits.values()] == [len(device.train.labels), len(device.val.labels), 3]


def test_loader_choice_and_errors(cifar10_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = {"dataset": "cifar10", "data_dir": cifar10_dir, "val_fraction": 0.25}
    chosen = make_loaders(TrainConfig(**base, randaugment="rand-m9-mstd0.5"))
    assert chosen.kind == "workers" and "randaugment" in chosen.reason
    with pytest.raises(ConfigError, match=r"randaugment.*--loader workers"):
        make_loaders(TrainConfig(**base, randaugment="rand-m9-mstd0.5", loader="device"))
    with pytest.raises(ConfigError, match="img_size=16"):
        make_loaders(TrainConfig(**base, img_size=16, loader="device"))
    assert make_loaders(TrainConfig(**base)).kind == "device"
    monkeypatch.setattr("losslab.data.device.free_memory", lambda device: 1000)
    small = make_loaders(TrainConfig(**base))
    assert small.kind == "workers" and "MiB" in small.reason
    with pytest.raises(ConfigError, match=r"exceed 25% of the .* free"):
        make_loaders(TrainConfig(**base, loader="device"))
