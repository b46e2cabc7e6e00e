"""Run folders as an attacker would use them: names that escape --out-dir, --overwrite of what losslab did not
make, an --overwrite that fails half-way, two trains of the same run at once, resuming finished or copied runs."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from lightning.pytorch.callbacks import Callback

from losslab.cli.app import main
from losslab.errors import ConfigError, OutputError
from losslab.runs.folder import MARKER, RunFolder, check_run_name, lock_path
from losslab.train import TrainConfig, fit
from losslab.train.run_folder import claim_run_folder

TINY = {"model": "mlp", "epochs": 1, "progress": False, "batch_size": 256}


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its content (to prove nothing was touched)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 1-epoch run, trained once per module; tests copy it."""
    out = tmp_path_factory.mktemp("finished")
    fit(TrainConfig(**TINY, out_dir=out, run_name="old"))
    return out / "old"


def copy_run(finished_run: Path, out_dir: Path, name: str = "old") -> Path:
    target = out_dir / name
    shutil.copytree(finished_run, target)
    return target


@pytest.mark.parametrize("name", [".", "..", "../../x", "a/b", "/abs", "", "a\\b"])
def test_run_names_that_leave_out_dir_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="one folder name inside --out-dir"):
        check_run_name(name)


@pytest.mark.parametrize("name", [".", ".."])
def test_overwrite_with_dot_names_deletes_nothing(tmp_path: Path, name: str, capsys: pytest.CaptureFixture) -> None:
    """The reported attack: `--run-name . --overwrite` emptied --out-dir, `..` its parent."""
    out = tmp_path / "parent" / "v"
    (out / "other_run").mkdir(parents=True)
    (out / "other_run" / "keep.txt").write_text("precious")
    (tmp_path / "parent" / "sibling.txt").write_text("precious too")
    before = tree(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--model", "mlp", "--epochs", "1", "--out-dir", str(out), "--run-name", name, "--overwrite"])
    assert exit_info.value.code == 2
    assert "one folder name inside --out-dir" in capsys.readouterr().err
    assert tree(tmp_path) == before


@pytest.mark.parametrize("name", ["../../x", "/abs/run"])
def test_names_outside_out_dir_write_nothing(tmp_path: Path, name: str) -> None:
    out = tmp_path / "a" / "b" / "v"
    with pytest.raises(ConfigError, match="one folder name"):
        fit(TrainConfig(**TINY, out_dir=out, run_name=name))
    assert not (tmp_path / "x").exists() and not Path("/abs").exists()
    assert not out.exists()


def test_overwrite_refuses_a_folder_losslab_did_not_make(tmp_path: Path) -> None:
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("years of work")
    with pytest.raises(ConfigError, match="not a losslab run folder"):
        fit(TrainConfig(**TINY, out_dir=tmp_path, run_name="mine", overwrite=True))
    assert (foreign / "thesis.tex").read_text() == "years of work"


def test_overwrite_with_a_bad_accelerator_keeps_the_old_run(tmp_path: Path, finished_run: Path) -> None:
    """`--overwrite --accelerator gpu` on a CPU machine deleted the finished run, then crashed."""
    old = copy_run(finished_run, tmp_path)
    before = tree(old)
    for bad in ({"accelerator": "gpu"}, {"strategy": "no_such_strategy"}, {"devices": "0,x"}):
        if bad.get("accelerator") == "gpu" and __import__("torch").cuda.is_available():
            continue
        with pytest.raises(ConfigError, match=r"accelerator|strategy|devices"):
            fit(TrainConfig(**TINY, out_dir=tmp_path, run_name="old", overwrite=True, **bad))
        assert tree(old) == before


def test_overwrite_that_fails_mid_training_keeps_the_old_run(tmp_path: Path, finished_run: Path) -> None:
    old = copy_run(finished_run, tmp_path)
    before = tree(old)

    class Crash(Callback):
        def on_train_epoch_end(self, trainer, pl_module) -> None:
            raise RuntimeError("crash mid-run")

    with pytest.raises(RuntimeError, match="crash mid-run"):
        fit(TrainConfig(**TINY, out_dir=tmp_path, run_name="old", overwrite=True), callbacks=[Crash()])
    assert tree(old) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]  # no staging folder, no lock file left


