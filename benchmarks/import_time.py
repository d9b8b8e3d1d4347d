"""7. Import time: ``import juliarun_aio`` vs ``import httpx`` in fresh interpreters.

Each sample is a new ``python`` process that times only the import statement
(``perf_counter`` around it), alternating the two modules; the median is reported.
``python -X importtime`` then names what the time is spent on.

Both modules are imported from cached bytecode, kept in a temporary directory
(``PYTHONPYCACHEPREFIX``) that a first, untimed import fills: a source checkout
has no ``__pycache__`` while an installed httpx has, and with
``PYTHONDONTWRITEBYTECODE`` set every import of the checkout would be a compile.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict

from ._support import Row, Sizes, fmt_ms, median

_CODE = "import time; t = time.perf_counter(); import {0}; print(time.perf_counter() - t)"


def _env(cache: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = cache
    return env


def _sample(module: str, cache: str) -> float:
    done = subprocess.run(
        [sys.executable, "-c", _CODE.format(module)],
        capture_output=True,
        text=True,
        check=True,
        env=_env(cache),
    )
    return float(done.stdout.strip())


def heaviest_packages(module: str, cache: str, top: int = 4) -> list[tuple[str, float]]:
    """Self import time (seconds) per top-level package, largest first."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        capture_output=True,
        text=True,
        check=True,
        env=_env(cache),
    )
    totals: dict[str, float] = defaultdict(float)
    pattern = re.compile(r"import time:\s+(\d+) \|\s+\d+ \|\s*(\S+)")
    for line in done.stderr.splitlines():
        match = pattern.match(line)
        if match:
            totals[match[2].split(".")[0]] += int(match[1]) / 1e6
    return sorted(totals.items(), key=lambda item: -item[1])[:top]


async def run(sizes: Sizes) -> list[Row]:
    cache = tempfile.mkdtemp(prefix="juliarun-bench-pycache-")
    try:
        _sample("juliarun_aio", cache)  # fills the cache for both: it imports httpx
        ours, base = [], []
        for _ in range(sizes.import_repeats):
            base.append(_sample("httpx", cache))
            ours.append(_sample("juliarun_aio", cache))
        heavy = ", ".join(
            f"{name} {fmt_ms(t)}" for name, t in heaviest_packages("juliarun_aio", cache)
        )
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    b, s = median(base), median(ours)
    ratio = s / b
    return [
        Row(
            "7. import time",
            f"import httpx {fmt_ms(b)}",
            f"import juliarun_aio {fmt_ms(s)}",
            ratio,
            "<= 1.5",
            ratio <= 1.5,
            {"httpx_s": b, "juliarun_aio_s": s},
            note=f"self time by package: {heavy}",
        )
    ]
