"""The ``juliarun`` command line: subcommands, flags and help texts (argparse)."""

from __future__ import annotations

import argparse
import inspect
from typing import NoReturn

from .._specs import SPEC_TYPES
from .._version import __version__
from ._spec_flags import SpecHelpFormatter, add_spec_arguments

__all__ = ["build_parser"]

_DESCRIPTION = """\
Submit, watch, scale and remove jobs on a JuliaRun server, or run one locally.

Connection settings come from the flags, else from JRUN_URL, JRUN_TOKEN (or
JRUN_TOKEN_FILE), JRUN_NAMESPACE and JRUN_CA_BUNDLE, else from the in-cluster defaults.
A job is named NAME or TYPE/NAME; with NAME alone its type is looked up.
"""

_EPILOG = """\
examples:
  juliarun demo                                   run everything locally, in under a minute
  juliarun server --data-dir ./jrun               start a local server (prints its settings)
  juliarun submit JuliaBatch hello --start-script hello.jl --run-volume work -f
  juliarun scale train 3 --wait
  juliarun logs hello -f
  juliarun info --json

exit codes:
  0 ok, 1 error, 2 usage error, 3 job not found, 4 authentication or permission refused,
  5 job failed, 6 wait timed out, 7 conflict (job exists, or still running), 8 the
  server's TLS certificate was refused, 130 Ctrl-C, 141 output closed (e.g. piped into head)
"""


class _Parser(argparse.ArgumentParser):
    """Reports a usage error in the CLI's one-line form, with exit code 2."""

    def error(self, message: str) -> NoReturn:
        """Print ``juliarun: error: <message> -- see '<prog> --help'`` and exit 2."""
        self.exit(2, f"juliarun: error: {message} -- see '{self.prog} --help'\n")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0 seconds")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more")
    return value


def _common_parents() -> tuple[_Parser, _Parser]:
    """Return the connection flags and the ``--json`` flag, usable before or after the verb."""
    # SUPPRESS as default: a flag given before the subcommand is not reset by the
    # subcommand's parser, which knows the same flag.
    connection = _Parser(add_help=False)
    group = connection.add_argument_group("connection")
    group.add_argument("--url", default=argparse.SUPPRESS, help="root URL of the server (JRUN_URL)")
    group.add_argument(
        "--token",
        default=argparse.SUPPRESS,
        metavar="VALUE",
        help="the raw token (JRUN_TOKEN), written --token=VALUE (a token may start with '-'); "
        "prefer --token-file, which other users cannot see",
    )
    group.add_argument(
        "--token-file",
        default=argparse.SUPPRESS,
        metavar="PATH",
        help="a file holding the token, re-read when it changes (JRUN_TOKEN_FILE)",
    )
    group.add_argument(
        "--namespace", "-n", default=argparse.SUPPRESS, help="namespace (JRUN_NAMESPACE)"
    )
    group.add_argument(
        "--ca-bundle",
        default=argparse.SUPPRESS,
        metavar="FILE",
        help="the CA certificate(s) the server's TLS certificate is verified with "
        "(JRUN_CA_BUNDLE; a server started with --tls-self-signed prints it)",
    )
    output = _Parser(add_help=False)
    output.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print JSON for scripts (messages go to stderr)",
    )
    return connection, output


def _job_argument(parser: _Parser) -> None:
    parser.add_argument("job", metavar="NAME", help="the job: NAME or TYPE/NAME")


