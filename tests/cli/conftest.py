"""Fixtures of the CLI tests: a clean environment and a mocked server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import respx

URL = "http://jrun.test"
TOKEN = "s3cret-token-value"
NAMESPACE = "team"
#: The connection flags of every mocked call.
CONNECT = ["--url", URL, "--token", TOKEN, "--namespace", NAMESPACE]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the caller's JRUN_* settings (and a cluster) out of every CLI test."""
    for name in ("JRUN_URL", "JRUN_TOKEN", "JRUN_TOKEN_FILE", "JRUN_NAMESPACE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)


@pytest.fixture
def server() -> Iterator[respx.MockRouter]:
    """A mocked JuliaRun server at URL; unmatched requests fail the test."""
    with respx.mock(base_url=URL, assert_all_called=False) as router:
        yield router
