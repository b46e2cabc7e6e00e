"""``quantize_run``: quantize a trained classifier run with every (method, bits) point, pack, tabulate, write JSON.

One calibration cache serves every point. For each point the run's test split gives top-1 accuracy on the
fake-quantized weights, the weights are packed (:func:`losslab.quant.save_packed`) to report the real file size and
re-loaded to check that they rebuild the same weights; the rows go to a text table and the JSON file::

    from losslab.compress.quantize_run import QuantizeOptions, quantize_run
    report = quantize_run("runs/digits-small_cnn-root-s0", [GPTQ(bits=3)], QuantizeOptions(skip=["conv1"]))
    print(report["table"])
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from losslab.errors import ConfigError
from losslab.io import check_output
from losslab.quant.methods import QuantMethod

__all__ = ["QuantizeOptions", "float_size_bytes", "kept_layers", "method_label", "quantize_run"]


@dataclass
class QuantizeOptions:
    """Everything but the methods: calibration, layer plan, data, device and outputs (``losslab quantize``)."""

    calib_samples: int = 256
    calib_batch_size: int = 64
    calib_seed: int = 0
    overrides: dict[str, QuantMethod] = field(default_factory=dict)
    skip: list[str] = field(default_factory=list)
    fold_bn: bool = False
    act_bits: int | None = None
    data_dir: Path | None = None
    download: bool | None = None
    device: str | None = None
    out: Path | None = None
    save_packed: Path | None = None
    overwrite: bool = False
    progress: bool | str = False  # True: a bar; "lines": one stderr line per group of layers (logs, pipes)


def float_size_bytes(model: Any) -> int:
    """Bytes of the model's parameters and buffers as stored (fp32 for a trained classifier)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def method_label(method: Any) -> str:
    """The method name with its non-default options, without ``bits`` (``gpfq sparsity=l1 lam=0.01``)."""
    parts = [method.name]
    for f in fields(method):
        value = getattr(method, f.name)
        if f.name != "bits" and value != f.default:
            parts.append(f"{f.name}={value}")
    return " ".join(parts)


def kept_layers(result: Any, method: QuantMethod) -> str:
    """The layers a point does not quantize with ``method``: ``float: conv1; RTN(bits=8): fc`` (or ``-``)."""
    kept: dict[str, list[str]] = {}
    for row in result.layers:
        if not row.quantized:
            kept.setdefault("float", []).append(row.name)
        elif row.method != method.describe():
            kept.setdefault(row.method, []).append(row.name)
    return "; ".join(f"{how}: {', '.join(names)}" for how, names in kept.items()) or "-"


def _same_weights(a: Any, b: Any) -> bool:
    """Whether two models hold bit-identical parameters."""
    import torch

    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def pack_and_check(result: Any, path: Path, run: Any) -> tuple[int, bool]:
    """Write ``result`` packed to ``path``; (file bytes, whether reloading it gives the fake-quantized weights)."""
    from losslab.quant import load_packed, save_packed

    size = save_packed(result, path, model_recipe=getattr(run.model, "losslab_recipe", None))
    return size, _same_weights(load_packed(path, model=run.model), result.model)


def check_packed_names(save_packed: Path | None, names: list[str], overwrite: bool) -> None:
    """Before any work: ``--save-packed`` is a writable folder and none of ``names`` exists in it (unless
    ``--overwrite``)."""
    check_output(save_packed, overwrite=overwrite, what="packed files", flag="--save-packed", folder=True)
    if save_packed is not None and not overwrite:
        taken = [n for n in names if (save_packed / n).exists()]
        if taken:
            raise ConfigError(f"{', '.join(taken)} already exist in {str(save_packed)!r}; pass --overwrite")


def protocol_text(run: Any, calib: Any, opts: QuantizeOptions) -> str:
    """The measurement protocol printed under the table and stored in the JSON."""
    shape = "x".join(str(d) for d in next(iter(calib))[0].shape[1:])
    return (
        f"top-1 accuracy (%) on the {run.cfg.dataset} test split ({run.float_metrics['n']} images, {shape}); weights "
        f"fake-quantized (dequantized floats), activations {f'{opts.act_bits}-bit' if opts.act_bits else 'float'}; "
        f"calibration: {opts.calib_samples} training images, seed {opts.calib_seed}; packed KiB = real safetensors "
        "file size (codes + scales + float layers)"
    )


def load_run(checkpoint: Path, opts: QuantizeOptions) -> Any:
    """The :class:`~losslab.compress.trained_run.TrainedRun` with the options' data and device overrides."""
    from losslab.compress.trained_run import TrainedRun

    return TrainedRun.load(checkpoint, data_dir=opts.data_dir, download=opts.download, device=opts.device)


