"""Attacks on ``lm eval/quantize/finetune`` and ``translate train/eval/demo``: code named by a model folder, a local
packed file that would send losslab online, declared sizes that would allocate the machine away, numbers that mean
nothing, devices that are not there. Each asserts the precise outcome: exit 2 with a one-line message naming the
problem, nothing run, nothing written."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from losslab.cli import cli
from losslab.errors import ConfigError
from losslab.lm.offline import byte_tokenizer, synthetic_corpus, tiny_opt
from losslab.seq2seq.config import TranslateConfig

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

PWNED = "PWNED"


def _model_folder(root: Path, **config: object) -> Path:
    """A tiny OPT and byte tokenizer saved with save_pretrained, with ``config`` merged into config.json."""
    folder = root / "model"
    tiny_opt(seed=0).save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    data = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**data, **config}))
    return folder


def _invoke(args: list[str], stdin: str = "") -> tuple[int, str]:
    result = CliRunner().invoke(cli, args, input=stdin)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        from losslab.errors import LosslabError

        assert isinstance(result.exception, LosslabError), repr(result.exception)
        return 2, str(result.exception)
    return result.exit_code, result.output


def _lm_command(name: str, folder: Path, tmp_path: Path) -> list[str]:
    text = tmp_path / "corpus.txt"
    text.write_text(synthetic_corpus(seed=0)["train"][:4000])
    return {
        "eval": ["lm", "eval", "--model", str(folder), "--text-file", str(text), "--device", "cpu"],
        "quantize": ["lm", "quantize", "--model", str(folder), "--method", "rtn", "--text-file", str(text),
                     "--calib-samples", "2", "--seqlen", "32", "--json", str(tmp_path / "q.json"), "--device", "cpu"],
        "finetune": ["lm", "finetune", "--model", str(folder), "--out-dir", str(tmp_path / "ft"), "--text-file",
                     str(text), "--max-steps", "1", "--warmup-steps", "0", "--block-size", "32",
                     "--accelerator", "cpu"],
    }[name]  # fmt: skip


@pytest.mark.parametrize("command", ["eval", "quantize", "finetune"])
def test_model_folder_naming_custom_code_is_refused_before_loading(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """config.json's auto_map points at a module that writes a marker when imported; "y" waits on stdin."""
    monkeypatch.chdir(tmp_path)
    folder = _model_folder(tmp_path, auto_map={"AutoModelForCausalLM": "evil.EvilModel", "AutoConfig": "evil.C"})
    (folder / "evil.py").write_text(f"open({str(tmp_path / PWNED)!r}, 'w').write('ran')\n")
    start = time.perf_counter()
    code, message = _invoke(_lm_command(command, folder, tmp_path), stdin="y\ny\n")
    assert code == 2 and "names custom code (auto_map" in message and "never runs code" in message
    assert not (tmp_path / PWNED).exists()
    assert not (tmp_path / "ft").exists() and not (tmp_path / "q.json").exists()
    assert time.perf_counter() - start < 60


