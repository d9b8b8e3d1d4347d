"""The tiny program every job process runs under, on whichever machine runs the job.

``python -I _launcher.py --exit-file PATH [--tree-file PATH] [--memory-bytes N]
[--cleanup MODE] [--place-file PATH --route-to HOST [--port NAME]...]
[--wait-place PATH] -- ARGV...``

The server starts it -- itself, in a session of its own, or as a batch job on a cluster
node -- with stdout/stderr already pointing at the process's log files, so neither the
job nor its output depends on the server staying up.  The launcher

- where the server leaves the choice of ports to the node (``--port NAME``), binds a free
  TCP port for each name and gives it to the program as ``JRUN_PORT_<NAME>``;
- with ``--place-file``, records where the slot is reached before the program starts:
  ``{"host": ..., "ports": {name: port}}``, the host being this node's address on the
  route to ``--route-to`` (the server's host), written atomically;
- with ``--wait-place`` (a worker of a job whose master runs elsewhere), waits until the
  master's place file exists and gives the program ``JRUN_MASTER_HOST`` and the master's
  ``JRUN_PORT_<NAME>``;
- replaces ``${JRUN_PORT_<NAME>}`` in the program's arguments and environment values by
  the port (for programs whose port is an argument, such as ``jupyter --port``),
- applies ``RLIMIT_AS`` to the program when a memory limit is given,
- runs ``ARGV`` directly (never through a shell) in a process group of its own,
- forwards SIGTERM/SIGINT to that process group, exactly once per signal received, and
  turns SIGUSR2 into a SIGTERM and SIGUSR1 into a SIGKILL of the group (how a scheduler
  that reports SIGTERM and SIGKILL as a cancellation -- Slurm's ``scancel`` -- asks for a
  stop or a kill; see :data:`FORWARDED`),
- when the program has ended, for whatever reason, kills every process it left behind
  (see below) and reaps them,
- then writes the program's exit code (``-N`` when killed by signal N) atomically to the
  exit file, which is how a server -- this one or a later one -- learns that the process
  ended.  An exit file therefore also says that no process of the slot is left.

**Process-tree cleanup.**  Everything the program starts belongs to its *slot* and ends
with it, as in a container: children that called ``setsid`` or double-forked included.
The launcher uses the strongest mechanism the machine grants it, trying in this order
(``--cleanup`` names the strongest one to try; the default ``auto`` tries them all):

- ``cgroup2``: a cgroup of its own, created under the launcher's cgroup in the unified
  (v2) hierarchy when that directory is writable.  Nothing started inside can leave it;
  it is killed at once with ``cgroup.kill`` (Linux 5.14+; else member by member).
- ``cgroup1``: the same in a writable v1 ``freezer`` hierarchy (frozen, killed, thawed,
  so that nothing forks meanwhile) or else ``pids`` hierarchy.
- ``subreaper``: the launcher becomes a child subreaper (``PR_SET_CHILD_SUBREAPER``), so
  that orphans of the tree are re-parented to it rather than to init, and kills its
  descendants until none is left.
- ``session`` (not Linux): the program's process group only.

On Linux the launcher is a subreaper under every mechanism, so that it reaps what it kills.
Every process of the slot also inherits ``JULIARUN_AIO_SLOT=<slot id>`` in its environment.
The *tree file* records the mechanism, the cgroup and the slot id before the program
starts, so that :func:`kill_tree` can clean up when the launcher itself was killed (with
``subreaper``, by finding the processes that carry the slot id, which misses only a process
that re-executed itself with a cleared environment).

A memory limit stays an address-space limit (``RLIMIT_AS``) under every mechanism: the
memory controller could only be used for a slot's cgroup where the launcher's own cgroup
delegates it (cgroup v2 forbids enabling it under a cgroup that holds processes, as the
server's does), which a plain local server or a batch job usually does not have.

It imports nothing from the package (and runs with ``-I -S``) so that it starts fast; the
server runs it by path.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from types import FrameType, SimpleNamespace

# Not ``typing.TYPE_CHECKING``: importing typing alone costs a launcher 4-5 ms.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket

__all__ = [
    "CLEANUP_MODES",
    "EXIT_NOT_EXECUTABLE",
    "EXIT_NOT_FOUND",
    "FORWARDED",
    "SLOT_VARIABLE",
    "Tree",
    "address_towards",
    "describe_cleanup",
    "free_ports",
    "kill_tree",
    "main",
    "port_variable",
    "read_place",
    "run",
    "serve_spare",
]

#: Exit code written when the program cannot be started (as a shell would report it).
EXIT_NOT_FOUND = 127
EXIT_NOT_EXECUTABLE = 126
#: The environment variable that marks every process of a slot.
SLOT_VARIABLE = "JULIARUN_AIO_SLOT"
#: What the launcher sends the program's process group for each signal it receives:
#: SIGUSR2 and SIGUSR1 ask for a stop and a kill without those signals themselves (a
#: scheduler that delivers SIGTERM or SIGKILL -- Slurm's ``scancel`` -- also logs them as a
#: cancellation in the job's output, and after a SIGKILL of the launcher waits for the
#: processes it left).
FORWARDED: dict[int, int] = {
    signal.SIGTERM: signal.SIGTERM,
    signal.SIGINT: signal.SIGINT,
    signal.SIGUSR2: signal.SIGTERM,
    signal.SIGUSR1: signal.SIGKILL,
}
#: Seconds between two looks for the master's place file.
PLACE_POLL = 0.05
_PORT_PLACEHOLDER = r"\$\{(JRUN_PORT_[A-Z0-9_]+)\}"
#: Values of ``--cleanup``: the strongest mechanism to try (``auto``: the strongest there is).
CLEANUP_MODES = ("auto", "cgroup2", "cgroup1", "subreaper")
#: v1 hierarchies that can hold a slot, best first: a frozen cgroup cannot fork while its
#: members are killed.
_V1_CONTROLLERS = ("freezer", "pids")
_PR_SET_CHILD_SUBREAPER = 36
#: Seconds the launcher waits for the processes it killed to be gone before it reports
#: the exit anyway (a process in uninterruptible sleep cannot die sooner).
LAUNCHER_KILL_WAIT = 10.0
_LINUX = sys.platform.startswith("linux")


# -- cgroups ---------------------------------------------------------------------------------


def _unescape(field: str) -> str:
    r"""Decode the octal escapes (``\040`` for a space) of a /proc/self/mountinfo field."""
    first, *rest = field.split("\\")
    decoded = [first]
    for part in rest:  # the kernel escapes only space, tab, newline and backslash
        if len(part) >= 3 and part[:3].isdigit():
            decoded += [chr(int(part[:3], 8)), part[3:]]
        else:
            decoded += ["\\", part]
    return "".join(decoded)


def _cgroup_homes() -> Iterator[tuple[str, str]]:
    """The directories of the cgroups this process is in, as ``(mechanism, path)``, best first.

    Only hierarchies that are mounted here and can hold a slot are listed: the unified one
    (``cgroup2``), then the v1 ``freezer`` and ``pids`` ones (``cgroup1``).
    """
    try:
        with open("/proc/self/cgroup", encoding="utf-8") as fh:
            own = fh.read()
        with open("/proc/self/mountinfo", encoding="utf-8") as fh:
            mountinfo = fh.read()
    except OSError:
        return iter(())
    return parse_cgroup_homes(own, mountinfo)


def parse_cgroup_homes(own_cgroups: str, mountinfo: str) -> Iterator[tuple[str, str]]:
    """:func:`_cgroup_homes` from the text of /proc/self/cgroup and /proc/self/mountinfo."""
    own = [line.split(":", 2) for line in own_cgroups.splitlines() if line.count(":") >= 2]
    mounts = [line.split() for line in mountinfo.splitlines()]
    v2 = [path for hierarchy, controllers, path in own if hierarchy == "0" and not controllers]
    v1 = {
        controller: path
        for hierarchy, controllers, path in own
        if hierarchy != "0"
        for controller in controllers.split(",")
    }
    # (mechanism, file system type, controller the mount must carry, our cgroup's path)
    wanted = [("cgroup2", "cgroup2", "", path) for path in v2]
    wanted += [("cgroup1", "cgroup", name, v1[name]) for name in _V1_CONTROLLERS if name in v1]
    for mechanism, fstype, controller, path in wanted:
        for fields in mounts:
            if "-" not in fields:
                continue
            dash = fields.index("-")
            if dash < 5 or len(fields) < dash + 4 or fields[dash + 1] != fstype:
                continue
            if controller and controller not in fields[dash + 3].split(","):
                continue
            root, mountpoint = _unescape(fields[3]).rstrip("/"), _unescape(fields[4])
            if path != root and not path.startswith(root + "/"):
                continue  # this mount does not show our cgroup
            yield mechanism, os.path.normpath(mountpoint + "/" + path[len(root) :])
            break


def _members(cgroup: str) -> list[int]:
    """The pids in ``cgroup``; empty when it does not exist."""
    try:
        with open(os.path.join(cgroup, "cgroup.procs"), encoding="ascii") as fh:
            return [int(line) for line in fh if line.strip()]
    except (OSError, ValueError):
        return []


def _write(path: str, text: str) -> bool:
    try:
        with open(path, "w", encoding="ascii") as fh:
            fh.write(text)
    except OSError:
        return False
    return True


def _kill_cgroup_once(cgroup: str) -> bool:
    """SIGKILL every member of ``cgroup`` (which must not hold the caller); False when empty."""
    pids = _members(cgroup)
    if not pids:
        return False
    if _write(os.path.join(cgroup, "cgroup.kill"), "1"):
        return True
    state = os.path.join(cgroup, "freezer.state")
    frozen = os.path.exists(state) and _write(state, "FROZEN")
    if frozen:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), open(state, encoding="ascii") as fh:
                if fh.read().strip() == "FROZEN":
                    break
            time.sleep(0.001)
        pids = _members(cgroup)  # nothing can fork any more
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    if frozen:
        _write(state, "THAWED")  # killed tasks die once thawed
    return True


# -- processes found through /proc -----------------------------------------------------------


def _proc_pids() -> list[int]:
    try:
        return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]
    except OSError:
        return []


def _descendants(root: int) -> list[int]:
    """Every live descendant of ``root`` (from the parent pids in /proc)."""
    children: dict[int, list[int]] = {}
    for pid in _proc_pids():
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                raw = fh.read()
        except OSError:
            continue
        fields = raw[raw.rfind(b")") + 2 :].split()
        if len(fields) > 1 and fields[0] not in (b"Z", b"X"):
            children.setdefault(int(fields[1]), []).append(pid)
    found: list[int] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return found


def _marked(slot: str) -> list[int]:
    """Every live process whose environment carries ``SLOT_VARIABLE=slot``."""
    needle = f"{SLOT_VARIABLE}={slot}".encode()
    found = []
    for pid in _proc_pids():
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                environ = fh.read()
            with open(f"/proc/{pid}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        if needle in environ.split(b"\0") and stat[stat.rfind(b")") + 2 :][:1] not in b"ZX":
            found.append(pid)
    return found


def _reap() -> bool:
    """Reap every child that has ended; False once the caller has no children at all."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return False
        if pid == 0:
            return True


