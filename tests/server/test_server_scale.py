"""Worker counts: caps that refuse at once and record nothing, starts in the background."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from server_support import FAST, Api
from support import marked_processes, wait_until, write_script

from juliarun_aio.server import LocalServer, ServerConfig, ServerProcess
from juliarun_aio.server._config import ConfigError, default_max_workers
from juliarun_aio.server._launcher import SLOT_VARIABLE

#: Master and workers wait cheaply (a shell, then sleep); the environment variable MARK,
#: set to the job's name, finds its programs (and the launchers started for their slots;
#: a spare launcher keeps the environment it was started with, see ``_job_processes``).
SLEEP = "exec sleep 60\n"
MARK = "SCALE_TEST_MARK"


@pytest.fixture
def capped(tmp_path: Path) -> Iterator[LocalServer]:
    """A server allowing 3 workers per job and 5 in all."""
    with LocalServer(tmp_path / "data", max_workers_per_job=3, max_workers=5, **FAST) as running:
        yield running


@pytest.fixture
def roomy(tmp_path: Path) -> Iterator[LocalServer]:
    """A server allowing 40 workers per job and in all."""
    with LocalServer(tmp_path / "data", max_workers_per_job=40, max_workers=40, **FAST) as running:
        yield running


def _api(server: LocalServer) -> Api:
    return _api_for(server.url, server.token, server.data_dir)


def _api_for(url: str, token: str, data_dir: Path) -> Api:
    """A client of the default namespace, with ``sleep.sh`` in the volume ``work``."""
    write_script(data_dir / "namespaces" / "default" / "volumes" / "work", "sleep.sh", SLEEP)
    return Api(url, token, "default")


def _submit(api: Api, name: str, nworkers: int, marker: str = "") -> None:
    env = f'{{"{MARK}": "{marker or name}"}}'
    api.data(
        "submitJob",
        "JuliaParBatch",
        name=name,
        start_script="sleep.sh",
        worker_start_script="sleep.sh",
        run_volume="work",
        nworkers=nworkers,
        envvars=env,
        worker_envvars=env,
    )


def _refused_submit(api: Api, name: str, nworkers: int) -> str:
    """Submit a job array of ``nworkers`` units, expecting a 400; return its message."""
    return api.error(
        400,
        "submitJob",
        "JuliaParBatchWorkers",
        name=name,
        start_script="sleep.sh",
        run_volume="work",
        nworkers=nworkers,
    )


def _programs(name: str) -> int:
    """How many job programs (not launchers: they lack the slot id) carry ``name``'s marker."""
    count = 0
    for proc in marked_processes(MARK, name):
        with contextlib.suppress(psutil.NoSuchProcess):
            count += SLOT_VARIABLE in proc.environ()
    return count


def _job_processes(server: LocalServer, name: str) -> set[int]:
    """The processes of job ``name``: its marked ones, and every launcher writing its logs."""
    found = {proc.pid for proc in marked_processes(MARK, name)}
    logs = str((server.data_dir / "namespaces" / "default" / "jobs" / name).resolve()) + "/"
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.NoSuchProcess):
            if any("_launcher.py" in arg for arg in child.cmdline()) and any(
                opened.path.startswith(logs) for opened in child.open_files()
            ):
                found.add(child.pid)
    return found


def _stored_requested(server: LocalServer, name: str) -> int | None:
    database = server.data_dir / "state.sqlite3"
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        row = db.execute("SELECT requested FROM jobs WHERE name = ?", (name,)).fetchone()
    return None if row is None else int(row[0])


def test_over_the_per_job_cap_is_refused_and_records_nothing(capped: LocalServer) -> None:
    """submitJob, setJobScale and updateJob above the per-job cap get a 400 naming the cap."""
    api = _api(capped)
    try:
        message = _refused_submit(api, "big", 4)
        assert "(3)" in message
        assert "--max-workers-per-job" in message
        assert api.data("listJobs") == {}
        assert _stored_requested(capped, "big") is None

        _submit(api, "par", 2)
        for verb, params in (
            ("setJobScale", {"parallelism": 10_000}),
            ("updateJob", {"nworkers": 4}),
        ):
            assert "--max-workers-per-job" in api.error(
                400, verb, "JuliaParBatch", name="par", **params
            )
            assert _stored_requested(capped, "par") == 2
            assert api.data("getJobScale", "JuliaParBatch", name="par")[1] == 2
        assert api.data("setJobScale", "JuliaParBatch", name="par", parallelism=3) is True
        assert _stored_requested(capped, "par") == 3
    finally:
        api.close()


