"""``losslab landscape RUN``: probe a trained classifier run and store ``landscape.json`` and figures in its folder.

    result = probe_run("runs/digits-small_cnn-ce-s0", ProbeSettings(probes=("eig", "trace")), samples=None)

The probe set is ``samples`` images of the run's ``split`` (default 2,048 of ``train``, or all of it when smaller)
drawn with ``settings.seed``, with the eval transform (no augmentation), through
:func:`losslab.data.calibration_loader` and the run's own data settings; the model is in eval mode. The loss is
``run`` (the objective the run was trained with; its regularizers are not part of it) or ``ce`` (plain cross
entropy, to compare runs trained with different objectives). Softmax gradient tampering has no loss whose gradient
it is on the parameters other than Φ(z) = CE(α·z, q)/α, whose logit gradient softmax(α·z) − q is exactly SGT's, so
``run`` probes Φ for an SGT run.

Everything is checked before any work (checkpoint, parameters, probes, samples, a finite loss); the JSON and the
figures are written atomically at the end. A ``landscape.json`` computed with the same settings, checkpoint and
data is reused: only the probes it lacks are computed. One computed with other settings is replaced only with
``overwrite``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from losslab.errors import ConfigError
from losslab.landscape.operator import DEFAULT_GRAPH_BUDGET, HessianOperator, select_parameters
from losslab.landscape.probes import ProbeSettings, run_probes

DEFAULT_SAMPLES = 2048
RESULT_NAME = "landscape.json"
FIGURE_DIR = "landscape"

__all__ = ["DEFAULT_SAMPLES", "landscape_loss", "probe_batches", "probe_run", "result_key", "stored_result"]


def landscape_loss(cfg: Any, kind: str) -> Callable[[Tensor, Tensor], Tensor]:
    """The probed loss (mean over a batch): ``run`` = the run's objective (SGT: its potential, module docstring),
    ``ce`` = plain cross entropy."""
    if kind == "ce":
        return F.cross_entropy
    if kind != "run":
        raise ConfigError(f"--loss {kind!r}: choose run (the run's training objective) or ce (plain cross entropy)")
    from losslab.objectives import OBJECTIVES, create
    from losslab.train.build import objective_kwargs

    name = OBJECTIVES.resolve(cfg.loss)
    if name == "sgt":
        alpha, smoothing = cfg.sgt_alpha, cfg.label_smoothing
        return lambda z, y: F.cross_entropy(alpha * z, y, label_smoothing=smoothing) / alpha
    objective: nn.Module = create(cfg.loss, **objective_kwargs(cfg))
    return objective


def probe_batches(
    cfg: Any, samples: int | str | None, split: str, seed: int, batch_size: int
) -> tuple[list[tuple[Tensor, Tensor]], int]:
    """(batches, n): ``samples`` images of the run's ``split`` (None: 2,048 or the whole split; ``"all"``)."""
    from losslab.data import calibration_loader, create_dataset

    options = {"download": cfg.download, "img_size": cfg.img_size, "val_fraction": cfg.val_fraction}
    size = len(create_dataset(cfg.dataset, split, data_dir=cfg.data_dir, augment=False, **options))
    if samples is None:
        n = min(DEFAULT_SAMPLES, size)
    elif samples == "all":
        n = size
    else:
        n = int(samples)
        if not 1 <= n <= size:
            raise ConfigError(
                f"--samples {n}: the {split} split of {cfg.dataset!r} has {size} images; pass 1..{size} or all"
            )
    loader = calibration_loader(cfg.dataset, n, batch_size, seed, cfg.data_dir, split=split, **options)
    return [(x, y) for x, y in loader], n


def result_key(
    checkpoint: Path, settings: ProbeSettings, samples: int | str | None, split: str, loss: str, layer: str | None
) -> dict[str, Any]:
    """What a stored result must match to be reused: the settings (probes aside), the data and the checkpoint file
    (path in the run folder, size, modification time), as JSON."""
    key = settings.to_json()
    key.pop("probes")
    stat = checkpoint.stat()
    key |= {
        "samples_asked": samples,
        "split": split,
        "loss": loss,
        "layer": layer,
        "checkpoint": str(checkpoint.relative_to(checkpoint.parent.parent)),
        "checkpoint_bytes": stat.st_size,
        "checkpoint_mtime_ns": stat.st_mtime_ns,
    }
    return json.loads(json.dumps(key, default=str))


