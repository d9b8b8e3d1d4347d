"""The launcher: whatever way its program ends, no process the program started is left; on a
node it chooses the ports, records where it runs and waits for its master."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from support import SPAWN_STRAYS, cleanup_mechanisms, wait_until

from juliarun_aio.server import _launcher
from juliarun_aio.server._launcher import SLOT_VARIABLE, Tree, kill_tree, parse_cgroup_homes

LAUNCHER = Path(_launcher.__file__)

#: Starts a plain background child, a child in a session of its own (setsid) and a
#: double-forked daemon, each a Python sleeping with the marker in its arguments; waits
#: until all three run, writes its pid to the ready file, then exits or, asked to stay,
#: waits for a signal.
LEAKY = (
    """\
import os, subprocess, sys, time
marker, stay, ready = sys.argv[1], sys.argv[2] == "stay", sys.argv[3]
stray = [sys.executable, "-c", "import time; time.sleep(300)", marker]
"""
    + SPAWN_STRAYS
    + """\
def strays():
    found = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            found += marker in open(f"/proc/{pid}/cmdline").read().split("\\0")
        except OSError:
            pass
    return found - 2  # this program and its launcher have the marker too
while strays() < 3:
    time.sleep(0.01)
open(ready, "w").write(str(os.getpid()))
while stay:
    time.sleep(0.05)
"""
)


MECHANISMS = cleanup_mechanisms() if sys.platform.startswith("linux") else []
pytestmark = pytest.mark.skipif(not MECHANISMS, reason="process-tree cleanup needs Linux")


def marked(marker: str) -> list[psutil.Process]:
    """The live processes with ``marker`` among their arguments."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if marker in (proc.info["cmdline"] or []) and proc.info["status"] != "zombie":
            found.append(proc)
    return found


class Slot:
    """A launcher running ``LEAKY`` with a mechanism, and the files it writes."""

    def __init__(self, tmp_path: Path, mechanism: str, *, stay: bool) -> None:
        self.marker = f"leak-{secrets.token_hex(6)}"
        self.exit_file = tmp_path / "slot.exit"
        self.tree_file = tmp_path / "slot.tree"
        self.ready = tmp_path / "ready"
        script = tmp_path / "leaky.py"
        script.write_text(LEAKY)
        command = [sys.executable, "-I", str(LAUNCHER), "--exit-file", str(self.exit_file)]
        command += ["--tree-file", str(self.tree_file), "--cleanup", mechanism, "--"]
        command += [sys.executable, str(script), self.marker, "stay" if stay else "go"]
        command.append(str(self.ready))
        self.launcher = subprocess.Popen(command, start_new_session=True)

    def program(self) -> int:
        """Wait until the program has started its children; return its pid."""
        wait_until(lambda: self.ready.exists() and self.ready.read_text(), what="the program")
        return int(self.ready.read_text())

    def tree(self) -> Tree:
        tree = Tree.load(str(self.tree_file))
        assert tree is not None
        return tree

    def clean(self) -> None:
        for proc in marked(self.marker):
            proc.kill()
        if self.launcher.poll() is None:
            self.launcher.kill()
        self.launcher.wait()
        if (tree := Tree.load(str(self.tree_file))) is not None:
            tree.kill(5.0)


@pytest.fixture(params=MECHANISMS)
def mechanism(request: pytest.FixtureRequest) -> str:
    """Each cleanup mechanism this machine offers."""
    value: str = request.param
    return value


@pytest.fixture
def slot(tmp_path: Path, mechanism: str) -> Iterator[Slot]:
    """A launcher whose program stays until it is signalled; cleaned up after the test."""
    running = Slot(tmp_path, mechanism, stay=True)
    yield running
    running.clean()


def _assert_gone(slot: Slot) -> None:
    assert marked(slot.marker) == []
    tree = slot.tree()
    if tree.cgroup is not None:
        assert not os.path.exists(tree.cgroup)


