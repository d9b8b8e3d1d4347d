"""Helpers of the local server tests: a protocol client and its polling."""

from __future__ import annotations

import base64
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from support import wait_until

#: Short grace and backoff so that tests about stopping and restarting are quick.
FAST: dict[str, Any] = {"kill_grace": 0.5, "restart_backoff": 0.05, "restart_backoff_max": 0.2}


def encode_token(token: str) -> str:
    """Return the ``jruntok`` value of a raw token."""
    return base64.b64encode(token.encode()).decode()


class Api:
    """A minimal synchronous client of the protocol, for checking the server's answers."""

    def __init__(
        self, url: str, token: str, namespace: str, *, ca_bundle: str | Path | None = None
    ) -> None:
        self.url = url
        self.token = token
        self.namespace = namespace
        verify = ssl.create_default_context(cafile=ca_bundle) if ca_bundle else True
        self.http = httpx.Client(base_url=url, timeout=30, verify=verify)

    def close(self) -> None:
        self.http.close()

    def get(
        self,
        verb: str,
        kind: str | None = None,
        *,
        token: str | None = None,
        namespace: str | None = None,
        **params: Any,
    ) -> httpx.Response:
        query = {
            "jruntok": encode_token(token if token is not None else self.token),
            "jrunns": namespace if namespace is not None else self.namespace,
        }
        query.update({key: str(value) for key, value in params.items()})
        path = f"/{verb}/{kind}/" if kind else f"/{verb}/"
        return self.http.get(path, params=query)

    def data(self, verb: str, kind: str | None = None, **params: Any) -> Any:
        response = self.get(verb, kind, **params)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["code"] == 0, body
        return body["data"]

    def error(self, status: int, verb: str, kind: str | None = None, **params: Any) -> str:
        response = self.get(verb, kind, **params)
        assert response.status_code == status, response.text
        body = response.json()
        assert body["code"] != 0
        assert isinstance(body["data"], str)
        return body["data"]

    def status(self, kind: str, name: str) -> dict[str, Any]:
        status: dict[str, Any] = self.data("getJobStatus", kind, name=name)
        return status

    def wait_done(self, kind: str, name: str, timeout: float = 15.0) -> dict[str, Any]:
        """Wait until the job is succeeded, failed or lost; return its status."""

        def done() -> dict[str, Any] | None:
            status = self.status(kind, name)
            return status if status["phase"] in ("succeeded", "failed", "lost") else None

        status = wait_until(done, timeout, f"job {name} to finish")
        assert status is not None
        return status

    def wait_scale(self, kind: str, name: str, running: int, timeout: float = 15.0) -> None:
        wait_until(
            lambda: self.data("getJobScale", kind, name=name)[0] == running,
            timeout,
            f"{running} running workers of {name}",
        )

    def wait_status(
        self, kind: str, name: str, check: Callable[[dict[str, Any]], bool], what: str
    ) -> dict[str, Any]:
        """Wait until ``check(status)`` holds; return that status."""

        def ready() -> dict[str, Any] | None:
            status = self.status(kind, name)
            return status if check(status) else None

        status = wait_until(ready, what=what)
        assert status is not None
        return status

    def wait_lines(self, kind: str, name: str, count: int, **params: Any) -> list[str]:
        """Wait until the job's log has at least ``count`` lines; return them all."""

        def enough() -> list[str] | None:
            lines = self.lines(kind, name, **params)
            return lines if len(lines) >= count else None

        lines = wait_until(enough, what=f"{count} log lines of {name}")
        assert lines is not None
        return lines

    def lines(self, kind: str, name: str, **params: Any) -> list[str]:
        text: str = self.data("tailJob", kind, name=name, count=10_000, **params)
        return text.split("\n") if text else []
