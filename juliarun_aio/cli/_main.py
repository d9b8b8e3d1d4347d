"""The body of ``juliarun``: read the command line, then run the command.

``main(argv)`` parses the command line and hands the command to :mod:`._runner`, which
runs it and maps its failures to exit codes.  Reading the command line needs only the
parser: ``juliarun --help``, ``--version`` and usage errors load neither rich nor anyio
nor the parts of the SDK that a command uses.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ._errors import ExitCode
from ._parser import build_parser

__all__ = ["main"]


def _server(argv: Sequence[str]) -> int:
    from ._output import Output  # noqa: PLC0415 - rich, loaded once a command is to run

    try:
        from ..server.__main__ import main as server_main  # noqa: PLC0415 - optional extra
    except ImportError as exc:
        Output().error(
            f"the local server is not installed ({exc.name} is missing)",
            "pip install 'juliarun_aio[server]'",
        )
        return ExitCode.ERROR
    try:
        server_main(list(argv))
    except SystemExit as exc:  # argparse (--help, usage) or a configuration error
        if isinstance(exc.code, str):
            Output().error(
                exc.code.removeprefix("juliarun-server: "),
                "check the flags ('juliarun server --help') and the data directory",
            )
            return ExitCode.ERROR
        return int(exc.code or 0)
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    return ExitCode.OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``juliarun`` command line.

    Args:
        argv: The arguments after the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit code, one of :class:`~juliarun_aio.cli._errors.ExitCode`.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["server"]:
        return _server(argv[1:])
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse: --help, --version (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else ExitCode.USAGE
    from ._runner import run  # noqa: PLC0415 - loaded once a command is to run

    return run(args)
