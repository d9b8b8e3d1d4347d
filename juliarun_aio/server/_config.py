"""Configuration of the local server: where it listens, where it keeps state, who may call it.

Worker counts are capped so that one request cannot exhaust the machine: by default at
most :data:`DEFAULT_MAX_WORKERS_PER_JOB` workers per job, and :func:`default_max_workers`
workers of all jobs together -- 8 per CPU core this process may run on, but no more than
one per 256 MiB of physical memory, and at least 4.  A Julia worker needs 150-250 MB
resident once started and a CPU-second or more to start, so the memory bound keeps a
scale-up from driving the machine into swap or the OOM killer, while 8 per core still
allows the mostly idle workers of development and test jobs; 64 per job is as many as
one Distributed.jl master usually drives on one machine.

Every request carries a namespace's token in its URL, so the server serves plain HTTP only
on loopback: a ``host`` that is not a loopback address (a wildcard such as ``0.0.0.0``
included) needs TLS (``tls_cert`` and ``tls_key``, or ``tls_self_signed``; see
``_tls.py``), or ``insecure_http`` to serve plain HTTP there on purpose.

Credentials are one raw token per namespace.  They come from ``--token=NS=TOKEN`` flags, a
small JSON or TOML file ``{namespace = "token"}`` (``--config``), or, when neither is given,
a token generated once for namespace ``default`` and kept in ``<data-dir>/credentials.json``
(mode 0600) so that restarting the server keeps it.  Generated tokens never start with
``-``, so that they also work as the value of a separate command-line argument.

The ``--config`` file may also hold the server's own settings in a ``server`` table (the
command line wins over it)::

    default = "s3cret"            # namespace = token, as many as needed

    [server]
    backend = "slurm"             # or "local" (the default)
    host = "0.0.0.0"              # every interface: jobs on the nodes call the server too
    port = 8443
    tls_self_signed = true        # or tls_cert = "server.pem" and tls_key = "server-key.pem"
                                  # (relative to the configuration file's directory)
    # insecure_http = true        # plain HTTP off loopback, on purpose
    partition = "debug"           # Slurm: sbatch --partition
    account = "project-42"        # Slurm: sbatch --account
    sbatch_args = ["--constraint=infiniband", "--qos=short"]

(in JSON: ``{"default": "s3cret", "server": {"backend": "slurm", ...}}``).
"""

from __future__ import annotations

import importlib
import ipaddress
import json
import os
import secrets
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from .._errors import SpecError
from .._jobs import validate_name
from ._private import make_private_dirs, open_private

