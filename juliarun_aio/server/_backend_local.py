"""The ``local`` backend: every slot is a process on this machine.

Every job process runs under the launcher (``_launcher.py``) in a session of its own, with
stdout and stderr going straight to files, so it outlives the server.  A process is known
by the launcher's pid plus its kernel start time (``/proc/<pid>/stat``), which guards
against pid reuse when a later server re-adopts it.  The launcher writes the program's
exit code to an *exit file*; that file is how an adopted process's end is observed.

Everything a job process starts ends with it: the launcher contains the program's whole
process tree (a cgroup of its own where cgroups are writable, else as a child subreaper;
see ``_launcher.py``) and kills what is left when the program ends.  It records how in a
*tree file* beside the exit file, so that when the launcher itself dies -- killed, or while
no server ran -- the server that notices kills the rest of the tree.  The environment
variable ``JULIARUN_AIO_CLEANUP`` of the server (``cgroup2``, ``cgroup1`` or
``subreaper``) names the strongest mechanism launchers may use; by default they use the
strongest the machine offers, which :func:`describe_cleanup` names.

Stopping sends SIGTERM to the launcher, which forwards it to the program's process group;
killing sends SIGKILL to every process of the session and of the tree.

A start hands its slot to a launcher started ahead when one is ready (``_spare.py``), which
saves the launcher's start-up; the slot then runs exactly as under a launcher of its own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from ._backend import (
    Backend,
    ExitInfo,
    SlotId,
    SlotProcess,
    SlotRecord,
    StartRequest,
    Sweep,
    describe_exit,
    read_exit_file,
)
from ._launcher import CLEANUP_MODES, describe_cleanup, kill_tree
from ._private import make_private_dirs, open_private
from ._runtime import LaunchPlan, allocate_ports, plan_process
from ._spare import Handover, SparePool, spares_enabled

__all__ = [
    "ADOPTED_CHECK",
    "LocalBackend",
    "LocalProcess",
    "any_child_exited",
    "cleanup_mode",
    "launch",
]

logger = logging.getLogger("juliarun_aio.server")

_LAUNCHER = Path(__file__).with_name("_launcher.py")
#: Seconds between two checks of the processes re-adopted from an earlier server (each
#: check reads its exit file and /proc entry; started processes are checked every pass).
ADOPTED_CHECK = 0.1
# Linux: start times and sessions come from /proc.  Elsewhere pids are trusted as they are
# and only the process group is killed.
_HAVE_PROC = os.path.isdir("/proc/self")

# Popen objects of processes deliberately left running when the server stopped; kept so
# that they are reaped (and never warned about) while this interpreter lives.
_detached: list[subprocess.Popen[bytes]] = []


def start_ticks(pid: int) -> int | None:
    """Return the kernel start time of ``pid`` (clock ticks since boot), ``None`` if gone."""
    stat = _stat_fields(pid)
    return int(stat[19]) if stat is not None else None


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat from the state (field 3) on; None if not readable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read()
    except OSError:
        return None
    return raw[raw.rfind(b")") + 2 :].decode("ascii", "replace").split()


def cleanup_mode() -> str:
    """The ``--cleanup`` mode of the launchers: ``$JULIARUN_AIO_CLEANUP``, else ``auto``."""
    mode = os.environ.get("JULIARUN_AIO_CLEANUP", "auto")
    return mode if mode in CLEANUP_MODES else "auto"


def _tree_file(exit_path: Path) -> Path:
    return exit_path.with_suffix(".tree")


class LocalProcess(SlotProcess):
    """A job process (its launcher), started by this server or adopted from an earlier one.

    Args:
        slot: The slot it runs.
        key: The start's key.
        pid: The launcher's pid.
        ticks: Its kernel start time, as recorded when it was started.
        exit_path: The exit file the launcher writes.
        popen: The ``Popen`` when this server started it.
    """

    def __init__(  # noqa: PLR0917 - the fields of a record, in the order the store keeps them
        self,
        slot: SlotId,
        key: str,
        pid: int,
        ticks: int | None,
        exit_path: Path,
        popen: subprocess.Popen[bytes] | None = None,
    ) -> None:
        super().__init__(slot, key)
        self.pid = pid
        self._ticks = ticks
        self.exit_path = exit_path
        self.tree_path = _tree_file(exit_path)
        self._popen = popen

    @property
    def ident(self) -> int:
        """The launcher's pid."""
        return self.pid

    @property
    def ticks(self) -> int | None:
        """The launcher's kernel start time."""
        return self._ticks

    def _same_process_alive(self) -> bool:
        if not _HAVE_PROC:  # no start time to compare: trust the pid
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return False
            return True
        stat = _stat_fields(self.pid)
        if stat is None or stat[0] in ("Z", "X"):
            return False
        return self._ticks is None or int(stat[19]) == self._ticks

    def poll(self) -> ExitInfo | None:
        """Return how the process ended, or ``None`` while it runs."""
        if self._popen is not None:
            returncode = self._popen.poll()
            if returncode is None:
                return None
            code = read_exit_file(self.exit_path)
            if code is None:
                # The launcher itself was killed: do not leave its program behind.
                self._kill_orphans()
                code = returncode
            return ExitInfo(code, describe_exit(code))
        code = read_exit_file(self.exit_path)
        if code is not None:
            return ExitInfo(code, describe_exit(code))
        if self._same_process_alive():
            return None
        # The launcher writes the exit file before it exits: look once more.
        code = read_exit_file(self.exit_path)
        if code is None:
            self._kill_orphans()
        return ExitInfo(code, describe_exit(code))

    def _kill_orphans(self) -> None:
        """Kill what a dead launcher left: its session and the rest of its process tree."""
        _kill_session(self.pid)
        kill_tree(str(self.tree_path))

    def wait_started(self, timeout: float) -> None:
        """Wait up to ``timeout`` s until the launcher has contained its program, or ended."""
        deadline = time.monotonic() + timeout
        pause = 0.001
        while not self.tree_path.exists() and time.monotonic() < deadline:
            if self.has_exited():
                return
            time.sleep(pause)
            pause = min(pause * 2, 0.02)

    @property
    def is_child(self) -> bool:
        """True when this server started the process (so the kernel reports its exit)."""
        return self._popen is not None

    def has_exited(self) -> bool:
        """Whether the process has ended, without reaping it or acting on it.

        Cheap enough to call on every process at each supervision pass, and safe without
        the engine's lock: :meth:`poll` then collects the exit.
        """
        if self._popen is None:
            return self.poll() is not None  # reads the exit file and /proc only
        if self._popen.returncode is not None:
            return True
        if not hasattr(os, "waitid"):
            return self._popen.poll() is not None
        try:
            peek = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True  # already reaped
        return peek is not None

    def terminate(self) -> None:
        """Ask the program to stop (SIGTERM, forwarded by the launcher)."""
        if self._popen is not None and self._popen.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._popen.send_signal(signal.SIGTERM)
        elif self._popen is None and self._same_process_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)

    def kill(self) -> None:
        """Kill the launcher, the program and everything else in their session and tree."""
        if self._popen is not None:
            if self._popen.poll() is None:
                self._kill_orphans()
        elif self._same_process_alive():
            self._kill_orphans()

    def detach(self) -> None:
        """Leave the process running for a later server; keep reaping it meanwhile."""
        if self._popen is not None and self._popen.poll() is None:
            _detached.append(self._popen)
        self._popen = None

    def discard(self) -> None:
        """Kill the process and its tree, wait for it, and remove its files."""
        self.kill()
        deadline = time.monotonic() + 10
        while self.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        for path in (self.exit_path, self.tree_path):
            with contextlib.suppress(OSError):
                path.unlink()
        for suffix in (".out", ".err"):
            with contextlib.suppress(OSError):
                self.exit_path.with_suffix(suffix).unlink()


