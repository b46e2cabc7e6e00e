"""The ``losslab`` command line: a thin layer over the Python API.

    losslab train [--config run.yaml] [--loss root --k 3 --m 3 ...]   train a classifier (losslab.train.trainer)
    losslab evaluate RUN_OR_CKPT                                      accuracy of a trained classifier
    losslab quantize RUN_OR_CKPT --method gpfq --bits 4 8             post-training quantization + accuracy table
    losslab lm finetune|quantize|eval ...                             causal language models
    losslab logreg --dataset breast_cancer --compare --k 3 --k 10     logistic regression, logistic vs rooted loss
    losslab study run FILE / losslab report STUDY_DIR                 grids of runs and their report
    losslab demo                                                      the quickstart study and its report
    losslab models | objectives | datasets | regularizers             what is available

Every bad input raises :class:`losslab.errors.LosslabError`; the CLI prints its message (no traceback) and exits
with status 2.
"""

from __future__ import annotations

import sys

import click

from losslab import __version__
from losslab.errors import LosslabError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="losslab")
def cli() -> None:
    """losslab: which training choices make a network survive compression, and how best to compress it."""


def _register_commands() -> None:
    """Attach every command; each module imports only click at load time, so ``--help`` stays fast."""
    from losslab.cli.catalog import list_datasets_cmd, list_models_cmd, list_objectives_cmd, list_regularizers_cmd
    from losslab.cli.lm import lm
    from losslab.cli.logreg import logreg
    from losslab.cli.quantize import quantize
    from losslab.cli.report import report
    from losslab.cli.study import demo, study
    from losslab.cli.train import evaluate, train

    for command in (train, evaluate, quantize, lm, logreg, study, report, demo):
        cli.add_command(command)
    for command in (list_models_cmd, list_objectives_cmd, list_regularizers_cmd, list_datasets_cmd):
        cli.add_command(command)


_register_commands()


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``losslab`` console script: LosslabError → message on stderr, exit status 2.

    The torch thread count is chosen first, before any command imports torch (``losslab.threads``).
    """
    try:
        from losslab.threads import configure_threads, threads_from_argv

        configure_threads(threads_from_argv(sys.argv[1:] if argv is None else argv))
        cli.main(args=argv, prog_name="losslab", standalone_mode=False)
    except LosslabError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
