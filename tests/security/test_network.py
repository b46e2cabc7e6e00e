"""Nothing reaches the network unasked: local-looking ``--model`` paths that do not exist are errors (no hub
lookup), a hub id is read from the cache first, and an unreachable hub fails at once with one message."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from losslab.errors import DataNotFoundError
from losslab.lm import models as lm_models


@pytest.mark.parametrize("name", ["./typo", "/abs/typo", "~/typo", "a/b/c", "typo.safetensors", "..\\x", "org/x/"])
def test_local_looking_missing_path_is_an_error(name: str, no_network: None) -> None:
    with pytest.raises(DataNotFoundError, match="looks like a local path but does not exist"):
        lm_models.load_causal_lm(name)
    with pytest.raises(DataNotFoundError, match="looks like a local path"):
        lm_models.load_tokenizer(name)


@pytest.mark.parametrize("name", ["facebook/opt-125m", "gpt2", "EleutherAI/pythia-70m", "org/Model_v1.5"])
def test_hub_ids_are_hub_ids(name: str) -> None:
    assert lm_models.is_hub_id(name) and lm_models.model_source(name) == name


def test_existing_path_wins(tmp_path: Path) -> None:
    assert lm_models.model_source(tmp_path) == tmp_path


def test_offline_hub_name_fails_fast_without_network(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, no_network: None
) -> None:
    """Not cached + hub unreachable: one clear error at once, and no connection attempted by transformers."""
    monkeypatch.setattr(lm_models, "_hub_offline", lambda: True)
    start = time.perf_counter()
    with pytest.raises(DataNotFoundError, match="not reachable and it is not cached"):
        lm_models.load_causal_lm("losslab-test/surely-not-cached-model")
    assert time.perf_counter() - start < 10.0


def test_reachability_probe_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(key, raising=False)
    lm_models._reachable.cache_clear()
    start = time.perf_counter()
    assert lm_models._reachable("host.invalid", timeout=1.0) is False  # .invalid never resolves (RFC 2606)
    assert time.perf_counter() - start < 3.0


def test_hf_hub_offline_env_means_offline(monkeypatch: pytest.MonkeyPatch, no_network: None) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert lm_models._hub_offline() is True


@pytest.mark.parametrize("content", [b"", b"\x00" * 64], ids=["empty", "garbled"])
def test_lm_eval_on_a_damaged_packed_file_is_one_clear_error(
    tmp_path: Path, content: bytes, capsys: pytest.CaptureFixture[str], no_network: None
) -> None:
    from losslab.cli import main

    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    (tmp_path / "t.txt").write_text("some text " * 50)
    with pytest.raises(SystemExit) as info:
        main(["lm", "eval", "--model", str(path), "--text-file", str(tmp_path / "t.txt"), "--no-progress"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "model.safetensors" in err and "corrupt" in err and "aborted" not in err


def test_lm_eval_mistyped_path_exits_2_without_lookup(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_network: None
) -> None:
    from losslab.cli import main

    (tmp_path / "t.txt").write_text("some text " * 50)
    with pytest.raises(SystemExit) as info:
        main(["lm", "eval", "--model", "./no/such/model", "--text-file", str(tmp_path / "t.txt"), "--no-progress"])
    assert info.value.code == 2 and "looks like a local path" in capsys.readouterr().err


def test_empty_model_folder_is_named_not_the_tokenizer(tmp_path: Path) -> None:
    """`lm eval --model DIR` on a folder without model files says so instead of blaming the tokenizer."""
    with pytest.raises(DataNotFoundError, match="holds no model or tokenizer files"):
        lm_models.load_tokenizer(tmp_path)