def _set_subreaper() -> bool:
    if not _LINUX:
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


# -- the tree of one slot --------------------------------------------------------------------


class Tree:
    """The processes of one slot and how to find them: what a tree file records.

    Args:
        mechanism: ``cgroup2``, ``cgroup1``, ``subreaper`` or ``session``.
        slot: The slot id (the value of :data:`SLOT_VARIABLE`).
        cgroup: The slot's cgroup directory, for the cgroup mechanisms.
        home: The cgroup directory the launcher came from, for the cgroup mechanisms.
    """

    def __init__(
        self, mechanism: str, slot: str, cgroup: str | None = None, home: str | None = None
    ) -> None:
        self.mechanism = mechanism
        self.slot = slot
        self.cgroup = cgroup
        self.home = home

    def save(self, path: str | None) -> None:
        """Write the tree file (atomically), if there is one."""
        if path is None:
            return
        lines = [f"mechanism {self.mechanism}", f"slot {self.slot}"]
        if self.cgroup is not None and self.home is not None:
            lines += [f"cgroup {self.cgroup}", f"home {self.home}"]
        _write_atomically(path, "\n".join(lines) + "\n")

    @classmethod
    def load(cls, path: str) -> Tree | None:
        """Read a tree file; ``None`` when it is missing or unreadable."""
        try:
            with open(path, encoding="utf-8") as fh:
                fields = dict(line.rstrip("\n").split(" ", 1) for line in fh if " " in line)
        except (OSError, ValueError):
            return None
        if "mechanism" not in fields or "slot" not in fields:
            return None
        return cls(fields["mechanism"], fields["slot"], fields.get("cgroup"), fields.get("home"))

    def members(self) -> list[int]:
        """The live processes of the slot, as found without its launcher."""
        if self.cgroup is not None:
            return _members(self.cgroup)
        return _marked(self.slot) if _LINUX else []

    def kill(self, timeout: float) -> list[int]:
        """SIGKILL every process of the slot, wait up to ``timeout`` s for them to be gone.

        For a slot whose launcher is dead; the launcher itself uses :meth:`clean_up`.  The
        slot's cgroup is removed once empty.

        Returns:
            The processes still there after ``timeout`` (normally none).
        """
        return self._kill(timeout, launcher=None, group=None)

    def clean_up(self, timeout: float, group: int | None) -> list[int]:
        """From the launcher, once its program ended: kill, reap and remove what is left.

        Args:
            timeout: Seconds to wait for the killed processes to be gone.
            group: The program's process group, killed too (all ``session`` can do).

        Returns:
            The processes still there after ``timeout`` (normally none).
        """
        # Step out first: cgroup.kill and the freezer would hit the launcher too.  If that
        # fails, its descendants are all the cgroup holds but itself: kill just those.
        if (
            self.cgroup is not None
            and self.home is not None
            and not _write(os.path.join(self.home, "cgroup.procs"), str(os.getpid()))
        ):
            self.cgroup = None
        return self._kill(timeout, launcher=os.getpid(), group=group)

    def _kill(self, timeout: float, *, launcher: int | None, group: int | None) -> list[int]:
        """Kill until nothing is left, reaping when ``launcher`` is this process.

        What is killed: the cgroup's members, and the launcher's descendants when it runs
        (so also a process that left the cgroup), else the processes marked with the slot id.
        """
        if group is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        pause = 0.0005
        while True:
            left = []
            if self.cgroup is not None and _kill_cgroup_once(self.cgroup):
                left += _members(self.cgroup)
            if launcher is not None:
                strays = _descendants(launcher)  # also catches a process that left the cgroup
            else:
                strays = [] if self.cgroup is not None else self.members()
            for pid in strays:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            left += strays
            children = _reap() if launcher is not None else False
            if not left and not children:
                break
            if time.monotonic() >= deadline:
                return sorted(set(left))
            time.sleep(pause)
            pause = min(pause * 2, 0.02)
        if self.cgroup is not None:
            for _ in range(100):  # the kernel may take a moment to let an emptied cgroup go
                try:
                    os.rmdir(self.cgroup)
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.001)
                else:
                    break
        return []


