"""The flags that were declared by hand and are now generated from typed configs (``logreg sweep``'s grid,
``gan sweep``'s grid, ``translate``'s data files, ``translate eval`` and ``translate demo``, ``train --config``)
accept and refuse what they did before, and reach the library call as the same values.

Each accepted command line is run up to the library function the command calls, which is replaced by a stub that
records its arguments and stops (no work); the expected values are written out here from the flags' documented
meaning (defaults from the library's own config class). A refused value exits with status 2 and a one-line
message naming the flag, before that call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from losslab.cli.app import cli


class Reached(Exception):
    """Raised by the stub in place of the library call: the command got that far, with these arguments."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__("reached")
        self.args_seen, self.kwargs_seen = args, kwargs


def stop(*args: Any, **kwargs: Any) -> None:
    raise Reached(*args, **kwargs)


def reach(args: list[str]) -> Reached:
    """Run ``losslab ARGS`` and return what the stubbed library call received."""
    result = CliRunner().invoke(cli, args)
    assert isinstance(result.exception, Reached), result.output
    return result.exception


def refused(args: list[str], flag: str) -> str:
    """Run ``losslab ARGS``; it must stop at parse time with status 2 and one error line naming ``flag``."""
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    error = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and flag in error[0], result.output
    return error[0]


# --- logreg sweep -------------------------------------------------------------------------------------------------


@pytest.fixture
def sweep_stub(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("losslab.logreg.sweep.run_sweep_folder", stop)


def test_logreg_sweep_defaults_are_the_sweep_config(sweep_stub: None) -> None:
    from losslab.logreg.sweep import SweepConfig

    seen = reach(["logreg", "sweep"])
    assert seen.args_seen == (SweepConfig(),)
    assert seen.kwargs_seen == {
        "out_dir": Path("runs"), "run_name": "logreg_sweep", "resume": None, "overwrite": False, "progress": None
    }  # fmt: skip


def test_logreg_sweep_flags_reach_the_config(sweep_stub: None) -> None:
    from losslab.logreg.sweep import SweepConfig

    args = ["--datasets", " iris_binary, wine_binary", "--k", "1,3.5", "--l2", "0,1e-3", "--seeds", "4,2"]
    args += ["--no-logistic", "--solver", "newton", "--max-iter", "7", "--tol", "1e-4", "--test-fraction", "0.25"]
    (cfg,) = reach(["logreg", "sweep", *args]).args_seen
    assert cfg == SweepConfig(
        datasets=("iris_binary", "wine_binary"), k=(1.0, 3.5), l2=(0.0, 1e-3), seeds=(4, 2), include_logistic=False,
        solver="newton", max_iter=7, tol=1e-4, test_fraction=0.25,
    )  # fmt: skip


def test_logreg_sweep_resume_gets_only_the_typed_flags(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """On --resume the stored config is the base: a flag left out must not be sent as its default."""
    monkeypatch.setattr("losslab.logreg.sweep.stored_config", stop)
    seen = reach(["logreg", "sweep", "--resume", str(tmp_path), "--k", "2", "--no-logistic"])
    assert seen.args_seen == (tmp_path, {"k": (2.0,), "include_logistic": False})
    assert reach(["logreg", "sweep", "--resume", str(tmp_path)]).args_seen == (tmp_path, {})


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--k", "0"], "--k"),
        (["--k", "1,nan"], "--k"),
        (["--k", "1,x"], "--k"),
        (["--k", "2e6"], "--k"),
        (["--l2", "-1"], "--l2"),
        (["--l2", "inf"], "--l2"),
        (["--seeds", "-1"], "--seeds"),
        (["--seeds", "0.5"], "--seeds"),
        (["--max-iter", "0"], "--max-iter"),
        (["--tol", "-1e-3"], "--tol"),
        (["--test-fraction", "1"], "--test-fraction"),
        (["--logistic"], "--logistic"),
        (["--no-logistic=1"], "--no-logistic"),
    ],
)
def test_logreg_sweep_refuses_at_parse_time(sweep_stub: None, args: list[str], flag: str) -> None:
    refused(["logreg", "sweep", *args], flag)


