"""The spare launcher: a local start handed to a launcher started ahead runs the same way."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from support import QUICK_KILL, Api, wait_until, write_script

from juliarun_aio.server import ServerProcess, _spare
from juliarun_aio.server._backend import SlotId
from juliarun_aio.server._backend_local import _LAUNCHER, launch
from juliarun_aio.server._launcher import Tree
from juliarun_aio.server._runtime import LaunchPlan
from juliarun_aio.server._spare import SPARE_VARIABLE, SPARES, SparePool

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="spare launchers are found through /proc"
)

#: Reports what the job's program was given (environment, directory, limit, stdin, process
#: group), writes a line to each log, and on SIGTERM says so in a file and exits.
REPORT = """\
import json, os, resource, signal, sys, time
name = os.environ["JRUN_NAME"] + "-" + os.environ["JRUN_PROC"]
def stop(signum, frame):
    with open(name + ".stopped", "w") as fh:
        fh.write(signal.Signals(signum).name)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print("to stdout", name, flush=True)
print("to stderr", name, file=sys.stderr, flush=True)
report = {
    "env": dict(os.environ),
    "cwd": os.getcwd(),
    "limit": resource.getrlimit(resource.RLIMIT_AS)[0],
    "pid": os.getpid(),
    "stdin": os.readlink("/proc/self/fd/0"),
    "own_group": os.getpgid(0) == os.getpid(),
}
with open(name + ".tmp", "w") as fh:
    json.dump(report, fh)
os.replace(name + ".tmp", name + ".json")
while os.environ.get("REPORT_MODE") == "stay":
    time.sleep(0.05)
"""
#: What differs between two runs of the same job whatever launched it (and the switch).
VARYING = ("JRUN_", "JULIARUN_AIO_SLOT", SPARE_VARIABLE)


def _volume(data_dir: Path) -> Path:
    return data_dir / "namespaces" / "default" / "volumes" / "work"


def spares_of(server: ServerProcess) -> list[psutil.Process]:
    """The spare launchers the server keeps waiting (a taken one runs a program)."""
    found = []
    for child in psutil.Process(server.pid).children():
        with contextlib.suppress(psutil.NoSuchProcess):
            if (
                "--spare" in child.cmdline()
                and child.status() != psutil.STATUS_ZOMBIE
                and not child.children()
            ):
                found.append(child)
    return found


def waiting_spares(
    server: ServerProcess, what: str = "the spare launchers"
) -> list[psutil.Process]:
    """Wait until the server keeps all its spare launchers waiting; return them."""

    def every_spare() -> list[psutil.Process]:
        found = spares_of(server)
        return found if len(found) == SPARES else []

    return wait_until(every_spare, 30, what)


def launcher_of(report: dict[str, Any]) -> psutil.Process:
    """The launcher that ran the program of ``report``."""
    parent = psutil.Process(report["pid"]).parent()
    assert parent is not None
    return parent


def read_report(volume: Path, name: str) -> dict[str, Any]:
    """Wait for the report of ``name`` (``<job>-<proc>``) and read it."""
    path = volume / f"{name}.json"
    wait_until(path.exists, 30, path.name)
    report: dict[str, Any] = json.loads(path.read_text())
    return report


def submit_report(api: Api, name: str, **params: Any) -> None:
    """Submit a job running the report script in the ``work`` volume."""
    if "envvars" in params:
        params["envvars"] = json.dumps(params["envvars"])
    api.data(
        "submitJob", "JuliaBatch", name=name, start_script="report.py", run_volume="work", **params
    )


@pytest.fixture
def report_server(
    tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[ServerProcess, Api]]:
    """A server process with the report script, spare launchers on (or off: ``"off"``)."""
    monkeypatch.setenv(SPARE_VARIABLE, "0" if getattr(request, "param", "on") == "off" else "1")
    data_dir = tmp_path / "data"
    write_script(_volume(data_dir), "report.py", REPORT)
    with ServerProcess(data_dir, args=(*QUICK_KILL, "--stop-jobs")) as server:
        api = Api(server.url, server.token, server.namespace)
        try:
            yield server, api
        finally:
            api.close()


def _run_and_stop(server: ServerProcess, api: Api, *, spare: bool) -> dict[str, Any]:
    """Run the report job, check its logs and its stop, return its report."""
    volume = _volume(server.data_dir)
    if spare:
        waiting_spares(server)
    submit_report(api, "job", memory="300Mi", envvars={"REPORT_MODE": "stay", "MINE": "a b=c"})
    report = read_report(volume, "job-master")
    assert ("--spare" in launcher_of(report).cmdline()) is spare
    wait_until(
        lambda: api.data("tailJob", "JuliaBatch", name="job", count=10, stream="stderr"),
        30,
        "the job's stderr",
    )
    stdout = api.data("tailJob", "JuliaBatch", name="job", count=10, stream="stdout")
    stderr = api.data("tailJob", "JuliaBatch", name="job", count=10, stream="stderr")
    assert stdout.strip().splitlines() == ["to stdout job-master"]
    assert stderr.strip().splitlines() == ["to stderr job-master"]
    # Deleting stops it: SIGTERM, forwarded by the launcher.
    api.data("deleteJob", "JuliaBatch", name="job", force=True)
    stopped = volume / "job-master.stopped"
    wait_until(stopped.exists, 30, stopped.name)
    assert stopped.read_text() == "SIGTERM"
    return report


@pytest.mark.parametrize("report_server", ["on", "off"], indirect=True)
def test_a_job_runs_the_same_under_a_spare_or_its_own_launcher(
    report_server: tuple[ServerProcess, Api], request: pytest.FixtureRequest
) -> None:
    """Environment, directory, memory limit, stdin, process group, logs, SIGTERM: as asked."""
    server, api = report_server
    spare = "off" not in request.node.callspec.id
    report = _run_and_stop(server, api, spare=spare)
    assert report["cwd"] == str(_volume(server.data_dir).resolve())
    assert report["limit"] == 300 * 1024 * 1024
    assert report["stdin"] == "/dev/null"
    assert report["own_group"] is True
    env = report["env"]
    assert env["MINE"] == "a b=c"
    assert env["JRUN_NAME"] == "job"
    assert env["JRUN_PROC"] == "master"
    assert env["JULIARUN_AIO_SLOT"]


def test_the_spare_leaks_nothing_of_its_own_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The program's environment under a spare is the one a launcher of its own gives it."""
    reports = {}
    for mode in ("1", "0"):
        monkeypatch.setenv(SPARE_VARIABLE, mode)
        data_dir = tmp_path / f"data-{mode}"
        write_script(_volume(data_dir), "report.py", REPORT)
        with ServerProcess(data_dir, args=(*QUICK_KILL, "--stop-jobs")) as server:
            api = Api(server.url, server.token, server.namespace)
            try:
                reports[mode] = _run_and_stop(server, api, spare=mode == "1")["env"]
            finally:
                api.close()
    warm, cold = (
        {k: v for k, v in env.items() if not k.startswith(VARYING)} for env in reports.values()
    )
    assert warm == cold
    assert {k for k in reports["1"] if k.startswith(VARYING)} == {
        k for k in reports["0"] if k.startswith(VARYING)
    }