def _write_atomically(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    # Mode 0600 whatever the umask: the data directory is private to the server's user.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        os.fchmod(fd, 0o600)
        fh.write(text)
    os.replace(tmp, path)


def contain(mode: str, slot: str, tree_file: str | None) -> Tree:
    """Put this process in the strongest container ``mode`` allows; record it in ``tree_file``.

    Children started afterwards inherit the cgroup.  Each attempt is recorded before it is
    made, so that a launcher killed half-way leaves nothing that cannot be found.
    """
    order = CLEANUP_MODES[1:]
    allowed = order if mode == "auto" else order[order.index(mode) :]
    subreaper = _set_subreaper()
    for mechanism, home in _cgroup_homes() if _LINUX else ():
        if mechanism not in allowed:
            continue
        tree = Tree(mechanism, slot, os.path.join(home, f"juliarun-{slot}"), home)
        assert tree.cgroup is not None
        tree.save(tree_file)
        try:
            os.mkdir(tree.cgroup, 0o755)
        except OSError:
            continue
        if _write(os.path.join(tree.cgroup, "cgroup.procs"), str(os.getpid())):
            return tree
        with contextlib.suppress(OSError):
            os.rmdir(tree.cgroup)
    tree = Tree("subreaper" if subreaper else "session", slot)
    tree.save(tree_file)
    return tree


def describe_cleanup(mode: str = "auto") -> tuple[str, str | None]:
    """Say which mechanism a launcher started by this process would use, and where.

    The cgroup mechanisms are probed by creating and removing an empty cgroup.

    Returns:
        The mechanism (``cgroup2``, ``cgroup1``, ``subreaper`` or ``session``), and the
        cgroup directory under which slots' cgroups would be made (``None`` for the others).
    """
    order = CLEANUP_MODES[1:]
    allowed = order if mode == "auto" else order[order.index(mode) :]
    for mechanism, home in _cgroup_homes() if _LINUX else ():
        if mechanism not in allowed or not os.access(os.path.join(home, "cgroup.procs"), os.W_OK):
            continue
        probe = os.path.join(home, f"juliarun-probe-{os.getpid()}-{os.urandom(4).hex()}")
        try:
            os.mkdir(probe, 0o755)
        except OSError:
            continue
        with contextlib.suppress(OSError):
            os.rmdir(probe)
        return mechanism, home
    return ("subreaper" if _LINUX else "session"), None


def kill_tree(tree_file: str, timeout: float = 1.0) -> list[int]:
    """Kill whatever is left of a slot whose launcher is gone, as its tree file describes.

    Returns:
        The processes still alive after ``timeout`` seconds (normally none).
    """
    tree = Tree.load(tree_file)
    if tree is None or tree.mechanism == "session":
        return []
    return tree.kill(timeout)


# -- the launcher ------------------------------------------------------------------------------


def _write_exit_file(path: str, code: int) -> None:
    _write_atomically(path, f"{code}\n")


def _cleanup_mode(value: str) -> str:
    if value not in CLEANUP_MODES:
        raise ValueError(f"choose from {', '.join(CLEANUP_MODES)}")
    return value


#: The launcher's options: their default and how a value is read.  An option whose
#: default is a list may be given several times.
_OPTIONS: dict[str, tuple[object, Callable[[str], object]]] = {
    "--exit-file": (None, str),
    "--tree-file": (None, str),
    "--memory-bytes": (None, int),
    "--cleanup": ("auto", _cleanup_mode),
    "--place-file": (None, str),
    "--route-to": (None, str),
    "--port": ([], str),
    "--wait-place": (None, str),
}


class _UsageError(Exception):
    """The launcher's arguments are not what the server passes it."""


def _read(argv: list[str]) -> SimpleNamespace:
    if "--" not in argv or argv[-1] == "--":
        raise _UsageError("no command given after --")
    split = argv.index("--")
    options, command = argv[:split], argv[split + 1 :]
    if len(options) % 2:
        raise _UsageError("expected --option VALUE pairs before --")
    values = {
        name: list(default) if isinstance(default, list) else default
        for name, (default, _) in _OPTIONS.items()
    }
    for name, value in zip(options[::2], options[1::2], strict=True):
        if name not in _OPTIONS:
            raise _UsageError(f"unknown option {name}")
        try:
            read = _OPTIONS[name][1](value)
        except ValueError as exc:
            raise _UsageError(f"{name} {value!r}: {exc}") from None
        current = values[name]
        if isinstance(current, list):
            current.append(read)
        else:
            values[name] = read
    if values["--exit-file"] is None:
        raise _UsageError("--exit-file is required")
    return SimpleNamespace(
        command=command, **{name[2:].replace("-", "_"): value for name, value in values.items()}
    )


def _parse(argv: list[str]) -> SimpleNamespace:
    """Read ``[--option VALUE]... -- ARGV...``; exit with status 2 on a usage error.

    Hand-written: importing argparse (with gettext and shutil) and building its parser took
    about as long as starting the interpreter, on every start of every job process.
    """
    try:
        return _read(argv)
    except _UsageError as exc:
        print(f"juliarun_aio.server._launcher: error: {exc}", file=sys.stderr)
        sys.exit(2)


def port_variable(name: str) -> str:
    """The environment variable of a port name (``my-port`` -> ``JRUN_PORT_MY_PORT``)."""
    return "JRUN_PORT_" + name.upper().replace("-", "_")


def address_towards(host: str) -> str:
    """This machine's address on the route to ``host``: where ``host`` reaches it.

    A UDP ``connect`` only chooses the route; it sends nothing.
    """
    import socket  # noqa: PLC0415 - only batch jobs need it: a local start skips the import

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, 9, type=socket.SOCK_DGRAM)[0]
        with socket.socket(family, kind, proto) as sock:
            sock.connect(address)
            return str(sock.getsockname()[0])
    except OSError:
        return socket.gethostbyname(socket.gethostname())