# --- gan sweep ----------------------------------------------------------------------------------------------------


@pytest.fixture
def gan_stub(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("losslab.gan.sweep.run_gan_sweep", stop)


def gan_grid(seen: Reached) -> tuple[list[float], list[int], bool, Path]:
    _base, ks, seeds, out_dir = seen.args_seen
    return list(ks), list(seeds), seen.kwargs_seen["include_logistic"], Path(out_dir)


def test_gan_sweep_default_grid(gan_stub: None) -> None:
    from losslab.gan.config import GanConfig

    seen = reach(["gan", "sweep"])
    assert gan_grid(seen) == ([2.0, 4.0, 8.0], [0, 1, 2], True, Path("gan_sweep"))
    assert seen.args_seen[0] == GanConfig.build({}) and seen.kwargs_seen["overwrite"] is False


def test_gan_sweep_flags_override_the_files_grid(gan_stub: None, tmp_path: Path) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text("epochs: 3\nsweep:\n  k: [3, 5]\n  seeds: [7]\n")
    seen = reach(["gan", "sweep", "--config", str(path)])
    assert gan_grid(seen)[:3] == ([3.0, 5.0], [7], True) and seen.args_seen[0].epochs == 3
    seen = reach(["gan", "sweep", "--config", str(path), "--k", "1.5", "--no-logistic"])
    assert gan_grid(seen)[:3] == ([1.5], [7], False)
    seen = reach(["gan", "sweep", "--k", "", "--seeds", "4,9"])  # an empty list leaves the default grid
    assert gan_grid(seen)[:3] == ([2.0, 4.0, 8.0], [4, 9], True)


def test_gan_sweep_refuses_a_files_unknown_grid_key(gan_stub: None, tmp_path: Path) -> None:
    from losslab.errors import ConfigError

    path = tmp_path / "sweep.yaml"
    path.write_text("sweep:\n  k: [3]\n  lr: [0.1]\n")
    result = CliRunner().invoke(cli, ["gan", "sweep", "--config", str(path)])
    assert isinstance(result.exception, ConfigError) and "sweep keys ['lr'] are unknown" in str(result.exception)


@pytest.mark.parametrize(("grid", "key"), [("k: [0]", "k.0=0"), ("seeds: [-1]", "seeds.0=-1"), ("k: 3", "k=3")])
def test_gan_sweep_checks_the_files_grid_as_the_flags(gan_stub: None, tmp_path: Path, grid: str, key: str) -> None:
    """A file's sweep: values get the flags' checks, before any run (the library call is never reached)."""
    from losslab.errors import ConfigError

    path = tmp_path / "sweep.yaml"
    path.write_text(f"sweep:\n  {grid}\n")
    result = CliRunner().invoke(cli, ["gan", "sweep", "--config", str(path)])
    assert isinstance(result.exception, ConfigError) and key in str(result.exception), result.output


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--k", "0"], "--k"),
        (["--k", "2,inf"], "--k"),
        (["--seeds", "-1"], "--seeds"),
        (["--seeds", "1,a"], "--seeds"),
        (["--logistic"], "--logistic"),
        (["--loss", "root"], "--loss"),
        (["--seed", "1"], "--seed"),
    ],
)
def test_gan_sweep_refuses_at_parse_time(gan_stub: None, args: list[str], flag: str) -> None:
    refused(["gan", "sweep", *args], flag)


# --- translate train / demo / eval --------------------------------------------------------------------------------


def write_pairs(folder: Path, name: str, lines: int = 3) -> tuple[str, str]:
    src, tgt = folder / f"{name}.src", folder / f"{name}.tgt"
    src.write_text("".join(f"a{i} b\n" for i in range(lines)))
    tgt.write_text("".join(f"b a{i}\n" for i in range(lines)))
    return str(src), str(tgt)


