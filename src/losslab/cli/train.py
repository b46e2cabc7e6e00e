"""``losslab train`` and ``losslab evaluate``: train an image classifier, measure a trained one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from losslab.cli.options import (
    LosslabCommand,
    check_new_output,
    given_options,
    json_option,
    options_from_model,
    overwrite_option,
    pop_options,
    progress_option,
    report_with_json,
    resolve_progress,
    typed_flags,
)
from losslab.compress.evaluate_run import EvaluateConfig, evaluate_run
from losslab.train.config import TrainCommandOptions, TrainConfig

TRAIN_ALIASES = {
    "label_smoothing": ["--smoothing"],
    "sgt_alpha": ["--modify-softmax"],
    "lmbda": ["--lambda"],
    "model": ["--net"],
    "epochs": ["--n-epochs"],
    # timm train.py spellings (Softmax Gradient Tampering's recipe is a timm command line)
    "scheduler": ["--sched"],
    "data_dir": ["--data_dir"],
    "gradient_clip": ["--clip-grad"],
}


#: The SGT fork's own parser defaults that losslab's differ from (bishshoy/softmax-gradient-tampering parser.py:
#: ``--warmup-lr`` 0.01, ``--min-lr`` 1e-4, ``--opt sgd``, which timm's optimizer factory builds as Nesterov SGD);
#: they apply when its recipe is pasted (``--modify-softmax`` spelled as the fork spells it) and the key is not given.
SGT_PARSER_DEFAULTS: dict[str, Any] = {"warmup_lr": 0.01, "min_lr": 1e-4, "optimizer": "nesterov"}


def timm_recipe_overrides(
    overrides: dict[str, Any],
    file_values: dict[str, Any],
    amp: bool,
    amp_dtype: str | None,
    spellings: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """``overrides`` with timm's recipe flags turned into config keys.

    ``--amp`` is ``precision=16-mixed`` (``bf16-mixed`` with ``--amp-dtype bfloat16``), as timm's autocast dtype;
    SGT's ``--modify-softmax A`` (``sgt_alpha``) selects the SGT objective when no loss is named anywhere, as in the
    SGT fork of timm where that flag alone turns tampering on, and brings the fork's :data:`SGT_PARSER_DEFAULTS`
    for the keys not given. ``spellings`` are the flags as typed. A data folder is never ignored: without a data
    set named anywhere, the folder's layout picks it (:func:`losslab.data.layout.dataset_in_folder`); a data set
    that reads no folder (digits, fake) with a folder is an error.
    """
    from losslab.errors import ConfigError

    out = dict(overrides)
    if amp_dtype is not None and not amp:
        raise ConfigError("--amp-dtype only applies with --amp (timm); add --amp or use --precision")
    if amp:
        precision = "bf16-mixed" if amp_dtype == "bfloat16" else "16-mixed"
        if out.get("precision", precision) != precision:
            raise ConfigError(f"--amp means --precision {precision} but --precision {out['precision']} was given")
        out["precision"] = precision
    if "sgt_alpha" in out and "loss" not in out and "loss" not in file_values:
        out["loss"] = "sgt"
    if "resume" not in out:
        _pick_dataset_from_folder(out, file_values)
    if "--modify-softmax" in spellings:
        taken = {k: v for k, v in SGT_PARSER_DEFAULTS.items() if k not in out and k not in file_values}
        out.update(taken)
        if taken:
            flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in taken.items())
            click.echo(f"note: --modify-softmax: the SGT fork's own defaults apply: {flags}", err=True)
    return out


def _pick_dataset_from_folder(out: dict[str, Any], file_values: dict[str, Any]) -> None:
    """Set ``out['dataset']`` from the data folder's layout when no data set is named; refuse an ignored folder."""
    data_dir = out.get("data_dir", file_values.get("data_dir"))
    if data_dir is None:
        return
    from losslab.data.layout import check_folder_use, dataset_in_folder  # imports torch: only with a folder

    dataset = out.get("dataset", file_values.get("dataset"))
    if dataset is not None:
        check_folder_use(str(dataset), Path(data_dir))
        return
    found = out["dataset"] = dataset_in_folder(Path(data_dir))
    click.echo(f"note: data folder {data_dir} holds {found!r}: training on --dataset {found}", err=True)


