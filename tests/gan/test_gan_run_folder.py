"""``gan train``'s run folder is losslab.runs' (the attacks of issue 18): a confined name, ``--overwrite`` only of a
losslab folder and staged, a resume checked against the stored config and read through the safe loader."""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from pathlib import Path

import pytest
import torch


def _args(out_dir: Path, *extra: str) -> list[str]:
    args = ["gan", "train", "--data", "ring", "--toy-samples", "256", "--batch-size", "128", "--width", "8"]
    return [*args, "--epochs", "1", "--no-metrics", "--no-progress", "--out-dir", str(out_dir), *extra]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", ["..", ".", "/tmp/elsewhere", "a/b"])
def test_run_names_outside_out_dir_are_refused_and_nothing_changes(
    tmp_path: Path, name: str, cli_main: Callable[[list[str]], tuple[int, str, str]]
) -> None:
    out = tmp_path / "parent" / "runs"
    out.mkdir(parents=True)
    (tmp_path / "parent" / "precious.txt").write_text("keep me")
    before = _snapshot(tmp_path)
    code, _, err = cli_main(_args(out, "--run-name", name, "--overwrite"))
    assert code == 2 and "run_name=" in err and len(err.strip().splitlines()) == 1
    assert _snapshot(tmp_path) == before


def test_overwrite_replaces_only_a_losslab_run_and_keeps_the_old_one_until_the_new_one_finishes(
    tmp_path: Path, cli_main: Callable[[list[str]], tuple[int, str, str]]
) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("user data")
    code, _, err = cli_main(_args(tmp_path, "--run-name", "mine", "--overwrite"))
    assert code == 2 and "not a losslab run folder" in err and (mine / "notes.txt").read_text() == "user data"
    assert cli_main(_args(tmp_path, "--run-name", "run"))[0] == 0
    old = _snapshot(tmp_path / "run")
    code, _, err = cli_main(_args(tmp_path, "--run-name", "run", "--overwrite", "--toy-samples", "64"))
    assert code == 2 and _snapshot(tmp_path / "run") == old  # refused before any folder: the old run is intact
    assert cli_main(_args(tmp_path, "--run-name", "run", "--overwrite", "--seed", "3"))[0] == 0
    assert json.loads((tmp_path / "run" / "result.json").read_text())["config"]["seed"] == 3
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".run.")]  # no staging or old copy left


def test_resume_refuses_a_changed_config_and_a_pickled_checkpoint(
    tmp_path: Path, cli_main: Callable[[list[str]], tuple[int, str, str]]
) -> None:
    assert cli_main(_args(tmp_path, "--run-name", "run", "--epochs", "1"))[0] == 0
    (tmp_path / "run" / "result.json").unlink()  # an unfinished run
    code, _, err = cli_main(["gan", "train", "--resume", str(tmp_path / "run"), "--k", "8", "--no-progress"])
    assert code == 2 and "k=2.0 (given 8.0)" in err
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(pickle.dumps(type("Payload", (), {"__reduce__": lambda self: (print, ("pwned",))})()))
    code, _, err = cli_main(["gan", "train", "--resume", str(tmp_path / "run"), "--epochs", "2", "--no-progress"])
    assert code == 2 and "pwned" not in err and len(err.strip().splitlines()) == 1


def test_resume_extends_an_unfinished_run_from_its_checkpoint(
    tmp_path: Path, cli_main: Callable[[list[str]], tuple[int, str, str]]
) -> None:
    assert cli_main(_args(tmp_path, "--run-name", "run", "--epochs", "1"))[0] == 0
    (tmp_path / "run" / "result.json").unlink()
    first = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["epoch"]
    code, _, err = cli_main(["gan", "train", "--resume", str(tmp_path / "run"), "--epochs", "2", "--no-progress"])
    assert code == 0, err
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert first == 0 and result["epochs"] == 2  # the checkpoint holds the 0-based index of its epoch
    assert [h["epoch"] for h in result["history"]] == [0, 1]


def test_a_checkpoint_of_another_layout_is_refused_before_any_work(
    tmp_path: Path, cli_main: Callable[[list[str]], tuple[int, str, str]]
) -> None:
    """A checkpoint written before the GAN moved into the one loop (``{"trainer": {...}}``) or by a one-optimizer
    experiment cannot be continued: one line, exit 2, the run folder unchanged."""
    from losslab import runs

    assert cli_main(_args(tmp_path, "--run-name", "run", "--epochs", "1"))[0] == 0
    (tmp_path / "run" / "result.json").unlink()
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    good = torch.load(ckpt, weights_only=True)
    for state in ({"trainer": {"epoch": 1}}, {**good, "optimizer_states": good["optimizer_states"][:1]}):
        runs.save(ckpt, state)
        before = _snapshot(tmp_path)
        code, _, err = cli_main(["gan", "train", "--resume", str(tmp_path / "run"), "--epochs", "2", "--no-progress"])
        assert code == 2 and "not a checkpoint of the training loop" in err and len(err.strip().splitlines()) == 1
        assert _snapshot(tmp_path) == before
