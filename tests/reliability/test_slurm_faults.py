"""Faults of a real Slurm cluster under the server's Slurm backend: a node's slurmd killed, the
controller restarted while jobs run, the server SIGKILLed between sbatch and its record."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from reliability_support import record
from support import (
    SLURM_ARGS,
    SLURM_HOST,
    SLURM_SERVER,
    Api,
    cancel_slurm_jobs,
    wait_until,
    write_script,
)

from juliarun_aio.server import LocalServer, ServerProcess
from juliarun_aio.server._slurm_cli import SlotName, SlurmCli

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
RUN = Path("/run/slurm")
#: Short grace and backoff so that stops and restarts are quick.
FAST: dict[str, Any] = {"kill_grace": 0.5, "restart_backoff": 0.05, "restart_backoff_max": 0.2}
TOKENS = {"default": "slurm-faults-token"}
#: Prints ``<proc> <n>`` every 50 ms, numbered from 1, until it is stopped.
COUNTER = """\
import os, time
n = 0
while True:
    n += 1
    print(os.environ["JRUN_PROC"], n, flush=True)
    time.sleep(0.05)
"""


def slurm_up() -> None:
    """Bring every daemon of the test cluster back (idempotent), as CI started them."""
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "slurm-up.sh"), "--nodes", "3"],
        check=True,
        capture_output=True,
        timeout=180,
    )


def live_jobs(slurm: SlurmCli, uid: str) -> dict[str, list[tuple[int, str, str | None]]]:
    """Slot -> ``(job id, state, node)`` of each live Slurm job of a submission."""
    found: dict[str, list[tuple[int, str, str | None]]] = {}
    for job in slurm.queue():
        name = SlotName.parse(job.name)
        if name is not None and name.uid == uid and not job.status.state.finished:
            found.setdefault(name.slot, []).append((job.job_id, job.state, job.nodes))
    return found


def counted(api: Api, kind: str, name: str) -> dict[str, list[int]]:
    """The numbers each process of a COUNTER job printed, in log order."""
    numbers: dict[str, list[int]] = {}
    for line in api.lines(kind, name, stream="stdout"):
        proc, number = line.split()
        numbers.setdefault(proc, []).append(int(number))
    return numbers


def contiguous_runs(numbers: list[int]) -> bool:
    """Each run of a restarted process counts 1, 2, 3...: nothing lost, nothing repeated."""
    expected = 1
    for number in numbers:
        if number not in (expected, 1):
            return False
        expected = number + 1
    return True


def submit_counters(api: Api, name: str, **params: Any) -> None:
    """Submit a JuliaParBatch whose master and workers run COUNTER (``count.py``)."""
    api.data(
        "submitJob",
        "JuliaParBatch",
        name=name,
        start_script="count.py",
        worker_start_script="count.py",
        run_volume="work",
        **params,
    )


@pytest.fixture
def data_dir(tmp_path: Path, slurm: SlurmCli) -> Iterator[Path]:
    """A data directory; the Slurm jobs of its submissions are cancelled after the test."""
    del slurm
    path = tmp_path / "data"
    yield path
    cancel_slurm_jobs(path)


def test_a_killed_slurmd_loses_its_slots_which_restart_per_policy(
    data_dir: Path, slurm: SlurmCli
) -> None:
    """Faults: a node whose slurmd dies ends its slots as lost (NODE_FAIL, said why); a
    worker is restarted on another node, a master's job is lost with the reason."""
    with LocalServer(data_dir, **SLURM_SERVER, **FAST) as server:
        api = Api(server.url, server.token, server.namespace, ca_bundle=server.ca_bundle)
        volume = data_dir / "namespaces" / "default" / "volumes" / "work"
        write_script(volume, "count.py", COUNTER)
        try:
            submit_counters(
                api,
                "survivor",
                nworkers=2,
                worker_cpu="8",  # at most one worker beside the master on a node
            )
            api.wait_scale("JuliaParBatch", "survivor", 2, timeout=60)
            uid = api.status("JuliaParBatch", "survivor")["uid"]
            placed = live_jobs(slurm, uid)
            master_node = placed["master"][0][2]
            worker, node = next(
                (slot, jobs[0][2])
                for slot, jobs in sorted(placed.items())
                if slot != "master" and jobs[0][2] != master_node
            )
            assert node is not None
            # A job whose master runs on that node too, from a server that places it there.
            victim_dir = data_dir.parent / "victim"
            settings = {**SLURM_SERVER, "sbatch_args": (f"--nodelist={node}",)}
            with LocalServer(victim_dir, **settings, **FAST) as other:
                other_api = Api(other.url, other.token, other.namespace, ca_bundle=other.ca_bundle)
                write_script(victim_dir / "namespaces/default/volumes/work", "count.py", COUNTER)
                try:
                    other_api.data(
                        "submitJob",
                        "JuliaBatch",
                        name="victim",
                        start_script="count.py",
                        run_volume="work",
                    )
                    other_api.wait_lines("JuliaBatch", "victim", 1, timeout=60)
                    killed = time.monotonic()
                    os.kill(int((RUN / f"slurmd.{node}.pid").read_text()), signal.SIGKILL)
                    lost = other_api.wait_done("JuliaBatch", "victim", timeout=120)
                    noticed = time.monotonic() - killed
                    assert lost["phase"] == "lost"
                    assert lost["message"].startswith("the master process ended: its node failed")
                    assert "(Slurm: NODE_FAIL" in lost["message"]
                finally:
                    other_api.close()
                cancel_slurm_jobs(victim_dir)
            status = api.wait_status(
                "JuliaParBatch",
                "survivor",
                lambda status: status["restarts"].get(worker) == 1,
                f"{worker} to be restarted",
            )
            assert status["phase"] == "running"
            assert status["exit_reasons"][worker].startswith("ended: its node failed")
            api.wait_scale("JuliaParBatch", "survivor", 2, timeout=60)
            moved = live_jobs(slurm, uid)
            assert sorted(moved) == ["master", "worker-1", "worker-2"]
            assert moved[worker][0][2] != node
            assert all(len(jobs) == 1 for jobs in moved.values())
            wait_until(lambda: len(counted(api, "JuliaParBatch", "survivor").get(worker, [])) > 20)
            numbers = counted(api, "JuliaParBatch", "survivor")
            assert all(contiguous_runs(run) for run in numbers.values()), numbers
            record(
                "slurm: slurmd killed",
                node_fail_after_s=round(noticed, 1),
                slots_lost=2,
                workers_restarted=status["restarts"][worker],
                duplicates=0,
            )
        finally:
            api.close()
            slurm_up()


