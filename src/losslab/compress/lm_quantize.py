"""``losslab lm quantize``: quantize a causal LM's decoder layer by layer, one model per bit width, or under a budget.

The workflow behind the command: check the outputs and the layer plan before any data is read, load the model and
the calibration windows once, run GPTQ's sequential driver (:func:`losslab.lm.quantize.quantize_decoder`) for every
method config (each width on a fresh copy of the float model), print each point's per-layer table and summary, and
write the packed model and the per-layer errors JSON. With a :class:`~losslab.compress.budget.BudgetOptions` the
widths are chosen per linear (:func:`losslab.compress.lm_budget.quantize_lm_budget`)::

    from losslab.compress.lm_quantize import LmQuantizeJob, lm_quantize
    job = LmQuantizeJob("facebook/opt-125m", text_file="train.txt", save_packed=Path("opt.g4.safetensors"))
    lm_quantize(job, [GPTQ(bits=4)], echo=print)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from losslab.compress.budget import BudgetOptions
from losslab.errors import ConfigError
from losslab.io import check_output
from losslab.quant.methods import QuantMethod

if TYPE_CHECKING:
    from losslab.compress.lm_budget import LmBudgetJob

__all__ = ["LmQuantizeJob", "lm_quantize", "point_path"]


@dataclass
class LmQuantizeJob:
    """Everything but the methods: the model, the layer plan, the calibration data, the device and the outputs.

    Built before any work: a device this machine lacks, or no output at all, is refused here (one line).
    """

    model: str
    overrides: dict[str, QuantMethod] = field(default_factory=dict)
    skip: list[str] = field(default_factory=list)
    calib: str = "c4"
    text_file: str | None = None
    calib_samples: int = 128
    seqlen: int | None = None
    calib_batch_size: int | None = None
    calib_seed: int = 0
    device: str | None = None
    true_sequential: bool = False
    save_packed: Path | None = None
    json: Path | None = None
    eval_text: str | None = None
    overwrite: bool = False
    progress: bool = False

    def __post_init__(self) -> None:
        from losslab.runs import resolve_device

        self.device = str(resolve_device(self.device or "auto"))  # a missing device fails before the model loads
        self.save_packed = Path(self.save_packed) if self.save_packed is not None else None
        self.json = Path(self.json) if self.json is not None else None
        if self.save_packed is None and self.json is None:
            raise ConfigError(
                "give --save-packed (packed model) and/or --json (per-layer errors); nothing would be saved"
            )

    @property
    def source(self) -> str:
        """The calibration text: the local file, else the corpus name."""
        return str(self.text_file or self.calib)


def point_path(path: Path | None, method: QuantMethod, several: bool) -> Path | None:
    """``path``, or with several bit widths ``stem.<method><bits>.suffix``."""
    if path is None:
        return None
    return path.with_name(f"{path.stem}.{method.name}{method.bits}{path.suffix}") if several else path


def lm_quantize(
    job: LmQuantizeJob, methods: list[QuantMethod], budget: BudgetOptions | None = None, echo: Any = print
) -> None:
    """Quantize ``job.model`` with every method config (or, with ``budget``, ``methods[0]`` under each budget),
    printing through ``echo`` and writing the packed models and JSON files; every output is checked first."""
    if budget is not None:
        _quantize_budget(job, methods[0], budget, echo)
        return
    from losslab.lm.data import load_calibration
    from losslab.lm.models import check_seqlen, load_causal_lm, load_tokenizer
    from losslab.lm.quantize import plan_decoder, plan_sequential_groups

    outputs = _claim_outputs(job, methods)
    tokenizer = load_tokenizer(job.model)
    model = load_causal_lm(job.model)
    plan_decoder(model, methods[0], job.overrides, job.skip)  # patterns that match nothing: fail before data
    plan_sequential_groups(model, true_sequential=job.true_sequential)  # unsupported model: fail before data
    seqlen = check_seqlen(model, job.seqlen)
    calib = load_calibration(tokenizer, job.source, job.calib_samples, seqlen, job.calib_seed)
    for i, (method, packed, json_path) in enumerate(outputs):
        if i > 0:
            model = load_causal_lm(job.model)  # the previous point quantized the loaded model in place
        _quantize_point(job, model, method, calib, packed, json_path, echo)


def _claim_outputs(job: LmQuantizeJob, methods: list[QuantMethod]) -> list[tuple[QuantMethod, Path | None, Path]]:
    """(method, packed file, JSON file) per point, each checked new (or ``overwrite``) before any work."""
    several = len(methods) > 1
    outputs = []
    for method in methods:
        packed = point_path(job.save_packed, method, several)
        json_path = point_path(job.json, method, several) or packed.with_suffix(".json")  # type: ignore[union-attr]
        check_output(packed, overwrite=job.overwrite, what="packed model", flag="--save-packed")
        check_output(json_path, overwrite=job.overwrite, what="per-layer errors JSON", flag="--json")
        outputs.append((method, packed, json_path))
    return outputs


def _quantize_point(
    job: LmQuantizeJob, model: Any, method: QuantMethod, calib: Any, packed: Path | None, json_path: Path, echo: Any
) -> None:
    """One width: quantize ``model`` in place, print its table and summary, write the packed file and the JSON."""
    from losslab.compress.lm_budget import quantize_job
    from losslab.lm.packing import save_packed_lm

    loaded = _loaded_job(job, model, calib, json_path, packed)
    result = quantize_job(loaded, method, job.overrides, metrics=False, inplace=True)
    echo(result.table())
    summary = result.summary()
    echo(
        f"{summary['method']}: {summary['quantized_layers']} linears, {summary['avg_bits_per_weight']:.3f} "
        f"bits/weight, {result.seconds:.1f} s; calibration {calib.shape[0]}x{calib.shape[1]} tokens "
        f"from {job.source}, seed {job.calib_seed}, "
        f"{'true-sequential' if job.true_sequential else 'per-layer'} "
        "statistics (fake quantization; packed file stores codes)"
    )
    if packed is not None:
        size = save_packed_lm(result, packed, tokenizer=job.model)
        echo(f"packed model: {packed} ({size / 2**20:.2f} MiB)")
    result.to_json(json_path)
    echo(f"per-layer errors: {json_path}")


def _quantize_budget(job: LmQuantizeJob, method: QuantMethod, budget: BudgetOptions, echo: Any) -> None:
    """``--budget``: load the model and data, call :func:`losslab.compress.lm_budget.quantize_lm_budget`."""
    from losslab.compress.lm_budget import quantize_lm_budget
    from losslab.lm.data import eval_windows, load_calibration, load_corpus, tokenize_text
    from losslab.lm.models import check_seqlen, load_causal_lm, load_tokenizer

    out = job.json or job.save_packed.with_suffix(".json")  # type: ignore[union-attr]
    check_output(out, overwrite=job.overwrite, what="results JSON", flag="--json")
    tokenizer = load_tokenizer(job.model)
    model = load_causal_lm(job.model)
    seqlen = check_seqlen(model, job.seqlen)
    calib = load_calibration(tokenizer, job.source, job.calib_samples, seqlen, job.calib_seed)
    test = None
    if job.eval_text:
        test = eval_windows(tokenize_text(tokenizer, load_corpus(job.eval_text, "test")), seqlen)
    report = quantize_lm_budget(_loaded_job(job, model, calib, out, job.save_packed, test), method, budget, echo=echo)
    echo(report["text"])
    echo(f"results: {report['json']}")


def _loaded_job(
    job: LmQuantizeJob, model: Any, calib: Any, out: Path, packed: Path | None, test: Any = None
) -> LmBudgetJob:
    """The loaded ``model`` and ``calib`` windows with ``job``'s layer plan and driver settings, under the field
    names of :class:`~losslab.compress.lm_budget.LmBudgetJob`; ``out`` is its JSON, ``packed`` its packed file."""
    from losslab.compress.lm_budget import LmBudgetJob

    return LmBudgetJob(
        model,
        str(job.model),
        calib,
        out,
        eval_windows=test,
        save_packed=packed,
        tokenizer=str(job.model),
        overrides=job.overrides,
        skip=job.skip,
        calib_name=job.source,
        seed=job.calib_seed,
        device=str(job.device),
        true_sequential=job.true_sequential,
        micro_batch=job.calib_batch_size,
        overwrite=job.overwrite,
        progress=job.progress,
    )
