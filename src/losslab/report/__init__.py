"""Reports of studies: tables (Markdown, HTML, CSV) and PNG figures drawn from a study's results store.

    from losslab.report import build_report
    path = build_report("study_runs/quickstart")      # report/report.html (+ report.md, figures/, *.csv)

CLI: ``losslab report STUDY_DIR [--out DIR]``.
"""

from losslab.report.build import build_report
from losslab.report.tables import StudyResults, accuracy_pivot, load_results, render_text

__all__ = ["StudyResults", "accuracy_pivot", "build_report", "load_results", "render_text"]
