"""Running the server: uvicorn around the app, in a background thread or in a subprocess.

- :class:`LocalServer` runs it in this process, on a thread of its own;
- :class:`ServerProcess` runs ``python -m juliarun_aio.server`` as a subprocess, which can
  be killed and started again on the same data directory.

Both are (sync and async) context managers with the same ``url``, ``token``,
``namespace``, ``ca_bundle`` and ``env``.

**Where the server is called.**  :func:`serving_endpoints` works out, in one place, the
URL clients dial (printed as ``JRUN_URL`` and in the dashboard link) and the one jobs get:

- a server bound to one address is called there (or by the name ``--host`` gave);
- one bound to every interface (``0.0.0.0``, ``::``) is called by this machine's name
  when that name resolves to one of its own non-loopback addresses, else at its primary
  address (the one on its default route) -- never at the wildcard itself; its jobs, which
  run on this machine, call it on loopback when the certificate (if any) names it;
- jobs that run on other machines (``--backend slurm``) call a wildcard-bound server at
  its address on the route to them (a node's address), or at the first name above that a
  certificate given by the user holds, and one bound to one address there;
- with TLS the scheme is ``https``; a self-signed certificate is issued for every one of
  these names and addresses (and loopback), and with a certificate given by the user the
  first of them that it names is chosen (a warning says when it names none).
"""

from __future__ import annotations

import abc
import ipaddress
import logging
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TypeVar

import anyio.to_thread
import attrs
import uvicorn

from ._app import create_app
from ._config import (
    DEFAULT_HOST,
    DEFAULT_NAMESPACE,
    ServerConfig,
    generate_token,
    is_loopback,
)
from ._engine import Engine
from ._launcher import address_towards
from ._tls import TlsFiles, load_certificate, self_signed
from ._ui import Dashboard

__all__ = [
    "Endpoints",
    "LocalServer",
    "ServerProcess",
    "bind_socket",
    "dial_hosts",
    "make_uvicorn",
    "serving_endpoints",
]

logger = logging.getLogger("juliarun_aio.server")

_Self = TypeVar("_Self", bound="_RunningServer")
_Process = TypeVar("_Process", bound="ServerProcess")

_LISTENING = re.compile(r"JuliaRun server listening on (https?://\S+)\n")
_DASHBOARD = re.compile(r"^dashboard: (https?://\S+)\n", re.MULTILINE)
_CA_BUNDLE = re.compile(r"^export JRUN_CA_BUNDLE=(.+)\n", re.MULTILINE)
#: Documentation addresses (RFC 5737, RFC 3849): a route lookup towards them finds the
#: default route's interface; a UDP ``connect`` only looks the route up and sends nothing.
_ROUTE_PROBES = {4: "192.0.2.1", 6: "2001:db8::1"}

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


def _url(scheme: str, host: str, port: int) -> str:
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def _resolve(name: str) -> set[str]:
    """The addresses ``name`` resolves to here (none when it does not)."""
    try:
        found = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return set()
    return {str(info[4][0]) for info in found}


def _is_own(address: str) -> bool:
    """Whether ``address`` is an address of this machine (a socket can be bound to it)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((address, 0))
    except OSError:
        return False
    return True


def _own_names() -> list[str]:
    """This machine's names: its fully qualified name, then its host name."""
    return [socket.getfqdn(), socket.gethostname()]


def _primary_address(version: int) -> str | None:
    """This machine's address on its default route, for IP ``version`` 4 or 6."""
    family = socket.AF_INET6 if version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((_ROUTE_PROBES[version], 9))
            address = str(probe.getsockname()[0])
    except OSError:
        return None
    parsed = ipaddress.ip_address(address)
    return None if parsed.is_loopback or parsed.is_unspecified else address


