"""juliarun_aio: an asyncio-first SDK for the JuliaRun job platform.

``Context`` speaks every verb of the JuliaRun protocol over one pooled connection, job
specs are checked before anything is sent, and the long-running helpers (``tail_logs``,
``wait_for_workers``, ``watch_job``) are cancellable async generators that run under
asyncio and trio.  The bundled local server lives in :mod:`juliarun_aio.server`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._base import JOB_KINDS
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
from ._version import __version__

if TYPE_CHECKING:
    from ._cluster import initialize_cluster, release_cluster, self_job
    from ._jobs import Job, JobRef, JobSpec, make_spec
    from ._logs import LogBatch, LogGapWarning, LogLine
    from ._models import Endpoint, JobInfo, JobScale, JobStatus, JobTable
    from ._retry import DEFAULT_RETRY, NO_RETRIES, RetryPolicy
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
    # Everything but the Context and the errors loads on first use: most of it is attrs
    # classes (defining the job specs is most of what importing the package used to
    # cost), and attrs itself and anyio take as long to import as the rest of the
    # package together.  A Context loads what it needs when it is made (see _lazy).
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


#: Where each name that loads on first use lives.
_LAZY = {
    **dict.fromkeys(("initialize_cluster", "release_cluster", "self_job"), "._cluster"),
    **dict.fromkeys(("Job", "JobRef", "JobSpec", "make_spec"), "._jobs"),
    **dict.fromkeys(("LogBatch", "LogGapWarning", "LogLine"), "._logs"),
    **dict.fromkeys(("Endpoint", "JobInfo", "JobScale", "JobStatus", "JobTable"), "._models"),
    **dict.fromkeys(("DEFAULT_RETRY", "NO_RETRIES", "RetryPolicy"), "._retry"),
    **dict.fromkeys(JOB_KINDS, "._specs"),
    "PollPolicy": "._watch",
}


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
