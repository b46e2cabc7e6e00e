"""``losslab lm``: finetune, quantize and evaluate Hugging Face causal LMs.

    losslab lm finetune --model facebook/opt-125m --out-dir runs/opt125m-rlo --loss root --k 5 --m 5
    losslab lm quantize --model facebook/opt-125m --method gptq --bits 4 --calib c4 --save-packed opt125m.g4.safetensors
    losslab lm quantize --model facebook/opt-125m --method gptq --bits 3 --act-order --true-sequential --json r.json
    losslab lm quantize --model facebook/opt-125m --method gptq --bits 3 --override '*.fc2=gptq:8' --json r.json
    losslab lm eval --model opt125m.gptq4.safetensors --dataset wikitext2

Offline, pass local folders (``--model /path``, saved with ``save_pretrained``) and ``--text-file``.
Every command raises :class:`losslab.errors.LosslabError` for bad input before any work starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from losslab.cli.method_options import LmQuantizeCommand, check_output, given_method_options
from losslab.cli.options import (
    LosslabCommand,
    given_options,
    json_option,
    options_from_model,
    progress_option,
    resolve_progress,
    write_json_output,
)
from losslab.cli.quantize import budget_options
from losslab.cli.quiet import quiet_third_party
from losslab.compress.flags import BudgetFlags, LmQuantizeFlags
from losslab.errors import ConfigError
from losslab.lm.config import LIGHTNING_KEYS, RUN_KEYS, FinetuneConfig, LmEvalOptions, LmLandscapeOptions
from losslab.quant.bits import parse_bits

CORPUS_CHOICE = click.Choice(["wikitext2", "c4", "ptb"])


def _device(device: str | None) -> str:
    """The ``--device`` value checked against this machine (one-line error when it has no such device)."""
    from losslab.runs import resolve_device

    return str(resolve_device(device or "auto"))


@click.group("lm")
def lm() -> None:
    """Causal language models: rooted-loss finetuning, layer-wise quantization, perplexity."""


@lm.command("finetune", cls=LosslabCommand)
@options_from_model(FinetuneConfig, exclude={"progress"})
@progress_option
def finetune_cmd(progress: bool | None, **flags: Any) -> None:
    """Finetune a causal LM with the rooted (or CE) token loss in the plain loop; checkpointed and resumable
    (--resume RUN). Flags are FinetuneConfig's keys (losslab.lm.config)."""
    values = given_options(flags)
    if values.get("resume") is not None:  # the stored config, with the options typed on this command line on top
        from losslab.runs.folder import stored_config

        stored = stored_config(values["resume"])
        if any(key in stored for key in LIGHTNING_KEYS):
            raise ConfigError(
                f"{values['resume']} was written by the Lightning version of lm finetune; the plain loop cannot "
                "resume its checkpoint: start a new run (--out-dir)"
            )
        values = {**{k: v for k, v in stored.items() if k not in RUN_KEYS}, **values}
    cfg = FinetuneConfig.build({**values, "progress": progress})  # bad values fail before heavy imports
    with quiet_third_party(resolve_progress(cfg.progress)):
        from losslab.lm.finetune import finetune

        result = finetune(cfg)
    from losslab.runs import is_child_rank

    if is_child_rank():  # torchrun: rank 0 reports
        return
    click.echo(
        f"held-out perplexity before {result.val_ppl_before:.4f} -> after {result.val_ppl_after:.4f} "
        f"({result.protocol}); steps {result.global_step}; model in {result.model_dir}"
    )


def lm_quantize_flags(opts: dict[str, Any]) -> LmQuantizeFlags:
    """The typed flags of ``lm quantize`` (bad values are one :class:`ConfigError`)."""
    return LmQuantizeFlags.build(given_options({key: opts[key] for key in LmQuantizeFlags.model_fields}))


def lm_quantize_plan(opts: dict[str, Any]) -> tuple[list[Any], dict[str, Any], list[str]]:
    """(one method config per --bits value, overrides by pattern, skip patterns) from the parsed flags.

    The method options (generated flags) apply to the main method and to every ``--override`` method that has
    them; ``--keep-8bit P`` is ``--override P=rtn:8`` (:func:`losslab.cli.quantize.build_overrides`).
    """
    from losslab.cli.quantize import build_overrides
    from losslab.quant.methods import build_methods

    flags, options = lm_quantize_flags(opts), given_method_options(opts)
    methods = build_methods([flags.method], parse_bits(flags.bits), options)
    return methods, build_overrides(flags.override, flags.keep_8bit, options), list(flags.skip)


@lm.command("quantize", cls=LmQuantizeCommand)
@options_from_model(LmQuantizeFlags, flags={"json_path": "--json"})
@budget_options
@progress_option
def quantize_cmd(progress: bool | None, **opts: Any) -> None:
    """Quantize the decoder layer by layer (GPTQ's sequential driver); embeddings and LM head stay float.

    Method options are the fields of the method configs, one flag each (--grid sym, --group-size 128, --act-order,
    --incoherence hadamard, --order ldlqRG, --percdamp ...); with --incoherence and no --grid the quip grid is used.
    """
    from losslab.compress.lm_quantize import lm_quantize

    with quiet_third_party(resolve_progress(progress)):
        lm_quantize(*lm_quantize_request(opts, progress), echo=click.echo)