@pytest.fixture
def translate_stub(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("losslab.seq2seq.train.train_translation", stop)


def test_translate_train_toy_defaults(translate_stub: None, tmp_path: Path) -> None:
    from losslab.seq2seq.config import TranslateConfig

    seen = reach(["translate", "train", "--toy", "--out-dir", str(tmp_path / "r"), "--accelerator", "cpu"])
    cfg, corpus, out_dir, device = seen.args_seen
    assert cfg == TranslateConfig.build({}) and set(corpus) == {"train", "valid", "test"}
    assert (out_dir, device) == (tmp_path / "r", "cpu")
    assert {key: seen.kwargs_seen[key] for key in ("run_name", "resume", "overwrite", "data", "progress")} == {
        "run_name": None, "resume": None, "overwrite": False, "data": {"toy": True}, "progress": None
    }  # fmt: skip


def test_translate_train_files_and_config_file(translate_stub: None, tmp_path: Path) -> None:
    """The data flags are read as aligned files and recorded with absolute paths; flags override --config's keys."""
    train_src, train_tgt = write_pairs(tmp_path, "train", 4)
    valid_src, valid_tgt = write_pairs(tmp_path, "valid", 2)
    config = tmp_path / "t.yaml"
    config.write_text("translate:\n  arch: toy\n  beam: 3\n")
    args = ["--src-file", train_src, "--tgt-file", train_tgt, "--valid-src", valid_src, "--valid-tgt", valid_tgt]
    seen = reach(["translate", "train", *args, "--config", str(config), "--beam", "4", "--overwrite"])
    cfg, corpus, _, _ = seen.args_seen
    assert (cfg.arch, cfg.beam) == ("toy", 4) and seen.kwargs_seen["overwrite"] is True
    assert corpus["train"] == [(f"a{i} b", f"b a{i}") for i in range(4)] and len(corpus["valid"]) == 2
    paths = dict(src_file=train_src, tgt_file=train_tgt, valid_src=valid_src, valid_tgt=valid_tgt)
    assert seen.kwargs_seen["data"] == {key: str(Path(p).resolve()) for key, p in paths.items()}


def test_translate_train_resume_reuses_the_stored_data(translate_stub: None, monkeypatch, tmp_path: Path) -> None:
    stored = {"arch": "toy", "max_epochs": 2, "data": {"toy": True}}
    monkeypatch.setattr("losslab.seq2seq.train.stored_run_config", lambda resume: dict(stored))
    seen = reach(["translate", "train", "--resume", str(tmp_path), "--max-epochs", "3", "--accelerator", "cpu"])
    cfg, corpus, _, _ = seen.args_seen
    assert len(corpus["train"]) == 2000  # the toy pair's default corpus
    assert (cfg.arch, cfg.max_epochs) == ("toy", 3) and seen.kwargs_seen["data"] == {"toy": True}
    assert seen.kwargs_seen["resume"] == tmp_path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give exactly one data source"),
        (["--toy", "--download"], "give exactly one data source"),
        (["--toy", "--devices", "2"], "--devices 2: losslab translate trains on one device"),
        (["--src-file", "{train_src}"], "the train split needs both its source and target file"),
        (["--src-file", "{train_src}", "--tgt-file", "{train_tgt}", "--valid-src", "{train_src}"], "the valid split"),
    ],
)
def test_translate_train_refuses_bad_sources(
    translate_stub: None, tmp_path: Path, args: list[str], message: str
) -> None:
    from losslab.errors import ConfigError

    train_src, train_tgt = write_pairs(tmp_path, "train")
    args = [arg.format(train_src=train_src, train_tgt=train_tgt) for arg in args]
    result = CliRunner().invoke(cli, ["translate", "train", "--out-dir", str(tmp_path / "r"), *args])
    assert isinstance(result.exception, ConfigError) and message in str(result.exception), result.output


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--toy=1"], "--toy"),
        (["--no-toy"], "--no-toy"),
        (["--no-download"], "--no-download"),
        (["--devices", "0"], "--devices"),
        (["--accelerator", "tpu"], "--accelerator"),
        (["--beam", "0"], "--beam"),
    ],
)
def test_translate_train_refuses_at_parse_time(translate_stub: None, args: list[str], flag: str) -> None:
    refused(["translate", "train", *args], flag)