__all__ = [
    "BACKENDS",
    "DEFAULT_DATA_DIR",
    "DEFAULT_HOST",
    "DEFAULT_KILL_GRACE",
    "DEFAULT_MAX_WORKERS_PER_JOB",
    "DEFAULT_NAMESPACE",
    "SERVER_SETTINGS",
    "ConfigError",
    "ServerConfig",
    "default_max_workers",
    "generate_token",
    "is_loopback",
    "load_or_create_tokens",
    "parse_token_flag",
    "read_config_file",
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
#: Where jobs run: processes on this machine, or one Slurm job per process.
BACKENDS = ("local", "slurm")
#: The keys of a configuration file's ``server`` table, and the type of each value.
SERVER_SETTINGS: Mapping[str, type] = {
    "backend": str,
    "host": str,
    "port": int,
    "tls_cert": str,
    "tls_key": str,
    "tls_self_signed": bool,
    "insecure_http": bool,
    "partition": str,
    "account": str,
    "sbatch_args": list,
}
#: Settings of the ``server`` table that name files, relative to the file's directory.
_PATH_SETTINGS = frozenset({"tls_cert", "tls_key"})


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


def _optional_path(path: str | os.PathLike[str] | None) -> Path | None:
    return None if path is None else _absolute(path)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name) is only reachable from this machine.

    A name counts when every address it resolves to is a loopback address; a wildcard
    (``0.0.0.0``, ``::``) or a name that does not resolve does not.
    """
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return False
    return bool(found) and all(
        ipaddress.ip_address(str(address[4][0]).split("%")[0]).is_loopback for address in found
    )


def _one_of_backends(_instance: object, _attribute: attrs.Attribute[str], value: str) -> None:
    if value not in BACKENDS:
        raise ConfigError(
            f"backend (--backend) must be one of {', '.join(BACKENDS)}, got {value!r}"
        )


def _slurm_name(
    _instance: object, attribute: attrs.Attribute[str | None], value: str | None
) -> None:
    if value is not None and (
        not isinstance(value, str) or not value or any(c.isspace() or c == "," for c in value)
    ):
        raise ConfigError(
            f"{attribute.name} (--{attribute.name}) must be one name without spaces or commas, "
            f"got {value!r}"
        )


def _texts(value: object) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise ConfigError(f"sbatch_args must be a list of arguments, got {value!r}")
    if not all(isinstance(item, str) for item in value):
        raise ConfigError(f"sbatch_args must be a list of strings, got {value!r}")
    return tuple(value)


def _tcp_port(_instance: object, _attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ConfigError(
            f"port (--port) must be a whole number from 0 to 65535 (0 picks a free one), "
            f"got {value!r}"
        )


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
        tls_cert: The certificate (PEM) to serve HTTPS with, together with ``tls_key``.
        tls_key: The private key (PEM, unencrypted) of ``tls_cert``.
        tls_self_signed: Serve HTTPS with a certificate from a CA of the server's own,
            kept in the data directory (clients trust its ``tls/ca.pem``).
        insecure_http: Serve plain HTTP on a ``host`` that is not loopback, on purpose:
            tokens then cross the network in clear.
        backend: Where jobs run: ``local`` (processes on this machine) or ``slurm`` (one
            Slurm job per process).
        partition: The Slurm partition of the jobs; None: the cluster's default.
        account: The Slurm account of the jobs; None: the user's default.
        sbatch_args: More ``sbatch`` options for every job, each one argument
            (``--constraint=gpu``).

    Raises:
        ConfigError: A value is invalid, TLS options contradict each other, or ``host``
            is not loopback while neither TLS nor ``insecure_http`` is set.
    """

    data_dir: Path = attrs.field(converter=_absolute)
    tokens: Mapping[str, str] = attrs.field(converter=_check_tokens)
    host: str = DEFAULT_HOST
    port: int = attrs.field(default=0, validator=_tcp_port)
    kill_grace: float = DEFAULT_KILL_GRACE
    restart_backoff: float = DEFAULT_RESTART_BACKOFF
    restart_backoff_max: float = DEFAULT_RESTART_BACKOFF_MAX
    poll_interval: float = 0.01
    supervise_interval: float = 0.02
    max_workers_per_job: int = attrs.field(default=DEFAULT_MAX_WORKERS_PER_JOB, validator=_positive)
    max_workers: int = attrs.field(factory=default_max_workers, validator=_positive)
    tls_cert: Path | None = attrs.field(default=None, converter=_optional_path)
    tls_key: Path | None = attrs.field(default=None, converter=_optional_path)
    tls_self_signed: bool = False
    insecure_http: bool = False
    backend: str = attrs.field(default="local", validator=_one_of_backends)
    partition: str | None = attrs.field(default=None, validator=_slurm_name)
    account: str | None = attrs.field(default=None, validator=_slurm_name)
    sbatch_args: tuple[str, ...] = attrs.field(default=(), converter=_texts)

    @property
    def tls(self) -> bool:
        """Whether the server serves HTTPS."""
        return self.tls_self_signed or self.tls_cert is not None

    def __attrs_post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("--tls-cert and --tls-key go together: give both files")
        if self.tls_self_signed and self.tls_cert is not None:
            raise ConfigError("give --tls-self-signed or --tls-cert and --tls-key, not both")
        if self.backend != "slurm" and (self.partition or self.account or self.sbatch_args):
            # Ignoring them would run the jobs here, not on the cluster they name.
            raise ConfigError(
                "--partition, --account and --sbatch-arg apply to Slurm jobs: add "
                "--backend slurm, or drop them"
            )
        if self.insecure_http and self.tls:
            raise ConfigError("--insecure-http serves plain HTTP: drop it to serve HTTPS")
        if not self.tls and not self.insecure_http and not is_loopback(self.host):
            raise ConfigError(
                f"refusing to serve plain HTTP on {self.host}, which is not a loopback "
                "address: every request carries a namespace token, which would cross the "
                "network in clear; add --tls-self-signed (or --tls-cert and --tls-key), or "
                "--insecure-http to allow it on purpose"
            )

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
    tokens, settings = read_config_file(path)
    if settings:
        raise ConfigError(f"{path} must map namespace names to token strings")
    return tokens


def read_config_file(path: Path) -> tuple[dict[str, str], dict[str, Any]]:
    """Read a ``--config`` file: tokens, and the settings of its ``server`` table.

    Returns:
        ``{namespace: token}``, and the server settings (keys of :data:`SERVER_SETTINGS`;
        file names made absolute, relative to the file's directory).

    Raises:
        ConfigError: The file cannot be read, or holds something else.
    """
    data = _load(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must map namespace names to token strings")
    settings: dict[str, Any] = data.pop("server") if isinstance(data.get("server"), dict) else {}
    if not all(isinstance(v, str) for v in data.values()):
        raise ConfigError(f"{path} must map namespace names to token strings")
    unknown = sorted(set(settings) - set(SERVER_SETTINGS))
    if unknown:
        raise ConfigError(
            f"{path}: unknown server setting(s) {', '.join(unknown)}; known: "
            f"{', '.join(SERVER_SETTINGS)}"
        )
    for key, value in settings.items():
        kind = SERVER_SETTINGS[key]
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise ConfigError(
                f"{path}: server setting {key} must be {kind.__name__}, got {value!r}"
            )
        if key in _PATH_SETTINGS:
            settings[key] = path.absolute().parent / str(value)
    return _check_tokens(data), settings


def _load(path: Path) -> object:
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
    return data


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
