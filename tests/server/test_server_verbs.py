"""Every verb of the protocol against a running server, over HTTP; the job-running ones on
every backend."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from server_support import BOTH_BACKENDS, FAST, Api
from support import SLURM_NODES, slurm_enforces_memory, wait_until, write_script

from juliarun_aio.server import DataDirectoryInUseError, LocalServer
from juliarun_aio.server._launcher import describe_cleanup
from juliarun_aio.server._store import Store

HELLO = "import sys\nprint('hello')\nprint('oops', file=sys.stderr)\n"
SLEEPER = "import time\nprint('up', flush=True)\ntime.sleep(60)\n"


@BOTH_BACKENDS
def test_system_status_and_server_info(api: Api, backend: str) -> None:
    """getSystemStatus is true; serverInfo advertises its extensions and the process cleanup."""
    assert api.data("getSystemStatus") is True
    info = api.data("serverInfo")
    assert info["server"] == "juliarun_aio"
    assert info["extensions"] == ["streamLogs", "streamLogsColumns", "jobUid"]
    assert isinstance(info["version"], str)
    if backend == "slurm":
        assert info["process_cleanup"] == "slurm"
    else:
        assert info["process_cleanup"] == describe_cleanup()[0]
        assert info["process_cleanup"] in ("cgroup2", "cgroup1", "subreaper", "session")


@BOTH_BACKENDS
def test_batch_job_lifecycle(api: Api, volume: Path, backend: str) -> None:
    """A JuliaBatch .py job runs, is listed, reports success, its log and can be deleted."""
    write_script(volume, "hello.py", HELLO)
    assert (
        api.data("submitJob", "JuliaBatch", name="hi", start_script="hello.py", run_volume="work")
        is None
    )
    assert api.data("listJobs") == {"hi": {"type": "JuliaBatch"}}
    status = api.wait_done("JuliaBatch", "hi")
    assert status["succeeded"] is True
    assert status["created"] is True
    assert status["phase"] == "succeeded"
    assert status["failed"] is False
    assert status["exit_codes"] == {"master": 0}
    assert set(status) >= {"parallelism", "nworkers_succeeded", "npending", "nuptodate"}
    assert api.data("tailJob", "JuliaBatch", name="hi", count=50) == "hello\noops"
    assert api.data("tailJob", "JuliaBatch", name="hi", count=50, stream="stderr") == "oops"
    assert api.data("tailJob", "JuliaBatch", name="hi", count=1) == "oops"
    info = api.data("getAllJobInfo")["hi"]
    assert info["type"] == "JuliaBatch"
    assert info["status"]["succeeded"] is True
    assert info["scale"] == [0, 0]
    # A Slurm job has an address only while it runs on its node.
    host = None if backend == "slurm" else "127.0.0.1"
    assert info["endpoint"] == [host, {}]
    assert api.data("deleteJob", "JuliaBatch", name="hi", force="false") is True
    assert api.data("listJobs") == {}
    api.error(404, "getJobStatus", "JuliaBatch", name="hi")


@BOTH_BACKENDS
def test_tail_job_says_how_many_lines_it_joins(api: Api, volume: Path) -> None:
    """tailJob's X-JuliaRun-Line-Count tells one empty line from no line at all."""
    write_script(volume, "blank.py", "print()\n")
    write_script(volume, "quiet.py", "")
    write_script(volume, "hello.py", "print('hello')\nprint('world')\nprint()\n")
    for name in ("blank", "quiet", "hello"):
        api.data("submitJob", "JuliaBatch", name=name, start_script=f"{name}.py", run_volume="work")
    cases: list[tuple[str, dict[str, Any], str, str]] = [
        ("blank", {"count": 5}, "", "1"),
        ("blank", {"count": 5, "stream": "stderr"}, "", "0"),
        ("quiet", {"count": 5}, "", "0"),
        ("hello", {"count": 5}, "hello\nworld\n", "3"),
        ("hello", {"count": 1}, "", "1"),
        ("hello", {"count": 0}, "", "0"),
    ]
    for name, params, data, count in cases:
        api.wait_done("JuliaBatch", name)
        response = api.get("tailJob", "JuliaBatch", name=name, **params)
        assert response.status_code == 200
        assert response.json() == {"code": 0, "data": data}
        assert response.headers["X-JuliaRun-Line-Count"] == count, (name, params)


