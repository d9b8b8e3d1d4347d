"""The Slurm command wrapper against a real three-node cluster (``scripts/slurm-up.sh``)."""

from __future__ import annotations

import socket
import time
from functools import partial
from pathlib import Path

import pytest
from slurm_support import NODES, SlotNamer, eventually, wait_for_job

from juliarun_aio.server._slurm_cli import (
    BatchJob,
    CancelScope,
    ExitStatus,
    ExportPolicy,
    QueuedJob,
    SlotState,
    SlurmCli,
    SlurmError,
)

pytestmark = pytest.mark.slurm


def running(job: QueuedJob) -> bool:
    """The job has its node and runs."""
    return job.status.state is SlotState.RUNNING


def finished(job: QueuedJob) -> bool:
    """The job has ended for good."""
    return job.status.state.finished


def read_if_there(path: Path) -> str | None:
    """The file's text, or None while it does not exist."""
    return path.read_text() if path.exists() else None


def proctrack(slurm: SlurmCli) -> str:
    """The cluster's process tracking plugin (``proctrack/cgroup``...)."""
    for line in slurm.run(["scontrol", "show", "config"]).splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "ProctrackType":
            return value.strip()
    return ""


def test_submit_run_and_finish(slurm: SlurmCli, names: SlotNamer, tmp_path: Path) -> None:
    """A job runs with its environment and literal output path; squeue and sacct tell its end."""
    out = tmp_path / "100% %j out"
    job_id = slurm.submit(
        BatchJob(
            name=names(),
            argv=["sh", "-c", 'printf "%s|%s\\n" "$GREETING" "$SLURM_CPUS_PER_TASK"; exit 7'],
            environment={"GREETING": "hello 'quoted' $world"},
            cpu="1500m",
            memory="64Mi",
            time_limit=120,
            stdout=out,
        )
    )
    ended = wait_for_job(slurm, job_id, names.prefix, finished, "to end")
    assert ended.name == names()
    assert ended.exit_status == ExitStatus(7, 0)
    assert ended.status.state is SlotState.FAILED
    assert ended.status.reason.startswith("failed with exit status 7")
    assert out.read_text() == "hello 'quoted' $world|2\n"
    record = eventually(lambda: slurm.history([job_id]).get(job_id), "a sacct record")
    assert (record.state, record.exit_status, record.name) == ("FAILED", ExitStatus(7, 0), names())


