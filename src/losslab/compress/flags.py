"""The typed options of ``losslab quantize`` and of ``--budget`` (also on ``lm quantize``).

The commands' flags are generated from these fields (:func:`losslab.cli.options.options_from_model`: help text,
defaults, bounds and choices come from here, the shared concepts -- calibration, device, overwrite -- from
``losslab.cli.groups``). The method options (``--grid``, ``--group-size``, ...) are the fields of the method configs
and are generated from those. Importing this module does not import torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from losslab.quant.bits import BITS_RANGE
from losslab.quant.budget import DEFAULT_REFINE, DEFAULT_REFINE_SCORE, DEFAULT_SENSITIVITY

__all__ = ["BudgetFlags", "QuantizeFlags"]


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
