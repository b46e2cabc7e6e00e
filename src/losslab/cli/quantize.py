"""``losslab quantize``: post-training quantization of a trained classifier, with an accuracy table.

    losslab quantize runs/digits-small_cnn-root-s0 --method gpfq --method gptq --bits 8,4,3 --keep-8bit conv1

One calibration cache serves every (method, bits) point. For each point the command evaluates top-1 accuracy on
the checkpoint's test split, packs the weights (``save_packed``) to report the real file size, and prints::

    method  bits  float top-1  quant top-1  drop  bits/weight  packed KiB  float KiB

The same rows plus per-layer errors go to a JSON file (default ``<run>/quantize/<methods>.json``; an existing
file is never replaced without ``--overwrite``). Accuracy is measured on fake-quantized weights (dequantized
floats written back); the packed file is checked to rebuild the same weights.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import click

from losslab.errors import ConfigError

METHOD_OPTIONS = {
    "scalar": {"gpfq"},
    "sparsity": {"gpfq"},
    "lam": {"gpfq"},
    "scheme": {"pwlq"},
    "act_order": {"gptq", "ldlq"},
    "group_size": {"rtn", "gptq"},
    "grid": {"rtn", "gptq", "ldlq"},
    "incoherence": {"gptq", "ldlq"},
    "clip": {"rtn", "gptq"},
    "breakpoint": {"pwlq"},
}


def parse_bits(values: tuple[str, ...]) -> list[int]:
    """``("8,4", "3")`` -> [8, 4, 3]; each must be an integer 2..8."""
    bits: list[int] = []
    for value in values:
        for part in value.split(","):
            if not part.strip():
                continue
            try:
                b = int(part)
            except ValueError:
                raise ConfigError(f"--bits {part!r} is not an integer; give bit widths like --bits 8,4,3") from None
            if not 2 <= b <= 8:
                raise ConfigError(f"--bits {b} is out of range: allowed 2 <= bits <= 8")
            bits.append(b)
    if not bits:
        raise ConfigError("--bits is empty; give at least one bit width, e.g. --bits 4")
    return bits


def build_methods(names: tuple[str, ...], bits: list[int], options: dict[str, Any]) -> list[Any]:
    """One method config per (name, bits), each receiving only the options that apply to it."""
    from losslab.quant import QUANT_METHODS, method_from_name

    canonical = [QUANT_METHODS.resolve(n) for n in names]
    for key, value in options.items():
        if value is not None and not METHOD_OPTIONS[key] & set(canonical):
            raise ConfigError(
                f"--{key.replace('_', '-')} applies to {', '.join(sorted(METHOD_OPTIONS[key]))}, "
                f"not to the chosen method(s) {', '.join(canonical)}"
            )
    methods = []
    for name in canonical:
        kwargs = {k: v for k, v in options.items() if v is not None and name in METHOD_OPTIONS[k]}
        methods.extend(method_from_name(name, bits=b, **kwargs) for b in bits)
    return methods


def float_size_bytes(model: Any) -> int:
    """Bytes of the model's parameters and buffers as stored (fp32 for a trained classifier)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


@click.command()
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
    help="Weight bit width(s) 2..8: repeat or comma-separate (--bits 8,4,3); one calibration pass.",
)
@click.option("--scalar", type=float, default=None, help="GPFQ radius scalar C (default 1.16, ResNet-18's).")
@click.option(
    "--sparsity",
    type=click.Choice(["l1", "l0"]),
    default=None,
    help="Sparse GPFQ: l1 soft-thresholds the argument of the quantizer by --lam; l0 zeroes |argument| <= --lam "
    "and uses levels {0} U ±(lam + j·delta), delta = (C·rad − lam)/K.",
)
@click.option(
    "--lam", type=float, default=None, help="Sparse GPFQ threshold lambda in weight units (needs --sparsity)."
)
@click.option("--calib-samples", type=int, default=256, show_default=True, help="Calibration images.")
@click.option("--calib-batch-size", type=int, default=64, show_default=True, help="Calibration batch size.")
@click.option("--calib-seed", type=int, default=0, show_default=True, help="Seed of the calibration subset.")
@click.option("--group-size", type=int, default=None, help="Columns per scale group (rtn, gptq); default per row.")
@click.option("--act-order/--no-act-order", default=None, help="GPTQ/LDLQ: columns by decreasing Hessian diagonal.")
@click.option(
    "--grid",
    type=click.Choice(["asym", "sym", "narrow"]),
    default=None,
    help="Uniform grid for rtn/gptq/ldlq (default asym).",
)
@click.option(
    "--clip",
    type=click.Choice(["max", "mse", "percentile"]),
    default=None,
    help="Range choice for rtn/gptq grids (default max).",
)
@click.option(
    "--breakpoint",
    type=click.Choice(["gaussian", "laplace", "search"]),
    default=None,
    help="PWLQ breakpoint rule (default gaussian).",
)
@click.option(
    "--scheme",
    type=click.Choice(["pw2", "pw1"]),
    default=None,
    help="PWLQ scheme: pw2 (non-overlapping, default) or pw1 (overlapping, worse; reproduction only).",
)
@click.option(
    "--incoherence",
    type=click.Choice(["hadamard", "kron", "butterfly"]),
    default=None,
    help="QuIP incoherence processing around gptq/ldlq.",
)
@click.option("--fold-bn", is_flag=True, help="Fold BatchNorm into the preceding conv before quantizing.")
@click.option("--keep-8bit", "keep_8bit", multiple=True, help="Layer-name pattern kept at 8-bit RTN (repeatable).")
@click.option("--skip", "skip", multiple=True, help="Layer-name pattern kept in float (repeatable).")
@click.option("--act-bits", type=int, default=None, help="Also fake-quantize activations per tensor (bits).")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, help="Override the stored data folder.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="JSON file for the results.")
@click.option(
    "--save-packed",
    type=click.Path(path_type=Path),
    default=None,
    help="Keep the packed safetensors files in this folder (else measured in a temporary folder).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing results JSON.")
