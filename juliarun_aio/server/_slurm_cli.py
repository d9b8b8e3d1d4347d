"""A typed wrapper over the Slurm command line: build commands, run them, read their output.

This module knows Slurm, not the engine: it submits batch jobs (``sbatch``), lists the
jobs whose names start with a prefix in one ``squeue`` call, signals and cancels jobs
(``scancel``), reads the final state of jobs that have left the queue (``sacct``, or
``sacct --completion`` where the cluster keeps no accounting database), looks up node
addresses (``scontrol``) and checks that a file is visible on the nodes (``srun``).

Every call is synchronous and runs one subprocess with a timeout; call it from a worker
thread, never on an event loop.  A failing command raises :class:`SlurmError` with the
command line, exit status and Slurm's own message.  Command lines never carry secrets:
job environment values travel in the submitting process's environment (``--export`` names
variables, it never spells out their values) and the program to run travels on ``sbatch``'s
standard input.

Output formats are the stable ones (``--parsable``, ``squeue --Format`` and ``sacct
--format`` with a delimiter), not ``--json``, whose layout changes between Slurm versions.
Fields are separated by the ASCII unit separator (0x1F), which no job name, node list or
reason contains in practice, and the job name comes last so that whatever another job of
the same user is called cannot shift the fields.

Jobs are named by slot (:class:`SlotName`): ``jr.<namespace>.<job>.<uid>.<slot>``.
Namespaces and job names are DNS labels (lowercase letters, digits and ``-``), the uid is
16 hex digits and the slot is ``master`` or ``worker-<N>``, so ``.`` separates the parts
unambiguously.
"""

from __future__ import annotations

import contextlib
import enum
import math
import os
import re
import shlex
import shutil
import signal as signal_module
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Literal, TypeVar

import attrs

from .._errors import SpecError
from .._jobs import _CPU, FrozenDict, memory_bytes, validate_name

__all__ = [
    "DEFAULT_TIMEOUT",
    "SLOT_NAME_PREFIX",
    "BatchJob",
    "CancelScope",
    "ExitStatus",
    "ExportPolicy",
    "FinishedJob",
    "NodeInfo",
    "QueuedJob",
    "SlotName",
    "SlotState",
    "SlotStatus",
    "SlurmCli",
    "SlurmError",
    "SlurmTimeoutError",
    "SlurmUnavailableError",
    "cpus_per_task",
    "job_name_prefix",
    "memory_mib",
    "parse_node_info",
    "parse_probe",
    "parse_sacct",
    "parse_sbatch",
    "parse_squeue",
    "slot_status",
    "time_limit_minutes",
    "unavailable",
]

#: Seconds any one Slurm command may take before it is stopped.
DEFAULT_TIMEOUT = 30.0

#: What every job name this server gives starts with.
SLOT_NAME_PREFIX = "jr."

_SEP = "\x1f"
_SQUEUE_FIELDS = ("JobID", "State", "Reason", "NodeList", "exit_code", "Name")
_SQUEUE_FORMAT = ",".join(f"{field}:{_SEP}" for field in _SQUEUE_FIELDS)
_SACCT_FORMAT = "JobID,State,ExitCode,NodeList,JobName"
_UID = re.compile(r"[0-9a-f]{16}")
_WORKER = re.compile(r"worker-([1-9][0-9]*)")
_INTEGER = re.compile(r"-?[0-9]+")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Variables with these prefixes configure sbatch itself rather than the job.
_SUBMISSION_PREFIXES = ("SLURM_", "SBATCH_", "SALLOC_", "SRUN_")
_SIGNAL = re.compile(r"(SIG)?[A-Z][A-Z0-9+-]*|[1-9][0-9]?")
# Options a BatchJob sets itself; extra sbatch arguments may not set them again.
_MANAGED_LONG = frozenset(
    {
        "--account",
        "--array",
        "--chdir",
        "--cpus-per-task",
        "--error",
        "--export",
        "--job-name",
        "--mem",
        "--no-requeue",
        "--nodes",
        "--ntasks",
        "--open-mode",
        "--output",
        "--parsable",
        "--partition",
        "--requeue",
        "--time",
        "--wrap",
    }
)
_MANAGED_SHORT = frozenset("ADJNacenopt")
_ACCOUNTING_DISABLED = "accounting storage is disabled"
_INVALID_JOB_ID = "Invalid job id specified"
_TERM_GRACE = 2.0
_T = TypeVar("_T")


# --------------------------------------------------------------------------- errors


class SlurmError(Exception):
    """A Slurm command failed: it exited nonzero, printed something unreadable, or is missing.

    Attributes:
        command: The command line that was run (it never contains a secret).
        returncode: Its exit status, or ``None`` when it did not finish or could not start.
        stderr: What it wrote to standard error.
    """

    def __init__(
        self,
        command: Sequence[str],
        returncode: int | None,
        stderr: str,
        problem: str | None = None,
    ) -> None:
        self.command = tuple(command)
        self.returncode = returncode
        self.stderr = stderr
        detail = problem or f"exited with status {returncode}"
        said = " ".join(stderr.split())
        super().__init__(f"{shlex.join(self.command)}: {detail}" + (f": {said}" if said else ""))


class SlurmTimeoutError(SlurmError):
    """A Slurm command did not finish in time (the controller is busy or unreachable)."""