def test_program_that_exits_leaves_no_process(tmp_path: Path, mechanism: str) -> None:
    """Children, setsid children and double-forked daemons end with a program that exits 0."""
    slot = Slot(tmp_path, mechanism, stay=False)
    try:
        assert slot.launcher.wait(timeout=60) == 0
        assert slot.exit_file.read_text() == "0\n"
        assert slot.tree().mechanism == mechanism
        _assert_gone(slot)
    finally:
        slot.clean()


def test_program_killed_with_sigkill_leaves_no_process(slot: Slot) -> None:
    """When the program is killed with SIGKILL, the launcher kills what it started."""
    os.kill(slot.program(), signal.SIGKILL)
    assert slot.launcher.wait(timeout=30) == 128 + signal.SIGKILL
    assert slot.exit_file.read_text() == f"{-signal.SIGKILL}\n"
    _assert_gone(slot)


def test_sigterm_to_the_launcher_leaves_no_process(slot: Slot) -> None:
    """SIGTERM reaches the program; what it started (in other sessions too) ends with it."""
    slot.program()
    slot.launcher.terminate()
    assert slot.launcher.wait(timeout=30) == 128 + signal.SIGTERM
    _assert_gone(slot)


def test_sigusr2_stops_and_sigusr1_kills_the_program(tmp_path: Path, mechanism: str) -> None:
    """SIGUSR2 reaches the program as one SIGTERM, SIGUSR1 as SIGKILL; nothing is left."""
    for asked, exit_code in ((signal.SIGUSR2, -signal.SIGTERM), (signal.SIGUSR1, -signal.SIGKILL)):
        run = tmp_path / asked.name
        run.mkdir()
        slot = Slot(run, mechanism, stay=True)
        try:
            slot.program()
            slot.launcher.send_signal(asked)
            assert slot.launcher.wait(timeout=30) == 128 - exit_code
            assert slot.exit_file.read_text() == f"{exit_code}\n"
            _assert_gone(slot)
        finally:
            slot.clean()


def _launch(
    tmp_path: Path, name: str, options: list[str], program: str, *args: str
) -> subprocess.Popen[str]:
    """Start the launcher running ``python -c program args...``, its stdout piped."""
    command = [sys.executable, "-I", str(LAUNCHER), "--exit-file", str(tmp_path / f"{name}.exit")]
    command += [*options, "--", sys.executable, "-c", program, *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True)


#: Prints its arguments, the master's address and the port of ``web``.
SHOW = (
    "import os, sys\n"
    "print(sys.argv[1:], os.environ.get('JRUN_MASTER_HOST'), os.environ.get('JRUN_PORT_WEB'))\n"
)


def test_ports_and_place_are_chosen_on_the_node(tmp_path: Path) -> None:
    """--port binds a free port for the program, --place-file records it with the address
    towards the server, placeholders are filled, --wait-place gives workers the master's."""
    place = tmp_path / "master.place"
    worker = _launch(tmp_path, "worker", ["--wait-place", str(place)], SHOW)
    master = _launch(
        tmp_path,
        "master",
        ["--port", "web", "--place-file", str(place), "--route-to", "127.0.0.1"],
        SHOW + "import socket; socket.create_server(('', int(os.environ['JRUN_PORT_WEB'])))\n",
        "--port=${JRUN_PORT_WEB}",
    )
    master_out, _ = master.communicate(timeout=30)
    worker_out, _ = worker.communicate(timeout=30)
    recorded = json.loads(place.read_text())
    port = recorded["ports"]["web"]
    assert recorded == {"host": "127.0.0.1", "ports": {"web": port}}
    assert master_out == f"['--port={port}'] None {port}\n"
    assert worker_out == f"[] 127.0.0.1 {port}\n"
    assert master.returncode == worker.returncode == 0


