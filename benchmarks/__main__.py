"""``python -m benchmarks [--quick] [--only 1,3] [--markdown] [--json FILE]``."""

from __future__ import annotations

import argparse
import json
import platform
import signal
import sys
import time

import anyio
import attrs

from ._runner import ALL, format_table, run_benchmarks
from ._support import FULL, QUICK


def _numbers(text: str) -> list[int]:
    numbers = [int(part) for part in text.split(",") if part.strip()]
    unknown = sorted(set(numbers) - set(ALL))
    if unknown:
        raise argparse.ArgumentTypeError(f"no benchmark numbered {unknown}; choose from {ALL}")
    return numbers


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description="Benchmark juliarun_aio against a local server."
    )
    parser.add_argument("--quick", action="store_true", help="small sizes (seconds, not minutes)")
    parser.add_argument("--only", type=_numbers, default=ALL, help="e.g. 1,3 (default: all)")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL

    # Stopped with SIGTERM, unwind as for Ctrl-C: the server and its jobs are stopped.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    started = time.monotonic()

    def progress(message: str) -> None:
        print(f"[{time.monotonic() - started:5.0f} s] {message}", file=sys.stderr, flush=True)

    try:
        rows = anyio.run(run_benchmarks, sizes, args.only, progress)
    except KeyboardInterrupt:
        sys.exit("interrupted; the server and its jobs were stopped")
    elapsed = time.monotonic() - started
    print(format_table(rows, markdown=args.markdown))
    print(
        f"\n{'quick' if args.quick else 'full'} run, {elapsed:.0f} s, "
        f"Python {platform.python_version()} on {platform.machine()}"
    )
    if args.json:
        with open(args.json, "w") as out:
            json.dump([attrs.asdict(row) for row in rows], out, indent=2)


if __name__ == "__main__":
    main()
