"""A server killed with SIGKILL and restarted on the same data directory loses nothing, on
every backend."""

from __future__ import annotations

import json
import time
from pathlib import Path

import anyio
import psutil
from server_support import BOTH_BACKENDS, Api, encode_token, server_process
from support import QUICK_KILL, wait_until, write_script

from juliarun_aio import Context, JobRef, JuliaBatch, LogLine
from juliarun_aio._wire import encode_spec
from juliarun_aio.server import ServerProcess
from juliarun_aio.server._store import JobRow, Store

TOKEN = "restart-token"
TOKENS = {"default": TOKEN}
CHATTY = (
    "import os, sys, time\n"
    "open('chatty.pid', 'w').write(str(os.getpid()))\n"
    "for i in range(1, 601):\n"
    "    print(f'line {i}', flush=True)\n"
    "    if i % 50 == 0:\n"
    "        print(f'err {i}', file=sys.stderr, flush=True)\n"
    "    time.sleep(0.002)\n"
    "while not os.path.exists('finish'):\n"
    "    time.sleep(0.01)\n"
    "sys.stdout.write('no newline at the end')\n"
)


def _volume(data_dir: Path) -> Path:
    path = data_dir / "namespaces" / "default" / "volumes" / "work"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _source_size(data_dir: Path, job: str) -> int:
    return sum(
        p.stat().st_size
        for p in (data_dir / "namespaces/default/jobs" / job / "logs").glob("master-*.out")
    )


def _run_chatty_until(data_dir: Path, name: str, lines: int, backend: str) -> ServerProcess:
    """Start a server, submit ``chatty.py`` as job ``name``, and wait for its first lines."""
    server = server_process(data_dir, backend, QUICK_KILL, tokens=TOKENS).start()
    api = Api(server.url, TOKEN, "default", ca_bundle=server.ca_bundle)
    try:
        api.data("submitJob", "JuliaBatch", name=name, start_script="chatty.py", run_volume="work")
        api.wait_lines("JuliaBatch", name, lines)
    except BaseException:
        server.stop()
        raise
    finally:
        api.close()
    return server


@BOTH_BACKENDS
def test_sigkilled_server_readopts_its_job_and_loses_no_line(data_dir: Path, backend: str) -> None:
    """After SIGKILL and a restart the job is listed, its process re-adopted, its log exact."""
    volume = _volume(data_dir)
    write_script(volume, "chatty.py", CHATTY)
    first = _run_chatty_until(data_dir, "chatty", 50, backend)
    before = Api(first.url, TOKEN, "default", ca_bundle=first.ca_bundle)
    uid = before.status("JuliaBatch", "chatty")["uid"]
    before.close()
    first.kill()
    pid = int((volume / "chatty.pid").read_text())
    # The job goes on writing while no server runs.
    size = _source_size(data_dir, "chatty")
    wait_until(lambda: _source_size(data_dir, "chatty") > size + 1000, what="output while down")

    second = server_process(data_dir, backend, QUICK_KILL, tokens=TOKENS).start()
    api = Api(second.url, TOKEN, "default", ca_bundle=second.ca_bundle)
    try:
        assert api.data("listJobs") == {"chatty": {"type": "JuliaBatch"}}
        status = api.status("JuliaBatch", "chatty")
        assert status["phase"] == "running"
        assert status["uid"] == uid
        assert status["restarts"] == {}
        assert psutil.pid_exists(pid)
        api.wait_lines("JuliaBatch", "chatty", 600, stream="stdout")
        (volume / "finish").touch()
        status = api.wait_done("JuliaBatch", "chatty")
        assert status["phase"] == "succeeded"
        assert status["exit_codes"] == {"master": 0}

        expected_out = [f"line {i}" for i in range(1, 601)] + ["no newline at the end"]
        assert api.lines("JuliaBatch", "chatty", stream="stdout") == expected_out
        assert api.lines("JuliaBatch", "chatty", stream="stderr") == [
            f"err {i}" for i in range(50, 601, 50)
        ]
        query = {"jruntok": encode_token(TOKEN), "jrunns": "default", "name": "chatty"}
        with api.http.stream("GET", "/streamLogs/JuliaBatch/", params=query) as response:
            items = [json.loads(line) for line in response.iter_lines() if line]
        assert [item["cursor"] for item in items[:-1]] == list(range(1, 614))
        assert items[-1] == {"end": True, "cursor": 613, "phase": "succeeded"}
    finally:
        api.close()
        second.stop()


def test_process_gone_while_down_is_marked_lost(data_dir: Path) -> None:
    """A job whose process vanished while the server was down is reported lost, with a reason."""
    volume = _volume(data_dir)
    write_script(volume, "chatty.py", CHATTY)
    _run_chatty_until(data_dir, "victim", 1, "local").kill()
    child = psutil.Process(int((volume / "chatty.pid").read_text()))
    launcher = child.parent()
    assert launcher is not None
    for proc in (launcher, child):
        proc.kill()
    psutil.wait_procs([launcher, child], timeout=10)

    second = ServerProcess(data_dir, tokens=TOKENS, args=QUICK_KILL).start()
    api = Api(second.url, TOKEN, "default", ca_bundle=second.ca_bundle)
    try:
        status = api.wait_done("JuliaBatch", "victim")
        assert status["phase"] == "lost"
        assert status["failed"] is True
        assert "without reporting an exit code" in status["message"]
        assert api.lines("JuliaBatch", "victim")[0] == "line 1"
    finally:
        api.close()
        second.stop()