def test_a_restarted_slurmctld_loses_nothing(data_dir: Path, slurm: SlurmCli) -> None:
    """Faults: while the controller is down, verbs answer from the last sweep, logs keep
    flowing and a scale-up waits; once it is back every job is whole and none doubled."""
    pid_file = RUN / "slurmctld.pid"
    with LocalServer(data_dir, **SLURM_SERVER, **FAST) as server:
        api = Api(server.url, server.token, server.namespace, ca_bundle=server.ca_bundle)
        volume = data_dir / "namespaces" / "default" / "volumes" / "work"
        write_script(volume, "count.py", COUNTER)
        try:
            submit_counters(api, "steady", nworkers=2)
            api.wait_scale("JuliaParBatch", "steady", 2, timeout=60)
            uid = api.status("JuliaParBatch", "steady")["uid"]
            controller = int(pid_file.read_text())
            stopped = time.monotonic()
            os.kill(controller, signal.SIGTERM)
            wait_until(lambda: not Path(f"/proc/{controller}").exists(), 60, "slurmctld to stop")
            before = len(api.lines("JuliaParBatch", "steady"))
            assert api.data("setJobScale", "JuliaParBatch", name="steady", parallelism=3) is True
            waiting = api.wait_status(
                "JuliaParBatch",
                "steady",
                lambda status: "worker-3 waits to be started" in status.get("message", ""),
                "the scale-up to wait for Slurm",
            )
            assert waiting["phase"] == "running"
            assert api.data("getJobScale", "JuliaParBatch", name="steady") == [2, 3]
            wait_until(lambda: len(api.lines("JuliaParBatch", "steady")) > before + 20)
            slurm_up()
            down = time.monotonic() - stopped
            api.wait_scale("JuliaParBatch", "steady", 3, timeout=60)
            status = api.status("JuliaParBatch", "steady")
            assert status["phase"] == "running"
            assert status["restarts"] == {}
            assert "message" not in status
            live = live_jobs(slurm, uid)
            assert sorted(live) == ["master", "worker-1", "worker-2", "worker-3"]
            assert all(len(jobs) == 1 for jobs in live.values())
            wait_until(lambda: "worker-3" in counted(api, "JuliaParBatch", "steady"))
            numbers = counted(api, "JuliaParBatch", "steady")
            assert all(run[0] == 1 and contiguous_runs(run) for run in numbers.values())
            record(
                "slurm: slurmctld restarted",
                controller_down_s=round(down, 1),
                lines_while_down=len(api.lines("JuliaParBatch", "steady")) - before,
                jobs=4,
                duplicates=0,
                restarts=0,
            )
        finally:
            api.close()
            slurm_up()