def free_ports(names: list[str], host: str = "") -> dict[str, int]:
    """Pick a free TCP port on ``host`` (every interface by default) for each name."""
    import socket  # noqa: PLC0415 - only jobs with ports chosen here need it

    ports: dict[str, int] = {}
    holders: list[socket.socket] = []
    try:
        for name in names:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            holders.append(sock)
            sock.bind((host, 0))
            ports[name] = sock.getsockname()[1]
    finally:
        for sock in holders:
            sock.close()
    return ports


def read_place(path: str) -> dict[str, object] | None:
    """The content of a place file, or None while it is not (completely) there."""
    import json  # noqa: PLC0415 - only jobs spread over nodes read place files

    try:
        with open(path, encoding="utf-8") as fh:
            place = json.load(fh)
    except (OSError, ValueError):
        return None
    return place if isinstance(place, dict) else None


def _wait_for_place(path: str, received: list[int]) -> dict[str, object] | None:
    """Wait for the place file at ``path``; None when a signal came first."""
    while not received:
        place = read_place(path)
        if place is not None:
            return place
        time.sleep(PLACE_POLL)
    return None


def _fill_ports(text: str, env: dict[str, str]) -> str:
    if "${JRUN_PORT_" not in text:
        return text
    import re  # noqa: PLC0415 - only programs whose arguments name a port need it

    return re.sub(_PORT_PLACEHOLDER, lambda match: env.get(match[1], match[0]), text)


