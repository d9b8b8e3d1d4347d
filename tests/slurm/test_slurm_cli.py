"""The Slurm command wrapper: command building and parsing, on outputs captured from a real
cluster (``tests/slurm/data``, recorded by ``data/capture.sh``), and its error handling with
stand-in commands.  These tests need no Slurm; the ``slurm``-marked ones run it for real."""

from __future__ import annotations

import stat
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import names

from juliarun_aio._errors import SpecError
from juliarun_aio.server._slurm_cli import (
    NEVER_STARTS,
    BatchJob,
    CancelScope,
    ExitStatus,
    ExportPolicy,
    QueuedJob,
    SlotName,
    SlotState,
    SlurmCli,
    SlurmError,
    SlurmTimeoutError,
    SlurmUnavailableError,
    cpus_per_task,
    job_name_prefix,
    memory_mib,
    parse_node_info,
    parse_probe,
    parse_sacct,
    parse_sbatch,
    parse_squeue,
    slot_status,
    time_limit_minutes,
)

DATA = Path(__file__).parent / "data"
CAPTURE = "jr.capture."
UID = "0123456789abcdef"


def data(name: str) -> str:
    """A captured output file."""
    return (DATA / name).read_text(encoding="utf-8")


def by_scenario(jobs: list[QueuedJob]) -> dict[str, QueuedJob]:
    """Captured squeue lines keyed by the scenario in their names (``jr.capture.<scenario>``)."""
    found: dict[str, QueuedJob] = {}
    for job in jobs:
        slot = SlotName.parse(job.name)
        assert slot is not None, job.name
        found[slot.job if slot.worker is None else f"{slot.job}/{slot.slot}"] = job
    return found


# --------------------------------------------------------------------------- slot names


@given(names(), names(), st.from_regex(r"[0-9a-f]{16}", fullmatch=True), st.integers(0, 9999))
def test_slot_names_round_trip(namespace: str, job: str, uid: str, worker: int) -> None:
    """Every valid (namespace, job, uid, slot) survives name -> text -> name unchanged."""
    slot = "master" if worker == 0 else f"worker-{worker}"
    name = SlotName(namespace, job, uid, slot)
    assert SlotName.parse(str(name)) == name
    assert str(name).startswith(job_name_prefix(namespace, job))
    assert name.worker == (worker or None)


@pytest.mark.parametrize(
    "text",
    [
        "slurm-up-smoke",
        "jr.ns.job.0123456789abcdef",
        "jr.ns.job.0123456789abcdef.master.extra",
        "xx.ns.job.0123456789abcdef.master",
        "jr.NS.job.0123456789abcdef.master",
        "jr.ns.job.0123456789ABCDEF.master",
        "jr.ns.job.0123456789abcde.master",
        "jr.ns.job.0123456789abcdef.worker-0",
        "jr.ns.job.0123456789abcdef.worker",
        "jr.ns..0123456789abcdef.master",
    ],
)
def test_other_names_are_not_slot_names(text: str) -> None:
    """Names this scheme did not make parse as None, never as a wrong slot."""
    assert SlotName.parse(text) is None


def test_slot_name_parts_are_checked() -> None:
    """A bad part raises SpecError naming it, before any job could be named with it."""
    with pytest.raises(SpecError, match="namespace"):
        SlotName("a.b", "job", UID, "master")
    with pytest.raises(SpecError, match="uid"):
        SlotName("ns", "job", "xyz", "master")
    with pytest.raises(SpecError, match="slot"):
        SlotName("ns", "job", UID, "worker-01")


def test_job_prefix_does_not_match_a_longer_job_name() -> None:
    """The prefix of job ``train`` does not select the slots of job ``train-2``."""
    other = str(SlotName("ns", "train-2", UID, "master"))
    assert not other.startswith(job_name_prefix("ns", "train"))
    assert other.startswith(job_name_prefix("ns"))
    assert job_name_prefix() == "jr."
    with pytest.raises(SpecError):
        job_name_prefix(None, "train")


