"""ServerProcess: the server in a subprocess that can be killed and started again."""

from __future__ import annotations

import signal
from pathlib import Path

import psutil
import pytest
from server_support import Api
from support import QUICK_KILL, write_script

from juliarun_aio import Context
from juliarun_aio.server import ServerProcess

SLEEPER = (
    "import os, time\n"
    "open('sleeper.pid', 'w').write(str(os.getpid()))\n"
    "print('up', flush=True)\n"
    "while not os.path.exists('finish'):\n"
    "    time.sleep(0.01)\n"
)


def test_serves_the_protocol_and_stops_cleanly(data_dir: Path) -> None:
    """The URL answers, ``env`` describes the client's settings, SIGTERM ends it."""
    with ServerProcess(data_dir, namespace="team", args=QUICK_KILL) as server:
        assert server.url == f"http://127.0.0.1:{server.port}"
        assert server.env == {
            "JRUN_URL": server.url,
            "JRUN_TOKEN": server.token,
            "JRUN_NAMESPACE": "team",
        }
        assert psutil.Process(server.pid).is_running()
        api = Api(server.url, server.token, server.namespace)
        try:
            assert api.data("getSystemStatus") is True
        finally:
            api.close()
        with pytest.raises(RuntimeError, match="already running"):
            server.start()
    assert server.proc is not None
    assert server.proc.returncode == 128 + signal.SIGTERM, server.output()
    assert "Traceback" not in server.output()


def test_sigterm_with_stop_jobs_stops_the_jobs(data_dir: Path) -> None:
    """With --stop-jobs, SIGTERM stops the server's job processes before it exits."""
    volume = data_dir / "namespaces" / "default" / "volumes" / "work"
    write_script(volume, "sleeper.py", SLEEPER)
    with ServerProcess(data_dir, args=(*QUICK_KILL, "--stop-jobs")) as server:
        api = Api(server.url, server.token, server.namespace)
        try:
            api.data(
                "submitJob",
                "JuliaBatch",
                name="sleeper",
                start_script="sleeper.py",
                run_volume="work",
            )
            api.wait_lines("JuliaBatch", "sleeper", 1)
        finally:
            api.close()
        pid = int((volume / "sleeper.pid").read_text())
    assert server.proc is not None
    assert server.proc.returncode == 128 + signal.SIGTERM, server.output()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_a_killed_server_restarts_on_its_url_and_readopts_its_job(data_dir: Path) -> None:
    """After SIGKILL the job goes on; ``start`` again serves on the same URL and finishes it."""
    volume = data_dir / "namespaces" / "default" / "volumes" / "work"
    write_script(volume, "sleeper.py", SLEEPER)
    server = ServerProcess(data_dir, args=QUICK_KILL).start()
    try:
        api = Api(server.url, server.token, server.namespace)
        api.data(
            "submitJob", "JuliaBatch", name="sleeper", start_script="sleeper.py", run_volume="work"
        )
        api.wait_lines("JuliaBatch", "sleeper", 1)
        api.close()
        url = server.url
        server.kill()
        assert psutil.pid_exists(int((volume / "sleeper.pid").read_text()))

        server.start()
        assert server.url == url
        api = Api(server.url, server.token, server.namespace)
        assert api.status("JuliaBatch", "sleeper")["phase"] == "running"
        (volume / "finish").touch()
        assert api.wait_done("JuliaBatch", "sleeper")["phase"] == "succeeded"
        api.close()
    finally:
        server.stop()


def test_a_server_that_does_not_start_reports_what_it_printed(tmp_path: Path) -> None:
    """A server that exits at once makes ``start`` fail with its message."""
    server = ServerProcess(tmp_path / "data", args=("--config", str(tmp_path / "missing.toml")))
    with pytest.raises(RuntimeError, match=r"did not start:\n.*juliarun-server:"):
        server.start()


@pytest.mark.anyio
async def test_async_context_manager(tmp_path: Path) -> None:
    """``async with`` starts and stops the server without blocking the event loop."""
    async with (
        ServerProcess(tmp_path / "data", args=QUICK_KILL) as server,
        Context(server.url, server.token, server.namespace) as ctx,
    ):
        assert await ctx.get_system_status() is True
    assert server.proc is not None
    assert server.proc.returncode == 128 + signal.SIGTERM, server.output()


def test_a_second_server_on_a_data_directory_in_use_exits_at_once(data_dir: Path) -> None:
    """A second server exits nonzero naming the directory and the holder; a SIGKILL frees it."""
    volume = data_dir / "namespaces" / "default" / "volumes" / "work"
    write_script(volume, "sleeper.py", SLEEPER)
    first = ServerProcess(data_dir, args=QUICK_KILL).start()
    api = Api(first.url, first.token, first.namespace)
    second = ServerProcess(data_dir, tokens=first.tokens, args=QUICK_KILL, start_timeout=20)
    try:
        api.data(
            "submitJob", "JuliaBatch", name="held", start_script="sleeper.py", run_volume="work"
        )
        api.wait_lines("JuliaBatch", "held", 1)
        with pytest.raises(RuntimeError, match="did not start"):
            second.start()
        assert second.proc is not None
        assert second.proc.returncode == 1
        assert second.output().splitlines() == [
            f"juliarun-server: data directory {data_dir.absolute()} is in use by another "
            f"server (pid {first.pid}); stop that server or choose another data directory"
        ]
        assert api.status("JuliaBatch", "held")["phase"] == "running"
        assert api.lines("JuliaBatch", "held") == ["up"]
        # The job outlives its server without keeping the directory locked.
        first.kill()
        second.start()
        api.close()
        api = Api(second.url, second.token, second.namespace)
        assert api.status("JuliaBatch", "held")["phase"] == "running"
        (volume / "finish").touch()
        assert api.wait_done("JuliaBatch", "held")["phase"] == "succeeded"
    finally:
        api.close()
        first.stop()
        second.stop()
