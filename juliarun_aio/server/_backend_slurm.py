"""The ``slurm`` backend: every slot is one Slurm job.

A slot's process is a batch job named by its identity (``jr.<ns>.<job>.<uid>.<slot>``,
:class:`~._slurm_cli.SlotName`) that runs the shared launcher (``_launcher.py``) on a
node, which runs the program.  Everything the server and the node exchange goes through
files in the job's log directory, on a file system that the server and every node see at
the same path (checked at start):

- ``<key>.out`` / ``<key>.err``: the program's output (Slurm's ``--output`` and
  ``--error``), read by the log collector as for any backend;
- ``<key>.exit``: the exit code the launcher writes when the program has ended -- the
  authority on how it ended, since Slurm's own exit codes differ between commands;
- ``<key>.place``: the node's address (on the route to the server) and the ports the
  launcher chose on the node, written before the program starts.  The master's (or a job
  array unit's) is the job's endpoint, and workers wait for the master's before they start,
  so that they get ``JRUN_MASTER_HOST`` and the master's ``JRUN_PORT_<NAME>``;
- ``<label>.starting``: the key of the slot's latest start, written *before* ``sbatch``,
  so that a server that dies between ``sbatch`` and recording the job finds it again by
  its name and knows its files (:meth:`SlurmBackend.strays`).

State comes from one ``squeue`` call per sweep for every job of this user whose name starts
with ``jr.`` -- every 0.1 s while a slot waits to run or to end, else every 0.5 s -- plus
``sacct`` (or ``sacct --completion``) for jobs that have left the queue, run by an observer
thread so that nothing else ever waits for Slurm's answer.  Every Slurm state
maps to a slot state, with Slurm's reason in the job's message.  Signals go through a
thread of their own, so that no verb waits for ``scancel``.  A stop reaches the launcher
only (``--batch``) as SIGUSR2, which it forwards to the program as SIGTERM, once; the kill
after the grace period is SIGUSR1, which the launcher turns into a SIGKILL of the program
and its tree (then it cleans up, records the exit and ends the job at once).  Slurm's own
SIGTERM and SIGKILL would each write a cancellation notice into the job's output, and
killing the launcher itself makes Slurm wait a second for the processes it leaves.  A job
that still runs a few seconds after its kill is cancelled.

Resources: ``cpu`` is ``--cpus-per-task`` (rounded up to whole CPUs), ``memory`` is
``--mem``, enforced by the cluster; ``image`` and GPUs are accepted and the job's message
says they are not used.  Jobs are never requeued by Slurm: after a node failure the slot
ends (``NODE_FAIL``, reported as lost) and the engine's restart policy decides.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import secrets
import sys
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import attrs

from .._jobs import JobSpec
from .._tls import is_loopback_host
from ._backend import (
    Backend,
    BackendError,
    ExitInfo,
    SchedulerBusyError,
    SlotId,
    SlotProcess,
    SlotRecord,
    StartRequest,
    Sweep,
    describe_exit,
    read_exit_file,
)
from ._config import ConfigError, ServerConfig
from ._launcher import read_place
from ._private import open_private, write_private
from ._runtime import MASTER_KINDS, WORKER_KINDS, LaunchError, Layout, plan_process
from ._slurm_cli import (
    SLOT_NAME_PREFIX,
    BatchJob,
    CancelScope,
    ExitStatus,
    ExportPolicy,
    FinishedJob,
    QueuedJob,
    SlotName,
    SlotState,
    SlotStatus,
    SlurmCli,
    SlurmError,
    SlurmTimeoutError,
    SlurmUnavailableError,
)

__all__ = ["SlurmBackend", "SlurmProcess"]

logger = logging.getLogger("juliarun_aio.server")

_LAUNCHER = Path(__file__).with_name("_launcher.py")
#: Seconds between two ``squeue`` calls while every slot runs (or waits for long).
SWEEP_IDLE = 0.5
#: Seconds between two ``squeue`` calls while a slot is being started or stopped.
SWEEP_BUSY = 0.1
#: Seconds after a submission or a signal during which sweeps are :data:`SWEEP_BUSY`.
BUSY_WINDOW = 30.0
#: Seconds a job may be missing from ``squeue`` (and from ``sacct``) before it is lost.
MISSING_GRACE = 30.0
#: Seconds a job whose program was killed by a signal nobody here asked for waits, once
#: out of ``squeue``, for its ``sacct`` record: the signal may be Slurm's (OUT_OF_MEMORY,
#: TIMEOUT), which only the record tells.
SIGNALLED_GRACE = 10.0
#: Seconds each Slurm command may take.
COMMAND_TIMEOUT = 15.0
#: Seconds the start-up check of the shared file system may take.
PROBE_TIMEOUT = 30.0
#: Seconds between two signals of the same kind to one job (the engine repeats them).
RESIGNAL = 2.0
#: Seconds between two tries of a cancel that Slurm's controller did not take.
SIGNAL_RETRY = 2.0
# squeue/sbatch errors that mean "the controller does not answer now", not "refused".
_UNREACHABLE = re.compile(
    r"contact slurm controller|Socket timed out|Connection refused|Zero Bytes were "
    r"transmitted|Communication connection failure|Unable to establish|slurm_receive_msg",
    re.IGNORECASE,
)
# Environment variables a job never takes from the server: Slurm's own (sbatch sets the
# node's) and those the launcher sets on the node.
_NOT_EXPORTED = ("SLURM_", "SBATCH_", "SALLOC_", "SRUN_", "JRUN_PORT_", "JRUN_MASTER_HOST")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_USABLE_NODES = ("IDLE", "MIXED")
_NOT_ENDED = (SlotState.PENDING, SlotState.RUNNING, SlotState.SUSPENDED, SlotState.UNKNOWN)


def _unreachable(error: SlurmError) -> bool:
    return isinstance(error, SlurmTimeoutError) or bool(_UNREACHABLE.search(str(error)))


def _slurm_code(status: ExitStatus | None) -> int | None:
    """Slurm's exit status as an exit code (``-N`` for signal N)."""
    if status is None:
        return None
    return -status.signal if status.signal else status.code


