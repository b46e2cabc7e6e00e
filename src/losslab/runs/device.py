"""The one device resolver of every experiment: ``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``gpu`` or ``mps``.

::

    device = resolve_device("auto")      # CUDA if there is a GPU, else Apple's MPS if available, else the CPU
    device = resolve_device("cuda:1")    # ConfigError before any work if this machine has no such device

An unknown name or a device this machine does not have is a :class:`ConfigError` naming the flag and the fix
(``--device cuda: this machine has no CUDA device; use --device cpu``).

Under ``torchrun`` every experiment joins the process group the same way (one GPU per process, NCCL; gloo on
CPUs)::

    with torchrun_group(resolve_device("auto")) as device:   # cuda:LOCAL_RANK under torchrun on GPUs
        rank, world = rank_world()                            # (0, 1) without torchrun
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
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


def torchrun_world() -> int:
    """The number of processes a ``torchrun`` launch started (``WORLD_SIZE``; 1 without torchrun)."""
    import os

    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def torchrun_device(device: Any) -> Any:
    """The device of this ``torchrun`` process: ``cuda:LOCAL_RANK`` for a CUDA ``device`` (one GPU per process),
    else ``device`` itself (CPU processes share the machine)."""
    import os

    import torch

    if torchrun_world() == 1 or torch.device(device).type != "cuda":
        return torch.device(device)
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def join_torchrun(device: Any) -> bool:
    """Under ``torchrun`` (``WORLD_SIZE`` > 1), join the default process group: NCCL with ``device``
    (``cuda:LOCAL_RANK``, :func:`torchrun_device`) made current, else gloo (CPU). True when this call started it
    (the caller ends it with ``torch.distributed.destroy_process_group()``)."""
    import torch
    import torch.distributed as dist

    if torchrun_world() == 1 or dist.is_initialized():
        return False
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(torchrun_device(device))
    dist.init_process_group("nccl" if cuda else "gloo")
    return True


@contextmanager
def torchrun_group(device: Any) -> Iterator[Any]:
    """``with torchrun_group(device) as device:`` this process's device, inside the ``torchrun`` process group
    (:func:`join_torchrun`; without torchrun, ``device`` and no group); the group is left at the end."""
    import torch.distributed as dist

    started = join_torchrun(device)
    try:
        yield torchrun_device(device)
        if started:  # every rank leaves together: a rank that tears gloo down while another still talks aborts
            dist.barrier()
    finally:
        if started:
            dist.destroy_process_group()


def check_world_size(checkpoint: dict[str, Any], world: int) -> None:
    """ConfigError when the checkpoint to resume (its ``hyper_parameters["world_size"]``, 1 when absent) was trained
    by another number of torchrun processes than ``world``: an experiment whose batches depend on it (lm finetune,
    translate train) resumes only with the same number."""
    saved = int(checkpoint.get("hyper_parameters", {}).get("world_size", 1))
    if saved != world:
        raise ConfigError(
            f"the run to resume was trained by {saved} process(es) and this launch has {world}; resume it with "
            f"{saved} (torchrun --nproc_per_node {saved}, or no torchrun for 1)"
        )
