"""The device-resident image pipeline: each split held once as a uint8 tensor on the training device, batches
drawn and augmented there (random crop with the data set's padding, horizontal flip, normalisation, cutout and
random erasing), no worker processes, no per-image Python.

For data that fits in memory (digits, fake, CIFAR-10/100, Tiny-ImageNet, small image folders). The worker
pipeline (``torch.utils.data.DataLoader`` over :func:`losslab.data.create_dataset`) stays for everything else
(RandAugment, ImageNet-style resized crops, resizing, data too large); :func:`device_pipeline_problem` says why a
configuration cannot use this one::

    split = load_split("cifar10", "train", data_dir="~/data")
    loader = DeviceLoader.from_split(split, batch_size=512, train=True, seed=0, drop_last=True)
    loader.to("cuda")                              # once; Lightning: the PlaceOnDevice callback does it
    loader.sampler.set_epoch(epoch)                # Lightning calls this before every epoch
    for x, y in loader: ...                        # x float (B, C, H, W) normalised, y int64 (B,)

Randomness: the epoch's permutation comes from ``ShardSampler`` (seeded by ``(seed, epoch)``; the same sampler
shuffles the worker pipeline), the augmentation draws from a generator seeded by ``(seed, epoch, rank)``: the same
seed gives the same batches, a resumed run continues the same sequence, and under DDP each rank takes its own
disjoint shard of the epoch's permutation.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from losslab.data.datasets import SplitSource
from losslab.data.spec import DataSpec
from losslab.data.transforms import ERASE_ATTEMPTS, ERASE_LOG_RATIO, ERASE_SCALE, Erasing
from losslab.errors import ConfigError

EPOCH_STRIDE = 1_000_003  # seed of epoch e: seed * EPOCH_STRIDE + e (distinct streams per seed and epoch)
RANK_STRIDE = 7_919  # augmentation streams of different ranks differ
DEVICE_MEMORY_SHARE = 0.25  # auto: the device pipeline when all splits take at most this share of free memory


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The generator seed of ``epoch`` (and ``rank``) in a run seeded by ``seed``."""
    return (seed * EPOCH_STRIDE + epoch) * RANK_STRIDE + rank


def dist_rank_world() -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ShardSampler(torch.utils.data.Sampler[int]):
    """Indices ``0..n-1`` of one epoch for this rank: a fresh seeded permutation per epoch (``shuffle``) or in order.

    Under DDP (rank/world read from ``torch.distributed`` at iteration time, or given) rank r takes
    ``perm[r::world]``; with ``even=True`` (training) the permutation is first cut to a multiple of ``world`` so
    every rank runs the same number of steps, with ``even=False`` (evaluation) nothing is cut or padded, so the
    shards cover every sample exactly once. ``set_epoch`` is called by Lightning before each epoch.
    """

    def __init__(
        self, n: int, shuffle: bool, seed: int = 0, even: bool = True, rank: int | None = None, world: int | None = None
    ) -> None:
        self.n = n
        self.shuffle = shuffle
        self.seed = seed
        self.even = even
        self.epoch = 0
        self._rank, self._world = rank, world

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def rank_world(self) -> tuple[int, int]:
        rank, world = dist_rank_world()
        return (rank if self._rank is None else self._rank), (world if self._world is None else self._world)

    def indices(self) -> torch.Tensor:
        """This rank's indices of the current epoch, int64 on the CPU."""
        rank, world = self.rank_world()
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch)))
        else:
            order = torch.arange(self.n)
        if self.even and world > 1:
            order = order[: self.n - self.n % world]
        return order[rank::world]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        rank, world = self.rank_world()
        usable = self.n - self.n % world if self.even and world > 1 else self.n
        return len(range(rank, usable, world))


# ---------------------------------------------------------------------- raw pixels of a split
@dataclass
class RawImages:
    """A split's pixels as stored: ``images`` (N, C, H, W) uint8 codes with ``pixel = images * scale`` in [0, 1]
    (float32 with scale 1 for sources whose pixels are not 8-bit codes, e.g. ``fake``), ``labels`` (N,) int64."""

    images: torch.Tensor
    scale: float
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


