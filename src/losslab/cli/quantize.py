"""``losslab quantize``: post-training quantization of a trained classifier, with an accuracy table.

    losslab quantize runs/digits-small_cnn-root-s0 --method gpfq --method gptq --bits 8,4,3 --keep-8bit conv1
    losslab quantize RUN --method gptq --grid sym --group-size 64 --act-order --json r.json --save-packed packed/

One calibration cache serves every (method, bits) point. For each point the command evaluates top-1 accuracy on
the checkpoint's test split, packs the weights (``save_packed``) to report the real file size, and prints::

    method (with its non-default options)  bits  float top-1  quant top-1  drop  bits/weight  packed KiB  float KiB

The same rows plus per-layer errors go to ``--json FILE`` (default ``<run>/quantize/<methods>.json``; an
existing file is never replaced without ``--overwrite``; checked before any work, as is ``--save-packed DIR``).
The method flags are generated from the method configs (:mod:`losslab.cli.method_options`); the run is loaded,
calibrated and evaluated by :class:`losslab.quant.trained_run.TrainedRun` with the run's data settings.
Accuracy is measured on fake-quantized weights (dequantized floats written back); the packed file is checked to
rebuild the same weights.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import click

from losslab.cli.method_options import QuantizeCommand, check_output, given_method_options
from losslab.cli.options import progress_mode, progress_option
from losslab.errors import ConfigError
from losslab.quant.bits import BITS_RANGE, parse_bits


def float_size_bytes(model: Any) -> int:
    """Bytes of the model's parameters and buffers as stored (fp32 for a trained classifier)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


@click.command(cls=QuantizeCommand)
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option(
    "--method",
    "methods",
    multiple=True,
    default=("gpfq",),
    show_default=True,
    help="rtn, pwlq, gpfq, gptq, ldlq (repeat for several).",
)
@click.option(
    "--bits",
    "bits",
    multiple=True,
    default=("4",),
    show_default=True,
    help=f"Weight bit width(s) {BITS_RANGE[0]}..{BITS_RANGE[1]}: comma-separate or repeat (--bits 8,4,3); "
    "one calibration pass.",
)
@click.option("--calib-samples", type=click.IntRange(min=1), default=256, show_default=True, help="Calibration images.")
@click.option(
    "--calib-batch-size", type=click.IntRange(min=1), default=64, show_default=True, help="Calibration batch size."
)
@click.option("--calib-seed", type=int, default=0, show_default=True, help="Seed of the calibration subset.")
@click.option("--fold-bn", is_flag=True, help="Fold BatchNorm into the preceding conv before quantizing.")
@click.option("--keep-8bit", "keep_8bit", multiple=True, help="Layer-name pattern kept at 8-bit RTN (repeatable).")
@click.option("--skip", "skip", multiple=True, help="Layer-name pattern kept in float (repeatable).")
@click.option("--act-bits", type=int, default=None, help="Also fake-quantize activations per tensor (bits).")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, help="Override the run's data folder.")
@click.option("--download", is_flag=True, help="Download the run's dataset if it is missing.")
@click.option("--device", default=None, help="Torch device (default cuda if available, else cpu).")
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path),
    default=None,
    help="JSON file for the results (default <run>/quantize/<methods>.json).",
)
@click.option(
    "--save-packed",
    type=click.Path(path_type=Path),
    default=None,
    help="Keep the packed safetensors files in this folder (else measured in a temporary folder).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing results JSON / packed files.")
@progress_option
def quantize(
    checkpoint: Path,
    methods: tuple[str, ...],
    bits: tuple[str, ...],
    calib_samples: int,
    calib_batch_size: int,
    calib_seed: int,
    fold_bn: bool,
    keep_8bit: tuple[str, ...],
    skip: tuple[str, ...],
    act_bits: int | None,
    data_dir: Path | None,
    download: bool,
    device: str | None,
    json_path: Path | None,
    save_packed: Path | None,
    overwrite: bool,
    progress: bool | None,
    **method_flags: Any,
) -> None:
    """Quantize a trained classifier's weights and compare its accuracy with the float model.

    Method options are the fields of the method configs (one flag each, e.g. --grid sym, --group-size 64,
    --act-order, --incoherence hadamard, --sparsity l1 --lam 0.01); each applies to the methods that have it.
    """
    from losslab.quant import RTN
    from losslab.quant.methods import build_methods

    options = given_method_options(method_flags)
    method_list = build_methods(methods, parse_bits(bits), options)
    overrides = {pattern: RTN(bits=8) for pattern in keep_8bit}
    report = quantize_checkpoint(
        checkpoint,
        method_list,
        calib_samples=calib_samples,
        calib_batch_size=calib_batch_size,
        calib_seed=calib_seed,
        overrides=overrides,
        skip=list(skip),
        fold_bn=fold_bn,
        act_bits=act_bits,
        data_dir=data_dir,
        download=download or None,
        device=device,
        out=json_path,
        save_packed=save_packed,
        overwrite=overwrite,
        progress=progress_mode(progress),
    )
    click.echo(report["table"])
    click.echo(f"\n{report['protocol']}\nresults: {report['json']}")


