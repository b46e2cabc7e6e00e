"""The run folder of every losslab experiment: where it is, who may write it, and how ``--overwrite`` replaces it.

An experiment describes its run with a :class:`RunSpec` (out_dir, run_name, resume, overwrite, its config and the
config keys a resume must not change) and trains inside :func:`claim`. Every run folder has one layout::

    NAME/.losslab-run            marker: losslab made this folder (only such folders are replaced)
    NAME/config.yaml             the run's config (RunFolder.write_config)
    NAME/history.json            one row per epoch (losslab.runs.history.History)
    NAME/metrics.csv             the same rows (+ the final test row) as CSV
    NAME/checkpoints/last.ckpt   the state to resume from (losslab.runs.checkpoint.save)
    NAME/result.json             written last: its presence means "finished" (RunFolder.write_result)

Rules (checked before any work):

- ``run_name`` is one plain folder name inside ``out_dir``: no path separators, not ``.``/``..``, not absolute.
- A lock (``fcntl.flock`` on ``out_dir/.RUN_NAME.lock``) is held for the whole run: a second process that
  trains, resumes or overwrites the same run fails at once with a clear error.
- A folder that holds files is never reused: a killed run is continued with ``--resume``, a finished one is kept.
- ``--overwrite`` replaces only a folder that losslab made (it holds the marker file ``.losslab-run``). The new
  run trains in a hidden sibling folder; only when it has finished is the old folder swapped out and removed, so a
  failure at any point (bad option, missing data, a crash, a full disk) leaves the old run intact.
- ``--resume`` continues only an unfinished run (no ``result.json``): a finished run's schedule has ended, so
  training it further would need a new schedule; start a new run for that.
- An ``--overwrite`` killed part-way leaves hidden siblings: ``.NAME.new`` (the new run) and, between the two
  renames of the swap, ``.NAME.old-PID`` (the old run) with no ``NAME``. The next claim of the name (train,
  resume or overwrite) repairs this under the lock before anything else (:func:`recover_interrupted_swap`): a
  finished new run (it holds ``result.json``) completes the swap; otherwise the old run is put back and the
  unfinished new one removed. Each step is said on stderr; a finished run is never removed silently.

::

    spec = RunSpec(out_dir=out, run_name="lr0.1", resume=None, overwrite=False, config=cfg, match_keys=("model",))
    with claim(spec) as run:             # validates, locks; creates nothing yet
        work = run.create()              # the folder training writes to (the run folder or its staging sibling)
        run.write_config()               # config.yaml
        ...                              # train into ``work``; run.resume_ckpt is the checkpoint to continue from
        run.write_result(result)         # result.json: the run is finished
        run.commit()                     # swap a staged run into place
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from losslab.errors import ConfigError, OutputError
from losslab.io import check_writable, load_yaml_file, write_json_atomic, write_yaml_atomic

MAX_EPOCHS = 100_000
MARKER = ".losslab-run"
CONFIG = "config.yaml"
HISTORY = "history.json"
METRICS = "metrics.csv"
LAST_CKPT = "checkpoints/last.ckpt"
RESULT = "result.json"
WORK_ENV = "LOSSLAB_RUN_WORK_DIR"  # set by rank 0 so that the DDP processes it launches write the same folder


def is_child_rank() -> bool:
    """True in a distributed process other than the global rank 0 (they neither lock nor create the folder)."""
    return any(os.environ.get(name, "0") not in ("", "0") for name in ("RANK", "LOCAL_RANK", "NODE_RANK"))


#: Longest run name in bytes: ``.NAME.old-PID`` (PID up to 10 digits) must still fit 255 bytes.
MAX_RUN_NAME_BYTES = 255 - len(".") - len(".old-") - 10


def check_run_name(name: str) -> str:
    """``name`` if it is one plain folder name (no separators, not ``.``/``..``, not absolute), else ConfigError."""
    bad = (
        not name
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or "\0" in name
        or (os.altsep is not None and os.altsep in name)
        or os.path.isabs(name)
    )
    if bad:
        raise ConfigError(
            f"run_name={name!r} is not allowed: the run name is one folder name inside --out-dir (letters, digits, "
            "'-', '_', '.'; no '/', not '.' or '..'); put the parent folders in --out-dir instead"
        )
    if len(name.encode()) > MAX_RUN_NAME_BYTES:
        raise ConfigError(
            f"run_name is {len(name.encode())} bytes; at most {MAX_RUN_NAME_BYTES} are allowed so that the names "
            "losslab derives from it (.NAME.new, .NAME.old-PID, .NAME.lock) fit a file name (255 bytes): "
            "choose a shorter --run-name"
        )
    return name


def safe_run_name(name: str) -> str:
    """A default run name built from config values, with path separators replaced, then checked."""
    return check_run_name(re.sub(r"[/\\:]", "_", name))


@dataclass(frozen=True)
class RunSpec:
    """What an experiment tells :func:`claim` about its run.

    ``config`` is written to ``config.yaml``; a ``--resume`` whose config changes one of ``match_keys`` (the
    keys that fix the shapes stored in the checkpoint) is refused. ``epochs`` (when given) must be at most
    :data:`MAX_EPOCHS`. ``validate(checkpoint_path)`` checks a resume checkpoint before any work (default: the
    safe loader reads it as a dict, :func:`losslab.runs.checkpoint.check`).
    """

    out_dir: Path
    run_name: str
    resume: Path | None = None
    overwrite: bool = False
    config: Mapping[str, Any] = field(default_factory=dict)
    match_keys: tuple[str, ...] = ()
    epochs: int | None = None
    validate: Callable[[Path], Any] | None = None

    def target(self) -> Path:
        """The run folder a new run writes (``out_dir/run_name``, the name checked)."""
        return Path(self.out_dir) / check_run_name(self.run_name)


def is_losslab_run(folder: Path) -> bool:
    """True when ``folder`` is a run folder made by losslab (it holds the marker file)."""
    return (folder / MARKER).is_file()


def resume_run_dir(path: str | os.PathLike[str]) -> Path:
    """The run folder ``--resume PATH`` names (a run folder, or a checkpoint file in one); it need not exist."""
    path = Path(path)
    if path.is_dir() or (not path.exists() and path.suffix != ".ckpt"):
        return path
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def stored_config(resume: str | os.PathLike[str], fix: str = "it is not a run to resume") -> dict[str, Any]:
    """The config the run ``--resume`` names stored (its ``config.yaml``), read with the bounded YAML loader
    (:func:`losslab.io.load_yaml_file`); a :class:`ConfigError` ending in ``fix`` when it is missing, unreadable or
    not a mapping."""
    stored_file = resume_run_dir(resume) / CONFIG
    if not stored_file.is_file():
        raise ConfigError(f"{str(stored_file)!r} does not exist; {fix}")
    try:
        stored = load_yaml_file(stored_file, what="run config")
    except OSError as err:
        raise ConfigError(f"{str(stored_file)!r} cannot be read ({type(err).__name__}); {fix}") from None
    if not isinstance(stored, dict):
        raise ConfigError(f"{str(stored_file)!r} is not a losslab run config; {fix}")
    return stored


def resolve_resume(path: str | os.PathLike[str], validate: Callable[[Path], Any] | None = None) -> tuple[Path, Path]:
    """(run folder, checkpoint) for ``--resume`` given a run folder or a checkpoint file; the checkpoint is checked
    with ``validate`` (default :func:`losslab.runs.checkpoint.check`) before any work."""
    path = Path(path)
    ckpt = path / LAST_CKPT if path.is_dir() else path
    if not ckpt.is_file():
        raise ConfigError(
            f"resume={str(path)!r}: no checkpoint at {str(ckpt)!r}; pass a run folder that holds "
            f"{LAST_CKPT} or a .ckpt file"
        )
    if validate is None:
        from losslab.runs.checkpoint import check as validate
    validate(ckpt)  # refuse a pickled-code, corrupt or foreign file before any work
    return resume_run_dir(ckpt), ckpt


def staging_path(final: Path) -> Path:
    """The hidden sibling a replacing run trains in: ``.NAME.new``."""
    return final.parent / f".{final.name}.new"


def old_path(final: Path, pid: int) -> Path:
    """Where process ``pid`` moves the old run during the swap of an ``--overwrite``: ``.NAME.old-PID``."""
    return final.parent / f".{final.name}.old-{pid}"


def old_folders(final: Path) -> list[Path]:
    """The ``.NAME.old-PID`` folders beside ``final`` (left by an ``--overwrite`` killed during its swap)."""
    if not final.parent.is_dir():
        return []
    pattern = re.compile(re.escape(f".{final.name}.old-") + r"[0-9]+")
    return sorted(p for p in final.parent.iterdir() if pattern.fullmatch(p.name) and p.is_dir() and not p.is_symlink())


@dataclass
class RunFolder:
    """A claimed (locked) run folder. ``final`` is where the run ends up; ``work`` where training writes."""

    final: Path
    resume_ckpt: Path | None = None
    replaces: bool = False
    work: Path | None = None
    child: bool = False
    spec: RunSpec | None = None

    @property
    def staging(self) -> Path:
        """The hidden sibling a replacing run trains in (``.NAME.new``); only the lock holder uses it."""
        return staging_path(self.final)

    def create(self) -> Path:
        """Create the folder training writes to (a hidden staging sibling when replacing a run) and mark it."""
        if self.child:
            assert self.work is not None
            return self.work
        if self.resume_ckpt is not None:
            self.work = self.final
        elif self.replaces:
            self.work = self.staging
            if self.work.exists() or self.work.is_symlink():
                if self.work.is_symlink() or not is_losslab_run(self.work):
                    raise OutputError(
                        f"{str(self.work)!r} is in the way of --overwrite and has no {MARKER} marker, so it is not "
                        "a run losslab staged: move or rename it, then run again"
                    )
                shutil.rmtree(self.work)  # left by a killed earlier attempt; we hold the lock, so it is ours
        else:
            self.work = self.final
        self.work.mkdir(parents=True, exist_ok=True)
        if self.resume_ckpt is None:
            write_json_atomic(
                self.work / MARKER, {"kind": "losslab-run", "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
            )
        os.environ[WORK_ENV] = str(self.work.resolve())
        return self.work

    def _in_work(self, name: str) -> Path:
        if self.work is None:
            raise RuntimeError("RunFolder.create() must be called before writing into the run folder")
        return self.work / name

    @property
    def last_ckpt(self) -> Path:
        """``checkpoints/last.ckpt`` of the folder being written."""
        return self._in_work(LAST_CKPT)

    def write_config(self, config: Mapping[str, Any] | None = None) -> Path:
        """``config.yaml`` (the spec's config unless ``config`` is given), written atomically (by rank 0 only under
        ``torchrun``: another rank gets the path and writes nothing)."""
        data = config if config is not None else (self.spec.config if self.spec is not None else {})
        return self._in_work(CONFIG) if self.child else write_yaml_atomic(self._in_work(CONFIG), dict(data))

    def write_result(self, result: Mapping[str, Any]) -> Path:
        """``result.json``, written atomically and last: from now on the run counts as finished (rank 0 only, as
        :meth:`write_config`)."""
        return self._in_work(RESULT) if self.child else write_json_atomic(self._in_work(RESULT), dict(result))

    def commit(self) -> None:
        """Put a staged run in place of the old one (two renames), then remove the old one."""
        if self.child or self.work is None or self.work == self.final:
            return
        old = old_path(self.final, os.getpid())
        os.rename(self.final, old)
        try:
            os.rename(self.work, self.final)
        except OSError:
            os.rename(old, self.final)  # put the old run back: nothing is lost
            raise
        self.work = self.final
        shutil.rmtree(old)

    def abandon(self) -> None:
        """Remove a staged folder after a failure, unless it holds a finished run (result.json): then a failure or
        Ctrl-C inside :meth:`commit` loses nothing, and the next claim of the name completes the swap."""
        if self.child or self.work is None or self.work == self.final or not self.work.exists():
            return
        if (self.work / RESULT).is_file():
            print(
                f"losslab: kept the finished run in {str(self.work)!r}; the next run of this name (or --resume) "
                "puts it in place",
                file=sys.stderr,
            )
            return
        shutil.rmtree(self.work, ignore_errors=True)


def lock_path(final: Path) -> Path:
    """The lock file of run folder ``final``: ``.NAME.lock`` beside it (present only while a run holds it)."""
    return final.parent / f".{final.name}.lock"


def _lock(final: Path) -> IO[str] | None:
    """An exclusive, non-blocking lock for run folder ``final``; :func:`_unlock` releases and removes it."""
    path = lock_path(final)
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks
        return None
    while True:
        fh = open(path, "a+")  # noqa: SIM115 - held open for the whole run
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            raise OutputError(
                f"run folder {str(final)!r} is in use by another losslab process (lock {str(path)!r}); wait for "
                "it to finish or pass another --run-name"
            ) from None
        try:  # the holder before us may have removed the file between our open and our lock: lock the new one
            if os.stat(path).st_ino == os.fstat(fh.fileno()).st_ino:
                return fh
        except FileNotFoundError:
            pass
        fh.close()


def _unlock(final: Path, fh: IO[str] | None) -> None:
    """Remove the lock file, then release the lock (in this order, so no one locks a removed file and wins)."""
    if fh is None:
        return
    with suppress(FileNotFoundError):
        os.unlink(lock_path(final))
    fh.close()


def _is_finished(folder: Path) -> bool:
    return (folder / RESULT).is_file()


def _say(message: str) -> None:
    print(f"losslab: {message}", file=sys.stderr, flush=True)


def recover_interrupted_swap(final: Path, report: Callable[[str], None] = _say) -> list[str]:
    """Repair what an ``--overwrite`` of run folder ``final`` killed part-way left; each step is passed to
    ``report`` (a line on stderr) as soon as it is done, and the lines are returned.

    Call with the run's lock held (no live process is using the siblings then). Only siblings that carry the run
    marker are touched (a folder of the user's that merely has such a name is left alone and named). In order:

    - ``.NAME.new`` holding a finished run (``result.json``): the swap is completed. A present ``NAME`` (the run
      the overwrite replaces) is moved aside and removed; one that is not a losslab run is left alone, and so is
      ``.NAME.new``.
    - ``.NAME.new`` holding an unfinished run: removed (a killed attempt; it cannot be resumed under its name).
    - ``.NAME.old-PID`` with no ``NAME``: the old run is put back (several of them: :class:`OutputError`, the
      user picks one). With a finished run in ``NAME``, each is the run the overwrite replaced and is removed;
      beside an unfinished ``NAME`` they are left in place and named on stderr.
    """
    done: list[str] = []

    def note(line: str) -> None:
        done.append(line)
        report(line)

    new = staging_path(final)
    olds = [p for p in old_folders(final) if is_losslab_run(p)]
    foreign = [p for p in old_folders(final) if p not in olds]
    if new.is_dir() and not new.is_symlink() and not is_losslab_run(new):
        foreign.append(new)
    for path in foreign:
        note(f"left {path} in place: it has no {MARKER} marker, so it is not a run losslab made; move it yourself")
    present = final.is_symlink() or (final.exists() and (not final.is_dir() or any(final.iterdir())))
    if new.is_dir() and not new.is_symlink() and is_losslab_run(new):
        if _is_finished(new):
            if not present:
                os.rename(new, final)
                present = True
                note(f"completed an interrupted --overwrite: the finished new run {new.name} is now {final}")
            elif is_losslab_run(final) and not final.is_symlink():
                aside = old_path(final, os.getpid())
                os.rename(final, aside)
                os.rename(new, final)
                shutil.rmtree(aside)
                note(
                    f"completed an interrupted --overwrite: the finished new run {new.name} is now {final}; "
                    "removed the run it replaced"
                )
            else:
                note(
                    f"left {new} (a finished run of an interrupted --overwrite) in place: {final} is not a "
                    "losslab run folder, so it is not replaced; move one of them yourself"
                )
        else:
            shutil.rmtree(new)
            note(f"removed {new.name}, the unfinished new run of an --overwrite that was killed")
    if olds and not present:
        if len(olds) > 1:
            names = ", ".join(str(p) for p in olds)
            raise OutputError(
                f"run folder {str(final)!r} is missing and {len(olds)} old runs of killed --overwrite runs are "
                f"left beside it ({names}); rename the one to keep to {final.name!r}, then run again"
            )
        os.rename(olds[0], final)
        note(f"restored {final} from {olds[0].name}: an --overwrite was killed before its new run was in place")
    elif olds and _is_finished(final) and is_losslab_run(final):
        for old in olds:
            shutil.rmtree(old)
            note(f"removed {old.name}, the run an interrupted --overwrite replaced ({final} holds the new run)")
    elif olds:
        names = ", ".join(p.name for p in olds)
        note(f"left {names} beside the unfinished run {final}: a killed --overwrite's old run; keep or delete it")
    return done


def _final(spec: RunSpec) -> Path:
    """The run folder ``spec`` names (a resumed one wherever it is; else ``out_dir/run_name``), not validated."""
    return resume_run_dir(spec.resume) if spec.resume is not None else spec.target()


def _recover(spec: RunSpec) -> None:
    """Repair the leftovers of a killed ``--overwrite`` of the run ``spec`` names, under its lock (if any)."""
    final = _final(spec)
    new = staging_path(final)
    if not (new.exists() or new.is_symlink()) and not old_folders(final):
        return
    lock = _lock(final)
    try:
        recover_interrupted_swap(final)
    finally:
        _unlock(final, lock)


def _target(spec: RunSpec) -> Path:
    """The run folder ``spec`` writes (checked to stay inside ``out_dir``); its parent must be writable."""
    if spec.resume is not None:
        final = resolve_resume(spec.resume, spec.validate)[0]
        check_writable(final)
    else:
        final = spec.target()
    check_writable(final.parent)
    return final


def check_epochs(total: int, detail: str = "") -> None:
    """A training length this tool can schedule (Lightning counts epochs in an int; 1e20 is a typo, not a plan)."""
    if total > MAX_EPOCHS:
        raise ConfigError(
            f"epochs={total}{detail} is out of range: allowed at most {MAX_EPOCHS:,} epochs in all; pass the "
            "number of epochs you mean (--epochs)"
        )


def check_same_config(spec: RunSpec, run_dir: Path) -> None:
    """Refuse a resume whose config changes one of ``spec.match_keys`` stored in the run's ``config.yaml``."""
    import yaml

    stored_file = run_dir / CONFIG
    if not stored_file.is_file() or not spec.match_keys:
        return
    try:
        stored = yaml.safe_load(stored_file.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{str(stored_file)!r} cannot be read ({exc}); restore it from a copy") from None
    ours = spec.config
    changed = [k for k in spec.match_keys if k in stored and stored[k] != ours.get(k)]
    if changed:
        diff = ", ".join(f"{k}={stored[k]!r} (given {ours.get(k)!r})" for k in changed)
        raise ConfigError(
            f"--resume {str(run_dir)!r}: the run was trained with {diff}, and its checkpoints hold that "
            "state; resume without those flags (the stored config is used), or start a new run"
        )


def _claim(spec: RunSpec) -> RunFolder:
    """Validate the run target and decide what to do with it (nothing is created but the lock file)."""
    if spec.resume is not None:
        final, ckpt = resolve_resume(spec.resume, spec.validate)
        if (final / RESULT).is_file():
            raise ConfigError(
                f"run folder {str(final)!r} holds a finished run ({RESULT}); --resume continues only a killed "
                "run, and this run's schedule has ended. To train longer, start a new run with the epochs you "
                "want (--run-name NEW --epochs N)"
            )
        check_same_config(spec, final)
        return RunFolder(final=final, resume_ckpt=ckpt, spec=spec)
    final = spec.target()
    if final.is_symlink() or (final.exists() and not final.is_dir()):
        raise ConfigError(
            f"{str(final)!r} exists and is not a run folder (a file or a link); move it away or pass another --run-name"
        )
    if not final.is_dir() or not any(final.iterdir()):
        return RunFolder(final=final, spec=spec)
    finished = (final / RESULT).is_file()
    if not spec.overwrite:
        if finished:
            hint = "pass a new run name (--run-name) or --overwrite to replace it"
        else:
            hint = f"pass --resume {str(final)!r} to continue it, a new run name (--run-name) or --overwrite"
        state = "a finished run" if finished else "an unfinished run"
        raise ConfigError(f"run folder {str(final)!r} already holds {state}; {hint}")
    if not is_losslab_run(final):
        raise ConfigError(
            f"--overwrite refused: {str(final)!r} is not a losslab run folder (no {MARKER} marker), and losslab "
            "replaces only folders it made; move or delete it yourself, or pass another --run-name"
        )
    return RunFolder(final=final, replaces=True, spec=spec)


@contextmanager
def claim(spec: RunSpec) -> Iterator[RunFolder]:
    """Validate and lock the run folder of ``spec`` for the duration of the block (see the module doc).

    Before anything is created: the name stays inside ``out_dir``, the epoch count is sane, leftovers of a killed
    ``--overwrite`` are repaired, the folder is free (lock), a resume's checkpoint is safe and its config matches,
    a finished run is not resumed, and only a losslab-made folder is overwritten. On an exception inside the
    block, a staged ``--overwrite`` folder is removed (the old run stays); the lock is always released.
    """
    if is_child_rank():
        yield _child_folder(spec)
        return
    if spec.epochs is not None:
        check_epochs(spec.epochs)
    _recover(spec)
    final = _target(spec)
    lock = _lock(final)
    run = RunFolder(final=final, spec=spec)
    try:
        run = _claim(spec)  # under the lock: what the folder holds cannot change until we are done
        yield run
    except BaseException:
        run.abandon()
        raise
    finally:
        _unlock(final, lock)
        os.environ.pop(WORK_ENV, None)


def _child_folder(spec: RunSpec) -> RunFolder:
    """A DDP process other than rank 0: write where rank 0 writes (its folder is claimed and locked by rank 0)."""
    if spec.resume is not None:
        final, ckpt = resolve_resume(spec.resume, spec.validate)
    else:
        final, ckpt = spec.target(), None
    run = RunFolder(final=final, resume_ckpt=ckpt, child=True, spec=spec)
    inherited = os.environ.get(WORK_ENV)
    if inherited:
        run.work = Path(inherited)
    else:  # started independently (torchrun): mirror rank 0's decision
        run.work = run.staging if spec.overwrite and ckpt is None and is_losslab_run(final) else final
    return run
