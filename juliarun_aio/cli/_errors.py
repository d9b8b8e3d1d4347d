"""Exit codes, and the one line the CLI prints for each kind of failure.

Every failure a user can cause ends as ``juliarun: error: <what went wrong> -- <what to
do>`` on stderr and an exit code scripts can test:

====  ===================================================================
code  meaning
====  ===================================================================
0     success
1     any other error (server unreachable, unexpected answer, ...)
2     usage error: bad flag or flag value
3     job not found
4     authentication or permission refused
5     the job failed, or ended before what was waited for
6     a wait timed out
7     conflict: the job exists already, or is still running
8     the server's TLS certificate was refused (unknown CA, name mismatch, expired)
130   interrupted (Ctrl-C)
141   the reader of the output went away (``juliarun logs job | head``)
====  ===================================================================
"""

from __future__ import annotations

import enum

from .. import _errors as errors
from .._tls import certificate_advice

__all__ = ["CLI_TERMS", "CliError", "ExitCode", "JobFailedError", "UsageError", "describe"]


class ExitCode(enum.IntEnum):
    """The exit codes of ``juliarun``."""

    OK = 0
    ERROR = 1
    USAGE = 2
    NOT_FOUND = 3
    AUTH = 4
    JOB_FAILED = 5
    TIMEOUT = 6
    CONFLICT = 7
    CERTIFICATE = 8
    INTERRUPTED = 130
    OUTPUT_CLOSED = 141


class CliError(Exception):
    """A failure reported as one line and an exit code.

    Args:
        what: What went wrong.
        todo: What to do about it.
        exit_code: The process's exit code.
    """

    def __init__(self, what: str, todo: str = "", exit_code: ExitCode = ExitCode.ERROR) -> None:
        super().__init__(what)
        self.what = what
        self.todo = todo
        self.exit_code = exit_code


class UsageError(CliError):
    """The command line is wrong in a way argparse cannot see (exit 2)."""

    def __init__(self, what: str, todo: str = "") -> None:
        super().__init__(what, todo, ExitCode.USAGE)


class JobFailedError(CliError):
    """The job ended unsuccessfully (exit 5)."""

    def __init__(self, what: str, todo: str = "") -> None:
        super().__init__(what, todo, ExitCode.JOB_FAILED)


#: The hints of the command line name its flags and commands.
CLI_TERMS = errors.HintTerms(flags=True, list_jobs="'juliarun list'", delete="'juliarun delete'")


def _describe_api(exc: errors.ApiError) -> tuple[ExitCode, str, str]:
    what = exc.server_message or f"the server answered {exc.status_code}"
    if exc.verb:
        what = f"{what} ({exc.verb})"
    todo = (
        errors.hint_for(type(exc), verb=exc.verb, terms=CLI_TERMS)
        or "retry later, or check the server's logs"
    )
    if isinstance(exc, errors.AuthenticationError):
        return ExitCode.AUTH, f"the server refused the credential: {what}", todo
    if isinstance(exc, errors.PermissionDeniedError):
        return ExitCode.AUTH, f"the credential is not allowed here: {what}", todo
    if isinstance(exc, errors.JobNotFoundError):
        return ExitCode.NOT_FOUND, what, todo
    if isinstance(exc, errors.ConflictError):
        return ExitCode.CONFLICT, what, todo
    return ExitCode.ERROR, what, todo


def describe(exc: BaseException) -> tuple[ExitCode, str, str] | None:
    """Return ``(exit code, what went wrong, what to do)`` for a user-facing failure.

    Args:
        exc: The exception that ended the command.

    Returns:
        The description, or ``None`` for an exception that is a bug, not a user error.
    """
    if isinstance(exc, CliError):
        return exc.exit_code, exc.what, exc.todo
    if isinstance(exc, errors.SpecError):
        # The job name is the positional NAME of submit/update; every other field a flag.
        option = "NAME" if exc.field == "name" else "--" + exc.field.replace("_", "-")
        message = exc.message.removeprefix(f"{exc.field}: ")
        return (
            ExitCode.USAGE,
            f"{option}: {message}",
            "see 'juliarun submit TYPE --help' for the parameters",
        )
    if isinstance(exc, errors.ConfigurationError):
        return (
            ExitCode.ERROR,
            exc.message,
            "give --url, --token (or --token-file), --namespace and, for a server with its "
            "own CA, --ca-bundle, or set JRUN_URL, JRUN_TOKEN, JRUN_NAMESPACE, JRUN_CA_BUNDLE",
        )
    if isinstance(exc, errors.CertificateError):
        # What failed, without the SDK's advice (it names verify=, not the flag).
        what = exc.message.partition("; ")[0]
        return (
            ExitCode.CERTIFICATE,
            what,
            certificate_advice(exc.reason, exc.host, exc.trusted, CLI_TERMS),
        )
    if isinstance(exc, errors.ApiError):
        return _describe_api(exc)
    if isinstance(exc, errors.JobStateError):
        return (
            ExitCode.JOB_FAILED,
            exc.message,
            f"check the job with 'juliarun job-status {exc.job or 'NAME'}' and its logs",
        )
    if isinstance(exc, errors.WaitTimeoutError):
        return (
            ExitCode.TIMEOUT,
            exc.message,
            "wait longer with --timeout, or check the job with "
            f"'juliarun job-status {exc.job or 'NAME'}'",
        )
    if isinstance(exc, errors.TransportError):
        return (
            ExitCode.ERROR,
            exc.message,
            "check --url (or JRUN_URL) and that the server is running ('juliarun server')",
        )
    if isinstance(exc, errors.JuliaRunError):
        return ExitCode.ERROR, str(exc), "retry, or report this with the command you ran"
    return None