def test_only_policy_hides_the_servers_environment(
    slurm: SlurmCli, names: SlotNamer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ExportPolicy.ONLY gives the job its variables and none of the submitter's own."""
    monkeypatch.setenv("JR_SERVER_ONLY", "do-not-leak")
    out = tmp_path / "env"
    job_id = slurm.submit(
        BatchJob(
            name=names(),
            argv=["sh", "-c", "env"],
            environment={"JOB_VAR": "yes"},
            export=ExportPolicy.ONLY,
            stdout=out,
        )
    )
    wait_for_job(slurm, job_id, names.prefix, finished, "to end")
    seen = out.read_text().splitlines()
    assert "JOB_VAR=yes" in seen
    assert not any(line.startswith("JR_SERVER_ONLY=") for line in seen)


def test_pending_then_cancelled(slurm: SlurmCli, names: SlotNamer) -> None:
    """A held job is pending with its reason; cancelled, it ends without ever running."""
    job_id = slurm.submit(BatchJob(name=names(), argv=["true"], extra_args=["--hold"]))
    held = wait_for_job(slurm, job_id, names.prefix, lambda job: True, "to be listed")
    assert held.status.state is SlotState.PENDING
    assert held.status.reason.startswith("held by its owner")
    slurm.cancel([job_id])
    ended = wait_for_job(slurm, job_id, names.prefix, finished, "to be cancelled", timeout=30)
    assert ended.status.state is SlotState.CANCELLED
    assert ended.nodes is None


def test_signal_then_cancel_a_running_job(
    slurm: SlurmCli, names: SlotNamer, tmp_path: Path
) -> None:
    """A signal reaches the program and leaves the job running; cancel then ends it."""
    out = tmp_path / "out"
    script = "trap 'echo got-usr1' USR1; echo started; while :; do sleep 0.1; done"
    job_id = slurm.submit(BatchJob(name=names(), argv=["sh", "-c", script], stdout=out))
    wait_for_job(slurm, job_id, names.prefix, running, "to run")
    eventually(lambda: "started" in (read_if_there(out) or "") or None, "the start", 30)
    slurm.cancel([job_id], signal="USR1", scope=CancelScope.FULL)
    eventually(lambda: "got-usr1" in out.read_text() or None, "the signal to arrive", 30)
    assert any(job.job_id == job_id and running(job) for job in slurm.queue(names.prefix))
    slurm.cancel([job_id])
    ended = wait_for_job(slurm, job_id, names.prefix, finished, "to be cancelled", timeout=30)
    assert ended.status.state is SlotState.CANCELLED
    slurm.cancel([job_id])
    slurm.cancel([job_id], signal="TERM")


def test_jobs_spread_over_the_nodes_and_are_reachable(
    slurm: SlurmCli, names: SlotNamer, tmp_path: Path
) -> None:
    """A job on each node serves TCP at that node's address, reachable from this machine."""
    server = (
        "import os, socket, sys\n"
        "s = socket.socket()\n"
        "s.bind(('0.0.0.0', 0))\n"
        "s.listen()\n"
        "open(sys.argv[1] + '.tmp', 'w').write(str(s.getsockname()[1]))\n"
        "os.rename(sys.argv[1] + '.tmp', sys.argv[1])\n"
        "c, _ = s.accept()\n"
        "c.sendall(os.environ['SLURMD_NODENAME'].encode())\n"
        "c.close()\n"
    )
    ids = {}
    for index, node in enumerate(NODES, start=1):
        port_file = tmp_path / f"{node}.port"
        ids[node] = slurm.submit(
            BatchJob(
                name=names(f"worker-{index}"),
                argv=["python3", "-c", server, str(port_file)],
                extra_args=[f"--nodelist={node}"],
                time_limit=120,
            )
        )
    jobs = {job.job_id: job for job in slurm.queue(names.prefix)}
    assert set(jobs) == set(ids.values())
    for node, job_id in ids.items():
        job = wait_for_job(slurm, job_id, names.prefix, running, "to run")
        assert job.nodes == node
        address = slurm.node_address(node)
        assert address == NODES[node]
        port_file = tmp_path / f"{node}.port"
        port = int(eventually(partial(read_if_there, port_file), f"the port of {node}", 30))
        with socket.create_connection((address, port), timeout=10) as conn:
            assert conn.recv(100) == node.encode()
        ended = wait_for_job(slurm, job_id, names.prefix, finished, "to end")
        assert ended.status.state is SlotState.SUCCEEDED


def test_one_squeue_call_lists_only_the_prefix(slurm: SlurmCli, names: SlotNamer) -> None:
    """queue(prefix) returns this job's slots and nothing of other jobs listed beside them."""
    ids = [
        slurm.submit(BatchJob(name=names(slot), argv=["true"], extra_args=["--hold"]))
        for slot in ("master", "worker-1", "worker-2")
    ]
    listed = slurm.queue(names.prefix)
    assert sorted(job.job_id for job in listed) == sorted(ids)
    assert {job.name.rsplit(".", 1)[1] for job in listed} == {"master", "worker-1", "worker-2"}
    everything = slurm.queue()
    assert set(ids) <= {job.job_id for job in everything}


def test_probe_reads_a_shared_file_on_every_node(slurm: SlurmCli, tmp_path: Path) -> None:
    """The probe sees the file this machine wrote on all three nodes, and '' where none is."""
    probe = tmp_path / "probe"
    probe.write_text("token-4711\nsecond line\n")
    assert slurm.probe_file(probe, nodes=len(NODES)) == dict.fromkeys(NODES, "token-4711")
    missing = slurm.probe_file(tmp_path / "missing", nodes=len(NODES))
    assert missing == dict.fromkeys(NODES, "")


def test_refused_submission_leaves_nothing_queued(slurm: SlurmCli, names: SlotNamer) -> None:
    """An unknown partition raises SlurmError with Slurm's reason; no job of ours is listed."""
    with pytest.raises(SlurmError, match="Invalid partition name specified") as caught:
        slurm.submit(BatchJob(name=names(), argv=["true"], partition="nosuchpartition"))
    assert caught.value.returncode == 1
    assert slurm.queue(names.prefix) == []


def test_history_of_unknown_jobs_is_empty(slurm: SlurmCli) -> None:
    """sacct knows nothing of a job id never used: the result has no entry for it."""
    assert slurm.history([999_999_999]) == {}


def test_out_of_memory(slurm: SlurmCli, names: SlotNamer) -> None:
    """A job that outgrows --mem ends OUT_OF_MEMORY, a failure saying so (cgroup clusters)."""
    if proctrack(slurm) != "proctrack/cgroup":
        pytest.skip("memory is enforced only with proctrack/cgroup and task/cgroup")
    job_id = slurm.submit(
        BatchJob(
            name=names(),
            argv=["python3", "-c", "b = bytearray(1 << 30); print(len(b))"],
            memory="64Mi",
        )
    )
    ended = wait_for_job(slurm, job_id, names.prefix, finished, "to end")
    assert ended.state == "OUT_OF_MEMORY"
    assert ended.status.state is SlotState.FAILED
    assert "ran out of memory" in ended.status.reason


def test_cancel_ends_double_forked_processes(
    slurm: SlurmCli, names: SlotNamer, tmp_path: Path
) -> None:
    """scancel ends a daemonised grandchild too (it stays in the job's cgroup)."""
    if proctrack(slurm) != "proctrack/cgroup":
        pytest.skip("proctrack/linuxproc lets daemonised processes escape scancel")
    pid_file = tmp_path / "pid"
    grandchild = f"echo $$ > {pid_file}.tmp; mv {pid_file}.tmp {pid_file}; exec sleep 600"
    script = f"setsid sh -c '{grandchild}' & sleep 600"
    job_id = slurm.submit(BatchJob(name=names(), argv=["sh", "-c", script]))
    wait_for_job(slurm, job_id, names.prefix, running, "to run")
    eventually(lambda: pid_file.exists() or None, "the grandchild's pid", 30)
    pid = int(pid_file.read_text())
    assert Path(f"/proc/{pid}").exists()
    slurm.cancel([job_id])
    wait_for_job(slurm, job_id, names.prefix, finished, "to be cancelled", timeout=30)
    eventually(lambda: (not Path(f"/proc/{pid}").exists()) or None, "the grandchild to end", 30)


def test_a_probe_that_cannot_get_its_nodes_fails(slurm: SlurmCli, tmp_path: Path) -> None:
    """A probe asking for more nodes than there are fails and leaves no job waiting."""
    probe = tmp_path / "probe"
    probe.write_text("x\n")
    name = f"jr-probe-{time.monotonic_ns()}"
    with pytest.raises(SlurmError):
        slurm.probe_file(probe, nodes=len(NODES) + 1, name=name, timeout=3)
    listed = slurm.run(["squeue", "--noheader", "--me", "--format=%j %T"]).splitlines()
    assert not any(line.startswith(f"{name} ") and "PENDING" in line for line in listed)
