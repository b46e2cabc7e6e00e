"""The attack suite: every row of :data:`security.attacks.ATTACKS` run through the real CLI, in process.

Each attack must end exactly as its row says: exit status 2 with a last line ``error: ...`` (ours) or
``Error: ...`` (click's usage errors) matching the row's message, or exit 0 where success is the right outcome;
no traceback; every victim file unchanged byte for byte; no marker or output where none may appear; and within
its time bound. ``docs/security.md`` carries the counts table generated from the same rows.
"""

from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path

import pytest

from losslab.cli import main
from security.attacks import ATTACKS, TINY_STUDY, Attack, Env, counts_table

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A finished small_cnn run on digits (1 epoch) and a finished one-job study with its report."""
    from losslab.report import build_report
    from losslab.study import run_study
    from losslab.train import TrainConfig, fit

    base = tmp_path_factory.mktemp("shared")
    run = fit(TrainConfig(epochs=1, out_dir=base, run_name="good", progress=False)).run_dir
    spec = base / "tiny.yaml"
    spec.write_text(TINY_STUDY)
    outcome = run_study(spec, base / "study", progress=False)
    assert outcome.ok
    build_report(outcome.study_dir)
    return run, outcome.study_dir


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run ``losslab ARGV`` in process; a traceback (an exception escaping ``main``) fails the test as it is."""
    try:
        main(argv)
        code = 0
    except SystemExit as exit_info:
        code = int(exit_info.code or 0)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.id for a in ATTACKS])
def test_attack(
    attack: Attack,
    shared: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("LOSSLAB_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)
    case = attack.build(Env(tmp_path, *shared))
    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
    before = {path: _digest(path) for path in case.victims}
    capsys.readouterr()
    start = time.monotonic()
    code, err = _cli(case.argv, capsys)
    elapsed = time.monotonic() - start
    assert "Traceback" not in err, err
    if case.expect is None:
        assert code == 0, err
    else:
        last = err.strip().splitlines()[-1] if err.strip() else ""
        assert code == 2, err
        assert re.match(r"(error|Error): ", last) and re.search(case.expect, last), err  # ours, or click's usage
    for path, digest in before.items():
        assert path.is_file() and _digest(path) == digest, f"{path} was changed"
    for path in case.absent:
        assert not path.exists() and not path.is_symlink(), f"{path} exists"
    for path in case.present:
        assert path.exists(), f"{path} is missing"
    assert elapsed < case.seconds, f"took {elapsed:.1f} s"


def test_rows_are_unique_and_classified() -> None:
    ids = [a.id for a in ATTACKS]
    assert len(ids) == len(set(ids))
    assert all(a.kind in ("payload", "victim", "forged", "bomb") and 1 <= a.cls <= 7 for a in ATTACKS)


def test_docs_carry_the_counts_table() -> None:
    text = (ROOT / "docs" / "security.md").read_text()
    assert counts_table() in text, "regenerate the table: python tests/security/attacks.py"