@attrs.define
class _Observation:
    """What the latest sweep knows of one job."""

    queued: QueuedJob | None = None
    finished: FinishedJob | None = None
    missing_since: float | None = None  # monotonic time it was first missing from squeue


class SlurmProcess(SlotProcess):
    """One start of a slot: a Slurm batch job running the launcher.

    Args:
        backend: The backend that observes and signals it.
        slot: The slot.
        key: The start's key.
        job_id: Slurm's job id.
        log_dir: The job's log directory.
        submitted: When it was submitted (monotonic), or None for an adopted one.
    """

    def __init__(  # noqa: PLR0917 - what identifies one start, in order
        self,
        backend: SlurmBackend,
        slot: SlotId,
        key: str,
        job_id: int,
        log_dir: Path,
        submitted: float | None = None,
    ) -> None:
        super().__init__(slot, key)
        self.job_id = job_id
        self.exit_path = log_dir / f"{key}.exit"
        self.place_path = log_dir / f"{key}.place"
        self.submitted = submitted
        self._backend = backend
        #: What :meth:`poll` last decided from (:meth:`token`), for the sweep to compare.
        self.seen: object = None
        self._place: tuple[str, dict[str, int]] | None = None
        self._signalled: dict[str, float] = {}
        self.stop_requested = False

    @property
    def ident(self) -> int:
        """Slurm's job id."""
        return self.job_id

    @property
    def _status(self) -> SlotStatus | None:
        observed = self._backend.observation(self.job_id)
        record = observed.queued if observed.queued is not None else observed.finished
        return record.status if record is not None else None

    @property
    def running(self) -> bool:
        """Whether Slurm runs it (its node is allocated; the program may still be starting)."""
        status = self._status
        return status is not None and status.state is SlotState.RUNNING

    @property
    def pending(self) -> bool:
        """Whether it waits for Slurm to run it (or is not listed yet)."""
        status = self._status
        return status is None or status.state is SlotState.PENDING

    @property
    def note(self) -> str | None:
        """Slurm's reason while it waits or is suspended."""
        status = self._status
        if status is not None and status.state in (SlotState.PENDING, SlotState.SUSPENDED):
            return status.reason
        return None

    @property
    def never_starts(self) -> bool:
        """Whether Slurm keeps it queued for a reason that will not pass by itself."""
        status = self._status
        return status is not None and status.never_starts

    def token(self) -> object:
        """What :meth:`poll` would decide from: changes when the sweep learns something."""
        observed = self._backend.observation(self.job_id)
        missing_for = (
            -1.0 if observed.missing_since is None else time.monotonic() - observed.missing_since
        )
        queued = observed.queued
        return (
            (queued.state, queued.reason, queued.nodes) if queued is not None else None,
            observed.finished.state if observed.finished is not None else None,
            missing_for >= SIGNALLED_GRACE,
            missing_for >= MISSING_GRACE,
        )

    def poll(self) -> ExitInfo | None:
        """How the job ended, from Slurm's state and the launcher's exit file; else None."""
        self.seen = self.token()
        observed = self._backend.observation(self.job_id)
        record = observed.queued if observed.queued is not None else observed.finished
        if record is None:
            if observed.missing_since is None:
                return None  # not listed yet: just submitted
            code = read_exit_file(self.exit_path)
            missing_for = time.monotonic() - observed.missing_since
            if code is not None and (
                code >= 0 or self.stop_requested or missing_for >= SIGNALLED_GRACE
            ):
                return self._ended(code, describe_exit(code))
            if missing_for < MISSING_GRACE:
                return None
            return self._ended(None, "disappeared from Slurm's queue and accounting")
        status = record.status
        if status.state in _NOT_ENDED:
            return None
        code = read_exit_file(self.exit_path)
        if status.state is SlotState.STOPPING:
            # The batch step is being cleaned up; the program has ended once the exit
            # file is there.
            return None if code is None else self._ended(code, describe_exit(code))
        if status.state is SlotState.LOST:
            return self._ended(None, f"ended: {status.reason}")
        if code is None:
            code = _slurm_code(record.exit_status)
        # The program's own end reads as on any backend; an end Slurm caused says why.
        base = record.state.split(" ")[0]
        if base in ("COMPLETED", "FAILED") or (base == "CANCELLED" and self.stop_requested):
            return self._ended(code, describe_exit(code))
        return self._ended(code, f"ended: {status.reason}")

    def _ended(self, code: int | None, reason: str) -> ExitInfo:
        self._backend.forget(self)
        return ExitInfo(code, reason)

    def place(self) -> tuple[str, dict[str, int]] | None:
        """The node's address and the ports the launcher chose, once it has written them."""
        if self._place is None:
            place = read_place(str(self.place_path))
            if place is not None:
                ports = place.get("ports")
                self._place = (
                    str(place.get("host")),
                    {str(k): int(v) for k, v in ports.items()} if isinstance(ports, dict) else {},
                )
        return self._place

    def _signal(self, kind: str) -> None:
        now = time.monotonic()
        last = self._signalled.get(kind)
        if last is not None and now - last < RESIGNAL:
            return
        self._signalled[kind] = now
        self.stop_requested = True
        # A kill that did not end the job is followed by a plain cancel.
        self._backend.signal(self, "cancel" if kind == "kill" and last is not None else kind)

    def terminate(self) -> None:
        """SIGTERM to the program, through its launcher; a job still waiting is cancelled."""
        self._signal("term")

    def kill(self) -> None:
        """SIGKILL to the program and its tree, through the launcher; later, cancel the job."""
        self._signal("kill")

    def discard(self) -> None:
        """Cancel the job (as soon as Slurm answers) and remove what it wrote."""
        self.stop_requested = True
        self._backend.signal(self, "cancel")
        self._backend.forget(self)
        for suffix in (".exit", ".place", ".tree", ".out", ".err"):
            with contextlib.suppress(OSError):
                self.exit_path.with_suffix(suffix).unlink()