def dial_hosts(configured: str, bound: str) -> list[str]:
    """Where clients can dial a socket bound to ``bound``, best first (never a wildcard).

    Args:
        configured: The host the server was asked to listen on (an address or a name).
        bound: The address the socket is bound to.
    """
    address = ipaddress.ip_address(bound)
    hosts: list[str] = []
    if not address.is_unspecified:
        if not _is_address(configured):
            hosts.append(configured)  # the name the server was started with
        hosts.append(bound)
        if address.is_loopback:
            hosts.append("localhost")
        else:
            hosts += [name for name in _own_names() if bound in _resolve(name)]
    else:
        hosts += [
            name
            for name in _own_names()
            if any(
                not ipaddress.ip_address(found.split("%")[0]).is_loopback and _is_own(found)
                for found in _resolve(name)
            )
        ]
        versions = (4,) if address.version == 4 else (4, 6)
        hosts += [found for found in map(_primary_address, versions) if found is not None]
        if not hosts:
            hosts.append("127.0.0.1" if address.version == 4 else "::1")
    return list(dict.fromkeys(hosts))


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


@attrs.frozen
class Endpoints:
    """How clients and jobs call a listening server.

    Attributes:
        url: What clients dial: printed as ``JRUN_URL``, the base of the dashboard link.
        job_url: What jobs get as ``JRUN_URL`` (reachable from where they run).
        tls: The certificate served, or None for plain HTTP.
    """

    url: str
    job_url: str
    tls: TlsFiles | None = None

    @property
    def ca_bundle(self) -> Path | None:
        """The CA certificate clients must trust (a self-signed setup), else None."""
        return self.tls.ca_bundle if self.tls is not None else None


def serving_endpoints(
    config: ServerConfig, sock: socket.socket, remote: str | None = None
) -> Endpoints:
    """Work out the URLs of a server listening on ``sock``; prepare its certificate.

    With ``tls_self_signed`` the server's CA and certificate are made or renewed (the
    caller holds the data directory's lock).  See the module docstring for the choices.

    Args:
        config: The server's configuration.
        sock: The bound socket.
        remote: An address where jobs run when they do not run on this machine (the
            backend's :meth:`~._backend.Backend.remote_host`), else None.

    Raises:
        ConfigError: The TLS files given cannot be used (the message says why).
        OSError: The certificate files cannot be written.
    """
    bound, port = sock.getsockname()[:2]
    hosts = dial_hosts(config.host, bound)
    wildcard = ipaddress.ip_address(bound).is_unspecified
    loopback = "::1" if ":" in bound else "127.0.0.1"
    # Jobs on other machines call a wildcard-bound server at its address on their route.
    route = address_towards(remote) if remote is not None and wildcard else None
    job_hosts = list(dict.fromkeys([route, *hosts] if route is not None else hosts))
    tls: TlsFiles | None = None
    if config.tls_self_signed:
        names = [*job_hosts, "localhost", "127.0.0.1", "::1"]
        tls = self_signed(config.data_dir, names, label=socket.gethostname())
    elif config.tls_cert is not None and config.tls_key is not None:
        tls = given = load_certificate(config.tls_cert, config.tls_key)
        hosts.sort(key=lambda host: not given.covers(host))  # stable: the first it names
        job_hosts.sort(key=lambda host: not given.covers(host))
        if not tls.covers(hosts[0]):
            logger.warning(
                "the TLS certificate %s names %s but not %s, where clients are told to call "
                "the server: they will refuse it; use a certificate for that name, or --host "
                "a name the certificate holds",
                config.tls_cert,
                ", ".join(tls.names) or "nothing",
                hosts[0],
            )
        elif not tls.covers(job_hosts[0]):
            logger.warning(
                "the TLS certificate %s names %s but none of %s, where jobs on other "
                "machines are told to call the server: they will refuse it",
                config.tls_cert,
                ", ".join(tls.names) or "nothing",
                ", ".join(job_hosts),
            )
    elif not is_loopback(config.host):
        logger.warning(
            "serving plain HTTP on %s (--insecure-http): every request's namespace token "
            "crosses the network in clear; serve HTTPS with --tls-self-signed or --tls-cert",
            config.host,
        )
    scheme = "https" if tls is not None else "http"
    jobs_on_loopback = wildcard and remote is None and (tls is None or tls.covers(loopback))
    return Endpoints(
        url=_url(scheme, hosts[0], port),
        job_url=_url(scheme, loopback if jobs_on_loopback else job_hosts[0], port),
        tls=tls,
    )