def test_overwrite_replaces_a_losslab_run_in_one_swap(tmp_path: Path, finished_run: Path) -> None:
    old = copy_run(finished_run, tmp_path)
    (old / "stale.txt").write_text("from the old run")
    result = fit(TrainConfig(**TINY, out_dir=tmp_path, run_name="old", overwrite=True, seed=1))
    assert result.run_dir == old and not (old / "stale.txt").exists()
    assert (old / MARKER).is_file() and (old / "checkpoints" / "best.ckpt").is_file()
    assert json.loads((old / "result.json").read_text())["config"]["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]


def test_existing_run_errors_suggest_only_what_works(tmp_path: Path, finished_run: Path) -> None:
    copy_run(finished_run, tmp_path)
    with pytest.raises(ConfigError, match="finished run") as finished:
        fit(TrainConfig(**TINY, out_dir=tmp_path, run_name="old"))
    assert "--resume" not in str(finished.value) and "--overwrite" in str(finished.value)
    unfinished = copy_run(finished_run, tmp_path, "killed")
    (unfinished / "result.json").unlink()
    with pytest.raises(ConfigError, match="unfinished run") as killed:
        fit(TrainConfig(**TINY, out_dir=tmp_path, run_name="killed"))
    assert "--resume" in str(killed.value)


def test_resuming_a_finished_run_is_refused_and_changes_nothing(tmp_path: Path, finished_run: Path) -> None:
    """Issue 13: `--resume RUN --epochs 4` on a finished run trained at lr 0 and rewrote metrics.csv."""
    old = copy_run(finished_run, tmp_path)
    before = tree(old)
    with pytest.raises(ConfigError, match=r"finished run.*--resume continues only a killed run"):
        fit(TrainConfig(**{**TINY, "epochs": 4}, resume=old))
    assert tree(old) == before


def test_a_second_process_on_the_same_run_fails_at_once(tmp_path: Path) -> None:
    cfg = TrainConfig(**TINY, out_dir=tmp_path, run_name="busy")
    with claim_run_folder(cfg) as run:
        run.create()
        assert lock_path(run.final).is_file()
        started = time.monotonic()
        with pytest.raises(OutputError, match="in use by another losslab process"):
            fit(cfg)
        assert time.monotonic() - started < 5
    assert not lock_path(tmp_path / "busy").exists()  # released and removed


@pytest.mark.slow
def test_concurrent_trains_with_the_same_name(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A shell loop over learning rates with the default name: the second fails at once, the first finishes."""
    args = ["train", "--model", "mlp", "--epochs", "12", "--out-dir", str(tmp_path), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(
        [sys.executable, "-m", "losslab.cli", *args, "--lr", "0.05"], env=env, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob("*/history.json")) and time.monotonic() < deadline:
        time.sleep(0.05)
    started = time.monotonic()
    with pytest.raises(SystemExit) as second:
        main([*args, "--lr", "0.1"])
    assert second.value.code == 2 and time.monotonic() - started < 5
    assert "in use by another losslab process" in capsys.readouterr().err
    assert first.poll() is None, "the first run was still training"
    assert first.wait(timeout=300) == 0, first.stderr.read()
    (run,) = [p for p in tmp_path.iterdir()]
    assert json.loads((run / "result.json").read_text())["config"]["lr"] == 0.05


class Killed(Exception):
    pass


class KillAt(Callback):
    """Stands in for SIGKILL: stops the process at the start of ``epoch`` (its last.ckpt is on disk)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            raise Killed


def metrics_epochs(run: Path) -> list[int]:
    with open(run / "metrics.csv", newline="") as fh:
        return sorted({int(float(row["epoch"])) for row in csv.DictReader(fh) if row.get("val/acc")})


def test_resume_keeps_metrics_history_and_a_copied_run_stays_self_contained(tmp_path: Path) -> None:
    """metrics.csv keeps the epochs before the kill; a copy of a killed run resumes into itself, not the original."""
    cfg = TrainConfig(**{**TINY, "epochs": 3}, out_dir=tmp_path / "a", run_name="run")
    with pytest.raises(Killed):
        fit(cfg, callbacks=[KillAt(2)])
    original = tmp_path / "a" / "run"
    assert metrics_epochs(original) == [0, 1] and not (original / "result.json").exists()
    copy = tmp_path / "b" / "run"
    shutil.copytree(original, copy)
    shutil.rmtree(original)  # the copy must not need the original

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fit(TrainConfig.build({**cfg.to_dict(), "resume": str(copy)}))
    leaked = [str(w.message) for w in caught if "Checkpoint directory" in str(w.message) or "dirpath" in str(w.message)]
    assert not leaked
    assert metrics_epochs(copy) == [0, 1, 2]
    stored = json.loads((copy / "result.json").read_text())
    assert stored["best_ckpt"] == "checkpoints/best.ckpt" and stored["last_ckpt"] == "checkpoints/last.ckpt"
    val = [row["val/acc"] for row in result.epochs]
    assert [row["epoch"] for row in result.epochs] == [0, 1, 2]
    assert stored["best_val_acc"] == pytest.approx(max(val))  # not NaN: the score survived the move
    assert result.best_ckpt == copy / "checkpoints" / "best.ckpt" and result.best_ckpt.is_file()


def test_resume_with_another_model_is_refused_before_loading(tmp_path: Path, finished_run: Path) -> None:
    killed = copy_run(finished_run, tmp_path)
    (killed / "result.json").unlink()
    before = tree(killed)
    with pytest.raises(ConfigError, match=r"trained with model='mlp' \(given 'small_cnn'\)"):
        fit(TrainConfig(**{**TINY, "model": "small_cnn"}, resume=killed))
    assert tree(killed) == before  # config.yaml not rewritten by the refused resume


def test_absurd_epoch_counts_are_refused_before_work(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at most 100,000 epochs"):
        fit(TrainConfig(**{**TINY, "epochs": 10**20}, out_dir=tmp_path))
    assert not any(tmp_path.iterdir())


@pytest.mark.gpu
def test_gpu_overwrite_keeps_the_old_run_until_done_and_resume_continues(tmp_path: Path, finished_run: Path) -> None:
    old = copy_run(finished_run, tmp_path)
    before = tree(old)
    gpu = {**TINY, "epochs": 3, "accelerator": "gpu", "devices": "1"}
    with pytest.raises(Killed):
        fit(TrainConfig(**gpu, out_dir=tmp_path, run_name="old", overwrite=True), callbacks=[KillAt(1)])
    assert tree(old) == before
    with pytest.raises(Killed):
        fit(TrainConfig(**gpu, out_dir=tmp_path, run_name="new"), callbacks=[KillAt(2)])
    result = fit(TrainConfig(**gpu, resume=tmp_path / "new"))
    assert metrics_epochs(tmp_path / "new") == [0, 1, 2]
    assert result.best_val_acc == result.best_val_acc and (tmp_path / "new" / "checkpoints" / "best.ckpt").is_file()


def test_overwrite_through_a_symlink_is_refused(tmp_path: Path, finished_run: Path) -> None:
    """A run name that is a link to a losslab run elsewhere: nothing behind the link is replaced."""
    elsewhere = copy_run(finished_run, tmp_path / "elsewhere")
    before = tree(elsewhere)
    out = tmp_path / "out"
    out.mkdir()
    (out / "link").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(ConfigError, match="not a run folder"):
        fit(TrainConfig(**TINY, out_dir=out, run_name="link", overwrite=True))
    assert tree(elsewhere) == before and (out / "link").is_symlink()


def killed_swap(finished_run: Path, out: Path, *, new: str | None, old: bool = True, final: bool = False) -> None:
    """The folders an `--overwrite` of run "old" leaves when killed (by hand, as commit() would leave them).

    ``new``: "finished" / "unfinished" staging ``.old.new`` (None: none); ``old``: the old run in
    ``.old.old-4242`` (it says "old run" in note.txt); ``final``: whether ``old`` itself is there (the new run).
    """
    out.mkdir(exist_ok=True)
    if old:
        (copy_run(finished_run, out, ".old.old-4242") / "note.txt").write_text("old run")
    if new is not None:
        staged = copy_run(finished_run, out, ".old.new")
        (staged / "note.txt").write_text("new run")
        if new == "unfinished":
            (staged / "result.json").unlink()
    if final:
        (copy_run(finished_run, out) / "note.txt").write_text("new run")


def claim(cfg: TrainConfig) -> RunFolder:
    """Claim the run folder of ``cfg`` and let it go at once (what a claim repairs or refuses happens first)."""
    with claim_run_folder(cfg) as run:
        return run


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_kill_between_the_swap_renames_completes_the_swap(
    tmp_path: Path, finished_run: Path, capsys: pytest.CaptureFixture
) -> None:
    """No `old`, the old run in `.old.old-PID`, the finished new run in `.old.new`: the new run is put in place."""
    killed_swap(finished_run, tmp_path, new="finished")
    with claim_run_folder(TrainConfig(**TINY, out_dir=tmp_path, run_name="old", overwrite=True)) as run:
        assert run.replaces and run.final == tmp_path / "old"
    assert listing(tmp_path) == ["old"] and (tmp_path / "old" / "note.txt").read_text() == "new run"
    err = capsys.readouterr().err
    assert "completed an interrupted --overwrite" in err and "removed .old.old-4242" in err


def test_a_kill_between_the_swap_renames_without_a_finished_new_run_restores_the_old_one(
    tmp_path: Path, finished_run: Path, capsys: pytest.CaptureFixture
) -> None:
    killed_swap(finished_run, tmp_path, new="unfinished")
    before = tree(tmp_path / ".old.old-4242")
    with pytest.raises(ConfigError, match="already holds a finished run"):  # a plain train of the name
        claim(TrainConfig(**TINY, out_dir=tmp_path, run_name="old"))
    assert listing(tmp_path) == ["old"] and tree(tmp_path / "old") == before  # byte for byte
    err = capsys.readouterr().err
    assert "restored" in err and ".old.old-4242" in err and "removed .old.new, the unfinished new run" in err


def test_resume_of_a_run_left_aside_by_a_killed_swap_restores_and_resumes_it(
    tmp_path: Path, finished_run: Path, capsys: pytest.CaptureFixture
) -> None:
    killed_swap(finished_run, tmp_path, new=None)
    (tmp_path / ".old.old-4242" / "result.json").unlink()  # an unfinished run: resumable
    with claim_run_folder(TrainConfig(**TINY, resume=tmp_path / "old")) as run:
        assert run.resume_ckpt == tmp_path / "old" / "checkpoints" / "last.ckpt" and run.resume_ckpt.is_file()
    assert listing(tmp_path) == ["old"] and (tmp_path / "old" / "note.txt").read_text() == "old run"
    assert "restored" in capsys.readouterr().err


def test_a_kill_while_removing_the_replaced_run_finishes_the_removal(
    tmp_path: Path, finished_run: Path, capsys: pytest.CaptureFixture
) -> None:
    killed_swap(finished_run, tmp_path, new=None, final=True)
    shutil.rmtree(tmp_path / ".old.old-4242" / "checkpoints")  # rmtree was cut short
    with pytest.raises(ConfigError, match="already holds a finished run"):
        claim(TrainConfig(**TINY, out_dir=tmp_path, run_name="old"))
    assert listing(tmp_path) == ["old"] and (tmp_path / "old" / "note.txt").read_text() == "new run"
    assert "removed .old.old-4242, the run an interrupted --overwrite replaced" in capsys.readouterr().err


def test_an_unfinished_staging_folder_of_a_dead_process_is_removed_and_the_run_kept(
    tmp_path: Path, finished_run: Path, capsys: pytest.CaptureFixture
) -> None:
    killed_swap(finished_run, tmp_path, new="unfinished", old=False)
    kept = copy_run(finished_run, tmp_path)
    (kept / "result.json").unlink()
    before = tree(kept)
    with claim_run_folder(TrainConfig(**TINY, resume=kept)) as run:
        assert run.resume_ckpt is not None
    assert listing(tmp_path) == ["old"] and tree(kept) == before
    assert "removed .old.new, the unfinished new run" in capsys.readouterr().err


def test_two_old_runs_and_no_run_folder_are_left_for_the_user(tmp_path: Path, finished_run: Path) -> None:
    killed_swap(finished_run, tmp_path, new=None)
    copy_run(finished_run, tmp_path, ".old.old-77")
    before = {name: tree(tmp_path / name) for name in listing(tmp_path)}
    with pytest.raises(OutputError, match=r"2 old runs .*rename the one to keep to 'old'"):
        claim(TrainConfig(**TINY, out_dir=tmp_path, run_name="old", overwrite=True))
    assert {name: tree(tmp_path / name) for name in listing(tmp_path)} == before  # nothing removed


def test_the_staging_folder_of_a_live_run_is_not_touched(tmp_path: Path, finished_run: Path) -> None:
    copy_run(finished_run, tmp_path)
    cfg = TrainConfig(**TINY, out_dir=tmp_path, run_name="old", overwrite=True)
    with claim_run_folder(cfg) as run:
        staged = run.create()
        with pytest.raises(OutputError, match="in use by another losslab process"):
            claim(cfg)
        assert staged.is_dir() and (staged / MARKER).is_file()


def test_a_kill_after_training_before_the_swap_completes_it(
    tmp_path: Path, finished_run: Path, capsys: pytest.CaptureFixture
) -> None:
    """The new run finished in `.old.new` (result.json written), the swap never started: the overwrite is done."""
    killed_swap(finished_run, tmp_path, new="finished", old=False)
    (copy_run(finished_run, tmp_path) / "note.txt").write_text("old run")
    run = claim(TrainConfig(**TINY, out_dir=tmp_path, run_name="old", overwrite=True))
    assert run.replaces and listing(tmp_path) == ["old"]
    assert (tmp_path / "old" / "note.txt").read_text() == "new run"
    err = capsys.readouterr().err
    assert "completed an interrupted --overwrite" in err and "removed the run it replaced" in err


def test_ctrl_c_between_the_commit_renames_keeps_the_finished_new_run(
    tmp_path: Path, finished_run: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A KeyboardInterrupt after the old run was moved aside and before the new one was moved in: the finished new
    run is kept (not abandoned), and the next claim of the name puts it in place."""
    import os as os_module

    from losslab.runs import folder as run_folder

    (copy_run(finished_run, tmp_path) / "note.txt").write_text("old run")
    real_rename = os_module.rename
    calls = []

    def rename_then_interrupt(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # the second rename of commit(): staged -> final
            raise KeyboardInterrupt
        return real_rename(src, dst)

    cfg = TrainConfig(**TINY, out_dir=tmp_path, run_name="old", overwrite=True)
    with pytest.raises(KeyboardInterrupt), claim_run_folder(cfg) as run:
        staged = run.create()
        shutil.copytree(finished_run, staged, dirs_exist_ok=True)
        (staged / "note.txt").write_text("new run")
        monkeypatch.setattr(run_folder.os, "rename", rename_then_interrupt)
        run.commit()
    monkeypatch.setattr(run_folder.os, "rename", real_rename)
    assert "kept the finished run" in capsys.readouterr().err
    assert (tmp_path / ".old.new" / "note.txt").read_text() == "new run" and not (tmp_path / "old").exists()
    claim(TrainConfig(**TINY, out_dir=tmp_path, run_name="old", overwrite=True))
    assert listing(tmp_path) == ["old"] and (tmp_path / "old" / "note.txt").read_text() == "new run"
