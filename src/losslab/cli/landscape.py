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

from losslab.cli.options import given_options, json_option, options_from_model, progress_option, resolve_progress
from losslab.landscape.options import LandscapeOptions


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
@options_from_model(LandscapeOptions, flags={"probe_loss": "--loss"})
@json_option("Also write the result JSON to")
@progress_option
def landscape(run: Path, json_path: Path | None, progress: bool | None, **flags: Any) -> None:
    """Probe the loss landscape of a trained classifier run (top eigenvalues, trace, density, sharpness, ...)."""
    from losslab.cli.options import check_new_output, write_json_output
    from losslab.landscape import ProbeSettings, parse_probes
    from losslab.landscape.probes import DEFAULT_PROBES
    from losslab.landscape.run import probe_run

    opts = LandscapeOptions(**given_options(flags))
    settings = ProbeSettings(
        probes=DEFAULT_PROBES if opts.probes is None else parse_probes(opts.probes),
        top_k=opts.top_k,
        smallest=opts.smallest,
        seed=opts.seed,
        rho=opts.rho,
        adaptive_rho=opts.adaptive_rho,
    )
    n = parse_samples(opts.samples)
    if json_path is not None:
        check_new_output(json_path, opts.overwrite)
    result = probe_run(
        run,
        settings,
        samples=n,
        split=opts.split,
        loss=opts.probe_loss,
        layer=opts.layer,
        batch_size=opts.batch_size,
        device=opts.device,
        overwrite=opts.overwrite,
        progress=resolve_progress(progress),
        write=opts.save,
        graph_budget=int(opts.graph_budget_gib * 2**30),
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