def method_label(method: Any) -> str:
    """The method name with its non-default options, without ``bits`` (``gpfq sparsity=l1 lam=0.01``)."""
    from dataclasses import fields

    parts = [method.name]
    for f in fields(method):
        value = getattr(method, f.name)
        if f.name != "bits" and value != f.default:
            parts.append(f"{f.name}={value}")
    return " ".join(parts)


def quantize_checkpoint(
    checkpoint: Path,
    methods: list[Any],
    *,
    calib_samples: int = 256,
    calib_batch_size: int = 64,
    calib_seed: int = 0,
    overrides: dict[str, Any] | None = None,
    skip: list[str] | None = None,
    fold_bn: bool = False,
    act_bits: int | None = None,
    data_dir: Path | None = None,
    download: bool | None = None,
    device: str | None = None,
    out: Path | None = None,
    save_packed: Path | None = None,
    overwrite: bool = False,
    progress: bool | str = False,
) -> dict[str, Any]:
    """Quantize ``checkpoint`` with every method config, evaluate each, write the JSON; returns the report dict.

    The run's data settings (img_size, data_dir, download, val_fraction) apply to calibration and evaluation
    (:class:`losslab.quant.trained_run.TrainedRun`); the output paths are checked before any work.
    """
    from losslab.io import write_json_atomic
    from losslab.quant import load_packed
    from losslab.quant import save_packed as write_packed
    from losslab.quant.trained_run import CalibrationSettings, TrainedRun
    from losslab.tables import format_table

    run = TrainedRun.load(checkpoint, data_dir=data_dir, download=download, device=device)
    run_dir = run.run_dir
    out = out or run_dir / "quantize" / ("-".join(dict.fromkeys(m.name for m in methods)) + ".json")
    check_output(out, overwrite=overwrite, what="results JSON", flag="--json")
    check_output(save_packed, overwrite=overwrite, what="packed files", flag="--save-packed", folder=True)
    names = [f"{run_dir.name}.{m.name}.{m.bits}bit.safetensors" for m in methods]
    if save_packed is not None and not overwrite:
        taken = [n for n in names if (save_packed / n).exists()]
        if taken:
            raise ConfigError(f"{', '.join(taken)} already exist in {str(save_packed)!r}; pass --overwrite")
    cfg = run.cfg
    calib = run.calibration_loader(CalibrationSettings(calib_samples, calib_batch_size, calib_seed))
    float_metrics = run.float_metrics
    rows, records = [], []
    points = run.quantize(
        [methods],
        calib,
        overrides=overrides,
        skip=skip,
        fold_bn=fold_bn,
        act_bits=act_bits,
        seed=calib_seed,
        calib_seed=calib_seed,
        progress=progress,
    )
    with tempfile.TemporaryDirectory() as tmp:
        pack_dir = save_packed or Path(tmp)
        for point, name in zip(points, names):
            method, result, metrics = point.method, point.result, point.metrics
            path = pack_dir / name
            size = write_packed(result, path, model_recipe=getattr(run.model, "losslab_recipe", None))
            reloaded = load_packed(path, model=run.model)
            packed_ok = _same_weights(reloaded, result.model)
            summary = result.summary()
            drop = float_metrics["top1"] - metrics["top1"]
            rows.append(
                [
                    method_label(method),
                    method.bits,
                    float_metrics["top1"],
                    metrics["top1"],
                    drop,
                    summary["avg_bits_per_weight"],
                    size / 1024,
                    float_size_bytes(run.model) / 1024,
                ]
            )
            records.append(
                {
                    "method": method.describe(),
                    "bits": method.bits,
                    "quant_top1": metrics["top1"],
                    "quant_top5": metrics["top5"],
                    "quant_ce": metrics["ce"],
                    "drop": drop,
                    "packed_bytes": size,
                    "packed_matches_fake": packed_ok,
                    "packed_file": str(path) if save_packed else None,
                    **result.to_dict(),
                }
            )
    headers = ["method", "bits", "float top-1", "quant top-1", "drop", "bits/weight", "packed KiB", "float KiB"]
    shape = "x".join(str(d) for d in next(iter(calib))[0].shape[1:])
    protocol = (
        f"top-1 accuracy (%) on the {cfg.dataset} test split ({float_metrics['n']} images, {shape}); weights "
        f"fake-quantized (dequantized floats), activations {f'{act_bits}-bit' if act_bits else 'float'}; "
        f"calibration: {calib_samples} training images, seed {calib_seed}; packed KiB = real safetensors "
        "file size (codes + scales + float layers)"
    )
    table = format_table(headers, rows)
    write_json_atomic(
        out, {"checkpoint": str(run.checkpoint), "float": float_metrics, "protocol": protocol, "results": records}
    )
    return {"table": table, "rows": rows, "protocol": protocol, "json": str(out), "float": float_metrics}


def _same_weights(a: Any, b: Any) -> bool:
    """Whether two models hold bit-identical parameters."""
    import torch

    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def build_methods(names: tuple[str, ...], bits: list[int], options: dict[str, Any]) -> list[Any]:
    """One method config per (name, bits); see :func:`losslab.quant.methods.build_methods` (options that are
    ``None`` count as not given)."""
    from losslab.quant.methods import build_methods as build

    return build(names, bits, {k: v for k, v in options.items() if v is not None})
