"""Worker counts: processes start in the background, and only those still wanted run."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from server_support import FAST, Api
from support import marked_processes, wait_until, write_script

from juliarun_aio.server import LocalServer
from juliarun_aio.server._launcher import SLOT_VARIABLE

#: Master and workers wait cheaply (a shell, then sleep); the environment variable MARK,
#: set to the job's name, finds its launchers and programs.
SLEEP = "exec sleep 60\n"
MARK = "SCALE_TEST_MARK"


@pytest.fixture
def roomy(tmp_path: Path) -> Iterator[LocalServer]:
    """A server for jobs of up to 40 workers."""
    with LocalServer(tmp_path / "data", **FAST) as running:
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


def _programs(name: str) -> int:
    """How many job programs (not launchers: they lack the slot id) carry ``name``'s marker."""
    count = 0
    for proc in marked_processes(MARK, name):
        with contextlib.suppress(psutil.NoSuchProcess):
            count += SLOT_VARIABLE in proc.environ()
    return count


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
        assert marked_processes(MARK, "gone") == []
        assert not (roomy.data_dir / "namespaces" / "default" / "jobs" / "gone").exists()
        api.wait_scale("JuliaParBatch", "down", 2, timeout=60)
        wait_until(lambda: len(marked_processes(MARK, "down")) == 6, 30, "3 launchers, 3 programs")
        assert _programs("down") == 3
        status = api.status("JuliaParBatch", "down")
        assert status["npending"] == 0
        assert set(status["exit_codes"]) <= {"worker-1", "worker-2"}
        # The name is free again at once, and the new job starts normally.
        _submit(api, "gone", 1)
        api.wait_scale("JuliaParBatch", "gone", 1)
    finally:
        api.close()
