"""Job types with several processes: masters and workers, arrays, Generic, restart policies;
scaling, arrays and restarts on every backend."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from server_support import BOTH_BACKENDS, Api
from support import wait_until, write_script

MASTER = (
    "import os, time\n"
    "print('master', os.environ['JRUN_CLUSTER_COOKIE'], flush=True)\n"
    "while not os.path.exists('finish'):\n"
    "    time.sleep(0.02)\n"
    "print('master done', flush=True)\n"
)
WORKER = (
    "import os, time\n"
    "print(os.environ['JRUN_PROC'], os.environ['JRUN_CLUSTER_COOKIE'], os.environ.get('W'),\n"
    "      flush=True)\n"
    "time.sleep(60)\n"
)
CRASH = "import os, sys\nprint('start', os.environ['JRUN_PROC'], flush=True)\nsys.exit(1)\n"


@BOTH_BACKENDS
def test_parallel_job_scales_up_and_down(api: Api, volume: Path) -> None:
    """JuliaParBatch runs master + nworkers workers, follows setJobScale, ends with the master."""
    write_script(volume, "master.py", MASTER)
    write_script(volume, "worker.py", WORKER)
    api.data(
        "submitJob",
        "JuliaParBatch",
        name="par",
        start_script="master.py",
        worker_start_script="worker.py",
        run_volume="work",
        nworkers=2,
        worker_envvars='{"W": "w"}',
    )
    api.wait_scale("JuliaParBatch", "par", 2)
    assert api.data("getJobScale", "JuliaParBatch", name="par") == [2, 2]
    assert api.data("setJobScale", "JuliaParBatch", name="par", parallelism=3) is True
    api.wait_scale("JuliaParBatch", "par", 3)
    status = api.status("JuliaParBatch", "par")
    assert status["phase"] == "running"
    assert status["parallelism"] == 3
    assert status["nuptodate"] == 3
    assert status["npending"] == 0
    lines = api.wait_lines("JuliaParBatch", "par", 4)
    master_cookie = next(line.split()[1] for line in lines if line.startswith("master"))
    workers = {line.split()[0]: line.split()[1:] for line in lines if line.startswith("worker")}
    assert set(workers) == {"worker-1", "worker-2", "worker-3"}
    assert all(rest == [master_cookie, "w"] for rest in workers.values())

    assert api.data("setJobScale", "JuliaParBatch", name="par", parallelism=1) is True
    api.wait_scale("JuliaParBatch", "par", 1)
    assert api.data("getJobScale", "JuliaParBatch", name="par") == [1, 1]

    (volume / "finish").touch()
    status = api.wait_done("JuliaParBatch", "par")
    assert status["phase"] == "succeeded"
    api.wait_scale("JuliaParBatch", "par", 0)
    assert api.lines("JuliaParBatch", "par")[-1] == "master done"


def test_worker_update_applies_to_new_workers(api: Api, volume: Path) -> None:
    """updateJob nworkers rescales, and new worker_envvars reach workers started afterwards."""
    write_script(volume, "master.py", MASTER)
    write_script(volume, "worker.py", WORKER)
    api.data(
        "submitJob",
        "JuliaParBatch",
        name="upd",
        start_script="master.py",
        worker_start_script="worker.py",
        run_volume="work",
        nworkers=1,
    )
    api.wait_scale("JuliaParBatch", "upd", 1)
    api.data("updateJob", "JuliaParBatch", name="upd", nworkers=2, worker_envvars='{"W": "new"}')
    api.wait_scale("JuliaParBatch", "upd", 2)
    lines = api.wait_lines("JuliaParBatch", "upd", 3)
    assert any(line.startswith("worker-1") and line.endswith("None") for line in lines)
    assert any(line.startswith("worker-2") and line.endswith("new") for line in lines)
    status = api.status("JuliaParBatch", "upd")
    assert status["nuptodate"] == 1  # worker-1 still runs the first definition
    api.data("deleteJob", "JuliaParBatch", name="upd", force="true")


def test_restart_policies(api: Api, volume: Path) -> None:
    """A crashing worker is restarted with RestartAlways (with backoff) and not with Never."""
    write_script(volume, "master.py", MASTER)
    write_script(volume, "crash.py", CRASH)
    for name, policy in (("always", "RestartAlways"), ("never", "Never")):
        api.data(
            "submitJob",
            "JuliaParBatch",
            name=name,
            start_script="master.py",
            worker_start_script="crash.py",
            run_volume="work",
            nworkers=1,
            restart=policy,
        )
    wait_until(
        lambda: api.status("JuliaParBatch", "always")["restarts"].get("worker-1", 0) >= 3,
        what="three restarts",
    )
    never = api.status("JuliaParBatch", "never")
    assert never["restarts"] == {}
    assert never["exit_codes"] == {"worker-1": 1}
    assert api.data("getJobScale", "JuliaParBatch", name="never") == [0, 1]
    assert sum(line == "start worker-1" for line in api.lines("JuliaParBatch", "never")) == 1
    for name in ("always", "never"):
        api.data("deleteJob", "JuliaParBatch", name=name, force="true")


@BOTH_BACKENDS
def test_restart_on_failure_skips_clean_exits(api: Api, volume: Path) -> None:
    """RestartOnFailure restarts a worker that failed but not one that exited 0; the status
    says how each ended."""
    write_script(volume, "master.py", MASTER)
    write_script(
        volume,
        "half.py",
        "import os, sys\nprint('run', flush=True)\n"
        "sys.exit(0 if os.environ['JRUN_PROC'] == 'worker-1' else 2)\n",
    )
    api.data(
        "submitJob",
        "JuliaParBatch",
        name="onfail",
        start_script="master.py",
        worker_start_script="half.py",
        run_volume="work",
        nworkers=2,
        restart="RestartOnFailure",
    )
    status = api.wait_status(
        "JuliaParBatch",
        "onfail",
        lambda status: status["restarts"].get("worker-2", 0) >= 2,
        "worker-2 restarts",
    )
    assert "worker-1" not in status["restarts"]
    assert status["exit_codes"]["worker-1"] == 0
    # Each slot says how its last process ended, also while its next one runs.
    assert status["exit_reasons"]["worker-1"] == "exited with code 0"
    assert status["exit_reasons"]["worker-2"] == "exited with code 2"
    assert "master" not in status["exit_reasons"]
    assert status["nworkers_succeeded"] == 1
    api.data("deleteJob", "JuliaParBatch", name="onfail", force="true")


@BOTH_BACKENDS
def test_job_array_runs_every_unit_to_completion(api: Api, volume: Path) -> None:
    """JuliaParBatchWorkers runs nworkers independent units and succeeds when all do."""
    write_script(volume, "unit.sh", 'echo "unit $JRUN_PROC"\n')
    api.data(
        "submitJob",
        "JuliaParBatchWorkers",
        name="arr",
        start_script="unit.sh",
        run_volume="work",
        nworkers=3,
    )
    status = api.wait_done("JuliaParBatchWorkers", "arr")
    assert status["phase"] == "succeeded"
    assert status["nworkers_succeeded"] == 3
    assert status["parallelism"] == 3
    assert sorted(api.lines("JuliaParBatchWorkers", "arr")) == [
        "unit worker-1",
        "unit worker-2",
        "unit worker-3",
    ]


def test_job_array_waits_for_scale_then_fails_with_never(api: Api, volume: Path) -> None:
    """An array with no units is pending until scaled; a failed unit with Never fails it."""
    write_script(volume, "crash.py", CRASH)
    api.data(
        "submitJob",
        "JuliaParBatchWorkers",
        name="arr",
        start_script="crash.py",
        run_volume="work",
        restart="Never",
    )
    assert api.status("JuliaParBatchWorkers", "arr")["phase"] == "pending"
    assert api.data("getJobScale", "JuliaParBatchWorkers", name="arr") == [0, 0]
    assert api.data("setJobScale", "JuliaParBatchWorkers", name="arr", parallelism=2) is True
    status = api.wait_done("JuliaParBatchWorkers", "arr")
    assert status["phase"] == "failed"
    assert "2 of 2 units failed" in status["message"]


def test_generic_runs_command_without_a_shell(api: Api, volume: Path) -> None:
    """Generic runs command with args literally: shell syntax in an argument does nothing."""
    args = [
        "-c",
        "import json, sys; print(json.dumps(sys.argv[1:]))",
        "$(touch pwned)",
        "a b",
        "; touch x",
    ]
    api.data(
        "submitJob",
        "Generic",
        name="gen",
        image="python:3",
        command=sys.executable,
        args=json.dumps(args),
        run_volume="work",
        nworkers=2,
    )
    status = api.wait_done("Generic", "gen")
    assert status["phase"] == "succeeded"
    assert status["nworkers_succeeded"] == 2
    assert status["image"] == "python:3"
    lines = api.lines("Generic", "gen")
    assert [json.loads(line) for line in lines] == [args[2:], args[2:]]
    assert not (volume / "pwned").exists()
    assert not (volume / "x").exists()


def test_generic_without_command_fails_clearly(api: Api) -> None:
    """A Generic job without command fails, saying that a command is needed locally."""
    api.data("submitJob", "Generic", name="gen", image="busybox", run_volume="work")
    status = api.wait_done("Generic", "gen")
    assert status["phase"] == "failed"
    assert "command" in status["message"]


def test_services_say_what_to_install(api: Api, volume: Path) -> None:
    """Notebook, Webserver and MessageQ fail with an install hint when their program is absent."""
    (volume / "site.conf").write_text("events {}\n")
    env = '{"PATH": "/nonexistent"}'
    api.data("submitJob", "Notebook", name="nb", run_volume="work", envvars=env)
    api.data(
        "submitJob", "Webserver", name="web", run_volume="work", cfg_file="site.conf", envvars=env
    )
    api.data(
        "submitJob", "MessageQ", name="mq", run_volume="work", cfg_file="site.conf", envvars=env
    )
    hints = {
        "Notebook": ("nb", "Jupyter"),
        "Webserver": ("web", "nginx"),
        "MessageQ": ("mq", "RabbitMQ"),
    }
    for kind, (name, program) in hints.items():
        status = api.wait_done(kind, name)
        assert status["phase"] == "failed"
        assert "install" in status["message"]
        assert program in status["message"]
    _, ports = api.data("getJobEndpoint", "MessageQ", name="mq")
    assert set(ports) == {"amqptls", "amqp", "mgmttls", "mgmt"}
    assert api.data("getEncodedURL", "Notebook", name="nb", port="8888").startswith(
        "http://127.0.0.1:"
    )


def test_pkg_builder_runs_builder_script(api: Api, volume: Path) -> None:
    """PkgBuilder runs builder_script with the bundle directory in JULIA_LOAD_PATH."""
    write_script(
        volume, "build.py", "import os\nprint(os.environ['JULIA_LOAD_PATH'].endswith(':'))\n"
    )
    api.data(
        "submitJob",
        "PkgBuilder",
        name="pkg",
        builder_script="build.py",
        run_volume="work",
        pkg_bundle="bundle",
    )
    assert api.wait_done("PkgBuilder", "pkg")["phase"] == "succeeded"
    assert api.lines("PkgBuilder", "pkg") == ["True"]


def test_service_runs_the_installed_program(api: Api, volume: Path, tmp_path: Path) -> None:
    """A Webserver job runs the nginx found on PATH with -c cfg_file, in the foreground."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    write_script(bin_dir, "nginx", f"#!{sys.executable}\nimport sys\nprint(sys.argv[1:])\n")
    (volume / "site.conf").write_text("events {}\n")
    env = json.dumps({"PATH": f"{bin_dir}:/usr/bin:/bin"})
    api.data(
        "submitJob", "Webserver", name="web", run_volume="work", cfg_file="site.conf", envvars=env
    )
    assert api.wait_done("Webserver", "web")["phase"] == "succeeded"
    assert api.lines("Webserver", "web") == [
        str(["-c", str(volume.resolve() / "site.conf"), "-g", "daemon off;"])
    ]