def quantize(
    checkpoint: Path,
    methods: tuple[str, ...],
    bits: tuple[str, ...],
    scalar: float | None,
    sparsity: str | None,
    lam: float | None,
    calib_samples: int,
    calib_batch_size: int,
    calib_seed: int,
    group_size: int | None,
    act_order: bool | None,
    grid: str | None,
    clip: str | None,
    breakpoint: str | None,
    scheme: str | None,
    incoherence: str | None,
    fold_bn: bool,
    keep_8bit: tuple[str, ...],
    skip: tuple[str, ...],
    act_bits: int | None,
    data_dir: Path | None,
    out: Path | None,
    save_packed: Path | None,
    overwrite: bool,
) -> None:
    """Quantize a trained classifier's weights and compare its accuracy with the float model."""
    from losslab.quant import RTN

    options = {
        "scalar": scalar,
        "sparsity": sparsity,
        "lam": lam,
        "scheme": scheme,
        "act_order": act_order,
        "group_size": group_size,
        "grid": grid,
        "incoherence": incoherence,
        "clip": clip,
        "breakpoint": breakpoint,
    }
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
        out=out,
        save_packed=save_packed,
        overwrite=overwrite,
    )
    click.echo(report["table"])
    click.echo(f"\n{report['protocol']}\nresults: {report['json']}")


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
    out: Path | None = None,
    save_packed: Path | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Quantize ``checkpoint`` with every method config, evaluate each, write the JSON; returns the report dict."""
    from losslab.data import calibration_loader
    from losslab.io import write_json_atomic
    from losslab.quant import load_packed, quantize_many
    from losslab.quant import save_packed as write_packed
    from losslab.tables import format_table
    from losslab.train import evaluate_model, load_run
    from losslab.train.build import make_loaders

    run = load_run(checkpoint)
    cfg = run.config if data_dir is None else run.config.model_copy(update={"data_dir": data_dir})
    run_dir = run.checkpoint.parent.parent
    out = out or run_dir / "quantize" / ("-".join(dict.fromkeys(m.name for m in methods)) + ".json")
    if out.exists() and not overwrite:
        raise ConfigError(f"{str(out)!r} already exists; pass --out NEW.json or --overwrite to replace it")
    test_loader = make_loaders(cfg).test
    calib = calibration_loader(
        cfg.dataset,
        calib_samples,
        batch_size=calib_batch_size,
        seed=calib_seed,
        data_dir=cfg.data_dir,
        val_fraction=cfg.val_fraction,
    )
    float_metrics = evaluate_model(run.model, test_loader)
    results = quantize_many(
        run.model,
        methods,
        calib,
        overrides=overrides,
        skip=skip,
        fold_bn=fold_bn,
        act_bits=act_bits,
        seed=calib_seed,
        progress=sys.stderr.isatty(),
    )
    rows, records = [], []
    with tempfile.TemporaryDirectory() as tmp:
        pack_dir = save_packed or Path(tmp)
        for method, result in zip(methods, results):
            metrics = evaluate_model(result.model, test_loader)
            path = pack_dir / f"{run_dir.name}.{method.name}.{method.bits}bit.safetensors"
            size = write_packed(result, path, model_recipe=getattr(run.model, "losslab_recipe", None))
            reloaded = load_packed(path, model=run.model)
            packed_ok = _same_weights(reloaded, result.model)
            summary = result.summary()
            drop = float_metrics["top1"] - metrics["top1"]
            rows.append(
                [
                    method.name,
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
    protocol = (
        f"top-1 accuracy (%) on the {cfg.dataset} test split ({float_metrics['n']} images); weights "
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
