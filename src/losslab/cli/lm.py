"""``losslab lm``: finetune, quantize and evaluate Hugging Face causal LMs.

    losslab lm finetune --model facebook/opt-125m --out-dir runs/opt125m-rlo --loss root --k 5 --m 5
    losslab lm quantize --model facebook/opt-125m --method gptq --bits 4 --calib c4 --output opt125m.gptq4.safetensors
    losslab lm quantize --model facebook/opt-125m --method gptq --bits 3 --act-order --true-sequential --json r.json
    losslab lm eval --model opt125m.gptq4.safetensors --dataset wikitext2

Offline, pass local folders (``--model /path``, saved with ``save_pretrained``) and ``--text-file``.
Every command raises :class:`losslab.errors.LosslabError` for bad input before any work starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from losslab.cli.options import DeprecatedChoice, LosslabCommand, progress_option, resolve_progress
from losslab.cli.quiet import quiet_third_party
from losslab.errors import ConfigError

PRECISIONS = ("32-true", "16-mixed", "bf16-mixed", "bf16-true")  # Lightning's values

CORPUS_CHOICE = click.Choice(["wikitext2", "c4", "ptb"])


def _device(device: str | None) -> str:
    import torch

    if device is not None:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


@click.group("lm")
def lm() -> None:
    """Causal language models: rooted-loss finetuning, layer-wise quantization, perplexity."""


@lm.command("finetune", cls=LosslabCommand)
@click.option("--model", required=True, help="Hub name (facebook/opt-125m) or local folder of a causal LM.")
@click.option(
    "--out-dir",
    "output_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Run folder (checkpoints, logs, finetuned model).",
)
@click.option("--dataset", type=CORPUS_CHOICE, default="wikitext2", show_default=True, help="Corpus (needs network).")
@click.option("--text-file", type=click.Path(dir_okay=False), help="Local training text (overrides --dataset).")
@click.option(
    "--val-file", type=click.Path(dir_okay=False), help="Local validation text (else last 10% of --text-file)."
)
@click.option("--block-size", type=int, default=256, show_default=True, help="Tokens per training block.")
@click.option(
    "--loss",
    type=click.Choice(["ce", "root", "root_convex"]),
    default="root",
    show_default=True,
    help="Training loss; perplexity is always exp(CE).",
)
@click.option("--k", type=float, default=5.0, show_default=True, help="Rooted loss k.")
@click.option("--m", type=float, default=5.0, show_default=True, help="Rooted loss m (a loss scale).")
@click.option("--lr", type=float, default=1e-5, show_default=True, help="AdamW learning rate.")
@click.option("--weight-decay", type=float, default=0.01, show_default=True, help="AdamW weight decay.")
@click.option("--warmup-steps", type=int, default=500, show_default=True, help="Linear warmup steps, then decay.")
@click.option("--epochs", type=int, default=1, show_default=True, help="Epochs (ignored with --max-steps).")
@click.option("--max-steps", type=int, help="Optimizer steps to train (overrides --epochs).")
@click.option("--batch-size", type=int, default=4, show_default=True, help="Blocks per micro-batch per device.")
@click.option("--grad-accum", type=int, default=2, show_default=True, help="Micro-batches per optimizer step.")
@click.option("--gradient-clip", "grad_clip", type=float, default=1.0, show_default=True, help="Gradient-norm clip.")
@click.option(
    "--precision",
    type=DeprecatedChoice(list(PRECISIONS), "--precision"),
    default="32-true",
    show_default=True,
    help="Lightning precision (old bf16/fp16 still accepted).",
)
@click.option("--devices", default="auto", show_default=True, help="Lightning devices (e.g. 2 for two GPUs, DDP).")
@click.option("--accelerator", default="auto", show_default=True, help="Lightning accelerator (cpu, gpu, auto).")
@click.option("--num-nodes", type=int, default=1, show_default=True, help="Lightning nodes (multi-node DDP).")
@click.option("--strategy", default="auto", show_default=True, help="Lightning strategy: auto, ddp, fsdp, ...")
@click.option("--seed", type=int, default=42, show_default=True, help="Seed for data order and init.")
@click.option("--eval-every", type=int, default=500, show_default=True, help="Validate every N optimizer steps.")
@click.option("--checkpoint-every", type=int, default=500, show_default=True, help="Checkpoint every N steps.")
@click.option("--max-eval-windows", type=int, help="Cap the held-out windows (quick runs).")
@click.option("--pad-token", type=click.Choice(["eos"]), help="Use EOS as pad token when the tokenizer has none.")
@click.option("--resume/--no-resume", default=True, show_default=True, help="Resume from --out-dir's last.ckpt.")
@progress_option
def finetune_cmd(progress: bool | None, **kwargs: Any) -> None:
    """Finetune a causal LM with the rooted (or CE) token loss; checkpointed and resumable."""
    from losslab.lm.finetune import FinetuneConfig

    cfg = FinetuneConfig(progress=resolve_progress(progress), **kwargs)  # bad values fail before heavy imports
    with quiet_third_party(cfg.progress):
        from losslab.lm.finetune import finetune

        result = finetune(cfg)
    click.echo(
        f"held-out perplexity before {result.val_ppl_before:.4f} -> after {result.val_ppl_after:.4f} "
        f"({result.protocol}); steps {result.global_step}; model in {result.model_dir}"
    )


def _method(name: str, bits: int, opts: dict[str, Any]) -> Any:
    from losslab.quant.methods import method_from_name

    kwargs: dict[str, Any] = {"bits": bits}
    grid = "sym" if opts["sym"] else "asym"
    if name in ("rtn", "gptq"):
        kwargs.update(grid=grid, group_size=opts["group_size"])
    if name in ("gptq", "ldlq"):
        kwargs.update(percdamp=opts["percdamp"])
        if opts["incoherence"] != "none":
            kwargs.update(incoherence=opts["incoherence"], grid="quip")
        elif name == "ldlq":
            kwargs.update(grid=grid)
    if name in ("gptq", "ldlq"):
        kwargs.update(act_order=opts["act_order"])
    elif opts["act_order"]:
        raise ConfigError(f"--act-order applies to gptq and ldlq, not --method {name}")
    if name == "gptq":
        kwargs.update(blocksize=opts["blocksize"], static_groups=opts["static_groups"])
    elif opts["static_groups"]:
        raise ConfigError(f"--static-groups applies to gptq only, not --method {name}")
    if name == "ldlq":
        kwargs.update(order=opts["ldlq_order"], npasses=opts["npasses"])
    if name == "gpfq":
        kwargs.update(scalar=opts["scalar"])
    if opts["group_size"] is not None and name not in ("rtn", "gptq"):
        raise ConfigError(f"--group-size applies to rtn and gptq, not --method {name}")
    return method_from_name(name, **kwargs)


@lm.command("quantize")
@click.option("--model", required=True, help="Hub name or local folder of a float causal LM.")
@click.option(
    "--method",
    type=click.Choice(["rtn", "gptq", "ldlq", "gpfq"]),
    default="gptq",
    show_default=True,
    help="Per-layer quantizer.",
)
@click.option("--bits", type=int, default=4, show_default=True, help="Weight bits (2..8).")
@click.option("--group-size", type=int, help="Columns per quantization group (rtn, gptq); default per row.")
@click.option(
    "--act-order",
    is_flag=True,
    help="GPTQ/LDLQ: quantize columns by decreasing Hessian diagonal, then restore their order.",
)
@click.option("--static-groups", is_flag=True, help="GPTQ: fit group grids on the original weight first.")
@click.option("--sym", is_flag=True, help="Symmetric grid instead of asym (min/max with zero point).")
@click.option(
    "--incoherence",
    type=click.Choice(["none", "hadamard", "kron", "butterfly"]),
    default="none",
    show_default=True,
    help="QuIP incoherence processing (gptq/ldlq; uses the quip grid).",
)
@click.option(
    "--ldlq-order",
    type=click.Choice(["natural", "ldlqRG"]),
    default="natural",
    show_default=True,
    help="LDLQ column order (ldlqRG = QuIP's --quant ldlqRG).",
)
@click.option("--npasses", type=int, default=0, show_default=True, help="LDLQ greedy passes.")
@click.option(
    "--true-sequential",
    is_flag=True,
    help="Re-collect each decoder layer's calibration statistics after every sub-group is quantized "
    "(OPT: q/k/v -> out_proj -> fc1 -> fc2; Llama/Mistral/Qwen2, GPT-2, GPT-NeoX have their own), so later "
    "linears see inputs from the quantized earlier ones. Default: all linears use the float layer's statistics. "
    "Other architectures are refused. No effect on rtn's weights.",
)
@click.option(
    "--percdamp", type=float, default=0.01, show_default=True, help="Hessian damping (fraction of mean diag)."
)
@click.option("--blocksize", type=int, default=128, show_default=True, help="GPTQ column block size.")
@click.option("--scalar", type=float, default=1.16, show_default=True, help="GPFQ alphabet scalar.")
@click.option("--calib", type=CORPUS_CHOICE, default="c4", show_default=True, help="Calibration corpus (network).")
@click.option("--text-file", type=click.Path(dir_okay=False), help="Local calibration text (overrides --calib).")
@click.option("--calib-windows", type=int, default=128, show_default=True, help="Calibration windows.")
@click.option("--seqlen", type=int, help="Tokens per calibration window (default: the model's context).")
@click.option("--seed", type=int, default=0, show_default=True, help="Calibration sampling seed (Python random).")
@click.option("--device", help="Where each decoder layer is processed (default cuda if available).")
@click.option("--output", type=click.Path(dir_okay=False), help="Packed model file (.safetensors) to write.")
@click.option(
    "--json", "json_path", type=click.Path(dir_okay=False), help="Per-layer errors JSON (default next to --output)."
)
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show the progress bar.")
def quantize_cmd(**opts: Any) -> None:
    """Quantize the decoder layer by layer (GPTQ's sequential driver); embeddings and LM head stay float."""
    from losslab.lm.data import load_calibration
    from losslab.lm.models import check_seqlen, load_causal_lm, load_tokenizer
    from losslab.lm.packing import save_packed_lm
    from losslab.lm.quantize import plan_sequential_groups, quantize_decoder

    method = _method(opts["method"], opts["bits"], opts)
    if opts["output"] is None and opts["json_path"] is None:
        raise ConfigError("give --output (packed model) and/or --json (per-layer errors); nothing would be saved")
    tokenizer = load_tokenizer(opts["model"])
    model = load_causal_lm(opts["model"])
    plan_sequential_groups(model, true_sequential=opts["true_sequential"])  # unsupported model: fail before data
    seqlen = check_seqlen(model, opts["seqlen"])
    source = opts["text_file"] or opts["calib"]
    calib = load_calibration(tokenizer, source, opts["calib_windows"], seqlen, opts["seed"])
    result = quantize_decoder(
        model,
        method,
        calib,
        device=_device(opts["device"]),
        seed=opts["seed"],
        progress=opts["progress"],
        calib_name=str(source),
        calib_seed=opts["seed"],
        true_sequential=opts["true_sequential"],
    )
    click.echo(result.table())
    summary = result.summary()
    click.echo(
        f"{summary['method']}: {summary['quantized_layers']} linears, {summary['avg_bits_per_weight']:.3f} "
        f"bits/weight, {result.seconds:.1f} s; calibration {calib.shape[0]}x{calib.shape[1]} tokens "
        f"from {source}, seed {opts['seed']}, {'true-sequential' if opts['true_sequential'] else 'per-layer'} "
        "statistics (fake quantization; packed file stores codes)"
    )
    json_path = opts["json_path"] or str(Path(opts["output"]).with_suffix(".json"))
    if opts["output"] is not None:
        size = save_packed_lm(result, opts["output"], tokenizer=opts["model"])
        click.echo(f"packed model: {opts['output']} ({size / 2**20:.2f} MiB)")
    result.to_json(json_path)
    click.echo(f"per-layer errors: {json_path}")


@lm.command("eval")
@click.option("--model", required=True, help="Hub name, local folder, or packed .safetensors from `lm quantize`.")
@click.option("--tokenizer", help="Tokenizer source (default: --model, or the one recorded in a packed file).")
@click.option("--dataset", type=CORPUS_CHOICE, default="wikitext2", show_default=True, help="Test corpus (network).")
@click.option("--text-file", type=click.Path(dir_okay=False), help="Local test text (overrides --dataset).")
@click.option("--seqlen", type=int, help="Window length (default: the model's context).")
@click.option("--max-windows", type=int, help="Score only the first N windows (c4 defaults to 256).")
@click.option(
    "--dtype",
    type=click.Choice(["auto", "fp32", "fp16", "bf16"]),
    default="auto",
    show_default=True,
    help="Weights dtype (auto: fp16 on GPU, fp32 on CPU).",
)
@click.option("--device", help="Device (default cuda if available).")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show the progress bar.")
def eval_cmd(**opts: Any) -> None:
    """Perplexity = exp(mean token CE) with the GPTQ protocol (non-overlapping windows, tail dropped)."""
    import torch

    from losslab.lm.data import eval_windows, load_corpus, protocol_name, tokenize_text
    from losslab.lm.models import check_seqlen, load_causal_lm, load_tokenizer
    from losslab.lm.packing import packed_tokenizer_source
    from losslab.lm.perplexity import perplexity

    device = _device(opts["device"])
    tok_source = opts["tokenizer"]
    if tok_source is None:
        tok_source = packed_tokenizer_source(opts["model"]) if Path(opts["model"]).is_file() else opts["model"]
    if tok_source is None:
        raise ConfigError(f"{opts['model']!r} records no tokenizer; pass --tokenizer NAME_OR_FOLDER")
    tokenizer = load_tokenizer(tok_source)
    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    dtype = dtypes.get(opts["dtype"], torch.float16 if device.startswith("cuda") else torch.float32)
    model = load_causal_lm(opts["model"], dtype=dtype)
    seqlen = check_seqlen(model, opts["seqlen"])
    source = opts["text_file"] or opts["dataset"]
    max_windows = opts["max_windows"] or (256 if source == "c4" else None)
    windows = eval_windows(tokenize_text(tokenizer, load_corpus(source, "test")), seqlen, max_windows)
    result = perplexity(
        model.to(device), windows, protocol=protocol_name(str(source), seqlen), progress=opts["progress"]
    )
    click.echo(f"{result.describe()}; model {opts['model']}, {str(dtype).removeprefix('torch.')}")
