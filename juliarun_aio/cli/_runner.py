"""Running one command of ``juliarun``: its own event loop, its Context, its failures.

:func:`run` runs the command that :mod:`._main` parsed, on its own event loop, and returns
the exit code (see :mod:`juliarun_aio.cli._errors` for the table).  User errors print one
line, ``juliarun: error: <what went wrong> -- <what to do>``, never a traceback and never
the credential.  Ctrl-C cancels the running command, closes the connection and exits with
130.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
import warnings
from pathlib import Path

import anyio

from .._config import redact, secret_forms
from .._context import Context
from .._errors import CertificateError
from .._tls import load_bundle
from ._commands import COMMANDS
from ._errors import ExitCode, describe
from ._output import Output

__all__ = ["run"]


def _known_secrets(args: argparse.Namespace) -> tuple[str, ...]:
    """Every form of every token the command could use, so that none is ever printed."""
    tokens = [getattr(args, "token", None), os.environ.get("JRUN_TOKEN")]
    for path in (getattr(args, "token_file", None), os.environ.get("JRUN_TOKEN_FILE")):
        if path:
            # An unreadable token file is reported by the Context, with advice.
            with contextlib.suppress(OSError):
                tokens.append(Path(path).read_text(encoding="utf-8").strip())
    return tuple(form for token in tokens if token for form in secret_forms(token))


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush cannot fail."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def _leaf(exc: BaseException) -> BaseException:
    """The one error inside (nested) single-error exception groups, else ``exc``."""
    # Duck-typed: BaseExceptionGroup is a builtin only from Python 3.11 on.
    inner = getattr(exc, "exceptions", None)
    while isinstance(inner, tuple) and len(inner) == 1 and isinstance(inner[0], BaseException):
        exc = inner[0]
        inner = getattr(exc, "exceptions", None)
    return exc


async def _run(args: argparse.Namespace, out: Output) -> int:
    if args.command == "demo":
        from ._demo import run_demo  # noqa: PLC0415 - needs the [server] extra

        return await run_demo(out)
    # Read here, so that messages name the flag rather than the SDK's verify=.
    ca_bundle = getattr(args, "ca_bundle", None)
    trust = None if ca_bundle is None else load_bundle(ca_bundle, "--ca-bundle", given=True)
    async with Context(
        url=getattr(args, "url", None),
        token=getattr(args, "token", None),
        namespace=getattr(args, "namespace", None),
        token_file=getattr(args, "token_file", None),
        verify=None if trust is None else trust.verify,
    ) as ctx:
        base = out.redact
        out.redact = lambda text: ctx.redact(base(text))
        try:
            return await COMMANDS[args.command](ctx, args, out)
        except CertificateError as exc:
            if trust is not None:
                exc.trusted = trust.source
            raise


def run(args: argparse.Namespace) -> int:
    """Run the parsed command on its own event loop.

    Returns:
        The exit code, one of :class:`~juliarun_aio.cli._errors.ExitCode`.
    """
    out = Output(
        json_mode=getattr(args, "json", False),
        redact=functools.partial(redact, secrets=_known_secrets(args)),
    )
    try:
        with warnings.catch_warnings():
            # A warning (e.g. a gap in a polled log) is one line, not a source excerpt.
            warnings.showwarning = lambda message, *_: out.warn(str(message))
            return anyio.run(_run, args, out)
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    except BaseException as exc:  # every user error becomes one line and a code
        leaf = _leaf(exc)
        if isinstance(leaf, KeyboardInterrupt):
            return ExitCode.INTERRUPTED
        if isinstance(leaf, BrokenPipeError):  # `juliarun logs job | head` stopped reading
            _silence_stdout()
            return ExitCode.OUTPUT_CLOSED
        description = describe(leaf)
        if description is None:
            raise
        code, what, todo = description
        out.error(what, todo)
        return code
