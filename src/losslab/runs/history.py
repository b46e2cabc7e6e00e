"""What a run records while it trains: the per-epoch history and the throughput clock.

::

    history = History(run.work, keep_before=start_epoch)     # a resume keeps the rows of the epochs it keeps
    history.append({"epoch": e, "step": step, "train/loss": ..., "val/acc": ...})   # history.json + metrics.csv
    history.append({}, extra=[{"epoch": last, "step": step, **test_metrics}])         # the final test row (CSV only)

    clock = Throughput(started=time.perf_counter(), device=device)
    clock.step(); clock.count(batch_size); ...; clock.stop()   # per training batch / at the end of the epoch's training
    clock.record()   # {"items_per_s", "first_step_s", "first_step_unix", "threads": thread choice}, for result.json
"""

from __future__ import annotations

import csv as csv_module
import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from losslab.runs.folder import HISTORY, METRICS


class History:
    """``history.json`` (one row per epoch) and, with ``csv``, ``metrics.csv`` (the same rows plus extra rows such
    as the final test row), each rewritten atomically on every append; a resumed run keeps the rows of the epochs
    before the one it restarts (``keep_before``), so a kill between a checkpoint and its row loses nothing: the
    resume redoes that epoch and writes its row again."""

    def __init__(self, run_dir: Path, keep_before: int, csv: bool = True, write: bool = True) -> None:
        self.json_path = Path(run_dir) / HISTORY
        self.csv_path = Path(run_dir) / METRICS if csv else None
        self.write = write  # False on a DDP rank other than 0: the rows are kept, the files are rank 0's
        self.rows: list[dict[str, Any]] = []
        if keep_before > 0 and self.json_path.is_file():
            self.rows = [row for row in json.loads(self.json_path.read_text()) if row["epoch"] < keep_before]

    def append(self, row: dict[str, Any], extra: Iterable[dict[str, Any]] = ()) -> None:
        """Add ``row`` (skipped when empty) and rewrite both files; ``extra`` rows go to the CSV only."""
        self.extend([row] if row else [], extra)

    def extend(self, rows: Iterable[dict[str, Any]], extra: Iterable[dict[str, Any]] = ()) -> None:
        """Add several rows with one rewrite of each file (a sweep's group of fits)."""
        from losslab.io import atomic_path, write_json_atomic

        new = list(rows)
        self.rows.extend(new)
        if not self.write:
            return
        if new:
            write_json_atomic(self.json_path, self.rows)
        if self.csv_path is None:
            return
        rows = [*self.rows, *extra]
        keys = ["epoch", "step", *sorted({k for r in rows for k in r} - {"epoch", "step"})]
        with atomic_path(self.csv_path) as tmp, open(tmp, "w", newline="") as fh:
            writer = csv_module.DictWriter(fh, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)


class Throughput:
    """Training items (images, sequences, fits) per second, evaluation excluded, and the time of the first training
    step: ``step`` at the start of each training batch, ``count`` its items, ``stop`` when the epoch's training
    part ends. On CUDA the clock synchronizes the device at start and stop (asynchronous kernels are counted)."""

    def __init__(self, started: float, device: Any | None = None) -> None:
        self.started, self.device = started, device
        self.first_step_s: float | None = None
        self.first_step_unix: float | None = None
        self.images, self.seconds = 0, 0.0
        self._t0: float | None = None

    def _now(self) -> float:
        if self.device is not None and self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def step(self) -> None:
        if self.first_step_s is None:
            self.first_step_s = time.perf_counter() - self.started
            self.first_step_unix = time.time()
        if self._t0 is None:
            self._t0 = self._now()

    def count(self, items: int) -> None:
        self.images += items

    def stop(self) -> None:
        if self._t0 is not None:
            self.seconds += self._now() - self._t0
            self._t0 = None

    @property
    def images_per_s(self) -> float:
        """Items per second of training time (NaN before the first counted batch)."""
        return self.images / self.seconds if self.seconds > 0 else float("nan")

    def record(self) -> dict[str, Any]:
        """The speed entry of ``result.json``: items/s, time to the first step, and the thread choice."""
        from losslab.threads import thread_report

        return {
            "items_per_s": self.images_per_s,
            "first_step_s": self.first_step_s,
            "first_step_unix": self.first_step_unix,
            "threads": thread_report(),
        }
