"""Configuration: where the server is, which credential to present, and redaction.

Resolution order for each setting, first match wins:

1. the argument given to :class:`~juliarun_aio.Context`;
2. the environment: ``JRUN_URL``, ``JRUN_TOKEN`` / ``JRUN_TOKEN_FILE``, ``JRUN_NAMESPACE``;
3. in-cluster defaults: the JuliaRun service URL and the Kubernetes service-account token
   and namespace files (docs/protocol.md, "Credentials").

What the server's TLS certificate is verified with resolves the same way (``verify=``,
then ``JRUN_CA_BUNDLE``, ``SSL_CERT_FILE``...), and ``JRUN_ALLOW_INSECURE_HTTP`` says that
plain HTTP to another host is meant; :mod:`juliarun_aio._tls` has the details.

Outside a cluster a missing setting raises :class:`~juliarun_aio.ConfigurationError`
naming the variable to set.  Tokens read from a file are re-read when the file changes,
because service-account tokens rotate.  Nothing here does network I/O.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import threading
import urllib.parse
from collections.abc import Iterable, Mapping
from pathlib import Path

import attrs
import httpx

from ._base import (
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_LIMITS,
    DEFAULT_START_TIMEOUT,
    DEFAULT_TIMEOUT,
    DEFAULT_WAIT_TIMEOUT,
    Verify,
)
from ._errors import ConfigurationError
from ._tls import USUAL_CAS, Trust, insecure_http_allowed, resolve_trust

__all__ = [
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_LIMITS",
    "DEFAULT_START_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "DEFAULT_URL",
    "DEFAULT_WAIT_TIMEOUT",
    "SERVICE_ACCOUNT_DIR",
    "ResolvedConfig",
    "TokenSource",
    "Verify",
    "build_query",
    "encode_token",
    "install_log_redaction",
    "redact",
    "resolve_config",
]

#: The in-cluster JuliaRun service, used only when running inside a cluster.
DEFAULT_URL = "http://juliarunremote-svc.juliarun:80"
#: Where Kubernetes mounts the service-account token and namespace.
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
# RFC 3986 unreserved characters stay as they are; everything else is %-encoded, so a
# space is %20 exactly as the Julia client (HTTP.jl's escapeuri) sends it.
_UNRESERVED = "-._~"
_TOKEN_IN_TEXT = re.compile(r"(jruntok=)[^&\s'\"<>]*")
REDACTED = "[REDACTED]"


def encode_token(raw: str) -> str:
    """Return the wire form of a credential: base64 of its UTF-8 bytes."""
    return base64.b64encode(raw.encode()).decode("ascii")


def build_query(params: Iterable[tuple[str, str]]) -> str:
    """Join parameters into a query string with RFC 3986 percent-encoding (space = ``%20``)."""
    return "&".join(
        f"{urllib.parse.quote(key, safe=_UNRESERVED)}={urllib.parse.quote(value, safe=_UNRESERVED)}"
        for key, value in params
    )


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Remove credentials from ``text``.

    Every ``jruntok=...`` query value is replaced, and so is each literal secret given
    (the raw token, its base64 and percent-encoded forms).
    """
    text = _TOKEN_IN_TEXT.sub(r"\1" + REDACTED, text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return text


def secret_forms(raw: str) -> tuple[str, ...]:
    """Return every form in which the raw token could appear in text."""
    b64 = encode_token(raw)
    return tuple(
        s
        for s in {raw, b64, urllib.parse.quote(b64, safe=_UNRESERVED), urllib.parse.quote(raw)}
        if len(s) >= 4
    )


class _RedactingFilter(logging.Filter):
    """Rewrites records of the httpx and httpcore loggers, which print request URLs."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "jruntok=" in message:
            record.msg = redact(message)
            record.args = ()
        return True


_FILTER = _RedactingFilter()

# A logger's filters see only the records logged to that very logger, not those of its
# children, so each logger httpx and httpcore log to is listed.
_HTTP_LOGGERS = (
    "httpx",
    "httpcore",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
    "httpcore.socks",
)


def install_log_redaction() -> None:
    """Make the httpx and httpcore loggers drop ``jruntok`` values (idempotent)."""
    for name in _HTTP_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


class TokenSource:
    """The raw credential: fixed, or read from a file that may rotate.

    A file-backed token is re-read whenever the file's identity, size or modification
    time changes (one ``stat`` per request) and on :meth:`refresh` after a 401.
    """

    def __init__(self, token: str | None = None, path: Path | None = None) -> None:
        if (token is None) == (path is None):
            raise ValueError("give exactly one of token and path")
        self._token = token
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._lock = threading.Lock()
        if path is not None:
            self._reload()

    def _reload(self) -> None:
        assert self.path is not None
        try:
            stat = self.path.stat()
            text = self.path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigurationError(
                f"cannot read the token file {str(self.path)!r}: {exc.strerror}; "
                "check JRUN_TOKEN_FILE / token_file"
            ) from None
        # Tokens never contain whitespace; a trailing newline from `echo` is not part of it.
        token = text.strip()
        if not token:
            raise ConfigurationError(f"the token file {str(self.path)!r} is empty")
        self._token = token
        self._stamp = (stat.st_ino, stat.st_size, stat.st_mtime_ns)

    @property
    def is_file(self) -> bool:
        """True when the token comes from a file (and so may rotate)."""
        return self.path is not None

    def current(self) -> str:
        """Return the raw token, re-reading the file first if it changed."""
        if self.path is not None:
            try:
                stat = self.path.stat()
            except OSError:
                stat = None
            if stat is not None and (stat.st_ino, stat.st_size, stat.st_mtime_ns) != self._stamp:
                with self._lock:
                    try:
                        self._reload()
                    except ConfigurationError:
                        # Caught mid-rewrite (empty, or briefly unreadable): keep the
                        # token we have; the stamp is unchanged, so the next call retries.
                        if self._token is None:
                            raise
        assert self._token is not None
        return self._token

    def refresh(self) -> bool:
        """Re-read the file unconditionally; return whether the token changed."""
        if self.path is None:
            return False
        before = self._token
        with self._lock:
            self._reload()
        return self._token != before

    def __repr__(self) -> str:
        where = f"file={str(self.path)!r}" if self.path else "value"
        return f"TokenSource({where}, token={REDACTED})"


@attrs.frozen
class ResolvedConfig:
    """The settings a Context runs with, after resolution.

    Attributes:
        url: The server's root URL.
        namespace: The namespace to work in.
        token: Where the credential comes from.
        in_cluster: Whether the process runs in a cluster.
        trust: What the server's TLS certificate is verified with.
        allow_insecure_http: A plain ``http://`` URL to another host is meant
            (``JRUN_ALLOW_INSECURE_HTTP``, or the in-cluster default URL): no warning is due.
    """

    url: str
    namespace: str
    token: TokenSource = attrs.field(repr=False)
    in_cluster: bool
    trust: Trust = USUAL_CAS
    allow_insecure_http: bool = False


def _in_cluster(env: Mapping[str, str], sa_dir: Path) -> bool:
    return "KUBERNETES_SERVICE_HOST" in env or (sa_dir / "token").is_file()


def resolve_config(
    url: str | None = None,
    token: str | None = None,
    namespace: str | None = None,
    *,
    token_file: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    verify: Verify | None = None,
    service_account_dir: Path = SERVICE_ACCOUNT_DIR,
) -> ResolvedConfig:
    """Resolve URL, credential and namespace (argument > environment > in-cluster).

    Args:
        url: Root URL of the JuliaRun server.
        token: The raw token (not base64).
        namespace: The namespace to work in.
        token_file: A file holding the raw token; re-read when it changes.
        env: The environment to read (default ``os.environ``).
        verify: What to verify the server's certificate with; by default
            ``JRUN_CA_BUNDLE``, ``SSL_CERT_FILE``, ``SSL_CERT_DIR``, else the usual CAs.
        service_account_dir: Where the in-cluster token and namespace files live.

    Raises:
        ConfigurationError: A setting could not be resolved, or a CA bundle cannot be
            read; the message names the variable to set or the file to fix.
    """
    env = os.environ if env is None else env
    cluster = _in_cluster(env, service_account_dir)

    given = url or env.get("JRUN_URL")
    url = given or (DEFAULT_URL if cluster else None)
    if not url:
        raise ConfigurationError(
            "no JuliaRun URL: pass url=... or set JRUN_URL (e.g. http://127.0.0.1:8080; "
            "start a local server with `juliarun server`)"
        )
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise ConfigurationError(f"invalid JuliaRun URL {url!r}: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ConfigurationError(f"JuliaRun URL must be http(s)://host[:port], got {url!r}")
    if parsed.query:
        raise ConfigurationError("JuliaRun URL must not carry a query string")
    url = url.rstrip("/")

    source: TokenSource
    if token:
        source = TokenSource(token=token)
    elif token_file:
        source = TokenSource(path=Path(token_file))
    elif env.get("JRUN_TOKEN"):
        source = TokenSource(token=env["JRUN_TOKEN"])
    elif env.get("JRUN_TOKEN_FILE"):
        source = TokenSource(path=Path(env["JRUN_TOKEN_FILE"]))
    elif cluster and (service_account_dir / "token").is_file():
        source = TokenSource(path=service_account_dir / "token")
    else:
        raise ConfigurationError(
            "no JuliaRun credential: pass token=... or set JRUN_TOKEN (the raw token) or "
            "JRUN_TOKEN_FILE (a file holding it)"
        )

    if not namespace:
        namespace = env.get("JRUN_NAMESPACE")
    if not namespace and cluster:
        try:
            namespace = (service_account_dir / "namespace").read_text(encoding="utf-8").strip()
        except OSError:
            namespace = None
    if not namespace:
        raise ConfigurationError("no JuliaRun namespace: pass namespace=... or set JRUN_NAMESPACE")
    return ResolvedConfig(
        url=url,
        namespace=namespace,
        token=source,
        in_cluster=cluster,
        trust=resolve_trust(verify, env),
        allow_insecure_http=not given or insecure_http_allowed(env),
    )
