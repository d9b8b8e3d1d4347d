"""The ``juliarun`` command line (also ``python -m juliarun_aio``).

Subcommands over every SDK call (``status``, ``list``, ``info``, ``submit``, ``update``,
``job-status``, ``scale``, ``endpoint``, ``url``, ``logs``, ``wait``, ``delete``), the local
server (``server``) and a self-contained ``demo``.  ``juliarun --help`` has the details and
the exit codes.  Needs the ``[cli]`` extra (rich); ``server`` and ``demo`` also ``[server]``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``juliarun`` command line.

    Args:
        argv: The arguments after the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit code: 0 ok, 1 error, 2 usage, 3 not found, 4 auth, 5 job failed,
        6 timeout, 7 conflict, 130 interrupted, 141 output closed.
    """
    from ._main import main as run  # noqa: PLC0415 - `import juliarun_aio.cli` stays light

    try:
        return run(argv)
    except ModuleNotFoundError as exc:  # a command needs rich; --help does not
        if exc.name != "rich":
            raise
        sys.stderr.write(
            "juliarun: error: the command line needs rich, which is not installed -- "
            "pip install 'juliarun_aio[cli]'\n"
        )
        return 1
