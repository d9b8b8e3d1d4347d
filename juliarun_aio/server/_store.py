"""The server's durable state: jobs and their processes, in SQLite (WAL mode).

Two tables:

- ``jobs``: one row per job -- namespace, name, type, the spec's wire parameters (as
  ``_wire.encode_spec`` writes them, JSON-encoded), phase, message, requested worker
  count, allocated ports, cluster cookie, spec version (bumped by ``updateJob``),
  timestamps, and the ``uid`` of this submission (a job deleted and submitted again
  under the same name gets a new one; a database from before the column existed is
  migrated at open, its jobs getting fresh uids).
- ``processes``: one row per process ever started for a job -- its label (``master``,
  ``worker-2``), the key naming its log and exit files, the backend that runs it
  (``local``, ``slurm``) and the backend's number for it (``pid``: a process id, a Slurm
  job id) and kernel start time (to re-adopt it after a restart), the spec version it was
  started with, its state (``running``, ``exited``, ``lost``), exit code and the reason it
  ended.  Older rows of a label are pruned when it is restarted.

Log lines are not here: they live in files (see ``_logs``).  All methods are thread-safe.

One server at a time uses a data directory: :class:`DataDirectoryLock` holds an exclusive
``flock`` on ``<data-dir>/server.lock`` (which names the holder's pid) for the server's
life, and the kernel releases it when the server ends, however it ends.  The holder first
makes the directory private to its user (``_private.py``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs

from ._private import PRIVATE_FILE, make_private_dirs, open_private, secure_data_dir

__all__ = ["DataDirectoryInUseError", "DataDirectoryLock", "JobRow", "ProcRow", "Store", "new_uid"]

LOCK_FILE = "server.lock"


class DataDirectoryInUseError(RuntimeError):
    """Another server uses the data directory; two servers on one directory corrupt it.

    Attributes:
        directory: The data directory.
        pid: The process id of the server holding it, when known.
    """

    def __init__(self, directory: Path, pid: int | None) -> None:
        holder = f"pid {pid}" if pid is not None else "pid unknown"
        super().__init__(
            f"data directory {directory} is in use by another server ({holder}); stop that "
            "server or choose another data directory"
        )
        self.directory = directory
        self.pid = pid


class DataDirectoryLock:
    """The exclusive lock of one server on its data directory.

    The lock file's descriptor is not inherited by job processes, so a job that outlives
    its server never keeps the next server out.

    Args:
        directory: The data directory (created if missing).

    Raises:
        DataDirectoryInUseError: Another server (in this process or another) holds it.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.parent.mkdir(parents=True, exist_ok=True)
        make_private_dirs(directory)
        fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).strip()
            os.close(fd)
            raise DataDirectoryInUseError(
                directory, int(holder) if holder.isdigit() else None
            ) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            # Only the holder may change the directory: now it makes it private.
            secure_data_dir(directory)
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, b"%d\n" % os.getpid(), 0)
        self._fd: int | None = fd

    def release(self) -> None:
        """Let another server use the directory (also done by the kernel when we exit)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    namespace    TEXT NOT NULL,
    name         TEXT NOT NULL,
    kind         TEXT NOT NULL,
    params       TEXT NOT NULL,
    phase        TEXT NOT NULL,
    message      TEXT,
    requested    INTEGER NOT NULL,
    ports        TEXT NOT NULL,
    cookie       TEXT NOT NULL,
    spec_version INTEGER NOT NULL,
    created_at   REAL NOT NULL,
    finished_at  REAL,
    uid          TEXT NOT NULL,
    PRIMARY KEY (namespace, name)
);
CREATE TABLE IF NOT EXISTS processes (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    namespace    TEXT NOT NULL,
    job          TEXT NOT NULL,
    label        TEXT NOT NULL,
    key          TEXT NOT NULL,
    restarts     INTEGER NOT NULL,
    pid          INTEGER NOT NULL,
    start_ticks  INTEGER,
    spec_version INTEGER NOT NULL,
    state        TEXT NOT NULL,
    exit_code    INTEGER,
    reason       TEXT,
    started_at   REAL NOT NULL,
    ended_at     REAL,
    backend      TEXT NOT NULL DEFAULT 'local'
);
CREATE INDEX IF NOT EXISTS processes_by_job ON processes (namespace, job);
"""


def new_uid() -> str:
    """Return a fresh identity for a job submission (16 lowercase hex digits)."""
    return secrets.token_hex(8)


@attrs.define
class JobRow:
    """A job as stored."""

    namespace: str
    name: str
    kind: str
    params: dict[str, str]
    phase: str
    message: str | None
    requested: int
    ports: dict[str, int]
    cookie: str
    spec_version: int
    created_at: float
    uid: str
    finished_at: float | None = None


#: The columns of ``jobs``, in the order of :class:`JobRow`'s fields.
_JOB_COLUMNS = (
    "namespace, name, kind, params, phase, message, requested, ports, cookie, spec_version, "
    "created_at, uid, finished_at"
)


@attrs.define
class ProcRow:
    """A process as stored."""

    id: int
    namespace: str
    job: str
    label: str
    key: str
    restarts: int
    pid: int
    start_ticks: int | None
    spec_version: int
    state: str
    exit_code: int | None
    reason: str | None
    started_at: float
    ended_at: float | None
    backend: str = "local"


_JOB_UPDATABLE = frozenset(
    {"params", "phase", "message", "requested", "spec_version", "finished_at", "kind"}
)
_PROC_UPDATABLE = frozenset({"state", "exit_code", "reason", "ended_at"})