def make_uvicorn(
    engine: Engine,
    *,
    log_level: str = "warning",
    dashboard: Dashboard | None = None,
    tls: TlsFiles | None = None,
) -> uvicorn.Server:
    """Build a uvicorn server for ``engine`` (which the caller starts and stops).

    The access log is off: request URLs carry the credential, and the dashboard's login
    links their code.

    Args:
        engine: The job engine.
        log_level: uvicorn's log level.
        dashboard: The dashboard whose login links the caller hands out.
        tls: The certificate to serve HTTPS with; plain HTTP without.
    """
    app = create_app(engine, manage_engine=False, dashboard=dashboard)
    config = uvicorn.Config(
        app,
        log_level=log_level,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN,
        # h11 always, never httptools (uvicorn's choice where it is installed): through
        # uvicorn, httptools refuses request lines over 64 KiB as plain text, and specs
        # travel in the query.  (httptools halves the server's CPU per call, but a call
        # costs the client more than the server: bare getJobStatus 1.8 ms instead of 2.3.)
        http="h11",
        # h11's default of 16 KiB would refuse, as plain text, a long request line that
        # arrives in several reads; the app answers queries over MAX_QUERY with a 414.
        h11_max_incomplete_event_size=MAX_REQUEST_HEAD,
        ssl_certfile=tls.cert if tls is not None else None,
        ssl_keyfile=tls.key if tls is not None else None,
    )
    return _Server(config, engine)


class _RunningServer(abc.ABC):
    """What :class:`LocalServer` and :class:`ServerProcess` share: credentials, URL, context.

    Args:
        tokens: Raw token per namespace; by default one random token for ``namespace``.
        namespace: The namespace that :attr:`token` and :attr:`env` are for.
    """

    def __init__(self, tokens: Mapping[str, str] | None, namespace: str) -> None:
        self.tokens: Mapping[str, str] = (
            dict(tokens) if tokens is not None else {namespace: generate_token(24)}
        )
        self.namespace = namespace
        self.url = ""
        self.dashboard_url = ""
        #: The CA certificate file clients trust the server with (self-signed TLS), else None.
        self.ca_bundle: str | None = None

    @property
    def token(self) -> str:
        """The raw token of :attr:`namespace`."""
        return self.tokens[self.namespace]

    @property
    def env(self) -> dict[str, str]:
        """``JRUN_URL``, ``JRUN_TOKEN``, ``JRUN_NAMESPACE`` (``JRUN_CA_BUNDLE``) of a client."""
        env = {"JRUN_URL": self.url, "JRUN_TOKEN": self.token, "JRUN_NAMESPACE": self.namespace}
        if self.ca_bundle is not None:
            env["JRUN_CA_BUNDLE"] = self.ca_bundle
        return env

    @abc.abstractmethod
    def start(self: _Self) -> _Self:
        """Start serving; return self."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop serving."""

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


