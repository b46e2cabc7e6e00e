"""Run a study: expand its grid, skip what the store already holds, run the rest, store every result.

::

    from losslab.study import load_study_spec, run_study
    outcome = run_study(load_study_spec("studies/quickstart.yaml"), "study_runs/quickstart", workers=2)
    print(outcome.completed, outcome.skipped, outcome.failed)

A job is one training point (train once, then every missing compression point). Each finished job is written
to ``STUDY_DIR/study.db`` in one transaction, so a killed study loses at most its jobs in flight, and rerunning
the same (or an extended) study file finishes only what is missing. A failing job is recorded in the store's
``failures`` table and the other jobs go on; the next run retries it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from losslab.errors import LosslabError
from losslab.io import claim_output_dir, write_yaml_atomic
from losslab.runs.progress import show_progress
from losslab.study.backends import JobFn, check_backend, execute_jobs
from losslab.study.job import JobResult, StudyJob, compression_key, compression_setting, provenance, train_key
from losslab.study.landscape_stage import landscape_done
from losslab.study.spec import StudySpec, load_study_spec
from losslab.study.store import StudyStore

RUNS_FOLDER = "runs"
LOCK_NAME = ".study.lock"


@dataclass
class StudyOutcome:
    """What a :func:`run_study` call did: jobs in the grid, skipped (already stored), completed, failed."""

    study_dir: Path
    total: int
    skipped: int
    completed: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every job of the grid is stored."""
        return not self.failed and self.skipped + self.completed == self.total


#: The files and folders a study folder holds besides its marker.
STUDY_OUTPUTS = ["study.db", "study.yaml", RUNS_FOLDER, LOCK_NAME]


def claim_study_dir(study_dir: Path) -> Path:
    """Claim ``study_dir`` for a study (:func:`losslab.io.claim_output_dir`): new, empty, or a losslab study folder
    (its marker, or a ``study.db`` made before markers existed); a rerun updates its files by design."""
    return claim_output_dir(
        study_dir,
        kind="study",
        outputs=STUDY_OUTPUTS,
        overwrite=True,
        flag="--out-dir",
        adopt=lambda folder: (folder / "study.db").is_file(),
    )


def _run_folder_gone(study_dir: Path, run_dir: str) -> bool:
    """True when a stored run's folder (or its best checkpoint) was deleted: the job must train it again."""
    folder = study_dir / run_dir
    return not (folder / "checkpoints").is_dir() or not any((folder / "checkpoints").glob("*.ckpt"))


def plan_jobs(spec: StudySpec, store: StudyStore, study_dir: Path) -> tuple[list[StudyJob], int]:
    """The jobs still to run (grid order) and the total number of jobs in the grid."""
    setting = compression_setting(spec.file.compress)
    points = spec.compression_points()
    stored_runs = {r["key"]: r["run_dir"] for r in store.train_runs()}
    done = store.done_compression_keys()
    compress = spec.file.compress.model_dump(mode="json")
    landscape = spec.file.landscape.model_dump(mode="json") if spec.file.landscape is not None else None
    jobs = []
    train_points = spec.train_points()
    for config in train_points:
        key = train_key(config)
        missing = tuple((k, p) for p in points if (k := compression_key(key, p, setting)) not in done)
        run_dir = study_dir.resolve() / (stored_runs.get(key) or f"{RUNS_FOLDER}/{key}")
        retrain = key in stored_runs and _run_folder_gone(study_dir.resolve(), stored_runs[key])
        if retrain:  # the stored compressions belong to the deleted weights: train again and redo every point
            missing = tuple((compression_key(key, p, setting), p) for p in points)
        probe = landscape if landscape is not None and (retrain or not landscape_done(run_dir, landscape)) else None
        if key in stored_runs and not missing and probe is None:
            continue
        needs_training = key not in stored_runs or retrain
        jobs.append(StudyJob(key, config, str(run_dir), needs_training, missing, compress, spec.name, probe))
    return jobs, len(train_points)


