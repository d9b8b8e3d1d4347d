"""The tiny program every job process runs under.

``python -m juliarun_aio.server._launcher --exit-file PATH [--memory-bytes N] -- ARGV...``

The server starts it in a session of its own, with stdout/stderr already pointing at the
process's log files, so neither the job nor its output depends on the server staying up.
The launcher

- applies ``RLIMIT_AS`` to the program when a memory limit is given,
- runs ``ARGV`` directly (never through a shell) in a process group of its own,
- forwards SIGTERM/SIGINT to that process group, exactly once per signal received,
- writes the program's exit code (``-N`` when killed by signal N) atomically to the exit
  file, which is how a server -- this one or a later one -- learns that the process ended.

It imports nothing from the package so that it starts fast; the server runs it by path.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import signal
import subprocess
import sys
from types import FrameType

#: Exit code written when the program cannot be started (as a shell would report it).
EXIT_NOT_FOUND = 127
EXIT_NOT_EXECUTABLE = 126


def _write_exit_file(path: str, code: int) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="ascii") as fh:
        fh.write(f"{code}\n")
    os.replace(tmp, path)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="juliarun_aio.server._launcher")
    parser.add_argument("--exit-file", required=True)
    parser.add_argument("--memory-bytes", type=int, default=None)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.command and args.command[0] == "--":
        args.command = args.command[1:]
    if not args.command:
        parser.error("no command given after --")
    return args


def run(argv: list[str]) -> int:
    """Run the command described by ``argv`` (launcher arguments) and return its exit code."""
    args = _parse(argv)
    memory: int | None = args.memory_bytes

    def prepare_child() -> None:  # runs in the child between fork and exec
        os.setpgid(0, 0)
        if memory is not None:
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    child: subprocess.Popen[bytes] | None = None
    received: list[int] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        if child is None:
            received.append(signum)  # delivered as soon as the program exists
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signum)

    # Installed before the program starts, so that no signal can kill the launcher alone
    # and leave the program running unobserved.
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        child = subprocess.Popen(args.command, preexec_fn=prepare_child)  # noqa: S603, PLW1509 - argv list; no threads here
    except FileNotFoundError:
        print(f"juliarun: cannot run {args.command[0]!r}: not found", file=sys.stderr)
        _write_exit_file(args.exit_file, EXIT_NOT_FOUND)
        return EXIT_NOT_FOUND
    except (PermissionError, OSError) as exc:
        print(f"juliarun: cannot run {args.command[0]!r}: {exc.strerror}", file=sys.stderr)
        _write_exit_file(args.exit_file, EXIT_NOT_EXECUTABLE)
        return EXIT_NOT_EXECUTABLE
    for signum in received:
        forward(signum, None)
    code = child.wait()
    _write_exit_file(args.exit_file, code)
    return code if code >= 0 else 128 - code


def main() -> None:
    """Entry point: run the command and exit with its code."""
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
