"""The HTTP face of the server: URL routing, credentials, the response envelope.

Every verb is a GET (docs/protocol.md): ``/<verb>/`` for system verbs, ``/<verb>/<JobType>/``
for job verbs, parameters in the query string, ``jruntok`` = base64 of the namespace's raw
token and ``jrunns`` = the namespace.  Answers are ``{"code": 0, "data": X}``; failures
carry an HTTP status and ``{"code": <status>, "data": "<message>"}``:

- 400 malformed input, 401 missing/undecodable/wrong credential, 403 a valid credential
  of another namespace, 404 unknown verb, job type or job (jobs of other namespaces are
  invisible), 405 not a GET, 409 name taken / incomplete job without ``force`` / update of
  a complete job, 414 a query string over :data:`MAX_QUERY`, 500 a bug (logged; the server
  keeps running).

The extensions ``serverInfo`` and ``streamLogs``, and the ``X-JuliaRun-Line-Count`` header
of ``tailJob`` answers, are described in PROTOCOL-EXTENSIONS.md.  The dashboard (``/ui/``,
module ``_ui``) is mounted beside the verbs and answers its API through :func:`answer`,
like the verbs.
Verb handlers run in worker threads (they touch SQLite and files); the log stream runs on
the event loop and reads files in threads.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import math
import re
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .._errors import ApiError
from .._jobs import JOB_KINDS
from .._logs import LINE_COUNT_HEADER
from .._version import __version__
from ._engine import Engine
from ._logs import FORMATS, LogClosedError, stream_log
from ._ui import Dashboard

__all__ = ["EXTENSIONS", "answer", "create_app"]

logger = logging.getLogger("juliarun_aio.server")

#: What ``serverInfo`` advertises.
EXTENSIONS = ("streamLogs", "streamLogsColumns", "jobUid")
SYSTEM_VERBS = frozenset({"getSystemStatus", "listJobs", "getAllJobInfo", "serverInfo"})
JOB_VERBS = frozenset(
    {
        "getJobStatus",
        "getJobScale",
        "setJobScale",
        "getJobEndpoint",
        "getEncodedURL",
        "deleteJob",
        "tailJob",
        "submitJob",
        "updateJob",
        "streamLogs",
    }
)
STREAMS = ("stdout", "stderr")
#: The header of a ``streamLogs`` answer naming the job submission it streams.
UID_HEADER = "X-JuliaRun-Job-Uid"
_UID = re.compile(r"[0-9a-f]{16}")
#: Longest query string accepted (a submitJob with large envvars stays well below).
MAX_QUERY = 256 * 1024


class HttpError(Exception):
    """An error answer: HTTP status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Answer:
    """A verb's ``data`` with response headers of its own."""

    def __init__(self, data: object, headers: Mapping[str, str]) -> None:
        self.data = data
        self.headers = headers


def _envelope(data: object) -> JSONResponse:
    if isinstance(data, _Answer):
        return JSONResponse({"code": 0, "data": data.data}, headers=dict(data.headers))
    return JSONResponse({"code": 0, "data": data})


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"code": status, "data": message}, status_code=status)


def _single_params(request: Request) -> dict[str, str]:
    if len(request.scope["query_string"]) > MAX_QUERY:
        raise HttpError(414, f"the query string is longer than {MAX_QUERY // 1024} KiB")
    params: dict[str, str] = {}
    for key, value in request.query_params.multi_items():
        if key in params:
            raise HttpError(400, f"parameter {key!r} is given more than once")
        params[key] = value
    return params


def _decode_token(encoded: str) -> str | None:
    # A '+' of base64 arrives as ' ' when a client did not percent-encode it.
    text = encoded.strip().replace(" ", "+")
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True).decode("utf-8").strip()
    except (binascii.Error, ValueError):
        return None


