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
:mod:`losslab.compress` and prints; its flags are generated from :class:`losslab.compress.flags.QuantizeFlags` and
the method flags from the method configs (:mod:`losslab.cli.method_options`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from losslab.cli.method_options import QuantizeCommand, given_method_options
from losslab.cli.options import given_options, options_from_model, progress_mode, progress_option
from losslab.compress.flags import BudgetFlags, QuantizeFlags
from losslab.errors import ConfigError
from losslab.quant.bits import parse_bits, parse_override


def budget_options(command: Any) -> Any:
    """The ``--budget`` flags shared by ``quantize`` and ``lm quantize`` (the fields of :class:`BudgetFlags`)."""
    return options_from_model(BudgetFlags)(command)


@click.command(cls=QuantizeCommand)
@click.argument("checkpoint", type=click.Path(path_type=Path))
@options_from_model(QuantizeFlags, flags={"json_path": "--json"})
@budget_options
@progress_option
def quantize(checkpoint: Path, progress: bool | None, **opts: Any) -> None:
    """Quantize a trained classifier's weights and compare its accuracy with the float model.

    Method options are the fields of the method configs (one flag each, e.g. --grid sym, --group-size 64,
    --act-order, --incoherence hadamard, --sparsity l1 --lam 0.01); each applies to the methods that have it.
    """
    from losslab.compress.budget import quantize_run_budget
    from losslab.compress.quantize_run import quantize_run

    options = given_method_options(opts)
    given = given_options({k: v for k, v in opts.items() if k in QuantizeFlags.model_fields})
    flags = QuantizeFlags(**given)
    budget_flags = BudgetFlags(**given_options({k: opts[k] for k in BudgetFlags.model_fields}))
    settings = quantize_options(flags, progress, build_overrides(flags.override, flags.keep_8bit, options))
    if budget_flags.budget is None:
        report = quantize_run(checkpoint, build_methods(flags.method, parse_bits(flags.bits), options), settings)
        click.echo(report["table"])
        click.echo(f"\n{report['protocol']}\nresults: {report['json']}")
        return
    method, budget = budget_request(
        flags.method, budget_flags, options, bits_given="bits" in given, bits=",".join(flags.bits), figure=flags.figure
    )
    report = quantize_run_budget(checkpoint, method, budget, settings, echo=click.echo)
    click.echo(report["text"])
    click.echo(f"\nresults: {report['json']}\nfigure: {report['figure']}")


def quantize_options(flags: QuantizeFlags, progress: bool | None, overrides: dict[str, Any]) -> Any:
    """The :class:`losslab.compress.quantize_run.QuantizeOptions` of the parsed flags."""
    from losslab.compress.quantize_run import QuantizeOptions

    return QuantizeOptions(
        calib_samples=flags.calib_samples,
        calib_batch_size=flags.calib_batch_size,
        calib_seed=flags.calib_seed,
        overrides=overrides,
        skip=list(flags.skip),
        fold_bn=flags.fold_bn,
        act_bits=flags.act_bits,
        data_dir=flags.data_dir,
        download=flags.download or None,
        device=flags.device,
        out=flags.json_path,
        save_packed=flags.save_packed,
        overwrite=flags.overwrite,
        progress=progress_mode(progress),
    )


def budget_request(
    names: tuple[str, ...],
    flags: BudgetFlags,
    options: dict[str, Any],
    *,
    bits_given: bool,
    bits: str = "",
    figure: Path | None = None,
) -> tuple[Any, Any]:
    """(the method, :class:`losslab.compress.budget.BudgetOptions`) of ``--budget``; bad combinations refused."""
    from losslab.compress.budget import BudgetOptions, check_budget_request
    from losslab.quant.budget import parse_budgets

    if len(names) != 1:
        raise ConfigError("--budget takes one --method (the widths are chosen for that method)")
    choices = parse_bits(flags.bits_choices, flag="--bits-choices")
    if bits_given:
        raise ConfigError(
            f"--budget chooses the widths itself: drop --bits {bits} and give the candidates "
            "with --bits-choices, e.g. --bits-choices 2,3,4,8"
        )
    (method,) = build_methods(names, [max(choices)], options)
    budget = BudgetOptions(
        parse_budgets(flags.budget),
        choices,
        flags.sensitivity,
        flags.solver,
        list(flags.tie),
        figure,
        refine=flags.refine,
        refine_score=flags.refine_score,
        refine_noise=flags.refine_noise,
        select_samples=flags.select_samples,
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