def quantize_points(
    run: Any, methods: list[QuantMethod], calib: Any, opts: QuantizeOptions, overrides: dict[str, QuantMethod]
) -> list[Any]:
    """``run.quantize`` of ``methods`` (one grid row) with ``overrides`` and the layer, activation, seed and
    progress settings of ``opts``: one point per method."""
    return run.quantize(
        [methods],
        calib,
        overrides=overrides,
        skip=opts.skip,
        fold_bn=opts.fold_bn,
        act_bits=opts.act_bits,
        seed=opts.calib_seed,
        calib_seed=opts.calib_seed,
        progress=opts.progress,
    )


def quantize_run(checkpoint: Path, methods: list[QuantMethod], opts: QuantizeOptions) -> dict[str, Any]:
    """Quantize ``checkpoint`` with every method config, evaluate and pack each, write the JSON.

    Returns ``{"table", "rows", "protocol", "json", "float"}``. The run's data settings apply to calibration and
    evaluation (:class:`~losslab.compress.trained_run.TrainedRun`); the output paths are checked before any work.
    """
    from losslab.compress.trained_run import CalibrationSettings
    from losslab.io import write_json_atomic
    from losslab.tables import format_table

    run = load_run(checkpoint, opts)
    out = opts.out or run.run_dir / "quantize" / ("-".join(dict.fromkeys(m.name for m in methods)) + ".json")
    check_output(out, overwrite=opts.overwrite, what="results JSON", flag="--json")
    names = [f"{run.run_dir.name}.{m.name}.{m.bits}bit.safetensors" for m in methods]
    check_packed_names(opts.save_packed, names, opts.overwrite)
    calib = run.calibration_loader(CalibrationSettings(opts.calib_samples, opts.calib_batch_size, opts.calib_seed))
    float_metrics = run.float_metrics
    points = quantize_points(run, methods, calib, opts, opts.overrides)
    rows, records = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for point, name in zip(points, names):
            path = (opts.save_packed or Path(tmp)) / name
            size, packed_ok = pack_and_check(point.result, path, run)
            row, record = _point_rows(point, run, float_metrics, size, packed_ok)
            records.append({**record, "packed_file": str(path) if opts.save_packed else None})
            rows.append(row)
    headers = ["method", "bits", "float top-1", "quant top-1", "drop", "bits/weight", "packed KiB", "float KiB", "kept"]
    protocol = protocol_text(run, calib, opts)
    write_json_atomic(
        out, {"checkpoint": str(run.checkpoint), "float": float_metrics, "protocol": protocol, "results": records}
    )
    return {
        "table": format_table(headers, rows),
        "rows": rows,
        "protocol": protocol,
        "json": str(out),
        "float": float_metrics,
    }


def _point_rows(point: Any, run: Any, float_metrics: dict[str, float], size: int, packed_ok: bool) -> tuple[list, dict]:
    """One table row and one JSON record of a quantized point."""
    method, result, metrics = point.method, point.result, point.metrics
    drop = float_metrics["top1"] - metrics["top1"]
    row = [
        method_label(method),
        method.bits,
        float_metrics["top1"],
        metrics["top1"],
        drop,
        result.summary()["avg_bits_per_weight"],
        size / 1024,
        float_size_bytes(run.model) / 1024,
        kept_layers(result, method),
    ]
    record = {
        "method": method.describe(),
        "bits": method.bits,
        "quant_top1": metrics["top1"],
        "quant_top5": metrics["top5"],
        "quant_ce": metrics["ce"],
        "drop": drop,
        "packed_bytes": size,
        "packed_matches_fake": packed_ok,
        **result.to_dict(),
    }
    return row, record


def evaluate_packed(
    path: Path,
    split: str = "test",
    *,
    data_dir: Path | None = None,
    dataset: str | None = None,
    img_size: int | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Top-1/top-5/CE of a packed classifier file (``losslab quantize --save-packed``) on ``split``.

    The architecture comes from the file's recipe; the dataset and input size from its calibration record
    (``summary.calibration``: ``name`` ``"<dataset>/train"`` and ``input_shape``) unless given. The model is
    evaluated as packed: dequantized weights, BatchNorm folding and activation quantization as stored.
    """
    import torch

    from losslab.quant import load_packed
    from losslab.quant.packed import read_packed_metadata
    from losslab.train import TrainConfig, evaluate_model
    from losslab.train.build import make_loaders

    calibration = (read_packed_metadata(path).get("summary") or {}).get("calibration") or {}
    name = dataset or str(calibration.get("name") or "").split("/")[0]
    if not name:
        raise ConfigError(f"{str(path)!r} records no calibration dataset; pass --dataset NAME")
    shape = calibration.get("input_shape") or []
    cfg = TrainConfig(dataset=name, img_size=img_size or (shape[-1] if shape else None), progress=False)
    if data_dir is not None:
        cfg = cfg.model_copy(update={"data_dir": data_dir})
    loaders = make_loaders(cfg)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_packed(path).to(device)
    metrics = evaluate_model(model, loaders.test if split == "test" else loaders.val, device)
    return {**metrics, "dataset": name, "split": split, "checkpoint": str(path)}
