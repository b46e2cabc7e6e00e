"""The ``losslab`` command line: a thin layer over the Python API.

    losslab train [--config run.yaml] [--loss root --k 3 --m 3 ...]   train a classifier (losslab.train.trainer)
    losslab evaluate RUN_OR_CKPT                                      accuracy of a trained classifier
    losslab quantize RUN_OR_CKPT --method gpfq --bits 4 8             post-training quantization + accuracy table
    losslab lm finetune|quantize|eval ...                             causal language models
    losslab logreg --dataset breast_cancer --compare --k 3 --k 10     logistic regression, logistic vs rooted loss
    losslab gan train --data ring --loss rooted --k 2                 GAN training with the rooted loss
    losslab study run FILE / losslab report STUDY_DIR                 grids of runs and their report
    losslab demo                                                      the quickstart study and its report
    losslab models | objectives | datasets | regularizers             what is available

Every bad input raises :class:`losslab.errors.LosslabError`. :func:`main` turns it, and every ordinary fault
(a read-only, full or missing output path, a corrupt or truncated file, bad YAML), into one line on stderr and
exit status 2; ``losslab --debug ...`` (or ``LOSSLAB_DEBUG=1``) shows the traceback too. Anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import sys
import traceback
import zipfile
from typing import Any, NoReturn

import click

from losslab import __version__
from losslab.cli.quiet import VERBOSE_KEY
from losslab.errors import LosslabError


def usage_error_line(exc: click.UsageError) -> str:
    """A bad flag or value as one line naming it (click's own display takes three)."""
    where = f"; see `{exc.ctx.command_path} --help`" if exc.ctx is not None else ""
    return f"error: {exc.format_message()}{where}"


def exit_for(exc: click.ClickException | click.exceptions.Exit) -> NoReturn:
    """Leave with ``exc``'s exit status: a bad flag or value (a usage error) as one line naming it, before any work;
    another click error as click shows it."""
    if isinstance(exc, click.UsageError):
        click.echo(usage_error_line(exc), err=True)
    elif isinstance(exc, click.ClickException):
        exc.show()
    sys.exit(exc.exit_code)


class LosslabGroup(click.Group):
    """The root group: usage errors are one line on stderr, exit status 2, also when run by click directly."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            return super().main(*args, standalone_mode=False, **kwargs)
        except (click.ClickException, click.exceptions.Exit) as exc:
            exit_for(exc)
        except click.exceptions.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)


@click.group(cls=LosslabGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="losslab")
@click.option("--debug", is_flag=True, help="Show the full traceback of an error (also LOSSLAB_DEBUG=1).")
@click.option(
    "--verbose",
    is_flag=True,
    help="Keep third-party output (Lightning banners and tips, transformers' loading bars) that quiet runs hide.",
)
@click.pass_context
def cli(ctx: click.Context, debug: bool, verbose: bool) -> None:
    """losslab: which training choices make a network survive compression, and how best to compress it."""
    if debug:
        os.environ["LOSSLAB_DEBUG"] = "1"
    ctx.meta[VERBOSE_KEY] = verbose


def _register_commands() -> None:
    """Attach every command; each module imports only click at load time, so ``--help`` stays fast."""
    from losslab.cli.catalog import list_datasets_cmd, list_models_cmd, list_objectives_cmd, list_regularizers_cmd
    from losslab.cli.gan import gan
    from losslab.cli.landscape import landscape
    from losslab.cli.lm import lm
    from losslab.cli.logreg import logreg
    from losslab.cli.quantize import quantize
    from losslab.cli.report import report
    from losslab.cli.study import demo, study
    from losslab.cli.train import evaluate, train
    from losslab.cli.translate import translate

    for command in (train, evaluate, quantize, lm, logreg, gan, translate, study, report, demo, landscape):
        cli.add_command(command)
    for command in (list_models_cmd, list_objectives_cmd, list_regularizers_cmd, list_datasets_cmd):
        cli.add_command(command)


_register_commands()


# OSError numbers that are a fault of the machine or of a path the user gave, not a bug in losslab.
USER_OS_ERRNOS = frozenset(
    {
        errno.ENOENT,
        errno.EEXIST,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.EACCES,
        errno.EPERM,
        errno.EROFS,
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EFBIG,
        errno.ENAMETOOLONG,
        errno.ENOTEMPTY,
        errno.EBUSY,
    }
)


def user_fault(exc: BaseException) -> str | None:
    """The one-line message for an error that is the user's input or an ordinary fault, or None for a bug."""
    import yaml

    if isinstance(exc, LosslabError):
        return str(exc)
    if isinstance(exc, OSError) and exc.errno in USER_OS_ERRNOS:
        where = f" {exc.filename!r}" if exc.filename else ""
        return f"cannot use{where}: {exc.strerror or exc}; check the path, its permissions and the free space"
    if isinstance(exc, yaml.YAMLError):
        return f"invalid YAML: {' '.join(str(exc).split())}; fix the file's syntax"
    if isinstance(exc, json.JSONDecodeError):
        return f"invalid JSON ({exc}); the file is corrupt or not a losslab file"
    corrupt = (pickle.UnpicklingError, zipfile.BadZipFile, EOFError)
    if isinstance(exc, corrupt) or type(exc).__name__ == "SafetensorError":
        return f"a file is corrupt or truncated ({type(exc).__name__}: {exc}); recreate it or restore it from a copy"
    if isinstance(exc, RuntimeError) and str(exc).startswith("PytorchStreamReader failed"):
        return f"a checkpoint is corrupt or truncated ({exc}); recreate it or restore it from a copy"
    return None


def _debug() -> bool:
    return os.environ.get("LOSSLAB_DEBUG", "") not in ("", "0")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``losslab`` console script: user faults → one line on stderr, exit status 2.

    The torch thread count is chosen first, before any command imports torch (``losslab.threads``).
    """
    try:
        from losslab.threads import configure_threads, threads_from_argv

        configure_threads(threads_from_argv(sys.argv[1:] if argv is None else argv))
        cli.main(args=argv, prog_name="losslab", standalone_mode=False)
    except click.exceptions.Abort as exc:
        # click turns an EOFError (a zero-byte file read by a loader) into Abort, like Ctrl-C; tell them apart
        cause = exc.__context__
        if isinstance(cause, EOFError):
            _fail(cause)
        click.echo("aborted", err=True)
        sys.exit(130)
    except (click.ClickException, click.exceptions.Exit) as exc:
        exit_for(exc)
    except Exception as exc:
        _fail(exc)


def _fail(exc: BaseException) -> None:
    """Report ``exc``: one line and exit 2 for a user fault (traceback too with --debug); re-raise a bug."""
    message = user_fault(exc)
    if message is None:
        raise exc
    if _debug():
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


if __name__ == "__main__":
    main()