def _quantized(x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """uint8 codes of float pixels in [0, 1] when they are exact multiples of 1/16 or 1/255, else float32."""
    for levels in (16, 255):
        codes = x * levels
        if bool((codes - codes.round()).abs().max() < 1e-4) and float(x.min()) >= 0 and float(x.max()) <= 1:
            return codes.round().to(torch.uint8), 1.0 / levels
    return x.float(), 1.0


def raw_images(split: SplitSource) -> RawImages:
    """Decode a split once into one tensor (CIFAR's arrays are used as they are; image files are read once)."""
    from losslab.data.cifar import CifarImages
    from losslab.data.digits import TensorImages

    source = split.source
    idx = list(range(len(source))) if split.indices is None else split.indices
    labels = torch.tensor([source.targets[i] for i in idx], dtype=torch.int64)
    if isinstance(source, CifarImages):
        data = source.data[np.asarray(idx, dtype=np.int64)]  # (N, H, W, C) uint8
        return RawImages(torch.from_numpy(data).permute(0, 3, 1, 2).contiguous(), 1 / 255, labels)
    if isinstance(source, TensorImages):
        images, scale = _quantized(source.images[idx])
        return RawImages(images.contiguous(), scale, labels)
    if split.spec.pil:  # image files: decode every image once
        arrays = [np.asarray(source[i][0], dtype=np.uint8) for i in idx]
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise ConfigError(
                f"loader='device': the images of {split.spec.name!r} have different sizes {sorted(shapes)[:3]}; "
                "the device pipeline needs one size: use --loader workers"
            )
        data = np.stack(arrays) if arrays else np.zeros((0, split.img_size, split.img_size, 3), np.uint8)
        return RawImages(torch.from_numpy(data).permute(0, 3, 1, 2).contiguous(), 1 / 255, labels)
    images, scale = _quantized(torch.stack([source[i][0] for i in idx]))  # e.g. fake: float tensors
    return RawImages(images.contiguous(), scale, labels)


# ---------------------------------------------------------------------- batched augmentation
def random_crop(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """torchvision RandomCrop(size, padding=pad) on every image of (B, C, H, W): zero padding, offsets uniform in
    0..2*pad per image and axis."""
    if pad == 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))  # (B, C, H+2p, W+2p)
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=gen, device=x.device)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=gen, device=x.device)
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # (B, H, 1)
    cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, :]  # (B, 1, W)
    batch = torch.arange(b, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)  # (B, H, W, C) -> (B, C, H, W)