class SlurmUnavailableError(SlurmError):
    """A Slurm command is not installed here (or not on ``PATH``)."""


# --------------------------------------------------------------------------- slot names


@attrs.frozen
class SlotName:
    """The Slurm job name of one slot: ``jr.<namespace>.<job>.<uid>.<slot>``.

    Attributes:
        namespace: The JuliaRun namespace (a DNS label).
        job: The job's name (a DNS label).
        uid: The submission's identity: 16 lowercase hex digits, new for every submission,
            so that a job deleted and submitted again under the same name never adopts the
            old submission's Slurm jobs.
        slot: ``master`` or ``worker-<N>`` (N from 1).
    """

    namespace: str
    job: str
    uid: str
    slot: str

    def __attrs_post_init__(self) -> None:
        validate_name(self.namespace, "namespace")
        validate_name(self.job, "job")
        if _UID.fullmatch(self.uid) is None:
            raise SpecError("uid", f"{self.uid!r} is not 16 lowercase hex digits")
        if self.slot != "master" and _WORKER.fullmatch(self.slot) is None:
            raise SpecError("slot", f"{self.slot!r} is neither 'master' nor 'worker-<N>'")

    def __str__(self) -> str:
        return f"jr.{self.namespace}.{self.job}.{self.uid}.{self.slot}"

    @property
    def worker(self) -> int | None:
        """The worker's number, or ``None`` for the master."""
        match = _WORKER.fullmatch(self.slot)
        return int(match[1]) if match else None

    @classmethod
    def parse(cls, text: str) -> SlotName | None:
        """Read a job name this scheme made; ``None`` for any other name."""
        parts = text.split(".")
        if len(parts) != 5 or parts[0] != "jr":
            return None
        try:
            return cls(*parts[1:])
        except SpecError:
            return None


def job_name_prefix(namespace: str | None = None, job: str | None = None) -> str:
    """The job name prefix of every slot of a namespace, or of one job in it.

    ``job_name_prefix()`` matches every slot this scheme names; ``job_name_prefix("ns")``
    the slots of one namespace; ``job_name_prefix("ns", "train")`` every submission of
    one job.  The trailing ``.`` keeps ``train`` from matching ``train-2``.

    Raises:
        SpecError: A name is not a DNS label, or ``job`` is given without ``namespace``.
    """
    if namespace is None:
        if job is not None:
            raise SpecError("namespace", "a job prefix needs the job's namespace")
        return SLOT_NAME_PREFIX
    validate_name(namespace, "namespace")
    if job is None:
        return f"{SLOT_NAME_PREFIX}{namespace}."
    validate_name(job, "job")
    return f"{SLOT_NAME_PREFIX}{namespace}.{job}."


# --------------------------------------------------------------------------- states


class SlotState(enum.Enum):
    """What a Slurm job means for the slot it runs."""

    PENDING = "pending"
    """Not started yet: waiting for resources, a start time, a hold to be released..."""
    RUNNING = "running"
    """Allocated and running (which is not yet proof that the program is up)."""
    STOPPING = "stopping"
    """Ending: processes are being signalled or cleaned up on the node."""
    SUSPENDED = "suspended"
    """Paused by Slurm with its allocation kept."""
    SUCCEEDED = "succeeded"
    """Ended with exit status 0."""
    FAILED = "failed"
    """Ended by its own failure: nonzero exit, a signal, time limit, out of memory."""
    LOST = "lost"
    """Ended by the cluster: its node failed or it was preempted."""
    CANCELLED = "cancelled"
    """Cancelled with ``scancel`` (by us, its owner or an administrator)."""
    UNKNOWN = "unknown"
    """A state this table does not know; the reason quotes Slurm."""

    @property
    def finished(self) -> bool:
        """Whether the Slurm job has ended for good (it will not run again)."""
        return self in _FINISHED


_FINISHED = frozenset({SlotState.SUCCEEDED, SlotState.FAILED, SlotState.LOST, SlotState.CANCELLED})

# Every job state Slurm documents (squeue(1) JOB STATE CODES, sacct(1)), with what it means
# for a slot and how to say it.
_STATES: Mapping[str, tuple[SlotState, str]] = {
    "PENDING": (SlotState.PENDING, "waiting to start"),
    "CONFIGURING": (SlotState.PENDING, "its node is being prepared"),
    "REQUEUED": (SlotState.PENDING, "requeued; it will start again"),
    "REQUEUE_FED": (SlotState.PENDING, "requeued by the federation; it will start again"),
    "REQUEUE_HOLD": (SlotState.PENDING, "requeued and held"),
    "SPECIAL_EXIT": (SlotState.PENDING, "requeued and held after a special exit"),
    "RESV_DEL_HOLD": (SlotState.PENDING, "held: its reservation was deleted"),
    "RUNNING": (SlotState.RUNNING, "running"),
    "RESIZING": (SlotState.RUNNING, "running (being resized)"),
    "COMPLETING": (SlotState.STOPPING, "ending: its processes are being cleaned up"),
    "SIGNALING": (SlotState.STOPPING, "being signalled"),
    "STAGE_OUT": (SlotState.STOPPING, "ending: staging out files"),
    "SUSPENDED": (SlotState.SUSPENDED, "suspended"),
    "STOPPED": (SlotState.SUSPENDED, "stopped with SIGSTOP"),
    "COMPLETED": (SlotState.SUCCEEDED, "completed"),
    "FAILED": (SlotState.FAILED, "failed"),
    "TIMEOUT": (SlotState.FAILED, "reached its time limit"),
    "OUT_OF_MEMORY": (SlotState.FAILED, "ran out of memory (its --mem limit)"),
    "DEADLINE": (SlotState.FAILED, "could not finish before its deadline"),
    "NODE_FAIL": (SlotState.LOST, "its node failed"),
    "BOOT_FAIL": (SlotState.LOST, "its node failed to boot"),
    "PREEMPTED": (SlotState.LOST, "preempted by another job"),
    "CANCELLED": (SlotState.CANCELLED, "cancelled"),
    "REVOKED": (SlotState.CANCELLED, "revoked: a sibling cluster started it"),
}