def any_child_exited() -> bool:
    """Whether some child of this server has ended and not been reaped yet (one syscall).

    A false answer means no started process needs looking at; a true one may concern a
    child that is not a job process, and then each process is checked on its own.
    """
    if not hasattr(os, "waitid"):
        return True
    try:
        return os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return False  # no children at all


def _kill_session(sid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(sid, signal.SIGKILL)
    for entry in os.listdir("/proc") if _HAVE_PROC else ():
        if not entry.isdigit():
            continue
        stat = _stat_fields(int(entry))
        if stat is not None and len(stat) > 3 and stat[3] == str(sid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry), signal.SIGKILL)


def _reap_detached() -> None:
    _detached[:] = [popen for popen in _detached if popen.poll() is None]


def launch(
    slot: SlotId,
    key: str,
    plan: LaunchPlan,
    *,
    stdout: Path,
    stderr: Path,
    exit_path: Path,
    spares: SparePool | None = None,
) -> LocalProcess:
    """Start ``plan`` under the launcher, output appended to ``stdout`` / ``stderr``.

    The spare launcher of ``spares`` runs it when there is one; else a launcher is
    started for it.

    Raises:
        OSError: The launcher could not be started (the program itself failing to start
            is reported through its exit code and stderr instead).
    """
    _reap_detached()
    options = ["--exit-file", str(exit_path), "--tree-file", str(_tree_file(exit_path))]
    options += ["--cleanup", cleanup_mode()]
    if plan.memory_bytes is not None:
        options += ["--memory-bytes", str(plan.memory_bytes)]
    options += ["--", *plan.argv]
    flags = os.O_WRONLY | os.O_APPEND
    out_fd = open_private(stdout, flags)
    try:
        err_fd = open_private(stderr, flags)
        try:
            popen = None
            if spares is not None:
                popen = spares.hand_over(Handover(options, plan.env, str(plan.cwd), out_fd, err_fd))
            if popen is None:
                popen = subprocess.Popen(  # noqa: S603 - argv list, never a shell
                    [sys.executable, "-I", "-S", str(_LAUNCHER), *options],
                    stdin=subprocess.DEVNULL,
                    stdout=out_fd,
                    stderr=err_fd,
                    cwd=plan.cwd,
                    env=dict(plan.env),
                    start_new_session=True,
                )
                if spares is not None:
                    spares.started_cold(_tree_file(exit_path))
        finally:
            os.close(err_fd)
    finally:
        os.close(out_fd)
    return LocalProcess(slot, key, popen.pid, start_ticks(popen.pid), exit_path, popen)