@BOTH_BACKENDS
def test_stopped_server_leaves_jobs_running_for_the_next(data_dir: Path, backend: str) -> None:
    """SIGTERM stops the server but not its jobs; the next server finishes them normally."""
    volume = _volume(data_dir)
    write_script(volume, "chatty.py", CHATTY)
    _run_chatty_until(data_dir, "calm", 1, backend).stop()
    assert psutil.pid_exists(int((volume / "chatty.pid").read_text()))
    args = (*QUICK_KILL, "--stop-jobs")
    second = server_process(data_dir, backend, args, tokens=TOKENS).start()
    api = Api(second.url, TOKEN, "default", ca_bundle=second.ca_bundle)
    try:
        (volume / "finish").touch()
        assert api.wait_done("JuliaBatch", "calm")["phase"] == "succeeded"
        assert len(api.lines("JuliaBatch", "calm", stream="stdout")) == 601
    finally:
        api.close()
        second.stop()


#: Prints 10,000 numbered lines in bursts (and a stderr line after each 1,000), three times:
#: the second and third time once the file go1 / go2 exists.
PHASES = """\
import os, sys, time
open('phases.pid', 'w').write(str(os.getpid()))
n = 0
for phase in range(3):
    while phase and not os.path.exists(f'go{phase}'):
        time.sleep(0.01)
    for burst in range(10):
        lines = [f'line {i}' for i in range(n + 1, n + 1001)]
        n += 1000
        sys.stdout.write('\\n'.join(lines) + '\\n')
        sys.stdout.flush()
        print(f'err {n}', file=sys.stderr, flush=True)
        time.sleep(0.01)
"""


def _read_log(server: ServerProcess, name: str, since: int | None = None) -> list[LogLine]:
    """The job's log as ``tail_logs(follow=False)`` yields it, from ``since``."""

    async def read() -> list[LogLine]:
        async with Context(server.url, TOKEN, "default", verify=server.ca_bundle) as ctx:
            job = JobRef("JuliaBatch", name)
            return [line async for line in ctx.tail_logs(job, follow=False, since=since)]

    return anyio.run(read)


def _check_whole_log(server: ServerProcess, name: str, lines: int) -> None:
    """Reads from the start and from later cursors return exactly the log from there on."""
    full = _read_log(server, name)
    assert [line.cursor for line in full] == list(range(1, len(full) + 1))
    assert [line.text for line in full if line.stream == "stdout"] == [
        f"line {i}" for i in range(1, lines + 1)
    ]
    assert [line.text for line in full if line.stream == "stderr"] == [
        f"err {i}" for i in range(1000, lines + 1, 1000)
    ]
    for since in (1, 100, len(full) // 2, len(full) - 1, len(full)):
        assert _read_log(server, name, since) == full[since:], f"since={since}"


@BOTH_BACKENDS
def test_log_reads_from_the_start_after_sigterm_and_sigkill_restarts(
    data_dir: Path, backend: str
) -> None:
    """After SIGKILL and SIGTERM restarts, a log of 30,000 lines reads exactly from any cursor."""
    volume = _volume(data_dir)
    write_script(volume, "phases.py", PHASES)
    server = server_process(data_dir, backend, QUICK_KILL, tokens=TOKENS).start()
    api = Api(server.url, TOKEN, "default", ca_bundle=server.ca_bundle)

    def wait_for_line(n: int) -> None:
        wait_until(
            lambda: api.lines("JuliaBatch", "phases", stream="stdout")[-1:] == [f"line {n}"],
            what=f"line {n}",
        )

    try:
        api.data(
            "submitJob", "JuliaBatch", name="phases", start_script="phases.py", run_volume="work"
        )
        wait_for_line(10_000)
        server.kill()
        server.start()
        _check_whole_log(server, "phases", 10_000)
        (volume / "go1").touch()
        wait_for_line(20_000)
        server.stop()
        server.start()
        _check_whole_log(server, "phases", 20_000)
        (volume / "go2").touch()
        assert api.wait_done("JuliaBatch", "phases")["phase"] == "succeeded"
        server.kill()
        server.start()
        _check_whole_log(server, "phases", 30_000)
    finally:
        api.close()
        server.stop()


def test_a_job_recorded_but_never_started_runs_when_the_server_is_back(data_dir: Path) -> None:
    """A server that stopped between recording a job and starting its master: the next server
    starts that master, and the job runs once and succeeds instead of staying pending."""
    write_script(_volume(data_dir), "once.py", "print('ran', flush=True)\n")
    ServerProcess(data_dir, tokens=TOKENS, args=QUICK_KILL).start().stop()
    spec = JuliaBatch(name="once", start_script="once.py", run_volume="work")
    # What the earlier server left: the submission recorded, no process of it.
    store = Store(data_dir / "state.sqlite3")
    try:
        store.insert_job(
            JobRow(
                namespace="default",
                name="once",
                kind="JuliaBatch",
                params=encode_spec(spec),
                phase="pending",
                message=None,
                requested=0,
                ports={},
                cookie="0" * 32,
                spec_version=0,
                created_at=time.time(),
                uid="0123456789abcdef",
            )
        )
    finally:
        store.close()
    server = ServerProcess(data_dir, tokens=TOKENS, args=QUICK_KILL).start()
    api = Api(server.url, TOKEN, "default", ca_bundle=server.ca_bundle)
    try:
        status = api.wait_done("JuliaBatch", "once", timeout=30)
        assert status["phase"] == "succeeded", status
        assert api.lines("JuliaBatch", "once") == ["ran"]
    finally:
        api.close()
        server.stop()