def random_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mirror each image of (B, C, H, W) left-right with probability 1/2."""
    flip = torch.rand(x.shape[0], generator=gen, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def cutout_mask(b: int, h: int, w: int, size: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """(B, H, W) bool: one size x size square per image, centre uniform over the image, clipped at the border."""
    cy = torch.randint(0, h, (b, 1), generator=gen, device=device) - size // 2
    cx = torch.randint(0, w, (b, 1), generator=gen, device=device) - size // 2
    ys, xs = torch.arange(h, device=device), torch.arange(w, device=device)
    in_y = (ys >= cy) & (ys < cy + size)  # (B, H)
    in_x = (xs >= cx) & (xs < cx + size)  # (B, W)
    return in_y[:, :, None] & in_x[:, None, :]


def erasing_mask(
    b: int, h: int, w: int, prob: float, max_count: int, gen: torch.Generator, device: torch.device
) -> torch.Tensor:
    """(B, H, W) bool: timm RandomErasing boxes. With probability ``prob`` an image gets ``count`` ~ U{1..max_count}
    boxes, each of area U(0.02, 1/3) * H * W / count and log aspect ratio U(log 0.3, log 1/0.3), the first of 10
    attempts that fits inside the image, placed uniformly."""
    kw = {"generator": gen, "device": device}
    apply = torch.rand(b, **kw) < prob  # (B,)
    count = torch.randint(1, max_count + 1, (b,), **kw)  # (B,)
    shape = (b, max_count, ERASE_ATTEMPTS)
    area = (ERASE_SCALE[0] + (ERASE_SCALE[1] - ERASE_SCALE[0]) * torch.rand(shape, **kw)) * h * w
    area = area / count[:, None, None]
    ratio = torch.exp(ERASE_LOG_RATIO[0] + (ERASE_LOG_RATIO[1] - ERASE_LOG_RATIO[0]) * torch.rand(shape, **kw))
    bh, bw = torch.sqrt(area * ratio).round().long(), torch.sqrt(area / ratio).round().long()  # (B, K, A)
    fits = (bh < h) & (bw < w)
    first = fits.int().argmax(-1, keepdim=True)  # first attempt that fits, (B, K, 1)
    bh, bw = bh.gather(-1, first)[..., 0], bw.gather(-1, first)[..., 0]  # (B, K)
    used = fits.any(-1) & apply[:, None] & (torch.arange(max_count, device=device) < count[:, None])
    top = (torch.rand((b, max_count), **kw) * (h - bh + 1)).long()
    left = (torch.rand((b, max_count), **kw) * (w - bw + 1)).long()
    ys, xs = torch.arange(h, device=device), torch.arange(w, device=device)
    in_y = (ys >= top[..., None]) & (ys < (top + bh)[..., None])  # (B, K, H)
    in_x = (xs >= left[..., None]) & (xs < (left + bw)[..., None])  # (B, K, W)
    return (in_y[..., :, None] & in_x[..., None, :] & used[..., None, None]).any(1)


def apply_erasing(x: torch.Tensor, erasing: Erasing, gen: torch.Generator) -> torch.Tensor:
    """Cutout (zeros) then random erasing (zeros or N(0, 1) pixels) on a normalised float batch (B, C, H, W)."""
    b, _, h, w = x.shape
    if erasing.cutout:
        x = x.masked_fill(cutout_mask(b, h, w, erasing.cutout, gen, x.device)[:, None], 0.0)
    if erasing.reprob:
        mask = erasing_mask(b, h, w, erasing.reprob, erasing.recount, gen, x.device)[:, None]  # (B, 1, H, W)
        if erasing.remode == "pixel":
            x = torch.where(mask, torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype), x)
        else:
            x = x.masked_fill(mask, 0.0)
    return x


# ---------------------------------------------------------------------- the loader
class DeviceLoader:
    """Batches of one split from a tensor on the training device; iterate like a DataLoader.

    ``train=True``: the split is shuffled per epoch and augmented per the spec (crop with ``spec.pad``, flip for
    ``crop_flip``, ``erasing``); ``train=False``: in order, no augmentation, no drop_last.
    """

    def __init__(
        self,
        raw: RawImages | Callable[[], RawImages],
        spec: DataSpec,
        batch_size: int,
        train: bool,
        seed: int = 0,
        drop_last: bool = False,
        augment: bool = True,
        erasing: Erasing | None = None,
        n: int | None = None,
        dataset: SplitSource | None = None,
    ) -> None:
        # ``raw`` may be a function decoding the split on first use (then ``n`` = its size): a loader that is
        # never iterated (e.g. the train split of an evaluation) costs nothing.
        self._raw: RawImages | Callable[[], RawImages] = raw
        self.spec = spec
        self.batch_size = batch_size
        self.train, self.augment, self.drop_last = train, augment and train, drop_last
        self.erasing = erasing if train and erasing is not None and erasing.active else None
        size = len(raw.labels) if isinstance(raw, RawImages) else n
        if size is None:
            raise ValueError("DeviceLoader: pass n (the split size) with a lazy raw-image function")
        self.sampler = ShardSampler(size, shuffle=train, seed=seed, even=train)
        self.batch_sampler = None  # Lightning inspects DataLoader-like objects for these two attributes
        self.seed = seed
        self._device = torch.device("cpu")
        self._norm: tuple[torch.Tensor, torch.Tensor] | None = None
        # Like DataLoader.dataset: what the loader draws from (``len`` = images in the split).
        self.dataset: SplitSource | RawImages = dataset if dataset is not None else raw  # type: ignore[assignment]

    @classmethod
    def from_split(cls, split: SplitSource, batch_size: int, train: bool, **kwargs: Any) -> DeviceLoader:
        """A loader over ``split`` that decodes its images on first use."""
        decode = functools.partial(raw_images, split)  # picklable, for DDP spawn
        return cls(decode, split.spec, batch_size, train, n=len(split), dataset=split, **kwargs)

    def _materialize(self) -> RawImages:
        if not isinstance(self._raw, RawImages):
            self._raw = self._raw()
        raw = self._raw
        if raw.images.device != self._device:
            self._raw = raw = RawImages(raw.images.to(self._device), raw.scale, raw.labels.to(self._device))
        return raw

    def _normalizer(self, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(mul, add) of shape (C, 1, 1) on the loader's device, cached: normalised = stored * mul + add."""
        if self._norm is None or self._norm[0].device != self._device:
            mean = torch.tensor(self.spec.mean, dtype=torch.float32)[:, None, None]
            std = torch.tensor(self.spec.std, dtype=torch.float32)[:, None, None]
            self._norm = ((scale / std).to(self._device), (-mean / std).to(self._device))
        return self._norm

    @property
    def images(self) -> torch.Tensor:
        """The split's stored pixels (N, C, H, W) on the loader's device (decoded on first access)."""
        return self._materialize().images

    @property
    def labels(self) -> torch.Tensor:
        """The split's labels (N,) int64 on the loader's device."""
        return self._materialize().labels

    @property
    def device(self) -> torch.device:
        return self._device

    def to(self, device: str | torch.device) -> DeviceLoader:
        """Hold the split on ``device`` (moved now if decoded, else decoded there on first use); returns self."""
        self._device = torch.device(device)
        if isinstance(self._raw, RawImages):
            self._materialize()
        return self

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        labels = self.labels
        order = self.sampler.indices().to(self._device)
        rank, _ = self.sampler.rank_world()
        gen = torch.Generator(device=self._device).manual_seed(epoch_seed(self.seed, self.sampler.epoch, rank))
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            yield self.batch(idx, gen), labels[idx]

    def batch(self, idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Images ``idx`` (B,) of the split, augmented (train) and normalised: float32 (B, C, H, W)."""
        raw = self._materialize()
        x = raw.images[idx]  # (B, C, H, W) stored dtype
        if self.augment and self.spec.train_augment in ("crop_flip", "shift"):
            x = random_crop(x, self.spec.pad, gen)
        if self.augment and self.spec.train_augment == "crop_flip":
            x = random_flip(x, gen)
        mul, add = self._normalizer(raw.scale)
        x = x.float() * mul + add  # (stored * scale - mean) / std
        return apply_erasing(x, self.erasing, gen) if self.erasing is not None else x


# ---------------------------------------------------------------------- choosing the pipeline
def device_pipeline_problem(spec: DataSpec, img_size: int, augment: bool, randaugment: str | None) -> str | None:
    """Why the device pipeline cannot run this data/transform combination (None when it can)."""
    if randaugment:
        return f"randaugment={randaugment!r} (RandAugment runs per PIL image, it cannot be batched on the device)"
    if augment and spec.train_augment not in ("crop_flip", "shift", "none"):
        return f"the {spec.train_augment} augmentation of {spec.name!r} (per-image resized crops are not batched)"
    if img_size != spec.img_size:
        return f"img_size={img_size} differs from the native {spec.img_size} px of {spec.name!r} (resizing)"
    return None


def split_nbytes(spec: DataSpec, n_images: int) -> int:
    """Bytes of ``n_images`` images of ``spec`` stored as uint8."""
    return n_images * spec.in_chans * spec.img_size * spec.img_size


def free_memory(device: torch.device) -> int:
    """Free bytes on ``device`` (CUDA: the driver's count; CPU: available physical memory)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 0
