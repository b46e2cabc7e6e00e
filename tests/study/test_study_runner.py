"""The runner and the store with a synthetic job: everything stored, reruns skip, kills lose at most one job."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from fake_jobs import LAYERS, fake_job, float_top1, quant_top1

from losslab.errors import LosslabError
from losslab.study import StudyStore, StudyStoreError, parse_study, run_study
from losslab.study.runner import claim_study_dir

HERE = Path(__file__).resolve().parent


def small_study(bits: list[int] | None = None, losses: tuple[str, ...] = ("ce", "focal")) -> dict:
    return {
        "name": "fake",
        "train": {"dataset": "digits", "model": "mlp", "epochs": 3},
        "grid": {"loss": list(losses), "lr": [0.01, 0.1]},
        "compress": {"methods": [{"method": "rtn", "bits": bits or [8, 4]}, {"method": "gptq", "bits": [4]}]},
    }


def log_lines(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def job_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    log = tmp_path / "jobs.log"
    monkeypatch.setenv("LOSSLAB_FAKE_JOB_LOG", str(log))
    return log


def test_every_result_is_stored_with_its_values(tmp_path: Path, job_log: Path) -> None:
    spec = parse_study(small_study())
    outcome = run_study(spec, tmp_path / "s", job_fn=fake_job, progress=False)
    assert (outcome.total, outcome.skipped, outcome.completed, outcome.failed) == (4, 0, 4, [])
    with StudyStore.open(tmp_path / "s") as store:
        runs = store.train_runs()
        rows = store.compressions()
        assert len(runs) == 4 and len(rows) == 4 * 3
        configs = {r["key"]: r["config"] for r in runs}
        for run in runs:
            assert run["float_top1"] == pytest.approx(float_top1(run["config"]))
            assert run["run_dir"] == f"runs/{run['key']}"  # relative to the study folder
            assert (run["losslab_version"], run["git_commit"]) == ("test", "abc")
        for row in rows:
            cfg = configs[row["train_key"]]
            assert row["top1"] == pytest.approx(quant_top1(cfg, row["bits"]))
            assert row["drop_top1"] == pytest.approx(8.0 / row["bits"])
            assert [e["name"] for e in store.layer_errors(row["key"])] == list(LAYERS)
            assert [h.layer for h in store.weight_histograms(row["key"])] == list(LAYERS)
        epochs = store.epochs()
        assert all(len(epochs[k]) == 3 and epochs[k][2]["val_logits/norm"] == 5.0 for k in configs)
        assert store.specs()[0]["spec"]["name"] == "fake"
        assert store.meta()["schema_version"] == "1"
    assert (tmp_path / "s" / "study.yaml").is_file()


def test_rerun_skips_done_jobs_and_extension_runs_only_missing_points(tmp_path: Path, job_log: Path) -> None:
    run_study(parse_study(small_study()), tmp_path, job_fn=fake_job, progress=False)
    assert len(log_lines(job_log)) == 4
    again = run_study(parse_study(small_study()), tmp_path, job_fn=fake_job, progress=False)
    assert (again.skipped, again.completed) == (4, 0)
    assert len(log_lines(job_log)) == 4  # the job function was not called
    wider = run_study(parse_study(small_study(bits=[8, 4, 2])), tmp_path, job_fn=fake_job, progress=False)
    assert (wider.skipped, wider.completed) == (0, 4)
    assert [line[1:3] for line in log_lines(job_log)[4:]] == [["0", "1"]] * 4  # compress-only, one point each
    with StudyStore.open(tmp_path) as store:
        assert len(store.train_runs()) == 4 and len(store.compressions()) == 4 * 4
        assert len(store.specs()) == 3


def test_a_failing_job_is_recorded_and_retried(tmp_path: Path, job_log: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = parse_study(small_study())
    monkeypatch.setenv("LOSSLAB_FAKE_JOB_FAIL_LOSS", "focal")
    outcome = run_study(spec, tmp_path, job_fn=fake_job, progress=False)
    assert outcome.completed == 2 and len(outcome.failed) == 2 and not outcome.ok
    assert all("RuntimeError: synthetic failure" in message for _, message in outcome.failed)
    with StudyStore.open(tmp_path) as store:
        failures = store.failures()
        assert {f["key"] for f in failures} == {k for k, _ in outcome.failed}
        assert all("fake_jobs.py" in f["traceback"] for f in failures)
        assert len(store.train_runs()) == 2
    monkeypatch.delenv("LOSSLAB_FAKE_JOB_FAIL_LOSS")
    retry = run_study(spec, tmp_path, job_fn=fake_job, progress=False)
    assert (retry.skipped, retry.completed, retry.ok) == (2, 2, True)
    with StudyStore.open(tmp_path) as store:
        assert store.failures() == [] and len(store.train_runs()) == 4


def test_a_second_run_on_the_same_folder_is_refused(tmp_path: Path) -> None:
    import fcntl

    claim_study_dir(tmp_path)  # what the first run did before taking its lock
    with open(tmp_path / ".study.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(LosslabError, match="another `losslab study run` is using"):
            run_study(parse_study(small_study()), tmp_path, job_fn=fake_job, progress=False)


def test_bad_backend_and_workers_fail_before_work(tmp_path: Path) -> None:
    spec = parse_study(small_study())
    with pytest.raises(LosslabError, match="backend='slurm'"):
        run_study(spec, tmp_path / "a", backend="slurm", job_fn=fake_job)
    with pytest.raises(LosslabError, match="workers=0"):
        run_study(spec, tmp_path / "b", workers=0, job_fn=fake_job)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def _snapshot(db: Path) -> bytes:
    return db.read_bytes()


def test_corrupt_and_foreign_databases_are_refused_and_left_untouched(tmp_path: Path) -> None:
    spec = parse_study(small_study())
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "study.db").write_bytes(b"this is not sqlite" * 100)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    with sqlite3.connect(foreign / "study.db") as conn:
        conn.execute("CREATE TABLE t (x)")
    for folder, message in [(corrupt, "is not a SQLite database"), (foreign, "not a losslab study database")]:
        before = _snapshot(folder / "study.db")
        with pytest.raises(StudyStoreError, match=message):
            run_study(spec, folder, job_fn=fake_job, progress=False)
        with pytest.raises(StudyStoreError, match="left untouched"):
            StudyStore.open(folder)
        assert _snapshot(folder / "study.db") == before
    with pytest.raises(StudyStoreError, match="no study database"):
        StudyStore.open(tmp_path / "missing")


def test_a_folder_from_an_incompatible_version_is_refused(tmp_path: Path) -> None:
    run_study(parse_study(small_study()), tmp_path, job_fn=fake_job, progress=False)
    with sqlite3.connect(tmp_path / "study.db") as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.close()
    before = _snapshot(tmp_path / "study.db")
    with pytest.raises(StudyStoreError, match=r"schema 99; this losslab .* reads schema 1"):
        run_study(parse_study(small_study()), tmp_path, job_fn=fake_job, progress=False)
    assert _snapshot(tmp_path / "study.db") == before


DRIVER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {here!r})
    from fake_jobs import fake_job
    from losslab.study import parse_study, run_study
    study = {study!r}
    if __name__ == "__main__":  # worker processes are spawned: they re-import this file
        run_study(parse_study(study), sys.argv[1], job_fn=fake_job, workers=int(sys.argv[2]), progress=False)
    """
)


