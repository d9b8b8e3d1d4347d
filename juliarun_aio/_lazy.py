"""Modules that load on first use, so that ``import juliarun_aio`` stays cheap.

``import juliarun_aio`` defines :class:`~juliarun_aio.Context` and the errors, and needs
httpx for that; attrs (the specs, results, retry policy and settings are attrs classes)
and anyio wait until a Context is made or a name is first read.  The module names here
are what :class:`~juliarun_aio.Context` calls into; each is imported, by the usual import
system, when an attribute is first read from it.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING, Any

__all__ = ["Deferred", "logs", "models", "retry", "watch", "wire"]


class Deferred:
    """Module ``name``, imported when an attribute is first read from it.

    The import is an ordinary one: it takes the import lock, so threads that get here
    together share one execution, and an import that fails leaves nothing half-made in
    :data:`sys.modules` -- the next read tries again.  Imports happen only in synchronous
    code, so a cancelled call cannot interrupt one.
    """

    __slots__ = ("_module", "_name")

    def __init__(self, name: str) -> None:
        self._name = name
        self._module: ModuleType | None = None

    def __getattr__(self, attr: str) -> Any:
        module = self._module
        if module is None:
            module = self._module = importlib.import_module(self._name)
        return getattr(module, attr)

    def __repr__(self) -> str:
        state = "imported" if self._module is not None else "not imported yet"
        return f"<deferred module {self._name!r}, {state}>"


if TYPE_CHECKING:
    from . import _logs as logs
    from . import _models as models
    from . import _retry as retry
    from . import _watch as watch
    from . import _wire as wire
else:
    logs, models, retry, watch, wire = (
        Deferred(f"{__package__}._{name}") for name in ("logs", "models", "retry", "watch", "wire")
    )
