"""Fixtures of the CLI tests."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the caller's JRUN_* settings (and a cluster) out of every CLI test."""
    names = ("JRUN_URL", "JRUN_TOKEN", "JRUN_TOKEN_FILE", "JRUN_NAMESPACE", "JRUN_CA_BUNDLE")
    for name in (*names, "JRUN_ALLOW_INSECURE_HTTP", "SSL_CERT_FILE", "SSL_CERT_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
