"""The job engine: the semantics of every verb, and the supervision of job slots.

A job is a set of *slots*, one per process it should have: ``master`` and/or
``worker-1..N``.  A slot holds at most one running process at a time; when it exits the
engine decides, from the job type and the ``restart`` policy, what happens next:

- ``master`` (JuliaBatch, PkgBuilder, JuliaParBatch, Notebook, Webserver, MessageQ): never
  restarted; its exit ends the job (``succeeded`` on code 0, else ``failed``; ``lost``
  when the exit code is unknown) and the workers are stopped.
- workers of JuliaParBatch / Notebook: ``RestartAlways`` (the default) restarts on any exit,
  ``RestartOnFailure`` on a non-zero exit, ``Never`` not at all.
- units of JuliaParBatchWorkers / Generic: a unit that exits 0 is done; a failed unit is
  restarted unless the policy is ``Never``.  The job succeeds when every requested unit
  has succeeded and fails when none can make progress any more.

Restarts wait ``restart_backoff * 2**(failures - 1)`` seconds, capped at
``restart_backoff_max``; the failure count resets after a run at least that long.

Where and how a slot's process runs is its *backend*'s business (``_backend.py``: local
processes, Slurm jobs); the engine only asks it to start, observe, signal and find again
the processes of slots.  A job's phase is ``pending`` until its master (or a unit of a job
array) runs, ``running`` from then on, and final once it has ended.

A supervisor thread sweeps the slots every ``supervise_interval`` seconds (the backend
observes all of them at once): it records exits, escalates SIGTERM to SIGKILL after
``kill_grace``, restarts and scales.  Every state change is written to the store; the
job's log is drained before its phase becomes final, so a stream that sees the end of the
job has seen all of its lines.

Starting a process takes a while (a fork and exec of the launcher, a call to the
scheduler), so no process is started while the engine's lock is held: a verb or a
supervision pass only marks the slot as *starting* and queues it; a small pool of starter
threads launches the queued slots (several at once) and then records each process under
the lock -- or, when the slot is no longer wanted by then (job deleted or finished, worker
scaled away), kills it and records nothing.  Deleting a job waits for its starts in
flight.  The one exception to the queue is a job's master, which ``submitJob`` starts
itself (still without the lock) so that a master that cannot start fails the
submission's job before the answer is sent.  A start the scheduler cannot take (it does
not answer) is tried again a little later.

Worker counts are capped (``max_workers_per_job`` and ``max_workers`` of all unfinished
jobs together): a request that would raise a count above a cap is refused with a 400 and
changes nothing.

The engine raises the SDK's :class:`~juliarun_aio.ApiError` subclasses with the HTTP status
to answer; the HTTP layer only translates them.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import attrs

from .._errors import ApiError, BadRequestError, ConflictError, JobNotFoundError, SpecError
from .._jobs import JobSpec, validate_name
from .._models import TERMINAL_PHASES, Endpoint, JobInfo, JobScale, JobStatus
from .._wire import decode_spec, encode_spec
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
    make_backend,
)
from ._config import ServerConfig
from ._logs import Collector, JobLog
from ._runtime import (
    ARRAY_KINDS,
    DEFAULT_PORTS,
    MASTER_KINDS,
    WORKER_KINDS,
    LaunchError,
    Layout,
    ProcessRequest,
)
from ._store import DataDirectoryLock, JobRow, Store, new_uid

__all__ = ["TERMINAL", "Engine"]

logger = logging.getLogger("juliarun_aio.server")

#: The phases a job never leaves.
TERMINAL = TERMINAL_PHASES
# Parameters that never change after submission: the job's place and ports, and what its
# master runs (the master is not restarted, so a new value would never take effect).
FIXED = frozenset(
    {"run_volume", "ports", "external", "additional_volumes", "pkg_bundle"}
    | {"start_script", "builder_script", "cfg_file", "shell", "passwd"}
)
#: Threads that start queued processes.  Two let one fork while the other waits for its
#: exec; more only compete with the request threads for the interpreter and the CPUs.
STARTERS = 2
#: Longest wait of a starter thread for a launcher to be up before it starts the next one.
LAUNCH_PACE = 2.0
#: Seconds before a start the scheduler could not take is tried again.
BUSY_RETRY = 2.0
#: Seconds to wait for processes to end once killed, when stopping them, before giving up.
STOP_WAIT = 60.0


def _bad_request(message: str) -> ApiError:
    return BadRequestError(message, status_code=400, code=400, server_message=message)


def _not_found(message: str) -> ApiError:
    return JobNotFoundError(message, status_code=404, code=404, server_message=message)


def _conflict(message: str) -> ApiError:
    return ConflictError(message, status_code=409, code=409, server_message=message)


@attrs.define
class _Slot:
    """One process position of a job (``master`` or ``worker-N``)."""

    label: str
    process: SlotProcess | None = None
    key: str | None = None  # names the current/last process's log and exit files
    row_id: int | None = None
    spec_version: int = 0
    started: int = 0  # processes started in this slot so far
    failures: int = 0  # consecutive failures, for the restart backoff
    started_at: float = 0.0
    exit_code: int | None = None
    exit_reason: str | None = None  # how the last process that ended did, in words
    ended: bool = False  # the last process ended
    waiting_until: float | None = None  # a restart is due at this monotonic time
    given_up: bool = False  # will not be (re)started: done, Never, or cannot start
    error: str | None = None  # why it cannot start
    term_sent: float | None = None  # monotonic time SIGTERM was sent
    retiring: bool = False  # being stopped because the job was scaled down
    starting: bool = False  # a start is queued or under way
    busy: str | None = None  # why the scheduler could not take its last start

    @property
    def is_worker(self) -> bool:
        return self.label != "master"

    @property
    def index(self) -> int:
        return int(self.label.rpartition("-")[2]) if self.is_worker else 0

    @property
    def running(self) -> bool:
        """Whether its program runs (started, and not waiting for resources)."""
        return self.process is not None and self.process.running


@attrs.define
class _Job:
    row: JobRow
    spec: JobSpec
    log: JobLog
    slots: dict[str, _Slot] = attrs.field(factory=dict)
    # The next supervision pass must reconcile the job even if none of its processes
    # changed (set for recovered jobs, whose slots may lag behind the requested count).
    dirty: bool = False
    starts: int = 0  # starts queued or under way; deleting the job waits for them

    @property
    def kind(self) -> str:
        return self.row.kind

    @property
    def terminal(self) -> bool:
        return self.row.phase in TERMINAL

    def workers(self) -> list[_Slot]:
        return sorted(
            (slot for slot in self.slots.values() if slot.is_worker and not slot.retiring),
            key=lambda slot: slot.index,
        )


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _requested(spec: JobSpec) -> int:
    nworkers = spec.params().get("nworkers")
    if isinstance(nworkers, int):
        return nworkers
    return 1 if spec.kind == "Generic" else 0


class Engine:
    """Jobs of every namespace, their slots and logs.

    The engine holds its data directory's lock from construction until :meth:`stop`.

    Args:
        config: The server configuration.
        lock: The data directory's lock, when the caller took it already.
        backend: Where the slots' processes run; by default the one ``config.backend``
            names.

    Raises:
        DataDirectoryInUseError: Another server uses the data directory.
        ConfigError: The backend's settings are invalid.
    """

    def __init__(
        self,
        config: ServerConfig,
        *,
        lock: DataDirectoryLock | None = None,
        backend: Backend | None = None,
    ) -> None:
        self.config = config
        # Before anything else: nothing may touch a data directory that another server uses.
        self._dir_lock = lock if lock is not None else DataDirectoryLock(config.data_dir)
        self.layout = Layout(config.data_dir)
        self.url = f"http://{config.host}:{config.port}"
        self.ca_bundle: Path | None = None
        try:
            self.backend = backend if backend is not None else make_backend(config, self.layout)
            self._store = Store(self.layout.database)
        except BaseException:
            self._dir_lock.release()
            raise
        self._collector = Collector(config.poll_interval)
        self._jobs: dict[tuple[str, str], _Job] = {}
        self._deleting: set[tuple[str, str]] = set()
        self._lock = threading.RLock()
        self._starts_done = threading.Condition(self._lock)
        self._starter = ThreadPoolExecutor(STARTERS, thread_name_prefix="juliarun-start")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="juliarun-supervisor", daemon=True)
        self._started = False

    @property
    def process_cleanup(self) -> str:
        """How the processes a job starts end with it (the backend's mechanism)."""
        return self.backend.process_cleanup

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self, url: str | None = None, *, ca_bundle: Path | None = None) -> None:
        """Check the backend, recover the stored jobs, find their processes and supervise.

        Args:
            url: The URL jobs use to reach this server (``JRUN_URL``).
            ca_bundle: The CA certificate jobs trust the server's certificate with
                (``JRUN_CA_BUNDLE``), when it is not one their system trusts.

        Raises:
            BackendError: The backend cannot run jobs (the message says why).
        """
        if url is not None:
            self.url = url
        self.ca_bundle = ca_bundle
        self._check_backend()
        self.backend.open(self.url)
        with self._lock:
            for row in self._store.jobs():
                self._recover(row)
            self._adopt_strays()
            self._start_unstarted_masters()
        self._collector.start()
        self._thread.start()
        self._started = True

    def _check_backend(self) -> None:
        """Refuse a backend other than the one that runs the stored jobs' processes."""
        others = self._store.running_backends() - {self.backend.name}
        if others:
            raise BackendError(
                f"the data directory {self.config.data_dir} has processes running on the "
                f"{', '.join(sorted(others))} backend; start the server with --backend "
                f"{sorted(others)[0]}, or delete those jobs first"
            )

    def release_streams(self) -> None:
        """End every open log stream (the server is about to stop)."""
        with self._lock:
            for job in self._jobs.values():
                job.log.release_readers()

    def stop(self, *, leave_running: bool = False) -> None:
        """Stop supervising and close the state.

        Args:
            leave_running: Leave the job processes running, for a later server to re-adopt;
                by default they are stopped (SIGTERM, then SIGKILL after the grace period)
                and their jobs end.
        """
        self._stop.set()
        if self._started:
            self._thread.join()
        # Starts under way are recorded (or undone) as usual; queued ones give up at once
        # (a later server starts them: the requested counts are stored).
        self._starter.shutdown(wait=True)
        with self._lock:
            jobs = list(self._jobs.values())
            self._jobs.clear()
        if leave_running:
            for job in jobs:
                for slot in job.slots.values():
                    if slot.process is not None:
                        slot.process.detach()
        else:
            self._stop_processes(jobs, "stopped with the server")
        self._collector.stop()
        for job in jobs:
            job.log.close()
        self.backend.close()
        self._store.close()
        self._dir_lock.release()

    def _run(self) -> None:
        # Every pass looks at every slot, so it must be cheap and must not hold the lock
        # that the verbs need: the backend observes every slot at once without the lock
        # (the engine only reads, and a stale read is corrected by the next pass), and the
        # lock is taken only for the jobs that have something to do -- an exit, a process
        # that started running, a pending SIGKILL or a due restart.
        while not self._stop.wait(self.config.supervise_interval):
            now = time.monotonic()
            try:
                sweep = self.backend.sweep()
            except Exception:
                logger.exception("observing the job processes failed")
                continue
            with self._lock:
                jobs = list(self._jobs.items())
            for key, job in jobs:
                try:
                    if not self._needs_attention(job, now, sweep):
                        continue
                    with self._lock:
                        if self._jobs.get(key) is job:  # not deleted meanwhile
                            self._supervise(job)
                except Exception:
                    logger.exception(
                        "supervising job %s/%s failed", job.row.namespace, job.row.name
                    )

    @staticmethod
    def _needs_attention(job: _Job, now: float, sweep: Sweep) -> bool:
        """Whether :meth:`_supervise` has anything to do for ``job`` (read without the lock)."""
        if job.dirty:
            return True
        for slot in list(job.slots.values()):
            process = slot.process
            if process is None:
                if slot.waiting_until is not None and now >= slot.waiting_until:
                    return True  # a restart is due
                continue
            if slot.term_sent is not None:
                return True  # stopping: its exit is awaited, SIGKILL may be due
            if sweep.changed(process):
                return True
        return False

    # -- recovery -------------------------------------------------------------------------------

    def _recover(self, row: JobRow) -> None:
        log = JobLog(self.layout.job_logs(row.namespace, row.name))
        try:
            spec = decode_spec(row.kind, row.params)
        except SpecError:
            logger.exception("job %s/%s has an unreadable spec", row.namespace, row.name)
            log.close()
            return
        job = _Job(row, spec, log, dirty=True)
        for proc in self._store.processes(row.namespace, row.name):
            slot = job.slots.setdefault(proc.label, _Slot(proc.label))
            slot.key, slot.row_id = proc.key, proc.id
            slot.started, slot.spec_version = proc.restarts + 1, proc.spec_version
            slot.started_at = proc.started_at
            self._add_sources(job, slot)
            if proc.state == "running":
                slot.process = self.backend.adopt(
                    SlotRecord(
                        slot=self._slot_id(job, slot),
                        key=proc.key,
                        log_dir=log.directory,
                        ident=proc.pid,
                        ticks=proc.start_ticks,
                    )
                )
            else:
                log.drain(self._sources(slot))
                slot.ended, slot.exit_code = True, proc.exit_code
                slot.exit_reason = proc.reason
                slot.given_up = self._settled(job, slot)
        self._jobs[(row.namespace, row.name)] = job
        self._collector.register((row.namespace, row.name), log)
        master = job.slots.get("master")
        if not job.terminal and master is not None and master.ended:
            # The server stopped between the master's exit and the job's end.
            reason = master.exit_reason or describe_exit(master.exit_code)
            self._master_ended(job, ExitInfo(master.exit_code, reason))
        self._publish(job)
        if not job.terminal:
            # A restart that was pending when the server stopped is due now.
            for slot in job.slots.values():
                if slot.ended and not slot.given_up:
                    slot.waiting_until = time.monotonic()

    def _adopt_strays(self) -> None:
        """Take over the processes that earlier servers started but never recorded."""
        submissions = {
            (job.row.namespace, job.row.name, job.row.uid): [
                proc.pid for proc in self._store.processes(job.row.namespace, job.row.name)
            ]
            for job in self._jobs.values()
        }
        for process in self.backend.strays(submissions):
            job = self._jobs.get((process.slot.namespace, process.slot.job))
            label = process.slot.label
            slot = job.slots.get(label) if job is not None else None
            wanted = job is not None and not job.terminal
            if job is not None and label != "master":
                index = int(label.rpartition("-")[2])
                wanted = wanted and job.kind in WORKER_KINDS | ARRAY_KINDS
                wanted = wanted and index <= job.row.requested
            if job is None or not wanted or (slot is not None and slot.process is not None):
                logger.info("stopping %s of an earlier server: no longer wanted", process.key)
                process.discard()
                continue
            if slot is None:
                slot = job.slots[label] = _Slot(label)
            logger.info("adopting %s, started by an earlier server but not recorded", process.key)
            self._record_start(job, slot, process, process.key, job.row.spec_version)
            self._publish(job)

    def _start_unstarted_masters(self) -> None:
        """Start the master of each job an earlier server recorded but stopped before starting.

        Its start is due at once (the next supervision pass queues it, and its workers once
        it runs).  On Slurm, a master submitted but not recorded was adopted by
        :meth:`_adopt_strays` before this runs; the local backend cannot find such a
        process (see :meth:`Backend.strays`).
        """
        now = time.monotonic()
        for job in self._jobs.values():
            if job.kind in MASTER_KINDS and not job.terminal and "master" not in job.slots:
                logger.info(
                    "starting the master of %s/%s: the server stopped before it did",
                    job.row.namespace,
                    job.row.name,
                )
                job.slots["master"] = _Slot("master", waiting_until=now)

    def _settled(self, job: _Job, slot: _Slot) -> bool:
        """Whether an ended slot stays ended (no restart)."""
        if not slot.is_worker or job.terminal:
            return True
        if job.kind in ARRAY_KINDS and slot.exit_code == 0:
            return True
        policy = job.spec.params().get("restart") or "RestartAlways"
        if policy == "Never":
            return True
        return policy == "RestartOnFailure" and slot.exit_code == 0

    # -- process handling ---------------------------------------------------------------------

    @staticmethod
    def _sources(slot: _Slot) -> list[str]:
        return [f"{slot.key}.out", f"{slot.key}.err"] if slot.key else []

    @staticmethod
    def _add_sources(job: _Job, slot: _Slot) -> None:
        job.log.add_source(f"{slot.key}.out", stream="stdout", proc=slot.label)
        job.log.add_source(f"{slot.key}.err", stream="stderr", proc=slot.label)

    def _token(self, namespace: str) -> str:
        # Empty when the namespace lost its token in the configuration since submission.
        return self.config.tokens.get(namespace, "")

    def _queue_start(self, job: _Job, slot: _Slot) -> None:
        """Mark ``slot`` as starting and leave the start to a starter thread (under the lock)."""
        request, version = self._request(job, slot), job.row.spec_version
        slot.starting, slot.waiting_until = True, None
        job.starts += 1
        try:
            self._starter.submit(self._start_queued, job, slot, request, version)
        except RuntimeError:  # the engine is stopping; a later server starts the slot
            slot.starting = False
            job.starts -= 1

    def _start_queued(self, job: _Job, slot: _Slot, request: StartRequest, version: int) -> None:
        try:
            process = self._start(job, slot, request, version)
        except Exception:
            logger.exception(
                "starting %s of job %s/%s failed", slot.label, job.row.namespace, job.row.name
            )
            return
        if process is not None and not self._stop.is_set():
            # Pace the starts: the next one waits until this process is up, so that a big
            # scale-up never has more than STARTERS interpreters starting at once, which
            # would starve the server of CPU (and every other call with it).
            process.wait_started(LAUNCH_PACE)

    @staticmethod
    def _slot_id(job: _Job, slot: _Slot) -> SlotId:
        return SlotId(job.row.namespace, job.row.name, job.row.uid, slot.label)

    def _request(self, job: _Job, slot: _Slot) -> StartRequest:
        """What a new start of ``slot`` runs, with a new key (under the lock)."""
        master = job.slots.get("master")
        return StartRequest(
            slot=self._slot_id(job, slot),
            key=f"{slot.label}-{secrets.token_hex(4)}",
            log_dir=job.log.directory,
            process=ProcessRequest(
                namespace=job.row.namespace,
                spec=job.spec,
                label=slot.label,
                ports=job.row.ports,
                cookie=job.row.cookie,
                url=self.url,
                token=self._token(job.row.namespace),
                layout=self.layout,
                ca_bundle=self.ca_bundle,
            ),
            master_key=master.key if master is not None and slot.is_worker else None,
        )

    def _wanted(self, job: _Job, slot: _Slot) -> bool:
        """Whether a start of ``slot`` is still wanted (under the lock)."""
        return (
            self._jobs.get((job.row.namespace, job.row.name)) is job
            and job.slots.get(slot.label) is slot
            and not slot.retiring
            and not job.terminal
        )

    def _start(
        self, job: _Job, slot: _Slot, request: StartRequest, version: int
    ) -> SlotProcess | None:
        """Start the process of a slot marked as starting, without holding the lock.

        The process is recorded if the slot is still wanted once it runs; otherwise it is
        killed and nothing is recorded.  A start that fails is recorded as the reason the
        slot cannot start (and fails the job if it cannot go on without it); a start the
        scheduler cannot take now is tried again after :data:`BUSY_RETRY` seconds.

        Returns:
            The process started and recorded, if any.
        """
        process: SlotProcess | None = None
        recorded = None
        try:
            with self._lock:
                wanted = self._wanted(job, slot) and not self._stop.is_set()
            error = busy = None
            if wanted:
                try:
                    process = self.backend.start(request)
                except (LaunchError, SpecError) as exc:
                    error = str(exc)
                except SchedulerBusyError as exc:
                    busy = str(exc)
                except OSError as exc:
                    error = f"cannot start: {exc}"
            with self._lock:
                slot.starting = False
                if self._wanted(job, slot):
                    slot.busy = busy
                    if process is not None:
                        self._record_start(job, slot, process, request.key, version)
                        recorded, process = process, None
                    elif error is not None:
                        self._start_failed(job, slot, error)
                    elif busy is not None:
                        slot.waiting_until = time.monotonic() + BUSY_RETRY
                    self._publish(job)
        finally:
            if process is not None:
                process.discard()
            with self._lock:
                job.starts -= 1
                self._starts_done.notify_all()
        return recorded

    def _record_start(
        self, job: _Job, slot: _Slot, process: SlotProcess, key: str, version: int
    ) -> None:
        slot.key, slot.process = key, process
        slot.row_id = self._store.insert_process(
            namespace=job.row.namespace,
            job=job.row.name,
            label=slot.label,
            key=key,
            restarts=slot.started,
            pid=process.ident,
            start_ticks=process.ticks,
            spec_version=version,
            started_at=time.time(),
            backend=self.backend.name,
        )
        self._add_sources(job, slot)
        slot.started += 1
        slot.started_at = time.time()
        slot.spec_version = version
        slot.ended, slot.exit_code, slot.waiting_until, slot.error = False, None, None, None
        slot.busy = slot.term_sent = None
        self._note_running(job)

    def _note_running(self, job: _Job) -> None:
        """The job runs once its master, or a unit of a job array, does."""
        if job.row.phase == "pending" and any(
            slot.running
            for slot in job.slots.values()
            if not slot.is_worker or job.kind in ARRAY_KINDS
        ):
            self._set_phase(job, "running")

    def _start_failed(self, job: _Job, slot: _Slot, message: str) -> None:
        slot.error, slot.given_up, slot.waiting_until = message, True, None
        if not slot.is_worker or job.kind in ARRAY_KINDS:
            self._finish(job, "failed", f"{slot.label}: {message}")
        else:
            self._set_message(job, f"{slot.label} cannot start: {message}")

    def _record_exit(self, job: _Job, slot: _Slot, info: ExitInfo) -> None:
        job.log.drain(self._sources(slot))
        slot.process, slot.ended, slot.exit_code, slot.term_sent = None, True, info.code, None
        slot.exit_reason = info.reason
        if slot.row_id is not None:
            self._store.update_process(
                slot.row_id,
                state="exited" if info.code is not None else "lost",
                exit_code=info.code,
                reason=info.reason,
                ended_at=time.time(),
            )

    def _on_exit(self, job: _Job, slot: _Slot, info: ExitInfo) -> None:
        self._record_exit(job, slot, info)
        if slot.retiring:
            del job.slots[slot.label]
            return
        if not slot.is_worker:
            if not job.terminal:
                self._master_ended(job, info)
            return
        if job.terminal:
            slot.given_up = True
            return
        ran = time.time() - slot.started_at
        slot.failures = (
            0 if info.code == 0 or ran >= self.config.restart_backoff_max else slot.failures + 1
        )
        if self._settled(job, slot):
            slot.given_up = True
            return
        delay = 0.0
        if slot.failures:
            delay = min(
                self.config.restart_backoff * 2 ** (slot.failures - 1),
                self.config.restart_backoff_max,
            )
        slot.waiting_until = time.monotonic() + delay

    def _master_ended(self, job: _Job, info: ExitInfo) -> None:
        if info.code == 0:
            self._finish(job, "succeeded", None)
        elif info.code is None:
            self._finish(job, "lost", f"the master process {info.reason}")
        else:
            self._finish(job, "failed", f"the master process {info.reason}")

    def _finish(self, job: _Job, phase: str, message: str | None) -> None:
        """Make the job final and stop whatever still runs (workers of a finished master)."""
        job.row.phase, job.row.message, job.row.finished_at = phase, message, time.time()
        self._store.update_job(
            job.row.namespace,
            job.row.name,
            phase=phase,
            message=message,
            finished_at=job.row.finished_at,
        )
        now = time.monotonic()
        for slot in job.slots.values():
            slot.waiting_until = None
            if slot.process is not None and slot.term_sent is None:
                slot.process.terminate()
                slot.term_sent = now
        self._publish(job)

    def _set_message(self, job: _Job, message: str | None) -> None:
        if job.row.message != message:
            job.row.message = message
            self._store.update_job(job.row.namespace, job.row.name, message=message)

    def _set_phase(self, job: _Job, phase: str) -> None:
        if job.row.phase != phase:
            job.row.phase = phase
            self._store.update_job(job.row.namespace, job.row.name, phase=phase)
            self._publish(job)

    def _publish(self, job: _Job) -> None:
        """Tell log readers the phase, and whether the log is complete."""
        running = any(slot.process is not None for slot in job.slots.values())
        job.log.set_state(job.row.phase, finished=job.terminal and not running)

    def _supervise(self, job: _Job) -> None:
        now = time.monotonic()
        job.dirty = False
        for slot in list(job.slots.values()):
            if slot.process is None:
                continue
            info = slot.process.poll()
            if info is not None:
                self._on_exit(job, slot, info)
            elif slot.term_sent is not None and now - slot.term_sent >= self.config.kill_grace:
                slot.process.kill()
        if not job.terminal:
            self._note_running(job)
            self._reconcile(job, now)
        self._publish(job)

    def _reconcile(self, job: _Job, now: float) -> None:
        """Queue starts, restarts and stops of workers to match the requested count.

        Also the start of a master that the scheduler could not take before.
        """
        master = job.slots.get("master")
        if master is not None and self._due(master, now):
            self._queue_start(job, master)
        if job.kind not in WORKER_KINDS and job.kind not in ARRAY_KINDS:
            return
        wanted = job.row.requested
        # Workers wait for their master's process: they are given its address.
        startable = wanted if master is None or master.process is not None else 0
        for index in range(1, startable + 1):
            label = f"worker-{index}"
            slot = job.slots.get(label)
            if slot is None:
                slot = job.slots[label] = _Slot(label)
                self._queue_start(job, slot)
            elif self._due(slot, now):
                self._queue_start(job, slot)
        for slot in list(job.slots.values()):
            if slot.is_worker and slot.index > wanted and not slot.retiring:
                if slot.process is None:  # a start under way sees that it is gone
                    del job.slots[slot.label]
                else:
                    slot.retiring, slot.term_sent = True, now
                    slot.process.terminate()
        if job.kind in ARRAY_KINDS:
            self._reconcile_array(job)

    @staticmethod
    def _due(slot: _Slot, now: float) -> bool:
        """Whether a (re)start of ``slot`` is due now."""
        return (
            slot.process is None
            and not slot.starting
            and slot.waiting_until is not None
            and now >= slot.waiting_until
        )

    def _reconcile_array(self, job: _Job) -> None:
        units = job.workers()
        if any(slot.process is not None for slot in units):
            self._note_running(job)
            return
        if not units or any(not slot.given_up for slot in units):
            return
        failed = [slot for slot in units if slot.exit_code != 0]
        if not failed:
            self._finish(job, "succeeded", None)
        else:
            first = failed[0]
            reason = first.error or first.exit_reason or describe_exit(first.exit_code)
            self._finish(
                job, "failed", f"{len(failed)} of {len(units)} units failed; {first.label} {reason}"
            )

    def _stop_processes(self, jobs: list[_Job], message: str) -> None:
        """SIGTERM every process of ``jobs``, SIGKILL after the grace period, record the exits.

        Jobs that had not ended are marked failed with ``message``.
        """
        running = [
            (job, slot) for job in jobs for slot in job.slots.values() if slot.process is not None
        ]
        for _, slot in running:
            assert slot.process is not None
            slot.process.terminate()
        kill_at = time.monotonic() + self.config.kill_grace
        give_up = kill_at + STOP_WAIT
        while running:
            self.backend.sweep()
            for job, slot in running:
                assert slot.process is not None
                info = slot.process.poll()
                if info is not None:
                    self._record_exit(job, slot, info)
            running = [(job, slot) for job, slot in running if slot.process is not None]
            now = time.monotonic()
            if running and now >= give_up:
                for job, slot in running:
                    logger.warning("%s did not end after being killed; no longer waiting", slot.key)
                    self._record_exit(job, slot, ExitInfo(None, "did not end after being killed"))
                break
            if running and now >= kill_at:
                # Again every second: a backend may need more than one try (a scheduler that
                # did not answer, a job that had not started yet).
                for _, slot in running:
                    assert slot.process is not None
                    slot.process.kill()
                kill_at = now + 1.0
            if running:
                time.sleep(0.01)
        for job in jobs:
            if not job.terminal:
                job.row.phase, job.row.message = "failed", message
                job.row.finished_at = time.time()
                self._store.update_job(
                    job.row.namespace,
                    job.row.name,
                    phase="failed",
                    message=message,
                    finished_at=job.row.finished_at,
                )

    # -- verbs ------------------------------------------------------------------------------------

    def _job(self, namespace: str, kind: str, name: str | None) -> _Job:
        if name is None:
            raise _bad_request("missing parameter 'name' (the job name)")
        try:
            validate_name(name)
        except SpecError as exc:
            raise _bad_request(str(exc)) from None
        job = self._jobs.get((namespace, name))
        if job is None:
            raise _not_found(f"job {name!r} not found in namespace {namespace!r}")
        if job.kind != kind:
            raise _not_found(f"job {name!r} not found as a {kind} job (it is a {job.kind} job)")
        return job

    def _check_workers(self, job: _Job | None, kind: str, wanted: int) -> None:
        """Refuse to raise the workers of ``job`` (a new job: None) to ``wanted`` over a cap.

        Lowering a count is always allowed, even when it stays above a cap that was lowered
        since it was set.

        Raises:
            ApiError: 400 saying the cap and how to raise it.
        """
        if kind not in WORKER_KINDS | ARRAY_KINDS:
            return
        current = job.row.requested if job is not None else 0
        if wanted <= current:
            return
        per_job = self.config.max_workers_per_job
        if wanted > per_job:
            raise _bad_request(
                f"{wanted} workers is more than this server allows for one job ({per_job}); "
                f"ask for at most {per_job}, or start the server with a higher "
                "--max-workers-per-job"
            )
        others = sum(
            other.row.requested
            for other in self._jobs.values()
            if other is not job and not other.terminal and other.kind in WORKER_KINDS | ARRAY_KINDS
        )
        if others + wanted > self.config.max_workers:
            raise _bad_request(
                f"{wanted} workers would take this server over its limit of "
                f"{self.config.max_workers} workers of all jobs together; scale down or delete "
                "other jobs, or start the server with a higher --max-workers"
            )

    def list_jobs(self, namespace: str) -> dict[str, Any]:
        """``listJobs``: ``{name: {"type": kind}}``."""
        with self._lock:
            return {
                name: JobInfo(name, job.kind).to_wire()
                for (ns, name), job in self._jobs.items()
                if ns == namespace
            }

    def all_job_info(self, namespace: str) -> dict[str, Any]:
        """``getAllJobInfo``: type, status, scale and endpoint of every job."""
        with self._lock:
            return {
                name: JobInfo(
                    name, job.kind, self._status(job), self._scale(job), self._endpoint(job)
                ).to_wire()
                for (ns, name), job in self._jobs.items()
                if ns == namespace
            }

    def submit(self, namespace: str, kind: str, params: Mapping[str, str]) -> None:
        """``submitJob``: validate, record and start a job.

        The master (if the type has one) has been started, or the job has failed saying
        why it cannot start, when this returns; workers start in the background.

        Raises:
            ApiError: 400 for an invalid spec or too many workers, 409 when the name is
                taken.
        """
        try:
            spec = decode_spec(kind, params)
            run_volume = spec.params()["run_volume"]
            assert isinstance(run_volume, str)  # required by every job type
            self.layout.volume(namespace, run_volume)
        except SpecError as exc:
            raise _bad_request(str(exc)) from None
        key = (namespace, spec.name)
        with self._lock:
            if key in self._jobs:
                raise _conflict(f"job {spec.name!r} already exists in namespace {namespace!r}")
            if key in self._deleting:
                raise _conflict(f"job {spec.name!r} is being deleted; submit it again shortly")
            self._check_workers(None, kind, _requested(spec))
            declared = spec.params().get("ports")
            port_names = list(
                declared if isinstance(declared, Mapping) else DEFAULT_PORTS.get(kind, {})
            )
            row = JobRow(
                namespace=namespace,
                name=spec.name,
                kind=kind,
                params=encode_spec(spec),
                phase="pending",
                message=None,
                requested=_requested(spec),
                ports=self.backend.reserve_ports(port_names),
                cookie=secrets.token_hex(16),
                spec_version=0,
                created_at=time.time(),
                uid=new_uid(),
            )
            # The row first: nothing on disk is removed for a submission that is not
            # recorded.
            self._store.insert_job(row)
            try:
                job_dir = self.layout.job(namespace, spec.name)
                if job_dir.exists():  # left over from a deletion interrupted by a crash
                    shutil.rmtree(job_dir)
                log = JobLog(self.layout.job_logs(namespace, spec.name))
            except BaseException:
                self._store.delete_job(namespace, spec.name)
                raise
            job = _Job(row, spec, log)
            self._jobs[key] = job
            self._collector.register(key, log)
            master = None
            if kind in MASTER_KINDS:
                master = job.slots["master"] = _Slot("master")
                master.starting = True
                job.starts += 1
                request = self._request(job, master)
            else:
                self._reconcile(job, time.monotonic())
            self._publish(job)
        if master is None:
            return
        # Workers wait for their master: none starts for a job whose master cannot.
        self._start(job, master, request, row.spec_version)
        with self._lock:
            if self._jobs.get(key) is job and not job.terminal:
                self._reconcile(job, time.monotonic())
                self._publish(job)

    def update(self, namespace: str, kind: str, params: Mapping[str, str]) -> None:
        """``updateJob``: change what can change; say what cannot.

        A complete job runs nothing any more, so no change to it could take effect: it is
        refused rather than recorded.

        Raises:
            ApiError: 404 for an unknown job, 400 for an invalid or impossible change, 409
                for a job that is complete.
        """
        with self._lock:
            name = params.get("name")
            try:
                job = self._job(namespace, kind, name)
            except JobNotFoundError:
                other = self._jobs.get((namespace, name or ""))
                if other is None:
                    raise
                raise _bad_request(
                    f"the type of job {name!r} cannot change from {other.kind} to {kind}; "
                    "delete it and submit a new one"
                ) from None
            if job.terminal:
                raise _conflict(
                    f"job {job.row.name!r} is complete ({job.row.phase}): an update would never "
                    "take effect; delete it and submit it again to run it with new settings"
                )
            merged = dict(job.row.params)
            merged.update({k: v for k, v in params.items() if k not in ("jruntok", "jrunns")})
            try:
                spec = decode_spec(kind, merged)
            except SpecError as exc:
                raise _bad_request(str(exc)) from None
            new_params = encode_spec(spec)
            changed = {
                field
                for field in set(new_params) | set(job.row.params)
                if new_params.get(field) != job.row.params.get(field)
            }
            refused = sorted(changed & FIXED)
            if refused:
                raise _bad_request(
                    f"cannot change {', '.join(refused)} of job {job.row.name!r} once it is "
                    "submitted; delete it and submit it again"
                )
            if not changed:
                return
            if "nworkers" in changed:
                self._check_workers(job, kind, _requested(spec))
            version = job.row.spec_version + 1
            requested = _requested(spec) if "nworkers" in changed else job.row.requested
            # Committed first: a change that fails to be recorded must not take effect.
            self._store.update_job(
                namespace,
                job.row.name,
                params=new_params,
                spec_version=version,
                requested=requested,
            )
            job.spec, job.row.params = spec, new_params
            job.row.spec_version, job.row.requested = version, requested
            # A new definition deserves a new attempt at starting what could not start.
            for slot in job.slots.values():
                if slot.error is not None:
                    slot.error, slot.given_up = None, False
                    slot.waiting_until = time.monotonic()
            self._set_message(job, None)
            self._reconcile(job, time.monotonic())

    def delete(self, namespace: str, kind: str, name: str | None, *, force: bool) -> bool:
        """``deleteJob``: remove a job; an incomplete one only with ``force``.

        Raises:
            ApiError: 404 for an unknown job, 409 for an incomplete job without force.
        """
        with self._lock:
            job = self._job(namespace, kind, name)
            if not force and not job.terminal:
                raise _conflict(
                    f"job {job.row.name!r} is incomplete ({job.row.phase}); pass force=true "
                    "to stop its processes and delete it"
                )
            key = (namespace, job.row.name)
            del self._jobs[key]
            self._deleting.add(key)
            self._collector.unregister(key)
            # A start under way finds the job gone and kills its process; wait for that so
            # that nothing writes into the job's directory once it is removed.
            self._starts_done.wait_for(lambda: job.starts == 0)
        try:
            job.log.release_readers()
            self._stop_processes([job], "deleted")
            job.log.close()
            # The files go only once the deletion is committed: if it fails, the job is
            # still there, whole, for the next server.
            self._store.delete_job(namespace, job.row.name)
            shutil.rmtree(self.layout.job(namespace, job.row.name), ignore_errors=True)
        finally:
            with self._lock:
                self._deleting.discard(key)
        return True

    def _status(self, job: _Job) -> JobStatus:
        workers = job.workers()
        running = [slot for slot in workers if slot.running]
        extra: dict[str, Any] = {
            "exit_codes": {slot.label: slot.exit_code for slot in job.slots.values() if slot.ended},
            "restarts": {
                slot.label: slot.started - 1 for slot in job.slots.values() if slot.started > 1
            },
            "exit_reasons": {
                slot.label: slot.exit_reason
                for slot in job.slots.values()
                if slot.exit_reason is not None
            },
            "waiting": self._waiting(job),
            "created_at": job.row.created_at,
        }
        params = job.spec.params()
        for field in ("image", "gpu", "worker_gpu", "cpu", "memory"):
            if field in params:
                extra[field] = params[field]
        wanted = job.row.requested if job.kind in WORKER_KINDS | ARRAY_KINDS else 0
        return JobStatus(
            succeeded=job.row.phase == "succeeded",
            created=any(slot.started for slot in job.slots.values()),
            parallelism=wanted,
            nworkers_succeeded=sum(1 for slot in workers if slot.ended and slot.exit_code == 0),
            npending=0 if job.terminal else max(wanted - len(running), 0),
            nuptodate=sum(1 for slot in running if slot.spec_version == job.row.spec_version),
            phase=job.row.phase,
            failed=job.row.phase in ("failed", "lost"),
            message=self._message(job),
            uid=job.row.uid,
            extra=extra,
        )

    def _waiting(self, job: _Job) -> dict[str, str]:
        """The slots on their way that wait for their scheduler (or for it to answer), and why.

        A worker waiting in Slurm's queue is not a worker that cannot start: a client
        waiting for workers keeps waiting while any is listed here.  One its scheduler
        will never start (its partition's limits, say) is left out, so that the wait ends.
        """
        if job.terminal:
            return {}
        waiting = {}
        for slot in job.slots.values():
            process = slot.process
            if slot.busy is not None:
                waiting[slot.label] = f"waits to be started: {slot.busy}"
            elif process is not None and not process.running and not process.never_starts:
                waiting[slot.label] = process.note or "submitted, not running yet"
        return waiting

    def _message(self, job: _Job) -> str | None:
        """The job's message: the engine's own, why slots wait, what the backend ignores."""
        parts = [job.row.message] if job.row.message else []
        if not job.terminal:
            for slot in sorted(job.slots.values(), key=lambda slot: slot.index):
                note = slot.process.note if slot.process is not None else None
                if slot.busy is not None:
                    parts.append(f"{slot.label} waits to be started: {slot.busy}")
                elif note is not None:
                    parts.append(f"{slot.label}: {note}")
        parts += self.backend.notes(job.spec)
        return "; ".join(parts) or None

    def _scale(self, job: _Job) -> JobScale:
        running = sum(1 for slot in job.workers() if slot.running)
        wanted = job.row.requested if job.kind in WORKER_KINDS | ARRAY_KINDS else 0
        return JobScale(running, wanted)

    def _endpoint(self, job: _Job) -> Endpoint:
        primary = job.slots.get("master")
        if primary is None:
            units = [slot for slot in job.workers() if slot.running]
            primary = units[0] if units else None
        process = primary.process if primary is not None and primary.running else None
        host, ports = self.backend.endpoint(job.row.ports, process)
        return Endpoint(host, ports)

    def status(self, namespace: str, kind: str, name: str | None) -> dict[str, Any]:
        """``getJobStatus``: the dict form with real counts and the phase."""
        with self._lock:
            return self._status(self._job(namespace, kind, name)).to_wire()

    def scale(self, namespace: str, kind: str, name: str | None) -> list[int]:
        """``getJobScale``: ``[running workers, requested workers]``."""
        with self._lock:
            return self._scale(self._job(namespace, kind, name)).to_wire()

    def set_scale(self, namespace: str, kind: str, name: str | None, parallelism: int) -> bool:
        """``setJobScale``: ask for ``parallelism`` workers; False for jobs without workers.

        Answers once the new count is recorded; the workers start in the background.

        Raises:
            ApiError: 404 for an unknown job, 400 when ``parallelism`` is over a cap.
        """
        with self._lock:
            job = self._job(namespace, kind, name)
            if job.kind not in WORKER_KINDS | ARRAY_KINDS or job.terminal:
                return False
            self._check_workers(job, kind, parallelism)
            if job.row.requested != parallelism:
                job.row.requested = parallelism
                self._store.update_job(namespace, job.row.name, requested=parallelism)
                self._reconcile(job, time.monotonic())
                self._publish(job)
            return True

    def endpoint(self, namespace: str, kind: str, name: str | None) -> list[Any]:
        """``getJobEndpoint``: ``[host, {name: port}]``, ``[null, {}]`` while there is none."""
        with self._lock:
            return self._endpoint(self._job(namespace, kind, name)).to_wire()

    def encoded_url(self, namespace: str, kind: str, name: str | None, port: str | None) -> str:
        """``getEncodedURL``: the URL of a job's port, given by name or by number.

        Raises:
            ApiError: 400 when the job has no such port.
        """
        with self._lock:
            job = self._job(namespace, kind, name)
            ports = job.row.ports
            host, reachable = self._endpoint(job).to_wire()
            if port is None:
                if len(ports) != 1:
                    raise _bad_request(f"missing parameter 'port'; job ports: {sorted(ports)}")
                port = next(iter(ports))
            if port not in ports:
                declared = job.spec.params().get("ports") or DEFAULT_PORTS.get(job.kind, {})
                assert isinstance(declared, Mapping)
                by_number = [
                    n for n, pair in declared.items() if port in (str(pair[0]), str(pair[1]))
                ]
                if not by_number:
                    raise _bad_request(
                        f"job {job.row.name!r} has no port {port!r}; its ports are "
                        f"{', '.join(sorted(ports)) or 'none'}"
                    )
                port = by_number[0]
            if host is None or port not in reachable:
                raise _conflict(
                    f"job {job.row.name!r} has no address yet: the process that serves its "
                    "ports does not run; ask again once it does"
                )
            return f"http://{_url_host(host)}:{reachable[port]}/"

    def log(
        self, namespace: str, kind: str, name: str | None, uid: str | None = None
    ) -> tuple[JobLog, str]:
        """The log of a job, for tailing and streaming, and the uid of the job's submission.

        Args:
            namespace: The job's namespace.
            kind: The job type.
            name: The job name.
            uid: When given, the log of that submission only: a job of this name that was
                submitted later is another job.

        Raises:
            ApiError: 404 when there is no such job, or it is not the submission ``uid``.
        """
        with self._lock:
            try:
                job = self._job(namespace, kind, name)
            except JobNotFoundError:
                if uid is None:
                    raise
                raise _not_found(f"job {name!r} was deleted") from None
            if uid is not None and job.row.uid != uid:
                raise _not_found(
                    f"job {name!r} was deleted (a job submitted later under the same name "
                    "is another job)"
                )
            return job.log, job.row.uid
