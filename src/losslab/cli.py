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

import json
import sys
from pathlib import Path
from typing import Any

import click

from losslab import __version__
from losslab.cli_options import given_options, options_from_model
from losslab.errors import LosslabError
from losslab.train.config import TrainConfig

TRAIN_ALIASES = {
    "label_smoothing": ["--smoothing"],
    "sgt_alpha": ["--modify-softmax"],
    "lmbda": ["--lambda"],
    "model": ["--net"],
    "epochs": ["--n-epochs"],
}


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="losslab")
def cli() -> None:
    """losslab: which training choices make a network survive compression, and how best to compress it."""


@cli.command(context_settings={"show_default": False})
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path),
    default=None,
    help="YAML file of config keys (the flags' names with underscores); flags override it.",
)
@click.option("--print-config", is_flag=True, help="Print the resolved config as YAML and exit.")
@options_from_model(TrainConfig, aliases=TRAIN_ALIASES)
def train(config_file: Path | None, print_config: bool, **flags: Any) -> None:
    """Train an image classifier. With no arguments: the rooted loss on the bundled digits data (~20 s on 2 CPU cores).

    Writes a run folder (config, metrics CSV, last/best checkpoints, result.json); --resume RUN continues a
    killed run.
    """
    from losslab.train import fit

    overrides = given_options(flags)
    if config_file is not None:
        cfg = TrainConfig.from_yaml(config_file, overrides)
    elif overrides.get("resume") is not None:
        cfg = _resume_config(overrides)
    else:
        cfg = TrainConfig.build(overrides)
    if print_config:
        import yaml

        click.echo(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return
    result = fit(cfg)
    click.echo(
        f"run {result.run_dir}: test accuracy {result.test_acc:.2f}% (best validation {result.best_val_acc:.2f}%), "
        f"test CE {result.test_ce:.4f}, {result.num_params:,} parameters"
        + (
            f" ({result.compression_ratio:.4f} of dense {result.num_params_dense:,})"
            if result.num_params != result.num_params_dense
            else ""
        )
        + f", {result.wall_time_s:.1f} s"
    )


def _resume_config(overrides: dict[str, Any]) -> TrainConfig:
    """The stored config of the run being resumed, with the flags given now applied on top."""
    from losslab.train.trainer import resolve_resume

    run_dir, _ = resolve_resume(overrides["resume"])
    stored = run_dir / "config.yaml"
    return TrainConfig.from_yaml(stored, overrides) if stored.is_file() else TrainConfig.build(overrides)


@cli.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option(
    "--split", type=click.Choice(["test", "val"]), default="test", show_default=True, help="Which split to evaluate on."
)
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, help="Override the stored data folder.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a line of text.")
def evaluate(checkpoint: Path, split: str, data_dir: Path | None, as_json: bool) -> None:
    """Top-1/top-5 accuracy and cross entropy of a trained classifier (run folder or .ckpt)."""
    metrics = evaluate_checkpoint(checkpoint, split, data_dir)
    if as_json:
        click.echo(json.dumps(metrics, indent=2))
    else:
        click.echo(
            f"{metrics['dataset']} {split}: top-1 {metrics['top1']:.2f}%  top-5 {metrics['top5']:.2f}%  "
            f"CE {metrics['ce']:.4f}  (n={metrics['n']}, checkpoint {metrics['checkpoint']})"
        )


def evaluate_checkpoint(checkpoint: Path, split: str = "test", data_dir: Path | None = None) -> dict[str, Any]:
    """Load a run and evaluate it on ``split``; the dict also names the dataset and checkpoint."""
    from losslab.train import evaluate_model, load_run
    from losslab.train.build import make_loaders

    run = load_run(checkpoint)
    cfg = run.config if data_dir is None else run.config.model_copy(update={"data_dir": data_dir})
    loaders = make_loaders(cfg)
    metrics = evaluate_model(run.model, loaders.test if split == "test" else loaders.val)
    return {**metrics, "dataset": cfg.dataset, "split": split, "checkpoint": str(run.checkpoint)}


@cli.command("models")
@click.argument("pattern", required=False)
def list_models_cmd(pattern: str | None) -> None:
    """List model names (losslab's first, then timm's), optionally filtered by a wildcard PATTERN."""
    from losslab.models import list_models

    for name in list_models(pattern):
        click.echo(name)


@cli.command("objectives")
def list_objectives_cmd() -> None:
    """List training objectives."""
    from losslab.objectives import list_objectives

    click.echo("\n".join(list_objectives()))


@cli.command("regularizers")
def list_regularizers_cmd() -> None:
    """List regularizers."""
    from losslab.regularizers import list_regularizers

    click.echo("\n".join(list_regularizers()))


@cli.command("datasets")
def list_datasets_cmd() -> None:
    """List dataset names and their shapes."""
    from losslab.data import DATASETS, dataset_info

    for name in DATASETS:
        spec = dataset_info(name)
        click.echo(f"{name:14s} {spec.num_classes:5d} classes  {spec.in_chans}x{spec.img_size}x{spec.img_size}")


@cli.command()
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=Path("study_runs/quickstart"),
    show_default=True,
    help="Study folder (reruns reuse what is stored there).",
)
@click.option("--workers", type=int, default=None, help="Parallel jobs (default: 2, one torch thread each).")
def demo(out_dir: Path, workers: int | None) -> None:
    """The main job: the quickstart study (4 losses x 2 lr x 2 seeds on digits, RTN/GPFQ/GPTQ at 8/4/3/2 bits).

    Prints the accuracy table and the path of the HTML report. Under 5 minutes on 2 CPU cores; no network.
    """
    from losslab.study import run_quickstart

    table, report = run_quickstart(out_dir, workers=workers)
    click.echo(table)
    click.echo(f"\nreport: {report}")


def _register_subpackage_commands() -> None:
    """Attach the command groups that live beside the packages they drive."""
    from losslab.cli_lm import lm
    from losslab.cli_logreg import logreg
    from losslab.cli_quantize import quantize
    from losslab.report.cli import report
    from losslab.study.cli import study

    for command in (lm, logreg, quantize, report, study):
        cli.add_command(command)


_register_subpackage_commands()


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``losslab`` console script: LosslabError → message on stderr, exit status 2."""
    try:
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