def _placed_environment(
    args: SimpleNamespace, received: list[int], environ: Mapping[str, str]
) -> dict[str, str] | None:
    """The program's environment with its ports and the master's address; None if stopped."""
    env = dict(environ)
    ports = free_ports(args.port) if args.port else {}
    env.update({port_variable(name): str(port) for name, port in ports.items()})
    if args.place_file is not None:
        import json  # noqa: PLC0415 - only jobs spread over nodes write place files
        import socket  # noqa: PLC0415 - idem

        host = address_towards(args.route_to) if args.route_to else socket.gethostname()
        _write_atomically(args.place_file, json.dumps({"host": host, "ports": ports}) + "\n")
    if args.wait_place is not None:
        master = _wait_for_place(args.wait_place, received)
        if master is None:
            return None
        env["JRUN_MASTER_HOST"] = str(master.get("host"))
        master_ports = master.get("ports")
        if isinstance(master_ports, dict):
            env.update({port_variable(str(k)): str(v) for k, v in master_ports.items()})
    for key, value in env.items():
        env[key] = _fill_ports(value, env)
    return env


def _wait_for(pid: int) -> int:
    """Wait for ``pid`` to end, reaping any other (re-parented) child meanwhile."""
    while True:
        ended, status = os.waitpid(-1, 0)
        if ended == pid:
            return os.waitstatus_to_exitcode(status)