# --------------------------------------------------------------------------- resources


@pytest.mark.parametrize(
    ("cpu", "expected"),
    [("500m", 1), ("1000m", 1), ("1001m", 2), ("1.5", 2), ("2", 2), (0.25, 1), (3, 3)],
)
def test_cpus_are_rounded_up(cpu: str | float, expected: int) -> None:
    """A fractional CPU request asks Slurm for the next whole CPU."""
    assert cpus_per_task(cpu) == expected


@pytest.mark.parametrize(
    ("memory", "expected"),
    [("512Mi", 512), ("1Gi", 1024), ("1G", 954), ("1e9", 954), ("100", 1), ("1.5Gi", 1536)],
)
def test_memory_is_in_mebibytes_rounded_up(memory: str, expected: int) -> None:
    """A Kubernetes memory quantity becomes whole MiB, never less than asked."""
    assert memory_mib(memory) == expected


def test_time_limit_is_in_whole_minutes() -> None:
    """A time limit in seconds becomes whole minutes, rounded up."""
    assert time_limit_minutes(60) == 1
    assert time_limit_minutes(61) == 2
    assert time_limit_minutes(0.5) == 1


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("cpu", "0"),
        ("cpu", "-1"),
        ("cpu", "1.5.0"),
        ("cpu", True),
        ("cpu", float("inf")),
        ("memory", "0"),
        ("memory", "12XB"),
        ("time_limit", 0.0),
        ("time_limit", float("nan")),
    ],
)
def test_bad_resources_fail_before_submission(field: str, value: object) -> None:
    """A bad resource value raises ValueError naming the field when the request is built."""
    with pytest.raises(ValueError, match=field.replace("_", " ")):
        BatchJob(name="n", argv=["true"], **{field: value})  # type: ignore[arg-type]


# --------------------------------------------------------------------------- sbatch


def test_sbatch_options_for_a_full_request(tmp_path: Path) -> None:
    """Every field becomes the documented sbatch option, in one stable order."""
    job = BatchJob(
        name="jr.ns.job.0123456789abcdef.worker-2",
        argv=["python3", "-c", "print(1)"],
        cpu="1500m",
        memory="1Gi",
        time_limit=90,
        partition="debug",
        account="lab",
        stdout=tmp_path / "out",
        stderr=tmp_path / "err",
        workdir=tmp_path,
        environment={"B": "2", "A": "secret value"},
        export=ExportPolicy.ONLY,
        extra_args=["--constraint=fast"],
    )
    assert job.options() == [
        "--job-name=jr.ns.job.0123456789abcdef.worker-2",
        "--nodes=1",
        "--ntasks=1",
        "--cpus-per-task=2",
        "--mem=1024M",
        "--time=2",
        "--partition=debug",
        "--account=lab",
        "--open-mode=append",
        f"--output={tmp_path / 'out'}",
        f"--error={tmp_path / 'err'}",
        f"--chdir={tmp_path}",
        "--export=A,B",
        "--no-requeue",
        "--constraint=fast",
    ]


def test_output_paths_are_literal() -> None:
    """A '%' in an output path is escaped, so sbatch does not read it as a pattern (%j)."""
    options = BatchJob(name="n", argv=["true"], stdout="/d/100%/%j", stderr="/d/%x").options()
    assert "--output=/d/100%%/%%j" in options
    assert "--error=/d/%%x" in options


def test_environment_values_never_reach_the_command_line() -> None:
    """Variables are exported by name only; their values travel in sbatch's environment."""
    job = BatchJob(name="n", argv=["true"], environment={"TOKEN": "s3cret-value"})
    assert not any("s3cret" in option for option in job.options())
    assert "s3cret" not in job.script()
    assert "--export=ALL" in job.options()


def test_only_policy_without_variables_exports_nothing() -> None:
    """ExportPolicy.ONLY with no variables is --export=NIL (NONE would mean something else)."""
    options = BatchJob(name="n", argv=["true"], export=ExportPolicy.ONLY).options()
    assert "--export=NIL" in options
    assert "--output=/dev/null" in options
    assert "--cpus-per-task=1" in options


