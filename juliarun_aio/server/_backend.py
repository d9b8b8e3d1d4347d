"""The process backends' interface: where and how the processes of job slots run.

The engine (``_engine.py``) decides *what* runs -- which slots a job has, when one starts,
restarts or stops -- and a backend runs it: processes on this machine (``local``,
``_backend_local.py``) or one Slurm job per slot (``slurm``, ``_backend_slurm.py``).  The
engine never knows which backend it drives.

A *slot* is one process position of a job: ``master``, or ``worker-N`` (N from 1).  It is
known everywhere by its identity: namespace, job name, the submission's uid and the slot's
label (:class:`SlotId`).  Each start of a slot has a *key* (``worker-2-1a2b3c4d``) that
names its files in the job's log directory: ``<key>.out`` and ``<key>.err`` (its output,
which the log collector reads, whatever the backend), ``<key>.exit`` (its exit code,
written by the launcher when the program has ended) and backend-specific ones.

A backend offers:

- :meth:`Backend.start`: start a slot (blocking, called without the engine's lock from a
  starter thread), returning a :class:`SlotProcess`;
- :meth:`Backend.sweep`: observe every slot at once, once per supervision pass (one
  system call, one ``squeue``, one list of pods...), returning a :class:`Sweep` that says
  which processes changed since the engine last looked;
- :meth:`SlotProcess.poll`, :meth:`~SlotProcess.terminate`, :meth:`~SlotProcess.kill`:
  the state and exit of one slot, and its signals (SIGTERM, then SIGKILL after the
  engine's grace period);
- :meth:`Backend.adopt` and :meth:`Backend.strays`: find the slots again after a server
  restart -- from what the store recorded, and, for a start that was under way when the
  server died, by the slot's identity;
- :meth:`Backend.endpoint`: where a job's ports are reached from the server's host.

Every method may be called from any thread; a backend locks what it shares.
"""

from __future__ import annotations

import abc
import signal
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import attrs

from .._jobs import JobSpec
from ._config import ServerConfig
from ._runtime import Layout, ProcessRequest

__all__ = [
    "Backend",
    "BackendError",
    "ExitInfo",
    "SchedulerBusyError",
    "SlotId",
    "SlotProcess",
    "SlotRecord",
    "StartRequest",
    "Sweep",
    "describe_exit",
    "make_backend",
    "read_exit_file",
]


class BackendError(RuntimeError):
    """The backend cannot run jobs as configured; the message says why, on one line."""


class SchedulerBusyError(RuntimeError):
    """A start could not be handed to the scheduler now (it does not answer); retry later."""


@attrs.frozen
class SlotId:
    """Who a slot is: the same for every start of it within one submission.

    Attributes:
        namespace: The job's namespace.
        job: The job's name.
        uid: The submission's identity (16 hex digits).
        label: ``master`` or ``worker-N``.
    """

    namespace: str
    job: str
    uid: str
    label: str


@attrs.frozen
class ExitInfo:
    """How a process ended: its exit code (``-N`` for signal N; ``None`` if unknown)."""

    code: int | None
    reason: str


