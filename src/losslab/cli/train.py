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
    progress_option,
    resolve_progress,
    write_json_output,
)
from losslab.errors import ConfigError
from losslab.train.config import TrainConfig

TRAIN_ALIASES = {
    "label_smoothing": ["--smoothing"],
    "sgt_alpha": ["--modify-softmax"],
    "lmbda": ["--lambda"],
    "model": ["--net"],
    "epochs": ["--n-epochs"],
}


@click.command(cls=LosslabCommand, context_settings={"show_default": False})
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
    overrides = given_options(flags)  # the config is checked before the heavy imports below
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
    from losslab.train import fit

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


@click.command(cls=LosslabCommand)
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option(
    "--split", type=click.Choice(["test", "val"]), default="test", show_default=True, help="Which split to evaluate on."
)
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, help="Override the stored data folder.")
@click.option("--device", default=None, help="Torch device, e.g. cpu or cuda:1 [default: cuda if available].")
@json_option("Also write the metrics as JSON to")
@overwrite_option
@progress_option
def evaluate(
    checkpoint: Path,
    split: str,
    data_dir: Path | None,
    device: str | None,
    json_path: Path | None,
    overwrite: bool,
    progress: bool | None,
) -> None:
    """Top-1/top-5 accuracy and cross entropy of a trained classifier (run folder or .ckpt)."""
    if not checkpoint.exists():  # before the heavy imports
        raise ConfigError(f"{str(checkpoint)!r} does not exist; pass a run folder (runs/NAME) or a .ckpt file")
    check_new_output(json_path, overwrite)
    metrics = evaluate_checkpoint(checkpoint, split, data_dir, device=device, progress=resolve_progress(progress))
    if json_path is not None and str(json_path) == "-":
        write_json_output(json_path, metrics, overwrite=overwrite)
        return
    click.echo(
        f"{metrics['dataset']} {split}: top-1 {metrics['top1']:.2f}%  top-5 {metrics['top5']:.2f}%  "
        f"CE {metrics['ce']:.4f}  (n={metrics['n']}, checkpoint {metrics['checkpoint']})"
    )
    if json_path is not None:
        click.echo(f"metrics: {write_json_output(json_path, metrics, overwrite=overwrite)}")


def evaluate_checkpoint(
    checkpoint: Path,
    split: str = "test",
    data_dir: Path | None = None,
    *,
    device: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Load a run and evaluate it on ``split``; the dict also names the dataset and checkpoint."""
    import torch

    from losslab.train import evaluate_model, load_run
    from losslab.train.build import make_loaders

    run = load_run(checkpoint)
    cfg = run.config if data_dir is None else run.config.model_copy(update={"data_dir": data_dir})
    loaders = make_loaders(cfg)
    loader = loaders.test if split == "test" else loaders.val
    if progress:
        from tqdm.auto import tqdm

        loader = tqdm(loader, desc=f"evaluate {split}", unit="batch", leave=False)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    metrics = evaluate_model(run.model.to(device), loader, device)
    return {**metrics, "dataset": cfg.dataset, "split": split, "checkpoint": str(run.checkpoint)}