# squeue's pending reasons that read better in words (the others are quoted as they are).
_REASONS: Mapping[str, str] = {
    "Resources": "waiting for free resources",
    "Priority": "waiting behind jobs of higher priority",
    "Dependency": "waiting for the jobs it depends on",
    "DependencyNeverSatisfied": "its dependency can never be satisfied",
    "BeginTime": "waiting for its start time",
    "JobHeldUser": "held by its owner",
    "JobHeldAdmin": "held by an administrator",
    "PartitionDown": "its partition is down",
    "PartitionInactive": "its partition is inactive",
    "ReqNodeNotAvail": "a node it needs is not available",
    "NodeDown": "a node it needs is down",
    "TimeLimit": "it reached its time limit",
    "OutOfMemory": "it ran out of memory",
    "NonZeroExitCode": "nonzero exit status",
    "JobLaunchFailure": "its program could not be started, or was killed at once",
    "BadConstraints": "its requirements cannot be met by any node",
    "PartitionConfig": "it asks for more than its partition allows; it will never start",
    "QOSMaxJobsPerUserLimit": "the user's limit on running jobs is reached",
    "AssocMaxJobsLimit": "the account's limit on running jobs is reached",
    "DeadLine": "its deadline passed",
}

# Pending reasons of a job that Slurm keeps queued but will never start as it was asked
# for: limits of its partition, account or QOS, or a dependency that can no longer hold.
NEVER_STARTS: frozenset[str] = frozenset(
    {
        "AccountNotAllowed",
        "BadConstraints",
        "DependencyNeverSatisfied",
        "InvalidAccount",
        "InvalidQOS",
        "PartitionConfig",
        "PartitionNodeLimit",
        "PartitionTimeLimit",
        "QOSNotAllowed",
    }
)


@attrs.frozen
class ExitStatus:
    """How a finished Slurm job's program ended.

    Attributes:
        code: Its exit status (0 when a signal ended it).
        signal: The signal that ended it, or 0.
    """

    code: int
    signal: int

    @classmethod
    def from_wait_status(cls, status: int) -> ExitStatus:
        """Read a raw wait status, as ``squeue``'s ``exit_code`` field prints it."""
        return cls(code=(status >> 8) & 0xFF, signal=status & 0x7F)

    @classmethod
    def parse(cls, text: str) -> ExitStatus:
        """Read ``sacct``'s ``N:S`` form (exit status, signal).

        Raises:
            ValueError: The text is not ``N:S``.
        """
        code, sep, sig = text.partition(":")
        if not sep or not code.isdigit() or not sig.isdigit():
            raise ValueError(f"not an exit code of the form N:S: {text!r}")
        return cls(code=int(code), signal=int(sig))

    def describe(self) -> str:
        """Say it in words: ``exit status 3`` or ``signal 9 (SIGKILL)``."""
        if self.signal:
            try:
                name = signal_module.Signals(self.signal).name
            except ValueError:
                return f"signal {self.signal}"
            return f"signal {self.signal} ({name})"
        return f"exit status {self.code}"


@attrs.frozen
class SlotStatus:
    """A Slurm job's state in the slot's terms.

    Attributes:
        state: The slot state.
        reason: One human sentence fragment, with Slurm's own words in parentheses, e.g.
            ``"waiting for free resources (Slurm: PENDING, Resources)"``.
        never_starts: It is pending for a reason in :data:`NEVER_STARTS`: queued, but it
            will not run unless someone changes the job or the cluster.
    """

    state: SlotState
    reason: str
    never_starts: bool = False


def slot_status(
    slurm_state: str, reason: str | None = None, exit_status: ExitStatus | None = None
) -> SlotStatus:
    """Map a Slurm job state (plus squeue's reason and the exit status) to a slot status.

    Args:
        slurm_state: Slurm's state name; ``sacct``'s ``CANCELLED by 1000`` is understood.
        reason: squeue's reason field (``None`` or ``"None"`` when there is none).
        exit_status: How the program ended, where known.

    Returns:
        The slot state and a reason a person can read.
    """
    words = slurm_state.split()
    name = words[0] if words else ""
    state, text = _STATES.get(name, (SlotState.UNKNOWN, f"in Slurm state {name or '(none)'}"))
    if name == "CANCELLED" and len(words) == 3 and words[1] == "by":
        text = f"cancelled by uid {words[2]}"
    why = None if reason in (None, "", "None") else reason
    head = why.split(",")[0] if why is not None else None
    if head is not None and state is SlotState.PENDING:
        text = _REASONS.get(head, f"waiting: {why}")
    elif state is SlotState.FAILED and exit_status is not None and name == "FAILED":
        text = f"failed with {exit_status.describe()}"
    slurm = ", ".join(part for part in (slurm_state or "(no state)", why) if part)
    never = state is SlotState.PENDING and head in NEVER_STARTS
    return SlotStatus(state, f"{text} (Slurm: {slurm})", never_starts=never)


