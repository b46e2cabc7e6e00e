"""How many CPU threads torch uses: chosen from the CPUs this process may really use, overridable.

On a shared or quota-limited machine torch's default (one thread per visible core) oversubscribes: with 2
threads on a 2-core machine where another process keeps one core busy, a training step can be many times slower
than with 1 thread (OpenMP threads spin-wait on each other). The policy, first match wins:

1. an explicit request (``--threads N``, ``TrainConfig.threads``),
2. ``LOSSLAB_THREADS``, then ``OMP_NUM_THREADS`` from the environment,
3. automatic: the CPUs this process may run on (``os.sched_getaffinity``), capped by a cgroup CPU quota
   (``cpu.max`` v2, ``cpu.cfs_quota_us`` v1), minus the cores other processes keep busy (1-minute load average
   beyond our own share), at least 1.

``configure_threads`` must run before ``import torch`` to size OpenMP's pool (the CLI's ``main`` calls it first);
it also sets ``OMP_WAIT_POLICY=PASSIVE`` (idle OpenMP threads sleep instead of spinning) unless the environment
says otherwise, and calls ``torch.set_num_threads`` if torch is already loaded::

    from losslab.threads import configure_threads, thread_report
    configure_threads()              # or configure_threads(4)
    thread_report()                  # {'threads': 1, 'source': 'auto', 'cpus': 2, 'quota': None, ...}
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

from losslab.errors import ConfigError

ENV = "LOSSLAB_THREADS"
_CHOICE: dict[str, object] = {}


def affinity_cpus() -> int:
    """CPUs this process may be scheduled on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cgroup_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The cgroup CPU quota in CPUs (e.g. 1.5), None when unlimited or unknown."""
    try:
        v2 = root / "cpu.max"
        if v2.is_file():
            quota, period = v2.read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        v1q, v1p = root / "cpu" / "cpu.cfs_quota_us", root / "cpu" / "cpu.cfs_period_us"
        if v1q.is_file() and v1p.is_file():
            quota_us = int(v1q.read_text())
            return None if quota_us <= 0 else quota_us / int(v1p.read_text())
    except (OSError, ValueError):
        return None
    return None


def busy_cpus() -> float:
    """Cores kept busy by other processes: the 1-minute load average (0 where unknown)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def auto_threads(cpus: int | None = None, quota: float | None = None, load: float | None = None) -> int:
    """Threads for the CPUs we may use (``cpus``, capped by ``quota``) minus the busy ones (``load``)."""
    cpus = affinity_cpus() if cpus is None else cpus
    quota = cgroup_quota() if quota is None else quota
    load = busy_cpus() if load is None else load
    usable = min(cpus, math.floor(quota)) if quota is not None else cpus
    idle = math.floor(usable - load + 0.5)  # cores nobody else is using (load rounded)
    return max(1, min(usable, idle))


def _env_threads(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or not value.strip():
        return None
    try:
        n = int(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not a thread count: set a positive integer or unset it") from None
    if n < 1:
        raise ConfigError(f"{name}={value!r} is not allowed: set a positive integer or unset it")
    return n


def choose_threads(requested: int | None = None) -> tuple[int, str]:
    """(threads, where the number came from: ``flag``, ``LOSSLAB_THREADS``, ``OMP_NUM_THREADS`` or ``auto``)."""
    if requested is not None:
        if requested < 1:
            raise ConfigError(f"threads={requested} is not allowed: at least 1")
        return requested, "flag"
    for name in (ENV, "OMP_NUM_THREADS"):
        n = _env_threads(name)
        if n is not None:
            return n, name
    return auto_threads(), "auto"


def configure_threads(requested: int | None = None) -> int:
    """Choose the thread count and apply it (environment for OpenMP/MKL, torch if loaded); returns it.

    Without ``requested``, a choice made earlier in this process (the CLI's, before torch loaded) is kept.
    """
    if requested is None and _CHOICE and os.environ.get("OMP_NUM_THREADS") == str(_CHOICE["threads"]):
        n, source = int(_CHOICE["threads"]), str(_CHOICE["source"])  # type: ignore[call-overload]
    else:
        n, source = choose_threads(requested)
    os.environ["OMP_NUM_THREADS"] = str(n)
    os.environ.setdefault("MKL_NUM_THREADS", str(n))
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
    _CHOICE.update(
        threads=n,
        source=source,
        cpus=affinity_cpus(),
        quota=cgroup_quota(),
        load=round(busy_cpus(), 2),
        omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"),
    )
    return n


def max_threads() -> int:
    """The most torch threads losslab accepts: 4 per CPU of this machine (more only oversubscribes)."""
    return 4 * max(1, os.cpu_count() or 1)


def threads_from_argv(argv: list[str]) -> int | None:
    """The value of ``--threads N`` / ``--threads=N`` in a command line (None when absent, not a number or above
    :func:`max_threads`; the command's own validation then names the problem)."""
    for i, arg in enumerate(argv):
        value = arg.split("=", 1)[1] if arg.startswith("--threads=") else None
        if arg == "--threads" and i + 1 < len(argv):
            value = argv[i + 1]
        if value is not None:
            return int(value) if value.isdigit() and 0 < int(value) <= max_threads() else None
    return None


def thread_report() -> dict[str, object]:
    """What the last :func:`configure_threads` chose and why, plus torch's current count (for result.json)."""
    report = dict(_CHOICE)
    if "torch" in sys.modules:
        report["torch_threads"] = sys.modules["torch"].get_num_threads()
    return report
