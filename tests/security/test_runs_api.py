"""The shared runtime (``losslab.runs``) on its own: the checkpoint contract restores a training state exactly and
refuses pickled code, the device resolver refuses devices this machine lacks in one line, the progress decision
follows the terminal, and the history keeps the rows a resume keeps."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch

from losslab import runs
from losslab.errors import ConfigError, CorruptFileError, UnsafeFileError


class Payload:
    """Unpickling this writes ``marker``: code from a data file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return Path.write_text, (self.marker, "pwned")


def training_state(seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    return model, opt, sched


def train_steps(model, opt, sched, steps: int, x: torch.Tensor, y: torch.Tensor) -> None:
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        sched.step()


def test_save_then_load_continues_bit_identically(tmp_path: Path) -> None:
    """3 steps, save, 3 more == 3 steps, load into fresh objects (other seed), 3 more: same weights, bit for bit."""
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 4, generator=gen), torch.randn(32, 1, generator=gen)
    model, opt, sched = training_state(0)
    train_steps(model, opt, sched, 3, x, y)
    runs.save(tmp_path / "checkpoints" / "last.ckpt", {"model": model, "opt": opt, "sched": sched, "epoch": 2})
    train_steps(model, opt, sched, 3, x, y)

    other, other_opt, other_sched = training_state(1)
    state = runs.load(
        tmp_path / "checkpoints" / "last.ckpt", into={"model": other, "opt": other_opt, "sched": other_sched}
    )
    assert state["epoch"] == 2 and other_sched.last_epoch == 3
    train_steps(other, other_opt, other_sched, 3, x, y)
    for a, b in zip(model.state_dict().values(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert not list((tmp_path / "checkpoints").glob(".*tmp"))  # the atomic write left no temporary file


def test_a_pickled_payload_checkpoint_is_refused_and_runs_no_code(tmp_path: Path) -> None:
    marker, ckpt = tmp_path / "PWNED", tmp_path / "last.ckpt"
    model, _, _ = training_state(0)
    torch.save({"model": model.state_dict(), "epoch": Payload(marker)}, ckpt)
    torch.load(ckpt, weights_only=False)  # control: an unsafe load runs the payload
    assert marker.read_text() == "pwned"
    marker.unlink()
    for read in (runs.check, lambda p: runs.load(p, into={"model": model})):
        with pytest.raises(UnsafeFileError, match="pickled code"):
            read(ckpt)
    assert not marker.exists()


def test_foreign_or_incomplete_checkpoints_are_named(tmp_path: Path) -> None:
    model, opt, _ = training_state(0)
    torch.save([torch.zeros(2)], tmp_path / "list.ckpt")
    with pytest.raises(CorruptFileError, match="not a checkpoint dict"):
        runs.load(tmp_path / "list.ckpt")
    runs.save(tmp_path / "model_only.ckpt", {"model": model})
    with pytest.raises(CorruptFileError, match="no 'opt' entry"):
        runs.load(tmp_path / "model_only.ckpt", into={"model": model, "opt": opt})


def test_resolve_device_knows_cpu_and_refuses_what_is_missing() -> None:
    assert runs.resolve_device("cpu") == torch.device("cpu")
    assert runs.resolve_device(" CPU ") == torch.device("cpu")
    with pytest.raises(ConfigError, match=r"^--device tpu: not a device; use one of auto, cpu, cuda"):
        runs.resolve_device("tpu")
    with pytest.raises(ConfigError, match="not a device"):
        runs.resolve_device("cuda:x")
    if not torch.cuda.is_available():
        assert runs.resolve_device("auto").type in ("cpu", "mps")
        with pytest.raises(ConfigError, match=r"^--device cuda: this machine has no CUDA device; use --device cpu$"):
            runs.resolve_device("cuda")
        with pytest.raises(ConfigError, match=r"^--accelerator gpu: this machine has no CUDA device"):
            runs.resolve_device("gpu", flag="--accelerator")
    else:
        count = torch.cuda.device_count()
        assert runs.resolve_device("auto").type == "cuda"
        assert runs.resolve_device(f"cuda:{count - 1}") == torch.device("cuda", count - 1)
        with pytest.raises(ConfigError, match=f"this machine has {count} CUDA device"):
            runs.resolve_device(f"cuda:{count}")
    if not runs.mps_available():
        with pytest.raises(ConfigError, match="no usable Apple GPU"):
            runs.resolve_device("mps")


class Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize(
    ("flag", "tty", "mode"),
    [(None, True, "bar"), (None, False, "lines"), (True, False, "bar"), (False, True, "off"), (False, False, "off")],
)
def test_progress_mode_follows_the_terminal_unless_told(flag: bool | None, tty: bool, mode: str) -> None:
    assert runs.progress_mode(flag, Stream(tty)) == mode


def test_lines_mode_prints_one_line_per_epoch(capsys: pytest.CaptureFixture) -> None:
    progress = runs.Progress("lines", total_epochs=2)
    for epoch, loss in enumerate((0.5, 0.25)):
        assert list(progress.batches(range(3), epoch)) == [0, 1, 2]
        progress.close({"train/loss": loss, "val/acc": 90.0 + epoch, "step": 3})
    progress.close({})  # the end of a run (empty row) prints nothing
    assert capsys.readouterr().err.splitlines() == [
        "epoch 1/2: loss 0.5 val_acc 90",
        "epoch 2/2: loss 0.25 val_acc 91",
    ]
    quiet = runs.Progress("off", total_epochs=1)
    list(quiet.batches([1], 0))
    quiet.close({"train/loss": 1.0})
    assert capsys.readouterr().err == ""


def test_history_keeps_the_rows_before_the_resumed_epoch(tmp_path: Path) -> None:
    history = runs.History(tmp_path, keep_before=0)
    for epoch in range(3):
        history.append({"epoch": epoch, "step": 10 * (epoch + 1), "train/loss": 1.0 / (epoch + 1)})
    resumed = runs.History(tmp_path, keep_before=2)  # killed after epoch 2's row, before its checkpoint
    assert [row["epoch"] for row in resumed.rows] == [0, 1]
    resumed.append({"epoch": 2, "step": 30, "train/loss": 0.3}, extra=[{"epoch": 2, "step": 30, "test/acc": 50.0}])
    assert [row["train/loss"] for row in json.loads((tmp_path / "history.json").read_text())] == [1.0, 0.5, 0.3]
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[0] == "epoch,step,test/acc,train/loss" and lines[-1] == "2,30,50.0,"
    assert len(lines) == 5


def toy_experiment(out: Path, name: str, *, epochs: int = 4, resume: Path | None = None, seed: int = 0) -> Path:
    """A whole experiment on the runtime, as a new one would be written: a config, a step, and runs.* for the rest
    (run folder, resume, history, safe loading, progress). Linear regression by SGD on a fixed random problem."""
    config = {"epochs": epochs, "seed": seed, "lr": 0.05}
    spec = runs.RunSpec(out_dir=out, run_name=name, resume=resume, config=config, match_keys=("seed",), epochs=epochs)
    with runs.claim(spec) as run:
        gen = torch.Generator().manual_seed(seed)
        x, w_true = torch.randn(64, 3, generator=gen), torch.randn(3, 1, generator=gen)
        y = x @ w_true
        torch.manual_seed(seed)
        model = torch.nn.Linear(3, 1)
        opt = torch.optim.SGD(model.parameters(), lr=config["lr"], momentum=0.9)
        start = 0
        if run.resume_ckpt is not None:
            start = runs.load(run.resume_ckpt, into={"model": model, "opt": opt})["epoch"] + 1
        work = run.create()
        run.write_config()
        history = runs.History(work, keep_before=start)
        progress = runs.Progress(runs.progress_mode(False), epochs)
        for epoch in range(start, epochs):
            for i in progress.batches(range(0, 64, 16), epoch):
                opt.zero_grad()
                loss = torch.nn.functional.mse_loss(model(x[i : i + 16]), y[i : i + 16])
                loss.backward()
                opt.step()
            row = {"epoch": epoch, "step": 4 * (epoch + 1), "train/loss": float(loss)}
            history.append(row)
            runs.save(run.last_ckpt, {"model": model, "opt": opt, "epoch": epoch})
            progress.close(row)
        run.write_result({"weight": model.weight.tolist(), "bias": model.bias.tolist()})
        run.commit()
    return run.final


def test_a_toy_experiment_killed_and_resumed_equals_the_uninterrupted_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = toy_experiment(tmp_path, "whole")
    real_save, saves = runs.save, []

    def kill_third(path, objects):
        saves.append(path)
        if len(saves) == 3:
            raise KeyboardInterrupt
        return real_save(path, objects)

    monkeypatch.setattr(runs, "save", kill_third)
    with pytest.raises(KeyboardInterrupt):
        toy_experiment(tmp_path, "cut")
    monkeypatch.setattr(runs, "save", real_save)
    with pytest.raises(ConfigError, match=r"trained with seed=0 \(given 1\)"):
        toy_experiment(tmp_path, "cut", resume=tmp_path / "cut", seed=1)
    cut = toy_experiment(tmp_path, "cut", resume=tmp_path / "cut")
    assert json.loads((cut / "result.json").read_text()) == json.loads((whole / "result.json").read_text())
    assert (cut / "history.json").read_text() == (whole / "history.json").read_text()
    assert sorted(p.name for p in cut.iterdir()) == [
        ".losslab-run", "checkpoints", "config.yaml", "history.json", "metrics.csv", "result.json",
    ]  # fmt: skip
