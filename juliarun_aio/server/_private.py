"""The data directory is private to the server's user: directories 0700, files 0600.

It holds what no other user of the machine may read: the stored tokens, the database
(every job's parameters, environment variables included), the jobs' logs, the TLS keys.
Every directory the server makes in it is created 0700 and every file 0600, and set to
exactly that whatever the umask, so that a permissive umask (``000``) cannot widen them and
a strict one cannot lock the server out.  SQLite creates the ``-wal`` and ``-shm`` files of
the database with the database file's own mode.

Jobs run as the server's user -- on this machine, or on cluster nodes that see the data
directory through a shared file system under the same user -- so nothing in it needs
permissions for a group or for others.  What a job's own programs write into its volumes
and its work directory is theirs: the server makes those directories private (which keeps
others out of everything below them) but never changes what is inside.

At start, :func:`secure_data_dir` brings a directory written by an earlier version (or by
hand) to the same modes: the directory itself and everything the server keeps in it,
without following symbolic links or entering volumes and work directories.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

__all__ = [
    "PRIVATE_DIR",
    "PRIVATE_FILE",
    "make_private_dirs",
    "open_private",
    "secure_data_dir",
    "write_private",
]

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
# Directories whose contents belong to the jobs: a volume's files, a job's JRUN_DIR.
_JOBS_OWN = (("namespaces", "*", "volumes", "*"), ("namespaces", "*", "jobs", "*", "work"))


def _chmod(path: str | os.PathLike[str], mode: int, current: int) -> None:
    if stat.S_IMODE(current) == mode:
        return
    try:
        os.chmod(path, mode)
    except OSError as exc:
        raise PermissionError(
            exc.errno,
            f"cannot make {os.fspath(path)} private to this user (mode {mode:o}): "
            f"{exc.strerror}; give it to the server's user (chown) or use another data "
            "directory",
        ) from None


def make_private_dirs(path: Path) -> Path:
    """Create ``path`` and its missing parents as directories of mode 0700; return ``path``.

    Existing directories are left as they are.

    Raises:
        NotADirectoryError: ``path`` or a parent is a file; the message names it.
    """
    missing: list[Path] = []
    here = path
    while not here.is_dir():
        missing.append(here)
        if here.parent == here:
            break
        here = here.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, PRIVATE_DIR)
        except FileExistsError:
            if not directory.is_dir():
                raise NotADirectoryError(
                    f"{directory} is a file, not a directory: give a directory, or a path "
                    "that does not exist yet"
                ) from None
            continue  # made meanwhile by another thread of the server
        os.chmod(directory, PRIVATE_DIR)  # mkdir's mode is filtered by the umask
    return path


def open_private(path: str | os.PathLike[str], flags: int) -> int:
    """``os.open`` of a file that is created, or kept, with mode 0600; return the descriptor."""
    fd = os.open(path, flags | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_IMODE(mode) != PRIVATE_FILE:
            os.fchmod(fd, PRIVATE_FILE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_private(path: Path, data: bytes) -> None:
    """Replace ``path`` by a file of mode 0600 holding ``data``, atomically."""
    tmp = path.with_name(f"{path.name}.tmp")
    fd = open_private(tmp, os.O_WRONLY | os.O_TRUNC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _jobs_own(parts: tuple[str, ...]) -> bool:
    return any(
        len(parts) == len(pattern)
        and all(want in ("*", part) for want, part in zip(pattern, parts, strict=True))
        for pattern in _JOBS_OWN
    )


def secure_data_dir(root: Path) -> None:
    """Make ``root`` and everything the server keeps in it private (see the module docstring).

    Raises:
        PermissionError: A file or directory cannot be changed (another user owns it);
            the message names it.
    """
    _chmod(root, PRIVATE_DIR, os.stat(root).st_mode)
    pending: list[tuple[str, tuple[str, ...]]] = [(os.fspath(root), ())]
    while pending:
        directory, parts = pending.pop()
        with contextlib.suppress(FileNotFoundError), os.scandir(directory) as entries:
            for entry in entries:
                try:
                    info = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_ISDIR(info.st_mode):
                    _chmod(entry.path, PRIVATE_DIR, info.st_mode)
                    inner = (*parts, entry.name)
                    if not _jobs_own(inner):
                        pending.append((entry.path, inner))
                elif stat.S_ISREG(info.st_mode):
                    _chmod(entry.path, PRIVATE_FILE, info.st_mode)
