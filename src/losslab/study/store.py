"""The results store of a study: one SQLite file (``study.db``) in the study folder, read by the report.

Every finished job is written in one transaction (WAL mode while the study runs; a clean close checkpoints the WAL
and returns the file to rollback journaling, so a finished study folder holds ``study.db`` alone), so a killed
study keeps everything it finished and a half-written job never appears. The file records its schema version; a
folder written by an incompatible losslab, or a file that is not a readable SQLite database, raises
:class:`StudyStoreError` and is never modified. :meth:`StudyStore.open` (status, table, report) opens the file
read-only (SQLite ``mode=ro``), so a study on a read-only disk or copied without write permission can still be
inspected::

    from losslab.study import StudyStore
    with StudyStore.open("study_runs/quickstart") as store:
        runs = store.train_runs()          # one dict per trained model (config, float metrics, timings, ...)
        rows = store.compressions()        # one dict per compressed model (method, bits, top1, drop_top1, ...)
        curves = store.epochs()            # {train_key: [{"epoch": 0, "val_acc": ...}, ...]}

Tables: ``meta`` (schema version), ``specs`` (every study file run into the folder), ``train_runs``,
``epoch_metrics`` (long format), ``compressions``, ``layer_errors`` (one JSON row per quantized layer),
``weight_hists`` (float weights per training run, quantized weights per compression), ``failures``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

from losslab.errors import LosslabError
from losslab.study.records import JobResult, WeightHistogram

SCHEMA_VERSION = 1
DB_NAME = "study.db"
SQLITE_MAGIC = b"SQLite format 3\x00"

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE specs (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, spec_json TEXT NOT NULL,
    source TEXT, started_at TEXT NOT NULL, losslab_version TEXT, git_commit TEXT);
CREATE TABLE train_runs (key TEXT PRIMARY KEY, config_json TEXT NOT NULL, run_dir TEXT,
    float_top1 REAL, float_top5 REAL, float_ce REAL, eval_n INTEGER, best_val_acc REAL, num_params INTEGER,
    train_time_s REAL, eval_time_s REAL, losslab_version TEXT, git_commit TEXT, host TEXT, finished_at TEXT);
CREATE TABLE epoch_metrics (train_key TEXT NOT NULL REFERENCES train_runs(key), epoch INTEGER NOT NULL,
    name TEXT NOT NULL, value REAL, PRIMARY KEY (train_key, epoch, name));
CREATE TABLE compressions (key TEXT PRIMARY KEY, train_key TEXT NOT NULL REFERENCES train_runs(key),
    label TEXT NOT NULL, method TEXT NOT NULL, bits INTEGER NOT NULL, options_json TEXT NOT NULL,
    setting_json TEXT NOT NULL, top1 REAL, top5 REAL, ce REAL, eval_n INTEGER, drop_top1 REAL,
    summary_json TEXT, quant_time_s REAL, eval_time_s REAL, losslab_version TEXT, git_commit TEXT, host TEXT,
    finished_at TEXT);
CREATE TABLE layer_errors (compression_key TEXT NOT NULL REFERENCES compressions(key), idx INTEGER NOT NULL,
    layer TEXT NOT NULL, row_json TEXT NOT NULL, PRIMARY KEY (compression_key, idx));
CREATE TABLE weight_hists (owner_key TEXT NOT NULL, kind TEXT NOT NULL CHECK (kind IN ('float', 'quant')),
    idx INTEGER NOT NULL, layer TEXT NOT NULL, edges_json TEXT NOT NULL, counts_json TEXT NOT NULL,
    stats_json TEXT NOT NULL, PRIMARY KEY (owner_key, idx));
CREATE TABLE failures (key TEXT PRIMARY KEY, error TEXT NOT NULL, traceback TEXT, at TEXT NOT NULL);
"""


class StudyStoreError(LosslabError):
    """A study database that cannot be used (missing, corrupt, or from an incompatible losslab)."""


