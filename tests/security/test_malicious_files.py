"""Attacks with data files: a pickle whose ``__reduce__`` writes a marker file must never run, whatever loads it.

Each attack first proves its payload is live (a plain ``pickle.load`` writes the marker), then feeds the file to
every entry point that loads checkpoints or state dicts and checks the refusal and that the marker is absent.
Corrupt (empty, truncated, garbled) checkpoints get one clear error with exit status 2, never "aborted"/130.
"""

from __future__ import annotations

import argparse
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from losslab.cli import main
from losslab.errors import CorruptFileError, LosslabError, UnsafeFileError
from losslab.serialization import load_torch_file
from losslab.train import TrainConfig, fit, load_run


class Payload:
    """Unpickling this calls ``Path.write_text(marker, "pwned")``: code from a data file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return Path.write_text, (self.marker, "pwned")


@pytest.fixture(scope="module")
def good_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    return fit(TrainConfig(epochs=1, out_dir=out, run_name="good", progress=False)).run_dir


@pytest.fixture()
def marker(tmp_path: Path) -> Path:
    return tmp_path / "PWNED"


def _evil_checkpoint(good: Path, dest: Path, marker: Path) -> None:
    """A real losslab checkpoint plus one pickled payload object; the payload is proven live first."""
    ckpt = torch.load(good / "checkpoints" / "best.ckpt", weights_only=True)
    ckpt["callbacks"] = {"evil": Payload(marker)}
    torch.save(ckpt, dest)
    torch.load(dest, weights_only=False)  # control: an unsafe load runs the payload
    assert marker.read_text() == "pwned"
    marker.unlink()


@pytest.fixture()
def evil_run(good_run: Path, tmp_path: Path, marker: Path) -> Path:
    run = tmp_path / "evil"
    shutil.copytree(good_run, run)
    for name in ("best.ckpt", "last.ckpt"):
        _evil_checkpoint(good_run, run / "checkpoints" / name, marker)
    return run


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        main(args)
    return int(info.value.code), capsys.readouterr().err


def test_load_run_refuses_pickled_code(evil_run: Path, marker: Path) -> None:
    with pytest.raises(UnsafeFileError, match="pickled code/objects losslab does not load"):
        load_run(evil_run)
    assert not marker.exists()


@pytest.mark.parametrize(
    "args", [["evaluate"], ["quantize", "--method", "rtn", "--bits", "8", "--calib-samples", "32"]], ids=str
)
def test_cli_refuses_pickled_code(
    evil_run: Path, marker: Path, args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _cli([args[0], str(evil_run), *args[1:]], capsys)
    assert code == 2 and "pickled code/objects" in err and "best.ckpt" in err
    assert not marker.exists()


def test_resume_refuses_pickled_code(evil_run: Path, marker: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _cli(["train", "--resume", str(evil_run), "--epochs", "2", "--no-progress"], capsys)
    assert code == 2 and "pickled code/objects" in err and "last.ckpt" in err
    assert not marker.exists()


def test_study_reusing_a_run_folder_refuses_pickled_code(evil_run: Path, marker: Path) -> None:
    """A study job whose run folder already holds a finished run only loads its best checkpoint: refused."""
    import yaml

    from losslab.study.job import StudyJob
    from losslab.study.pipeline import train_and_compress

    stored = yaml.safe_load((evil_run / "config.yaml").read_text())
    compress = {"methods": [{"method": "rtn", "bits": [8]}]}
    job = StudyJob("k", stored, str(evil_run), True, (), compress, "attack")
    with pytest.raises(UnsafeFileError):
        train_and_compress(job)
    assert not marker.exists()


def test_state_dict_and_timm_checkpoint_refuse_pickled_code(tmp_path: Path, marker: Path) -> None:
    from losslab.train.checkpoint import load_timm_checkpoint

    path = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2), "x": Payload(marker)}, path)
    with pytest.raises(UnsafeFileError, match="pickled code"):
        load_torch_file(path, what="state dict")
    with pytest.raises(UnsafeFileError):
        load_timm_checkpoint(torch.nn.Linear(2, 2), path)
    # a plain pickle (not torch's zip format) as a timm .pth.tar
    with open(tmp_path / "plain.pth.tar", "wb") as fh:
        pickle.dump({"state_dict": Payload(marker)}, fh)
    with pytest.raises(UnsafeFileError):
        load_timm_checkpoint(torch.nn.Linear(2, 2), tmp_path / "plain.pth.tar")
    assert not marker.exists()


def test_pickle_named_as_packed_file_is_refused(tmp_path: Path, marker: Path) -> None:
    from losslab.lm.models import load_causal_lm
    from losslab.quant import load_packed

    path = tmp_path / "model.safetensors"
    torch.save({"x": Payload(marker)}, path)
    with pytest.raises(CorruptFileError, match="not a readable safetensors file"):
        load_packed(path, model=torch.nn.Linear(2, 2))
    with pytest.raises(CorruptFileError):
        load_causal_lm(path)
    assert not marker.exists()


def test_recorded_norms_file_refuses_pickled_code(tmp_path: Path, marker: Path) -> None:
    from losslab.layers import NormalizeToRecorded

    path = tmp_path / "norms.pt"
    torch.save(Payload(marker), path)
    with pytest.raises(UnsafeFileError):
        NormalizeToRecorded(path)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------- corrupt files


def _damaged(good_run: Path, tmp_path: Path, kind: str) -> Path:
    run = tmp_path / kind
    shutil.copytree(good_run, run)
    best = run / "checkpoints" / "best.ckpt"
    data = best.read_bytes()
    best.write_bytes({"empty": b"", "truncated": data[: len(data) // 2], "garbled": b"\x80\x02garbage" * 50}[kind])
    return run


@pytest.mark.parametrize("kind", ["empty", "truncated", "garbled"])
def test_corrupt_checkpoint_is_one_clear_error(
    good_run: Path, tmp_path: Path, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _damaged(good_run, tmp_path, kind)
    with pytest.raises(CorruptFileError, match=r"best\.ckpt"):
        load_run(run)
    code, err = _cli(["evaluate", str(run)], capsys)
    assert code == 2, err  # a zero-byte file once gave "aborted" with exit status 130
    assert "aborted" not in err and "best.ckpt" in err and ("empty" in err or "corrupt" in err)
    assert "Traceback" not in err


def test_corrupt_resume_checkpoint_fails_before_training(
    good_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "r"
    shutil.copytree(good_run, run)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    before = (run / "history.json").read_text()
    code, err = _cli(["train", "--resume", str(run), "--epochs", "2", "--no-progress"], capsys)
    assert code == 2 and "empty" in err and "last.ckpt" in err
    assert (run / "history.json").read_text() == before


def test_foreign_files_are_named(tmp_path: Path) -> None:
    path = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), path)
    with pytest.raises(LosslabError, match="not a losslab classifier checkpoint"):
        load_run(path)
    with pytest.raises(LosslabError, match="does not exist"):
        load_torch_file(tmp_path / "missing.pt")


# ---------------------------------------------------------------------------------------------- what is allowed


def test_resume_still_works_with_weights_only(good_run: Path, tmp_path: Path) -> None:
    """Lightning's own resume path loads with weights_only=True: a losslab checkpoint holds plain data only."""
    run = tmp_path / "resumed"
    shutil.copytree(good_run, run)
    (run / "result.json").unlink()
    cfg = TrainConfig.build({**load_run(run).config.to_dict(), "resume": str(run), "epochs": 2, "progress": False})
    result = fit(cfg)
    assert [row["epoch"] for row in result.epochs] == [0, 1]
    assert load_torch_file(run / "checkpoints" / "last.ckpt", what="checkpoint")["epoch"] == 1


