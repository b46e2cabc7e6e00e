"""Training: typed configs, the Lightning classifier module, ``fit`` and checkpoint loading.

from losslab.train import TrainConfig, fit, load_run, evaluate_model
result = fit(TrainConfig(dataset="digits", loss="root", epochs=5))
run = load_run(result.run_dir)                  # model (eval mode), config, data spec
evaluate_model(run.model, test_loader)          # {'top1': ..., 'top5': ..., 'ce': ..., 'n': ...}
"""

from losslab.train.checkpoint import LoadedRun, load_run
from losslab.train.config import TrainConfig
from losslab.train.fit import RunResult, evaluate_model, fit

__all__ = ["LoadedRun", "RunResult", "TrainConfig", "evaluate_model", "fit", "load_run"]