def _connect_readonly(file: Path) -> sqlite3.Connection:
    """A read-only connection (``mode=ro``); on a read-only folder, where SQLite cannot create the WAL index, the
    file is opened as immutable (nobody can be writing it there)."""
    uri = f"file:{urllib.parse.quote(str(file.resolve()))}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=60, isolation_level=None)
    if _probe(conn):
        return conn
    conn.close()
    return sqlite3.connect(uri + "&immutable=1", uri=True, isolation_level=None)


def _probe(conn: sqlite3.Connection) -> bool:
    """True when ``conn`` can read the database (a WAL file in a read-only folder cannot be opened without -shm)."""
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.OperationalError:
        return False
    return True


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


#: The metric columns of a training or compression row, in table order.
_METRIC_KEYS = ("top1", "top5", "ce", "n")


def _metric_columns(metrics: dict[str, Any]) -> tuple[Any, ...]:
    """The row's values of ``_METRIC_KEYS`` (None where ``metrics`` lacks one)."""
    return tuple(metrics.get(name) for name in _METRIC_KEYS)


def _stamp(prov: dict[str, str]) -> tuple[str, ...]:
    """The columns that close a result row: losslab version, git commit, host, and the time of writing."""
    return prov["losslab_version"], prov["git_commit"], prov["host"], _now()


def db_path(path: str | Path) -> Path:
    """``path`` itself if it names a ``.db`` file, else ``path/study.db``."""
    path = Path(path)
    return path if path.suffix == ".db" else path / DB_NAME