@contextmanager
def _study_lock(study_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the study folder so two runs never write the same jobs."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; running one study twice at once is the user's call
        yield
        return
    with open(study_dir / LOCK_NAME, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise LosslabError(
                f"another `losslab study run` is using {str(study_dir)!r}; wait for it to finish (or stop it)"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def varied_keys(configs: list[dict[str, Any]]) -> list[str]:
    """The config keys whose values differ between ``configs`` (what tells the jobs of a grid apart)."""
    keys = list(dict.fromkeys(k for c in configs for k in c))
    return [k for k in keys if len({repr(c.get(k)) for c in configs}) > 1]


def job_line(job: StudyJob, result: JobResult, varied: list[str], done: int, total: int) -> str:
    """One line for a finished job: position, id, what it trains, float top-1, its compressions, time taken."""
    what = ", ".join(f"{k}={job.config.get(k)}" for k in varied) or job.study
    parts = [f"[{done}/{total}] job {job.train_key[:8]} ({what})"]
    seconds = sum(c.quant_time_s + c.eval_time_s for c in result.compressions)
    if result.train is not None:
        parts.append(f"float top-1 {result.train.float_metrics.get('top1', float('nan')):.2f}%")
        seconds += result.train.train_time_s + result.train.eval_time_s
    else:
        parts.append("stored run")
    if result.compressions:
        worst = min(result.compressions, key=lambda c: c.metrics.get("top1", float("inf")))
        parts.append(
            f"{len(result.compressions)} compressions (lowest top-1 {worst.metrics.get('top1', float('nan')):.2f}% "
            f"at {worst.point.label} {worst.point.bits}-bit)"
        )
    return ": ".join(parts[:2]) + (", " + ", ".join(parts[2:]) if parts[2:] else "") + f", {seconds:.1f} s"


def _default_job_fn() -> JobFn:
    from losslab.study.pipeline import train_and_compress

    return train_and_compress


def run_study(
    spec: StudySpec | str | Path,
    out_dir: str | Path | None = None,
    *,
    workers: int | None = None,
    backend: str = "local",
    ray_address: str | None = None,
    ray_resources: dict[str, float] | None = None,
    job_fn: JobFn | None = None,
    progress: bool | None = None,
) -> StudyOutcome:
    """Run every missing job of ``spec`` into ``out_dir`` (default: the spec's ``out_dir`` or study_runs/NAME).

    ``workers``: parallel jobs (local process pool; on Ray, at most this many in flight). ``job_fn``: what one
    job does, default :func:`losslab.study.pipeline.train_and_compress`. ``ray_address``, ``ray_resources``: see
    :func:`losslab.study.backends.execute_jobs`. ``progress``: a progress bar on stderr
    (default: when stderr is a terminal).
    """
    check_backend(backend, workers)
    if not isinstance(spec, StudySpec):
        spec = load_study_spec(spec)
    study_dir = Path(out_dir) if out_dir is not None else spec.default_out_dir()
    claim_study_dir(study_dir)  # a user's folder, a read-only or full disk fail here, not after the first job
    job_fn = job_fn or _default_job_fn()
    with _study_lock(study_dir), StudyStore.create(study_dir) as store:
        store.record_spec(spec.name, spec.to_dict(), str(spec.source) if spec.source else None, provenance())
        write_yaml_atomic(study_dir / "study.yaml", spec.to_dict())
        jobs, total = plan_jobs(spec, store, study_dir)
        outcome = StudyOutcome(study_dir, total, total - len(jobs))
        show = show_progress(progress)  # the one decision (losslab.runs.progress): a bar on a terminal
        varied = varied_keys(spec.train_points())
        from tqdm.auto import tqdm

        with tqdm(
            total=total,
            initial=outcome.skipped,
            unit="job",
            desc=spec.name,
            disable=not show,
            file=sys.stderr,
            dynamic_ncols=True,
        ) as bar:
            for job, result, tb in execute_jobs(
                jobs, job_fn, backend=backend, workers=workers, ray_address=ray_address, ray_resources=ray_resources
            ):
                if isinstance(result, JobResult):
                    store.write_job(result)
                    outcome.completed += 1
                    if not show:  # no bar (stderr is a log or a pipe): one line per finished job instead
                        done = outcome.skipped + outcome.completed + len(outcome.failed)
                        print(job_line(job, result, varied, done, total), file=sys.stderr, flush=True)
                else:
                    message = f"{type(result).__name__}: {result}"
                    store.record_failure(job.train_key, message, tb)
                    outcome.failed.append((job.train_key, message))
                    bar.write(f"job {job.train_key} failed: {message}", file=sys.stderr)
                bar.update(1)
                bar.set_postfix(failed=len(outcome.failed), refresh=False)
    return outcome
