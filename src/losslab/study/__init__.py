"""Studies: a training × compression grid, run once, every result kept in a SQLite store, resumable.

    from losslab.study import load_study_spec, run_study, StudyStore
    spec = load_study_spec("studies/quickstart.yaml")        # validated; errors name the key and the fix
    outcome = run_study(spec, "study_runs/quickstart", workers=2)   # or backend="ray"
    with StudyStore.open("study_runs/quickstart") as store:
        store.compressions()                                 # one row per compressed model

    table, report = run_quickstart("study_runs/quickstart")  # what `losslab demo` runs

CLI: ``losslab study run FILE [--workers N] [--backend local|ray]``, ``losslab study status DIR``,
``losslab study table DIR``; the report: ``losslab report DIR``.
"""

from losslab.study.job import JobResult, StudyJob
from losslab.study.quickstart import run_quickstart
from losslab.study.runner import StudyOutcome, run_study
from losslab.study.spec import StudySpec, load_study_spec, parse_study
from losslab.study.store import StudyStore, StudyStoreError

__all__ = [
    "JobResult",
    "StudyJob",
    "StudyOutcome",
    "StudySpec",
    "StudyStore",
    "StudyStoreError",
    "load_study_spec",
    "parse_study",
    "run_quickstart",
    "run_study",
]