@pytest.mark.parametrize(
    "arg",
    [
        "--job-name=x",
        "--output=/tmp/x",
        "-J",
        "-Jname",
        "--parsable",
        "--export=ALL",
        "--wrap=true",
        "--mem=1G",
        "--array=1-3",
        "--partition=x",
    ],
)
def test_extra_args_may_not_override_managed_options(arg: str) -> None:
    """An extra sbatch argument that sets an option the request manages is refused."""
    with pytest.raises(ValueError, match="manages itself"):
        BatchJob(name="n", argv=["true"], extra_args=[arg])


@pytest.mark.parametrize("arg", ["gpu", "-", "--"])
def test_extra_args_must_be_options(arg: str) -> None:
    """A bare word among the extra arguments (it would become the script) is refused."""
    with pytest.raises(ValueError, match="not an option"):
        BatchJob(name="n", argv=["true"], extra_args=[arg])


@pytest.mark.parametrize("name", ["SLURM_MEM_PER_CPU", "SBATCH_PARTITION", "1X", "A-B", ""])
def test_environment_names_are_checked(name: str) -> None:
    """Names sbatch would read as its own settings, and invalid names, are refused."""
    with pytest.raises(ValueError, match="environment variable"):
        BatchJob(name="n", argv=["true"], environment={name: "v"})


@pytest.mark.parametrize(
    ("field", "value"),
    [("name", "two words"), ("name", ""), ("partition", "a,b"), ("account", "")],
)
def test_names_are_checked(field: str, value: str) -> None:
    """Job name, partition and account must be single words."""
    params: dict[str, object] = {"name": "n", "argv": ["true"], field: value}
    with pytest.raises(ValueError, match=field):
        BatchJob(**params)  # type: ignore[arg-type]


@pytest.mark.parametrize("argv", [[], [""], ["echo", "a\x00b"], ["echo", "\ud800"]])
def test_unusable_argv_is_refused(argv: list[str]) -> None:
    """A request without a program, or with text no command line can carry, is refused."""
    with pytest.raises(ValueError, match="argv"):
        BatchJob(name="n", argv=argv)


def test_unusable_environment_values_are_refused() -> None:
    """An environment value with NUL or a lone surrogate is refused when the job is built."""
    for value in ("a\x00b", "\udc80"):
        with pytest.raises(ValueError, match="environment variable X"):
            BatchJob(name="n", argv=["true"], environment={"X": value})


@settings(max_examples=30)
@given(
    st.lists(
        st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=20), max_size=5
    )
)
def test_the_batch_script_runs_argv_exactly(args: list[str]) -> None:
    """The batch script passes every argument to the program unchanged (run by /bin/sh)."""
    script = BatchJob(name="n", argv=["printf", "%s\\0", "first", *args]).script()
    assert script.startswith("#!/bin/sh\nexec ")
    result = subprocess.run(
        ["/bin/sh", "-s"], input=script.encode(), capture_output=True, check=True
    )
    assert result.stdout.decode().split("\0")[:-1] == ["first", *args]


def test_sbatch_parsable_output() -> None:
    """The captured --parsable output, and its federated form, give the job id."""
    assert parse_sbatch(data("sbatch-parsable.txt")) > 0
    assert parse_sbatch("4242;cluster2\n") == 4242
    with pytest.raises(ValueError, match="not a job id"):
        parse_sbatch("sbatch: error: something\n")


# --------------------------------------------------------------------------- squeue


