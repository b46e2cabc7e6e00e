"""``losslab study run FILE | status DIR | table DIR``: run a study grid, see what is done, print its table.

losslab study run studies/quickstart.yaml --workers 2        # resumable: rerun to finish what is missing
losslab study run lr_quant_cifar10 --download                # fetch missing data sets before the first job
losslab study run studies/lr_quant_cifar10.yaml --backend ray --ray-address auto
losslab study list                                           # the shipped studies
losslab study status study_runs/quickstart
losslab study table study_runs/quickstart
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from losslab.cli.groups import number_type
from losslab.cli.options import LosslabCommand, given_options, options_from_model, out_dir_option, progress_option
from losslab.errors import LosslabError
from losslab.study.options import StudyRunOptions

if TYPE_CHECKING:
    from losslab.study.runner import StudyOutcome


@click.group("study")
def study() -> None:
    """Training × compression grids: run them (resumable), inspect them, tabulate them."""


@study.command("list")
def list_presets() -> None:
    """List the shipped studies (run one by name: `losslab study run NAME`) and their first comment line."""
    import re

    from losslab.presets import preset_file, preset_names

    names = preset_names("studies")
    width = max(map(len, names), default=0) + 2
    for name in names:
        text = " ".join(_comment_block(preset_file("studies", name).read_text())) or "(no description)"
        first = re.split(r"(?<!al\.)(?<=[.?!])\s(?=[A-Z])", text, maxsplit=1)[0]  # the whole first sentence, never cut
        click.echo(f"{name:{width}s}{first}")  # one line per study (scripts read the first word)


def _comment_block(text: str) -> list[str]:
    """The leading ``#`` comment lines of a study file, without the ``#``."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return [ln for ln in lines if ln]


@study.command("run", cls=LosslabCommand)
@click.argument("file", type=click.Path(path_type=Path))
@options_from_model(StudyRunOptions)
@out_dir_option("Study folder (default: the file's out_dir, else study_runs/NAME); reruns reuse what it holds.")
@progress_option
def run(file: Path, out_dir: Path | None, progress: bool | None, **flags: Any) -> None:
    """Run every job of study FILE not yet stored in its folder, then print the results table.

    FILE is a study YAML or the name of a shipped study (see `losslab study list`). Every data set the study
    needs is checked before the first job. Prints one line per finished job when stderr is not a terminal.
    """
    from losslab.study import load_study_spec, run_study
    from losslab.study.backends import check_backend
    from losslab.study.datacheck import check_study_data

    opts = StudyRunOptions(**given_options(flags))
    check_backend(opts.backend, opts.workers)
    spec = load_study_spec(file)
    check_study_data(spec, download=opts.download)
    outcome = run_study(
        spec,
        out_dir,
        workers=opts.workers,
        backend=opts.backend,
        ray_address=opts.ray_address,
        ray_resources=opts.ray_resources,
        progress=progress,
    )
    _finish(outcome)


def _finish(outcome: StudyOutcome) -> None:
    """Print a study run's counts, its failures and its table; raise if any job failed."""
    click.echo(
        f"study {outcome.study_dir}: {outcome.total} jobs, {outcome.skipped} already stored, "
        f"{outcome.completed} run now, {len(outcome.failed)} failed"
    )
    for key, message in outcome.failed:
        click.echo(f"  failed {key}: {message}", err=True)
    if outcome.completed or outcome.skipped:
        _echo_table(outcome.study_dir)
    if outcome.failed:
        raise LosslabError(
            f"{len(outcome.failed)} job(s) failed (see above and `losslab study status "
            f"{outcome.study_dir}`); rerun the same command to retry them"
        )


@study.command("status")
@click.argument("study_dir", type=click.Path(path_type=Path))
def status(study_dir: Path) -> None:
    """What a study folder holds: trained and compressed models, failures, and jobs left for its study file."""
    from losslab.study import StudyStore, load_study_spec
    from losslab.study.runner import plan_jobs

    with StudyStore.open(study_dir) as store:
        specs = store.specs()
        click.echo(
            f"study {study_dir}: {len(store.done_train_keys())} trained models, "
            f"{len(store.done_compression_keys())} compressed models, schema {store.meta()['schema_version']}"
        )
        if specs and (study_dir / "study.yaml").is_file():
            jobs, total = plan_jobs(load_study_spec(study_dir / "study.yaml"), store, study_dir)
            click.echo(
                f"study file {specs[-1]['source'] or specs[-1]['name']}: {total - len(jobs)} of {total} jobs "
                f"done, {len(jobs)} left"
            )
        for failure in store.failures():
            click.echo(f"failed {failure['key']} at {failure['at']}: {failure['error']}")


@study.command("table")
@click.argument("study_dir", type=click.Path(path_type=Path))
@click.option("--markdown", is_flag=True, help="Markdown instead of aligned text.")
def table(study_dir: Path, markdown: bool) -> None:
    """Print test top-1 by training variant, method and bits (mean ± std over seeds)."""
    _echo_table(study_dir, markdown)


def _echo_table(study_dir: Path, markdown: bool = False) -> None:
    from losslab.report.tables import accuracy_pivot, load_results, render_markdown, render_text

    header, rows = accuracy_pivot(load_results(study_dir))
    if not rows:
        click.echo(
            f"study {study_dir} holds no results yet: run `losslab study run FILE --out-dir {study_dir}` "
            f"(see `losslab study status {study_dir}`)"
        )
        return
    click.echo((render_markdown if markdown else render_text)(header, rows))


@click.command("demo", cls=LosslabCommand)
@out_dir_option("Study folder (reruns reuse what is stored there).", default=Path("study_runs/quickstart"))
@click.option(
    "--workers", type=number_type(int, ge=1), default=None, help="Parallel jobs (default: 2, one torch thread each)."
)
@progress_option
def demo(out_dir: Path, workers: int | None, progress: bool | None) -> None:
    """The main job: the quickstart study (4 losses x 2 lr x 2 seeds on digits, RTN/GPFQ/GPTQ at 8/4/3/2 bits).

    Prints the accuracy table and the path of the HTML report. A few minutes on 2 CPU cores; no network.
    """
    from losslab.study.backends import check_backend

    check_backend("local", workers)  # before the heavy imports
    from losslab.report import build_report
    from losslab.study.quickstart import run_quickstart

    outcome = run_quickstart(out_dir, workers=workers, progress=progress)
    _finish(outcome)
    click.echo(f"\nreport: {build_report(outcome.study_dir, overwrite=True)}")  # the demo refreshes its own report