def test_translate_demo_flags(translate_stub: None, tmp_path: Path) -> None:
    seen = reach(["translate", "demo", "--out-dir", str(tmp_path), "--accelerator", "cpu"])
    (cfg, corpus, out_dir, device), kwargs = seen.args_seen, seen.kwargs_seen
    fnl = (cfg.rank_scale, cfg.spectral, cfg.frobenius_decay)
    assert (cfg.arch, cfg.max_epochs, fnl) == ("toy", 12, (None, False, False))
    assert (len(corpus["train"]), out_dir, str(device), kwargs["data"], kwargs["overwrite"]) == (
        1000, tmp_path, "cpu", {"toy": True}, False
    )  # fmt: skip
    args = ["--epochs", "2", "--rank-scale", "0.5", "--run-name", "x", "--accelerator", "cpu"]
    seen = reach(["translate", "demo", *args])
    cfg = seen.args_seen[0]
    assert (cfg.max_epochs, cfg.rank_scale, cfg.spectral, cfg.frobenius_decay) == (2, 0.5, True, True)
    assert seen.kwargs_seen["run_name"] == "x"


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--epochs", "0"], "--epochs"),
        (["--epochs", "1001"], "--epochs"),
        (["--rank-scale", "0"], "--rank-scale"),
        (["--rank-scale", "1.5"], "--rank-scale"),
        (["--rank-scale", "nan"], "--rank-scale"),
        (["--toy"], "--toy"),
    ],
)
def test_translate_demo_refuses_at_parse_time(translate_stub: None, args: list[str], flag: str) -> None:
    refused(["translate", "demo", *args], flag)


@pytest.fixture
def eval_stub(monkeypatch: pytest.MonkeyPatch) -> None:
    from losslab.seq2seq.config import TranslateConfig

    run_cfg = TranslateConfig.build({"arch": "toy", "beam": 7, "lenpen": 0.3})
    monkeypatch.setattr("losslab.seq2seq.train.load_run", lambda out_dir, dev: (out_dir, str(dev), run_cfg))
    monkeypatch.setattr("losslab.seq2seq.train.bleu_of", stop)


def test_translate_eval_flags(eval_stub: None, tmp_path: Path) -> None:
    src, tgt = write_pairs(tmp_path, "test", 2)
    base = ["translate", "eval", "--out-dir", str(tmp_path), "--src-file", src, "--tgt-file", tgt]
    model, tok, pairs, cfg, dev = reach([*base, "--device", "cpu"]).args_seen
    assert (model, tok, pairs, str(dev)) == (tmp_path, "cpu", [("a0 b", "b a0"), ("a1 b", "b a1")], "cpu")
    assert (cfg.beam, cfg.lenpen) == (7, 0.3)  # the run's
    cfg = reach([*base, "--device", "cpu", "--beam", "2", "--lenpen", "0", "--json", "-"]).args_seen[3]
    assert (cfg.beam, cfg.lenpen) == (2, 0.0)


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--beam", "0"], "--beam"),
        (["--beam", "1001"], "--beam"),
        (["--lenpen", "-1"], "--lenpen"),
        (["--lenpen", "inf"], "--lenpen"),
        (["--out-dir", "{dir}", "--tgt-file", "{src}"], "--src-file"),
        (["--out-dir", "{dir}", "--src-file", "{src}"], "--tgt-file"),
        (["--out-dir", "{missing}", "--src-file", "{src}", "--tgt-file", "{src}"], "--out-dir"),
        (["--src-file", "{src}", "--tgt-file", "{src}"], "--out-dir"),  # a traceback before this change
        (["--json"], "--json"),
    ],
)
def test_translate_eval_refuses_at_parse_time(eval_stub: None, tmp_path: Path, args: list[str], flag: str) -> None:
    src, _ = write_pairs(tmp_path, "test", 2)
    args = [arg.format(src=src, dir=tmp_path, missing=tmp_path / "missing") for arg in args]
    if flag in ("--beam", "--lenpen", "--json"):
        args = ["--out-dir", str(tmp_path), "--src-file", src, "--tgt-file", src, *args]
    refused(["translate", "eval", *args], flag)