class _SlurmSweep(Sweep):
    """Compares what each process last saw with what the latest ``squeue`` says."""

    def changed(self, process: SlotProcess) -> bool:
        assert isinstance(process, SlurmProcess)
        return process.token() != process.seen


class SlurmBackend(Backend):
    """Slots as Slurm batch jobs (see the module docstring).

    Args:
        config: The server configuration (``partition``, ``account``, ``sbatch_args``).
        layout: The data directory.
        cli: The Slurm command line client; a new one by default.

    Raises:
        ConfigError: ``sbatch_args`` holds an option the server sets itself.
    """

    name = "slurm"

    def __init__(self, config: ServerConfig, layout: Layout, cli: SlurmCli | None = None) -> None:
        self.cli = cli if cli is not None else SlurmCli(timeout=COMMAND_TIMEOUT)
        self._layout = layout
        self._partition = config.partition
        self._account = config.account
        self._extra = config.sbatch_args
        try:
            BatchJob(name="jr.check", argv=["true"], extra_args=self._extra)
        except ValueError as exc:
            raise ConfigError(f"--sbatch-arg: {exc}") from None
        self._route = "127.0.0.1"
        self._lock = threading.Lock()  # the observations and the live processes
        self._observed: dict[int, _Observation] = {}
        self._live: dict[int, SlurmProcess] = {}
        self._next_sweep = 0.0
        self._busy_until = 0.0
        self._queue_error: str | None = None
        self._signals: queue.Queue[tuple[SlurmProcess, str] | None] = queue.Queue()
        self._signaller = threading.Thread(
            target=self._send_signals, name="juliarun-slurm-signals", daemon=True
        )
        self._closing = threading.Event()
        self._wake = threading.Event()
        self._observer = threading.Thread(
            target=self._observe, name="juliarun-slurm-observer", daemon=True
        )
        self._listed: list[QueuedJob] = []
        self._retry: list[SlurmProcess] = []  # cancels to send again (signal thread only)

    # -- start-up -------------------------------------------------------------------------------

    def remote_host(self) -> str:
        """The address of a node of the partition, to find the route to the nodes."""
        nodes = self._nodes()
        if not nodes:
            raise BackendError(self._no_nodes("find out where jobs run"))
        return nodes[0].address

    def _nodes(self, *, with_room: bool = False) -> list[_NodeView]:
        try:
            nodes = self.cli.nodes()
        except SlurmUnavailableError as exc:
            raise BackendError(
                f"--backend slurm needs Slurm's commands (sbatch, squeue, scancel, srun) "
                f"here: {exc}"
            ) from None
        except SlurmError as exc:
            raise BackendError(f"Slurm does not answer: {exc}") from None
        partitions = {part for info in nodes.values() for part in info.partitions}
        if self._partition is not None and self._partition not in partitions:
            raise BackendError(
                f"--partition {self._partition}: Slurm has no such partition; its partitions "
                f"are {', '.join(sorted(partitions)) or 'none'}"
            )
        return [
            _NodeView(info.name, info.address, info.state)
            for info in nodes.values()
            if (self._partition is None or self._partition in info.partitions)
            and (not with_room or info.state.split("+")[0] in _USABLE_NODES)
        ]

    def _no_nodes(self, what: str) -> str:
        where = f"partition {self._partition}" if self._partition else "the cluster"
        return f"cannot {what}: {where} has no node with room for a one-task check now"

    def open(self, url: str) -> None:
        """Check that the nodes see the data directory and this installation, and reach us.

        Raises:
            BackendError: Slurm does not answer, the nodes cannot reach ``url``, or they do
                not see the data directory (or the launcher) at the same path.
        """
        from urllib.parse import urlsplit  # noqa: PLC0415 - needed once, at start

        host = urlsplit(url).hostname or "127.0.0.1"
        self._route = host
        nodes = self._nodes(with_room=True)
        if not nodes:
            raise BackendError(self._no_nodes("check that the nodes share the data directory"))
        if is_loopback_host(host) and not all(is_loopback_host(node.address) for node in nodes):
            raise BackendError(
                f"jobs on other nodes cannot call the server at {url}: listen on an address "
                "the nodes reach (--host, or a wildcard such as 0.0.0.0)"
            )
        self._probe(nodes, self._layout.root, "the data directory")
        self._probe(nodes, _LAUNCHER, "this juliarun_aio installation")
        try:
            self._listed = self.cli.queue(SLOT_NAME_PREFIX)
        except SlurmError as exc:
            raise BackendError(f"Slurm does not answer: {exc}") from None
        self._signaller.start()
        self._observer.start()

    def _probe(self, nodes: Sequence[_NodeView], target: Path, what: str) -> None:
        """Check that every node reads ``target`` (a directory: a new file in it) as we do."""
        probe = target / f".slurm-probe-{secrets.token_hex(8)}" if target.is_dir() else target
        if target.is_dir():
            write_private(probe, f"{probe.name}\n".encode())
        try:
            with probe.open(encoding="utf-8", errors="replace") as fh:
                expected = fh.readline().rstrip("\n")
            try:
                seen = self.cli.probe_file(
                    probe,
                    nodes=len(nodes),
                    name="jr-probe",
                    partition=self._partition,
                    account=self._account,
                    timeout=PROBE_TIMEOUT,
                )
            except SlurmError as exc:
                raise BackendError(
                    f"cannot check that the nodes see {what} ({target}): {exc}"
                ) from None
        finally:
            if target.is_dir():
                with contextlib.suppress(OSError):
                    probe.unlink()
        blind = sorted(node for node, text in seen.items() if text != expected)
        if blind or len(seen) < len(nodes):
            raise BackendError(
                f"{what} ({target}) is not visible at the same path on "
                f"{', '.join(blind) or 'every node'}; put it on a file system that every node "
                "mounts at the same path"
            )

    def close(self) -> None:
        """Stop observing, and stop the signal thread once it has sent what it was given."""
        self._closing.set()
        self._wake.set()
        if self._observer.is_alive():
            self._observer.join()
        if self._signaller.is_alive():
            self._signals.put(None)
            self._signaller.join()

    @property
    def process_cleanup(self) -> str:
        """``slurm``: the cluster's process tracking ends every process of a job."""
        return "slurm"

    def reserve_ports(self, names: Sequence[str]) -> dict[str, int]:
        """Every port is chosen on the node that runs the job (0 until then)."""
        return dict.fromkeys(names, 0)

    def notes(self, spec: JobSpec) -> list[str]:
        """Say that container images and GPUs are not used by Slurm jobs."""
        params = spec.params()
        notes = []
        image = params.get("image")
        if image is not None:
            notes.append(
                f"image {image!r} is not used: Slurm runs the job with its nodes' software"
            )
        for field in ("gpu", "worker_gpu"):
            if params.get(field):
                notes.append(
                    f"{field} is not requested from Slurm (give the server "
                    "--sbatch-arg=--gres=gpu:N to ask for GPUs)"
                )
        return notes

    # -- starting -------------------------------------------------------------------------------

    def start(self, request: StartRequest) -> SlurmProcess:
        """Submit the slot as a batch job running the launcher.

        Raises:
            LaunchError: The program cannot run, or Slurm refused the job (its message).
            SchedulerBusyError: Slurm's controller does not answer; try again later.
        """
        plan = plan_process(attrs.evolve(request.process, listen="0.0.0.0"))  # noqa: S104 - the node's services are reached from the server's host
        label = request.slot.label
        kind = request.process.spec.kind
        params = request.process.spec.params()
        worker_fields = label != "master" and kind in WORKER_KINDS
        launcher = [
            sys.executable,
            "-I",
            "-S",
            str(_LAUNCHER),
            "--exit-file",
            str(request.path(".exit")),
            "--tree-file",
            str(request.path(".tree")),
            "--cleanup",
            "subreaper",  # Slurm's process tracking holds the tree; see the launcher
            "--place-file",
            str(request.path(".place")),
            "--route-to",
            self._route,
        ]
        if label != "master" and kind in MASTER_KINDS and request.master_key is not None:
            launcher += ["--wait-place", str(request.log_dir / f"{request.master_key}.place")]
        else:
            for name in request.process.ports:
                launcher += ["--port", name]
        environment = {
            key: value
            for key, value in plan.env.items()
            if _ENV_NAME.fullmatch(key) and not key.startswith(_NOT_EXPORTED)
        }
        cpu = params.get("worker_cpu" if worker_fields else "cpu")
        memory = params.get("worker_memory" if worker_fields else "memory")
        name = str(SlotName(*attrs.astuple(request.slot)))
        try:
            job = BatchJob(
                name=name,
                argv=[*launcher, "--", *plan.argv],
                cpu=cpu if isinstance(cpu, str) else None,
                memory=memory if isinstance(memory, str) else None,
                partition=self._partition,
                account=self._account,
                stdout=request.path(".out"),
                stderr=request.path(".err"),
                workdir=plan.cwd,
                environment=environment,
                export=ExportPolicy.ONLY,
                extra_args=self._extra,
            )
        except ValueError as exc:
            raise LaunchError(f"cannot submit to Slurm: {exc}") from None
        # Recorded before sbatch: a server that dies before recording the job finds it
        # again by name and knows its files from this.
        write_private(request.log_dir / f"{label}.starting", f"{request.key}\n".encode())
        # Slurm appends to output files that exist (--open-mode=append) and keeps their
        # mode; one it creates gets the job's umask, readable by every user.
        for stream in (".out", ".err"):
            os.close(open_private(request.path(stream), os.O_WRONLY))
        submitted = time.monotonic()
        try:
            job_id = self.cli.submit(job)
        except SlurmError as exc:
            if _unreachable(exc) and not isinstance(exc, SlurmUnavailableError):
                raise SchedulerBusyError(f"Slurm does not answer ({exc})") from None
            raise LaunchError(f"Slurm refused the job: {_said(exc)}") from None
        process = SlurmProcess(
            self, request.slot, request.key, job_id, request.log_dir, submitted=submitted
        )
        self._track(process)
        return process

    def _track(self, process: SlurmProcess) -> None:
        with self._lock:
            self._live[process.job_id] = process
            self._observed.setdefault(process.job_id, _Observation())
        self._hurry()

    def _hurry(self) -> None:
        """Observe at the short interval for a while: a job starts or stops."""
        with self._lock:
            self._busy_until = time.monotonic() + BUSY_WINDOW
            self._next_sweep = min(self._next_sweep, time.monotonic() + SWEEP_BUSY)
        self._wake.set()

    def adopt(self, record: SlotRecord) -> SlurmProcess:
        """The job of a record, by its id (its state comes with the next sweep)."""
        process = SlurmProcess(self, record.slot, record.key, record.ident, record.log_dir)
        self._track(process)
        self._note_listed(process)
        return process

    def _note_listed(self, process: SlurmProcess) -> None:
        """Use what ``squeue`` said at start, so that adoption knows the state at once."""
        for job in self._listed:
            if job.job_id == process.job_id:
                with self._lock:
                    self._observed[job.job_id] = _Observation(queued=job)
                return
        with self._lock:
            self._observed[process.job_id] = _Observation(missing_since=time.monotonic())

    def strays(
        self, submissions: Mapping[tuple[str, str, str], Collection[int]]
    ) -> list[SlotProcess]:
        """Live jobs of these submissions that no process record names (found by name)."""
        found: list[SlotProcess] = []
        for job in self._listed:
            slot_name = SlotName.parse(job.name)
            if slot_name is None or job.status.state.finished:
                continue
            known = submissions.get((slot_name.namespace, slot_name.job, slot_name.uid))
            if known is None or job.job_id in known:
                continue
            log_dir = self._layout.job_logs(slot_name.namespace, slot_name.job)
            try:
                key = (log_dir / f"{slot_name.slot}.starting").read_text(encoding="ascii").strip()
            except OSError:
                key = f"{slot_name.slot}-{job.job_id}"
            slot = SlotId(slot_name.namespace, slot_name.job, slot_name.uid, slot_name.slot)
            process = SlurmProcess(self, slot, key, job.job_id, log_dir)
            self._track(process)
            self._note_listed(process)
            found.append(process)
        return found

    # -- observing ------------------------------------------------------------------------------

    def observation(self, job_id: int) -> _Observation:
        """What the latest sweep knows of a job."""
        with self._lock:
            return self._observed.get(job_id) or _Observation()

    def forget(self, process: SlurmProcess) -> None:
        """Stop observing an ended job."""
        with self._lock:
            self._live.pop(process.job_id, None)

    def sweep(self) -> Sweep:
        """What the observer thread saw last; it never waits for Slurm."""
        return _SlurmSweep()

    def _observe(self) -> None:
        """The observer thread: one ``squeue`` (and ``sacct`` for jobs it lost) when due.

        A thread of its own, so that a controller that does not answer (each command then
        takes seconds to fail) holds up neither the engine's supervision nor any verb.
        """
        while not self._closing.is_set():
            # Cleared before the sweep: a job submitted or signalled meanwhile makes the wait
            # below return at once.
            self._wake.clear()
            started = time.monotonic()
            try:
                self._refresh(started)
            except Exception:
                logger.exception("observing the Slurm jobs failed")
                self._next_sweep = time.monotonic() + SWEEP_IDLE
            # Never more often than every SWEEP_BUSY, however often it is woken.
            self._closing.wait(max(0.0, started + SWEEP_BUSY - time.monotonic()))
            self._wake.wait(max(0.0, self._next_sweep - time.monotonic()))

    def _refresh(self, started: float) -> None:
        try:
            listed = {job.job_id: job for job in self.cli.queue(SLOT_NAME_PREFIX)}
        except SlurmError as exc:
            if str(exc) != self._queue_error:
                logger.warning("cannot list the Slurm jobs (keeping the last states): %s", exc)
            self._queue_error = str(exc)
            self._next_sweep = time.monotonic() + SWEEP_IDLE
            return
        if self._queue_error is not None:
            logger.warning("Slurm answers again")
            self._queue_error = None
        with self._lock:
            live = dict(self._live)
            old = dict(self._observed)
        observed: dict[int, _Observation] = {}
        lost: list[int] = []
        for job_id, process in live.items():
            queued = listed.get(job_id)
            if queued is not None:
                observed[job_id] = _Observation(queued=queued)
                continue
            before = old.get(job_id) or _Observation()
            if process.submitted is not None and process.submitted >= started:
                observed[job_id] = before  # submitted while squeue ran
                continue
            observed[job_id] = _Observation(
                finished=before.finished, missing_since=before.missing_since or started
            )
            if before.finished is None:
                lost.append(job_id)
        if lost:
            try:
                history = self.cli.history(lost)
            except SlurmError as exc:
                logger.warning("cannot read the Slurm accounting of jobs %s: %s", lost, exc)
                history = {}
            for job_id, record in history.items():
                if job_id in observed and record.state:
                    observed[job_id].finished = record
        busy = any(
            process.stop_requested or _in_transition(observed[job_id].queued)
            for job_id, process in live.items()
        )
        with self._lock:
            self._observed = observed
            fast = busy and time.monotonic() < self._busy_until
        self._next_sweep = time.monotonic() + (SWEEP_BUSY if fast else SWEEP_IDLE)

    def endpoint(
        self, ports: Mapping[str, int], primary: SlotProcess | None
    ) -> tuple[str | None, dict[str, int]]:
        """The node's address and ports, as the serving slot's launcher recorded them."""
        del ports
        if not isinstance(primary, SlurmProcess):
            return None, {}
        place = primary.place()
        if place is None:
            return None, {}
        return place[0], dict(place[1])

    # -- signals --------------------------------------------------------------------------------

    def signal(self, process: SlurmProcess, kind: str) -> None:
        """Queue ``term``, ``kill`` or ``cancel`` for the signal thread."""
        self._hurry()
        self._signals.put((process, kind))
        if not self._signaller.is_alive():  # not opened (a test's backend): send it now
            self._send_pending()

    def _send_signals(self) -> None:
        stopping = False
        while not stopping:
            try:
                # Cancels that Slurm could not take are tried again every SIGNAL_RETRY.
                batch = [self._signals.get(timeout=SIGNAL_RETRY if self._retry else None)]
            except queue.Empty:
                batch = []
            stopping = self._send_pending(batch)

    def _send_pending(self, batch: list[tuple[SlurmProcess, str] | None] | None = None) -> bool:
        """Send ``batch`` and every other queued signal, one ``scancel`` per kind of signal.

        Returns:
            Whether the end of the signals (``None``) was among them.
        """
        items = list(batch or [])
        while True:
            try:
                items.append(self._signals.get_nowait())
            except queue.Empty:
                break
        retry, self._retry = self._retry, []
        wanted: dict[str, list[SlurmProcess]] = {"term": [], "kill": [], "cancel": retry}
        for item in items:
            if item is not None:
                wanted[item[1]].append(item[0])
        # A job still waiting for its node has nothing to signal: it is cancelled.
        self._cancel([process for process in wanted["term"] if process.pending])
        self._cancel(wanted["cancel"])
        running = [process for process in wanted["term"] if not process.pending]
        self._signal_batch(running, "USR2")  # the launcher's SIGTERM
        self._signal_batch(wanted["kill"], "USR1")  # the launcher's SIGKILL
        return None in items

    def _signal_batch(self, processes: list[SlurmProcess], signal: str) -> None:
        """Signal the launchers of running jobs; cancel the jobs that cannot be signalled."""
        if not processes:
            return
        job_ids = [process.job_id for process in processes]
        try:
            self.cli.cancel(job_ids, signal=signal, scope=CancelScope.BATCH)
        except SlurmError as exc:
            # Not running any more (or not yet): ending them is what was asked.
            logger.info("SIG%s to Slurm jobs %s failed (%s); cancelling them", signal, job_ids, exc)
            self._cancel(processes)

    def _cancel(self, processes: list[SlurmProcess]) -> None:
        """Cancel jobs; those Slurm cannot take now are cancelled as soon as it answers."""
        if not processes:
            return
        job_ids = sorted({process.job_id for process in processes})
        try:
            self.cli.cancel(job_ids)
        except SlurmError as exc:
            logger.warning("cancelling Slurm jobs %s failed: %s", job_ids, exc)
            if _unreachable(exc):
                self._retry += processes


@attrs.frozen
class _NodeView:
    name: str
    address: str
    state: str


def _in_transition(queued: QueuedJob | None) -> bool:
    """Whether a job is about to change: not listed yet, waiting to run, or ending."""
    return queued is None or queued.status.state in (SlotState.PENDING, SlotState.STOPPING)


def _said(error: SlurmError) -> str:
    """Slurm's own words from a failed command, or the whole error."""
    said = " ".join(error.stderr.split())
    return said or str(error)
