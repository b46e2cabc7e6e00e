"""Where study jobs run: in this process, in a local process pool, or on a Ray cluster.

Each backend takes the same jobs and job function and yields ``(job, result_or_error, traceback_text)`` as jobs
finish, in completion order; the runner stores each result as it arrives::

    for job, outcome, tb in execute_jobs(jobs, train_and_compress, backend="local", workers=2):
        ...

``ray`` connects to the cluster at ``ray_address`` (``ray start --head`` on the head node, then
``ray://HOST:10001`` or ``auto``), or uses an already initialised Ray (tests call ``ray.init`` first), or starts a
local Ray instance. Jobs return their results to this process, so only this machine writes the study database;
checkpoints are written under the study folder, which compress-only reruns expect to be on a shared filesystem.

Local pool workers die with the study process: on Linux each asks the kernel for SIGKILL when its parent dies
(``prctl(PR_SET_PDEATHSIG)``); elsewhere a watchdog thread in each worker exits when the parent is gone. A
``kill -9`` of ``losslab study run --workers N`` therefore leaves no worker behind.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context
from typing import Any

from losslab.errors import ConfigError
from losslab.study.job import JobResult, StudyJob

JobFn = Callable[[StudyJob], JobResult]
Outcome = tuple[StudyJob, JobResult | BaseException, str]
BACKENDS = ("local", "ray")


def check_backend(backend: str, workers: int | None) -> None:
    """Raise :class:`ConfigError` for an unknown backend or a worker count below 1."""
    if backend not in BACKENDS:
        raise ConfigError(f"backend={backend!r} is not allowed: choose one of {', '.join(BACKENDS)}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ConfigError(f"workers={workers!r} must be an integer >= 1 (parallel jobs)")


def execute_jobs(
    jobs: Sequence[StudyJob],
    job_fn: JobFn,
    *,
    backend: str = "local",
    workers: int | None = None,
    ray_address: str | None = None,
    ray_resources: dict[str, float] | None = None,
) -> Iterator[Outcome]:
    """Run ``job_fn`` on every job with the chosen backend; yield each outcome as soon as it is known.

    ``workers``: jobs in parallel; default 1 locally (in this process) and every job at once on Ray (the cluster
    schedules them). ``ray_resources``: what each Ray job reserves, default ``{"num_cpus": 1}``; ask for
    ``{"num_gpus": 1}`` on a GPU cluster, since Ray hides GPUs from jobs that did not reserve one.
    """
    check_backend(backend, workers)
    if backend == "ray":
        yield from _run_ray(jobs, job_fn, workers, ray_address, ray_resources or {"num_cpus": 1})
    elif workers is None or workers == 1:
        yield from _run_inline(jobs, job_fn)
    else:
        yield from _run_pool(jobs, job_fn, workers)


def _format(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def _run_inline(jobs: Sequence[StudyJob], job_fn: JobFn) -> Iterator[Outcome]:
    for job in jobs:
        try:
            result: JobResult | BaseException = job_fn(job)
            tb = ""
        except Exception as exc:
            result, tb = exc, _format(exc)
        yield job, result, tb


PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def die_with_parent(parent_pid: int, poll_s: float = 1.0) -> None:
    """Make this process end when ``parent_pid`` ends: a kernel parent-death signal on Linux, else a watchdog."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
                if os.getppid() != parent_pid:  # the parent died before the signal was armed
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(1)
            time.sleep(poll_s)

    threading.Thread(target=watch, name="losslab-parent-watchdog", daemon=True).start()


def _init_worker(threads: int, parent_pid: int | None = None) -> None:
    """Die with the study process; share the CPUs between workers (threads each), whether or not torch is loaded."""
    if parent_pid is not None:
        die_with_parent(parent_pid)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


def _run_pool(jobs: Sequence[StudyJob], job_fn: JobFn, workers: int) -> Iterator[Outcome]:
    threads = max(1, (os.cpu_count() or 1) // workers)
    with ProcessPoolExecutor(
        workers, mp_context=get_context("spawn"), initializer=_init_worker, initargs=(threads, os.getpid())
    ) as pool:
        pending = {pool.submit(job_fn, job): job for job in jobs}
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    job = pending.pop(future)
                    exc = future.exception()
                    yield (job, exc, _format(exc)) if exc is not None else (job, future.result(), "")
        finally:
            for future in pending:
                future.cancel()


def _call(job_fn: JobFn, job: StudyJob) -> JobResult:
    return job_fn(job)


def _run_ray(
    jobs: Sequence[StudyJob], job_fn: JobFn, workers: int | None, address: str | None, resources: dict[str, float]
) -> Iterator[Outcome]:
    try:
        import ray
    except ImportError:
        raise ConfigError("backend='ray' needs Ray: pip install 'losslab[ray]'") from None
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        remote: Any = ray.remote(max_retries=0, **resources)(_call)
        queue = list(jobs)
        window = workers or len(queue)
        pending: dict[Any, StudyJob] = {}
        while queue or pending:
            while queue and len(pending) < window:
                job = queue.pop(0)
                pending[remote.remote(job_fn, job)] = job
            done, _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(done[0])
            try:
                yield job, ray.get(done[0]), ""
            except ray.exceptions.RayError as exc:
                yield job, getattr(exc, "cause", None) or exc, str(exc)
    finally:
        if started:
            ray.shutdown()