def test_timm_checkpoint_keys_ema_and_prefixes(tmp_path: Path) -> None:
    """A timm train.py checkpoint (args as argparse.Namespace, 'module.' keys, state_dict_ema) loads safely."""
    from losslab.models import create_model
    from losslab.train.checkpoint import load_timm_checkpoint, timm_state_dict

    model = create_model("small_cnn", num_classes=10, in_chans=1)
    state = {f"module.{k}": v.clone() for k, v in model.state_dict().items()}
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    path = tmp_path / "model_best.pth.tar"
    args = argparse.Namespace(model="small_cnn", lr=0.1, epochs=3)
    torch.save({"epoch": 3, "arch": "small_cnn", "state_dict": state, "state_dict_ema": ema, "args": args}, path)
    plain = timm_state_dict(path)
    assert set(plain) == set(model.state_dict()) and all(torch.equal(plain[k], state[f"module.{k}"]) for k in plain)
    fresh = create_model("small_cnn", num_classes=10, in_chans=1)
    load_timm_checkpoint(fresh, path, use_ema=True)
    assert all(torch.equal(fresh.state_dict()[k], ema[k]) for k in ema)
    with pytest.raises(LosslabError, match="does not fit"):
        load_timm_checkpoint(create_model("small_cnn", num_classes=3, in_chans=1), path)
    from losslab.train.checkpoint import read_timm_checkpoint

    full = read_timm_checkpoint(path)
    assert full.epoch == 3 and full.arch == "small_cnn" and full.args == {"model": "small_cnn", "lr": 0.1, "epochs": 3}
    assert full.optimizer is None and full.state_dict_ema is not None
    bare = tmp_path / "bare.pth"
    torch.save(model.state_dict(), bare)  # a bare state dict is accepted too
    assert set(timm_state_dict(bare, use_ema=True)) == set(model.state_dict())