def test_a_worker_stopped_while_it_waits_for_its_master_ends(tmp_path: Path) -> None:
    """A SIGTERM while the master's place is missing ends the launcher, the program unstarted."""
    marker = tmp_path / "ran"
    options = ["--wait-place", str(tmp_path / "never.place")]
    worker = _launch(tmp_path, "worker", options, f"open({str(marker)!r}, 'w')")
    timer = threading.Timer(0.5, worker.send_signal, (signal.SIGTERM,))
    timer.start()
    try:
        out, _ = worker.communicate(timeout=30)
    finally:
        timer.cancel()
    assert (out, worker.returncode) == ("", 128 + signal.SIGTERM)
    assert (tmp_path / "worker.exit").read_text() == f"{-signal.SIGTERM}\n"
    assert not marker.exists()


def test_killed_launcher_is_cleaned_up_from_its_tree_file(slot: Slot) -> None:
    """After SIGKILL of the launcher, kill_tree finds and kills the slot's processes."""
    program = slot.program()
    slot.launcher.kill()
    slot.launcher.wait()
    assert len(marked(slot.marker)) == 4  # the program and its three children are left
    assert kill_tree(str(slot.tree_file), timeout=10) == []
    wait_until(lambda: not psutil.pid_exists(program) or _zombie(program), what="the program")
    _assert_gone(slot)


def test_every_process_of_the_slot_is_marked(slot: Slot) -> None:
    """The program and everything it starts carry the slot id in their environment."""
    slot.program()
    tree = slot.tree()
    if tree.cgroup is not None:  # the program, its children, and the launcher
        assert len(tree.members()) == 5
    program = [proc for proc in marked(slot.marker) if proc.pid != slot.launcher.pid]
    assert len(program) == 4
    for proc in program:
        assert proc.environ()[SLOT_VARIABLE] == tree.slot


def test_tree_file_of_a_missing_slot_is_harmless(tmp_path: Path) -> None:
    """kill_tree of a missing or unreadable tree file, or of an empty slot, does nothing."""
    assert kill_tree(str(tmp_path / "missing.tree")) == []
    (tmp_path / "bad.tree").write_text("nonsense\n")
    assert kill_tree(str(tmp_path / "bad.tree")) == []
    Tree("subreaper", "no-such-slot").save(str(tmp_path / "empty.tree"))
    assert kill_tree(str(tmp_path / "empty.tree")) == []


def test_program_not_found_still_writes_the_exit_file(tmp_path: Path) -> None:
    """A program that cannot start is reported as exit 127, and its cgroup is removed."""
    exit_file, tree_file = tmp_path / "x.exit", tmp_path / "x.tree"
    command = [sys.executable, "-I", str(LAUNCHER), "--exit-file", str(exit_file)]
    command += ["--tree-file", str(tree_file), "--", str(tmp_path / "missing")]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 127
    assert "not found" in result.stderr
    assert exit_file.read_text() == "127\n"
    tree = Tree.load(str(tree_file))
    assert tree is not None
    assert tree.cgroup is None or not os.path.exists(tree.cgroup)


