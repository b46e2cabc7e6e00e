"""``losslab quantize``: post-training quantization of a trained classifier, with an accuracy table.

    losslab quantize runs/digits-small_cnn-root-s0 --method gpfq --method gptq --bits 8,4,3 --keep-8bit conv1
    losslab quantize RUN --method gptq --grid sym --group-size 64 --act-order --json r.json --save-packed packed/
    losslab quantize RUN --method gptq --budget 2.5,3,3.5 --bits-choices 2,3,4,8 --sensitivity proxy

One calibration cache serves every (method, bits) point. For each point the command evaluates top-1 accuracy on
the checkpoint's test split, packs the weights (``save_packed``) to report the real file size, and prints::

    method (non-default options)  bits  float top-1  quant top-1  drop  bits/weight  packed KiB  float KiB  kept

(``kept``: the layers kept in float by ``--skip`` or given another method by ``--keep-8bit``/``--override``).
The same rows plus per-layer errors go to ``--json FILE`` (default ``<run>/quantize/<methods>.json``; an
existing file is never replaced without ``--overwrite``; checked before any work, as is ``--save-packed DIR``).
``--budget B`` chooses a width per layer from ``--bits-choices`` under B stored bits per weight
(:mod:`losslab.compress.budget`, docs/budget.md). The command parses its flags, calls one function of
:mod:`losslab.compress` and prints; the method flags are generated from the method configs
(:mod:`losslab.cli.method_options`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from losslab.cli.groups import number_type, shared_option
from losslab.cli.method_options import QuantizeCommand, given_method_options
from losslab.cli.options import progress_mode, progress_option
from losslab.errors import ConfigError
from losslab.quant.bits import BITS_RANGE, parse_bits, parse_override
from losslab.quant.budget import DEFAULT_REFINE, DEFAULT_SENSITIVITY


def budget_options(command: Any) -> Any:
    """The ``--budget`` flags shared by ``quantize`` and ``lm quantize``."""
    for option in reversed(_BUDGET_OPTIONS):
        command = option(command)
    return command


_BUDGET_OPTIONS = [
    click.option(
        "--budget",
        default=None,
        help="Stored bits per quantized weight (scales and zero points included): choose each layer's width from "
        "--bits-choices; a comma list (--budget 2.5,3,3.5) reuses one sensitivity table and draws the Pareto figure.",
    ),
    click.option(
        "--bits-choices",
        default="2,3,4,8",
        show_default=True,
        help="Candidate widths per layer for --budget.",
    ),
    click.option(
        "--sensitivity",
        default=DEFAULT_SENSITIVITY,
        show_default=True,
        help="Per-layer sensitivity for --budget: proxy (output error on calibration inputs), hawq (Hessian trace x "
        "|W-Q|^2), loss (calibration loss increase), fisher (Fisher-weighted |W-Q|^2).",
    ),
    click.option(
        "--solver", default="exact", show_default=True, help="--budget solver: exact (integer program), greedy."
    ),
    click.option(
        "--tie", multiple=True, help="Layer-name pattern(s) ('a,b') whose layers take one width (repeatable)."
    ),
    click.option(
        "--refine",
        type=number_type(int, ge=1, le=10_000),
        default=DEFAULT_REFINE,
        show_default=True,
        help="--budget: plans evaluated per budget by their calibration loss (local search from the knapsack plan; "
        "1: the knapsack plan alone).",
    ),
]


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
@shared_option("calib_samples", "images from the training split", default=256)
@shared_option("calib_batch_size", default=64)
@shared_option("calib_seed", "the training images drawn", default=0)
@click.option("--fold-bn", is_flag=True, help="Fold BatchNorm into the preceding conv before quantizing.")
@click.option("--keep-8bit", "keep_8bit", multiple=True, help="Layer-name pattern kept at 8-bit RTN (repeatable).")
@click.option("--skip", "skip", multiple=True, help="Layer-name pattern kept in float (repeatable).")
@click.option(
    "--act-bits",
    type=number_type(int, ge=2, le=16),
    default=None,
    help="Also fake-quantize activations per tensor (bits).",
)
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, help="Override the run's data folder.")
@click.option("--download", is_flag=True, help="Download the run's dataset if it is missing.")
@shared_option("device", "default: cuda if available, else cpu")
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
@click.option(
    "--override",
    multiple=True,
    help="PATTERN=METHOD:BITS for the layers whose name matches, e.g. 'fc=rtn:8'; first match wins; the method "
    "options apply where the method has them (repeatable).",
)
@budget_options
@click.option(
    "--figure",
    type=click.Path(path_type=Path),
    default=None,
    help="Pareto figure (PNG) of --budget (default: the JSON's name with .png).",
)
@shared_option("overwrite", "the results JSON and packed files", default=False)
@progress_option
def quantize(checkpoint: Path, **opts: Any) -> None:
    """Quantize a trained classifier's weights and compare its accuracy with the float model.

    Method options are the fields of the method configs (one flag each, e.g. --grid sym, --group-size 64,
    --act-order, --incoherence hadamard, --sparsity l1 --lam 0.01); each applies to the methods that have it.
    """
    from losslab.compress.budget import quantize_run_budget
    from losslab.compress.quantize_run import quantize_run

    options = given_method_options(opts)
    settings = quantize_options(opts, build_overrides(opts["override"], opts["keep_8bit"], options))
    if opts["budget"] is None:
        report = quantize_run(checkpoint, build_methods(opts["methods"], parse_bits(opts["bits"]), options), settings)
        click.echo(report["table"])
        click.echo(f"\n{report['protocol']}\nresults: {report['json']}")
        return
    method, budget = budget_request(opts["methods"], opts, options, click.get_current_context())
    report = quantize_run_budget(checkpoint, method, budget, settings, echo=click.echo)
    click.echo(report["text"])
    click.echo(f"\nresults: {report['json']}\nfigure: {report['figure']}")


def quantize_options(opts: dict[str, Any], overrides: dict[str, Any]) -> Any:
    """The :class:`losslab.compress.quantize_run.QuantizeOptions` of the parsed flags."""
    from losslab.compress.quantize_run import QuantizeOptions

    return QuantizeOptions(
        calib_samples=opts["calib_samples"],
        calib_batch_size=opts["calib_batch_size"],
        calib_seed=opts["calib_seed"],
        overrides=overrides,
        skip=list(opts["skip"]),
        fold_bn=opts["fold_bn"],
        act_bits=opts["act_bits"],
        data_dir=opts["data_dir"],
        download=opts["download"] or None,
        device=opts["device"],
        out=opts["json_path"],
        save_packed=opts["save_packed"],
        overwrite=opts["overwrite"],
        progress=progress_mode(opts["progress"]),
    )


def budget_request(
    names: tuple[str, ...], opts: dict[str, Any], options: dict[str, Any], ctx: click.Context
) -> tuple[Any, Any]:
    """(the method, :class:`losslab.compress.budget.BudgetOptions`) of ``--budget``; bad combinations refused."""
    from click.core import ParameterSource

    from losslab.compress.budget import BudgetOptions, check_budget_request
    from losslab.quant.budget import parse_budgets

    if len(names) != 1:
        raise ConfigError("--budget takes one --method (the widths are chosen for that method)")
    choices = parse_bits(opts["bits_choices"], flag="--bits-choices")
    if ctx.get_parameter_source("bits") is not ParameterSource.DEFAULT:
        given = opts["bits"] if isinstance(opts["bits"], str) else ",".join(opts["bits"])
        raise ConfigError(
            f"--budget chooses the widths itself: drop --bits {given} and give the candidates "
            "with --bits-choices, e.g. --bits-choices 2,3,4,8"
        )
    (method,) = build_methods(names, [max(choices)], options)
    budget = BudgetOptions(
        parse_budgets(opts["budget"]),
        choices,
        opts["sensitivity"],
        opts["solver"],
        list(opts["tie"]),
        opts.get("figure"),
        refine=opts["refine"],
    )
    check_budget_request(method, budget)
    return method, budget


def build_overrides(specs: tuple[str, ...], keep_8bit: tuple[str, ...], options: dict[str, Any]) -> dict[str, Any]:
    """``--override PATTERN=METHOD:BITS`` and ``--keep-8bit P`` (= ``P=rtn:8``) as ``{pattern: method}``; the
    method options apply to each override method that has them."""
    from losslab.quant.methods import QUANT_METHODS, method_classes

    overrides: dict[str, Any] = {}
    for pattern, name, bits in [parse_override(t) for t in specs] + [(p, "rtn", 8) for p in keep_8bit]:
        cls = method_classes().get(QUANT_METHODS.resolve(name))
        have = set(getattr(cls, "__dataclass_fields__", {}))
        (overrides[pattern],) = build_methods((name,), [bits], {k: v for k, v in options.items() if k in have})
    return overrides


def build_methods(names: tuple[str, ...], bits: list[int], options: dict[str, Any]) -> list[Any]:
    """One method config per (name, bits); see :func:`losslab.quant.methods.build_methods` (options that are
    ``None`` count as not given)."""
    from losslab.quant.methods import build_methods as build

    return build(names, bits, {k: v for k, v in options.items() if v is not None})
