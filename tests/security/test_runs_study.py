"""Studies under faults: a SIGKILLed `--workers 2` study leaves no worker behind, a corrupt finished run is named
with what to do, and a read-only study folder can still be inspected (status, table, report)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

STUDY_TESTS = Path(__file__).resolve().parent.parent / "study"
sys.path.insert(0, str(STUDY_TESTS))

from fake_jobs import fake_job  # noqa: E402

from losslab.study import parse_study, run_study  # noqa: E402

STUDY = {
    "name": "fake",
    "train": {"dataset": "digits", "model": "mlp", "epochs": 3},
    "grid": {"loss": ["ce", "focal"], "lr": [0.01, 0.1]},
    "compress": {"methods": [{"method": "rtn", "bits": [8, 4]}]},
}

DRIVER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {here!r})
    from fake_jobs import fake_job
    from losslab.study import parse_study, run_study
    if __name__ == "__main__":  # worker processes are spawned: they re-import this file
        run_study(parse_study({study!r}), sys.argv[1], job_fn=fake_job, workers=2, progress=False)
    """
)


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigkill_of_a_two_worker_study_leaves_no_worker(tmp_path: Path) -> None:
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(here=str(STUDY_TESTS), study=STUDY))
    log = tmp_path / "jobs.log"
    env = {**os.environ, "LOSSLAB_FAKE_JOB_SLEEP": "120", "LOSSLAB_FAKE_JOB_LOG": str(log), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(driver), str(tmp_path / "study")], env=env)
    deadline = time.monotonic() + 120
    workers: set[int] = set()
    while len(workers) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
        if log.exists():
            workers = {int(line.split()[3]) for line in log.read_text().splitlines()}
    assert len(workers) == 2, "both workers started a job"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 15
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [pid for pid in workers if alive(pid)]
    for pid in left:  # clean up before failing
        os.kill(pid, signal.SIGKILL)
    assert not left, f"workers {left} outlived their study process"


def test_a_corrupt_result_names_its_file_and_the_fix(tmp_path: Path) -> None:
    from losslab.errors import LosslabError
    from losslab.study.job import StudyJob
    from losslab.study.pipeline import _train

    run = tmp_path / "runs" / "k"
    run.mkdir(parents=True)
    (run / "result.json").write_text('{"wall_time_s": 1.0, "best_val')  # cut off mid-write by an old losslab
    (run / "history.json").write_text("[]")
    job = StudyJob("k", {"model": "mlp"}, str(run), True, (), {}, "fake")
    with pytest.raises(LosslabError) as err:
        _train(job)
    message = str(err.value)
    assert str(run / "result.json") in message and "delete the run folder" in message


@pytest.fixture
def readonly_study(tmp_path: Path) -> Iterator[Path]:
    """A finished study on a read-only bind mount (root ignores chmod); skipped where mounting is not allowed."""
    out = tmp_path / "study"
    run_study(parse_study(STUDY), out, job_fn=fake_job, progress=False)
    view = tmp_path / "ro"
    view.mkdir()
    done = subprocess.run(["mount", "--bind", "-o", "ro", str(out), str(view)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot make a read-only bind mount here: {done.stderr.decode().strip()}")
    subprocess.run(["mount", "-o", "remount,bind,ro", str(view)], capture_output=True)  # older kernels need it
    try:
        try:
            (view / "probe").write_text("x")
        except OSError:
            yield view
        else:
            pytest.skip("the bind mount is not read-only here")
    finally:
        subprocess.run(["umount", str(view)], check=False)


def test_a_read_only_study_can_be_inspected(readonly_study: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from losslab.cli.report import report
    from losslab.cli.study import study

    before = {p.name: p.stat().st_mtime_ns for p in readonly_study.iterdir()}
    runner = CliRunner()
    status = runner.invoke(study, ["status", str(readonly_study)])
    assert status.exit_code == 0, status.output
    assert "4 trained models, 8 compressed models" in status.output
    table = runner.invoke(study, ["table", str(readonly_study), "--markdown"])
    assert table.exit_code == 0, table.output
    assert "rtn" in table.output
    made = runner.invoke(report, [str(readonly_study), "--out", str(tmp_path / "rep")])
    assert made.exit_code == 0, made.output
    assert (tmp_path / "rep" / "report.html").is_file()
    assert {p.name: p.stat().st_mtime_ns for p in readonly_study.iterdir()} == before


def test_a_read_only_connection_cannot_write(tmp_path: Path) -> None:
    import sqlite3

    from losslab.study import StudyStore

    out = tmp_path / "study"
    run_study(parse_study(STUDY), out, job_fn=fake_job, progress=False)
    with StudyStore.open(out) as store, pytest.raises(sqlite3.OperationalError, match="readonly"):
        store._conn.execute("DELETE FROM failures")
    with StudyStore.open(out) as store:
        assert store.meta()["schema_version"]
