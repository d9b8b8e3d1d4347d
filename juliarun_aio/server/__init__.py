"""A JuliaRun-compatible server that runs jobs as local processes (extra ``[server]``).

It speaks the JuliaRun protocol (every verb a GET, ``{"code", "data"}`` envelope), keeps
jobs in SQLite and logs in files under a data directory so that a restart loses nothing,
and adds the ``serverInfo`` and ``streamLogs`` extensions (PROTOCOL-EXTENSIONS.md).

- :class:`LocalServer`: start it in-process (sync or async context manager).
- :class:`ServerProcess`: start it as a subprocess, which can be killed and restarted.
- :func:`create_app`: the ASGI application around an :class:`Engine`.
- ``juliarun-server`` / ``python -m juliarun_aio.server``: the command line.
"""

from __future__ import annotations

try:
    import starlette  # noqa: F401 - probing the optional dependencies
    import uvicorn  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        "juliarun_aio.server needs the [server] extra: pip install 'juliarun_aio[server]'"
    ) from exc

from ._app import create_app
from ._config import ConfigError, ServerConfig
from ._engine import Engine
from ._serve import LocalServer, ServerProcess
from ._store import DataDirectoryInUseError

__all__ = [
    "ConfigError",
    "DataDirectoryInUseError",
    "Engine",
    "LocalServer",
    "ServerConfig",
    "ServerProcess",
    "create_app",
]
