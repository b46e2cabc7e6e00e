"""The run-folder attacks, for every experiment that writes a run folder (issue 18, "Done means").

Each experiment is one :class:`Experiment` line in :data:`EXPERIMENTS`: its command and the flags of a tiny run (the
run-folder flags ``--out-dir``, ``--run-name``, ``--overwrite``, ``--resume RUN`` are common to all). Commands not yet
on the shared runtime (:mod:`losslab.runs`) are marked ``xfail(run=False)``; migrating one removes its mark. Every
attack runs against each of them:

- ``--run-name ..``, ``.``, an absolute path, and a name that is a symlink out of ``--out-dir``: exit 2 with one
  line, and nothing outside (or behind the link) changes;
- ``--overwrite`` of a folder losslab did not make: refused, the folder is untouched;
- a second run of the same name while one holds it: refused at once;
- a kill after the history row and before the checkpoint of the same epoch: ``--resume`` redoes that epoch and the
  history has each epoch once;
- a pickled payload as ``checkpoints/last.ckpt``: ``--resume`` refuses it, no code runs, nothing changes.

The kill is an exception raised from the atomic checkpoint writer (``losslab.io.save_torch_atomic``, which every
checkpoint goes through) on the chosen write: on disk the run looks like one killed at that moment.
"""

from __future__ import annotations

import fcntl
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from losslab import io as losslab_io
from losslab.cli.app import main


@dataclass(frozen=True)
class Experiment:
    """A command that writes a run folder, and the flags of a tiny run of it with at least 3 checkpoints (epochs or
    fits); the run-folder flags (``--out-dir``, ``--run-name``, ``--resume``, ``--overwrite``, ``--no-progress``)
    are the same for every command."""

    command: str
    tiny: str
    marks: tuple = field(default=())

    def start(self, out: Path, name: str) -> list[str]:
        tiny = self.tiny.format(**ASSETS).split()
        return [*self.command.split(), *tiny, "--no-progress", "--out-dir", str(out), "--run-name", name]

    def resume(self, run: Path) -> list[str]:
        return [*self.command.split(), "--resume", str(run), "--no-progress"]

    def param(self) -> object:
        return pytest.param(self, id=self.command.replace(" ", "-"), marks=self.marks)


EXPERIMENTS = [
    Experiment("train", "--model mlp --epochs 3 --batch-size 256"),
    Experiment("logreg sweep", "--datasets iris_binary --k 2 --l2 0,1e-2 --seeds 0"),
    Experiment("gan train", "--data ring --epochs 3 --toy-samples 256 --batch-size 64 --width 8 --eval-samples 200"),
    Experiment("translate train", "--toy --arch toy --vocab-size 80 --max-tokens 8192 --epochs 3 --accelerator cpu"),
    Experiment(
        "lm finetune",
        "--model {lm} --text-file {text} --max-steps 3 --checkpoint-every 1 --eval-every 1 --warmup-steps 0 "
        "--block-size 32 --batch-size 2 --grad-accum 1 --max-eval-windows 2 --accelerator cpu --devices 1",
    ),
]
ASSETS: dict[str, str] = {}  # files the tiny runs read ({lm}: a tiny causal LM folder, {text}: its training text)


@pytest.fixture(scope="session", autouse=True)
def _assets(tmp_path_factory: pytest.TempPathFactory) -> None:
    from losslab.lm.offline import byte_tokenizer, synthetic_corpus, tiny_opt

    root = tmp_path_factory.mktemp("assets")
    tiny_opt(seed=0).save_pretrained(root / "tiny-lm")
    byte_tokenizer().save_pretrained(root / "tiny-lm")
    (root / "train.txt").write_text(synthetic_corpus(seed=0)["train"][:6000])
    ASSETS.update(lm=str(root / "tiny-lm"), text=str(root / "train.txt"))


PARAMS = [experiment.param() for experiment in EXPERIMENTS]


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    """Errors as users see them: one line (``LOSSLAB_DEBUG``, set by an earlier ``--debug``, adds a traceback)."""
    monkeypatch.delenv("LOSSLAB_DEBUG", raising=False)


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (links not followed) with its content, to prove nothing was touched."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def cli(argv: list[str]) -> int:
    """Run the console script in this process; its exit status."""
    try:
        main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def refused(argv: list[str], capsys: pytest.CaptureFixture, fragment: str) -> None:
    """The command exits 2 with one line on stderr that holds ``fragment``."""
    capsys.readouterr()
    assert cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and fragment in err, err


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Experiment], Path]:
    """A finished tiny run of an experiment, made once per module and experiment (tests copy it)."""
    made: dict[str, Path] = {}

    def get(experiment: Experiment) -> Path:
        if experiment.command not in made:
            out = tmp_path_factory.mktemp("finished")
            assert cli(experiment.start(out, "done")) == 0
            made[experiment.command] = out / "done"
        return made[experiment.command]

    return get