class StudyStore:
    """An open study database. Use :meth:`open` (existing) or :meth:`create` (new or existing)."""

    def __init__(self, conn: sqlite3.Connection, path: Path, readonly: bool = False) -> None:
        self._conn = conn
        self.path = path
        self.readonly = readonly

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str | Path) -> StudyStore:
        """Open an existing study (folder or ``.db`` file) read-only; clear error if missing, corrupt, incompatible."""
        file = db_path(path)
        if not os.path.lexists(file):
            raise StudyStoreError(
                f"no study database at {str(file)!r}; run `losslab study run STUDY.yaml --out-dir {file.parent}` first"
            )
        return cls._connect(file, create=False, readonly=True)

    @classmethod
    def create(cls, path: str | Path) -> StudyStore:
        """Open the study in folder (or file) ``path``, creating an empty database if there is none."""
        file = db_path(path)
        file.parent.mkdir(parents=True, exist_ok=True)
        return cls._connect(file, create=True)

    @classmethod
    def _connect(cls, file: Path, create: bool, readonly: bool = False) -> StudyStore:
        """Connect; ``create`` allows initialising an empty database (nothing stored can be lost by that)."""
        untouched = f"{str(file)!r} was left untouched; move it away or use another study folder (--out-dir)"
        if os.path.lexists(file) and not file.is_file():
            raise StudyStoreError(f"{str(file)!r} is not a file (a folder or a broken link); " + untouched)
        if file.is_file() and file.stat().st_size > 0:
            with open(file, "rb") as fh:
                head = fh.read(len(SQLITE_MAGIC))
            if head != SQLITE_MAGIC:
                raise StudyStoreError(
                    f"{str(file)!r} is not a SQLite database (corrupt or a different file); " + untouched
                )
        try:
            conn = _connect_readonly(file) if readonly else sqlite3.connect(file, timeout=60, isolation_level=None)
        except sqlite3.DatabaseError as exc:
            raise StudyStoreError(f"{str(file)!r} cannot be read as a study database ({exc}); " + untouched) from None
        try:
            check = conn.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise StudyStoreError(f"{str(file)!r} is corrupt (SQLite quick_check: {check}); " + untouched)
            empty = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
            if empty and not create:
                raise StudyStoreError(f"{str(file)!r} holds no study (an empty database); " + untouched)
            if not empty:
                _check_schema(conn, file)
            if not readonly:
                conn.execute("PRAGMA journal_mode=WAL")  # only once the file is known to be a study
            if empty:
                with _transaction(conn):
                    _create_schema(conn)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StudyStoreError(f"{str(file)!r} cannot be read as a study database ({exc}); " + untouched) from None
        except StudyStoreError:
            conn.close()
            raise
        if not readonly:
            conn.execute("PRAGMA foreign_keys=ON")
        return cls(conn, file, readonly)

    def close(self) -> None:
        """Close the connection. A writer first copies the WAL into the database and switches back to rollback
        journaling, so a finished study leaves only ``study.db`` (no ``-wal``/``-shm`` files) and read-only readers
        need no WAL index. While another connection reads, SQLite keeps WAL mode (nothing is lost either way)."""
        if not self.readonly:
            try:
                self._conn.execute("PRAGMA busy_timeout=200")  # a reader still open: do not wait for it
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self._conn.execute("PRAGMA journal_mode=DELETE")
            except sqlite3.OperationalError:
                pass  # busy: the next writer or reader finds the WAL and uses it
        self._conn.close()

    def __enter__(self) -> StudyStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ writing
    def record_spec(self, name: str, spec: dict[str, Any], source: str | None, provenance: dict[str, str]) -> None:
        """Remember a study file run into this folder (kept for every run, newest last)."""
        with _transaction(self._conn):
            self._conn.execute(
                "INSERT INTO specs (name, spec_json, source, started_at, losslab_version, git_commit) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (name, json.dumps(spec), source, _now(), provenance["losslab_version"], provenance["git_commit"]),
            )

    def write_job(self, result: JobResult) -> None:
        """Store a finished job (training run and/or compressions) in one transaction."""
        prov = result.provenance
        with _transaction(self._conn) as conn:
            if result.train is not None:
                _forget_train(conn, result.train_key)  # a run trained again (its folder was deleted) replaces it
                _insert_train(conn, result, prov, self.path.parent)
            row = conn.execute("SELECT float_top1 FROM train_runs WHERE key = ?", (result.train_key,)).fetchone()
            if row is None:
                raise StudyStoreError(f"job {result.train_key}: compressions without a stored training run")
            for rec in result.compressions:
                top1 = rec.metrics.get("top1")
                drop = None if top1 is None or row[0] is None else row[0] - top1
                conn.execute(
                    "INSERT INTO compressions VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        rec.key,
                        result.train_key,
                        rec.point.label,
                        rec.point.method,
                        rec.point.bits,
                        json.dumps(rec.point.options_dict()),
                        json.dumps(rec.setting),
                        *_metric_columns(rec.metrics),
                        drop,
                        json.dumps(rec.summary, default=str),
                        rec.quant_time_s,
                        rec.eval_time_s,
                        *_stamp(prov),
                    ),
                )
                conn.executemany(
                    "INSERT INTO layer_errors VALUES (?,?,?,?)",
                    [(rec.key, i, str(r.get("name", i)), json.dumps(r, default=str)) for i, r in enumerate(rec.layers)],
                )
                _insert_hists(conn, rec.key, "quant", rec.histograms)
            conn.execute("DELETE FROM failures WHERE key = ?", (result.train_key,))

    def record_failure(self, key: str, error: str, traceback: str) -> None:
        """Remember that job ``key`` failed (replaced on retry, removed when it succeeds)."""
        with _transaction(self._conn):
            self._conn.execute("INSERT OR REPLACE INTO failures VALUES (?,?,?,?)", (key, error, traceback, _now()))

    # ------------------------------------------------------------------ reading
    def done_train_keys(self) -> set[str]:
        """Keys of stored training runs."""
        return {r[0] for r in self._conn.execute("SELECT key FROM train_runs")}

    def done_compression_keys(self) -> set[str]:
        """Keys of stored compressions."""
        return {r[0] for r in self._conn.execute("SELECT key FROM compressions")}

    def meta(self) -> dict[str, str]:
        """The ``meta`` table (schema version, creating losslab version, ...)."""
        return dict(self._conn.execute("SELECT key, value FROM meta"))

    def specs(self) -> list[dict[str, Any]]:
        """Every study file run into this folder, oldest first (``spec`` parsed)."""
        rows = self._rows("SELECT * FROM specs ORDER BY id")
        for r in rows:
            r["spec"] = json.loads(r.pop("spec_json"))
        return rows

    def train_runs(self) -> list[dict[str, Any]]:
        """One dict per training run (``config`` parsed), in insertion order."""
        rows = self._rows("SELECT * FROM train_runs ORDER BY rowid")
        for r in rows:
            r["config"] = json.loads(r.pop("config_json"))
        return rows

    def compressions(self) -> list[dict[str, Any]]:
        """One dict per compressed model (``options``, ``setting``, ``summary`` parsed), in insertion order."""
        rows = self._rows("SELECT * FROM compressions ORDER BY rowid")
        for r in rows:
            for name in ("options", "setting", "summary"):
                r[name] = json.loads(r.pop(f"{name}_json") or "null")
        return rows

    def epochs(self) -> dict[str, list[dict[str, Any]]]:
        """Per training run, its epochs as dicts ``{"epoch": e, metric: value, ...}`` in epoch order."""
        out: dict[str, dict[int, dict[str, Any]]] = {}
        for key, epoch, name, value in self._conn.execute(
            "SELECT train_key, epoch, name, value FROM epoch_metrics ORDER BY train_key, epoch"
        ):
            out.setdefault(key, {}).setdefault(epoch, {"epoch": epoch})[name] = value
        return {k: [v[e] for e in sorted(v)] for k, v in out.items()}

    def layer_errors(self, compression_key: str | None = None) -> list[dict[str, Any]]:
        """Per-layer error rows (``compression_key`` added), for one compression or all."""
        sql = "SELECT compression_key, row_json FROM layer_errors"
        args: tuple[Any, ...] = ()
        if compression_key is not None:
            sql, args = sql + " WHERE compression_key = ?", (compression_key,)
        return [{"compression_key": k, **json.loads(j)} for k, j in self._conn.execute(sql + " ORDER BY rowid", args)]

    def weight_histograms(self, owner_key: str) -> list[WeightHistogram]:
        """Weight histograms of a training run (float weights) or a compression (quantized weights)."""
        return [
            WeightHistogram(layer, json.loads(e), json.loads(c), json.loads(s))
            for layer, e, c, s in self._conn.execute(
                "SELECT layer, edges_json, counts_json, stats_json FROM weight_hists WHERE owner_key = ? ORDER BY idx",
                (owner_key,),
            )
        ]

    def failures(self) -> list[dict[str, Any]]:
        """Jobs whose last attempt failed: key, error, traceback, time."""
        return self._rows("SELECT * FROM failures ORDER BY at")

    def _rows(self, sql: str) -> list[dict[str, Any]]:
        cur = self._conn.execute(sql)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row)) for row in cur]


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _create_schema(conn: sqlite3.Connection) -> None:
    import losslab

    for statement in SCHEMA.strip().split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.executemany(
        "INSERT INTO meta VALUES (?, ?)",
        [
            ("schema_version", str(SCHEMA_VERSION)),
            ("created_by", f"losslab {losslab.__version__}"),
            ("created_at", _now()),
        ],
    )