def authenticate(params: Mapping[str, str], tokens: Mapping[str, str]) -> str:
    """Check ``jruntok`` / ``jrunns`` and return the namespace.

    Raises:
        HttpError: 401 for a missing, undecodable or unknown token, 403 for a token of
            another namespace, 400 for a missing namespace.
    """
    encoded = params.get("jruntok")
    if not encoded:
        raise HttpError(401, "unauthorized: missing credential (jruntok = base64 of the token)")
    token = _decode_token(encoded)
    if not token:
        raise HttpError(401, "unauthorized: the credential (jruntok) is not valid base64 text")
    namespace = params.get("jrunns")
    if not namespace:
        raise HttpError(400, "missing parameter 'jrunns' (the namespace)")
    expected = tokens.get(namespace)
    if expected is not None and hmac.compare_digest(token.encode(), expected.encode()):
        return namespace
    if any(hmac.compare_digest(token.encode(), other.encode()) for other in tokens.values()):
        raise HttpError(403, f"forbidden: the token is not allowed in namespace {namespace!r}")
    raise HttpError(401, "unauthorized: invalid token")


def _int(params: Mapping[str, str], key: str, default: int | None = None) -> int:
    text = params.get(key)
    if text is None:
        if default is None:
            raise HttpError(400, f"missing parameter {key!r}")
        return default
    try:
        value = int(text)
    except ValueError:
        raise HttpError(400, f"parameter {key!r} must be an integer, got {text[:40]!r}") from None
    if value < 0:
        raise HttpError(400, f"parameter {key!r} must be 0 or more, got {value}")
    return value


def _bool(params: Mapping[str, str], key: str, default: bool) -> bool:
    text = params.get(key)
    if text is None:
        return default
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    raise HttpError(400, f"parameter {key!r} must be true or false, got {text[:40]!r}")


def _stream(params: Mapping[str, str]) -> str | None:
    stream = params.get("stream")
    if stream is not None and stream not in STREAMS:
        raise HttpError(400, f"parameter 'stream' must be stdout or stderr, got {stream[:40]!r}")
    return stream


def _columns(params: Mapping[str, str]) -> bool:
    text = params.get("format", FORMATS[0])
    if text not in FORMATS:
        raise HttpError(
            400, f"parameter 'format' must be {' or '.join(FORMATS)}, got {text[:40]!r}"
        )
    return text == "columns"


def _uid(params: Mapping[str, str]) -> str | None:
    uid = params.get("uid")
    if uid is not None and not _UID.fullmatch(uid):
        raise HttpError(
            400,
            f"parameter 'uid' must be the 16 lowercase hex digits of a job's uid, got {uid[:40]!r}",
        )
    return uid


def _heartbeat(params: Mapping[str, str]) -> float:
    text = params.get("heartbeat")
    if text is None:
        return 5.0
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.01 <= value <= 3600:
        raise HttpError(
            400, f"parameter 'heartbeat' must be seconds in [0.01, 3600], got {text[:40]!r}"
        )
    return value


def _job_verb(engine: Engine, verb: str, namespace: str, kind: str, params: dict[str, str]) -> Any:
    name = params.get("name")
    if verb == "getJobStatus":
        return engine.status(namespace, kind, name)
    if verb == "getJobScale":
        return engine.scale(namespace, kind, name)
    if verb == "setJobScale":
        return engine.set_scale(namespace, kind, name, _int(params, "parallelism"))
    if verb == "getJobEndpoint":
        return engine.endpoint(namespace, kind, name)
    if verb == "getEncodedURL":
        return engine.encoded_url(namespace, kind, name, params.get("port"))
    if verb == "deleteJob":
        return engine.delete(namespace, kind, name, force=_bool(params, "force", False))
    if verb == "tailJob":
        count = _int(params, "count", 50)
        stream = _stream(params)
        log, _ = engine.log(namespace, kind, name)
        try:
            lines = log.tail(count, stream)
        except LogClosedError:
            raise HttpError(404, f"job {name!r} was deleted while its log was read") from None
        # The text alone reads the same for no line and for one empty line.
        return _Answer("\n".join(lines), {LINE_COUNT_HEADER: str(len(lines))})
    if verb == "submitJob":
        engine.submit(namespace, kind, params)
        return None
    assert verb == "updateJob"
    engine.update(namespace, kind, params)
    return None


def _system_verb(engine: Engine, verb: str, namespace: str) -> Any:
    if verb == "getSystemStatus":
        return True
    if verb == "listJobs":
        return engine.list_jobs(namespace)
    if verb == "serverInfo":
        return {
            "server": "juliarun_aio",
            "version": __version__,
            "extensions": list(EXTENSIONS),
            "process_cleanup": engine.process_cleanup,
        }
    assert verb == "getAllJobInfo"
    return engine.all_job_info(namespace)