def test_killed_spares_lose_no_submission(report_server: tuple[ServerProcess, Api]) -> None:
    """Spares killed while they wait: the next job still runs, and new spares take their place."""
    server, api = report_server
    killed = waiting_spares(server)
    for spare in killed:
        spare.kill()
        spare.wait(10)
    submit_report(api, "after-kill")
    assert api.wait_done("JuliaBatch", "after-kill", timeout=30)["phase"] == "succeeded"
    report = read_report(_volume(server.data_dir), "after-kill-master")
    assert report["env"]["JRUN_NAME"] == "after-kill"
    assert "to stdout after-kill-master" in api.data(
        "tailJob", "JuliaBatch", name="after-kill", count=5, stream="stdout"
    )
    new = waiting_spares(server, "new spares")
    assert not {spare.pid for spare in new} & {spare.pid for spare in killed}
    spares = server.data_dir / "spares"
    wait_until(lambda: len(list(spares.glob("spare-*.tree"))) == SPARES, 30, "their tree files")


def test_slots_started_at_once_all_run(report_server: tuple[ServerProcess, Api]) -> None:
    """A master and two workers starting together (one spare): each runs as itself."""
    server, api = report_server
    waiting_spares(server)
    api.data(
        "submitJob",
        "JuliaParBatch",
        name="par",
        start_script="report.py",
        worker_start_script="report.py",
        run_volume="work",
        nworkers=2,
        envvars=json.dumps({"REPORT_MODE": "stay"}),
        worker_envvars=json.dumps({"REPORT_MODE": "stay"}),
    )
    volume = _volume(server.data_dir)
    procs = ("master", "worker-1", "worker-2")
    reports = {proc: read_report(volume, f"par-{proc}") for proc in procs}
    assert {proc: report["env"]["JRUN_PROC"] for proc, report in reports.items()} == {
        proc: proc for proc in procs
    }
    assert len({report["env"]["JULIARUN_AIO_SLOT"] for report in reports.values()}) == 3
    assert len({launcher_of(report).pid for report in reports.values()}) == 3

    def logged() -> bool:
        stdout = api.data("tailJob", "JuliaParBatch", name="par", count=30, stream="stdout")
        return all(f"to stdout par-{proc}" in stdout for proc in procs)

    wait_until(logged, 30, "a line of each process in the log")


