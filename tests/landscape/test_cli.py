"""`losslab landscape` on a trained digits run: the numbers against the dense Hessian of the same probe set, the
stored JSON and its reuse, and bad input (one line, exit 2, the run folder unchanged)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch.func import functional_call, hessian

from losslab.cli import main
from losslab.io import save_torch_atomic
from losslab.landscape.run import landscape_loss, probe_batches
from losslab.serialization import load_torch_file
from losslab.train import TrainConfig, fit, load_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ls")
    cfg = TrainConfig(model="small_cnn", loss="root", epochs=1, out_dir=out, run_name="r", progress=False)
    return fit(cfg).run_dir


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def landscape(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        main(["landscape", *args, "--no-progress"])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def block_hessian(run_dir: Path, names: list[str], samples: int) -> torch.Tensor:
    """Dense Hessian (float64) of the run's objective over ``names`` on the same probe set as the command."""
    run = load_run(run_dir)
    model = run.model.double()
    batches, _ = probe_batches(run.config, samples, "train", 0, 10_000)
    x, y = batches[0][0].double(), batches[0][1]
    loss_fn = landscape_loss(run.config, "run")
    params = {n: p.detach() for n, p in model.named_parameters() if n in names}
    others = {n: p.detach() for n, p in model.named_parameters() if n not in params} | dict(model.named_buffers())
    h = hessian(lambda p: loss_fn(functional_call(model, {**others, **p}, (x,)), y))(params)
    sizes = [params[n].numel() for n in params]
    rows = [torch.cat([h[a][b].reshape(sa, sb) for b, sb in zip(params, sizes)], 1) for a, sa in zip(params, sizes)]
    return torch.cat(rows, 0)


def test_eigenvalues_trace_and_cache(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = landscape(capsys, str(run_dir), "--probes", "eig,trace", "--layer", "fc", "--samples", "300")
    assert code == 0, err
    result = json.loads((run_dir / "landscape.json").read_text())
    for key in ("eigenvalues", "eigen_residuals", "trace", "trace_stderr", "samples", "split", "loss", "seed"):
        assert key in result
    assert result["samples"] == 300 and result["split"] == "train" and result["loss"] == "run"
    names = [n for n, _ in load_run(run_dir).model.named_parameters() if "fc" in n]
    exact = torch.linalg.eigvalsh(block_hessian(run_dir, names, 300)).flip(0)
    got = torch.tensor(result["eigenvalues"], dtype=torch.float64)
    assert (got[:-1] >= got[1:]).all()
    # float32 model, Lanczos stopped at an estimated eigenvalue error <= 1e-3·λ_max: eigenvalues within that
    torch.testing.assert_close(got, exact[:3], rtol=2e-3, atol=2e-3 * float(exact[0]))
    # each reported residual r = ‖Hy − θy‖ bounds the distance from θ to an eigenvalue (here the i-th)
    for value, want, r in zip(result["eigenvalues"], exact[:3].tolist(), result["eigen_residuals"]):
        assert abs(value - want) <= r + 1e-6 * float(exact[0])
    assert abs(result["trace"] - float(exact.sum())) <= 4 * result["trace_stderr"] + 1e-3 * abs(float(exact.sum()))
    assert "eigenvalue 1" in out and "landscape.json" in out

    # same settings: eig and trace reused (their stored timings unchanged), kurtosis added
    code, _, err = landscape(capsys, str(run_dir), "--probes", "eig,kurtosis", "--layer", "fc", "--samples", "300")
    assert code == 0, err
    again = json.loads((run_dir / "landscape.json").read_text())
    assert again["seconds"]["eig"] == result["seconds"]["eig"] and again["eigenvalues"] == result["eigenvalues"]
    assert "weights" in again and again["probes_done"] == ["eig", "trace", "kurtosis"]

    # other settings: refused without --overwrite, file kept
    before = snapshot(run_dir)
    code, _, err = landscape(capsys, str(run_dir), "--probes", "eig", "--samples", "200")
    assert code == 2 and "--overwrite" in err and snapshot(run_dir) == before


def test_loss_ce_differs_from_the_rooted_objective(
    run_dir: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    args = ["--probes", "eig", "--layer", "fc", "--samples", "200", "--no-save", "--top-k", "1"]
    landscape(capsys, str(run_dir), *args, "--loss", "ce", "--json", str(tmp_path / "ce.json"))
    landscape(capsys, str(run_dir), *args, "--loss", "run", "--json", str(tmp_path / "run.json"))
    ce = json.loads((tmp_path / "ce.json").read_text())
    run = json.loads((tmp_path / "run.json").read_text())
    assert ce["loss"] == "ce" and ce["base_loss"] != pytest.approx(run["base_loss"], rel=1e-3)


@pytest.fixture
def nan_run(run_dir: Path, tmp_path: Path) -> Path:
    """A copy of the run whose finite weights overflow to a NaN loss (a checkpoint holding NaN itself is refused
    when it is read): one weight tensor set to 3e38, re-saved with losslab's checksum."""
    copy = tmp_path / "nan"
    shutil.copytree(run_dir, copy)
    for ckpt in (copy / "checkpoints").glob("*.ckpt"):
        state = load_torch_file(ckpt)
        key = next(k for k in state["state_dict"] if k.endswith("weight"))
        state["state_dict"][key].fill_(3e38)
        save_torch_atomic(ckpt, state)
    (copy / "landscape.json").unlink(missing_ok=True)
    return copy


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--samples", "0"], "--samples 0"),
        (["--samples", "100000"], "pass 1.."),
        (["--probes", "eig,hessian_norm"], "unknown probe hessian_norm"),
        (["--top-k", "0"], "'--top-k': 0 is not in the range"),
        (["--top-k", "-2"], "'--top-k': -2 is not in the range"),
        (["--layer", "no_such_layer"], "no trainable parameters"),
    ],
)
def test_bad_input(run_dir: Path, capsys: pytest.CaptureFixture[str], args: list[str], fragment: str) -> None:
    before = snapshot(run_dir)
    code, _, err = landscape(capsys, str(run_dir), "--probes", "eig", *args)
    assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1, err
    assert snapshot(run_dir) == before


def test_no_checkpoint_and_nan_loss(tmp_path: Path, nan_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = landscape(capsys, str(empty))
    assert code == 2 and "checkpoints/best.ckpt" in err and list(empty.iterdir()) == []
    before = snapshot(nan_run)
    code, _, err = landscape(capsys, str(nan_run), "--probes", "eig", "--samples", "64")
    assert code == 2 and "the loss is nan" in err and len(err.strip().splitlines()) == 1, err
    assert snapshot(nan_run) == before
