"""Helpers shared by the test folders: polling, job scripts, the processes they leave, a
protocol client, Slurm."""

from __future__ import annotations

import base64
import datetime
import os
import socket
import sqlite3
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
import httpx
import psutil
import pytest
import trustme

from juliarun_aio import Context
from juliarun_aio._http import HttpLayer

if TYPE_CHECKING:
    from juliarun_aio.server._slurm_cli import SlurmCli

__all__ = [
    "PROJECT_ADDRESS",
    "QUICK_KILL",
    "SLURM_ARGS",
    "SLURM_HOST",
    "SLURM_NODES",
    "SLURM_SERVER",
    "SPAWN_STRAYS",
    "Api",
    "TestCertificate",
    "TlsListener",
    "cancel_slurm_jobs",
    "cleanup_mechanisms",
    "encode_token",
    "expand_columns",
    "http_layer",
    "in_ci",
    "issue_certificate",
    "marked_processes",
    "on_loopback",
    "project_address",
    "slurm_enforces_memory",
    "slurm_problem",
    "wait_until",
    "write_script",
]

T = TypeVar("T")

#: The address of this machine that the project's Slurm test nodes reach it at (on ``lo``
#: while ``scripts/slurm-up.sh`` runs a multi-node cluster): the one non-loopback address
#: tests may listen on and send to.
PROJECT_ADDRESS = "10.231.0.1"

#: Server command-line arguments that make stopping job processes quick.
QUICK_KILL = ("--kill-grace", "0.5")

#: The nodes of ``scripts/slurm-up.sh --nodes 3`` and their addresses.
SLURM_NODES = {"node1": PROJECT_ADDRESS, "node2": "10.231.2.2", "node3": "10.231.3.2"}
#: Where a server whose jobs run on that cluster listens: an address every node reaches.
SLURM_HOST = SLURM_NODES["node1"]
#: ``LocalServer`` settings of a server whose jobs run on that cluster: off loopback, so
#: with TLS (its own CA; clients trust the server's ``ca_bundle``).
SLURM_SERVER: dict[str, Any] = {"backend": "slurm", "host": SLURM_HOST, "tls_self_signed": True}
#: The same as command-line arguments of a ``ServerProcess`` (whose ``host=SLURM_HOST``).
SLURM_ARGS = ("--backend", "slurm", "--tls-self-signed")

#: Lines of a Python job script (which imported os and subprocess and set ``stray`` to an
#: argv) that start ``stray`` three ways a job must not leave behind: as a plain background
#: child, in a session of its own (setsid), and as a double-forked daemon.
SPAWN_STRAYS = """\
subprocess.Popen(stray)
subprocess.Popen(stray, start_new_session=True)
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv(stray[0], stray)
    os._exit(0)
os.wait()
"""


def wait_until(check: Callable[[], T], timeout: float = 15.0, what: str = "condition") -> T:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last value {value!r}")
        time.sleep(0.02)


def http_layer(ctx: Context) -> HttpLayer:
    """The HTTP layer of ``ctx``: its pool, slots and pollers, for tests that count them."""
    return ctx._http


def write_script(directory: Path, name: str, text: str) -> str:
    """Write an executable script into a volume directory and return its name."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text)
    path.chmod(0o755)
    return name


def marked_processes(variable: str, value: str) -> list[psutil.Process]:
    """The live processes (zombies aside) whose environment holds ``variable=value``."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and proc.environ().get(variable) == value:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def cleanup_mechanisms() -> list[str]:
    """The process-tree cleanups of the local server this machine offers, strongest first."""
    from juliarun_aio.server._launcher import describe_cleanup  # noqa: PLC0415 - server extra

    return [
        mode for mode in ("cgroup2", "cgroup1", "subreaper") if describe_cleanup(mode)[0] == mode
    ]


@attrs.frozen
class TestCertificate:
    """A server certificate issued by a test CA, as files.

    Attributes:
        ca: The CA's certificate (what clients trust).
        cert: The server's certificate (PEM).
        key: Its private key (PEM).
    """

    ca: Path
    cert: Path
    key: Path


