"""Fixtures of the CLI tests."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the caller's JRUN_* settings (and a cluster) out of every CLI test."""
    for name in ("JRUN_URL", "JRUN_TOKEN", "JRUN_TOKEN_FILE", "JRUN_NAMESPACE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