@BOTH_BACKENDS
def test_shell_script_and_failure(api: Api, volume: Path) -> None:
    """A .sh script runs under /bin/sh; a non-zero exit fails the job with the exit code."""
    write_script(volume, "fail.sh", "echo from-sh\nexit 3\n")
    api.data("submitJob", "JuliaBatch", name="sh", start_script="fail.sh", run_volume="work")
    status = api.wait_done("JuliaBatch", "sh")
    assert status["phase"] == "failed"
    assert status["failed"] is True
    assert "exited with code 3" in status["message"]
    assert api.lines("JuliaBatch", "sh") == ["from-sh"]


def test_duplicate_submit_is_a_conflict(api: Api, volume: Path) -> None:
    """Submitting a name that exists answers 409 and leaves the first job alone."""
    write_script(volume, "hello.py", HELLO)
    api.data("submitJob", "JuliaBatch", name="dup", start_script="hello.py", run_volume="work")
    message = api.error(
        409, "submitJob", "JuliaBatch", name="dup", start_script="x.py", run_volume="work"
    )
    assert "already exists" in message
    assert api.data("listJobs") == {"dup": {"type": "JuliaBatch"}}


def test_invalid_spec_is_a_bad_request(api: Api) -> None:
    """An invalid spec (missing, unknown or malformed parameter) answers 400 naming it."""
    assert "run_volume" in api.error(400, "submitJob", "JuliaBatch", name="x", start_script="a.py")
    assert "colour" in api.error(
        400, "submitJob", "JuliaBatch", name="x", start_script="a.py", run_volume="w", colour="red"
    )
    assert "nworkers" in api.error(
        400,
        "submitJob",
        "JuliaParBatch",
        name="x",
        start_script="a",
        run_volume="w",
        nworkers="many",
    )
    assert "name" in api.error(
        400, "submitJob", "JuliaBatch", name="../etc", start_script="a", run_volume="w"
    )
    assert "run_volume" in api.error(
        400, "submitJob", "JuliaBatch", name="x", start_script="a", run_volume="../.."
    )


@BOTH_BACKENDS
def test_missing_script_fails_the_job(api: Api) -> None:
    """A start_script that does not exist fails the job with a message naming it."""
    api.data("submitJob", "JuliaBatch", name="nope", start_script="missing.py", run_volume="work")
    status = api.wait_done("JuliaBatch", "nope")
    assert status["phase"] == "failed"
    assert "missing.py" in status["message"]
    assert status["created"] is False


def test_julia_missing_fails_with_install_hint(api: Api, volume: Path) -> None:
    """A .jl script without julia on PATH fails the job saying to install Julia."""
    write_script(volume, "main.jl", 'println("hi")\n')
    api.data(
        "submitJob",
        "JuliaBatch",
        name="jl",
        start_script="main.jl",
        run_volume="work",
        envvars=json.dumps({"PATH": "/nonexistent"}),
    )
    status = api.wait_done("JuliaBatch", "jl")
    assert status["phase"] == "failed"
    assert "install Julia" in status["message"]


@BOTH_BACKENDS
def test_delete_incomplete_job_needs_force(api: Api, volume: Path) -> None:
    """deleteJob of a running job answers 409 without force and stops it with force."""
    write_script(volume, "sleep.py", SLEEPER)
    api.data("submitJob", "JuliaBatch", name="busy", start_script="sleep.py", run_volume="work")
    wait_until(lambda: api.lines("JuliaBatch", "busy") == ["up"], what="the job to start")
    assert "force" in api.error(409, "deleteJob", "JuliaBatch", name="busy", force="false")
    assert api.data("deleteJob", "JuliaBatch", name="busy", force="true") is True
    assert api.data("listJobs") == {}


