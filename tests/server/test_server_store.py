"""The SQLite store: databases of earlier versions are migrated at open; processes of another
backend are never adopted."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest
from server_support import FAST, Api

from juliarun_aio.server import LocalServer
from juliarun_aio.server._backend import BackendError
from juliarun_aio.server._store import DataDirectoryLock, Store

#: The ``jobs`` table as the first versions created it (no ``uid``).
OLD_JOBS = """
CREATE TABLE jobs (
    namespace TEXT NOT NULL, name TEXT NOT NULL, kind TEXT NOT NULL, params TEXT NOT NULL,
    phase TEXT NOT NULL, message TEXT, requested INTEGER NOT NULL, ports TEXT NOT NULL,
    cookie TEXT NOT NULL, spec_version INTEGER NOT NULL, created_at REAL NOT NULL,
    finished_at REAL, PRIMARY KEY (namespace, name)
);
"""


def _old_database(path: Path, names: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as db:
        db.executescript(OLD_JOBS)
        for i, name in enumerate(names):
            params = f'{{"name": "{name}", "start_script": "x.py", "run_volume": "work"}}'
            db.execute(
                "INSERT INTO jobs VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                ("default", name, "JuliaBatch", params, "succeeded", None, 0, "{}", "c", 0, i, i),
            )
    db.close()


def test_old_database_gets_a_uid_per_job(tmp_path: Path) -> None:
    """Opening a database without the uid column adds it, with a distinct uid for each job."""
    path = tmp_path / "state.sqlite3"
    _old_database(path, ["a", "b", "c"])
    store = Store(path)
    try:
        rows = store.jobs()
    finally:
        store.close()
    assert [row.name for row in rows] == ["a", "b", "c"]
    assert all(re.fullmatch(r"[0-9a-f]{16}", row.uid) for row in rows)
    assert len({row.uid for row in rows}) == 3
    again = Store(path)
    try:
        assert [row.uid for row in again.jobs()] == [row.uid for row in rows]
    finally:
        again.close()


def test_server_on_an_old_data_directory_reports_uids(tmp_path: Path) -> None:
    """A server started on a data directory from before uids existed reports a uid per job."""
    data_dir = tmp_path / "data"
    _old_database(data_dir / "state.sqlite3", ["old"])
    with LocalServer(data_dir, **FAST) as server:
        api = Api(server.url, server.token, server.namespace)
        try:
            status = api.status("JuliaBatch", "old")
            assert status["phase"] == "succeeded"
            assert re.fullmatch(r"[0-9a-f]{16}", status["uid"])
        finally:
            api.close()


#: The ``processes`` table before it recorded the backend of each process.
OLD_PROCESSES = """
CREATE TABLE processes (
    id INTEGER PRIMARY KEY AUTOINCREMENT, namespace TEXT NOT NULL, job TEXT NOT NULL,
    label TEXT NOT NULL, key TEXT NOT NULL, restarts INTEGER NOT NULL, pid INTEGER NOT NULL,
    start_ticks INTEGER, spec_version INTEGER NOT NULL, state TEXT NOT NULL,
    exit_code INTEGER, reason TEXT, started_at REAL NOT NULL, ended_at REAL
);
"""


def test_processes_of_an_old_database_are_local(tmp_path: Path) -> None:
    """A database from before backends were recorded reads its processes as local ones."""
    path = tmp_path / "state.sqlite3"
    _old_database(path, ["a"])
    with sqlite3.connect(path) as db:
        db.executescript(OLD_PROCESSES)
        db.execute(
            "INSERT INTO processes (namespace, job, label, key, restarts, pid, spec_version, "
            "state, started_at) VALUES ('default', 'a', 'master', 'master-1', 0, 1, 0, "
            "'running', 0)"
        )
    db.close()
    store = Store(path)
    try:
        (row,) = store.processes("default", "a")
        assert row.backend == "local"
        assert store.running_backends() == {"local"}
    finally:
        store.close()


def test_a_server_never_adopts_processes_of_another_backend(tmp_path: Path) -> None:
    """Processes recorded as running on another backend stop the server, saying what to do."""
    data_dir = tmp_path / "data"
    _old_database(data_dir / "state.sqlite3", ["a"])
    store = Store(data_dir / "state.sqlite3")
    try:
        store.insert_process(
            namespace="default",
            job="a",
            label="master",
            key="master-1",
            restarts=0,
            pid=4711,
            start_ticks=None,
            spec_version=0,
            started_at=0.0,
            backend="slurm",
        )
    finally:
        store.close()
    with pytest.raises(BackendError, match="on the slurm backend; start the server with --backend"):
        LocalServer(data_dir, **FAST).start()
    DataDirectoryLock(data_dir).release()  # the refused server let go of the directory
    store = Store(data_dir / "state.sqlite3")
    try:
        assert store.running_backends() == {"slurm"}
    finally:
        store.close()
