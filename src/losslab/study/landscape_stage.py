"""The landscape stage of a study job: probe each trained model once (``landscape:`` in the study file).

The result is the run's ``landscape.json`` (:func:`losslab.landscape.run.probe_run`), stored in the run folder
inside the study folder, where every backend's jobs write their runs. :func:`landscape_done` is what the runner
asks before it plans a job, so a probed model is never probed again and a killed study resumes where it stopped
(probes already stored for the same settings are kept). A model whose loss is NaN at its weights (a diverged run)
gets a ``landscape.json`` holding the error instead, so it is not retried and the report can say why it is absent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from losslab.landscape.probes import ProbeSettings

__all__ = ["landscape_done", "probe_trained_model"]


def _settings(section: dict[str, Any]) -> tuple[ProbeSettings, dict[str, Any]]:
    settings = ProbeSettings(probes=tuple(section["probes"]), top_k=section["top_k"], seed=section["seed"])
    return settings, {"samples": section.get("samples"), "split": "train", "loss": section["loss"], "layer": None}


def landscape_done(run_dir: str | Path, section: dict[str, Any]) -> bool:
    """Whether the run folder holds a landscape result (or a recorded NaN-loss error) for these settings."""
    from losslab.errors import LosslabError
    from losslab.landscape.run import stored_result

    settings, where = _settings(section)
    try:
        return stored_result(run_dir, settings, **where) is not None
    except LosslabError:  # no checkpoint yet: the job trains it first
        return False


def probe_trained_model(run_dir: str | Path, section: dict[str, Any], device: str | None = None) -> dict[str, Any]:
    """Probe the run (reusing what is stored) and return the result; a NaN loss is stored as an error."""
    from losslab.io import write_json_atomic
    from losslab.landscape.operator import NonFiniteLossError
    from losslab.landscape.run import RESULT_NAME, probe_run, result_key
    from losslab.train.checkpoint import checkpoint_path

    settings, where = _settings(section)
    try:
        return probe_run(run_dir, settings, device=device, overwrite=True, **where)
    except NonFiniteLossError as exc:
        ckpt = checkpoint_path(run_dir)
        result = {
            "error": str(exc),
            "settings": result_key(ckpt, settings, **where),
            "probes_done": list(settings.probes),
        }
        write_json_atomic(ckpt.parent.parent / RESULT_NAME, result)
        return result
