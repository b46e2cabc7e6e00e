"""One torch device from a ``--device`` flag, checked before any work (one line and exit 2 when it cannot run)::

torch_device(None)        # cuda if available, else cpu
torch_device("cuda:1")    # ConfigError naming the visible GPUs when there is no second one
"""

from __future__ import annotations

import torch

from losslab.errors import ConfigError


def torch_device(name: str | None, flag: str = "--device") -> torch.device:
    """``name`` as a :class:`torch.device` that exists here (default: CUDA if available, else the CPU); errors name
    ``flag``."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"{flag} {name!r} is not a device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"{flag} {name}: no CUDA device is visible on this machine; use {flag} cpu")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"{flag} {name}: only {count} CUDA device(s) are visible (cuda:0..cuda:{count - 1})")
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ConfigError(f"{flag} {name}: Apple's MPS is not available here; use {flag} cpu")
    elif device.type != "cpu":
        raise ConfigError(f"{flag} {name}: losslab runs on cpu, cuda or mps; use one of them")
    return device
