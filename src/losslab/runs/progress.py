"""The one progress decision of a run, and the display it picks.

``--progress`` forces a tqdm bar, ``--no-progress`` (quiet) shows nothing; by default a terminal on stderr gets a
bar and anything else (a log file, a CI job, a pipe) one line per epoch, so logs stay readable::

    mode = progress_mode(cfg.progress)            # "bar" | "lines" | "off"
    progress = Progress(mode, total_epochs)
    for batch in progress.batches(loader, epoch): ...
    progress.close({"train/loss": 0.31, "val/acc": 91.2})   # ends the bar / prints "epoch 3/10: loss 0.31 val_acc 91.2"
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Literal

Mode = Literal["bar", "lines", "off"]

#: The row entries shown at the end of an epoch, and their short names.
SUMMARY = {"train/loss": "loss", "val/acc": "val_acc", "val/loss": "val_loss"}


def progress_mode(progress: bool | None, stream: Any = None) -> Mode:
    """``bar`` when asked for (True) or, by default (None), when ``stream`` (stderr) is a terminal; ``off`` when
    quiet (False); ``lines`` (one line per epoch) by default on a stream that is not a terminal."""
    if progress is not None:
        return "bar" if progress else "off"
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return "bar" if callable(isatty) and isatty() else "lines"


def show_progress(progress: bool | None) -> bool:
    """Whether a bar is shown (:func:`progress_mode` is ``bar``): for displays that have no per-epoch line."""
    return progress_mode(progress) == "bar"


class Progress:
    """One tqdm bar per epoch over the training batches (``bar``), closed with the epoch's summary; or that summary
    as one line on stderr (``lines``); or nothing (``off``)."""

    def __init__(self, mode: Mode | bool, total_epochs: int, summary: Mapping[str, str] = SUMMARY) -> None:
        self.mode: Mode = ("bar" if mode else "off") if isinstance(mode, bool) else mode
        self.total_epochs, self.summary = total_epochs, summary
        self.bar: Any | None = None
        self.epoch: int | None = None

    @property
    def on(self) -> bool:
        return self.mode == "bar"

    def batches(self, loader: Iterable[Any], epoch: int) -> Iterator[Any]:
        self.epoch = epoch
        if self.mode != "bar":
            yield from loader
            return
        from tqdm.auto import tqdm

        total = len(loader) if hasattr(loader, "__len__") else None
        self.bar = tqdm(total=total, desc=f"epoch {epoch + 1}/{self.total_epochs}", dynamic_ncols=True)
        for batch in loader:
            yield batch
            self.bar.update(1)

    def close(self, row: Mapping[str, Any]) -> None:
        """End the epoch's display with ``row``'s summary entries (an empty row ends a bar without a line)."""
        shown = {short: f"{row[k]:.4g}" for k, short in self.summary.items() if isinstance(row.get(k), int | float)}
        if self.bar is not None:
            self.bar.set_postfix(shown, refresh=True)
            self.bar.close()
            self.bar = None
        elif self.mode == "lines" and row and self.epoch is not None:
            values = " ".join(f"{name} {value}" for name, value in shown.items())
            print(f"epoch {self.epoch + 1}/{self.total_epochs}: {values}".rstrip(), file=sys.stderr, flush=True)