def test_squeue_running_jobs() -> None:
    """Running, pending (with reasons) and finished jobs read from a captured squeue."""
    jobs = by_scenario(parse_squeue(data("squeue-running.txt"), CAPTURE))
    multi = jobs["multi"]
    assert (multi.state, multi.nodes, multi.exit_status) == ("RUNNING", "node[1-3]", None)
    assert multi.status.state is SlotState.RUNNING
    assert jobs["spread/worker-3"].nodes in ("node1", "node2", "node3")
    resources = jobs["resources"]
    assert (resources.state, resources.reason, resources.nodes) == ("PENDING", "Resources", None)
    assert resources.status.reason == "waiting for free resources (Slurm: PENDING, Resources)"
    assert jobs["held"].status.reason.startswith("held by its owner")
    assert jobs["begin"].status.reason.startswith("waiting for its start time")
    assert jobs["dependency"].status.reason.startswith("waiting for the jobs it depends on")
    assert jobs["done"].status.state is SlotState.SUCCEEDED
    assert jobs["done"].exit_status == ExitStatus(0, 0)


def test_squeue_transitions() -> None:
    """Cancelled jobs read as stopping while they complete; suspended and requeued ones too."""
    jobs = by_scenario(parse_squeue(data("squeue-transitions.txt"), CAPTURE))
    assert jobs["cancel-running"].state == "COMPLETING"
    assert jobs["cancel-running"].status.state is SlotState.STOPPING
    assert jobs["completing"].status.state is SlotState.STOPPING
    assert jobs["suspended"].status.state is SlotState.SUSPENDED
    pending = jobs["cancel-pending"]
    assert (pending.state, pending.nodes) == ("CANCELLED", None)
    assert pending.status.state is SlotState.CANCELLED


def test_squeue_final_states() -> None:
    """Every way a captured job ended maps to its slot state, reason and exit status."""
    jobs = by_scenario(parse_squeue(data("squeue-finished.txt"), CAPTURE))
    expected = {
        "fail": (SlotState.FAILED, "failed with exit status 7", ExitStatus(7, 0)),
        "signal": (SlotState.FAILED, "failed with signal 9 (SIGKILL)", ExitStatus(0, 9)),
        "oom": (SlotState.FAILED, "ran out of memory", None),
        "timeout": (SlotState.FAILED, "reached its time limit", ExitStatus(0, 15)),
        "deadline": (SlotState.FAILED, "could not finish before its deadline", None),
        "node-fail": (SlotState.LOST, "its node failed", None),
        "multi": (SlotState.LOST, "its node failed", ExitStatus(0, 15)),
        "cancel-running": (SlotState.CANCELLED, "cancelled", ExitStatus(0, 15)),
        "completing": (SlotState.CANCELLED, "cancelled", ExitStatus(0, 9)),
        "cancel-pending": (SlotState.CANCELLED, "cancelled", ExitStatus(0, 0)),
        "done": (SlotState.SUCCEEDED, "completed", ExitStatus(0, 0)),
        "requeued": (SlotState.PENDING, "waiting for its start time", None),
        "node-fail-requeue": (SlotState.PENDING, "waiting for its start time", None),
        "reqnode": (SlotState.PENDING, "a node it needs is not available", None),
        "never": (SlotState.PENDING, "its dependency can never be satisfied", None),
        "suspended": (SlotState.SUSPENDED, "suspended", None),
    }
    for scenario, (state, reason, exit_status) in expected.items():
        job = jobs[scenario]
        assert job.status.state is state, (scenario, job)
        assert job.status.reason.startswith(reason), (scenario, job.status)
        said = ", ".join(part for part in (job.state, job.reason) if part)
        assert job.status.reason.endswith(f"(Slurm: {said})"), (scenario, job.status)
        if exit_status is not None:
            assert job.exit_status == exit_status, (scenario, job)
    assert jobs["reqnode"].reason == "ReqNodeNotAvail, UnavailableNodes:node3"


def test_squeue_keeps_only_the_prefix() -> None:
    """Lines of other jobs (any id format, any name) are skipped; a prefix selects one job."""
    sep = "\x1f"
    output = data("squeue-running.txt") + sep.join(
        ["123_4", "RUNNING", "None", "node1", "0", "my|array job, with spaces", ""]
    )
    everything = parse_squeue(output, CAPTURE)
    assert {job.name.split(".")[2] for job in everything} >= {"done", "multi", "spread"}
    workers = parse_squeue(output, f"jr.capture.spread.{UID}.")
    assert sorted(job.name.rsplit(".", 1)[1] for job in workers) == [
        f"worker-{n}" for n in (1, 2, 3, 4)
    ]
    assert parse_squeue(output, "jr.nobody.") == []


