"""The dashboard: a web page at ``/ui/`` showing a namespace's jobs, live.

The page is plain HTML, CSS and JavaScript shipped beside this module (``ui/``): nothing
is built and nothing is fetched from elsewhere, so it works offline.  It lists the jobs
(type, phase, workers, endpoint, age, message), follows a job's log and worker count, and
scales or deletes a job.

**Signing in.** The API token never reaches the browser.  Instead:

- :meth:`Dashboard.login_url` makes a link with a *login code*: random, single-use, valid
  until it is used or the server stops, and good for one namespace.  ``juliarun server``
  prints one as ``dashboard: <URL>`` for the ``default`` namespace (or the first configured
  one when there is no ``default``).  Opening it starts a session and redirects to
  ``/ui/``, which drops the code from the address bar.
- The login form takes a namespace and its token (``POST /ui/api/login``, JSON).

A session is a random id kept by the server (in memory: a restart signs everyone out) in
an HttpOnly, ``SameSite=Strict`` cookie scoped to ``/ui``; it ends after
:data:`SESSION_IDLE` seconds without a request, :data:`SESSION_LIFETIME` seconds after it
began, or at sign-out.  Each session has a CSRF token, which the page reads from
``/ui/api/session`` and sends in the :data:`CSRF_HEADER` header: requests that change state
are POSTs that need it, and are refused when their ``Origin`` is another site.

**The API** (``/ui/api/<verb>/[<JobType>/]``) answers the protocol's verbs through the
same code as the protocol's own routes, for the session's namespace, without ``jruntok``
or ``jrunns``: the read verbs (GET) and ``setJobScale`` / ``deleteJob`` (POST + CSRF
token).  ``streamLogs`` also takes ``tail=N`` instead of ``cursor``: start N lines before
the end of the log.  Every answer is ``Cache-Control: no-store``, and every response under
``/ui`` carries a strict Content-Security-Policy (scripts and styles from the page's own
files only; no framing).
"""

from __future__ import annotations

import hmac
import json
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from importlib import resources

import attrs
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._errors import ApiError
from .._version import __version__
from . import _app
from ._engine import Engine

__all__ = ["CSRF_HEADER", "SESSION_IDLE", "SESSION_LIFETIME", "Dashboard"]

#: Seconds a session lasts without a request.
SESSION_IDLE = 12 * 3600
#: Seconds a session lasts at most.
SESSION_LIFETIME = 7 * 24 * 3600
#: Sessions kept at most; the least recently used goes first.
MAX_SESSIONS = 1000
#: The request header that carries a session's CSRF token.
CSRF_HEADER = "X-CSRF-Token"
#: The longest body of a login request.
MAX_LOGIN_BODY = 16 * 1024

READ_VERBS = frozenset(
    {
        "getSystemStatus",
        "serverInfo",
        "listJobs",
        "getAllJobInfo",
        "getJobStatus",
        "getJobScale",
        "getJobEndpoint",
        "getEncodedURL",
        "tailJob",
        "streamLogs",
    }
)
WRITE_VERBS = frozenset({"setJobScale", "deleteJob"})
CREDENTIAL_PARAMS = frozenset({"jruntok", "jrunns"})

SECURITY_HEADERS = (
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    ),
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
    ("Cache-Control", "no-store"),
)
STATIC_FILES: Mapping[str, str] = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
SIGN_IN = (
    "sign in to the dashboard: open the dashboard link the server printed, "
    "or sign in with a namespace and its token"
)


@attrs.define
class _Session:
    namespace: str
    csrf: str
    started: float
    seen: float


class _SecurityHeaders:
    """ASGI middleware adding :data:`SECURITY_HEADERS` to every answer that lacks them."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS:
                    headers.setdefault(name, value)
            await send(message)

        await self._app(scope, receive, send_secured)


def _cookie_name(request: Request) -> str:
    # Browsers share cookies between the ports of a host: one name per port keeps two
    # servers on one machine from signing each other out.
    port = request.url.port or (443 if request.url.scheme == "https" else 80)
    return f"juliarun_ui_{port}"


def _same_origin(request: Request) -> bool:
    """Whether the request comes from a page of this server (or from no page at all)."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    return origin == f"{request.url.scheme}://{request.headers.get('host', '')}"


