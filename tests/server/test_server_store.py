"""The SQLite store: a database written before job uids existed is migrated at open."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

from server_support import FAST, Api

from juliarun_aio.server import LocalServer
from juliarun_aio.server._store import Store

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
