"""The data directory is private to the server's user: 0700 directories, 0600 files."""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from server_support import FAST, Api, backend_settings
from support import QUICK_KILL, wait_until, write_script

from juliarun_aio.server import LocalServer, ServerProcess
from juliarun_aio.server._private import make_private_dirs, secure_data_dir

#: A job that prints on both streams and writes into its work directory and its volume.
WRITER = (
    "import os, sys\n"
    "print('out', flush=True)\n"
    "print('err', file=sys.stderr, flush=True)\n"
    "open(os.path.join(os.environ['JRUN_DIR'], 'made-by-job'), 'w').write('x')\n"
    "open('made-in-volume', 'w').write('x')\n"
)


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    """Run the block (and the processes it starts) under ``mask``."""
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _jobs_own(relative: Path) -> bool:
    """Whether ``relative`` lies inside a volume or a job's work directory (the jobs' files)."""
    parts = relative.parts
    in_volume = len(parts) > 4 and parts[0] == "namespaces" and parts[2] == "volumes"
    in_work = len(parts) > 5 and parts[2] == "jobs" and parts[4] == "work"
    return in_volume or in_work


def loose_modes(root: Path) -> dict[str, str]:
    """Every path the server keeps under ``root`` whose mode is not 0700 (dirs) / 0600 (files)."""
    found = {}
    for path in [root, *root.rglob("*")]:
        relative = path.relative_to(root)
        if _jobs_own(relative) or path.is_symlink():
            continue
        mode = stat.S_IMODE(path.lstat().st_mode)
        if mode != (0o700 if path.is_dir() else 0o600):
            found[str(relative)] = oct(mode)
    return found


def _run_writer(api: Api) -> None:
    api.data("submitJob", "JuliaBatch", name="writer", start_script="writer.py", run_volume="work")
    assert api.wait_done("JuliaBatch", "writer")["phase"] == "succeeded"
    assert sorted(api.lines("JuliaBatch", "writer")) == ["err", "out"]


@pytest.mark.parametrize(
    ("backend", "mask"),
    [
        ("local", 0o000),
        ("local", 0o022),
        ("local", 0o077),
        # Slurm writes the output files on a node, under the job's umask.
        pytest.param("slurm", 0o022, marks=pytest.mark.slurm),
    ],
    indirect=["backend"],
)
def test_everything_the_server_writes_is_private_whatever_the_umask(
    tmp_path: Path, backend: str, mask: int
) -> None:
    """Directory, database with its WAL files, lock, job dirs and every log file: 0700/0600."""
    data_dir = tmp_path / "data"
    with umask(mask):
        # Made by hand before the server starts, as users do: the server fixes its mode.
        write_script(data_dir / "namespaces" / "default" / "volumes" / "work", "writer.py", WRITER)
        with LocalServer(data_dir, **FAST, **backend_settings(backend)) as server:
            api = Api(server.url, server.token, server.namespace, ca_bundle=server.ca_bundle)
            try:
                _run_writer(api)
                logs = data_dir / "namespaces" / "default" / "jobs" / "writer" / "logs"
                names = {
                    path.name if path.suffix in (".ndjson", ".txt") else path.suffix
                    for path in logs.iterdir()
                }
                assert {".out", ".err", ".exit", ".tree", "combined.ndjson"} <= names, names
                assert {"state.sqlite3-wal", "state.sqlite3-shm", "server.lock"} <= {
                    path.name for path in data_dir.iterdir()
                }
                assert loose_modes(data_dir) == {}
            finally:
                api.close()
    work = data_dir / "namespaces" / "default" / "jobs" / "writer" / "work"
    # The jobs' own files are theirs: made under the umask the job inherited.
    assert stat.S_IMODE((work / "made-by-job").stat().st_mode) == 0o666 & ~mask