def read_exit_file(path: Path) -> int | None:
    """The exit code a launcher wrote to ``path``, or None while there is none."""
    try:
        return int(path.read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return None


def describe_exit(code: int | None) -> str:
    """Say in words how a process with exit ``code`` ended."""
    if code is None:
        return "disappeared without reporting an exit code"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"exited with code {code}"


@attrs.frozen(kw_only=True)
class StartRequest:
    """One start of a slot.

    Attributes:
        slot: The slot.
        key: Names this start's files in ``log_dir``.
        log_dir: The job's log directory.
        process: What the slot runs (program, environment, resources).
        master_key: The key of the job's master process, for workers of a job with a
            master (a backend whose workers need the master's address finds it there).
    """

    slot: SlotId
    key: str
    log_dir: Path
    process: ProcessRequest
    master_key: str | None = None

    def path(self, suffix: str) -> Path:
        """The file of this start with ``suffix`` (``.out``, ``.err``, ``.exit``...)."""
        return self.log_dir / f"{self.key}{suffix}"


@attrs.frozen(kw_only=True)
class SlotRecord:
    """What the store kept of a started slot, to find it again after a restart.

    Attributes:
        slot: The slot.
        key: The start's key.
        log_dir: The job's log directory.
        ident: The backend's number for the process (a pid, a Slurm job id).
        ticks: The process's kernel start time, where the backend records one.
    """

    slot: SlotId
    key: str
    log_dir: Path
    ident: int
    ticks: int | None


class SlotProcess(abc.ABC):
    """The process of one start of a slot, started by this server or adopted.

    Attributes:
        slot: The slot it runs.
        key: The start's key.
    """

    def __init__(self, slot: SlotId, key: str) -> None:
        self.slot = slot
        self.key = key

    @property
    @abc.abstractmethod
    def ident(self) -> int:
        """The backend's number for the process (a pid, a Slurm job id), for the store."""

    @property
    def ticks(self) -> int | None:
        """The process's kernel start time, where the backend records one."""
        return None

    @property
    def running(self) -> bool:
        """Whether its program runs (rather than waiting for resources)."""
        return True

    @property
    def note(self) -> str | None:
        """Why it does not run yet, or is paused, when the backend knows; else None."""
        return None

    @property
    def never_starts(self) -> bool:
        """Whether it waits for something that will not come (its scheduler says so)."""
        return False

    @abc.abstractmethod
    def poll(self) -> ExitInfo | None:
        """Return how the process ended, or ``None`` while it is waiting or running."""

    @abc.abstractmethod
    def terminate(self) -> None:
        """Ask the program to stop (SIGTERM); it may take a moment or ignore it."""

    @abc.abstractmethod
    def kill(self) -> None:
        """End the program and everything it started, now (SIGKILL)."""

    def detach(self) -> None:  # noqa: B027 - most backends have nothing to let go
        """Leave the process running for a later server."""

    def wait_started(self, timeout: float) -> None:  # noqa: B027 - an optional pacing hint
        """Wait up to ``timeout`` s until starting it costs this machine nothing more."""

    @abc.abstractmethod
    def discard(self) -> None:
        """Kill a process started for a slot that is no longer wanted, and remove its files."""


class Sweep(abc.ABC):
    """One observation of every slot: which processes need the engine's attention."""

    @abc.abstractmethod
    def changed(self, process: SlotProcess) -> bool:
        """Whether ``process`` may have changed (ended, started running) since the last look.

        A false answer means :meth:`SlotProcess.poll` and :attr:`SlotProcess.running`
        would say what they said before; a true one may be a false alarm.
        """


class Backend(abc.ABC):
    """Where the processes of job slots run.

    Attributes:
        name: The backend's name, as ``--backend`` takes it.
    """

    name: str = ""

    def open(self, url: str) -> None:  # noqa: B027 - a backend may need no checks
        """Check that jobs can run, before the server accepts any.

        Args:
            url: The URL jobs use to call the server (``JRUN_URL``).

        Raises:
            BackendError: They cannot; the message names the problem.
        """

    def remote_host(self) -> str | None:
        """An address where jobs run, or None when they run on this machine.

        A server bound to every interface tells its jobs to call it at its address on the
        route to there.

        Raises:
            BackendError: The backend cannot say.
        """
        return None

    def close(self) -> None:  # noqa: B027 - a backend may hold nothing
        """Let go of what the backend holds (threads, connections); jobs keep running."""

    @property
    @abc.abstractmethod
    def process_cleanup(self) -> str:
        """How what a job's program starts ends with it (``serverInfo``'s ``process_cleanup``)."""

    @abc.abstractmethod
    def reserve_ports(self, names: Sequence[str]) -> dict[str, int]:
        """The port of each name, as recorded at submission (0: chosen where the job runs)."""

    @abc.abstractmethod
    def start(self, request: StartRequest) -> SlotProcess:
        """Start a slot, without the engine's lock; its output goes to its files.

        Raises:
            LaunchError: It cannot run here (program missing...): the slot fails.
            SpecError: Its spec cannot be run as it is: the slot fails.
            SchedulerBusyError: It could not be handed over now; the engine tries again.
            OSError: It could not be started.
        """

    @abc.abstractmethod
    def adopt(self, record: SlotRecord) -> SlotProcess:
        """Take over a process started by an earlier server (it may have ended since)."""

    def strays(
        self, submissions: Mapping[tuple[str, str, str], Collection[int]]
    ) -> list[SlotProcess]:
        """Processes of these submissions that run but were never recorded.

        A server that dies between starting a slot and recording it leaves one; the
        engine adopts it (when it still wants the slot) or discards it.

        Args:
            submissions: ``(namespace, job, uid)`` of each job -> the ``ident`` of every
                process recorded for it.

        Returns:
            Each stray process.
        """
        del submissions
        return []

    @abc.abstractmethod
    def sweep(self) -> Sweep:
        """Observe every slot once; cheap enough to call at every supervision pass."""

    @abc.abstractmethod
    def endpoint(
        self, ports: Mapping[str, int], primary: SlotProcess | None
    ) -> tuple[str | None, dict[str, int]]:
        """Where a job's ports are reached from the server's host.

        Args:
            ports: The ports recorded at submission (:meth:`reserve_ports`).
            primary: The process of the slot that serves them (the master, or the first
                unit of a job array), if one runs.

        Returns:
            The host (``None`` while there is none yet) and the port of each name.
        """

    def notes(self, spec: JobSpec) -> list[str]:
        """What of ``spec`` this backend accepts but cannot honour, to say in the job's message."""
        del spec
        return []


def make_backend(config: ServerConfig, layout: Layout) -> Backend:
    """The backend ``config.backend`` names, set up from ``config``.

    Raises:
        ConfigError: The backend's settings are invalid.
    """
    # Imported here: each backend imports this module.
    if config.backend == "slurm":
        from ._backend_slurm import SlurmBackend  # noqa: PLC0415

        return SlurmBackend(config, layout)
    from ._backend_local import LocalBackend  # noqa: PLC0415

    return LocalBackend(config.supervise_interval, layout.root / "spares")