#: Signals Python ignores that a program must get with their default action.
_RESTORED = (signal.SIGPIPE, signal.SIGXFSZ)


def _spawn(command: list[str], env: dict[str, str], memory: int | None) -> int:
    """Run ``command`` in a process group of its own, under ``memory``; return its pid.

    What ``subprocess.Popen`` would do here (its import, with ``locale``, ``re`` and
    ``selectors``, cost every start about as much as the rest of the launcher's imports):
    fork, set up the child, exec, and report an exec failure through a pipe.

    Raises:
        OSError: The program cannot be executed (``FileNotFoundError`` when not found).
    """
    read_end, write_end = os.pipe()  # both closed on exec
    pid = os.fork()
    if pid == 0:  # the child: never returns
        try:
            os.close(read_end)
            os.setpgid(0, 0)
            for restored in _RESTORED:
                signal.signal(restored, signal.SIG_DFL)
            if memory is not None:
                resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
            # Only stdin, stdout and stderr go to the program.
            os.closerange(3, write_end)
            os.closerange(write_end + 1, 1 << 20)
            os.execvpe(command[0], command, env)  # noqa: S606 - an argv list, never a shell
        except BaseException as exc:
            error = exc.errno if isinstance(exc, OSError) and exc.errno else 0
            os.write(write_end, str(error).encode())
        finally:
            os._exit(EXIT_NOT_FOUND)
    os.close(write_end)
    report = b""
    while chunk := os.read(read_end, 64):
        report += chunk
    os.close(read_end)
    if not report:
        return pid
    os.waitpid(pid, 0)
    error = int(report)
    raise OSError(error, os.strerror(error) if error else "cannot be started", command[0])


