"""Running the server as ``python -m juliarun_aio.server`` in a subprocess."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, TypeVar

import anyio.to_thread

from ._config import DEFAULT_HOST, DEFAULT_NAMESPACE, generate_token

__all__ = ["ServerProcess"]

_Self = TypeVar("_Self", bound="ServerProcess")

_LISTENING = re.compile(r"JuliaRun server listening on (http://\S+)\n")
_DASHBOARD = re.compile(r"^dashboard: (http://\S+)\n", re.MULTILINE)


class ServerProcess:
    """The server in a subprocess of its own, for tests, benchmarks and scripts.

    Unlike :class:`LocalServer` it shares no interpreter with the caller, and it can be
    killed: jobs keep running when the server is killed or stopped (unless ``--stop-jobs``
    is among ``args``), and :meth:`start` on the same object starts a new server on the
    same data directory and port, which re-adopts them::

        with ServerProcess(data_dir) as server:
            async with Context(url=server.url, token=server.token,
                               namespace=server.namespace) as ctx:
                ...

    :attr:`dashboard_url` is the link the server printed to sign a browser in to its
    dashboard (it works once).  Inherited ``JRUN_*`` variables are not passed to the
    server.  What it prints (stdout
    and stderr) goes to a temporary file; see :meth:`output`.

    Args:
        data_dir: Where state, logs and volumes live.
        tokens: Raw token per namespace; by default one random token for ``namespace``.
        namespace: The namespace that :attr:`token` and :attr:`env` are for.
        host: The interface to listen on.
        port: The TCP port; 0 picks a free one at the first start, which later starts
            reuse, so that the URL stays the same.
        args: More command-line arguments, e.g. ``("--kill-grace", "0.5", "--stop-jobs")``.
        start_timeout: Seconds :meth:`start` waits for the server to listen.
    """

    def __init__(
        self,
        data_dir: str | Path,
        *,
        tokens: Mapping[str, str] | None = None,
        namespace: str = DEFAULT_NAMESPACE,
        host: str = DEFAULT_HOST,
        port: int = 0,
        args: Sequence[str] = (),
        start_timeout: float = 30.0,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.tokens = dict(tokens) if tokens is not None else {namespace: generate_token(24)}
        self.namespace = namespace
        self.host = host
        self.port = port
        self.args = tuple(args)
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.dashboard_url = ""
        self._output: IO[bytes] | None = None
        self._printed = ""

    @property
    def token(self) -> str:
        """The raw token of :attr:`namespace`."""
        return self.tokens[self.namespace]

    @property
    def env(self) -> dict[str, str]:
        """``JRUN_URL``, ``JRUN_TOKEN`` and ``JRUN_NAMESPACE`` for a client of this server."""
        return {"JRUN_URL": self.url, "JRUN_TOKEN": self.token, "JRUN_NAMESPACE": self.namespace}

    @property
    def pid(self) -> int:
        """The process id of the running (or last) server."""
        if self.proc is None:
            raise RuntimeError("the server was not started")
        return self.proc.pid

    def _command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "juliarun_aio.server",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            *(f"--token={ns}={token}" for ns, token in self.tokens.items()),
            *self.args,
        ]

    def start(self: _Self) -> _Self:
        """Start the server and wait until it listens; return self.

        Raises:
            RuntimeError: The server is already running, or did not come up within
                ``start_timeout`` seconds (the message holds what it printed).
        """
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("the server is already running")
        env = {key: value for key, value in os.environ.items() if not key.startswith("JRUN_")}
        self._finish()
        self._output = tempfile.TemporaryFile()  # noqa: SIM115 - closed by _finish
        self.proc = subprocess.Popen(  # noqa: S603 - argv list, never a shell
            self._command(),
            stdin=subprocess.DEVNULL,
            stdout=self._output,
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.monotonic() + self.start_timeout
        while True:
            printed = self.output()
            match = _LISTENING.search(printed)
            dashboard = _DASHBOARD.search(printed)
            if match is not None and dashboard is not None:
                self.url = match.group(1)
                self.port = int(self.url.rsplit(":", 1)[1])
                self.dashboard_url = dashboard.group(1)
                return self
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"the JuliaRun server did not start:\n{self.output()}")
            time.sleep(0.02)

    def output(self) -> str:
        """What the current (or last) server printed so far, stdout and stderr."""
        if self._output is None:
            return self._printed
        return os.pread(self._output.fileno(), 1 << 24, 0).decode(errors="replace")

    def _finish(self) -> None:
        """Keep what the ended server printed; close its output file."""
        if self._output is not None:
            self._printed = self.output()
            self._output.close()
            self._output = None

    def kill(self) -> None:
        """SIGKILL the server and wait for it; its job processes keep running."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
        self._finish()

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the server and wait for it; SIGKILL it after ``timeout`` seconds."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        self._finish()

    def __enter__(self: _Self) -> _Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self: _Self) -> _Self:
        return await anyio.to_thread.run_sync(self.start)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await anyio.to_thread.run_sync(self.stop)