# --------------------------------------------------------------------------- records


@attrs.frozen
class QueuedJob:
    """One line of ``squeue``: a job Slurm still lists (pending, running or recently ended).

    Attributes:
        job_id: Slurm's job id.
        name: The job name.
        state: Slurm's state (``RUNNING``, ``PENDING``, ``CANCELLED``...).
        reason: Why it waits or why it ended (``Resources``, ``NonZeroExitCode``...), or None.
        nodes: The node list as Slurm writes it (``node2``, ``node[1-3]``), or None when no
            node is allocated.
        exit_status: How the program ended, for jobs that have ended; else None.
    """

    job_id: int
    name: str
    state: str
    reason: str | None
    nodes: str | None
    exit_status: ExitStatus | None

    @property
    def status(self) -> SlotStatus:
        """The slot state and reason."""
        return slot_status(self.state, self.reason, self.exit_status)


@attrs.frozen
class FinishedJob:
    """One job as ``sacct`` reports it: usually one that has left ``squeue``.

    Attributes:
        job_id: Slurm's job id.
        name: The job name.
        state: Slurm's state, with ``sacct``'s detail (``CANCELLED by 0``); empty when
            ``sacct --completion`` could not read the record.
        exit_status: How the program ended, where known.
        nodes: The node list, or None when no node was allocated.
    """

    job_id: int
    name: str
    state: str
    exit_status: ExitStatus | None
    nodes: str | None

    @property
    def status(self) -> SlotStatus:
        """The slot state and reason."""
        return slot_status(self.state, None, self.exit_status)


@attrs.frozen
class NodeInfo:
    """A node as ``scontrol show node`` describes it.

    Attributes:
        name: The node's name in Slurm (``node2``).
        address: Where other machines reach it (``NodeAddr``).
        hostname: Its host name (``NodeHostName``).
        state: Slurm's node state (``IDLE``, ``MIXED``, ``DOWN+NOT_RESPONDING``...).
        reason: Why it is down or drained, or None.
        partitions: The partitions it belongs to.
    """

    name: str
    address: str
    hostname: str
    state: str
    reason: str | None
    partitions: tuple[str, ...] = ()


# --------------------------------------------------------------------------- sbatch


class ExportPolicy(enum.Enum):
    """Which environment a batch job starts with."""

    ALL = "all"
    """The submitting process's environment plus the job's variables (Slurm's default)."""
    ONLY = "only"
    """The job's variables on top of the user's login environment on the node, as Slurm
    builds it (``--export=NAMES`` / ``--export=NIL``); nothing of the server's own."""


class CancelScope(enum.Enum):
    """Which processes of a job a signal reaches (``scancel --signal``)."""

    FULL = "full"
    """The batch script, its children and every step (``--full``)."""
    BATCH = "batch"
    """Only the batch script's shell (``--batch``)."""
    STEPS = "steps"
    """Only the job's ``srun`` steps, not the batch script (Slurm's default)."""


def cpus_per_task(cpu: str | float) -> int:
    """The whole CPUs to ask for: a Kubernetes CPU quantity rounded up (``500m`` -> 1).

    Raises:
        ValueError: ``cpu`` is not a positive CPU quantity.
    """
    text: object = cpu
    if isinstance(cpu, (int, float)) and not isinstance(cpu, bool) and math.isfinite(cpu):
        text = format(Decimal(repr(cpu)), "f")
    match = _CPU.fullmatch(text) if isinstance(text, str) else None
    cores = None
    if match is not None:
        cores = Decimal(match["milli"]) / 1000 if match["milli"] else Decimal(match[0])
    if cores is None or cores <= 0:
        raise ValueError(
            f"cpu {cpu!r} is not a CPU quantity; use a positive number of cores such as "
            "'0.5' or '2', or millicores such as '500m'"
        )
    return int(cores.to_integral_value(rounding="ROUND_CEILING"))


def memory_mib(memory: str) -> int:
    """The ``--mem`` value in MiB: a Kubernetes memory quantity rounded up (``1G`` -> 954).

    Slurm's ``M`` is a mebibyte.

    Raises:
        ValueError: ``memory`` is not a positive memory quantity.
    """
    try:
        size = memory_bytes(memory) if isinstance(memory, str) else 0
    except ValueError:
        size = 0
    if size <= 0:
        raise ValueError(
            f"memory {memory!r} is not a memory quantity; use a positive number of bytes "
            "with an optional suffix such as '512Mi', '1Gi', '500M' or '1e9'"
        )
    return -(-size // 2**20)


def time_limit_minutes(seconds: float) -> int:
    """The ``--time`` value in whole minutes, rounded up (Slurm counts minutes).

    Raises:
        ValueError: ``seconds`` is not a positive finite number.
    """
    if isinstance(seconds, bool) or not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"time limit {seconds!r} is not a positive number of seconds")
    return math.ceil(seconds / 60)


