"""Layering: the report reads the study store and record types only; the study never imports the report."""

from __future__ import annotations

import subprocess
import sys


def imported_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint(' '.join(sorted(m for m in sys.modules if m.startswith('losslab'))))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return set(done.stdout.split())


def test_report_does_not_import_the_study_runner() -> None:
    modules = imported_after("import losslab.report")
    assert {"losslab.study.records", "losslab.study.store"} <= modules
    assert not modules & {"losslab.study.runner", "losslab.study.backends", "losslab.study.pipeline"}
    assert not modules & {"losslab.study.job", "losslab.study.quickstart", "losslab.train.trainer"}


def test_study_does_not_import_the_report() -> None:
    modules = imported_after(
        "import losslab.study.runner, losslab.study.quickstart, losslab.study.datacheck, losslab.study.store"
    )
    assert not any(m.startswith("losslab.report") for m in modules)
