"""A spare launcher for the local backend: a start of a slot that skips starting Python.

Starting the launcher for a slot costs a fresh interpreter, its imports and the slot's
container (a cgroup of its own, or a subreaper), several tens of milliseconds before the
program runs.  The local backend keeps :data:`SPARES` launchers started ahead
(``_launcher.py --spare``, see the end of ``_launcher.py`` for what they are sent), each in
a session of its own, waiting on a Unix socket; a start hands the slot to one -- the
launcher arguments, the environment, the working directory and the descriptors of the log
files -- and the spare runs it exactly as a launcher started for it would.  A spare is
offered only once it says it is ready, so that no start waits for a spare's own start-up:
a start that finds none starts a launcher of its own.  A new spare is started in the
background once the program of the last one runs and the launchers started meanwhile have
set up their slots, never while a verb waits.

Whatever happens to a spare, no start is lost: one that died, was killed, or does not
answer within :data:`HANDOVER_TIMEOUT` is killed with its container, and the slot starts
with a launcher of its own (as does a start while every spare is taken).  A
spare records its container in a tree file of its own (``spare-*.tree`` in the spares'
directory) until it takes a job; the server removes a spare when it stops, a spare whose
server is gone exits by itself (its socket reaches end of file), and the next server kills
whatever a killed spare left.

``JULIARUN_AIO_SPARE_LAUNCHER=0`` in the server's environment turns spares off.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from ._launcher import kill_tree

__all__ = [
    "HANDOVER_TIMEOUT",
    "SPARES",
    "SPARE_VARIABLE",
    "Handover",
    "Spare",
    "SparePool",
    "spares_enabled",
]

logger = logging.getLogger("juliarun_aio.server")

#: The server's environment variable that turns spare launchers off (``0``).
SPARE_VARIABLE = "JULIARUN_AIO_SPARE_LAUNCHER"
#: How many spares are kept ready: with two, submissions one after another each find one
#: ready even when they come faster than a spare starts (40-60 ms here).
SPARES = 2
#: Seconds a start waits for a spare to take its slot before starting a launcher of its own.
HANDOVER_TIMEOUT = 10.0
#: Seconds the next spare waits at most for the program of the last one to start, so that
#: the two do not compete for the CPU.
SETTLE = 2.0
#: Seconds between two attempts to start a spare when one could not be started.
RETRY = 5.0
_HEADER = 8


def spares_enabled() -> bool:
    """Whether the local backend keeps a spare launcher (Unix, not turned off)."""
    return os.environ.get(SPARE_VARIABLE, "1") != "0" and hasattr(socket, "send_fds")


class Handover(NamedTuple):
    """A slot for a spare launcher.

    Attributes:
        options: The launcher's arguments, as a launcher started for the slot gets them.
        env: The program's environment.
        cwd: Its working directory.
        out_fd: Its stdout (the spare gets a copy).
        err_fd: Its stderr.
    """

    options: Sequence[str]
    env: Mapping[str, str]
    cwd: str
    out_fd: int
    err_fd: int


class Spare:
    """A launcher started ahead, waiting for its slot.

    Args:
        popen: The launcher process.
        sock: The server's end of its socket.
        tree_path: Where it records its container until it takes a slot.
    """

    def __init__(
        self, popen: subprocess.Popen[bytes], sock: socket.socket, tree_path: Path
    ) -> None:
        self.popen = popen
        self.sock = sock
        self.tree_path = tree_path

    @classmethod
    def start(cls, launcher: Path, directory: Path, mode: str) -> Spare:
        """Start a spare in a session of its own.

        Args:
            launcher: The launcher's path.
            directory: Where its tree file goes.
            mode: The ``--cleanup`` mode.

        Raises:
            OSError: It could not be started.
        """
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        tree_path = directory / f"spare-{secrets.token_hex(6)}.tree"
        command = [sys.executable, "-I", "-S", str(launcher), "--spare", str(theirs.fileno())]
        command += ["--tree-file", str(tree_path), "--cleanup", mode]
        try:
            popen = subprocess.Popen(  # noqa: S603 - argv list, never a shell
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd="/",
                # Its own environment is replaced by the slot's when it takes one.
                env={k: v for k, v in os.environ.items() if not k.startswith("JRUN_")},
                start_new_session=True,
                pass_fds=(theirs.fileno(),),
            )
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        return cls(popen, ours, tree_path)

    def wait_ready(self) -> bool:
        """Wait (up to :data:`HANDOVER_TIMEOUT` s) until the spare says it is ready."""
        try:
            self.sock.settimeout(HANDOVER_TIMEOUT)
            return self.sock.recv(1) == b"r"
        except OSError:
            return False

    def hand_over(self, job: Handover) -> bool:
        """Give the spare its slot; False when it is gone (it is then discarded).

        Raises:
            OSError: The working directory cannot be entered (as ``Popen`` would raise).
        """
        options, cwd = job.options, job.cwd
        tree_file = options[options.index("--tree-file") + 1]
        body = json.dumps({"argv": list(options), "env": dict(job.env), "cwd": cwd}).encode()
        answer = b""
        try:
            self.sock.settimeout(HANDOVER_TIMEOUT)
            socket.send_fds(
                self.sock,
                [len(body).to_bytes(_HEADER, "big")],
                [job.out_fd, job.err_fd],
                socket.MSG_NOSIGNAL,
            )
            self.sock.sendall(body)
            answer = self.sock.recv(64)
        except OSError:
            answer = b""  # gone, or too slow to trust: it is killed below
        if answer == b"ok":
            return True
        # It may have recorded the slot's container before it failed: that goes too.
        self.discard()
        kill_tree(tree_file)
        with contextlib.suppress(OSError):
            os.unlink(tree_file)
        if answer.startswith(b"E") and answer[1:].isdigit():
            errno = int(answer[1:])
            raise OSError(errno, os.strerror(errno), cwd)
        return False

    def discard(self) -> None:
        """Kill the spare and whatever its container holds, reap it, remove its tree file."""
        self.sock.close()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()
        kill_tree(str(self.tree_path))
        with contextlib.suppress(OSError):
            self.tree_path.unlink()


class SparePool:
    """:data:`SPARES` spare launchers kept ready by a thread of its own.

    Args:
        launcher: The launcher's path.
        directory: Where the spares' tree files go.
        mode: The ``--cleanup`` mode of the spares.
    """

    def __init__(self, launcher: Path, directory: Path, mode: str) -> None:
        self._launcher = launcher
        self._directory = directory
        self._mode = mode
        self._cond = threading.Condition()
        self._ready: list[Spare] = []
        self._settling: socket.socket | None = None
        self._starting: Spare | None = None
        self._cold: list[Path] = []
        self._closed = False
        self._thread = threading.Thread(target=self._keep, name="juliarun-spare", daemon=True)

    def open(self) -> None:
        """Kill what spares of an earlier server left, and start keeping spares ready."""
        for leftover in self._directory.glob("spare-*.tree"):
            kill_tree(str(leftover))
            with contextlib.suppress(OSError):
                leftover.unlink()
        self._thread.start()

    def hand_over(self, job: Handover) -> subprocess.Popen[bytes] | None:
        """Have a ready spare run a slot (see :meth:`Spare.hand_over`); a new one is started.

        Returns:
            The launcher running the slot; ``None`` when there was no spare to take it.

        Raises:
            OSError: The working directory cannot be entered.
        """
        with self._cond:
            spare = self._ready.pop(0) if self._ready else None
        if spare is None:
            return None
        # The next spare is started once this one has its slot (and its program runs).
        try:
            taken = spare.hand_over(job)
        except OSError:
            with self._cond:
                self._cond.notify_all()
            raise
        with self._cond:
            if taken and not self._closed and self._settling is None:
                self._settling = spare.sock
            elif taken:
                spare.sock.close()  # the thread already waits for another program
            self._cond.notify_all()
        if not taken:
            return None
        return spare.popen

    @property
    def ready_pid(self) -> int | None:
        """The pid of the spare ready for the next start, if there is one."""
        with self._cond:
            return self._ready[0].popen.pid if self._ready else None

    def started_cold(self, tree_path: Path) -> None:
        """Note a launcher started for its slot: the next spare waits until it is set up.

        Args:
            tree_path: The tree file it writes once its program's container is ready.
        """
        with self._cond:
            self._cold.append(tree_path)

    def _wait_for_cold_starts(self) -> None:
        """Wait (up to :data:`SETTLE` s) until the launchers started cold are set up.

        A burst of starts keeps as many interpreters starting at once as without spares.
        """
        deadline = time.monotonic() + SETTLE
        pause = 0.001
        while True:
            with self._cond:
                self._cold = [path for path in self._cold if not path.exists()]
                if self._closed or not self._cold or time.monotonic() >= deadline:
                    self._cold.clear()
                    return
                self._cond.wait(pause)
            pause = min(pause * 2, 0.02)

    def check(self) -> None:
        """Replace the spares that have ended (a child of the server has: cheap to ask)."""
        with self._cond:
            ended = [spare for spare in self._ready if spare.popen.poll() is not None]
            if not ended:
                return
            self._ready = [spare for spare in self._ready if spare not in ended]
            self._cond.notify_all()
        for spare in ended:
            logger.warning("a spare launcher ended with status %s", spare.popen.returncode)
            spare.discard()

    def close(self) -> None:
        """Stop keeping spares and kill those there are."""
        with self._cond:
            self._closed = True
            spares, self._ready = self._ready, []
            for waited in (self._settling, self._starting.sock if self._starting else None):
                if waited is not None:
                    with contextlib.suppress(OSError):
                        waited.shutdown(socket.SHUT_RDWR)  # wakes the thread's wait
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join()
        if self._settling is not None:  # the thread is gone: nobody else holds it
            self._settling.close()
            self._settling = None
        for spare in spares:
            spare.discard()

    def _keep(self) -> None:
        while True:
            with self._cond:
                while not self._closed and len(self._ready) >= SPARES:
                    self._cond.wait()
                if self._closed:
                    break
                settling = self._settling
            if settling is not None:
                with contextlib.suppress(OSError):
                    settling.settimeout(SETTLE)
                    settling.recv(1)  # end of file once its program runs
                with self._cond:
                    self._settling = None
                settling.close()
            self._wait_for_cold_starts()
            try:
                spare = Spare.start(self._launcher, self._directory, self._mode)
            except OSError as exc:
                logger.warning("cannot start a spare launcher (retrying): %s", exc)
                with self._cond:
                    self._cond.wait_for(lambda: self._closed, RETRY)
                continue
            with self._cond:
                self._starting = spare
            # Offered only once ready: a start never waits for a spare's own start-up.
            ready = spare.wait_ready()
            with self._cond:
                self._starting = None
                kept = ready and not self._closed  # closed meanwhile: close() missed it
                if kept:
                    self._ready.append(spare)
            if not kept:
                spare.discard()
            if not ready and not self._closed:
                logger.warning("a spare launcher did not get ready (retrying)")
                with self._cond:
                    self._cond.wait_for(lambda: self._closed, RETRY)