def test_squeue_line_of_ours_in_another_format_is_an_error() -> None:
    """A matching line that cannot be read raises instead of being dropped silently."""
    with pytest.raises(ValueError, match="unexpected squeue line"):
        parse_squeue("RUNNING jr.capture.x\n", CAPTURE)
    sep = "\x1f"
    line = sep.join(["12", "RUNNING", "None", "node1", "n/a", "jr.capture.x", ""])
    with pytest.raises(ValueError, match="unexpected squeue line"):
        parse_squeue(line, CAPTURE)


def test_squeue_no_status_for_a_job_that_never_ran() -> None:
    """A raw exit code of -1 (the job never started) gives no exit status."""
    sep = "\x1f"
    line = sep.join(["67", "CANCELLED", "Nodes required...", "", "-1", "jr.capture.x", ""])
    (job,) = parse_squeue(line, CAPTURE)
    assert job.exit_status is None
    assert job.status.state is SlotState.CANCELLED


# --------------------------------------------------------------------------- state table

ALL_STATES = {
    "BOOT_FAIL": SlotState.LOST,
    "CANCELLED": SlotState.CANCELLED,
    "COMPLETED": SlotState.SUCCEEDED,
    "CONFIGURING": SlotState.PENDING,
    "COMPLETING": SlotState.STOPPING,
    "DEADLINE": SlotState.FAILED,
    "FAILED": SlotState.FAILED,
    "NODE_FAIL": SlotState.LOST,
    "OUT_OF_MEMORY": SlotState.FAILED,
    "PENDING": SlotState.PENDING,
    "PREEMPTED": SlotState.LOST,
    "RUNNING": SlotState.RUNNING,
    "RESV_DEL_HOLD": SlotState.PENDING,
    "REQUEUE_FED": SlotState.PENDING,
    "REQUEUE_HOLD": SlotState.PENDING,
    "REQUEUED": SlotState.PENDING,
    "RESIZING": SlotState.RUNNING,
    "REVOKED": SlotState.CANCELLED,
    "SIGNALING": SlotState.STOPPING,
    "SPECIAL_EXIT": SlotState.PENDING,
    "STAGE_OUT": SlotState.STOPPING,
    "STOPPED": SlotState.SUSPENDED,
    "SUSPENDED": SlotState.SUSPENDED,
    "TIMEOUT": SlotState.FAILED,
}


@pytest.mark.parametrize(("slurm_state", "state"), sorted(ALL_STATES.items()))
def test_every_documented_state_is_mapped(slurm_state: str, state: SlotState) -> None:
    """Each job state of squeue(1) maps to a slot state, with Slurm's word in the reason."""
    status = slot_status(slurm_state)
    assert status.state is state
    assert status.reason.endswith(f"(Slurm: {slurm_state})")
    assert status.state.finished == (
        state in (SlotState.SUCCEEDED, SlotState.FAILED, SlotState.LOST, SlotState.CANCELLED)
    )


def test_cancelled_by_and_unknown_states() -> None:
    """sacct's 'CANCELLED by N' names the uid; a state nobody knows is UNKNOWN, quoted."""
    by = slot_status("CANCELLED by 1000")
    assert by == slot_status("CANCELLED by 1000")
    assert by.state is SlotState.CANCELLED
    assert by.reason == "cancelled by uid 1000 (Slurm: CANCELLED by 1000)"
    odd = slot_status("LAUNCH_FAILED")
    assert odd.state is SlotState.UNKNOWN
    assert "LAUNCH_FAILED" in odd.reason
    assert slot_status("").state is SlotState.UNKNOWN
    assert slot_status("PENDING", "SomeNewReason").reason == (
        "waiting: SomeNewReason (Slurm: PENDING, SomeNewReason)"
    )