def _is_text(value: object) -> bool:
    """Whether a value can be written to a command's input or environment as UTF-8."""
    if not isinstance(value, str) or "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_environment(_job: object, _attribute: object, value: Mapping[str, str]) -> None:
    for key, text in value.items():
        if not isinstance(key, str) or _ENV_NAME.fullmatch(key) is None:
            raise ValueError(f"environment variable name {key!r} is not a valid name")
        if key.startswith(_SUBMISSION_PREFIXES):
            raise ValueError(
                f"environment variable {key} would configure sbatch itself; rename it "
                f"(names starting with {', '.join(_SUBMISSION_PREFIXES)} are Slurm's)"
            )
        if not _is_text(text):
            raise ValueError(
                f"environment variable {key} must be text without NUL characters or lone surrogates"
            )


def _check_extra_args(_job: object, _attribute: object, value: tuple[str, ...]) -> None:
    for arg in value:
        if not arg.startswith("-") or arg in ("-", "--"):
            raise ValueError(
                f"sbatch argument {arg!r} is not an option; give options with their value "
                "in one argument, such as '--constraint=gpu' or '-Cgpu'"
            )
        long = arg.split("=", 1)[0] if arg.startswith("--") else None
        if (long in _MANAGED_LONG) if long else (arg[1] in _MANAGED_SHORT):
            raise ValueError(
                f"sbatch argument {arg!r} sets an option the server manages itself "
                "(job name, output files, environment, resources, partition, account)"
            )


def _check_argv(_job: object, _attribute: object, value: tuple[str, ...]) -> None:
    if not value or not value[0]:
        raise ValueError("argv needs at least the program to run")
    if not all(_is_text(arg) for arg in value):
        raise ValueError("argv must be text without NUL characters or lone surrogates")


def _optional_path(value: str | os.PathLike[str] | None) -> str | None:
    return None if value is None else os.fspath(value)


def _literal(path: str) -> str:
    """A file name sbatch takes as it is: ``%`` starts a pattern (``%j``), ``%%`` is ``%``."""
    return path.replace("%", "%%")