def stored_result(
    path: str | Path,
    settings: ProbeSettings,
    samples: int | str | None = None,
    split: str = "train",
    loss: str = "run",
    layer: str | None = None,
) -> dict[str, Any] | None:
    """The run's stored ``landscape.json`` when it was computed with these settings and holds every probe asked
    for, else None (nothing loaded but the JSON)."""
    from losslab.train.checkpoint import checkpoint_path

    ckpt = checkpoint_path(path)
    stored = _stored(ckpt.parent.parent / RESULT_NAME)
    if stored is None or stored.get("settings") != result_key(ckpt, settings, samples, split, loss, layer):
        return None
    return stored if set(settings.probes) <= set(stored.get("probes_done", [])) else None


def probe_run(
    path: str | Path,
    settings: ProbeSettings,
    *,
    samples: int | str | None = None,
    split: str = "train",
    loss: str = "run",
    layer: str | None = None,
    batch_size: int = 256,
    device: str | None = None,
    overwrite: bool = False,
    progress: bool = False,
    write: bool = True,
    graph_budget: int = DEFAULT_GRAPH_BUDGET,
) -> dict[str, Any]:
    """Probe the run at ``path`` (folder or checkpoint) and store the result (module docstring); returns it.
    ``graph_budget``: bytes of first-order graphs the Hessian-vector products may keep (``HessianOperator``)."""
    from losslab.compress.trained_run import default_device
    from losslab.train import load_run

    loaded = load_run(path)
    run_dir = loaded.checkpoint.parent.parent
    dev = default_device(device)
    model = loaded.model.to(dev).eval()
    params = select_parameters(model, layer)
    loss_fn = landscape_loss(loaded.config, loss)
    key = result_key(loaded.checkpoint, settings, samples, split, loss, layer)
    out = run_dir / RESULT_NAME
    batches, n = probe_batches(loaded.config, samples, split, settings.seed, batch_size)
    done = _reusable(out, key, overwrite) if write else None
    op = HessianOperator(
        model, loss_fn, batches, params=params, device=dev, graph_budget=graph_budget, stratum=settings.trace_stratum
    )
    op.check_finite()
    bar = _bar(len(settings.probes), progress, run_dir.name)
    try:
        result = run_probes(op, settings, model=model, done=done, on_probe=bar)
    finally:
        bar.close()
    result |= {"settings": key, "samples": n, "split": split, "loss": loss, "seed": settings.seed, "run": run_dir.name}
    result["hvps"] = result.get("hvps", 0) + op.hvp_count
    if write:
        from losslab.io import write_json_atomic
        from losslab.landscape.figures import save_figures

        result["figures"] = [
            str(p.relative_to(run_dir)) for p in save_figures(result, run_dir / FIGURE_DIR, run_dir.name)
        ]
        write_json_atomic(out, result)
        result["json"] = str(out)
    return result


def _stored(out: Path) -> dict[str, Any] | None:
    """The JSON object stored at ``out``; None when it is missing, unreadable or not an object."""
    try:
        stored = json.loads(out.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return stored if isinstance(stored, dict) else None


def _reusable(out: Path, key: dict[str, Any], overwrite: bool) -> dict[str, Any] | None:
    """The stored result to extend when it has the same settings; an error when it has others (unless overwrite)."""
    stored = _stored(out)
    if stored is not None and stored.get("settings") == key:
        return stored
    if overwrite or not out.is_file():
        return None
    raise ConfigError(
        f"{str(out)!r} holds results for other settings (or another checkpoint); pass --overwrite to replace it, "
        "or --json FILE --no-save to keep it"
    )


class _Bar:
    """A tqdm bar over the probes (a no-op when ``progress`` is off); called with each probe's name."""

    def __init__(self, total: int, progress: bool, desc: str) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc=desc, disable=not progress, leave=False)
        self.started = False

    def __call__(self, name: str) -> None:
        if self.started:
            self.bar.update(1)
        self.started = True
        self.bar.set_postfix_str(name)

    def close(self) -> None:
        self.bar.close()


def _bar(total: int, progress: bool, desc: str) -> _Bar:
    return _Bar(total, progress, desc)