def test_the_generated_credentials_are_private(tmp_path: Path) -> None:
    """`juliarun-server` without --token keeps its token in a 0600 file of a 0700 directory."""
    data_dir = tmp_path / "data"
    with umask(0):
        proc = subprocess.Popen(
            [sys.executable, "-m", "juliarun_aio.server", "--data-dir", str(data_dir), *QUICK_KILL],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until((data_dir / "credentials.json").exists, what="the credentials")
        wait_until((data_dir / "state.sqlite3-wal").exists, what="the database")
        assert loose_modes(data_dir) == {}
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_a_loose_data_directory_is_made_private_at_start(data_dir: Path) -> None:
    """A directory left readable by an earlier version is fixed at start; jobs' files are not."""
    write_script(data_dir / "namespaces" / "default" / "volumes" / "work", "writer.py", WRITER)
    with ServerProcess(data_dir, args=QUICK_KILL) as server:
        api = Api(server.url, server.token, server.namespace)
        try:
            _run_writer(api)
        finally:
            api.close()
    outside = data_dir.parent / "outside.txt"
    outside.write_text("not the server's")
    (data_dir / "link").symlink_to(outside)
    for path in [data_dir, *data_dir.rglob("*")]:
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)
    assert loose_modes(data_dir) != {}
    with ServerProcess(data_dir, tokens=server.tokens, args=QUICK_KILL) as again:
        assert loose_modes(data_dir) == {}
        api = Api(again.url, again.token, again.namespace)
        try:
            assert api.status("JuliaBatch", "writer")["phase"] == "succeeded"
        finally:
            api.close()
    volume = data_dir / "namespaces" / "default" / "volumes" / "work"
    assert stat.S_IMODE((volume / "made-in-volume").stat().st_mode) == 0o644
    assert stat.S_IMODE(outside.stat().st_mode) == 0o644


def test_make_private_dirs_makes_only_the_missing_ones(tmp_path: Path) -> None:
    """Missing parents are created 0700 even under umask 000; existing ones keep their mode."""
    tmp_path.chmod(0o751)
    with umask(0):
        make_private_dirs(tmp_path / "a" / "b" / "c")
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o751
    for path in (tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "c"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700


def test_a_data_directory_that_is_a_file_is_refused_in_one_line(tmp_path: Path) -> None:
    """--data-dir naming a file stops the server with one line that names the file."""
    taken = tmp_path / "taken"
    taken.write_text("not a directory")
    command = [sys.executable, "-m", "juliarun_aio.server", "--data-dir", str(taken)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    assert result.stderr == (
        f"juliarun-server: {taken} is a file, not a directory: give a directory, or a path "
        "that does not exist yet\n"
    )


def test_secure_data_dir_leaves_volumes_and_work_contents_alone(tmp_path: Path) -> None:
    """The volume and work directories become private; what is inside them keeps its mode."""
    volume = tmp_path / "namespaces" / "ns" / "volumes" / "v"
    work = tmp_path / "namespaces" / "ns" / "jobs" / "j" / "work"
    for directory in (volume / "sub", work):
        directory.mkdir(parents=True)
    for path in (
        volume / "sub" / "f",
        work / "f",
        tmp_path / "namespaces" / "ns" / "jobs" / "j" / "x",
    ):
        path.write_text("x")
        path.chmod(0o644)
    (volume / "sub").chmod(0o755)
    secure_data_dir(tmp_path)
    assert stat.S_IMODE(volume.stat().st_mode) == 0o700
    assert stat.S_IMODE(work.stat().st_mode) == 0o700
    assert stat.S_IMODE((volume / "sub").stat().st_mode) == 0o755
    assert stat.S_IMODE((volume / "sub" / "f").stat().st_mode) == 0o644
    assert stat.S_IMODE((work / "f").stat().st_mode) == 0o644
    job_file = tmp_path / "namespaces" / "ns" / "jobs" / "j" / "x"
    assert stat.S_IMODE(job_file.stat().st_mode) == 0o600
