"""The runtime every experiment shares: run folder, checkpoints, history, throughput, progress, device, threads.

An experiment (``losslab train``, ``gan train``, ``translate train``, ``lm finetune``, ``logreg sweep``) writes
one run-folder layout (``config.yaml``, ``history.json``, ``metrics.csv``, ``checkpoints/last.ckpt``,
``result.json``) with the same guarantees (docs/security.md)::

    from losslab import runs

    spec = runs.RunSpec(out_dir=out, run_name=name, resume=resume, overwrite=overwrite,
                        config=config_dict, match_keys=("model", "dataset"), epochs=epochs)
    with runs.claim(spec) as run:                      # confined name, lock, marker, staged --overwrite, resume checks
        work = run.create(); run.write_config()
        state = runs.load(run.resume_ckpt, into={"model": model, "opt": opt}) if run.resume_ckpt else None
        history = runs.History(work, keep_before=start)
        progress = runs.Progress(runs.progress_mode(progress_flag), epochs)
        ...
        history.append(row); runs.save(run.last_ckpt, {"model": model, "opt": opt, "epoch": epoch})
        run.write_result(result); run.commit()

Submodules import torch only inside functions, so ``import losslab.runs`` stays cheap for the CLI.
"""

from losslab.runs.checkpoint import check, load, save
from losslab.runs.device import mps_available, resolve_device
from losslab.runs.folder import (
    CONFIG,
    HISTORY,
    LAST_CKPT,
    MARKER,
    METRICS,
    RESULT,
    RunFolder,
    RunSpec,
    check_run_name,
    claim,
    is_child_rank,
    safe_run_name,
)
from losslab.runs.history import History, Throughput
from losslab.runs.progress import Progress, progress_mode, show_progress
from losslab.threads import thread_report

__all__ = [
    "CONFIG",
    "HISTORY",
    "LAST_CKPT",
    "MARKER",
    "METRICS",
    "RESULT",
    "History",
    "Progress",
    "RunFolder",
    "RunSpec",
    "Throughput",
    "check",
    "check_run_name",
    "claim",
    "is_child_rank",
    "load",
    "mps_available",
    "progress_mode",
    "resolve_device",
    "safe_run_name",
    "save",
    "show_progress",
    "thread_report",
]
