"""A finished study leaves ``study.db`` alone: no SQLite ``-wal``/``-shm`` files once the writer has closed, even
after a read-only reader (``study table``, the report) has opened it."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from losslab.study import StudyStore

PROVENANCE = {"losslab_version": "test", "git_commit": "none"}


def _write(folder: Path, name: str) -> None:
    with StudyStore.create(folder) as store:
        assert store._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # crash-safe while writing
        store.record_spec(name, {"name": name}, None, PROVENANCE)


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_closed_study_leaves_only_its_database(tmp_path: Path) -> None:
    _write(tmp_path, "a")
    assert _files(tmp_path) == ["study.db"]
    with StudyStore.open(tmp_path) as store:  # read-only, as `study table` and the report open it
        assert store._conn.execute("SELECT name FROM specs").fetchall() == [("a",)]
    assert _files(tmp_path) == ["study.db"]
    conn = sqlite3.connect(tmp_path / "study.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    conn.close()
    _write(tmp_path, "b")  # a later run writes in WAL mode again and closes clean again
    assert _files(tmp_path) == ["study.db"]


def test_closing_beside_an_open_reader_neither_waits_nor_loses_data(tmp_path: Path) -> None:
    _write(tmp_path, "a")
    writer = StudyStore.create(tmp_path)
    writer.record_spec("b", {"name": "b"}, None, PROVENANCE)
    reader = StudyStore.open(tmp_path)
    reader._conn.execute("BEGIN")
    reader._conn.execute("SELECT count(*) FROM specs").fetchone()  # holds a read snapshot
    start = time.perf_counter()
    writer.close()
    assert time.perf_counter() - start < 5  # the busy switch back is skipped, not waited for (timeout is 60 s)
    reader._conn.execute("COMMIT")
    reader.close()
    with StudyStore.open(tmp_path) as store:
        assert [r[0] for r in store._conn.execute("SELECT name FROM specs ORDER BY rowid")] == ["a", "b"]
