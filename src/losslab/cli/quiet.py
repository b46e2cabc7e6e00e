"""Silence third-party chatter (transformers' loading bars, Lightning's banners and tips) for quiet commands.

A command run with ``--no-progress`` (or with stderr not a terminal) should print its own result lines and
nothing else; the root ``--verbose`` flag (``losslab --verbose lm finetune ...``) keeps everything::

    with quiet_third_party(progress=cfg.progress):
        result = finetune(cfg)

Only logging levels, ``warnings`` filters and the Hugging Face progress-bar switches change, and each is
restored on exit. Imports nothing heavy: transformers is touched only if something already imported it.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import click

VERBOSE_KEY = "losslab.verbose"
NOISY_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "transformers")
HF_ENV = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
}


def is_verbose() -> bool:
    """Whether the root ``--verbose`` flag was given in the current click invocation (False outside click)."""
    ctx = click.get_current_context(silent=True)
    return bool(ctx is not None and ctx.meta.get(VERBOSE_KEY, False))


@contextmanager
def quiet_third_party(progress: bool, verbose: bool | None = None) -> Iterator[bool]:
    """Inside: Lightning/transformers log only warnings-worth errors, no HF loading bars, no library warnings.

    Does nothing when ``progress`` is True or ``verbose`` (default: the root ``--verbose`` flag). Yields whether
    it silenced anything.
    """
    verbose = is_verbose() if verbose is None else verbose
    if progress or verbose:
        yield False
        return
    saved_env = {key: os.environ.get(key) for key in HF_ENV}
    os.environ.update(HF_ENV)
    saved_levels = {name: logging.getLogger(name).level for name in NOISY_LOGGERS}
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    hf_logging = sys.modules.get("transformers.utils.logging")
    try:
        with warnings.catch_warnings():
            for module in ("lightning", "pytorch_lightning", "transformers", "torch.utils.data"):
                warnings.filterwarnings("ignore", module=module)
            warnings.filterwarnings("ignore", category=UserWarning, message=".*(num_workers|Checkpoint directory)")
            if hf_logging is not None:  # already imported: the environment switches were read already
                hf_logging.disable_progress_bar()
                hf_logging.set_verbosity_error()
            yield True
    finally:
        for name, level in saved_levels.items():
            logging.getLogger(name).setLevel(level)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