def test_every_from_pretrained_passes_trust_remote_code_false(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from losslab.lm import models as lm_models

    seen: list[object] = []

    def loader(source: str, **kwargs: object) -> str:
        seen.append(kwargs.get("trust_remote_code", "missing"))
        return source

    folder = tmp_path / "plain"
    folder.mkdir()
    lm_models._from_hub_or_local(loader, folder)
    lm_models._from_hub_or_local(loader, "facebook/opt-125m")  # the cache attempt (local_files_only) succeeds here
    assert seen == [False, False]


def _packed(tmp_path: Path, tokenizer: str, **config: object) -> Path:
    from losslab.lm.data import calibration_windows, tokenize_text
    from losslab.lm.packing import save_packed_lm
    from losslab.lm.quantize import quantize_decoder
    from losslab.quant.methods import RTN

    model = tiny_opt(seed=0)
    for key, value in config.items():
        setattr(model.config, key, value)
    ids = tokenize_text(byte_tokenizer(), synthetic_corpus(seed=0)["train"][:4000])
    result = quantize_decoder(model, RTN(bits=8), calibration_windows(ids, 2, 32), progress=False, inplace=True)
    path = tmp_path / "tiny.rtn8.safetensors"
    save_packed_lm(result, path, tokenizer=tokenizer)
    return path


def test_packed_file_naming_a_hub_tokenizer_never_goes_online(
    tmp_path: Path, no_network: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from losslab.lm import models as lm_models

    monkeypatch.setattr(lm_models, "_hub_offline", lambda: pytest.fail("the hub was probed for a local file"))
    path = _packed(tmp_path, tokenizer="losslab-test/surely-not-cached-tokenizer")
    text = tmp_path / "t.txt"
    text.write_text("hello world " * 50)
    start = time.perf_counter()
    code, message = _invoke(["lm", "eval", "--model", str(path), "--text-file", str(text), "--device", "cpu"])
    assert code == 2 and "not in the local Hugging Face cache" in message and "--tokenizer" in message
    assert time.perf_counter() - start < 30


def test_declared_huge_vocabulary_is_refused_before_allocation(tmp_path: Path) -> None:
    """A folder whose config.json declares 10^11 tokens (400 GB of embeddings) and one whose sizes pass each
    bound but together exceed the machine's memory: both refused in well under a second of allocation."""
    text = tmp_path / "t.txt"
    text.write_text("hello world " * 50)
    folder = _model_folder(tmp_path, vocab_size=10**11)
    start = time.perf_counter()
    code, message = _invoke(["lm", "eval", "--model", str(folder), "--text-file", str(text), "--device", "cpu"])
    assert code == 2 and "vocab_size=100,000,000,000" in message and "config.json" in message
    wide = {"vocab_size": 260, "ffn_dim": 1 << 20, "hidden_size": 1 << 16, "word_embed_proj_dim": 1 << 16}
    (folder / "config.json").write_text(json.dumps({**json.loads((folder / "config.json").read_text()), **wide}))
    code, message = _invoke(["lm", "eval", "--model", str(folder), "--text-file", str(text), "--device", "cpu"])
    assert code == 2 and "GiB of memory is available" in message
    assert time.perf_counter() - start < 60


def test_packed_recipe_with_a_huge_vocabulary_is_refused(tmp_path: Path) -> None:
    from losslab.lm.packing import load_packed_lm

    path = _packed(tmp_path, tokenizer="byte-tokenizer", vocab_size=2**40)
    with pytest.raises(ConfigError, match=r"vocab_size=1,099,511,627,776 in .*tiny\.rtn8\.safetensors"):
        load_packed_lm(path)


def test_translation_tokenizer_with_a_huge_vocabulary_is_refused_before_allocation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The vocabulary comes from the run's tokenizer.json: past the bound, or with tables that exceed memory, the
    model is not built."""
    from losslab import limits
    from losslab.seq2seq.train import build_model

    with pytest.raises(ConfigError, match=r"vocab_size=3,000,000 in 'tokenizer\.json' is out of range"):
        build_model(TranslateConfig(arch="toy"), 3_000_000)
    monkeypatch.setattr(limits, "available_memory", lambda: 2**30)  # 1 GiB free: 3 × 500k × 256 floats is 1.43 GiB
    with pytest.raises(ConfigError, match=r"the transformer_small model's 3 vocabulary table\(s\) needs 1\.43 GiB"):
        build_model(TranslateConfig(arch="transformer_small"), 500_000)


def test_check_allocation_against_available_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    from losslab import limits

    monkeypatch.setattr(limits, "available_memory", lambda: 10 * 2**30)
    limits.check_allocation("a table", 8 * 2**30)  # 80 % of what is free is allowed
    with pytest.raises(ConfigError, match=r"needs 8\.01 GiB but only 10\.00 GiB"):
        limits.check_allocation("a table", 8 * 2**30 + 2**23)
    with pytest.raises(ConfigError, match="not an integer"):
        limits.check_count("vocab_size", 1.5, high=10)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["lm", "eval", "--max-windows", "0"], "--max-windows"),
        (["lm", "eval", "--seqlen", "1"], "--seqlen"),
        (["lm", "finetune", "--gradient-clip", "nan"], "Invalid value for '--gradient-clip': 'nan' is not a finite"),
        (["lm", "finetune", "--gradient-clip", "inf"], "Invalid value for '--gradient-clip': 'inf' is not a finite"),
        (["lm", "finetune", "--lr", "inf"], "Invalid value for '--lr': 'inf' is not a finite number"),
        (["lm", "finetune", "--k", "inf"], "Invalid value for '--k': 'inf' is not a finite number"),
        (["lm", "finetune", "--max-eval-windows", "0"], "Invalid value for '--max-eval-windows': 0 is not in"),
        (["lm", "finetune", "--batch-size", "10000000"], "Invalid value for '--batch-size': 10000000 is not in the"),
        (["lm", "finetune", "--epochs", "1000000000"], "Invalid value for '--epochs': 1000000000 is not in the range"),
    ],
)
def test_lm_numeric_flags_have_ranges(args: list[str], message: str, tmp_path: Path, no_network: None) -> None:
    base = {"eval": ["--model", str(tmp_path / "none"), "--device", "cpu"],
            "finetune": ["--model", str(tmp_path / "none"), "--out-dir", str(tmp_path / "ft")]}[args[1]]  # fmt: skip
    code, output = _invoke(args + base)
    assert code == 2 and message in output
    assert not (tmp_path / "ft").exists()


def _cuda_free(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.mark.parametrize("command", ["eval", "quantize", "finetune"])
def test_lm_cuda_without_cuda_is_one_line(command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _cuda_free(monkeypatch)
    folder = _model_folder(tmp_path)
    args = _lm_command(command, folder, tmp_path)
    flag = "--accelerator" if command == "finetune" else "--device"
    args[args.index(flag) + 1] = "cuda"
    code, message = _invoke(args)
    assert code == 2 and message.startswith(f"{flag} cuda: this machine has no CUDA device") and "\n" not in message
    assert not (tmp_path / "ft").exists() and not (tmp_path / "q.json").exists()


# ---------------------------------------------------------------------------------------------------- translate


def _toy_files(tmp_path: Path) -> tuple[str, str]:
    from losslab.seq2seq.toy import toy_corpus

    pairs = toy_corpus(60, 0, 0, seed=1)["train"]
    src, tgt = tmp_path / "a.src", tmp_path / "a.tgt"
    src.write_text("\n".join(s for s, _ in pairs) + "\n")
    tgt.write_text("\n".join(t for _, t in pairs) + "\n")
    return str(src), str(tgt)


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    root = tmp_path_factory.mktemp("translate")
    src, tgt = _toy_files(root)
    run = root / "run"
    args = ["--arch", "toy", "--vocab-size", "500", "--max-epochs", "1", "--accelerator", "cpu"]
    code, output = _invoke(["translate", "train", "--out-dir", str(run), "--src-file", src, "--tgt-file", tgt, *args])
    assert code == 0, output
    return run, src, tgt


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--beam", "0"], "Invalid value for '--beam': 0 is not in the range 1<=x<=1000"),
        (["--beam", "-2"], "Invalid value for '--beam': -2 is not in the range 1<=x"),
        (["--lenpen", "nan"], "Invalid value for '--lenpen': 'nan' is not a finite number"),
        (["--lenpen", "-1"], "Invalid value for '--lenpen': -1.0 is not in the range 0<=x<=10"),
        (["--device", "cuda"], "--device cuda: this machine has no CUDA device; use --device cpu"),
        (["--device", "cuda:3"], "--device cuda:3: this machine has no CUDA device"),
        (["--device", "bogus"], "--device bogus: not a device"),
    ],
)
def test_translate_eval_refuses_meaningless_values(
    toy_run: tuple[Path, str, str], flags: list[str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _cuda_free(monkeypatch)
    run, src, tgt = toy_run
    code, output = _invoke(["translate", "eval", "--out-dir", str(run), "--src-file", src, "--tgt-file", tgt, *flags])
    assert code == 2 and message in output and "Traceback" not in output


def test_translate_eval_json_dash_prints_only_json(toy_run: tuple[Path, str, str]) -> None:
    run, src, tgt = toy_run
    args = ["translate", "eval", "--out-dir", str(run), "--src-file", src, "--tgt-file", tgt, "--json", "-",
            "--device", "cpu", "--beam", "2"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)  # the whole of stdout parses
    assert 0.0 <= data["bleu"] <= 100.0 and "BLEU" in result.stderr


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--lr", "-1"], "lr"),
        (["--k", "-3", "--loss", "root"], "k"),
        (["--max-tokens", "0"], "--max-tokens"),
        (["--lr", "nan"], "lr"),
        (["--vocab-size", "100000000000"], "--vocab-size"),
        (["--rank-scale", "0"], "--rank-scale"),
        (["--rank-scale", "1.5"], "--rank-scale"),
        (["--rank-scale", "0.001"], "int(s·d/H)=0"),
        (["--criterion", "adaptive_loss"], "--criterion adaptive_loss"),
        (["--lr-scheduler", "reduce_lr_on_plateau"], "inverse_sqrt schedule only"),
        (["--momentum", "0.9", "--optimizer", "nag"], "momentum 0.99 only"),
        (["--save-dir", "x"], "--out-dir"),
        (["--device-id", "0"], "--accelerator"),
        (["--distributed-world-size", "2"], "one device"),
        (["--frobenius-decay", "1e-4"], "--frobenius-decay --weight-decay 1e-4"),
        (["--accelerator", "gpu"], "--accelerator gpu: this machine has no CUDA device"),
    ],
)
def test_translate_train_refuses_before_any_folder(
    tmp_path: Path, flags: list[str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _cuda_free(monkeypatch)
    src, tgt = _toy_files(tmp_path)
    run = tmp_path / "run"
    code, output = _invoke(["translate", "train", "--out-dir", str(run), "--src-file", src, "--tgt-file", tgt,
                            "--arch", "toy", *flags])  # fmt: skip
    assert code == 2 and message in output and "\n" not in output.strip()
    assert not run.exists()


def test_translate_resume_refuses_a_changed_vocabulary(tmp_path: Path, toy_run: tuple[Path, str, str]) -> None:
    run = toy_run[0]
    (run / "result.json").rename(run / "result.moved")  # an unfinished run: only the vocabulary stops the resume
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    code, output = _invoke(["translate", "train", "--resume", str(run), "--vocab-size", "96", "--max-epochs", "2",
                            "--accelerator", "cpu"])  # fmt: skip
    assert code == 2 and "vocab_size=500 (given 96)" in output
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    (run / "result.moved").rename(run / "result.json")


def test_translate_nonfinite_loss_stops_with_exit_2_and_keeps_the_last_checkpoint(tmp_path: Path) -> None:
    """lr 10 with NAG makes the toy model's loss infinite within a few epochs; the run stops with exit 2 and the
    checkpoint on disk is the last finished epoch's (finite weights, its epoch recorded)."""
    from losslab.serialization import load_torch_file

    src, tgt = _toy_files(tmp_path)
    run = tmp_path / "run"
    code, output = _invoke(["translate", "train", "--out-dir", str(run), "--src-file", src, "--tgt-file", tgt,
                            "--arch", "toy", "--vocab-size", "80", "--max-epochs", "50", "--optimizer", "nag",
                            "--lr", "10", "--warmup-updates", "0", "--loss", "ce", "--accelerator", "cpu"])  # fmt: skip
    assert code == 2 and "training diverged: the loss became NaN or infinite" in output
    state = load_torch_file(run / "checkpoints" / "last.ckpt")
    assert all(bool(torch.isfinite(t).all()) for t in state["state_dict"].values())  # the loop's layout
    epochs = [row["epoch"] for row in json.loads((run / "history.json").read_text())]
    assert state["epoch"] == epochs[-1] and not (run / "result.json").exists()


def test_translate_demo_refuses_a_foreign_folder_before_any_work(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    result = CliRunner().invoke(cli, ["translate", "demo", "--out-dir", str(mine), "--overwrite", "--epochs", "1",
                                      "--accelerator", "cpu"])  # fmt: skip
    assert result.exit_code != 0 and "not a losslab run folder" in str(result.exception)
    assert "untrained" not in result.output and sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("out_dir", [".", "..", "sub/.."])
@pytest.mark.parametrize("command", ["translate train", "lm finetune"])
def test_overwrite_of_dot_out_dirs_deletes_nothing(
    out_dir: str, command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --run-name, --out-dir is the run folder: '.', '..' and 'sub/..' name no run, so nothing is removed
    (translate train used to rmtree whatever --out-dir named)."""
    work = tmp_path / "a" / "b"
    (work / "sub").mkdir(parents=True)
    (work / "thesis.tex").write_text("years of work")
    (tmp_path / "a" / "sibling.txt").write_text("mine too")
    monkeypatch.chdir(work)
    extra = ["--toy"] if command == "translate train" else ["--model", "m", "--text-file", "t.txt"]
    code, message = _invoke([*command.split(), "--out-dir", out_dir, "--overwrite", *extra])
    assert code == 2 and "one folder name inside --out-dir" in message
    assert (work / "thesis.tex").read_text() == "years of work" and (tmp_path / "a" / "sibling.txt").is_file()


def test_lm_finetune_resume_refuses_another_model_and_keeps_the_run(tmp_path: Path) -> None:
    folder = _model_folder(tmp_path)
    args = _lm_command("finetune", folder, tmp_path)
    code, output = _invoke([*args, "--checkpoint-every", "1", "--no-progress"])
    assert code == 0, output
    run = tmp_path / "ft"
    (run / "result.json").unlink()  # as a run killed after its last checkpoint leaves it
    before = {str(p): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    other = tmp_path / "other"
    folder.rename(other)
    code, message = _invoke(["lm", "finetune", "--resume", str(run), "--model", str(other)])
    assert code == 2 and f"model={str(folder)!r} (given {str(other)!r})" in message
    assert {str(p): p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
