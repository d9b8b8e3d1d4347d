"""Configuration of the local server: where it listens, where it keeps state, who may call it.

Worker counts are capped so that one request cannot exhaust the machine: by default at
most :data:`DEFAULT_MAX_WORKERS_PER_JOB` workers per job, and :func:`default_max_workers`
workers of all jobs together -- 8 per CPU core this process may run on, but no more than
one per 256 MiB of physical memory, and at least 4.  A Julia worker needs 150-250 MB
resident once started and a CPU-second or more to start, so the memory bound keeps a
scale-up from driving the machine into swap or the OOM killer, while 8 per core still
allows the mostly idle workers of development and test jobs; 64 per job is as many as
one Distributed.jl master usually drives on one machine.

Credentials are one raw token per namespace.  They come from ``--token=NS=TOKEN`` flags, a
small JSON or TOML file ``{namespace = "token"}`` (``--config``), or, when neither is given,
a token generated once for namespace ``default`` and kept in ``<data-dir>/credentials.json``
(mode 0600) so that restarting the server keeps it.  Generated tokens never start with
``-``, so that they also work as the value of a separate command-line argument.
"""

from __future__ import annotations

import importlib
import json
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

import attrs

from .._errors import SpecError
from .._jobs import validate_name
from ._private import make_private_dirs, open_private

__all__ = [
    "DEFAULT_DATA_DIR",
    "DEFAULT_HOST",
    "DEFAULT_KILL_GRACE",
    "DEFAULT_MAX_WORKERS_PER_JOB",
    "DEFAULT_NAMESPACE",
    "ConfigError",
    "ServerConfig",
    "default_max_workers",
    "generate_token",
    "load_or_create_tokens",
    "parse_token_flag",
    "read_tokens_file",
]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_DATA_DIR = Path("juliarun-data")
DEFAULT_NAMESPACE = "default"
#: Seconds between SIGTERM and SIGKILL when stopping a process.
DEFAULT_KILL_GRACE = 5.0
#: First and longest delay before restarting a crashed worker (doubling in between).
DEFAULT_RESTART_BACKOFF = 1.0
DEFAULT_RESTART_BACKOFF_MAX = 60.0
CREDENTIALS_FILE = "credentials.json"
#: Workers one job may ask for, unless configured otherwise.
DEFAULT_MAX_WORKERS_PER_JOB = 64
_WORKERS_PER_CORE = 8
_MEMORY_PER_WORKER = 256 * 1024 * 1024
_MIN_WORKERS = 4


def default_max_workers() -> int:
    """Workers of all jobs together that fit this machine (see the module docstring)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    workers = _WORKERS_PER_CORE * cores
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        memory = 0  # unknown: cores alone decide
    if memory > 0:
        workers = min(workers, memory // _MEMORY_PER_WORKER)
    return max(_MIN_WORKERS, workers)


class ConfigError(ValueError):
    """The server configuration is invalid (bad flag, unreadable credentials file)."""


def _check_tokens(tokens: Mapping[str, str]) -> dict[str, str]:
    checked: dict[str, str] = {}
    for namespace, token in tokens.items():
        try:
            validate_name(namespace, "namespace")
        except SpecError as exc:
            raise ConfigError(str(exc)) from None
        if not isinstance(token, str) or not token or token != token.strip():
            raise ConfigError(
                f"the token of namespace {namespace!r} must be non-empty text "
                "without surrounding whitespace"
            )
        checked[namespace] = token
    return checked


def _absolute(path: str | os.PathLike[str]) -> Path:
    return Path(path).absolute()


def _positive(_instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        flag = "--" + attribute.name.replace("_", "-")
        raise ConfigError(
            f"{attribute.name} ({flag}) must be a whole number of at least 1, got {value!r}"
        )


@attrs.frozen(kw_only=True)
class ServerConfig:
    """Settings of one server instance.

    Attributes:
        data_dir: Directory holding the database, the logs and the volumes.
        tokens: Raw token of each namespace the server serves.
        host: Interface to listen on (loopback by default).
        port: TCP port; 0 picks a free one.
        kill_grace: Seconds between SIGTERM and SIGKILL when stopping a process.
        restart_backoff: Delay before the first restart of a crashed worker.
        restart_backoff_max: Cap of the doubling restart delay.
        poll_interval: Seconds between two passes of the log collector.
        supervise_interval: Seconds between two checks of the processes.
        max_workers_per_job: Most workers one job may ask for (``nworkers``,
            ``setJobScale``).
        max_workers: Most workers of all unfinished jobs together; by default
            :func:`default_max_workers`.
    """

    data_dir: Path = attrs.field(converter=_absolute)
    tokens: Mapping[str, str] = attrs.field(converter=_check_tokens)
    host: str = DEFAULT_HOST
    port: int = 0
    kill_grace: float = DEFAULT_KILL_GRACE
    restart_backoff: float = DEFAULT_RESTART_BACKOFF
    restart_backoff_max: float = DEFAULT_RESTART_BACKOFF_MAX
    poll_interval: float = 0.01
    supervise_interval: float = 0.02
    max_workers_per_job: int = attrs.field(default=DEFAULT_MAX_WORKERS_PER_JOB, validator=_positive)
    max_workers: int = attrs.field(factory=default_max_workers, validator=_positive)

    @tokens.validator
    def _at_least_one(
        self, _attribute: attrs.Attribute[Mapping[str, str]], value: Mapping[str, str]
    ) -> None:
        if not value:
            raise ConfigError("at least one namespace token is needed")


def generate_token(nbytes: int = 32) -> str:
    """Return a random URL-safe token of ``nbytes`` random bytes that does not start with ``-``.

    A token starting with ``-`` would be read as an option by command lines
    (``juliarun --token <token>``).
    """
    while True:
        token = secrets.token_urlsafe(nbytes)
        if not token.startswith("-"):
            return token


def parse_token_flag(text: str) -> tuple[str, str]:
    """Split a ``NAMESPACE=TOKEN`` flag value.

    Raises:
        ConfigError: The value has no ``=`` or an empty side.
    """
    namespace, sep, token = text.partition("=")
    if not sep or not namespace or not token:
        raise ConfigError("--token expects NAMESPACE=TOKEN")
    return namespace, token


def read_tokens_file(path: Path) -> dict[str, str]:
    """Read ``{namespace: token}`` from a JSON file or (``.toml``) a TOML file.

    Raises:
        ConfigError: The file cannot be read or does not hold such a mapping.
    """
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".toml":
            try:
                tomllib = importlib.import_module("tomllib")  # Python 3.11+
            except ImportError:
                raise ConfigError("TOML configuration files need Python 3.11; use JSON") from None
            data: object = tomllib.loads(text)
        else:
            data = json.loads(text)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the configuration file {path}: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise ConfigError(f"{path} must map namespace names to token strings")
    return _check_tokens(data)


def load_or_create_tokens(data_dir: Path) -> tuple[dict[str, str], bool]:
    """Return the tokens stored in ``data_dir``, generating one for ``default`` if none.

    Returns:
        The tokens, and whether they were just created.
    """
    path = data_dir / CREDENTIALS_FILE
    if path.exists():
        return read_tokens_file(path), False
    make_private_dirs(data_dir)
    tokens = {DEFAULT_NAMESPACE: generate_token()}
    fd = open_private(path, os.O_WRONLY | os.O_EXCL)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(tokens, fh)
    return tokens, True