def _add_spec_commands(
    commands: argparse._SubParsersAction[_Parser],
    parents: list[_Parser],
) -> None:
    for verb in ("submit", "update"):
        what = "submit a new job" if verb == "submit" else "change a job's definition"
        note = "" if verb == "submit" else " Give the required parameters again."
        verb_parser = commands.add_parser(
            verb,
            help=f"{what}: {verb} TYPE NAME --param value...",
            description=f"{what.capitalize()}.{note}  'juliarun {verb} TYPE --help' lists "
            "the parameters of TYPE.",
        )
        kinds = verb_parser.add_subparsers(dest="kind", metavar="TYPE", required=True)
        for kind, spec_type in SPEC_TYPES.items():
            summary = (inspect.getdoc(spec_type) or kind).splitlines()[0]
            kind_parser = kinds.add_parser(
                kind,
                parents=parents,
                help=summary,
                description=f"{what.capitalize()} of type {kind}: {summary}{note}  "
                "Values use the wire syntax: ports as [NAME:]CONTAINER:SERVICE[,...], "
                "lists and environments as JSON (or the repeatable --volume, --arg and "
                "--env flags), booleans as true or false.",
                formatter_class=SpecHelpFormatter,
            )
            kind_parser.add_argument("name", metavar="NAME", help="the job's name")
            if verb == "submit":
                kind_parser.add_argument(
                    "--wait",
                    action="store_true",
                    help="wait for the job to end (exit 5 if it fails)",
                )
                kind_parser.add_argument(
                    "--follow",
                    "-f",
                    action="store_true",
                    help="stream the job's log until it ends (exit 5 if it fails)",
                )
                kind_parser.add_argument(
                    "--timeout", type=_seconds, help="give up waiting after this many seconds"
                )
            add_spec_arguments(kind_parser, spec_type)


def build_parser() -> argparse.ArgumentParser:
    """Build the ``juliarun`` argument parser with every subcommand."""
    connection, output = _common_parents()
    parents = [connection, output]
    parser = _Parser(
        prog="juliarun",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        parents=parents,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, text: str) -> _Parser:
        return commands.add_parser(name, parents=parents, help=text, description=text)

    add("status", "tell whether the server is up and connected to a cluster")
    add("list", "list the jobs of the namespace")
    add("info", "show every job with its phase, workers and endpoint")
    _add_spec_commands(commands, parents)

    _job_argument(add("job-status", "show a job's status"))

    scale = add("scale", "ask for N workers; with --wait, show them coming up")
    _job_argument(scale)
    scale.add_argument("workers", metavar="N", type=int, help="the number of workers")
    scale.add_argument("--wait", action="store_true", help="wait until N workers run")
    scale.add_argument(
        "--timeout", type=_seconds, default=600.0, help="seconds to wait (default: 600)"
    )

    _job_argument(add("endpoint", "show the host and named ports of a job"))

    url = add("url", "print a URL that reaches a port of a job")
    _job_argument(url)
    url.add_argument("port", metavar="PORT", help="the port number or name")

    logs = add("logs", "print a job's log; -f follows it until the job ends")
    _job_argument(logs)
    logs.add_argument("--follow", "-f", action="store_true", help="keep streaming new lines")
    logs.add_argument("--stream", choices=("stdout", "stderr"), help="one stream only")
    logs.add_argument(
        "--tail",
        type=_count,
        metavar="N",
        help="start with the last N lines (default: 50; with -f, the whole log)",
    )

    wait = add("wait", "wait for a job to end; exit 5 if it failed, 6 on timeout")
    _job_argument(wait)
    wait.add_argument("--timeout", type=_seconds, help="seconds to wait (default: no limit)")

    delete = add("delete", "remove a job (--force if it has not completed)")
    _job_argument(delete)
    delete.add_argument("--force", action="store_true", help="stop the job if it still runs")

    commands.add_parser(
        "server",
        add_help=False,
        help="start a local JuliaRun server (see 'juliarun server --help')",
    )
    commands.add_parser(
        "demo",
        help="start a local server, run a batch and a parallel job, clean up",
        description="Start a local server on a free loopback port with a temporary data "
        "directory, submit a batch job and stream its log, start a parallel job and scale "
        "it to 3 workers, print the status table, then delete the jobs and stop the "
        "server.  Uses .jl scripts when julia is on PATH, Python scripts otherwise.",
    )
    return parser