@click.command(cls=LosslabCommand, context_settings={"show_default": False})
@options_from_model(TrainCommandOptions, flags={"validate_checkpoint": "--validate"})
@click.argument("data_folder", required=False, type=click.Path(path_type=Path), metavar="[DATA_DIR]")
@options_from_model(TrainConfig, aliases=TRAIN_ALIASES)
def train(data_folder: Path | None, **flags: Any) -> None:
    """Train an image classifier. With no arguments: the rooted loss on the bundled digits data (~20 s on 2 CPU cores).

    Writes a run folder (config, metrics CSV, last/best checkpoints, result.json); --resume RUN continues a
    killed run. DATA_DIR (timm's positional data folder) is the same as --data-dir; without --dataset the
    folder's layout picks the data set (train/<class>/ + val/<class>/ is imagenet).
    """
    from losslab.train.config import is_timm_checkpoint, read_yaml_mapping

    opts = pop_options(TrainCommandOptions, flags)
    file_values = read_yaml_mapping(opts.config) if opts.config is not None else {}
    given = given_options(flags)
    if data_folder is not None:
        if given.get("data_dir", data_folder) != data_folder:
            raise click.UsageError(f"DATA_DIR {data_folder} and --data-dir {given['data_dir']} differ: give one")
        given["data_dir"] = data_folder
    # the config is checked before the heavy imports below
    overrides = timm_recipe_overrides(given, file_values, opts.amp, opts.amp_dtype, typed_flags())
    if opts.dali:
        click.echo("note: --dali is ignored; losslab chooses its own input pipeline", err=True)
    if opts.validate_checkpoint:
        if overrides.get("resume") is None:
            raise click.UsageError("--validate evaluates a trained run: give it with --resume RUN_OR_CKPT")
        from losslab.compress.evaluate_run import evaluate_checkpoint

        timm_file = is_timm_checkpoint(overrides["resume"])  # a losslab run knows its model and data itself
        metrics = evaluate_checkpoint(
            Path(overrides["resume"]),
            "test",
            overrides.get("data_dir"),
            **{k: overrides.get(k) for k in ("model", "dataset", "img_size") if timm_file},
        )
        _print_metrics(metrics)
        return
    if overrides.get("resume") is not None and is_timm_checkpoint(overrides["resume"]):
        # timm's --resume file: its weights start this run; its optimizer state and epoch do not carry over
        overrides["initial_checkpoint"] = overrides.pop("resume")
        click.echo(
            f"note: {overrides['initial_checkpoint']} is a timm checkpoint: training starts from its weights "
            "(as --initial-checkpoint); its optimizer state and epoch count are not carried over",
            err=True,
        )
    if opts.config is not None:
        cfg = TrainConfig.from_yaml(opts.config, overrides)
    elif overrides.get("resume") is not None:
        cfg = _resume_config(overrides)
    else:
        cfg = TrainConfig.build(overrides)
    if opts.print_config:
        import yaml

        click.echo(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return
    from losslab.runs import is_child_rank
    from losslab.train import fit

    result = fit(cfg)
    if is_child_rank():  # torchrun: rank 0 reports
        return
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


@click.command(cls=LosslabCommand)
@click.argument("checkpoint", type=click.Path(path_type=Path))
@options_from_model(EvaluateConfig, exclude={"checkpoint", "progress"})
@json_option("Also write the metrics as JSON to")
@overwrite_option
@progress_option
def evaluate(checkpoint: Path, json_path: Path | None, overwrite: bool, progress: bool | None, **flags: Any) -> None:
    """Top-1/top-5 accuracy and cross entropy of a trained classifier: a losslab run folder or .ckpt, a packed
    .safetensors file of `losslab quantize --save-packed` (dataset and input size from the file), or a timm
    checkpoint (.pth.tar of timm's train.py, with --dataset)."""
    cfg = EvaluateConfig(checkpoint=checkpoint, progress=resolve_progress(progress), **given_options(flags))
    check_new_output(json_path, overwrite)
    metrics = evaluate_run(cfg)
    report_with_json(json_path, metrics, overwrite=overwrite, show=lambda: _print_metrics(metrics), label="metrics")


def _print_metrics(metrics: dict[str, Any]) -> None:
    click.echo(
        f"{metrics['dataset']} {metrics['split']}: top-1 {metrics['top1']:.2f}%  top-5 {metrics['top5']:.2f}%  "
        f"CE {metrics['ce']:.4f}  (n={metrics['n']}, checkpoint {metrics['checkpoint']})"
    )