def test_a_spare_waiting_through_a_delete_takes_the_next_job(
    report_server: tuple[ServerProcess, Api],
) -> None:
    """Deleting a job leaves the waiting spare alone; the next submission runs under it."""
    server, api = report_server
    ready = {spare.pid for spare in waiting_spares(server)}
    submit_report(api, "first", envvars={"REPORT_MODE": "stay"})
    first = read_report(_volume(server.data_dir), "first-master")
    assert launcher_of(first).pid in ready
    waiting = waiting_spares(server, "the spare launchers again")
    api.data("deleteJob", "JuliaBatch", name="first", force=True)
    wait_until(lambda: not psutil.pid_exists(first["pid"]), 30, "the first job to end")
    assert all(spare.is_running() for spare in waiting)
    submit_report(api, "second", envvars={"REPORT_MODE": "stay"})
    second = read_report(_volume(server.data_dir), "second-master")
    assert launcher_of(second).pid in {spare.pid for spare in waiting}
    assert api.status("JuliaBatch", "second")["phase"] == "running"


@pytest.mark.parametrize("with_spares", [True, False])
def test_a_working_directory_that_cannot_be_entered_fails_the_start(
    tmp_path: Path, with_spares: bool
) -> None:
    """A start in a missing directory raises FileNotFoundError, as without a spare."""
    spares = None
    if with_spares:
        spares = SparePool(_LAUNCHER, tmp_path / "spares", "auto")
        (tmp_path / "spares").mkdir()
        spares.open()
    try:
        plan = LaunchPlan(
            argv=["/bin/true"], env=dict(os.environ), cwd=tmp_path / "missing", memory_bytes=None
        )
        for name in ("out", "err"):
            (tmp_path / f"slot.{name}").touch()
        with pytest.raises(FileNotFoundError, match="missing"):
            launch(
                SlotId("default", "job", "0" * 16, "master"),
                "master-1",
                plan,
                stdout=tmp_path / "slot.out",
                stderr=tmp_path / "slot.err",
                exit_path=tmp_path / "slot.exit",
                spares=spares,
            )
        assert not (tmp_path / "slot.exit").exists()
    finally:
        if spares is not None:
            spares.close()
    if with_spares:  # the spare that was asked is gone, and so is the one started after it
        assert not list((tmp_path / "spares").glob("*"))


def _own_spares() -> list[psutil.Process]:
    """The spare launchers this process started that wait for a slot."""
    return [
        child
        for child in psutil.Process().children()
        if "--spare" in child.cmdline() and not child.children()
    ]


def test_a_spare_that_does_not_answer_is_killed_and_the_slot_starts_anyway(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A spare stopped (SIGSTOP) when its slot comes: it is killed, a launcher runs the slot."""
    monkeypatch.setattr(_spare, "HANDOVER_TIMEOUT", 0.5)
    spare_dir = tmp_path / "spares"
    spare_dir.mkdir()
    spares = SparePool(_LAUNCHER, spare_dir, "auto")
    spares.open()
    try:
        pid = wait_until(lambda: spares.ready_pid, 30, "a spare launcher ready")
        waiting = psutil.Process(pid)
        waiting.suspend()
        for name in ("out", "err"):
            (tmp_path / f"slot.{name}").touch()
        plan = LaunchPlan(
            argv=["/bin/sh", "-c", "echo ran"],
            env=dict(os.environ),
            cwd=tmp_path,
            memory_bytes=None,
        )
        process = launch(
            SlotId("default", "job", "0" * 16, "master"),
            "master-1",
            plan,
            stdout=tmp_path / "slot.out",
            stderr=tmp_path / "slot.err",
            exit_path=tmp_path / "slot.exit",
            spares=spares,
        )
        assert process.pid != waiting.pid
        ended = wait_until(process.poll, 30, "the slot to end")
        assert ended is not None
        assert ended.code == 0
        assert (tmp_path / "slot.out").read_text() == "ran\n"
        assert not waiting.is_running()
    finally:
        spares.close()
    assert not _own_spares()
    assert not list(spare_dir.glob("*"))


def test_spares_are_gone_once_the_server_stops(report_server: tuple[ServerProcess, Api]) -> None:
    """The server stops: its spare launchers, their tree files and their cgroups are gone."""
    server, _ = report_server
    spares = waiting_spares(server)

    def recorded() -> list[Tree | None]:
        found = [Tree.load(path) for path in map(_tree_file_of, spares)]
        return found if all(found) else []

    trees = wait_until(recorded, 30, "the spares' tree files")
    server.stop()
    assert not any(spare.is_running() for spare in spares)
    assert not list((server.data_dir / "spares").glob("spare-*"))
    for tree in trees:
        assert tree is not None
        assert tree.cgroup is None or not Path(tree.cgroup).exists()


def _tree_file_of(spare: psutil.Process) -> str:
    arguments: list[str] = spare.cmdline()
    return arguments[arguments.index("--tree-file") + 1]
