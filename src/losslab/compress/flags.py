"""The typed options of ``losslab quantize``, ``losslab lm quantize`` and their ``--budget``.

The commands' flags are generated from these fields (:func:`losslab.cli.options.options_from_model`: help text,
defaults, bounds and choices come from here, the shared concepts -- calibration, device, overwrite -- from
``losslab.cli.groups``). The method options (``--grid``, ``--group-size``, ...) are the fields of the method configs
and are generated from those. Importing this module does not import torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from losslab.quant.bits import BITS_RANGE
from losslab.quant.budget import DEFAULT_REFINE, DEFAULT_REFINE_NOISE, DEFAULT_REFINE_SCORE, DEFAULT_SENSITIVITY
from losslab.train.config import CommandConfig

__all__ = ["BudgetFlags", "LmQuantizeFlags", "QuantizeFlags"]


class BudgetFlags(BaseModel):
    """``--budget`` and what it chooses from (``losslab.compress.budget``)."""

    model_config = ConfigDict(extra="forbid")

    budget: str | None = Field(
        None,
        description="Stored bits per quantized weight (scales and zero points included): choose each layer's width "
        "from --bits-choices; a comma list (--budget 2.5,3,3.5) reuses one sensitivity table and draws the Pareto "
        "figure.",
    )
    bits_choices: str = Field("2,3,4,8", description="Candidate widths per layer for --budget.")
    sensitivity: Literal["proxy", "hawq", "loss", "fisher"] = Field(
        DEFAULT_SENSITIVITY,
        description="Per-layer sensitivity for --budget: proxy (output error on calibration inputs), hawq (Hessian "
        "trace x |W-Q|^2), loss (calibration loss increase), fisher (Fisher-weighted |W-Q|^2).",
    )
    solver: Literal["exact", "greedy"] = Field("exact", description="--budget solver: exact (integer program), greedy.")
    tie: tuple[str, ...] = Field(
        (), description="Layer-name pattern(s) ('a,b') whose layers take one width (repeatable)."
    )
    refine: int = Field(
        DEFAULT_REFINE,
        ge=1,
        le=10_000,
        description="--budget: plans evaluated per budget by their calibration loss (local search from the knapsack "
        "plan; 1: the knapsack plan alone).",
    )
    refine_score: Literal["quantized", "stitched"] = Field(
        DEFAULT_REFINE_SCORE,
        description="--refine's score of a plan: quantized (the calibration loss of the model the driver "
        "quantizes with the plan; one quantize pass per plan), stitched (the float network with each layer's Q "
        "from the uniform run at its width; one forward pass, ignores the driver's error feedback).",
    )
    refine_noise: int = Field(
        DEFAULT_REFINE_NOISE,
        ge=0,
        le=1000,
        description="--refine: first score this many plans that are knapsack optima of the loss table with each "
        "entry moved by its standard error times a normal draw (plans within the table's noise); needs "
        "--sensitivity loss.",
    )
    select_samples: int | None = Field(
        None,
        ge=1,
        description="--refine: training images each plan's calibration loss is measured on (drawn with "
        "--calib-seed, the calibration images first; default: the calibration images).",
    )


class QuantizeFlags(BaseModel):
    """One ``losslab quantize RUN`` (besides the method options and :class:`BudgetFlags`)."""

    model_config = ConfigDict(extra="forbid")

    method: tuple[str, ...] = Field(("gpfq",), description="rtn, pwlq, gpfq, gptq, ldlq (repeat for several).")
    bits: tuple[str, ...] = Field(
        ("4",),
        description=f"Weight bit width(s) {BITS_RANGE[0]}..{BITS_RANGE[1]}: comma-separate or repeat (--bits 8,4,3); "
        "one calibration pass.",
    )
    calib_samples: int = Field(256, description="images from the training split")
    calib_batch_size: int = Field(64, description="")
    calib_seed: int = Field(0, description="the training images drawn")
    fold_bn: bool = Field(False, description="Fold BatchNorm into the preceding conv before quantizing.")
    keep_8bit: tuple[str, ...] = Field((), description="Layer-name pattern kept at 8-bit RTN (repeatable).")
    skip: tuple[str, ...] = Field((), description="Layer-name pattern kept in float (repeatable).")
    act_bits: int | None = Field(None, ge=2, le=16, description="Also fake-quantize activations per tensor (bits).")
    data_dir: Path | None = Field(None, description="Override the run's data folder.")
    download: bool = Field(False, description="Download the run's dataset if it is missing.")
    device: str | None = Field(None, description="default: cuda if available, else cpu")
    json_path: Path | None = Field(
        None, description="JSON file for the results (default <run>/quantize/<methods>.json)."
    )
    save_packed: Path | None = Field(
        None, description="Keep the packed safetensors files in this folder (else measured in a temporary folder)."
    )
    override: tuple[str, ...] = Field(
        (),
        description="PATTERN=METHOD:BITS for the layers whose name matches, e.g. 'fc=rtn:8'; first match wins; the "
        "method options apply where the method has them (repeatable).",
    )
    figure: Path | None = Field(
        None, description="Pareto figure (PNG) of --budget (default: the JSON's name with .png)."
    )
    overwrite: bool = Field(False, description="the results JSON and packed files")


class LmQuantizeFlags(CommandConfig):
    """One ``losslab lm quantize`` (besides the method options and :class:`BudgetFlags`)."""

    COMMAND: ClassVar[str] = "losslab lm quantize"
    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="Hub name or local folder of a float causal LM.")
    method: Literal["rtn", "gptq", "ldlq", "gpfq"] = Field("gptq", description="Per-layer quantizer.")
    bits: str = Field(
        "4",
        description=f"Weight bits {BITS_RANGE[0]}..{BITS_RANGE[1]}; a comma list (--bits 4,3) quantizes a fresh copy "
        "of the model per width.",
    )
    override: tuple[str, ...] = Field(
        (),
        description="PATTERN=METHOD:BITS for the linears whose name (relative to the model) matches, e.g. "
        "'*.fc2=gptq:8'; first match wins; the method options apply where the method has them (repeatable).",
    )
    keep_8bit: tuple[str, ...] = Field((), description="Linear-name pattern kept at 8-bit RTN (repeatable).")
    skip: tuple[str, ...] = Field(
        (), description="Linear-name pattern kept in float, e.g. '*.fc2' or 'fc2' (every layer's)."
    )
    eval_text: str | None = Field(
        None,
        description="With --budget: test corpus (wikitext2, ptb, c4) or local text file scored for perplexity at "
        "each width and budget (default: none, no perplexity).",
    )
    true_sequential: bool = Field(
        False,
        description="Re-collect each decoder layer's calibration statistics after every sub-group is quantized "
        "(OPT: q/k/v -> out_proj -> fc1 -> fc2; Llama/Mistral/Qwen2, GPT-2, GPT-NeoX have their own), so later "
        "linears see inputs from the quantized earlier ones. Default: all linears use the float layer's "
        "statistics. Other architectures are refused. No effect on rtn's weights.",
    )
    calib: Literal["wikitext2", "c4", "ptb"] = Field("c4", description="Calibration corpus (network).")
    text_file: str | None = Field(None, description="Local calibration text (overrides --calib).")
    calib_samples: int = Field(128, description="token windows of --seqlen tokens")
    seqlen: int | None = Field(
        None, ge=2, description="Tokens per calibration window (default: the model's context; at most it)."
    )
    calib_batch_size: int | None = Field(
        None, description="windows per forward pass (default: sized to free GPU memory on CUDA, 1 on the CPU)"
    )
    calib_seed: int = Field(0, description="the windows drawn (also the methods' seed)")
    device: str | None = Field(None, description="where each decoder layer is processed (default: cuda if available)")
    save_packed: str | None = Field(None, description="Packed model file (.safetensors) to write.")
    json_path: str | None = Field(None, description="Per-layer errors JSON (default: next to --save-packed).")
    overwrite: bool = Field(False, description="the packed model and JSON files")