def test_cifar_batch_with_pickled_code_is_refused(tmp_path: Path, marker: Path) -> None:
    """CIFAR's python batches are pickles: only numpy arrays and plain data are built from them."""
    import numpy as np

    from losslab.data.cifar import load_cifar

    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for name in (*(f"data_batch_{b}" for b in range(1, 6)), "test_batch", "batches.meta"):
        batch = {b"labels": [1, 2], b"data": np.zeros((2, 3072), dtype=np.uint8), b"label_names": [b"a"] * 10}
        with open(root / name, "wb") as fh:
            pickle.dump(batch, fh, protocol=2)  # the original batches are Python 2 protocol-2 pickles
    assert load_cifar(tmp_path, "cifar10", train=False, download=False).targets == [1, 2]  # plain data loads
    with open(root / "test_batch", "wb") as fh:
        pickle.dump({b"labels": Payload(marker), b"data": np.zeros((1, 3072), dtype=np.uint8)}, fh, protocol=2)
    with pytest.raises(UnsafeFileError, match="pickled code/objects"):
        load_cifar(tmp_path, "cifar10", train=False, download=False)
    assert not marker.exists()
    (root / "test_batch").write_bytes(b"\x80\x02}q")  # truncated
    with pytest.raises(CorruptFileError, match="re-extract"):
        load_cifar(tmp_path, "cifar10", train=False, download=False)


@pytest.mark.slow
def test_checkpoints_of_other_configurations_are_plain_data(tmp_path: Path) -> None:
    """Factorized model, AdamW, step schedule with warm-up, a regularizer, bf16 autocast: every checkpoint still
    holds only tensors and plain data, so weights_only=True loads it and resume works."""
    cfg = TrainConfig.build(
        {
            "epochs": 2,
            "out_dir": tmp_path,
            "run_name": "x",
            "progress": False,
            "model": "small_cnn",
            "rank_scale": 0.25,
            "spectral": True,
            "frobenius_decay": True,
            "optimizer": "adamw",
            "scheduler": "step",
            "warmup_epochs": 1,
            "regularizer": "l2grad",
            "lmbda": 0.01,
            "precision": "bf16-mixed",
        }
    )
    run = fit(cfg).run_dir
    for name in ("best.ckpt", "last.ckpt"):
        ckpt = load_torch_file(run / "checkpoints" / name, what="checkpoint")  # weights_only=True inside
        assert isinstance(ckpt["hyper_parameters"]["config"], dict)
    assert load_run(run).config.optimizer == "adamw"


def test_plain_pickle_checkpoint_is_named_unsafe_also_when_memory_mapped(tmp_path: Path, marker: Path) -> None:
    """A legacy (non-zip) pickle given to --resume, which validates with mmap=True, is refused as pickled code."""
    path = tmp_path / "last.ckpt"
    with open(path, "wb") as fh:
        pickle.dump({"state_dict": Payload(marker)}, fh)
    with pytest.raises(UnsafeFileError, match="pathlib"):
        load_torch_file(path, what="checkpoint", mmap=True)
    assert not marker.exists()
