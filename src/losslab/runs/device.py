"""The one device resolver of every experiment: ``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``gpu`` or ``mps``.

::

    device = resolve_device("auto")      # CUDA if there is a GPU, else Apple's MPS if available, else the CPU
    device = resolve_device("cuda:1")    # ConfigError before any work if this machine has no such device

An unknown name or a device this machine does not have is a :class:`ConfigError` naming the flag and the fix
(``--device cuda: this machine has no CUDA device; use --device cpu``).
"""

from __future__ import annotations

import re
from typing import Any

from losslab.errors import ConfigError

DEVICE_NAMES = ("auto", "cpu", "cuda", "cuda:N", "gpu", "mps")
_CUDA = re.compile(r"(?:cuda|gpu)(?::(\d+))?")


def mps_available() -> bool:
    """Whether Apple's GPU (MPS) can be used here."""
    import torch

    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def resolve_device(name: str, flag: str = "--device") -> Any:
    """The ``torch.device`` for ``name`` (see the module doc); ``flag`` is the option named in errors."""
    import torch

    spelled = str(name).strip().lower()
    if spelled == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("mps") if mps_available() else torch.device("cpu")
    if spelled == "cpu":
        return torch.device("cpu")
    if spelled == "mps":
        if not mps_available():
            raise ConfigError(f"{flag} mps: this machine has no usable Apple GPU (MPS); use {flag} cpu or auto")
        return torch.device("mps")
    match = _CUDA.fullmatch(spelled)
    if match is None:
        raise ConfigError(f"{flag} {name}: not a device; use one of {', '.join(DEVICE_NAMES)}")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise ConfigError(f"{flag} {name}: this machine has no CUDA device; use {flag} cpu")
    index = int(match.group(1)) if match.group(1) is not None else torch.cuda.current_device()
    if index >= count:
        raise ConfigError(
            f"{flag} {name}: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1}); pick one of those"
        )
    return torch.device("cuda", index)
