"""The quickstart study behind ``losslab demo``: run ``studies/quickstart.yaml``, draw its report, return the table.

::

    from losslab.study import run_quickstart
    outcome = run_quickstart("study_runs/quickstart")      # losslab demo then draws its report

The study trains a small CNN on the bundled digits data (no network) with four losses × two learning rates ×
two seeds and quantizes every model with RTN, GPFQ and GPTQ at 8/4/3/2 bits. Rerunning reuses what is stored.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from losslab.study.runner import StudyOutcome


def quickstart_file() -> Path:
    """The shipped ``studies/quickstart.yaml`` (packaged with losslab; :mod:`losslab.presets`)."""
    from losslab.presets import preset_file

    return preset_file("studies", "quickstart")


def run_quickstart(
    out_dir: str | Path | None = None, *, workers: int | None = None, progress: bool | None = None
) -> StudyOutcome:
    """Run (or finish) the quickstart study; returns the run's outcome (failed jobs listed, not raised).

    ``workers`` defaults to 2 (or 1 on a single-CPU machine): two processes with one torch thread each are the
    fastest way through 16 tiny jobs. The report is drawn by the caller (``losslab demo`` composes both).
    """
    from losslab.study.backends import check_backend
    from losslab.study.runner import run_study
    from losslab.study.spec import load_study_spec

    check_backend("local", workers)  # workers=0 is an error, not "the default"
    spec = load_study_spec(quickstart_file())
    workers = workers if workers is not None else min(2, os.cpu_count() or 1)
    return run_study(spec, out_dir, workers=workers, progress=progress)
