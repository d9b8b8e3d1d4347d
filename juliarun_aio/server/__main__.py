"""``juliarun-server`` / ``python -m juliarun_aio.server``: run the local JuliaRun server.

The first line printed is ``JuliaRun server listening on <URL>`` (scripts and tests parse
it).  Without ``--token`` or ``--config`` a token for namespace ``default`` is generated
once, stored in the data directory and printed as ``export JRUN_...`` lines.  The last
line is ``dashboard: <URL>``: a link that signs a browser in to the dashboard (``/ui/``)
once, for namespace ``default`` (or the first configured namespace when there is no
``default``).  Job processes keep running when the server stops (they are re-adopted at
the next start) unless ``--stop-jobs`` is given.  A data directory serves one server at a
time: a second one exits at once (status 1) with a line naming the directory and the pid
of the server using it.

Off loopback the server serves HTTPS: ``--tls-cert FILE --tls-key FILE``, or
``--tls-self-signed`` (a CA of its own in the data directory, whose certificate it prints
as ``export JRUN_CA_BUNDLE=...``).  Plain HTTP on an address that is not loopback is
refused (exit 1) unless ``--insecure-http`` allows it on purpose.  On a wildcard address
(``0.0.0.0``, ``::``) the URL printed names this machine as clients dial it.

``--backend slurm`` runs every job process as a Slurm job (``--partition``,
``--account``, ``--sbatch-arg``); the data directory must then be on a file system that
every node sees at the same path, and ``--host`` an address the nodes reach (or a
wildcard: jobs then call the server at its address on the route to the nodes, which a
self-signed certificate names).  The server checks both at start and exits with one line
naming the problem.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import Any

from ._backend import BackendError
from ._config import (
    BACKENDS,
    DEFAULT_DATA_DIR,
    DEFAULT_HOST,
    DEFAULT_KILL_GRACE,
    DEFAULT_MAX_WORKERS_PER_JOB,
    DEFAULT_NAMESPACE,
    ConfigError,
    ServerConfig,
    default_max_workers,
    load_or_create_tokens,
    parse_token_flag,
    read_config_file,
)
from ._engine import Engine
from ._serve import bind_socket, make_uvicorn, serving_endpoints
from ._store import DataDirectoryInUseError, DataDirectoryLock
from ._ui import Dashboard

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="juliarun-server", description="Run a JuliaRun-compatible server on this machine."
    )
    parser.add_argument(
        "--host",
        default=None,
        help=f"interface (default: {DEFAULT_HOST}); off loopback, serve HTTPS (--tls-...)",
    )
    parser.add_argument("--port", type=int, default=None, help="TCP port; 0 picks a free one")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help="state, logs, volumes (default: %(default)s)",
    )
    parser.add_argument(
        "--token",
        action="append",
        default=[],
        metavar="NS=TOKEN",
        help="a namespace and its token, as --token=NS=TOKEN (repeatable)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        help="JSON or TOML file mapping namespaces to tokens, with server settings in an "
        "optional 'server' table",
    )
    parser.add_argument(
        "--kill-grace",
        type=float,
        default=DEFAULT_KILL_GRACE,
        help="seconds from SIGTERM to SIGKILL",
    )
    parser.add_argument(
        "--stop-jobs", action="store_true", help="stop job processes when the server stops"
    )
    parser.add_argument(
        "--max-workers-per-job",
        type=int,
        default=DEFAULT_MAX_WORKERS_PER_JOB,
        metavar="N",
        help="most workers one job may ask for (default: %(default)s)",
    )
    parser.add_argument(
        "--max-workers",
        type=int,
        default=None,
        metavar="N",
        help="most workers of all jobs together (default: 8 per CPU core, at most one per "
        f"256 MiB of memory; here {default_max_workers()})",
    )
    tls = parser.add_argument_group("TLS (needed on an address other than loopback)")
    tls.add_argument(
        "--tls-cert", type=Path, default=None, metavar="FILE", help="certificate (PEM)"
    )
    tls.add_argument(
        "--tls-key", type=Path, default=None, metavar="FILE", help="its private key (PEM)"
    )
    tls.add_argument(
        "--tls-self-signed",
        action="store_true",
        default=None,
        help="serve HTTPS with a CA of the server's own, kept in the data directory; clients "
        "trust it with the JRUN_CA_BUNDLE printed at start",
    )
    tls.add_argument(
        "--insecure-http",
        action="store_true",
        default=None,
        help="serve plain HTTP on an address other than loopback, on purpose: tokens then "
        "cross the network in clear",
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default=None,
        help="where jobs run: local processes, or one Slurm job per process (default: local)",
    )
    slurm = parser.add_argument_group("Slurm (--backend slurm)")
    slurm.add_argument("--partition", default=None, help="sbatch --partition of every job")
    slurm.add_argument("--account", default=None, help="sbatch --account of every job")
    slurm.add_argument(
        "--sbatch-arg",
        action="append",
        default=None,
        metavar="ARG",
        help="one more sbatch option for every job, as --sbatch-arg=--constraint=gpu (repeatable)",
    )
    parser.add_argument(
        "--log-level", default="warning", choices=["debug", "info", "warning", "error"]
    )
    return parser


def _settings(args: argparse.Namespace, from_file: Mapping[str, Any]) -> dict[str, Any]:
    """The server settings: the command line's, else the configuration file's."""
    given = {
        "backend": args.backend,
        "host": args.host,
        "port": args.port,
        "tls_cert": args.tls_cert,
        "tls_key": args.tls_key,
        "tls_self_signed": args.tls_self_signed,
        "insecure_http": args.insecure_http,
        "partition": args.partition,
        "account": args.account,
        "sbatch_args": args.sbatch_arg,
    }
    settings: dict[str, Any] = {"host": DEFAULT_HOST, "port": 0}
    settings.update(from_file)
    settings.update({key: value for key, value in given.items() if value is not None})
    return settings


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and serve until interrupted."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        # First of all: a second server must change nothing in a directory the first uses.
        lock = DataDirectoryLock(args.data_dir.absolute())
    except (DataDirectoryInUseError, OSError) as exc:
        sys.exit(f"juliarun-server: {exc}")
    try:
        tokens: dict[str, str] = {}
        from_file: Mapping[str, Any] = {}
        if args.config is not None:
            file_tokens, from_file = read_config_file(args.config)
            tokens.update(file_tokens)
        tokens.update(parse_token_flag(flag) for flag in args.token)
        # No token given: use the data directory's (generated there on first start).
        stored = not tokens
        if stored:
            tokens, _ = load_or_create_tokens(args.data_dir)
        config = ServerConfig(
            data_dir=args.data_dir,
            tokens=tokens,
            kill_grace=args.kill_grace,
            max_workers_per_job=args.max_workers_per_job,
            max_workers=(
                args.max_workers if args.max_workers is not None else default_max_workers()
            ),
            **_settings(args, from_file),
        )
        sock = bind_socket(config.host, config.port)
    except (ConfigError, OSError) as exc:
        lock.release()
        sys.exit(f"juliarun-server: {exc}")
    try:
        engine = Engine(config, lock=lock)
    except ConfigError as exc:
        sock.close()
        sys.exit(f"juliarun-server: {exc}")
    try:
        endpoints = serving_endpoints(config, sock, remote=engine.backend.remote_host())
        engine.start(endpoints.job_url, ca_bundle=endpoints.ca_bundle)
    except (BackendError, ConfigError, OSError) as exc:
        sock.close()
        engine.stop(leave_running=True)
        sys.exit(f"juliarun-server: {exc}")
    url = endpoints.url
    dashboard = Dashboard(engine)
    namespace = DEFAULT_NAMESPACE if DEFAULT_NAMESPACE in tokens else next(iter(tokens))
    print(f"JuliaRun server listening on {url}")
    if stored:
        print(f"Credentials are stored in {config.data_dir}; use them with:")
        print(f"export JRUN_URL={shlex.quote(url)}")
        print(f"export JRUN_TOKEN={shlex.quote(tokens[namespace])}")
        print(f"export JRUN_NAMESPACE={shlex.quote(namespace)}")
    elif endpoints.ca_bundle is not None:
        print("Clients trust the server's certificate with:")
    if endpoints.ca_bundle is not None:
        print(f"export JRUN_CA_BUNDLE={shlex.quote(str(endpoints.ca_bundle))}")
    print(f"dashboard: {dashboard.login_url(url, namespace)}", flush=True)
    # uvicorn handles SIGINT/SIGTERM while it serves, then restores the handlers it found
    # and raises the signal again.  With Python's default SIGTERM action that re-raise
    # would end the process before the engine stops its jobs; turn it into SystemExit.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        server = make_uvicorn(
            engine, log_level=args.log_level, dashboard=dashboard, tls=endpoints.tls
        )
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
        engine.stop(leave_running=not args.stop_jobs)


def _exit_on_sigterm(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    main()
