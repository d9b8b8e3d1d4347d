"""Running the server: uvicorn around the app, in the foreground or in a background thread."""

from __future__ import annotations

import shutil
import socket
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio.to_thread
import uvicorn

from ._app import create_app
from ._config import DEFAULT_NAMESPACE, ServerConfig, generate_token
from ._supervisor import Engine
from ._ui import Dashboard

__all__ = ["LocalServer", "bind_socket", "make_uvicorn"]

#: Seconds uvicorn waits for open connections when stopping.
GRACEFUL_SHUTDOWN = 2
#: Bytes of request line and headers uvicorn accepts.
MAX_REQUEST_HEAD = 1024 * 1024


class _Server(uvicorn.Server):
    """uvicorn, ending the engine's log streams first so that shutdown never waits on them."""

    def __init__(self, config: uvicorn.Config, engine: Engine) -> None:
        super().__init__(config)
        self._engine = engine

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._engine.release_streams()
        await super().shutdown(sockets)


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind a listening TCP socket (``port`` 0 picks a free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio disables Nagle's algorithm only on sockets whose
    # proto says TCP, and with Nagle on every response waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(False)
    return sock


def url_of(sock: socket.socket) -> str:
    """The ``http://host:port`` URL of a bound socket."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def make_uvicorn(
    engine: Engine, *, log_level: str = "warning", dashboard: Dashboard | None = None
) -> uvicorn.Server:
    """Build a uvicorn server for ``engine`` (which the caller starts and stops).

    The access log is off: request URLs carry the credential, and the dashboard's login
    links their code.

    Args:
        engine: The job engine.
        log_level: uvicorn's log level.
        dashboard: The dashboard whose login links the caller hands out.
    """
    app = create_app(engine, manage_engine=False, dashboard=dashboard)
    config = uvicorn.Config(
        app,
        log_level=log_level,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN,
        # h11's default of 16 KiB would refuse, as plain text, a long request line that
        # arrives in several reads; the app answers queries over MAX_QUERY with a 414.
        h11_max_incomplete_event_size=MAX_REQUEST_HEAD,
    )
    return _Server(config, engine)


class LocalServer:
    """A JuliaRun-compatible server running in a background thread, for tests and scripts.

    It listens on a free loopback port, serves from its own event loop (so it works from
    synchronous, asyncio and trio code), and stops its job processes when it stops.
    :attr:`dashboard_url` signs a browser in to the dashboard (once)::

        async with LocalServer() as server:
            async with Context(url=server.url, token=server.token,
                               namespace=server.namespace) as ctx:
                ...

    Args:
        data_dir: Where state, logs and volumes live; a temporary directory (removed on
            stop) when not given.
        tokens: Raw token per namespace; by default one random token for ``namespace``.
        namespace: The namespace that :attr:`token` and :attr:`env` are for.
        **settings: Further :class:`ServerConfig` fields (``kill_grace``,
            ``restart_backoff``...).
    """

    def __init__(
        self,
        data_dir: str | Path | None = None,
        *,
        tokens: Mapping[str, str] | None = None,
        namespace: str = DEFAULT_NAMESPACE,
        **settings: Any,
    ) -> None:
        self._temporary = data_dir is None
        path = Path(tempfile.mkdtemp(prefix="juliarun-")) if data_dir is None else Path(data_dir)
        if tokens is None:
            tokens = {namespace: generate_token(24)}
        self.namespace = namespace
        self.config = ServerConfig(data_dir=path, tokens=tokens, **settings)
        self._engine: Engine | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self._dashboard: Dashboard | None = None
        self.url = ""
        self.dashboard_url = ""

    @property
    def token(self) -> str:
        """The raw token of :attr:`namespace`."""
        return self.config.tokens[self.namespace]

    @property
    def data_dir(self) -> Path:
        """The data directory."""
        return self.config.data_dir

    @property
    def env(self) -> dict[str, str]:
        """``JRUN_URL``, ``JRUN_TOKEN`` and ``JRUN_NAMESPACE`` for a client of this server."""
        return {"JRUN_URL": self.url, "JRUN_TOKEN": self.token, "JRUN_NAMESPACE": self.namespace}

    def new_dashboard_url(self, namespace: str | None = None) -> str:
        """Make another link that signs a browser in to the dashboard (each works once).

        Args:
            namespace: The namespace of the session; :attr:`namespace` by default.

        Raises:
            RuntimeError: The server is not running.
            ValueError: The server has no such namespace.
        """
        if self._dashboard is None:
            raise RuntimeError("the server is not running")
        return self._dashboard.login_url(self.url, namespace or self.namespace)

    def start(self) -> LocalServer:
        """Start serving; return self.

        Raises:
            DataDirectoryInUseError: Another server uses the data directory.
            RuntimeError: The server did not come up.
        """
        if self._thread is not None:
            raise RuntimeError("the server is already running")
        self._engine = Engine(self.config)  # first: it takes the data directory's lock
        try:
            self._socket = bind_socket("127.0.0.1", 0)
        except BaseException:
            self.stop()
            raise
        self.url = url_of(self._socket)
        self._engine.start(self.url)
        self._dashboard = Dashboard(self._engine)
        self.dashboard_url = self._dashboard.login_url(self.url, self.namespace)
        self._server = make_uvicorn(self._engine, dashboard=self._dashboard)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._socket]},
            name="juliarun-server",
            daemon=True,
        )
        self._thread.start()
        while not self._server.started:
            if not self._thread.is_alive():
                self.stop()
                raise RuntimeError("the JuliaRun server failed to start; see the log")
            self._thread.join(0.005)
        return self

    def stop(self, *, leave_running: bool = False) -> None:
        """Stop serving and stop the job processes.

        Args:
            leave_running: Leave the job processes running so that a new server on the
                same data directory re-adopts them.
        """
        if self._server is not None and self._thread is not None:
            if self._engine is not None:
                self._engine.release_streams()
            self._server.should_exit = True
            self._thread.join()
        if self._socket is not None:
            self._socket.close()
        if self._engine is not None:
            self._engine.stop(leave_running=leave_running)
        self._server = self._thread = self._socket = self._engine = self._dashboard = None
        if self._temporary and not leave_running:
            shutil.rmtree(self.config.data_dir, ignore_errors=True)

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> LocalServer:
        return await anyio.to_thread.run_sync(self.start)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await anyio.to_thread.run_sync(self.stop)