class Store:
    """The SQLite database of one data directory.

    Args:
        path: The database file (created if missing).
    """

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        # Made private first: SQLite gives the -wal and -shm files the database's own mode.
        os.close(open_private(path, os.O_RDWR))
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._migrate()

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _migrate(self) -> None:
        """Bring a database written by an earlier version up to the current schema."""
        with self._transaction() as db:
            columns = {row[1] for row in db.execute("PRAGMA table_info(processes)")}
            if "backend" not in columns:
                db.execute("ALTER TABLE processes ADD COLUMN backend TEXT NOT NULL DEFAULT 'local'")
            columns = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
            if "uid" not in columns:
                db.execute("ALTER TABLE jobs ADD COLUMN uid TEXT NOT NULL DEFAULT ''")
                rows = db.execute("SELECT rowid FROM jobs").fetchall()
                db.executemany(
                    "UPDATE jobs SET uid = ? WHERE rowid = ?",
                    [(new_uid(), rowid) for (rowid,) in rows],
                )

    # -- jobs ---------------------------------------------------------------------------------

    def insert_job(self, job: JobRow) -> None:
        """Add a job (the caller checked that the name is free)."""
        with self._transaction() as db:
            db.execute(
                f"INSERT INTO jobs ({_JOB_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",  # noqa: S608 - a constant
                (
                    job.namespace,
                    job.name,
                    job.kind,
                    json.dumps(job.params),
                    job.phase,
                    job.message,
                    job.requested,
                    json.dumps(job.ports),
                    job.cookie,
                    job.spec_version,
                    job.created_at,
                    job.uid,
                    job.finished_at,
                ),
            )

    def update_job(self, namespace: str, name: str, **fields: Any) -> None:
        """Change some columns of a job (``params`` is a dict)."""
        unknown = set(fields) - _JOB_UPDATABLE
        if unknown:
            raise ValueError(f"cannot update job columns {sorted(unknown)}")
        if "params" in fields:
            fields["params"] = json.dumps(fields["params"])
        assignments = ", ".join(f"{column} = ?" for column in fields)
        with self._transaction() as db:
            db.execute(
                f"UPDATE jobs SET {assignments} WHERE namespace = ? AND name = ?",  # noqa: S608 - columns are checked above
                (*fields.values(), namespace, name),
            )

    def delete_job(self, namespace: str, name: str) -> None:
        """Remove a job and its processes."""
        with self._transaction() as db:
            db.execute("DELETE FROM processes WHERE namespace = ? AND job = ?", (namespace, name))
            db.execute("DELETE FROM jobs WHERE namespace = ? AND name = ?", (namespace, name))

    def jobs(self) -> list[JobRow]:
        """Return every job, oldest first."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs ORDER BY created_at, name"  # noqa: S608 - a constant
            ).fetchall()
        return [
            JobRow(
                namespace=row[0],
                name=row[1],
                kind=row[2],
                params=json.loads(row[3]),
                phase=row[4],
                message=row[5],
                requested=row[6],
                ports=json.loads(row[7]),
                cookie=row[8],
                spec_version=row[9],
                created_at=row[10],
                uid=row[11],
                finished_at=row[12],
            )
            for row in rows
        ]

    # -- processes ----------------------------------------------------------------------------

    def insert_process(
        self,
        *,
        namespace: str,
        job: str,
        label: str,
        key: str,
        restarts: int,
        pid: int,
        start_ticks: int | None,
        spec_version: int,
        started_at: float,
        backend: str = "local",
    ) -> int:
        """Record a started process, dropping older ended rows of the same label.

        Returns:
            The new row's id.
        """
        with self._transaction() as db:
            db.execute(
                "DELETE FROM processes WHERE namespace = ? AND job = ? AND label = ? "
                "AND state != 'running'",
                (namespace, job, label),
            )
            cursor = db.execute(
                "INSERT INTO processes (namespace, job, label, key, restarts, pid, start_ticks, "
                "spec_version, state, started_at, backend) VALUES (?,?,?,?,?,?,?,?,'running',?,?)",
                (
                    namespace,
                    job,
                    label,
                    key,
                    restarts,
                    pid,
                    start_ticks,
                    spec_version,
                    started_at,
                    backend,
                ),
            )
            row_id = cursor.lastrowid
        assert row_id is not None
        return row_id

    def update_process(self, row_id: int, **fields: Any) -> None:
        """Change some columns of a process row."""
        unknown = set(fields) - _PROC_UPDATABLE
        if unknown:
            raise ValueError(f"cannot update process columns {sorted(unknown)}")
        assignments = ", ".join(f"{column} = ?" for column in fields)
        with self._transaction() as db:
            db.execute(
                f"UPDATE processes SET {assignments} WHERE id = ?",  # noqa: S608 - columns are checked above
                (*fields.values(), row_id),
            )

    def processes(self, namespace: str, job: str) -> list[ProcRow]:
        """Return the process rows of a job, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, namespace, job, label, key, restarts, pid, start_ticks, spec_version, "
                "state, exit_code, reason, started_at, ended_at, backend FROM processes "
                "WHERE namespace = ? AND job = ? ORDER BY id",
                (namespace, job),
            ).fetchall()
        return [ProcRow(*row) for row in rows]

    def running_backends(self) -> set[str]:
        """The backends of the processes recorded as running."""
        with self._lock:
            rows = self._db.execute(
                "SELECT DISTINCT backend FROM processes WHERE state = 'running'"
            ).fetchall()
        return {row[0] for row in rows}