#: sbatch, which (once the flag file exists) records the id it got and then hangs: a server
#: killed meanwhile has submitted a job it never recorded.
def _wrap_sbatch(template: str, flag: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Put ``template`` (given ``{sbatch}`` and ``{flag}``) first on PATH as ``sbatch``."""
    sbatch = shutil.which("sbatch")
    assert sbatch is not None
    bin_dir = flag.parent / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "sbatch"
    wrapper.write_text(template.format(sbatch=sbatch, flag=flag))
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return flag


SLOW_SBATCH = """\
#!/bin/sh
out=$({sbatch} "$@")
code=$?
printf '%s\\n' "$out"
if [ $code = 0 ] && [ -e {flag} ]; then
    printf '%s\\n' "$out" > {flag}.id.tmp && mv {flag}.id.tmp {flag}.id
    exec sleep 30
fi
exit $code
"""


def test_a_server_killed_between_sbatch_and_its_record_finds_every_job(
    data_dir: Path, slurm: SlurmCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Faults: a server SIGKILLed after sbatch but before recording the job adopts it by name
    when it starts again, cancels a job of its submission it does not want, submits nothing
    twice: every slot has exactly one live Slurm job, and no job of it is left over."""
    sbatch = shutil.which("sbatch")
    assert sbatch is not None
    flag = _wrap_sbatch(SLOW_SBATCH, tmp_path / "slow", monkeypatch)
    volume = data_dir / "namespaces" / "default" / "volumes" / "work"
    write_script(volume, "count.py", COUNTER)
    server = ServerProcess(
        data_dir, tokens=TOKENS, host=SLURM_HOST, args=(*SLURM_ARGS, "--kill-grace", "0.5")
    )
    server.start()
    try:
        api = Api(server.url, TOKENS["default"], "default", ca_bundle=server.ca_bundle)
        submit_counters(api, "par", nworkers=2)
        api.wait_scale("JuliaParBatch", "par", 2, timeout=60)
        uid = api.status("JuliaParBatch", "par")["uid"]
        flag.touch()
        assert api.data("setJobScale", "JuliaParBatch", name="par", parallelism=3) is True
        wait_until((tmp_path / "slow.id").exists, 30, "the unrecorded sbatch")
        stray = int((tmp_path / "slow.id").read_text())
        api.close()
        server.kill()
        flag.unlink()
        # And a job of the same submission for a slot nobody asked for.
        name = SlotName("default", "par", uid, "worker-9")
        unwanted = slurm.run(
            [sbatch, "--parsable", f"--job-name={name}", "--output=/dev/null", "--wrap=sleep 300"]
        )
        server.start()
        api = Api(server.url, TOKENS["default"], "default", ca_bundle=server.ca_bundle)
        api.wait_scale("JuliaParBatch", "par", 3, timeout=60)
        wait_until(
            lambda: "worker-9" not in live_jobs(slurm, uid), 30, "the unwanted job to be cancelled"
        )
        live = live_jobs(slurm, uid)
        assert sorted(live) == ["master", "worker-1", "worker-2", "worker-3"]
        assert all(len(jobs) == 1 for jobs in live.values())
        assert live["worker-3"][0][0] == stray  # adopted, not submitted again
        wait_until(lambda: "worker-3" in counted(api, "JuliaParBatch", "par"), 30)
        status = api.status("JuliaParBatch", "par")
        assert status["restarts"] == {}
        assert api.data("deleteJob", "JuliaParBatch", name="par", force="true") is True
        assert live_jobs(slurm, uid) == {}
        record(
            "slurm: server SIGKILLed after sbatch",
            jobs_found=4,
            strays_adopted=1,
            strays_cancelled=int(unwanted.strip().isdigit()),
            duplicates=0,
            orphans=0,
        )
        api.close()
    finally:
        server.stop()


# Holds sbatch until the flag is removed; then submits, unless told to give up.
HELD_SBATCH = """\
#!/bin/sh
if [ -e {flag} ]; then
    touch {flag}.held
    while [ -e {flag} ]; do sleep 0.05; done
    [ -e {flag}.abandon ] && exit 1
fi
exec {sbatch} "$@"
"""


def test_a_server_killed_before_it_started_a_master_starts_it_when_back(
    data_dir: Path, slurm: SlurmCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Faults: a server SIGKILLed after recording a job but before its master reached
    Slurm starts that master when it starts again, then its workers with the master's
    address: the job runs once, instead of staying pending."""
    flag = _wrap_sbatch(HELD_SBATCH, tmp_path / "held", monkeypatch)
    volume = data_dir / "namespaces" / "default" / "volumes" / "work"
    write_script(volume, "once.py", "import time\nprint('ran', flush=True)\ntime.sleep(300)\n")
    write_script(
        volume,
        "worker.py",
        "import os, time\nprint('master at', os.environ.get('JRUN_MASTER_HOST'), flush=True)\n"
        "time.sleep(300)\n",
    )
    server = ServerProcess(
        data_dir, tokens=TOKENS, host=SLURM_HOST, args=(*SLURM_ARGS, "--kill-grace", "0.5")
    )
    server.start()
    try:
        flag.touch()
        submitter = Api(server.url, TOKENS["default"], "default", ca_bundle=server.ca_bundle)
        params = {
            "name": "once",
            "start_script": "once.py",
            "worker_start_script": "worker.py",
            "nworkers": 2,
            "run_volume": "work",
        }
        with ThreadPoolExecutor(1) as pool:
            answer = pool.submit(submitter.data, "submitJob", "JuliaParBatch", **params)
            wait_until((tmp_path / "held.held").exists, 30, "the submission to reach sbatch")
            server.kill()
            (tmp_path / "held.abandon").touch()
            flag.unlink()
            with pytest.raises(httpx.HTTPError):
                answer.result(timeout=30)
        submitter.close()
        server.start()
        api = Api(server.url, TOKENS["default"], "default", ca_bundle=server.ca_bundle)
        api.wait_scale("JuliaParBatch", "once", 2, timeout=120)
        wait_until(lambda: len(api.lines("JuliaParBatch", "once")) == 3, 60, "the workers' lines")
        lines = api.lines("JuliaParBatch", "once")
        workers = [line for line in lines if line != "ran"]
        assert lines.count("ran") == 1
        assert len(workers) == 2
        assert all(w.startswith("master at ") and w != "master at None" for w in workers), lines
        uid = api.status("JuliaParBatch", "once")["uid"]
        assert sorted(live_jobs(slurm, uid)) == ["master", "worker-1", "worker-2"]
        assert api.data("deleteJob", "JuliaParBatch", name="once", force="true") is True
        api.close()
    finally:
        server.stop()
