"""7. Import time: ``import juliarun_aio`` vs ``import httpx`` in fresh interpreters.

Each sample is a new ``python`` process that times only the import statement
(``perf_counter`` around it), alternating the two modules; the median is reported, and
judged.  The CPU time of the same statement (``process_time``), which other processes on
the machine move far less than the wall clock, is shown beside it.  ``python -X
importtime`` then names what the time is spent on.

Where rich, click and pygments are installed (juliarun_aio's ``[cli]`` extra brings rich),
``import httpx`` loads them for its command line, which inflates the baseline; row 7b
hides them in both interpreters, as in a lean install.

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

_CODE = (
    "import time; t, c = time.perf_counter(), time.process_time(); import {0}; "
    "print(time.perf_counter() - t, time.process_time() - c)"
)

#: Packages that ``import httpx`` loads only when installed (its command line, ``httpx._main``).
HTTPX_CLI = ("rich", "click", "pygments")

# Makes those packages look absent, as in an environment without them (juliarun_aio's
# ``[cli]`` extra installs rich, so they are usually present where the benchmarks run).
_HIDE = """
import importlib.abc, sys
class _Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.partition(".")[0] in {0!r}:
            raise ImportError(name)
sys.meta_path.insert(0, _Hide())
"""


def _env(cache: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = cache
    return env


def _sample(module: str, cache: str, *, hide_cli: bool = False) -> tuple[float, float]:
    """Time one import in a fresh interpreter: wall and CPU seconds."""
    code = (_HIDE.format(HTTPX_CLI) if hide_cli else "") + _CODE.format(module)
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env=_env(cache),
    )
    wall, cpu = done.stdout.split()
    return float(wall), float(cpu)


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
        ours, base, lean_ours, lean_base = [], [], [], []
        for _ in range(sizes.import_repeats):
            base.append(_sample("httpx", cache))
            ours.append(_sample("juliarun_aio", cache))
            lean_base.append(_sample("httpx", cache, hide_cli=True))
            lean_ours.append(_sample("juliarun_aio", cache, hide_cli=True))
        heavy = ", ".join(
            f"{name} {fmt_ms(t)}" for name, t in heaviest_packages("juliarun_aio", cache)
        )
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    b, s = median([w for w, _ in base]), median([w for w, _ in ours])
    lb, ls = median([w for w, _ in lean_base]), median([w for w, _ in lean_ours])
    ratio, lean_ratio = s / b, ls / lb
    cpu = median([c for _, c in ours]) / median([c for _, c in base])
    lean_cpu = median([c for _, c in lean_ours]) / median([c for _, c in lean_base])
    return [
        Row(
            "7. import time",
            f"import httpx {fmt_ms(b)}",
            f"import juliarun_aio {fmt_ms(s)}",
            ratio,
            "<= 1.5",
            ratio <= 1.5,
            {"httpx_s": b, "juliarun_aio_s": s, "cpu_ratio": cpu},
            note=f"CPU time ratio {cpu:.2f} (7), {lean_cpu:.2f} (7b); self time: {heavy}",
        ),
        Row(
            "7b. import time, httpx's optional CLI packages absent",
            f"import httpx {fmt_ms(lb)}",
            f"import juliarun_aio {fmt_ms(ls)}",
            lean_ratio,
            "<= 1.5",
            lean_ratio <= 1.5,
            {"httpx_lean_s": lb, "juliarun_aio_lean_s": ls, "cpu_ratio": lean_cpu},
        ),
    ]