@pytest.mark.parametrize("reason", sorted(NEVER_STARTS))
def test_reasons_that_never_pass_mark_a_pending_job(reason: str) -> None:
    """A job pending for a limit or a dead dependency will never start; it says so."""
    status = slot_status("PENDING", f"{reason},extra")
    assert status.state is SlotState.PENDING
    assert status.never_starts
    assert reason in status.reason


@pytest.mark.parametrize(
    ("slurm_state", "reason"),
    [
        ("PENDING", "Resources"),
        ("PENDING", "Priority"),
        ("PENDING", None),
        ("PENDING", "JobHeldUser"),
        ("FAILED", "BadConstraints"),
        ("RUNNING", None),
    ],
)
def test_waits_that_pass_are_not_marked(slurm_state: str, reason: str | None) -> None:
    """Resources, priority and holds pass; a failed job is no longer pending at all."""
    assert not slot_status(slurm_state, reason).never_starts


def test_exit_status_forms() -> None:
    """squeue's raw wait status and sacct's N:S read the same; bad text is refused."""
    assert ExitStatus.from_wait_status(1792) == ExitStatus.parse("7:0") == ExitStatus(7, 0)
    assert ExitStatus.from_wait_status(9) == ExitStatus.parse("0:9")
    assert ExitStatus(0, 9).describe() == "signal 9 (SIGKILL)"
    assert ExitStatus(0, 125).describe() == "signal 125"
    assert ExitStatus(3, 0).describe() == "exit status 3"
    with pytest.raises(ValueError, match="N:S"):
        ExitStatus.parse("7")


# --------------------------------------------------------------------------- sacct


def test_sacct_completion_records() -> None:
    """The captured completion file gives each ended job's state, exit status and node."""
    records = {
        job.name.split(".")[2]: job for job in parse_sacct(data("sacct-completion.txt")).values()
    }
    assert records["fail"].exit_status == ExitStatus(7, 0)
    assert records["fail"].status.reason.startswith("failed with exit status 7")
    assert records["signal"].exit_status == ExitStatus(0, 9)
    assert records["oom"].status.state is SlotState.FAILED
    assert records["timeout"].state == "TIMEOUT"
    assert records["node-fail"].status.state is SlotState.LOST
    assert records["cancel-pending"].nodes is None
    assert records["cancel-running"].status.state is SlotState.CANCELLED
    assert records["deadline"].status.state is SlotState.FAILED
    assert records["done"].status.state is SlotState.SUCCEEDED
    # a requeued job's record says PENDING: it will run again under the same id
    assert records["requeued"].status.state is SlotState.PENDING


def test_sacct_last_record_of_a_job_wins() -> None:
    """A job with several records (requeued, then ended) reads as its last one."""
    sep = "\x1f"
    output = "\n".join(
        sep.join([job_id, state, code, "node3", "jr.capture.x"])
        for job_id, state, code in (("7", "NODE_FAIL", "0:0"), ("7", "COMPLETED", "0:0"))
    )
    assert parse_sacct(output)[7].state == "COMPLETED"


def test_sacct_unreadable_record() -> None:
    """A record sacct --completion could not read (empty state) maps to UNKNOWN, not a crash."""
    sep = "\x1f"
    (job,) = parse_sacct(sep.join(["11", "", "0:0", "node1", "a|b"])).values()
    assert job.status.state is SlotState.UNKNOWN
    with pytest.raises(ValueError, match="unexpected sacct line"):
        parse_sacct("Slurm accounting storage is disabled\n")


# --------------------------------------------------------------------------- scontrol, srun


def test_node_addresses() -> None:
    """Node name -> address from the captured scontrol output of the three test nodes."""
    nodes = parse_node_info(data("scontrol-show-node.txt"))
    assert {name: info.address for name, info in nodes.items()} == {
        "node1": "10.231.0.1",
        "node2": "10.231.2.2",
        "node3": "10.231.3.2",
    }
    assert nodes["node2"].hostname == "node2"
    assert nodes["node2"].partitions == ("debug",)
    assert parse_node_info(data("scontrol-show-node-node2.txt")).keys() == {"node2"}