def _strings(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


def _frozen_env(value: Mapping[str, str]) -> FrozenDict[str, str]:
    return FrozenDict(value)


@attrs.frozen(kw_only=True)
class BatchJob:
    """What to submit with ``sbatch``: one task on one node.

    Resources come in the units of a JuliaRun spec and are checked here, so that a bad
    request fails before anything is submitted.

    Attributes:
        name: The Slurm job name (a :class:`SlotName` as text).
        argv: The program and its arguments, run with ``exec`` from a ``/bin/sh`` batch
            script (so the batch step is the program itself and receives its signals).
        cpu: A Kubernetes CPU quantity; ``--cpus-per-task`` is it rounded up.  None: one.
        memory: A Kubernetes memory quantity, as ``--mem`` in MiB rounded up.  None: the
            cluster's default (``DefMemPerCPU``).
        time_limit: Seconds, as ``--time`` in whole minutes rounded up.  None: the
            partition's limit.
        partition: ``--partition``; None: the cluster's default.
        account: ``--account``; None: the user's default.
        stdout: Where standard output goes (appended to); None: discarded.  The path is
            taken literally (a ``%`` in it is not one of sbatch's patterns).
        stderr: Where standard error goes (appended to); None: with standard output.
        workdir: The working directory (``--chdir``); None: ``sbatch``'s own.
        environment: Variables set for the program.  Their values are passed in
            ``sbatch``'s environment, never on its command line.
        export: Which other variables the program sees.
        requeue: Let Slurm requeue the job after a node failure; by default the job ends
            (``NODE_FAIL``) and the caller decides whether to run it again.
        extra_args: More ``sbatch`` options, each one argument (``--constraint=gpu``);
            options this class sets are refused.
    """

    name: str
    argv: tuple[str, ...] = attrs.field(converter=_strings, validator=_check_argv)
    cpu: str | float | None = None
    memory: str | None = None
    time_limit: float | None = None
    partition: str | None = None
    account: str | None = None
    stdout: str | None = attrs.field(default=None, converter=_optional_path)
    stderr: str | None = attrs.field(default=None, converter=_optional_path)
    workdir: str | None = attrs.field(default=None, converter=_optional_path)
    environment: Mapping[str, str] = attrs.field(
        factory=FrozenDict, converter=_frozen_env, validator=_check_environment
    )
    export: ExportPolicy = ExportPolicy.ALL
    requeue: bool = False
    extra_args: tuple[str, ...] = attrs.field(
        default=(), converter=_strings, validator=_check_extra_args
    )

    def __attrs_post_init__(self) -> None:
        if not self.name or any(c.isspace() for c in self.name) or _SEP in self.name:
            raise ValueError(f"job name {self.name!r} must be non-empty text without spaces")
        for field in ("partition", "account"):
            value = getattr(self, field)
            if value is not None and (not value or any(c.isspace() or c == "," for c in value)):
                raise ValueError(f"{field} {value!r} must be one name without spaces or commas")
        # Each conversion raises a ValueError that names the field and says what to give.
        self.options()

    def options(self) -> list[str]:
        """The ``sbatch`` options for this job, after ``sbatch --parsable``."""
        options = [
            f"--job-name={self.name}",
            "--nodes=1",
            "--ntasks=1",
            f"--cpus-per-task={cpus_per_task(self.cpu) if self.cpu is not None else 1}",
        ]
        if self.memory is not None:
            options.append(f"--mem={memory_mib(self.memory)}M")
        if self.time_limit is not None:
            options.append(f"--time={time_limit_minutes(self.time_limit)}")
        if self.partition is not None:
            options.append(f"--partition={self.partition}")
        if self.account is not None:
            options.append(f"--account={self.account}")
        # Appending: a reader following a log never sees it truncated under it.
        options += ["--open-mode=append", f"--output={_literal(self.stdout or os.devnull)}"]
        if self.stderr is not None:
            options.append(f"--error={_literal(self.stderr)}")
        if self.workdir is not None:
            options.append(f"--chdir={self.workdir}")
        names = ",".join(sorted(self.environment))
        if self.export is ExportPolicy.ALL:
            options.append("--export=ALL")
        else:
            options.append(f"--export={names or 'NIL'}")
        options.append("--requeue" if self.requeue else "--no-requeue")
        return options + list(self.extra_args)

    def script(self) -> str:
        """The batch script ``sbatch`` reads from its standard input."""
        return f"#!/bin/sh\nexec {shlex.join(self.argv)}\n"


def parse_sbatch(output: str) -> int:
    """Read the job id ``sbatch --parsable`` prints (``123`` or ``123;cluster``).

    Raises:
        ValueError: The output is not a job id.
    """
    first = output.strip().split(";", 1)[0]
    if not first.isdigit():
        raise ValueError(f"sbatch --parsable printed {output.strip()!r}, not a job id")
    return int(first)


# --------------------------------------------------------------------------- parsers


def _none_if_empty(value: str, *empty: str) -> str | None:
    return None if value in ("", *empty) else value


def parse_squeue(output: str, prefix: str) -> list[QueuedJob]:
    """Read the jobs whose name starts with ``prefix`` from the output of our squeue call.

    Lines of other jobs are skipped before they are read, so a job of the same user with
    an unusual id (an array element) or name cannot break a sweep.

    Raises:
        ValueError: A line of a matching job is not in the expected format.
    """
    jobs: list[QueuedJob] = []
    for line in output.splitlines():
        fields = line.split(_SEP, len(_SQUEUE_FIELDS) - 1)
        if len(fields) < len(_SQUEUE_FIELDS):
            if prefix in line:
                raise ValueError(f"unexpected squeue line: {line!r}")
            continue
        job_id, state, reason, nodes, exit_code, name = fields
        name = name.removesuffix(_SEP)
        if not name.startswith(prefix):
            continue
        if not job_id.strip().isdigit() or _INTEGER.fullmatch(exit_code.strip()) is None:
            raise ValueError(f"unexpected squeue line for job {name!r}: {line!r}")
        state = state.strip()
        raw = int(exit_code)
        # A job that never ran can report -1 (no status at all).
        finished = _STATES.get(state, (SlotState.UNKNOWN, ""))[0].finished and raw >= 0
        jobs.append(
            QueuedJob(
                job_id=int(job_id),
                name=name,
                state=state,
                reason=_none_if_empty(reason.strip(), "None", "(null)"),
                nodes=_none_if_empty(nodes.strip(), "(null)"),
                exit_status=ExitStatus.from_wait_status(raw) if finished else None,
            )
        )
    return jobs


def parse_sacct(output: str) -> dict[int, FinishedJob]:
    """Read ``sacct``'s records of whole jobs (no steps); the last record of a job wins.

    A requeued job has one record per run in the completion file, oldest first.

    Raises:
        ValueError: A line is not in the expected format.
    """
    jobs: dict[int, FinishedJob] = {}
    for line in output.splitlines():
        if not line.strip():
            continue
        fields = line.split(_SEP, 4)
        if len(fields) != 5 or not fields[0].isdigit():
            raise ValueError(f"unexpected sacct line: {line!r}")
        job_id, state, exit_code, nodes, name = fields
        try:
            exit_status: ExitStatus | None = ExitStatus.parse(exit_code)
        except ValueError:
            exit_status = None
        jobs[int(job_id)] = FinishedJob(
            job_id=int(job_id),
            name=name,
            state=state.strip(),
            exit_status=exit_status,
            nodes=_none_if_empty(nodes.strip(), "(null)", "None assigned"),
        )
    return jobs


_NODE_FIELD = re.compile(r"(?:^|\s)(NodeName|NodeAddr|NodeHostName|State|Reason|Partitions)=(\S*)")


def parse_node_info(output: str) -> dict[str, NodeInfo]:
    """Read ``scontrol --oneliner show node``: one line per node.

    Raises:
        ValueError: A line has no node name or address.
    """
    nodes: dict[str, NodeInfo] = {}
    for line in output.splitlines():
        if not line.strip():
            continue
        fields: dict[str, str] = dict(_NODE_FIELD.findall(line))
        if "NodeName" not in fields or "NodeAddr" not in fields:
            raise ValueError(f"unexpected scontrol line: {line[:200]!r}")
        # The reason is free text up to the end of the line ("Not responding [root@...]").
        reason = line.split(" Reason=", 1)[1].strip() if " Reason=" in line else None
        nodes[fields["NodeName"]] = NodeInfo(
            name=fields["NodeName"],
            address=fields["NodeAddr"],
            hostname=fields.get("NodeHostName", fields["NodeName"]),
            state=fields.get("State", ""),
            reason=reason or None,
            partitions=tuple(part for part in fields.get("Partitions", "").split(",") if part),
        )
    return nodes


def parse_probe(output: str) -> dict[str, str]:
    """Read the probe's output: what each node read from the probe file.

    Returns:
        Node name -> the first line of the file as that node read it ('' if it could not).
    """
    seen: dict[str, str] = {}
    for line in output.splitlines():
        node, sep, content = line.partition(_SEP)
        if sep:
            seen[node] = content
    return seen


# --------------------------------------------------------------------------- the client

# Prints "<node name><0x1F><first line of the file>"; an unreadable file reads as "".
_PROBE_SCRIPT = (
    'c=$(head -n 1 -- "$1" 2>/dev/null) || c=; printf "%s\\037%s\\n" "$SLURMD_NODENAME" "$c"'
)


def _read(command: Sequence[str], output: str, parse: Callable[[str], _T]) -> _T:
    """Parse a command's output; output it cannot read is that command's failure."""
    try:
        return parse(output)
    except ValueError as error:
        raise SlurmError(command, 0, "", str(error)) from None


def _signal_group(process: subprocess.Popen[str], signal: signal_module.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal)


class SlurmCli:
    """Runs Slurm's commands for one user of one cluster.

    Args:
        timeout: Seconds each command may take (``DEFAULT_TIMEOUT``).
        bin_dir: Where Slurm's commands are, if not on ``PATH``.
        sacct_mode: ``"accounting"`` (``sacct``), ``"completion"`` (``sacct --completion``,
            the ``jobcomp/filetxt`` file) or ``"auto"``: accounting, and the completion
            file from the first time the cluster says it has no accounting storage.
    """

    def __init__(
        self,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        bin_dir: str | os.PathLike[str] | None = None,
        sacct_mode: Literal["auto", "accounting", "completion"] = "auto",
    ) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        self.timeout = timeout
        self._bin_dir = None if bin_dir is None else Path(bin_dir)
        self._sacct_mode = sacct_mode

    def _command(self, name: str, *args: str) -> list[str]:
        program = str(self._bin_dir / name) if self._bin_dir is not None else name
        return [program, *args]

    def run(
        self,
        command: Sequence[str],
        *,
        stdin: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> str:
        """Run one command; return its standard output.

        On timeout the command and whatever it started get SIGTERM first (so that ``srun``
        can give its allocation back), then SIGKILL.

        Raises:
            SlurmUnavailableError: The command is not installed.
            SlurmTimeoutError: It did not finish in time.
            SlurmError: It exited nonzero.
        """
        limit = self.timeout if timeout is None else timeout
        try:
            process = subprocess.Popen(  # noqa: S603 - argv list, never a shell
                list(command),
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=None if env is None else dict(env),
                # its own process group: a timeout ends the command and anything it started
                start_new_session=True,
            )
        except FileNotFoundError as error:
            raise SlurmUnavailableError(
                command, None, "", f"{command[0]} is not installed here (or not on PATH)"
            ) from error
        try:
            out, err = process.communicate(stdin, timeout=limit)
        except subprocess.TimeoutExpired:
            _signal_group(process, signal_module.SIGTERM)
            try:
                out, err = process.communicate(timeout=_TERM_GRACE)
            except subprocess.TimeoutExpired:
                _signal_group(process, signal_module.SIGKILL)
                out, err = process.communicate()
            raise SlurmTimeoutError(
                command, None, err or "", f"did not finish within {limit:g} s"
            ) from None
        if process.returncode != 0:
            raise SlurmError(command, process.returncode, err)
        return out

    def submit(self, job: BatchJob) -> int:
        """Submit a batch job; return its job id.

        Raises:
            SlurmError: ``sbatch`` refused the job (the message says why: an unknown
                partition, resources no node has...).
        """
        command = self._command("sbatch", "--parsable", *job.options())
        output = self.run(command, stdin=job.script(), env={**os.environ, **job.environment})
        return _read(command, output, parse_sbatch)

    def queue(self, prefix: str = SLOT_NAME_PREFIX) -> list[QueuedJob]:
        """List this user's jobs whose names start with ``prefix``, in one ``squeue`` call.

        Includes jobs that ended less than ``MinJobAge`` (300 s by default) ago.

        Raises:
            SlurmError: ``squeue`` failed or printed something unreadable.
        """
        command = self._command(
            "squeue", "--noheader", "--me", "--states=all", f"--Format={_SQUEUE_FORMAT}"
        )
        return _read(command, self.run(command), partial(parse_squeue, prefix=prefix))

    def cancel(
        self,
        job_ids: Iterable[int],
        *,
        signal: str | int | None = None,
        scope: CancelScope = CancelScope.FULL,
    ) -> None:
        """End jobs, or send them a signal.

        Without ``signal`` each job ends: its processes get SIGTERM, and SIGKILL after the
        cluster's ``KillWait``; a pending job never starts.  With ``signal`` Slurm only
        delivers it (the job's state does not change), to the processes ``scope`` says.
        Jobs that have already ended are not an error.

        Raises:
            ValueError: ``signal`` is not a signal name or number.
            SlurmError: ``scancel`` failed for another reason.
        """
        ids = [str(int(job_id)) for job_id in job_ids]
        if not ids:
            return
        args: list[str] = []
        if signal is not None:
            text = str(signal).upper()
            if isinstance(signal, bool) or _SIGNAL.fullmatch(text) is None:
                raise ValueError(f"signal {signal!r} is not a signal name or number")
            args.append(f"--signal={text}")
            if scope is not CancelScope.STEPS:
                args.append(f"--{scope.value}")
        command = self._command("scancel", *args, *ids)
        try:
            self.run(command)
        except SlurmTimeoutError:
            raise
        except SlurmError as error:
            # One line per job that has ended already; anything else is a real failure.
            lines = [line for line in error.stderr.splitlines() if line.strip()]
            if not lines or not all(_INVALID_JOB_ID in line for line in lines):
                raise

    def history(self, job_ids: Iterable[int]) -> dict[int, FinishedJob]:
        """What ``sacct`` knows of these jobs: final state and exit status of ended ones.

        Jobs it does not know are missing from the result.

        Raises:
            SlurmError: ``sacct`` failed (neither accounting nor a completion file).
        """
        ids = ",".join(str(int(job_id)) for job_id in job_ids)
        if not ids:
            return {}
        if self._sacct_mode != "completion":
            try:
                return self._sacct(ids, completion=False)
            except SlurmError as error:
                if self._sacct_mode == "accounting" or (
                    _ACCOUNTING_DISABLED not in error.stderr.lower()
                ):
                    raise
                self._sacct_mode = "completion"
        return self._sacct(ids, completion=True)

    def _sacct(self, ids: str, *, completion: bool) -> dict[int, FinishedJob]:
        command = self._command(
            "sacct",
            *(["--completion"] if completion else []),
            "--allocations",
            "--noheader",
            "--parsable2",
            f"--delimiter={_SEP}",
            f"--jobs={ids}",
            f"--format={_SACCT_FORMAT}",
        )
        return _read(command, self.run(command), parse_sacct)

    def nodes(self, names: str | None = None) -> dict[str, NodeInfo]:
        """Describe the cluster's nodes, or those of a node list (``node[1-3]``).

        Raises:
            SlurmError: ``scontrol`` failed (an unknown node, say).
        """
        command = self._command("scontrol", "--oneliner", "show", "node")
        if names is not None:
            command.append(names)
        return _read(command, self.run(command), parse_node_info)

    def node_address(self, name: str) -> str:
        """Where other machines reach a node (its ``NodeAddr``).

        Raises:
            SlurmError: Slurm does not know the node.
        """
        info = self.nodes(name).get(name)
        if info is None:
            raise SlurmError(["scontrol", "show", "node", name], 0, "", "node not listed")
        return info.address

    def probe_file(
        self,
        path: str | os.PathLike[str],
        *,
        nodes: int = 1,
        name: str = "jr-probe",
        partition: str | None = None,
        account: str | None = None,
        extra_args: Sequence[str] = (),
        timeout: float | None = None,
    ) -> dict[str, str]:
        """Read a file on ``nodes`` nodes with ``srun``: is it shared at the same path?

        Write a file with content only this call could know, run this, and compare.  The
        probe gives up when Slurm cannot allocate the nodes within the timeout.

        Args:
            path: An absolute path to the file.
            nodes: How many nodes to read it on, one task each.
            name: The probe's job name.
            partition: ``--partition``; None: the default.
            account: ``--account``; None: the default.
            extra_args: More ``srun`` options.
            timeout: Seconds for the whole probe (default: this client's timeout).

        Returns:
            Node name -> the first line of the file as that node read it ('' where it
            could not be read).

        Raises:
            ValueError: ``path`` is not absolute or ``nodes`` is not positive.
            SlurmError: ``srun`` failed or timed out.
        """
        target = os.fspath(path)
        if not os.path.isabs(target):
            raise ValueError(f"the probe file needs an absolute path, got {target!r}")
        if nodes < 1:
            raise ValueError(f"nodes must be at least 1, got {nodes}")
        limit = self.timeout if timeout is None else timeout
        command = self._command(
            "srun",
            f"--nodes={nodes}",
            "--ntasks-per-node=1",
            f"--job-name={name}",
            "--chdir=/",
            f"--immediate={max(1, math.ceil(limit))}",
            "--quiet",
            *([f"--partition={partition}"] if partition else []),
            *([f"--account={account}"] if account else []),
            *extra_args,
            "sh",
            "-c",
            _PROBE_SCRIPT,
            "sh",
            target,
        )
        return parse_probe(self.run(command, timeout=limit + _TERM_GRACE))


#: Node states in which a node runs (or is about to run) jobs.
_USABLE_NODE_STATES = ("IDLE", "MIXED", "ALLOCATED", "COMPLETING")


def unavailable(cli: SlurmCli, *, nodes: int = 1) -> str | None:
    """Why Slurm cannot run jobs here (fewer than ``nodes`` usable nodes...), or None.

    Asks nothing when Slurm is not configured: its commands would then look the
    controller up in DNS.
    """
    if shutil.which("sbatch") is None or shutil.which("squeue") is None:
        return "Slurm's commands (sbatch, squeue...) are not installed"
    conf = os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf")
    if not os.path.exists(conf):
        return f"Slurm is not configured here ({conf} does not exist)"
    try:
        found = cli.nodes()
    except SlurmError as error:
        return f"Slurm does not answer: {error}"
    usable = [info for info in found.values() if info.state.split("+")[0] in _USABLE_NODE_STATES]
    if len(usable) < nodes:
        states = ", ".join(f"{name} {info.state}" for name, info in sorted(found.items()))
        return f"{nodes} usable node(s) are needed, Slurm has: {states or 'none'}"
    return None