class Dashboard:
    """The dashboard's sessions and login codes, and its routes.

    Args:
        engine: The job engine whose jobs the dashboard shows.
        clock: Monotonic seconds, for session expiry.
    """

    def __init__(self, engine: Engine, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._engine = engine
        self._clock = clock
        self._lock = threading.Lock()
        self._codes: dict[str, str] = {}
        self._sessions: dict[str, _Session] = {}
        self._files: dict[str, bytes] = {}

    # -- signing in ---------------------------------------------------------------------------

    def login_code(self, namespace: str) -> str:
        """Make a single-use login code for ``namespace``.

        Raises:
            ValueError: The server has no such namespace.
        """
        if namespace not in self._engine.config.tokens:
            raise ValueError(f"the server has no namespace {namespace!r}")
        code = secrets.token_urlsafe(24)
        with self._lock:
            self._codes[code] = namespace
        return code

    def login_url(self, server_url: str, namespace: str) -> str:
        """Make the link that signs a browser in to ``namespace`` (once).

        Args:
            server_url: The server's URL, as its clients use it.
            namespace: The namespace the session is for.
        """
        return f"{server_url.rstrip('/')}/ui/login?code={self.login_code(namespace)}"

    def _start_session(self, namespace: str) -> str:
        now = self._clock()
        session_id = secrets.token_urlsafe(32)
        with self._lock:
            for key, session in list(self._sessions.items()):
                if self._expired(session, now):
                    del self._sessions[key]
            while len(self._sessions) >= MAX_SESSIONS:
                oldest = min(self._sessions, key=lambda key: self._sessions[key].seen)
                del self._sessions[oldest]
            self._sessions[session_id] = _Session(namespace, secrets.token_urlsafe(32), now, now)
        return session_id

    @staticmethod
    def _expired(session: _Session, now: float) -> bool:
        return now - session.seen > SESSION_IDLE or now - session.started > SESSION_LIFETIME

    def _session(self, request: Request) -> _Session | None:
        session_id = request.cookies.get(_cookie_name(request))
        if not session_id:
            return None
        now = self._clock()
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                return None
            if self._expired(session, now):
                del self._sessions[session_id]
                return None
            session.seen = now
            return session

    def _end_session(self, request: Request) -> None:
        with self._lock:
            self._sessions.pop(request.cookies.get(_cookie_name(request)) or "", None)

    def _signed_in(self, request: Request, response: Response, namespace: str) -> Response:
        self._end_session(request)
        response.set_cookie(
            _cookie_name(request),
            self._start_session(namespace),
            max_age=SESSION_LIFETIME,
            path="/ui",
            secure=request.url.scheme == "https",
            httponly=True,
            samesite="strict",
        )
        return response

    # -- routes -------------------------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        """The routes to mount in the server's application: ``/ui`` and below."""
        ui = Starlette(
            routes=[
                Route("/", self._index),
                Route("/static/{name}", self._static),
                Route("/login", self._login_link),
                Route("/api/session", self._session_info),
                Route("/api/login", self._login_form, methods=["POST"]),
                Route("/api/logout", self._logout, methods=["POST"]),
                Route("/api/{path:path}", self._api, methods=["GET", "POST"]),
            ]
        )
        return [Route("/ui", self._to_index), Mount("/ui", app=_SecurityHeaders(ui))]

    def _file(self, name: str) -> bytes:
        data = self._files.get(name)
        if data is None:
            data = (resources.files(__package__) / "ui" / name).read_bytes()
            self._files[name] = data
        return data

    async def _to_index(self, _request: Request) -> Response:
        return RedirectResponse("ui/", status_code=308)

    async def _index(self, _request: Request) -> Response:
        return Response(self._file("index.html"), media_type="text/html; charset=utf-8")

    async def _static(self, request: Request) -> Response:
        name = request.path_params["name"]
        media_type = STATIC_FILES.get(name)
        if media_type is None:
            return Response("not found", status_code=404, media_type="text/plain")
        return Response(
            self._file(name), media_type=media_type, headers={"Cache-Control": "no-cache"}
        )

    async def _login_link(self, request: Request) -> Response:
        code = request.query_params.get("code", "")
        with self._lock:
            namespace = self._codes.pop(code, None)
        if namespace is None:
            # A used or unknown code: a browser already signed in just goes on.
            signed_in = not code or self._session(request) is not None
            return RedirectResponse("./" if signed_in else "./?login=expired", status_code=303)
        return self._signed_in(request, RedirectResponse("./", status_code=303), namespace)

    async def _session_info(self, request: Request) -> Response:
        session = self._session(request)
        if session is None:
            return _app._error(401, SIGN_IN)
        return _app._envelope(
            {
                "namespace": session.namespace,
                "csrf": session.csrf,
                "server": "juliarun_aio",
                "version": __version__,
            }
        )

    async def _login_form(self, request: Request) -> Response:
        if not _same_origin(request):
            return _app._error(403, "sign in from the dashboard's own page")
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return _app._error(415, 'send the login as JSON: {"namespace": ..., "token": ...}')
        body = await request.body()
        try:
            data = json.loads(body) if len(body) <= MAX_LOGIN_BODY else None
        except ValueError:
            data = None
        namespace = data.get("namespace") if isinstance(data, dict) else None
        token = data.get("token") if isinstance(data, dict) else None
        if not isinstance(namespace, str) or not isinstance(token, str):
            return _app._error(400, 'send {"namespace": "...", "token": "..."} as JSON')
        expected = self._engine.config.tokens.get(namespace)
        matches = hmac.compare_digest(token.strip().encode(), (expected or "").encode())
        if expected is None or not matches:
            return _app._error(401, "unknown namespace, or not its token")
        return self._signed_in(request, _app._envelope({"namespace": namespace}), namespace)

    async def _logout(self, request: Request) -> Response:
        session = self._session(request)
        if session is None:
            return _app._error(401, SIGN_IN)
        try:
            self._check_csrf(request, session)
        except _app.HttpError as exc:
            return _app._error(exc.status, exc.message)
        self._end_session(request)
        response = _app._envelope(True)
        response.delete_cookie(_cookie_name(request), path="/ui")
        return response

    @staticmethod
    def _check_csrf(request: Request, session: _Session) -> None:
        given = request.headers.get(CSRF_HEADER, "")
        if not _same_origin(request) or not hmac.compare_digest(
            given.encode(), session.csrf.encode()
        ):
            raise _app.HttpError(
                403, f"refused: a change needs the session's CSRF token in {CSRF_HEADER}"
            )

    async def _api(self, request: Request) -> Response:
        session = self._session(request)
        if session is None:
            return _app._error(401, SIGN_IN)
        try:
            verb, kind, params = self._verb_call(request, session)
            if kind is not None and verb == "streamLogs" and "tail" in params:
                params = await self._from_tail(session.namespace, kind, params)
        except _app.HttpError as exc:
            return _app._error(exc.status, exc.message)
        except ApiError as exc:
            return _app._error(exc.status_code, exc.message)
        return await _app.answer(self._engine, verb, kind, session.namespace, params)

    def _verb_call(
        self, request: Request, session: _Session
    ) -> tuple[str, str | None, dict[str, str]]:
        """Return the verb, job type and parameters of an API request, or raise why not."""
        params = _app._single_params(request)
        if CREDENTIAL_PARAMS & params.keys():
            raise _app.HttpError(
                400, "the dashboard's API takes no jruntok or jrunns: the session says who"
            )
        verb, kind = _app._route("GET", "/" + request.path_params["path"])
        if verb in WRITE_VERBS:
            if request.method != "POST":
                raise _app.HttpError(405, f"{verb} changes state: send it as a POST")
            self._check_csrf(request, session)
        elif verb not in READ_VERBS:
            raise _app.HttpError(404, f"{verb} is not offered by the dashboard")
        elif request.method != "GET":
            raise _app.HttpError(405, f"{verb} is read with a GET")
        return verb, kind, params

    async def _from_tail(self, namespace: str, kind: str, params: dict[str, str]) -> dict[str, str]:
        """Turn ``tail=N`` into the cursor N lines before the end of the log."""
        if "cursor" in params:
            raise _app.HttpError(400, "give 'cursor' or 'tail', not both")
        tail = _app._int(params, "tail")
        log, _ = await run_in_threadpool(self._engine.log, namespace, kind, params.get("name"))
        rest = {key: value for key, value in params.items() if key != "tail"}
        return {**rest, "cursor": str(max(log.last_cursor - tail, 0))}
