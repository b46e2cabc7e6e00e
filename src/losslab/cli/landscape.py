"""``losslab landscape RUN``: Hessian spectrum, trace, density, per-layer curvature, sharpness, weight shape and
loss-surface pictures of a trained classifier run (docs/landscape.md)::

    losslab landscape runs/digits-small_cnn-ce-s0                        # all probes but layers, 2,048 images
    losslab landscape RUN --probes eig,trace --top-k 5 --loss ce --samples all

Prints a table; writes ``landscape.json`` and ``landscape/*.png`` into the run folder (atomically) and reuses a
stored result computed with the same settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from losslab.cli.groups import number_type, shared_option
from losslab.cli.options import json_option, overwrite_option, progress_option, resolve_progress


def parse_samples(value: str | None) -> int | str | None:
    """``--samples``: a positive count, ``all``, or None (default)."""
    from losslab.errors import ConfigError

    if value is None or value == "all":
        return value
    try:
        n = int(value)
    except ValueError:
        raise ConfigError(f"--samples {value!r}: pass a positive number of images or all") from None
    if n <= 0:
        raise ConfigError(f"--samples {n}: pass a positive number of images (at most the split's size) or all")
    return n


@click.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.option(
    "--probes",
    default=None,
    help="Comma-separated: eig,trace,density,layers,sharpness,surface,kurtosis, or all [default: all but layers].",
)
@click.option(
    "--top-k", type=number_type(int, ge=1), default=3, show_default=True, help="How many top eigenvalues (Lanczos)."
)
@click.option("--smallest", is_flag=True, help="Also the top-k smallest (most negative) eigenvalues.")
@click.option("--samples", default=None, help="Probe-set images: N or all [default: 2048, or the whole split].")
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="train", show_default=True)
@click.option(
    "--loss",
    type=click.Choice(["run", "ce"]),
    default="run",
    show_default=True,
    help="run: the run's training objective; ce: plain cross entropy (compare objectives).",
)
@click.option("--layer", default=None, help="Probe only parameters whose name contains this (default: all).")
@shared_option("seed", "of the probe set and of every probe", default=0)
@click.option("--rho", type=number_type(float, gt=0), default=0.05, show_default=True, help="Sharpness radius (plain).")
@click.option(
    "--adaptive-rho", type=number_type(float, gt=0), default=0.5, show_default=True, help="Sharpness radius (adaptive)."
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    help="Batch size of the passes (the answer does not depend on it).",
)
@shared_option("device", "default: cuda if available")
@json_option("Also write the result JSON to")
@click.option("--no-save", is_flag=True, help="Do not write landscape.json and figures into the run folder.")
@overwrite_option
@progress_option
def landscape(
    run: Path,
    probes: str,
    top_k: int,
    smallest: bool,
    samples: str | None,
    split: str,
    loss: str,
    layer: str | None,
    seed: int,
    rho: float,
    adaptive_rho: float,
    batch_size: int,
    device: str | None,
    json_path: Path | None,
    no_save: bool,
    overwrite: bool,
    progress: bool | None,
) -> None:
    """Probe the loss landscape of a trained classifier run (top eigenvalues, trace, density, sharpness, ...)."""
    from losslab.cli.options import check_new_output, write_json_output
    from losslab.landscape import ProbeSettings, parse_probes
    from losslab.landscape.probes import DEFAULT_PROBES
    from losslab.landscape.run import probe_run

    settings = ProbeSettings(
        probes=DEFAULT_PROBES if probes is None else parse_probes(probes),
        top_k=top_k,
        smallest=smallest,
        seed=seed,
        rho=rho,
        adaptive_rho=adaptive_rho,
    )
    n = parse_samples(samples)
    if json_path is not None:
        check_new_output(json_path, overwrite)
    result = probe_run(
        run,
        settings,
        samples=n,
        split=split,
        loss=loss,
        layer=layer,
        batch_size=batch_size,
        device=device,
        overwrite=overwrite,
        progress=resolve_progress(progress),
        write=not no_save,
    )
    click.echo(summary_table(result))
    if json_path is not None:
        write_json_output(json_path, result, overwrite=True)
    if "json" in result:
        click.echo(f"results: {result['json']}" + "".join(f"\nfigure: {f}" for f in result.get("figures", [])))


def summary_table(result: dict[str, Any]) -> str:
    """The headline numbers of a landscape result as a two-column table."""
    from losslab.tables import format_table

    rows: list[list[Any]] = [
        ["samples", f"{result['samples']} ({result['split']}, loss {result['loss']})"],
        ["loss at θ", f"{result['base_loss']:.5g}"],
        ["parameters", result["parameters"]],
    ]
    if "eigenvalues" in result:
        for i, (lam, res) in enumerate(zip(result["eigenvalues"], result["eigen_residuals"]), 1):
            rows.append([f"eigenvalue {i}", f"{lam:.6g}  (residual {res:.2g})"])
    for i, lam in enumerate(result.get("smallest_eigenvalues", []), 1):
        rows.append([f"smallest {i}", f"{lam:.6g}"])
    if "trace" in result:
        rows.append(["trace (Hutch++)", f"{result['trace']:.6g} ± {result['trace_stderr']:.2g}"])
    if "density" in result:
        m = result["density"]["moments"]
        rows.append(["mean eigenvalue (SLQ)", f"{m[0]:.4g}"])
    if "layers" in result:
        top = max(result["layers"].items(), key=lambda kv: kv[1]["trace_per_param"])
        rows.append(["sharpest layer (trace/param)", f"{top[0]} ({top[1]['trace_per_param']:.4g})"])
    for key, value in result.get("sharpness", {}).items():
        if "rho" not in key:
            rows.append([f"sharpness {key.replace('_', ' ')}", f"{value:.4g}"])
    if "weights" in result:
        w = result["weights"]
        rows.append(["weight kurtosis (mean)", f"{w.get('weights/kurtosis_mean', float('nan')):.4g}"])
        rows.append(["max|w|/std (mean)", f"{w.get('weights/max_over_std_mean', float('nan')):.4g}"])
    return format_table(["probe", "value"], rows, align="ll")
