"""Training: typed configs, the Lightning classifier module, ``fit`` and checkpoint loading.

    from losslab.train import TrainConfig, fit, load_run, evaluate_model
    result = fit(TrainConfig(dataset="digits", loss="root", epochs=5))
    run = load_run(result.run_dir)                  # model (eval mode), config, data spec
    evaluate_model(run.model, test_loader)          # {'top1': ..., 'top5': ..., 'ce': ..., 'n': ...}

``TrainConfig`` imports only pydantic; the training names load Lightning on first use, so validating configs
(``losslab train --help``, study files) stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from losslab.lazy import lazy_exports
from losslab.train.config import TrainConfig

if TYPE_CHECKING:
    from losslab.train.checkpoint import LoadedRun, load_run
    from losslab.train.trainer import RunResult, evaluate_model, fit

__getattr__ = lazy_exports(
    __name__,
    {
        "LoadedRun": "losslab.train.checkpoint",
        "load_run": "losslab.train.checkpoint",
        "RunResult": "losslab.train.trainer",
        "evaluate_model": "losslab.train.trainer",
        "fit": "losslab.train.trainer",
    },
)


__all__ = ["LoadedRun", "RunResult", "TrainConfig", "evaluate_model", "fit", "load_run"]