def test_over_the_total_cap_is_refused_until_others_make_room(capped: LocalServer) -> None:
    """Workers of all unfinished jobs together stay within max_workers; lowering is allowed."""
    api = _api(capped)
    try:
        _submit(api, "one", 3)
        _submit(api, "two", 2)
        message = api.error(400, "setJobScale", "JuliaParBatch", name="two", parallelism=3)
        assert "limit of 5" in message
        assert "--max-workers" in message
        assert _stored_requested(capped, "two") == 2
        assert "--max-workers" in _refused_submit(api, "arr", 1)
        assert api.data("setJobScale", "JuliaParBatch", name="one", parallelism=1) is True
        assert api.data("setJobScale", "JuliaParBatch", name="two", parallelism=3) is True
        api.data("deleteJob", "JuliaParBatch", name="one", force="true")
        _submit(api, "three", 2)
    finally:
        api.close()


def test_set_job_scale_answers_before_its_workers_have_started(roomy: LocalServer) -> None:
    """setJobScale records the count and answers; the workers start afterwards, all of them."""
    api = _api(roomy)
    try:
        _submit(api, "par", 0)
        assert api.data("setJobScale", "JuliaParBatch", name="par", parallelism=40) is True
        running, requested = api.data("getJobScale", "JuliaParBatch", name="par")
        assert requested == 40
        assert running < 40
        assert api.status("JuliaParBatch", "par")["phase"] == "running"
        api.wait_scale("JuliaParBatch", "par", 40, timeout=60)
        wait_until(lambda: _programs("par") == 41, 30, "41 programs")
    finally:
        api.close()


def test_delete_and_scale_down_during_starts_leave_no_process(roomy: LocalServer) -> None:
    """A job deleted or scaled down while its workers start keeps just what is wanted."""
    api = _api(roomy)
    try:
        for name in ("gone", "down"):
            _submit(api, name, 0)
            assert api.data("setJobScale", "JuliaParBatch", name=name, parallelism=20) is True
        assert api.data("setJobScale", "JuliaParBatch", name="down", parallelism=2) is True
        assert api.data("deleteJob", "JuliaParBatch", name="gone", force="true") is True
        assert _job_processes(roomy, "gone") == set()
        assert not (roomy.data_dir / "namespaces" / "default" / "jobs" / "gone").exists()
        api.wait_scale("JuliaParBatch", "down", 2, timeout=60)
        wait_until(lambda: len(_job_processes(roomy, "down")) == 6, 30, "3 launchers, 3 programs")
        assert _programs("down") == 3
        status = api.status("JuliaParBatch", "down")
        assert status["npending"] == 0
        assert set(status["exit_codes"]) <= {"worker-1", "worker-2"}
        # The name is free again at once, and the new job starts normally.
        _submit(api, "gone", 1)
        api.wait_scale("JuliaParBatch", "gone", 1)
    finally:
        api.close()


def test_caps_must_be_positive(tmp_path: Path) -> None:
    """A cap below 1 is a configuration error naming the flag; the default fits the machine."""
    with pytest.raises(ConfigError, match="--max-workers-per-job"):
        ServerConfig(data_dir=tmp_path, tokens={"default": "t"}, max_workers_per_job=0)
    with pytest.raises(ConfigError, match="--max-workers"):
        ServerConfig(data_dir=tmp_path, tokens={"default": "t"}, max_workers=-1)
    config = ServerConfig(data_dir=tmp_path, tokens={"default": "t"})
    assert config.max_workers == default_max_workers() >= 4
    assert config.max_workers_per_job == 64


def test_command_line_caps(tmp_path: Path) -> None:
    """--max-workers-per-job reaches the server; an invalid cap stops it with the flag's name."""
    args = ("--max-workers-per-job", "1", "--max-workers", "2", "--stop-jobs")
    with ServerProcess(tmp_path / "data", args=args) as server:
        api = _api_for(server.url, server.token, server.data_dir)
        try:
            assert "allows for one job (1)" in _refused_submit(api, "arr", 2)
        finally:
            api.close()
    broken = ServerProcess(tmp_path / "data", args=("--max-workers", "0"))
    with pytest.raises(RuntimeError, match=r"--max-workers\) must be a whole number"):
        broken.start()