def issue_certificate(
    directory: Path,
    *names: str,
    ca: trustme.CA | None = None,
    expired: bool = False,
) -> TestCertificate:
    """Write a certificate for ``names`` issued by ``ca`` (a new test CA by default).

    Args:
        directory: Where the files go (created).
        names: The DNS names and addresses the certificate is valid for.
        ca: The issuing CA.
        expired: Make a certificate whose validity ended yesterday.
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca = ca or trustme.CA()
    if expired:
        now = datetime.datetime.now(datetime.timezone.utc)
        day = datetime.timedelta(days=1)
        leaf = ca.issue_cert(*names, not_before=now - 30 * day, not_after=now - day)
    else:
        leaf = ca.issue_cert(*names)
    files = TestCertificate(
        ca=directory / "ca.pem", cert=directory / "cert.pem", key=directory / "key.pem"
    )
    ca.cert_pem.write_to_path(str(files.ca))
    leaf.cert_chain_pems[0].write_to_path(str(files.cert))
    leaf.private_key_pem.write_to_path(str(files.key))
    return files


def project_address() -> str:
    """:data:`PROJECT_ADDRESS` when this machine has it; skip the test otherwise (fail in CI)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((PROJECT_ADDRESS, 0))
    except OSError:
        message = f"{PROJECT_ADDRESS} is not an address of this machine (scripts/slurm-up.sh)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return PROJECT_ADDRESS


def on_loopback(url: str) -> str:
    """``url`` with its host replaced by 127.0.0.1 (tests send nothing elsewhere)."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://127.0.0.1:{rest.rsplit(':', 1)[1]}"


class TlsListener:
    """A TLS endpoint on loopback that presents a certificate and answers nothing else.

    For certificates a real server refuses to serve (an expired one): clients see the
    handshake exactly as from a server, and :attr:`connections` counts how often they
    tried.  Use as a context manager; :attr:`url` is ``https://<host>:<port>``.

    Args:
        files: The certificate and key to present.
        host: How clients name the listener in :attr:`url` (it listens on 127.0.0.1).
    """

    def __init__(self, files: TestCertificate, host: str = "127.0.0.1") -> None:
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(files.cert, files.key)
        self._socket = socket.create_server(("127.0.0.1", 0))
        self._socket.settimeout(0.1)
        self.url = f"https://{host}:{self._socket.getsockname()[1]}"
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._socket.accept()
            except TimeoutError:
                continue
            self.connections += 1
            conn.settimeout(5)
            try:
                with self._context.wrap_socket(conn, server_side=True):
                    pass
            except OSError:  # the client refused the certificate, as tests expect
                conn.close()

    def __enter__(self) -> TlsListener:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._socket.close()


def in_ci() -> bool:
    """Whether this run is a CI run (``CI`` set to anything but empty, 0 or false)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def slurm_problem(cli: SlurmCli) -> str | None:
    """Why the Slurm tests cannot run here (they need every node of the test cluster)."""
    from juliarun_aio.server._slurm_cli import unavailable  # noqa: PLC0415 - server extra

    return unavailable(cli, nodes=len(SLURM_NODES))


def slurm_enforces_memory() -> bool:
    """Whether the cluster kills a job that outgrows its ``--mem`` (cgroup tracking)."""
    from juliarun_aio.server._slurm_cli import SlurmCli  # noqa: PLC0415 - server extra

    config = SlurmCli(timeout=30).run(["scontrol", "show", "config"])
    settings = dict(line.split("=", 1) for line in config.splitlines() if "=" in line)
    return {key.strip(): value.strip() for key, value in settings.items()}.get(
        "ProctrackType"
    ) == "proctrack/cgroup"


def cancel_slurm_jobs(data_dir: Path) -> list[int]:
    """Cancel the live Slurm jobs of the submissions a data directory records; return their ids.

    Jobs of other servers (other uids) are never touched.
    """
    from juliarun_aio.server._slurm_cli import SlotName, SlurmCli  # noqa: PLC0415 - server extra

    database = data_dir / "state.sqlite3"
    if not database.exists():
        return []
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        uids = {row[0] for row in db.execute("SELECT uid FROM jobs")}
    cli = SlurmCli(timeout=30)
    live = []
    for job in cli.queue():
        name = SlotName.parse(job.name)
        if name is not None and name.uid in uids and not job.status.state.finished:
            live.append(job.job_id)
    cli.cancel(live)
    return live