class _Launch:
    """One run of a program: its signals, from the moment this object exists, and its end.

    Args:
        args: The launcher's arguments.
    """

    def __init__(self, args: SimpleNamespace) -> None:
        self.args = args
        self.child: int | None = None
        self.received: list[int] = []
        # Installed before the program starts, so that no signal can kill the launcher
        # alone and leave the program running unobserved.
        for received_signal in FORWARDED:
            signal.signal(received_signal, self.forward)

    def forward(self, received_signal: int, _frame: FrameType | None) -> None:
        """Pass a signal on to the program's process group (once it exists)."""
        signum = FORWARDED[received_signal]
        if self.child is None:
            self.received.append(signum)  # delivered as soon as the program exists
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.child, signum)

    def run(
        self, tree: Tree, environ: Mapping[str, str], started: Callable[[], None] | None = None
    ) -> int:
        """Start the program in ``tree``, wait for it, clean up, write the exit file.

        Args:
            tree: Where the launcher has put itself (:func:`contain`).
            environ: The environment the program's own starts from.
            started: Called once the program runs (or could not be started).

        Returns:
            The launcher's exit status.
        """
        args, received = self.args, self.received
        env = _placed_environment(args, received, environ)
        if env is None:  # stopped while waiting for the master
            _write_exit_file(args.exit_file, -received[0])
            return 128 + received[0]
        env[SLOT_VARIABLE] = tree.slot
        command = [_fill_ports(arg, env) for arg in args.command]
        try:
            self.child = _spawn(command, env, args.memory_bytes)
        except FileNotFoundError:
            print(f"juliarun: cannot run {args.command[0]!r}: not found", file=sys.stderr)
            code = EXIT_NOT_FOUND
        except (PermissionError, OSError) as exc:
            print(f"juliarun: cannot run {args.command[0]!r}: {exc.strerror}", file=sys.stderr)
            code = EXIT_NOT_EXECUTABLE
        else:
            for signum in received:
                self.forward(signum, None)
        if started is not None:
            started()
        if self.child is not None:
            code = _wait_for(self.child)
        left = tree.clean_up(LAUNCHER_KILL_WAIT, self.child)
        if left:
            print(
                f"juliarun: {len(left)} process(es) of the job could not be killed: "
                f"{', '.join(map(str, left))}",
                file=sys.stderr,
            )
        _write_exit_file(args.exit_file, code)
        return code if code >= 0 else 128 - code


def run(argv: list[str]) -> int:
    """Run the command described by ``argv`` (launcher arguments) and return its exit code."""
    launch = _Launch(_parse(argv))
    tree = contain(launch.args.cleanup, os.urandom(8).hex(), launch.args.tree_file)
    return launch.run(tree, os.environ)


# -- a spare launcher ------------------------------------------------------------------------
#
# ``_launcher.py --spare FD --tree-file PATH --cleanup MODE`` starts a launcher before its
# job is known: the interpreter, the imports and the slot's container (cgroup, subreaper)
# are set up, then it says ``r`` (ready) on the Unix stream socket FD and waits there for
# one job, which the server sends as:
#
#   8 bytes: the length N of the JSON that follows (big-endian), sent with two file
#            descriptors (SCM_RIGHTS): the program's stdout and stderr;
#   N bytes: {"argv": [launcher arguments, as for a cold start], "env": {...}, "cwd": "..."}
#
# The spare takes the descriptors as its stdout and stderr, moves to ``cwd``, takes
# ``env`` as its whole environment (nothing of its own is left in it), records its
# container in the job's tree file (and removes the spare's own, ``PATH``), then answers
# ``ok`` -- or ``E<errno>`` when it cannot enter ``cwd`` -- and runs the job exactly as a
# launcher started for it would.  It closes the socket once the program runs.  On end of
# file before a job (the server stopped or let it go) it removes its container and exits.


