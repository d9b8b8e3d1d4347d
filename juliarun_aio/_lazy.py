"""Modules that load on first use, so that ``import juliarun_aio`` stays cheap.

``logs``, ``watch`` and ``wire`` are the modules of the long-running helpers and of the
spec encoder, for :class:`~juliarun_aio.Context` to call into.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType
from typing import TYPE_CHECKING

__all__ = ["lazy_module", "logs", "watch", "wire"]


def lazy_module(name: str) -> ModuleType:
    """Return module ``name``, executed when an attribute is first read from it.

    Until then it is a placeholder in :data:`sys.modules`; any import of it, or of a name
    from it, loads it as usual.
    """
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            raise ModuleNotFoundError(f"no module named {name!r}", name=name)
        spec.loader = importlib.util.LazyLoader(spec.loader)
        module = sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


if TYPE_CHECKING:
    from . import _logs as logs
    from . import _watch as watch
    from . import _wire as wire
else:
    logs, watch, wire = (
        lazy_module(f"{__package__}.{name}") for name in ("_logs", "_watch", "_wire")
    )
