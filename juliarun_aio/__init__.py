"""juliarun_aio: an asyncio-first SDK for the JuliaRun job platform.

``Context`` speaks every verb of the JuliaRun protocol over one pooled connection, job
specs are checked before anything is sent, and the long-running helpers (``tail_logs``,
``wait_for_workers``, ``watch_job``) are cancellable async generators that run under
asyncio and trio.  The bundled local server lives in :mod:`juliarun_aio.server`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._cluster import initialize_cluster, release_cluster, self_job
from ._context import Context
from ._errors import (
    ApiError,
    AuthenticationError,
    BadRequestError,
    CertificateError,
    ClientClosedError,
    ConfigurationError,
    ConflictError,
    EventLoopError,
    InsecureTransportWarning,
    JobNotFoundError,
    JobStateError,
    JuliaRunError,
    PermissionDeniedError,
    RateLimitError,
    RequestTimeoutError,
    ResponseError,
    ServerError,
    SpecError,
    TransportError,
    WaitTimeoutError,
)
from ._jobs import JOB_KINDS, Job, JobRef, JobSpec, make_spec
from ._models import Endpoint, JobInfo, JobScale, JobStatus, JobTable
from ._retry import DEFAULT_RETRY, NO_RETRIES, RetryPolicy
from ._version import __version__

if TYPE_CHECKING:
    from ._logs import LogBatch, LogGapWarning, LogLine
    from ._specs import (
        Generic,
        JuliaBatch,
        JuliaParBatch,
        JuliaParBatchWorkers,
        MessageQ,
        Notebook,
        PkgBuilder,
        Webserver,
    )
    from ._watch import PollPolicy

__all__ = [
    "DEFAULT_RETRY",
    "JOB_KINDS",
    "NO_RETRIES",
    "ApiError",
    "AuthenticationError",
    "BadRequestError",
    "CertificateError",
    "ClientClosedError",
    "ConfigurationError",
    "ConflictError",
    "Context",
    "Endpoint",
    "EventLoopError",
    "Generic",
    "InsecureTransportWarning",
    "Job",
    "JobInfo",
    "JobNotFoundError",
    "JobRef",
    "JobScale",
    "JobSpec",
    "JobStateError",
    "JobStatus",
    "JobTable",
    "JuliaBatch",
    "JuliaParBatch",
    "JuliaParBatchWorkers",
    "JuliaRunError",
    "LogBatch",
    "LogGapWarning",
    "LogLine",
    "MessageQ",
    "Notebook",
    "PermissionDeniedError",
    "PkgBuilder",
    "PollPolicy",
    "RateLimitError",
    "RequestTimeoutError",
    "ResponseError",
    "RetryPolicy",
    "ServerError",
    "SpecError",
    "TransportError",
    "WaitTimeoutError",
    "Webserver",
    "__version__",
    "initialize_cluster",
    "make_spec",
    "release_cluster",
    "self_job",
]

#: The former name of :class:`RequestTimeoutError`, kept as an attribute of the package
#: only: it is not in ``__all__``, so ``from juliarun_aio import *`` leaves the builtin
#: ``TimeoutError`` alone.
TimeoutError = RequestTimeoutError


def __getattr__(name: str) -> Any:
    # What most programs need only later loads on first use: the job spec classes
    # (defining them is most of what importing the package would cost, see _specs), and
    # the types of the log and wait helpers.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


_LAZY = {
    **dict.fromkeys(JOB_KINDS, "._specs"),
    **dict.fromkeys(("LogBatch", "LogGapWarning", "LogLine"), "._logs"),
    "PollPolicy": "._watch",
}


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