class _LocalSweep(Sweep):
    """Which processes to look at: children only once one has exited, adopted ones now and then."""

    def __init__(self, child_exited: bool, check_adopted: bool) -> None:
        self.child_exited = child_exited
        self.check_adopted = check_adopted

    def changed(self, process: SlotProcess) -> bool:
        assert isinstance(process, LocalProcess)
        if process.is_child:
            return self.child_exited and process.has_exited()
        return self.check_adopted and process.has_exited()


class LocalBackend(Backend):
    """Slots as processes on this machine, each under the launcher (see the module docstring).

    Processes this server started are checked with a single system call while none has
    exited; re-adopted ones (not our children) need file reads each, so they are checked
    every :data:`ADOPTED_CHECK` seconds (at least every ``supervise_interval``).

    Args:
        supervise_interval: Seconds between two supervision passes of the engine.
        spare_dir: Where spare launchers record themselves; ``None``: no spare launcher
            (nor when ``JULIARUN_AIO_SPARE_LAUNCHER=0``).
    """

    name = "local"

    def __init__(self, supervise_interval: float, spare_dir: Path | None = None) -> None:
        self._adopted_every = max(ADOPTED_CHECK, supervise_interval)
        self._next_adopted_check = 0.0
        self._cleanup = ""
        self._spare_dir = spare_dir
        self._spares: SparePool | None = None

    def open(self, url: str) -> None:
        """Find out how job process trees are cleaned up here, log it, start spare launchers."""
        del url
        self._cleanup, where = describe_cleanup(cleanup_mode())
        logger.info(
            "processes that jobs start end with their job: cleanup by %s%s",
            self._cleanup,
            f" under {where}" if where else "",
        )
        if self._spare_dir is not None and spares_enabled():
            self._spares = SparePool(_LAUNCHER, make_private_dirs(self._spare_dir), cleanup_mode())
            self._spares.open()

    def close(self) -> None:
        """Kill the spare launchers; job processes keep running."""
        if self._spares is not None:
            self._spares.close()

    @property
    def process_cleanup(self) -> str:
        """``cgroup2``, ``cgroup1``, ``subreaper`` or ``session`` (see ``_launcher.py``)."""
        return self._cleanup

    def reserve_ports(self, names: Sequence[str]) -> dict[str, int]:
        """Free loopback ports, chosen now: every process of the job sees the same ones."""
        return allocate_ports(list(names))

    def start(self, request: StartRequest) -> LocalProcess:
        """Plan the slot's process and start it under the launcher."""
        return launch(
            request.slot,
            request.key,
            plan_process(request.process),
            stdout=request.path(".out"),
            stderr=request.path(".err"),
            exit_path=request.path(".exit"),
            spares=self._spares,
        )

    def adopt(self, record: SlotRecord) -> LocalProcess:
        """The launcher of a record, known by its pid and start time."""
        return LocalProcess(
            record.slot,
            record.key,
            record.ident,
            record.ticks,
            record.log_dir / f"{record.key}.exit",
        )

    def sweep(self) -> Sweep:
        """One ``waitid`` for the children, and every so often a look at adopted ones."""
        now = time.monotonic()
        check_adopted = now >= self._next_adopted_check
        if check_adopted:
            self._next_adopted_check = now + self._adopted_every
        child_exited = any_child_exited()
        if child_exited and self._spares is not None:
            self._spares.check()
        return _LocalSweep(child_exited, check_adopted)

    def endpoint(
        self, ports: Mapping[str, int], primary: SlotProcess | None
    ) -> tuple[str | None, dict[str, int]]:
        """This machine's loopback address and the ports chosen at submission."""
        del primary
        return "127.0.0.1", dict(ports)