@pytest.mark.parametrize("experiment", PARAMS)
@pytest.mark.parametrize("name", ["..", "."])
def test_dot_names_with_overwrite_delete_nothing(
    experiment: Experiment, name: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "parent" / "out"
    (out / "other_run").mkdir(parents=True)
    (out / "other_run" / "keep.txt").write_text("precious")
    (tmp_path / "parent" / "sibling.txt").write_text("precious too")
    before = tree(tmp_path)
    refused([*experiment.start(out, name), "--overwrite"], capsys, "one folder name inside --out-dir")
    assert tree(tmp_path) == before


@pytest.mark.parametrize("experiment", PARAMS)
def test_an_absolute_run_name_writes_nothing(experiment: Experiment, tmp_path: Path, capsys) -> None:
    out, target = tmp_path / "out", tmp_path / "elsewhere" / "run"
    refused(experiment.start(out, str(target)), capsys, "one folder name inside --out-dir")
    assert not (tmp_path / "elsewhere").exists() and not out.exists()


@pytest.mark.parametrize("experiment", PARAMS)
def test_a_symlink_out_of_out_dir_is_not_followed(experiment: Experiment, finished, tmp_path: Path, capsys) -> None:
    import shutil

    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(finished(experiment), elsewhere)
    before = tree(elsewhere)
    out = tmp_path / "out"
    out.mkdir()
    (out / "link").symlink_to(elsewhere, target_is_directory=True)
    refused([*experiment.start(out, "link"), "--overwrite"], capsys, "not a run folder")
    assert tree(elsewhere) == before and (out / "link").is_symlink()


@pytest.mark.parametrize("experiment", PARAMS)
def test_overwrite_of_a_folder_losslab_did_not_make_is_refused(experiment: Experiment, tmp_path: Path, capsys) -> None:
    mine = tmp_path / "out" / "mine"
    mine.mkdir(parents=True)
    (mine / "thesis.tex").write_text("years of work")
    refused([*experiment.start(tmp_path / "out", "mine"), "--overwrite"], capsys, "not a losslab run folder")
    assert tree(mine) == {"thesis.tex": b"years of work"}


@pytest.mark.parametrize("experiment", PARAMS)
def test_a_second_run_of_the_same_name_is_refused_at_once(experiment: Experiment, tmp_path: Path, capsys) -> None:
    """The first run holds the name's lock (``.NAME.lock``, as a live process does): the second fails before work."""
    out = tmp_path / "out"
    out.mkdir()
    with open(out / ".busy.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        refused(experiment.start(out, "busy"), capsys, "in use by another losslab process")
    assert sorted(p.name for p in out.iterdir()) == [".busy.lock"]


class Killed(BaseException):
    """Stands in for SIGKILL (a BaseException: no ``except Exception`` of the code under test swallows it)."""


def kill_at_checkpoint(monkeypatch: pytest.MonkeyPatch, nth: int) -> None:
    """Raise :class:`Killed` instead of the ``nth`` write of a ``last.ckpt`` (1-based): its epoch's history row is
    on disk, its checkpoint is not."""
    real = losslab_io.save_torch_atomic
    writes = []

    def save(path, obj):
        if Path(path).name == "last.ckpt":
            writes.append(path)
            if len(writes) == nth:
                raise Killed
        return real(path, obj)

    monkeypatch.setattr(losslab_io, "save_torch_atomic", save)


def killed_run(experiment: Experiment, out: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A run of ``experiment`` killed between epoch 1's history row and its checkpoint."""
    with monkeypatch.context() as patch:
        kill_at_checkpoint(patch, nth=2)
        with pytest.raises(Killed):
            main(experiment.start(out, "run"))
    run = out / "run"
    assert not (run / "result.json").exists()
    assert [row["epoch"] for row in json.loads((run / "history.json").read_text())] == [0, 1]
    return run


@pytest.mark.parametrize("experiment", PARAMS)
def test_a_kill_between_history_and_checkpoint_resumes(
    experiment: Experiment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = killed_run(experiment, tmp_path, monkeypatch)
    assert cli(experiment.resume(run)) == 0
    epochs = [row["epoch"] for row in json.loads((run / "history.json").read_text())]
    assert epochs == list(range(len(epochs))) and len(epochs) >= 3  # the killed epoch once, none lost
    assert (run / "result.json").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "metrics.csv").is_file() and (run / "config.yaml").is_file()


class Payload:
    """Unpickling this writes ``marker``: code from a data file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return Path.write_text, (self.marker, "pwned")


@pytest.mark.parametrize("experiment", PARAMS)
def test_a_pickled_payload_checkpoint_runs_no_code(
    experiment: Experiment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    run = killed_run(experiment, tmp_path / "out", monkeypatch)
    marker, ckpt = tmp_path / "PWNED", run / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, weights_only=True)
    torch.save({**state, "evil": Payload(marker)}, ckpt)
    torch.load(ckpt, weights_only=False)  # control: an unsafe load runs the payload
    assert marker.read_text() == "pwned"
    marker.unlink()
    before = tree(tmp_path)
    refused(experiment.resume(run), capsys, "pickled code")
    assert not marker.exists() and tree(tmp_path) == before
