"""What ``import juliarun_aio`` needs besides httpx: the Context's defaults and types.

The defaults and argument types of :class:`~juliarun_aio.Context`'s signatures, and the
names of the job types, live here rather than in the modules that use them (``_config``,
``_http``, ``_jobs``, ``_retry``, ``_tls``, which re-export them): those need attrs or
anyio, which load on first use (see ``_lazy``).
"""

from __future__ import annotations

import os
import ssl
from typing import Final

import httpx

__all__ = [
    "DEFAULT_ATTEMPTS",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_LIMITS",
    "DEFAULT_START_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "DEFAULT_WAIT_TIMEOUT",
    "JOB_KINDS",
    "UNSET",
    "TimeoutArg",
    "Unset",
    "Verify",
]

JOB_KINDS: tuple[str, ...] = (
    "JuliaParBatch",
    "JuliaParBatchWorkers",
    "Notebook",
    "JuliaBatch",
    "PkgBuilder",
    "Webserver",
    "MessageQ",
    "Generic",
)
"""The eight job types, spelled as the protocol's ``<JobType>`` URL segment."""

#: Connect quickly or fail; give the server time to answer; never wait forever.
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
#: One pool per Context; helpers share it, so this also bounds concurrent requests.
DEFAULT_LIMITS = httpx.Limits(max_connections=20, max_keepalive_connections=20)
#: Tries per call, the first included, of the default retry policy (``DEFAULT_RETRY``).
DEFAULT_ATTEMPTS = 4
#: ``tail_logs``: seconds to wait for a job that does not exist yet.
DEFAULT_START_TIMEOUT = 60.0
#: ``tail_logs``: seconds without a byte (heartbeats included) after which a stream is
#: presumed dead.
DEFAULT_IDLE_TIMEOUT = 30.0
#: How long ``wait_for_workers`` / ``wait_for_scale`` wait by default, in seconds.
DEFAULT_WAIT_TIMEOUT = 600.0

#: What ``verify=`` takes: what httpx takes, and a path as a :class:`os.PathLike` too.
Verify = bool | str | os.PathLike[str] | ssl.SSLContext


class Unset:
    """Tells "not given" from ``None``."""

    def __repr__(self) -> str:
        return "UNSET"


#: A per-call argument left out: the Context's setting applies.
UNSET: Final = Unset()

#: A per-call ``timeout=``: seconds, an :class:`httpx.Timeout`, or :data:`UNSET`.
TimeoutArg = float | httpx.Timeout | Unset