def _expected_columns() -> dict[str, list[str]]:
    """Every table of :data:`SCHEMA` with its column names (from an in-memory database built from it)."""
    mem = sqlite3.connect(":memory:")
    try:
        mem.executescript(SCHEMA)
        return _columns(mem)
    finally:
        mem.close()


def _columns(conn: sqlite3.Connection) -> dict[str, list[str]]:
    names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    return {n: [c[1] for c in conn.execute(f"PRAGMA table_info('{n}')")] for n in names if n != "sqlite_sequence"}


def _check_tables(conn: sqlite3.Connection, file: Path) -> None:
    """Every table of the schema is present with its columns (a dropped or edited table is refused up front)."""
    found = _columns(conn)
    for table, columns in _expected_columns().items():
        if found.get(table) != columns:
            what = "is missing" if table not in found else "has other columns than losslab writes"
            raise StudyStoreError(
                f"{str(file)!r} is damaged: its table {table!r} {what}; it was left untouched. Restore the study "
                "from a copy, or run the study into a new folder (--out-dir)"
            )


def _check_schema(conn: sqlite3.Connection, file: Path) -> None:
    import losslab

    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "meta" not in tables:
        raise StudyStoreError(
            f"{str(file)!r} is a SQLite file but not a losslab study database (no meta table); "
            "it was left untouched; use another study folder (--out)"
        )
    meta = dict(conn.execute("SELECT key, value FROM meta"))
    version = meta.get("schema_version")
    if version == str(SCHEMA_VERSION):
        _check_tables(conn, file)
    if version != str(SCHEMA_VERSION):
        raise StudyStoreError(
            f"{str(file)!r} was written by {meta.get('created_by', 'an unknown losslab')} with study-store schema "
            f"{version}; this losslab {losslab.__version__} reads schema {SCHEMA_VERSION}. Read it with the losslab "
            "that wrote it, or run the study into a new folder (--out); the file was left untouched"
        )


