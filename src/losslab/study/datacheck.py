"""Check, before a study's first job, that every data set it needs is on disk (or fetch them with ``download``).

Without this a study with no CIFAR-10 fails each of its jobs one by one with the same long error. The check
opens the training and test split of each distinct (dataset, data folder) of the grid once and gathers every
miss into one :class:`losslab.errors.DataNotFoundError`::

    from losslab.study.datacheck import check_study_data
    check_study_data(spec, download=False)     # raises one error listing every missing data set
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from losslab.errors import DataNotFoundError

if TYPE_CHECKING:
    from losslab.study.spec import StudySpec


def study_datasets(spec: StudySpec) -> list[tuple[str, str | None]]:
    """The distinct (dataset, data_dir) pairs of ``spec``'s training points, in grid order."""
    pairs = [(str(p["dataset"]), p.get("data_dir")) for p in spec.train_points()]
    return list(dict.fromkeys(pairs))


def check_study_data(spec: StudySpec, *, download: bool = False) -> list[tuple[str, str | None]]:
    """Open every data set ``spec`` needs (fetching missing ones when ``download``); returns the pairs checked.

    Raises one :class:`DataNotFoundError` naming every missing data set, where losslab looked, and the fixes
    (``losslab study run FILE --download``, or the data folder).
    """
    from losslab.data import create_dataset, resolve_data_dir

    pairs = study_datasets(spec)
    problems: list[str] = []
    for name, data_dir in pairs:
        try:
            for split in ("test", "train"):
                create_dataset(name, split, data_dir=data_dir, download=download, augment=False, val_fraction=0.0)
        except DataNotFoundError as exc:
            problems.append(f"- {name} (data folder {resolve_data_dir(data_dir)}): {exc}")
    if problems:
        hint = (
            "`losslab study run ... --download` fetches the data sets that can be downloaded; "
            "or set data_dir in the study's train section (default: $LOSSLAB_DATA_DIR, else ~/.cache/losslab/data)"
        )
        raise DataNotFoundError(
            f"study {spec.name!r} needs {len(problems)} data set(s) that are not on disk; no job was started.\n"
            + "\n".join(problems)
            + f"\nTo fix: {hint}"
        )
    return pairs