# --- train: --config, --print-config and timm's recipe flags ------------------------------------------------------


@pytest.fixture
def fit_stub(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("losslab.train.fit", stop)


def test_train_config_file_and_recipe_flags_reach_the_config(fit_stub: None, tmp_path: Path) -> None:
    from losslab.train.config import TrainConfig

    (cfg,) = reach(["train"]).args_seen
    assert cfg == TrainConfig.build({})
    config = tmp_path / "run.yaml"
    config.write_text("epochs: 3\nlr: 0.05\n")
    (cfg,) = reach(["train", "--config", str(config), "--lr", "0.1"]).args_seen
    assert (cfg.epochs, cfg.lr) == (3, 0.1)  # the flag wins over the file
    assert reach(["train", "--amp"]).args_seen[0].precision == "16-mixed"
    assert reach(["train", "--amp", "--amp-dtype", "bfloat16"]).args_seen[0].precision == "bf16-mixed"
    result = CliRunner().invoke(cli, ["train", "--dali"])
    assert isinstance(result.exception, Reached) and "--dali is ignored" in result.stderr


def test_train_print_config_prints_the_resolved_config_and_trains_nothing(fit_stub: None) -> None:
    import yaml

    result = CliRunner().invoke(cli, ["train", "--print-config", "--epochs", "4", "--amp"])
    assert result.exit_code == 0, result.output
    printed = yaml.safe_load(result.stdout)
    assert (printed["epochs"], printed["precision"]) == (4, "16-mixed")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--amp-dtype", "bfloat16"], "--amp-dtype only applies with --amp"),
        (["--amp", "--precision", "bf16-mixed"], "--amp means --precision 16-mixed"),
    ],
)
def test_train_refuses_recipe_conflicts(fit_stub: None, args: list[str], message: str) -> None:
    from losslab.errors import ConfigError

    result = CliRunner().invoke(cli, ["train", *args])
    assert isinstance(result.exception, ConfigError) and message in str(result.exception), result.output


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--validate"], "--validate"),
        (["--amp-dtype", "float32"], "--amp-dtype"),
        (["--no-amp"], "--no-amp"),
        (["--print-config=1"], "--print-config"),
        (["--no-validate"], "--no-validate"),
        (["--no-dali"], "--no-dali"),
        (["--config"], "--config"),
    ],
)
def test_train_refuses_at_parse_time(fit_stub: None, args: list[str], flag: str) -> None:
    refused(["train", *args], flag)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"rank_scale": 1.5}, "rank_scale=1.5: must be in (0, 1]"),  # Annotated bounds inside `| None`
        ({"beam": 0}, "beam=0: must be in [1, 1000]"),
        ({"lenpen": -0.5}, "lenpen=-0.5: must be in [0, 10]"),
    ],
)
def test_shared_bounds_keep_the_config_files_messages(values: dict[str, Any], message: str) -> None:
    """The bounds moved onto shared Annotated types still give a YAML file's value the range message."""
    from losslab.errors import ConfigError
    from losslab.seq2seq.config import TranslateConfig

    with pytest.raises(ConfigError) as err:
        TranslateConfig.build(values)
    assert message in str(err.value)