#: The most a job message may hold (its environment and arguments).
SPARE_MESSAGE_LIMIT = 64 * 1024 * 1024
_SPARE_HEADER = 8


def _read_exactly(sock: socket.socket, size: int, first: bytes = b"") -> bytes | None:
    data = bytearray(first)
    while len(data) < size:
        chunk = sock.recv(min(size - len(data), 1 << 20))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def _receive_job(sock: socket.socket) -> tuple[list[str], dict[str, str], str, int, int] | None:
    """The job the server sends: argv, env, cwd, stdout and stderr; None on end of file."""
    import json  # noqa: PLC0415 - imported while the spare waits, not by cold starts
    import socket  # noqa: PLC0415 - idem

    head, fds, _, _ = socket.recv_fds(sock, _SPARE_HEADER, 2)
    if not head:
        for fd in fds:
            os.close(fd)
        return None
    header = _read_exactly(sock, _SPARE_HEADER, head)
    size = int.from_bytes(header, "big") if header is not None else 0
    body = _read_exactly(sock, size) if 0 < size <= SPARE_MESSAGE_LIMIT else None
    message = json.loads(body) if body is not None else None
    if not isinstance(message, dict) or len(fds) != 2:
        for fd in fds:
            os.close(fd)
        return None
    argv, env, cwd = message.get("argv"), message.get("env"), message.get("cwd")
    if not (isinstance(argv, list) and isinstance(env, dict) and isinstance(cwd, str)):
        for fd in fds:
            os.close(fd)
        return None
    out_fd, err_fd = fds
    return [str(arg) for arg in argv], {str(k): str(v) for k, v in env.items()}, cwd, out_fd, err_fd


def _drop(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def serve_spare(fd: int, tree_file: str, mode: str) -> int:
    """Be a spare launcher: contain this process, wait for a job on socket ``fd``, run it.

    Args:
        fd: The Unix stream socket the server sends the job on.
        tree_file: Where the spare's container is recorded until a job comes.
        mode: The ``--cleanup`` mode.

    Returns:
        The launcher's exit status (0 when no job came).
    """
    import socket  # noqa: PLC0415 - only a spare talks to the server

    sock = socket.socket(fileno=fd)
    tree = contain(mode, os.urandom(8).hex(), tree_file)
    try:
        sock.sendall(b"r")
        job = _receive_job(sock)
    except (OSError, ValueError):
        job = None
    if job is None:
        tree.clean_up(LAUNCHER_KILL_WAIT, None)
        _drop(tree_file)
        return 0
    argv, environ, cwd, out_fd, err_fd = job
    launch = _Launch(_parse(argv))
    os.dup2(out_fd, 1)
    os.dup2(err_fd, 2)
    os.close(out_fd)
    os.close(err_fd)
    try:
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(environ)
        tree.save(launch.args.tree_file)
        _drop(tree_file)
        sock.sendall(b"ok")
    except OSError as exc:
        with contextlib.suppress(OSError):
            sock.sendall(b"E%d" % (exc.errno or 0))
        tree.clean_up(LAUNCHER_KILL_WAIT, None)
        _drop(tree_file)
        return 1
    return launch.run(tree, environ, started=sock.close)


def _spare_options(argv: list[str]) -> tuple[int, str, str]:
    options = dict(zip(argv[::2], argv[1::2], strict=False))
    try:
        return int(options["--spare"]), options["--tree-file"], _cleanup_mode(options["--cleanup"])
    except (KeyError, ValueError) as exc:
        print(f"juliarun_aio.server._launcher: error: bad spare options: {exc}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    """Entry point: run the command and exit with its code (or be a spare launcher)."""
    argv = sys.argv[1:]
    if argv[:1] == ["--spare"]:
        sys.exit(serve_spare(*_spare_options(argv)))
    sys.exit(run(argv))


if __name__ == "__main__":
    main()