class LocalServer(_RunningServer):
    """A JuliaRun-compatible server running in a background thread, for tests and scripts.

    It listens on a free loopback port (or ``host`` and ``port`` among ``settings``),
    serves from its own event loop (so it works from synchronous, asyncio and trio code),
    and stops its job processes when it stops.  :attr:`dashboard_url` signs a browser in
    to the dashboard (once).  With ``tls_self_signed=True`` (or ``tls_cert`` and
    ``tls_key``) it serves HTTPS, and :attr:`ca_bundle` is the CA file clients trust::

        async with LocalServer() as server:
            async with Context(url=server.url, token=server.token,
                               namespace=server.namespace,
                               verify=server.ca_bundle) as ctx:
                ...

    Args:
        data_dir: Where state, logs and volumes live; a temporary directory (removed on
            stop) when not given.
        tokens: Raw token per namespace; by default one random token for ``namespace``.
        namespace: The namespace that :attr:`token` and :attr:`env` are for.
        **settings: Further :class:`ServerConfig` fields (``kill_grace``,
            ``restart_backoff``, ``tls_self_signed``...).
    """

    def __init__(
        self,
        data_dir: str | Path | None = None,
        *,
        tokens: Mapping[str, str] | None = None,
        namespace: str = DEFAULT_NAMESPACE,
        **settings: Any,
    ) -> None:
        super().__init__(tokens, namespace)
        self._temporary = data_dir is None
        path = Path(tempfile.mkdtemp(prefix="juliarun-")) if data_dir is None else Path(data_dir)
        self.config = ServerConfig(data_dir=path, tokens=self.tokens, **settings)
        self._engine: Engine | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self._dashboard: Dashboard | None = None

    @property
    def data_dir(self) -> Path:
        """The data directory."""
        return self.config.data_dir

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
            BackendError: The backend cannot run jobs here (the message says why).
            ConfigError: The TLS files given cannot be used.
            OSError: The address cannot be bound.
            RuntimeError: The server did not come up.
        """
        if self._thread is not None:
            raise RuntimeError("the server is already running")
        self._engine = Engine(self.config)  # first: it takes the data directory's lock
        try:
            self._socket = bind_socket(self.config.host, self.config.port)
            endpoints = serving_endpoints(
                self.config, self._socket, remote=self._engine.backend.remote_host()
            )
            self.url = endpoints.url
            bundle = endpoints.ca_bundle
            self.ca_bundle = str(bundle) if bundle is not None else None
            self._engine.start(endpoints.job_url, ca_bundle=bundle)
        except BaseException:
            self.stop()
            raise
        self._dashboard = Dashboard(self._engine)
        self.dashboard_url = self._dashboard.login_url(self.url, self.namespace)
        self._server = make_uvicorn(self._engine, dashboard=self._dashboard, tls=endpoints.tls)
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


class ServerProcess(_RunningServer):
    """The server in a subprocess of its own, for tests, benchmarks and scripts.

    Unlike :class:`LocalServer` it shares no interpreter with the caller, and it can be
    killed: jobs keep running when the server is killed or stopped (unless ``--stop-jobs``
    is among ``args``), and :meth:`start` on the same object starts a new server on the
    same data directory and port, which re-adopts them::

        with ServerProcess(data_dir) as server:
            async with Context(url=server.url, token=server.token,
                               namespace=server.namespace,
                               verify=server.ca_bundle) as ctx:
                ...

    :attr:`dashboard_url` is the link the server printed to sign a browser in to its
    dashboard (it works once), and :attr:`ca_bundle` the CA file it printed (with
    ``tls_self_signed``).  Inherited ``JRUN_*`` variables are not passed to the server.
    What it prints (stdout and stderr) goes to a temporary file; see :meth:`output`.

    Args:
        data_dir: Where state, logs and volumes live.
        tokens: Raw token per namespace; by default one random token for ``namespace``.
        namespace: The namespace that :attr:`token` and :attr:`env` are for.
        host: The interface to listen on.
        port: The TCP port; 0 picks a free one at the first start, which later starts
            reuse, so that the URL stays the same.
        tls_self_signed: Serve HTTPS with the server's own CA (``--tls-self-signed``).
        tls_cert: Serve HTTPS with this certificate (``--tls-cert``), and ``tls_key``.
        tls_key: The private key of ``tls_cert`` (``--tls-key``).
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
        tls_self_signed: bool = False,
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
        args: Sequence[str] = (),
        start_timeout: float = 30.0,
    ) -> None:
        super().__init__(tokens, namespace)
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port
        tls: list[str] = ["--tls-self-signed"] if tls_self_signed else []
        tls += ["--tls-cert", str(tls_cert)] if tls_cert is not None else []
        tls += ["--tls-key", str(tls_key)] if tls_key is not None else []
        self.args = (*tls, *args)
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self._output: IO[bytes] | None = None
        self._printed = ""

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

    def start(self: _Process) -> _Process:
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
                bundle = _CA_BUNDLE.search(printed)
                self.ca_bundle = shlex.split(bundle.group(1))[0] if bundle is not None else None
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
