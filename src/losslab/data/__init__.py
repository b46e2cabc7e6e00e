"""Image data sets by name, with seeded train/val/test splits and calibration sets.

Names: ``digits`` (bundled with scikit-learn, offline), ``fake`` (synthetic, learnable), ``cifar10``, ``cifar100``,
``tiny_imagenet``, ``food101``, ``imagenet``. Nothing is downloaded unless ``download=True``; a missing data set
raises :class:`losslab.errors.DataNotFoundError` naming the paths looked at and the fixes::

    from losslab.data import calibration_loader, create_dataloaders, create_dataset, dataset_info

    spec = dataset_info("cifar10")                  # DataSpec(name='cifar10', num_classes=10, ...)
    train = create_dataset("digits", "train")       # normalised (1, 8, 8) tensors
    loaders = create_dataloaders("digits", batch_size=64)
    calib = calibration_loader("digits", n_samples=256, batch_size=64)

The device-resident pipeline (splits as uint8 tensors on the training device, batched augmentation) is
:mod:`losslab.data.device`; both pipelines read splits through :func:`load_splits`.
"""

from losslab.data.datasets import (
    SPLITS,
    SplitSource,
    TransformedSubset,
    as_dataset,
    create_dataset,
    load_split,
    load_splits,
    train_val_indices,
)
from losslab.data.loaders import calibration_loader, create_dataloaders, make_loader
from losslab.data.paths import DATA_DIR_ENV, resolve_data_dir
from losslab.data.spec import FAKE_OPTIONS, SPECS, DataSpec, dataset_info
from losslab.data.transforms import build_transform

DATASETS = tuple(SPECS)

__all__ = [
    "DATASETS",
    "DATA_DIR_ENV",
    "FAKE_OPTIONS",
    "SPECS",
    "SPLITS",
    "DataSpec",
    "SplitSource",
    "TransformedSubset",
    "as_dataset",
    "build_transform",
    "calibration_loader",
    "create_dataloaders",
    "create_dataset",
    "dataset_info",
    "load_split",
    "load_splits",
    "make_loader",
    "resolve_data_dir",
    "train_val_indices",
]