@pytest.mark.slow
def test_a_killed_study_keeps_finished_jobs_and_a_parallel_rerun_repeats_none(tmp_path: Path, job_log: Path) -> None:
    study = small_study(losses=("ce", "focal", "root"))
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(here=str(HERE), study=study))
    out = tmp_path / "study"
    env = {**os.environ, "LOSSLAB_FAKE_JOB_SLEEP": "1.0"}
    proc = subprocess.Popen([sys.executable, str(driver), str(out), "1"], env=env)
    stored: list[str] = []
    deadline = time.monotonic() + 120
    while not stored and time.monotonic() < deadline:
        time.sleep(0.1)
        if (out / "study.db").exists():
            try:
                with StudyStore.open(out) as store:
                    stored = sorted(store.done_train_keys())
            except StudyStoreError:
                continue  # created but the schema is not committed yet
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    with StudyStore.open(out) as store:
        kept = {r["key"]: r for r in store.train_runs()}
        kept_rows = {r["key"]: r for r in store.compressions()}
    assert 1 <= len(kept) < 6, "the kill landed after the first job and before the last"
    started_before = len(log_lines(job_log))
    # the rerun uses a pool of 2 worker processes (--workers 2)
    rerun = subprocess.Popen([sys.executable, str(driver), str(out), "2"], env={**env, "LOSSLAB_FAKE_JOB_SLEEP": "0"})
    assert rerun.wait(timeout=600) == 0
    rerun_lines = log_lines(job_log)[started_before:]
    rerun_keys = [line[0] for line in rerun_lines]
    assert set(rerun_keys).isdisjoint(kept), "no stored job is repeated"
    assert len(rerun_keys) == len(set(rerun_keys)) == 6 - len(kept)
    pids = {int(line[3]) for line in rerun_lines}
    assert rerun.pid not in pids and 1 <= len(pids) <= 2, "jobs ran in the worker processes"
    with StudyStore.open(out) as store:
        assert len(store.train_runs()) == 6 and len(store.compressions()) == 18
        for key, row in kept_rows.items():
            now = next(r for r in store.compressions() if r["key"] == key)
            assert now == row, "stored results are never rewritten"
        assert all(r["finished_at"] == kept[r["key"]]["finished_at"] for r in store.train_runs() if r["key"] in kept)


def test_cli_status_table_and_report(tmp_path: Path, job_log: Path) -> None:
    from click.testing import CliRunner

    from losslab.cli.report import report
    from losslab.cli.study import study

    study_file = tmp_path / "fake.yaml"
    study_file.write_text(__import__("yaml").safe_dump(small_study()))
    out = tmp_path / "out"
    run_study(parse_study(small_study()), out, job_fn=fake_job, progress=False)
    runner = CliRunner()
    status = runner.invoke(study, ["status", str(out)])
    assert status.exit_code == 0, status.output
    assert "4 trained models, 12 compressed models" in status.output
    assert "4 of 4 jobs done, 0 left" in status.output
    table = runner.invoke(study, ["table", str(out), "--markdown"])
    assert table.exit_code == 0
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in table.output.splitlines()]
    assert ["loss=ce, lr=0.01", "rtn", "1", "90.10", "89.10", "88.10"] in cells
    made = runner.invoke(report, [str(out), "--out", str(tmp_path / "rep")])
    assert made.exit_code == 0 and (tmp_path / "rep" / "report.html").is_file()
    missing = runner.invoke(study, ["status", str(tmp_path / "nothing")])
    assert isinstance(missing.exception, StudyStoreError)