def test_down_node_has_state_and_reason() -> None:
    """A node whose slurmd died reads as DOWN, with Slurm's reason."""
    node = parse_node_info(data("scontrol-show-node-node3-down.txt"))["node3"]
    assert node.state.startswith("DOWN")
    assert node.reason is not None
    assert node.reason.startswith("Not responding")


def test_probe_output() -> None:
    """Each node's line of the captured probe gives what it read."""
    assert parse_probe(data("srun-probe.txt")) == {
        "node1": "probe-content",
        "node2": "probe-content",
        "node3": "probe-content",
    }
    assert parse_probe("node1\x1f\nnoise\n") == {"node1": ""}


# --------------------------------------------------------------------------- running commands


def fake_command(bin_dir: Path, name: str, body: str) -> None:
    """A stand-in for a Slurm command: a shell script that logs its arguments."""
    path = bin_dir / name
    path.write_text(f'#!/bin/sh\necho "$0 $*" >>"{bin_dir}/calls"\n{body}\n', encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def replay(bin_dir: Path, name: str, captured: str) -> None:
    """A stand-in that replays a captured ``<output>`` + ``exit=N`` file on stderr."""
    *lines, status = data(captured).splitlines()
    (bin_dir / f"{name}.stderr").write_text("\n".join(lines) + "\n", encoding="utf-8")
    fake_command(bin_dir, name, f'cat "{bin_dir}/{name}.stderr" >&2\nexit {status.split("=")[1]}')


def test_sbatch_error_carries_command_status_and_message(tmp_path: Path) -> None:
    """A refused submission raises SlurmError with the command, status and Slurm's words."""
    replay(tmp_path, "sbatch", "sbatch-error-partition.txt")
    cli = SlurmCli(bin_dir=tmp_path)
    job = BatchJob(name="n", argv=["true"], environment={"TOKEN": "s3cret"})
    with pytest.raises(SlurmError) as caught:
        cli.submit(job)
    error = caught.value
    assert error.returncode == 1
    assert "invalid partition specified" in error.stderr
    assert error.command[1:3] == ("--parsable", "--job-name=n")
    assert "Invalid partition name specified" in str(error)
    assert "s3cret" not in str(error)


def test_scancel_of_ended_jobs_is_not_an_error(tmp_path: Path) -> None:
    """Signalling jobs that have ended already (scancel exits 1 for them) succeeds quietly."""
    replay(tmp_path, "scancel", "scancel-signal-finished.txt")
    cli = SlurmCli(bin_dir=tmp_path)
    cli.cancel([105, 999999999], signal="TERM")
    assert "--signal=TERM --full 105 999999999" in (tmp_path / "calls").read_text()


def test_scancel_other_errors_raise(tmp_path: Path) -> None:
    """Any other scancel failure is raised."""
    fake_command(tmp_path, "scancel", "echo 'scancel: error: Access/permission denied' >&2; exit 1")
    with pytest.raises(SlurmError, match="permission denied"):
        SlurmCli(bin_dir=tmp_path).cancel([5])


def test_scancel_options(tmp_path: Path) -> None:
    """Scopes map to --full / --batch / no flag; nothing is run for no jobs; bad signals fail."""
    fake_command(tmp_path, "scancel", "exit 0")
    cli = SlurmCli(bin_dir=tmp_path)
    cli.cancel([])
    cli.cancel([1, 2])
    cli.cancel([3], signal="usr1", scope=CancelScope.BATCH)
    cli.cancel([4], signal=10, scope=CancelScope.STEPS)
    calls = [line.split(" ", 1)[1] for line in (tmp_path / "calls").read_text().splitlines()]
    assert calls == ["1 2", "--signal=USR1 --batch 3", "--signal=10 4"]
    for bad in ("TERM; rm", "", True, -1):
        with pytest.raises(ValueError, match="signal"):
            cli.cancel([5], signal=bad)


def test_sacct_falls_back_to_the_completion_file(tmp_path: Path) -> None:
    """Without accounting storage, history() reads the completion file, and keeps doing so."""
    completion = DATA / "sacct-completion.txt"
    fake_command(
        tmp_path,
        "sacct",
        f'case "$1" in --completion) cat "{completion}";; '
        "*) echo 'Slurm accounting storage is disabled' >&2; exit 1;; esac",
    )
    cli = SlurmCli(bin_dir=tmp_path)
    first = cli.history([1, 2])
    second = cli.history([3])
    assert first == second
    assert any(job.state == "TIMEOUT" for job in first.values())
    calls = (tmp_path / "calls").read_text().splitlines()
    assert [("--completion" in call) for call in calls] == [False, True, True]
    assert cli.history([]) == {}


def test_sacct_accounting_errors_are_not_hidden(tmp_path: Path) -> None:
    """In accounting mode, or for any other error, sacct's failure is raised."""
    fake_command(tmp_path, "sacct", "echo 'sacct: error: slurmdbd: timeout' >&2; exit 1")
    with pytest.raises(SlurmError, match="slurmdbd"):
        SlurmCli(bin_dir=tmp_path).history([1])
    fake_command(tmp_path, "sacct", "echo 'Slurm accounting storage is disabled' >&2; exit 1")
    with pytest.raises(SlurmError, match="disabled"):
        SlurmCli(bin_dir=tmp_path, sacct_mode="accounting").history([1])


def test_unknown_node_raises(tmp_path: Path) -> None:
    """Asking for a node Slurm does not know raises SlurmError with scontrol's message."""
    replay(tmp_path, "scontrol", "scontrol-show-node-unknown.txt")
    with pytest.raises(SlurmError, match="Node nosuchnode not found"):
        SlurmCli(bin_dir=tmp_path).node_address("nosuchnode")


def test_missing_command_is_unavailable(tmp_path: Path) -> None:
    """A Slurm command that is not installed raises SlurmUnavailableError naming it."""
    with pytest.raises(SlurmUnavailableError, match="squeue is not installed"):
        SlurmCli(bin_dir=tmp_path).queue()


def test_a_hung_command_is_stopped_at_the_timeout(tmp_path: Path) -> None:
    """A command that hangs is sent SIGTERM at the timeout and the call raises."""
    marker = tmp_path / "terminated"
    fake_command(tmp_path, "squeue", f"trap 'touch {marker}; exit 1' TERM\nsleep 60 & wait")
    started = time.monotonic()
    with pytest.raises(SlurmTimeoutError, match=r"did not finish within 0\.5 s"):
        SlurmCli(bin_dir=tmp_path, timeout=0.5).queue()
    assert time.monotonic() - started < 30
    assert marker.exists()


def test_a_command_ignoring_sigterm_is_killed(tmp_path: Path) -> None:
    """A command that ignores SIGTERM is killed after a short grace period."""
    fake_command(tmp_path, "squeue", "trap '' TERM\nexec sleep 60")
    started = time.monotonic()
    with pytest.raises(SlurmTimeoutError):
        SlurmCli(bin_dir=tmp_path, timeout=0.5).queue()
    assert time.monotonic() - started < 30


def test_garbage_output_is_an_error(tmp_path: Path) -> None:
    """Output that is not what the command should print raises SlurmError, not a crash."""
    fake_command(tmp_path, "sbatch", "cat >/dev/null; echo 'Submitted batch job 5'")
    with pytest.raises(SlurmError, match="not a job id"):
        SlurmCli(bin_dir=tmp_path).submit(BatchJob(name="n", argv=["true"]))


def test_probe_arguments_are_checked() -> None:
    """The probe needs an absolute path and at least one node."""
    cli = SlurmCli()
    with pytest.raises(ValueError, match="absolute"):
        cli.probe_file("relative/probe")
    with pytest.raises(ValueError, match="at least 1"):
        cli.probe_file("/probe", nodes=0)
    with pytest.raises(ValueError, match="timeout"):
        SlurmCli(timeout=0)
