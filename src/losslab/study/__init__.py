"""Studies: a training × compression grid, run once, every result kept in a SQLite store, resumable.

    from losslab.study import load_study_spec, run_study, StudyStore
    spec = load_study_spec("studies/quickstart.yaml")        # validated; errors name the key and the fix
    outcome = run_study(spec, "study_runs/quickstart", workers=2)   # or backend="ray"
    with StudyStore.open("study_runs/quickstart") as store:
        store.compressions()                                 # one row per compressed model

    outcome = run_quickstart("study_runs/quickstart")        # the study behind `losslab demo`

CLI: ``losslab study run FILE [--workers N] [--backend local|ray]``, ``losslab study status DIR``,
``losslab study table DIR``; the report: ``losslab report DIR`` (:mod:`losslab.report`, which reads the
store and :mod:`losslab.study.records` only).
"""

from losslab.lazy import lazy_exports

# Lazy, so that ``losslab.study.store``/``records`` (what the report reads) load without the runner machinery.
_EXPORTS = {
    "JobResult": "losslab.study.records",
    "StudyJob": "losslab.study.job",
    "run_quickstart": "losslab.study.quickstart",
    "StudyOutcome": "losslab.study.runner",
    "run_study": "losslab.study.runner",
    "StudySpec": "losslab.study.spec",
    "load_study_spec": "losslab.study.spec",
    "parse_study": "losslab.study.spec",
    "StudyStore": "losslab.study.store",
    "StudyStoreError": "losslab.study.store",
}
__getattr__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