def test_a_program_that_is_not_executable_exits_126(tmp_path: Path) -> None:
    """A file without the execute bit is reported as exit 126 with the reason, as a shell does."""
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\necho ran\n")
    exit_file = tmp_path / "x.exit"
    command = [sys.executable, "-I", "-S", str(LAUNCHER), "--exit-file", str(exit_file)]
    result = subprocess.run(
        [*command, "--", str(script)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 126
    assert "Permission denied" in result.stderr
    assert "ran" not in result.stdout
    assert exit_file.read_text() == "126\n"


def test_the_program_gets_no_other_descriptor_and_default_sigpipe(tmp_path: Path) -> None:
    """A descriptor the launcher inherited stays out of the program; SIGPIPE is not ignored."""
    exit_file = tmp_path / "x.exit"
    extra_read, extra_write = os.pipe()
    os.set_inheritable(extra_write, True)
    check = (
        "import os, sys\n"
        "try:\n"
        "    os.fstat(int(sys.argv[1]))\n"
        "except OSError:\n"
        "    print('closed')\n"
        "else:\n"
        "    print('open')\n"
    )
    # The shell's own mask (Python would ignore SIGPIPE itself); SIGPIPE is signal 13.
    shell = 'grep SigIgn /proc/$$/status; exec "$0" -S -c "$1" "$2"'

    command = [sys.executable, "-I", "-S", str(LAUNCHER), "--exit-file", str(exit_file)]
    try:
        result = subprocess.run(
            [*command, "--", "/bin/sh", "-c", shell, sys.executable, check, str(extra_write)],
            capture_output=True,
            text=True,
            check=False,
            pass_fds=(extra_write,),
            timeout=60,
        )
    finally:
        os.close(extra_read)
        os.close(extra_write)
    ignored, descriptor = result.stdout.splitlines()
    assert int(ignored.split()[1], 16) >> 12 & 1 == 0, ignored
    assert descriptor == "closed", result.stderr
    assert exit_file.read_text() == "0\n"


def _zombie(pid: int) -> bool:
    try:
        status: str = psutil.Process(pid).status()
    except psutil.NoSuchProcess:
        return True
    return bool(status == psutil.STATUS_ZOMBIE)


def test_cgroup_homes_follow_nested_and_escaped_mounts() -> None:
    """Our cgroup is found below a mount's root (as in a container), escapes decoded."""
    own = "12:pids:/box/job\n9:cpu,freezer:/box\n3:memory:/box\n0::/box/job/step\n"
    mountinfo = (
        "30 25 0:26 /box /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
        "31 25 0:27 / /cg/free\\040zer rw shared:1 - cgroup cgroup rw,cpu,freezer\n"
        "32 25 0:28 /elsewhere /cg/pids rw - cgroup cgroup rw,pids\n"
        "33 25 0:29 / /cg/memory rw - cgroup cgroup rw,memory\n"
    )
    assert list(parse_cgroup_homes(own, mountinfo)) == [
        ("cgroup2", "/sys/fs/cgroup/job/step"),
        ("cgroup1", "/cg/free zer/box"),
    ]
    assert list(parse_cgroup_homes("0::/\n", "")) == []


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        (["--exit-file", "x.exit"], "no command given after --"),
        (["--exit-file", "x.exit", "--"], "no command given after --"),
        (["--", "true"], "--exit-file is required"),
        (["--exit-file", "--", "true"], "expected --option VALUE pairs"),
        (["--exit-file", "x", "--colour", "red", "--", "true"], "unknown option --colour"),
        (["--exit-file", "x", "--memory-bytes", "lots", "--", "true"], "--memory-bytes 'lots'"),
        (["--exit-file", "x", "--cleanup", "bleach", "--", "true"], "choose from auto, cgroup2"),
    ],
)
def test_bad_launcher_arguments_exit_2_and_run_nothing(
    tmp_path: Path, arguments: list[str], error: str
) -> None:
    """A usage error names what is wrong, exits 2, and neither runs nor records anything."""
    result = subprocess.run(
        [sys.executable, "-I", "-S", str(LAUNCHER), *arguments],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert error in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_options_may_come_in_any_order_and_the_command_keeps_its_own_dashes(
    tmp_path: Path,
) -> None:
    """Options before the first ``--`` are the launcher's; everything after is the program's."""
    exit_file = tmp_path / "x.exit"
    command = [sys.executable, "-I", "-S", str(LAUNCHER), "--cleanup", "auto"]
    command += ["--memory-bytes", str(1 << 34), "--exit-file", str(exit_file), "--"]
    command += [sys.executable, "-c", "import sys; print(sys.argv[1:])", "--", "--exit-file"]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "['--', '--exit-file']\n"
    assert exit_file.read_text() == "0\n"


def test_an_option_given_twice_is_collected_where_it_may_repeat() -> None:
    """``--port`` collects every value; other options take the last one, as before."""
    args = _launcher._parse(
        ["--exit-file", "a", "--port", "http", "--exit-file", "b", "--port", "ssh", "--", "x"]
    )
    assert (args.exit_file, args.port, args.command) == ("b", ["http", "ssh"], ["x"])
    assert (args.tree_file, args.memory_bytes, args.cleanup) == (None, None, "auto")