def _forget_train(conn: sqlite3.Connection, key: str) -> None:
    """Remove a stored training run with its epochs, histograms and compressions (all made from its weights)."""
    stale = [r[0] for r in conn.execute("SELECT key FROM compressions WHERE train_key = ?", (key,))]
    for owner in stale:
        conn.execute("DELETE FROM layer_errors WHERE compression_key = ?", (owner,))
        conn.execute("DELETE FROM weight_hists WHERE owner_key = ?", (owner,))
    conn.execute("DELETE FROM compressions WHERE train_key = ?", (key,))
    conn.execute("DELETE FROM weight_hists WHERE owner_key = ?", (key,))
    conn.execute("DELETE FROM epoch_metrics WHERE train_key = ?", (key,))
    conn.execute("DELETE FROM train_runs WHERE key = ?", (key,))


def _insert_train(conn: sqlite3.Connection, result: JobResult, prov: dict[str, str], folder: Path) -> None:
    """Insert the training run (its run folder relative to the study folder when inside it), epochs, histograms."""
    rec = result.train
    assert rec is not None
    run_dir = Path(rec.run_dir)
    if run_dir.is_absolute() and run_dir.is_relative_to(folder.resolve()):
        run_dir = run_dir.relative_to(folder.resolve())
    conn.execute(
        "INSERT INTO train_runs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (
            result.train_key,
            json.dumps(rec.config),
            str(run_dir),
            *_metric_columns(rec.float_metrics),
            rec.best_val_acc,
            rec.num_params,
            rec.train_time_s,
            rec.eval_time_s,
            *_stamp(prov),
        ),
    )
    conn.executemany(
        "INSERT INTO epoch_metrics VALUES (?,?,?,?)",
        [
            (result.train_key, int(ep["epoch"]), name, float(value))
            for ep in rec.epochs
            for name, value in ep.items()
            if name != "epoch" and isinstance(value, int | float) and not isinstance(value, bool)
        ],
    )
    _insert_hists(conn, result.train_key, "float", rec.histograms)


def _insert_hists(conn: sqlite3.Connection, owner: str, kind: str, hists: list[WeightHistogram]) -> None:
    conn.executemany(
        "INSERT INTO weight_hists VALUES (?,?,?,?,?,?,?)",
        [
            (owner, kind, i, h.layer, json.dumps(h.edges), json.dumps(h.counts), json.dumps(h.stats))
            for i, h in enumerate(hists)
        ],
    )
