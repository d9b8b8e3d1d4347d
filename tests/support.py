"""Helpers shared by the test folders: polling, job scripts and the processes they leave."""

from __future__ import annotations

import datetime
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import attrs
import psutil
import pytest
import trustme

from juliarun_aio import Context
from juliarun_aio._http import HttpLayer

__all__ = [
    "PROJECT_ADDRESS",
    "QUICK_KILL",
    "SPAWN_STRAYS",
    "TestCertificate",
    "TlsListener",
    "cleanup_mechanisms",
    "http_layer",
    "issue_certificate",
    "marked_processes",
    "on_loopback",
    "project_address",
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