def lm_quantize_request(opts: dict[str, Any], progress: bool | None = None) -> tuple[Any, list[Any], Any]:
    """(:class:`losslab.compress.lm_quantize.LmQuantizeJob`, method configs, budget or None) of the parsed flags;
    bad values, a missing device and an empty output set are refused here, before any model is loaded."""
    from losslab.cli.quantize import budget_request
    from losslab.compress.lm_quantize import LmQuantizeJob

    flags = lm_quantize_flags(opts)
    methods, overrides, skip = lm_quantize_plan(opts)
    job = LmQuantizeJob(
        flags.model,
        overrides=overrides,
        skip=skip,
        **{key: getattr(flags, key) for key in LM_QUANTIZE_KEYS},
        json=flags.json_path,
        progress=resolve_progress(progress),
    )
    budget_flags = BudgetFlags(**given_options({key: opts[key] for key in BudgetFlags.model_fields}))
    if budget_flags.budget is None:
        return job, methods, None
    method, budget = budget_request(
        (flags.method,), budget_flags, given_method_options(opts), bits_given=opts["bits"] is not None, bits=flags.bits
    )
    return job, [method], budget


# The lm quantize flags that are LmQuantizeJob fields of the same name.
LM_QUANTIZE_KEYS = (
    "calib",
    "text_file",
    "calib_samples",
    "seqlen",
    "calib_batch_size",
    "calib_seed",
    "device",
    "true_sequential",
    "save_packed",
    "eval_text",
    "overwrite",
)


@lm.command("eval")
@options_from_model(LmEvalOptions)
@json_option("Write the result as JSON to")
@progress_option
def eval_cmd(json_path: Path | None, progress: bool | None, **flags: Any) -> None:
    """Perplexity = exp(mean token CE) with the GPTQ protocol (non-overlapping windows, tail dropped)."""
    opts = {**LmEvalOptions.build(given_options(flags)).model_dump(), "json_path": json_path, "progress": progress}
    with quiet_third_party(resolve_progress(progress)):
        _eval_lm(opts)


def _eval_lm(opts: dict[str, Any]) -> None:
    import torch

    from losslab.lm.data import eval_windows, load_corpus, protocol_name, tokenize_text
    from losslab.lm.models import check_seqlen, load_causal_lm, load_tokenizer
    from losslab.lm.packing import packed_tokenizer_source
    from losslab.lm.perplexity import perplexity

    json_path = opts["json_path"]
    if json_path is not None and str(json_path) != "-":
        check_output(Path(json_path), overwrite=opts["overwrite"], what="results JSON", flag="--json")
    progress = resolve_progress(opts["progress"])
    device = _device(opts["device"])
    tok_source = opts["tokenizer"]
    packed = opts["model"] if tok_source is None and Path(opts["model"]).is_file() else None
    if tok_source is None:
        tok_source = packed_tokenizer_source(packed) if packed is not None else opts["model"]
    if tok_source is None:
        raise ConfigError(f"{opts['model']!r} records no tokenizer; pass --tokenizer NAME_OR_FOLDER")
    tokenizer = load_tokenizer(tok_source, local_only=packed is not None)  # a local file never goes online
    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    dtype = dtypes.get(opts["dtype"], torch.float16 if device.startswith("cuda") else torch.float32)
    model = load_causal_lm(opts["model"], dtype=dtype)
    seqlen = check_seqlen(model, opts["seqlen"])
    source = opts["text_file"] or opts["dataset"]
    max_windows = opts["max_windows"] or (256 if source == "c4" else None)
    windows = eval_windows(tokenize_text(tokenizer, load_corpus(source, "test")), seqlen, max_windows)
    result = perplexity(model.to(device), windows, protocol=protocol_name(str(source), seqlen), progress=progress)
    if json_path is None or str(json_path) != "-":  # `--json -`: stdout holds the JSON only
        click.echo(f"{result.describe()}; model {opts['model']}, {str(dtype).removeprefix('torch.')}")
    if json_path is not None:
        import dataclasses

        record = {**dataclasses.asdict(result), "model": str(opts["model"]), "dtype": str(dtype)}
        write_json_output(json_path, record, overwrite=opts["overwrite"])


@lm.command("landscape")
@options_from_model(LmLandscapeOptions)
@json_option("Write the result as JSON to")
@progress_option
def landscape_cmd(json_path: Path | None, progress: bool | None, **flags: Any) -> None:
    """Top Hessian eigenvalue and trace (and other probes) of a causal LM on calibration windows."""
    opts = {**LmLandscapeOptions.build(given_options(flags)).model_dump(), "json_path": json_path, "progress": progress}
    from losslab.landscape import ProbeSettings, parse_probes
    from losslab.landscape.lm import probe_lm
    from losslab.lm.data import load_calibration
    from losslab.lm.models import check_seqlen, load_causal_lm, load_tokenizer

    settings = ProbeSettings(probes=parse_probes(opts["probes"]), top_k=opts["top_k"], seed=opts["seed"])
    json_path = opts["json_path"]
    if json_path is not None and str(json_path) != "-":
        check_output(Path(json_path), overwrite=opts["overwrite"], what="results JSON", flag="--json")
    with quiet_third_party(resolve_progress(opts["progress"])):
        tokenizer = load_tokenizer(opts["model"])
        model = load_causal_lm(opts["model"])
        seqlen = check_seqlen(model, opts["seqlen"])
        source = opts["text_file"] or opts["calib"]
        windows = load_calibration(tokenizer, source, opts["calib_samples"], seqlen, opts["seed"])
        result = probe_lm(model, windows, settings, opts["batch_size"], _device(opts["device"]))
    result["model"] = str(opts["model"])
    from losslab.cli.landscape import summary_table

    if json_path is None or str(json_path) != "-":
        click.echo(
            summary_table({**result, "samples": result["windows"], "split": str(source), "loss": "next-token CE"})
        )
    if json_path is not None:
        write_json_output(json_path, result, overwrite=opts["overwrite"])