def _route(method: str, path: str) -> tuple[str, str | None]:
    """Return ``(verb, job type or None)`` of a request, or raise a 404/405."""
    if method != "GET":
        raise HttpError(405, f"method {method} not allowed: every verb is a GET")
    parts = [part for part in path.split("/") if part]
    if not parts or len(parts) > 2:
        raise HttpError(404, f"not found: {path[:80]!r} is not a JuliaRun verb URL")
    verb = parts[0]
    kind = parts[1] if len(parts) == 2 else None
    if verb in SYSTEM_VERBS:
        if kind is not None:
            raise HttpError(404, f"not found: {verb} takes no job type")
        return verb, None
    if verb not in JOB_VERBS:
        raise HttpError(404, f"not found: unknown verb {verb[:40]!r}")
    if kind is None:
        raise HttpError(404, f"not found: {verb} needs a job type, as /{verb}/<JobType>/")
    if kind not in JOB_KINDS:
        raise HttpError(404, f"not found: unknown job type {kind[:40]!r}")
    return verb, kind


def create_app(
    engine: Engine,
    *,
    manage_engine: bool = True,
    url: Callable[[], str] | None = None,
    dashboard: Dashboard | None = None,
) -> Starlette:
    """Build the ASGI application serving ``engine``: the protocol, and the dashboard at ``/ui/``.

    Args:
        engine: The job engine.
        manage_engine: Start the engine on application startup and stop it on shutdown.
        url: Returns the server's URL at startup (``JRUN_URL`` of jobs); by default the
            engine's configured host and port.
        dashboard: The dashboard's sessions and login codes; a new one by default.

    Returns:
        A Starlette application.
    """

    async def dispatch(request: Request) -> Response:
        try:
            params = _single_params(request)
            namespace = authenticate(params, engine.config.tokens)
            verb, kind = _route(request.method, request.url.path)
        except HttpError as exc:
            return _error(exc.status, exc.message)
        return await answer(engine, verb, kind, namespace, params)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        if manage_engine:
            await run_in_threadpool(engine.start, url() if url else None)
        try:
            yield
        finally:
            if manage_engine:
                await run_in_threadpool(engine.stop)

    return Starlette(
        routes=[
            *(dashboard if dashboard is not None else Dashboard(engine)).routes(),
            Route(
                "/{path:path}", dispatch, methods=["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"]
            ),
        ],
        lifespan=lifespan,
    )


async def answer(
    engine: Engine, verb: str, kind: str | None, namespace: str, params: dict[str, str]
) -> Response:
    """Run a verb for an authenticated namespace and build its answer.

    The protocol's routes and the dashboard's API both answer through here, so a verb
    behaves the same whichever way it was called.

    Args:
        engine: The job engine.
        verb: A verb of :data:`SYSTEM_VERBS` or :data:`JOB_VERBS`.
        kind: The job type of a job verb, ``None`` for a system verb.
        namespace: The namespace the caller is authenticated for.
        params: The verb's parameters.

    Returns:
        The envelope, the log stream of ``streamLogs``, or the error envelope.
    """
    try:
        if kind is None:
            data = await run_in_threadpool(_system_verb, engine, verb, namespace)
        elif verb == "streamLogs":
            return await _stream_logs(engine, namespace, kind, params)
        else:
            data = await run_in_threadpool(_job_verb, engine, verb, namespace, kind, params)
        return _envelope(data)
    except HttpError as exc:
        return _error(exc.status, exc.message)
    except ApiError as exc:
        return _error(exc.status_code, exc.message)
    except Exception:
        logger.exception("%s %s failed", verb, kind or "")
        return _error(500, "internal server error; the server's log has the details")


async def _stream_logs(
    engine: Engine, namespace: str, kind: str, params: Mapping[str, str]
) -> Response:
    after = _int(params, "cursor", 0)
    stream = _stream(params)
    follow = _bool(params, "follow", True)
    heartbeat = _heartbeat(params)
    uid = _uid(params)
    columns = _columns(params)
    log, job_uid = await run_in_threadpool(engine.log, namespace, kind, params.get("name"), uid)
    body = stream_log(
        log, after=after, stream=stream, follow=follow, heartbeat=heartbeat, columns=columns
    )
    return StreamingResponse(
        body,
        media_type="application/x-ndjson",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no", UID_HEADER: job_uid},
    )