@BOTH_BACKENDS
def test_force_delete_kills_a_process_ignoring_term(
    api: Api, volume: Path, server: LocalServer
) -> None:
    """A process that ignores SIGTERM is killed after the grace period on force delete."""
    write_script(
        volume,
        "stubborn.py",
        "import os, signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "open('stub.pid', 'w').write(str(os.getpid()))\n"
        "print('ready', flush=True)\ntime.sleep(60)\n",
    )
    api.data("submitJob", "JuliaBatch", name="stub", start_script="stubborn.py", run_volume="work")
    wait_until(lambda: api.lines("JuliaBatch", "stub") == ["ready"], what="the job to start")
    job_dir = server.data_dir / "namespaces" / "default" / "jobs" / "stub"
    pid = int((volume / "stub.pid").read_text())
    started = time.monotonic()
    assert api.data("deleteJob", "JuliaBatch", name="stub", force="true") is True
    assert time.monotonic() - started >= FAST["kill_grace"]
    assert not job_dir.exists()
    wait_until(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie")
    # The same name can be used again at once.
    write_script(volume, "hello.py", HELLO)
    api.data("submitJob", "JuliaBatch", name="stub", start_script="hello.py", run_volume="work")
    assert api.wait_done("JuliaBatch", "stub")["phase"] == "succeeded"


def test_update_job_changes_what_can_change(api: Api, volume: Path) -> None:
    """updateJob records new env and worker count, and refuses fixed fields with 400."""
    write_script(volume, "sleep.py", SLEEPER)
    api.data(
        "submitJob",
        "JuliaParBatch",
        name="par",
        start_script="sleep.py",
        run_volume="work",
        nworkers=0,
    )
    api.data("updateJob", "JuliaParBatch", name="par", worker_envvars='{"A": "1"}')
    message = api.error(400, "updateJob", "JuliaParBatch", name="par", run_volume="other")
    assert "run_volume" in message
    message = api.error(400, "updateJob", "JuliaParBatch", name="par", start_script="x.py")
    assert "start_script" in message
    assert "type" in api.error(400, "updateJob", "JuliaBatch", name="par", start_script="x.py")
    api.error(404, "updateJob", "JuliaParBatch", name="ghost", start_script="x.py")
    api.error(400, "updateJob", "JuliaParBatch", name="par", nworkers="-1")
    api.data("deleteJob", "JuliaParBatch", name="par", force="true")


def test_update_of_a_complete_job_is_a_conflict(api: Api, volume: Path) -> None:
    """updateJob on a complete job answers 409 saying what to do, and changes nothing."""
    write_script(volume, "hello.py", HELLO)
    api.data(
        "submitJob",
        "JuliaParBatchWorkers",
        name="done",
        start_script="hello.py",
        run_volume="work",
        nworkers=1,
    )
    before = api.wait_done("JuliaParBatchWorkers", "done")
    assert before["phase"] == "succeeded"
    for change in ({"nworkers": 3}, {"envvars": '{"A": "1"}'}, {}):
        message = api.error(409, "updateJob", "JuliaParBatchWorkers", name="done", **change)
        assert "complete (succeeded)" in message
        assert "delete it and submit it again" in message
    assert api.status("JuliaParBatchWorkers", "done") == before
    assert api.data("getJobScale", "JuliaParBatchWorkers", name="done") == [0, 1]


def test_each_submission_has_its_own_uid(api: Api, volume: Path) -> None:
    """A job's uid is in its status, kept by updates, and new when the name is submitted again."""
    write_script(volume, "sleeper.py", SLEEPER)
    submit = {"name": "twice", "start_script": "sleeper.py", "run_volume": "work"}
    api.data("submitJob", "JuliaParBatch", **submit)
    uid = api.status("JuliaParBatch", "twice")["uid"]
    assert re.fullmatch(r"[0-9a-f]{16}", uid)
    assert api.data("getAllJobInfo")["twice"]["status"]["uid"] == uid
    api.data("updateJob", "JuliaParBatch", name="twice", worker_envvars='{"A": "1"}')
    assert api.status("JuliaParBatch", "twice")["uid"] == uid
    api.data("deleteJob", "JuliaParBatch", name="twice", force="true")
    api.data("submitJob", "JuliaParBatch", **submit)
    again = api.status("JuliaParBatch", "twice")["uid"]
    assert re.fullmatch(r"[0-9a-f]{16}", again)
    assert again != uid
    api.data("deleteJob", "JuliaParBatch", name="twice", force="true")


def test_second_local_server_on_a_data_directory_raises(tmp_path: Path) -> None:
    """A LocalServer on a data directory in use raises a typed error and changes nothing."""
    with LocalServer(tmp_path / "data", **FAST) as first:
        with pytest.raises(DataDirectoryInUseError) as info:
            LocalServer(tmp_path / "data", **FAST).start()
        assert info.value.pid == os.getpid()
        assert info.value.directory == (tmp_path / "data").absolute()
        assert str(tmp_path / "data") in str(info.value)
        api = Api(first.url, first.token, first.namespace)
        try:
            assert api.data("getSystemStatus") is True
        finally:
            api.close()
    with LocalServer(tmp_path / "data", **FAST) as again:
        assert again.url


def test_refused_submit_removes_nothing_on_disk(
    api: Api, server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A submit whose database insert fails leaves the files under the job's name alone."""
    leftover = server.data_dir / "namespaces" / "default" / "jobs" / "kept" / "logs"
    leftover.mkdir(parents=True)
    (leftover / "combined.ndjson").write_text("precious\n")
    monkeypatch.setattr(Store, "insert_job", lambda *_args: _raise_disk_error())
    api.error(500, "submitJob", "JuliaBatch", name="kept", start_script="x.py", run_volume="work")
    assert (leftover / "combined.ndjson").read_text() == "precious\n"
    assert api.data("listJobs") == {}


def test_submit_that_cannot_create_its_files_leaves_no_job(api: Api, server: LocalServer) -> None:
    """A submit whose job directory cannot be made answers an error and records nothing."""
    jobs = server.data_dir / "namespaces" / "default" / "jobs"
    jobs.parent.mkdir(parents=True, exist_ok=True)
    jobs.write_text("not a directory")
    api.error(500, "submitJob", "JuliaBatch", name="nodir", start_script="x.py", run_volume="work")
    assert api.data("listJobs") == {}


def test_failed_delete_keeps_the_job_and_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delete whose database change fails removes no file: the next server has the job whole."""
    data_dir = tmp_path / "data"
    with LocalServer(data_dir, **FAST) as server:
        volume = data_dir / "namespaces" / "default" / "volumes" / "work"
        write_script(volume, "hello.py", HELLO)
        api = Api(server.url, server.token, server.namespace)
        try:
            api.data(
                "submitJob", "JuliaBatch", name="hi", start_script="hello.py", run_volume="work"
            )
            api.wait_done("JuliaBatch", "hi")
            with monkeypatch.context() as patch:
                patch.setattr(Store, "delete_job", lambda *_args: _raise_disk_error())
                api.error(500, "deleteJob", "JuliaBatch", name="hi")
        finally:
            api.close()
        token = server.token
    with LocalServer(data_dir, tokens={"default": token}, **FAST) as again:
        api = Api(again.url, token, "default")
        try:
            assert api.status("JuliaBatch", "hi")["phase"] == "succeeded"
            assert api.data("tailJob", "JuliaBatch", name="hi") == "hello\noops"
        finally:
            api.close()


def _raise_disk_error() -> None:
    raise sqlite3.OperationalError("disk I/O error")


def test_scale_of_a_job_without_workers_is_false(api: Api, volume: Path) -> None:
    """setJobScale answers false for a job type that has no workers."""
    write_script(volume, "sleep.py", SLEEPER)
    api.data("submitJob", "JuliaBatch", name="single", start_script="sleep.py", run_volume="work")
    assert api.data("setJobScale", "JuliaBatch", name="single", parallelism=3) is False
    assert api.data("getJobScale", "JuliaBatch", name="single") == [0, 0]
    api.data("deleteJob", "JuliaBatch", name="single", force="true")


@BOTH_BACKENDS
def test_endpoint_and_encoded_url(api: Api, volume: Path, backend: str) -> None:
    """Ports get free ports where the job runs, in the endpoint, the URL and its environment."""
    write_script(
        volume,
        "serve.py",
        "import http.server, os\n"
        "port = int(os.environ['JRUN_PORT_HTTP'])\n"
        "handler = http.server.SimpleHTTPRequestHandler\n"
        "server = http.server.HTTPServer(('', port), handler)\n"
        "print('serving', port, flush=True)\nserver.serve_forever()\n",
    )
    api.data(
        "submitJob",
        "JuliaBatch",
        name="web",
        start_script="serve.py",
        run_volume="work",
        ports="http:8080:80,9000:9000",
    )
    (line,) = wait_until(lambda: api.lines("JuliaBatch", "web"), what="the web job")
    host, ports = api.data("getJobEndpoint", "JuliaBatch", name="web")
    # Loopback here; on a cluster, the address of the job's node.
    assert host in (SLURM_NODES.values() if backend == "slurm" else ["127.0.0.1"])
    assert set(ports) == {"http", "port9000"}
    assert line == f"serving {ports['http']}"
    url = api.data("getEncodedURL", "JuliaBatch", name="web", port="http")
    assert url == f"http://{host}:{ports['http']}/"
    assert api.data("getEncodedURL", "JuliaBatch", name="web", port="8080") == url
    assert api.data("getEncodedURL", "JuliaBatch", name="web", port="9000").endswith(
        f":{ports['port9000']}/"
    )
    api.error(400, "getEncodedURL", "JuliaBatch", name="web", port="1234")
    assert httpx.get(url + "serve.py").status_code == 200
    api.data("deleteJob", "JuliaBatch", name="web", force="true")


@BOTH_BACKENDS
def test_job_environment_and_volumes(api: Api, volume: Path, server: LocalServer) -> None:
    """A job sees JRUN_* variables, its envvars, a job dir, and additional volumes by path."""
    write_script(
        volume,
        "env.py",
        "import os, json\n"
        "keys = ['JRUN_TYPE', 'JRUN_NAME', 'JRUN_URL', 'JRUN_TOKEN', 'JRUN_NAMESPACE',\n"
        "        'JRUN_PROC', 'A', 'JRUN_VOLUME_DATA_SET', 'PYTHONUNBUFFERED']\n"
        "print(json.dumps({k: os.environ.get(k) for k in keys}))\n"
        "print(os.getcwd())\n"
        "open(os.path.join(os.environ['JRUN_DIR'], 'out.txt'), 'w').write('x')\n"
        "open(os.path.join(os.environ['JRUN_VOLUME_DATA_SET'], 'v.txt'), 'w').write('y')\n",
    )
    api.data(
        "submitJob",
        "JuliaBatch",
        name="envjob",
        start_script="env.py",
        run_volume="work",
        envvars='{"A": "1"}',
        additional_volumes='["data-set"]',
    )
    assert api.wait_done("JuliaBatch", "envjob")["phase"] == "succeeded"
    printed, cwd = api.lines("JuliaBatch", "envjob")
    env = json.loads(printed)
    data_set = server.data_dir / "namespaces" / "default" / "volumes" / "data-set"
    assert env == {
        "JRUN_TYPE": "JuliaBatch",
        "JRUN_NAME": "envjob",
        "JRUN_URL": server.url,
        "JRUN_TOKEN": server.token,
        "JRUN_NAMESPACE": "default",
        "JRUN_PROC": "master",
        "A": "1",
        "JRUN_VOLUME_DATA_SET": str(data_set),
        "PYTHONUNBUFFERED": "1",
    }
    assert Path(cwd) == volume.resolve()
    assert (data_set / "v.txt").read_text() == "y"


@BOTH_BACKENDS
def test_memory_limit_is_enforced(api: Api, volume: Path, backend: str) -> None:
    """A process allocating more than ``memory`` fails: RLIMIT_AS here, Slurm's --mem there."""
    write_script(
        volume,
        "hog.py",
        "x = bytearray(400 * 1024 * 1024)\nx[::4096] = b'x' * len(x[::4096])\nprint('allocated')\n",
    )
    api.data(
        "submitJob",
        "JuliaBatch",
        name="hog",
        start_script="hog.py",
        run_volume="work",
        memory="200Mi",
    )
    status = api.wait_done("JuliaBatch", "hog")
    assert status["phase"] == "failed"
    assert status["memory"] == "200Mi"
    if backend == "slurm":
        if not slurm_enforces_memory():
            pytest.skip("Slurm enforces --mem only with proctrack/cgroup and task/cgroup")
        assert "ran out of memory" in status["message"]
    else:
        stderr = api.data("tailJob", "JuliaBatch", name="hog", count=5, stream="stderr")
        assert "MemoryError" in stderr


@BOTH_BACKENDS
def test_image_and_gpu_are_recorded(api: Api, volume: Path, backend: str) -> None:
    """image and gpu requests are reported in the status, not faked."""
    write_script(volume, "hello.py", HELLO)
    api.data(
        "submitJob",
        "JuliaBatch",
        name="gpu",
        start_script="hello.py",
        run_volume="work",
        image="julia:1.10",
        gpu=1,
    )
    status = api.wait_done("JuliaBatch", "gpu")
    assert status["phase"] == "succeeded"
    assert status["image"] == "julia:1.10"
    assert status["gpu"] == 1
    if backend == "slurm":  # accepted, and the job says what it did not get
        assert "image 'julia:1.10' is not used" in status["message"]
        assert "gpu is not requested from Slurm" in status["message"]
