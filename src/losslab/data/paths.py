"""Where losslab keeps data sets, and the one error it raises when one is missing.

The default data folder is ``$LOSSLAB_DATA_DIR`` if set, else ``~/.cache/losslab/data``; every function that reads
data takes ``data_dir=`` (CLI ``--data-dir``) to override it. Nothing is downloaded unless ``download=True``::

    root = resolve_data_dir(None)  # Path('~/.cache/losslab/data').expanduser()
    raise missing_data_error("cifar10", root / "cifar-10-batches-py", [], "the extracted 'cifar-10-batches-py' folder",
                             root, can_download=True)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.error import URLError

from losslab.errors import DataNotFoundError

DATA_DIR_ENV = "LOSSLAB_DATA_DIR"


def resolve_data_dir(data_dir: str | os.PathLike[str] | None) -> Path:
    """``data_dir`` if given, else ``$LOSSLAB_DATA_DIR``, else ``~/.cache/losslab/data`` (user-expanded)."""
    if data_dir is None:
        data_dir = os.environ.get(DATA_DIR_ENV) or "~/.cache/losslab/data"
    return Path(data_dir).expanduser()


def missing_data_error(
    name: str, root: Path, needed: Sequence[Path], what: str, data_dir: Path, can_download: bool
) -> DataNotFoundError:
    """The error for a data set that is not on disk: where losslab looked and the ways to fix it.

    ``root`` is the data set's folder and ``needed`` the files/folders it must contain; the message names
    ``root`` if it is absent, else the missing entries of ``needed``.
    """
    absent = [p for p in dict.fromkeys(needed) if not p.exists()]
    looked_at = absent if root.is_dir() and absent else [root]
    fixes = []
    if can_download:
        fixes.append(f"re-run with --download (download=True) to fetch it into {data_dir}")
    fixes.append(f"place {what} at {root}")
    fixes.append(f"point --data-dir (data_dir=...) at the folder that contains {root.name!r}")
    paths = ", ".join(str(p) for p in looked_at)
    return DataNotFoundError(f"data set {name!r} not found: losslab looked at {paths}. To fix: {'; or '.join(fixes)}.")


def fetch(name: str, download: Callable[[], object], source: str, data_dir: Path, what: str) -> None:
    """Run ``download()``; a network or file failure becomes a :class:`DataNotFoundError` naming ``source``."""
    try:
        download()
    except (OSError, URLError, RuntimeError) as error:
        raise DataNotFoundError(
            f"downloading data set {name!r} from {source} into {data_dir} failed ({type(error).__name__}: {error}). "
            f"Check the network, or download it yourself and place {what} under {data_dir} "
            "(or point --data-dir at the folder that holds it)."
        ) from error