def expand_columns(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Spell out each ``columns`` event of a ``streamLogs`` body as the line objects it holds.

    Written from the extension's documentation, independently of the client's reader.
    """
    out: list[dict[str, Any]] = []
    for item in items:
        if "texts" not in item:
            out.append(item)
            continue
        count, last = len(item["texts"]), item["cursor"]
        cursors = item.get("cursors", list(range(last - count + 1, last + 1)))
        sources = [(stream, proc) for size, stream, proc in item["sources"] for _ in range(size)]
        out += [
            {"cursor": cursor, "stream": stream, "proc": proc, "text": text}
            for cursor, (stream, proc), text in zip(cursors, sources, item["texts"], strict=True)
        ]
    return out


def encode_token(token: str) -> str:
    """Return the ``jruntok`` value of a raw token."""
    return base64.b64encode(token.encode()).decode()


class Api:
    """A minimal synchronous client of the protocol, for checking the server's answers."""

    def __init__(
        self, url: str, token: str, namespace: str, *, ca_bundle: str | Path | None = None
    ) -> None:
        self.url = url
        self.token = token
        self.namespace = namespace
        verify = ssl.create_default_context(cafile=ca_bundle) if ca_bundle else True
        self.http = httpx.Client(base_url=url, timeout=30, verify=verify)

    def close(self) -> None:
        self.http.close()

    def get(
        self,
        verb: str,
        kind: str | None = None,
        *,
        token: str | None = None,
        namespace: str | None = None,
        **params: Any,
    ) -> httpx.Response:
        query = {
            "jruntok": encode_token(token if token is not None else self.token),
            "jrunns": namespace if namespace is not None else self.namespace,
        }
        query.update({key: str(value) for key, value in params.items()})
        path = f"/{verb}/{kind}/" if kind else f"/{verb}/"
        return self.http.get(path, params=query)

    def data(self, verb: str, kind: str | None = None, **params: Any) -> Any:
        response = self.get(verb, kind, **params)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["code"] == 0, body
        return body["data"]

    def error(self, status: int, verb: str, kind: str | None = None, **params: Any) -> str:
        response = self.get(verb, kind, **params)
        assert response.status_code == status, response.text
        body = response.json()
        assert body["code"] != 0
        assert isinstance(body["data"], str)
        return body["data"]

    def status(self, kind: str, name: str) -> dict[str, Any]:
        status: dict[str, Any] = self.data("getJobStatus", kind, name=name)
        return status

    def wait_done(self, kind: str, name: str, timeout: float = 15.0) -> dict[str, Any]:
        """Wait until the job is succeeded, failed or lost; return its status."""

        def done() -> dict[str, Any] | None:
            status = self.status(kind, name)
            return status if status["phase"] in ("succeeded", "failed", "lost") else None

        status = wait_until(done, timeout, f"job {name} to finish")
        assert status is not None
        return status

    def wait_scale(self, kind: str, name: str, running: int, timeout: float = 15.0) -> None:
        wait_until(
            lambda: self.data("getJobScale", kind, name=name)[0] == running,
            timeout,
            f"{running} running workers of {name}",
        )

    def wait_status(
        self, kind: str, name: str, check: Callable[[dict[str, Any]], bool], what: str
    ) -> dict[str, Any]:
        """Wait until ``check(status)`` holds; return that status."""

        def ready() -> dict[str, Any] | None:
            status = self.status(kind, name)
            return status if check(status) else None

        status = wait_until(ready, what=what)
        assert status is not None
        return status

    def wait_lines(self, kind: str, name: str, count: int, **params: Any) -> list[str]:
        """Wait until the job's log has at least ``count`` lines; return them all."""

        def enough() -> list[str] | None:
            lines = self.lines(kind, name, **params)
            return lines if len(lines) >= count else None

        lines = wait_until(enough, what=f"{count} log lines of {name}")
        assert lines is not None
        return lines

    def lines(self, kind: str, name: str, **params: Any) -> list[str]:
        text: str = self.data("tailJob", kind, name=name, count=10_000, **params)
        return text.split("\n") if text else []
