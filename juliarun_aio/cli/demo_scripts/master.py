"""Demo parallel job, master: report each worker that joins, then keep the job running.

Workers announce themselves with a file in the job directory ($JRUN_DIR).  The master
runs until it is stopped (the demo deletes the job), at most MAX_SECONDS.
"""

import os
import pathlib
import time

MAX_SECONDS = 120

jobdir = pathlib.Path(os.environ.get("JRUN_DIR", "."))
print(f"master of {os.environ.get('JRUN_NAME', '?')}: waiting for workers", flush=True)
seen: set[str] = set()
deadline = time.monotonic() + MAX_SECONDS
while time.monotonic() < deadline:
    for report in sorted(jobdir.glob("worker-*.txt")):
        if report.name not in seen and report.stat().st_size:
            seen.add(report.name)
            print(f"worker joined: {report.read_text().strip()} ({len(seen)} so far)", flush=True)
    time.sleep(0.1)
print("master: done", flush=True)
