"""What a job process runs on this machine: program, arguments, environment, directories.

The data directory is laid out as::

    <data-dir>/state.sqlite3
    <data-dir>/namespaces/<ns>/volumes/<volume>/        run and additional volumes
    <data-dir>/namespaces/<ns>/jobs/<job>/work/          JRUN_DIR
    <data-dir>/namespaces/<ns>/jobs/<job>/logs/          process output, combined log

Which program runs:

- ``JuliaBatch`` / ``PkgBuilder`` / ``JuliaParBatchWorkers`` units / ``JuliaParBatch``
  master: the script (``start_script`` or ``builder_script``) run by ``shell`` if given,
  else chosen by extension -- ``.jl`` by ``julia`` (which must be on PATH), ``.py`` by this
  Python, ``.sh`` by ``/bin/sh``, anything else executed directly.  Relative script paths
  are relative to the run volume.
- ``JuliaParBatch`` / ``Notebook`` workers: ``worker_start_script`` run by ``worker_shell``.
- ``Generic``: ``command`` with ``args``, never through a shell.
- ``Notebook``: ``jupyter notebook``; ``Webserver``: ``nginx -c cfg_file``; ``MessageQ``:
  ``rabbitmq-server`` -- when installed, else the job fails saying what to install.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

import attrs

from .._errors import SpecError
from .._jobs import JobSpec, memory_bytes, validate_name
from ._launcher import free_ports, port_variable
from ._private import make_private_dirs

__all__ = [
    "ARRAY_KINDS",
    "MASTER_KINDS",
    "WORKER_KINDS",
    "LaunchError",
    "LaunchPlan",
    "Layout",
    "ProcessRequest",
    "allocate_ports",
    "plan_process",
]

#: Kinds with a master process (the job is done when it exits).
MASTER_KINDS = frozenset(
    {"JuliaParBatch", "Notebook", "JuliaBatch", "PkgBuilder", "Webserver", "MessageQ"}
)
#: Kinds whose master may have workers (``nworkers``, ``setJobScale``).
WORKER_KINDS = frozenset({"JuliaParBatch", "Notebook"})
#: Kinds that are an array of independent units, done when all of them succeeded.
ARRAY_KINDS = frozenset({"JuliaParBatchWorkers", "Generic"})
#: Kinds whose processes get ``JRUN_CLUSTER_COOKIE``.
CLUSTER_KINDS = frozenset({"JuliaParBatch", "JuliaParBatchWorkers", "Notebook"})

#: Ports of the kinds that have them by default (name -> (container, service)).
DEFAULT_PORTS: Mapping[str, Mapping[str, tuple[int, int]]] = {
    "Notebook": {"nb": (8888, 8888)},
    "Webserver": {"http": (80, 80), "https": (443, 443)},
    "MessageQ": {
        "amqptls": (5671, 5671),
        "amqp": (5672, 5672),
        "mgmttls": (15672, 15671),
        "mgmt": (15672, 15672),
    },
}


class LaunchError(Exception):
    """A process cannot be started here; the message says why and what to do."""


@attrs.frozen
class LaunchPlan:
    """What to run for one process.

    Attributes:
        argv: The program and its arguments (run without a shell).
        env: The complete environment.
        cwd: The working directory.
        memory_bytes: Address-space limit, or ``None``.
    """

    argv: list[str]
    env: Mapping[str, str]
    cwd: Path
    memory_bytes: int | None = None


def allocate_ports(names: list[str]) -> dict[str, int]:
    """Pick a free loopback TCP port for each name."""
    return free_ports(names, "127.0.0.1")


def env_suffix(name: str) -> str:
    """Turn a port or volume name into an environment variable suffix (``my-vol`` -> ``MY_VOL``)."""
    return name.upper().replace("-", "_")


class Layout:
    """Paths inside the data directory; every name is checked so nothing escapes it.

    Args:
        root: The data directory.
    """

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    @property
    def database(self) -> Path:
        """The SQLite database file."""
        return self.root / "state.sqlite3"

    def _inside(self, *names: str) -> Path:
        path = self.root.joinpath("namespaces", *names).resolve()
        if not path.is_relative_to(self.root):
            raise SpecError("name", f"{'/'.join(names)!r} is outside the data directory")
        return path

    def volume(self, namespace: str, volume: str, field: str = "run_volume") -> Path:
        """Return the directory of a volume, creating it.

        Raises:
            SpecError: The volume name is not a valid name.
        """
        validate_name(volume, field)
        return make_private_dirs(self._inside(namespace, "volumes", volume))

    def job(self, namespace: str, name: str) -> Path:
        """Return the directory of a job (not created)."""
        validate_name(name)
        return self._inside(namespace, "jobs", name)

    def job_logs(self, namespace: str, name: str) -> Path:
        """Return the log directory of a job (not created)."""
        return self.job(namespace, name) / "logs"

    def job_work(self, namespace: str, name: str) -> Path:
        """Return the writable job directory (``JRUN_DIR``) of a job (not created)."""
        return self.job(namespace, name) / "work"


@attrs.frozen(kw_only=True)
class ProcessRequest:
    """Everything needed to plan one process of a job.

    Attributes:
        namespace: The job's namespace.
        spec: The job's current spec.
        label: ``master`` or ``worker-N``.
        ports: The port of each port name; 0 where the launcher chooses it on the node.
        cookie: The job's cluster cookie.
        url: The server's URL, for ``JRUN_URL``.
        token: The namespace's raw token, for ``JRUN_TOKEN``.
        layout: The data directory layout.
        ca_bundle: The CA certificate that the server's certificate is checked with, for
            ``JRUN_CA_BUNDLE`` (self-signed TLS); None when not needed.
        listen: The interface the job's own services (Jupyter) listen on.
    """

    namespace: str
    spec: JobSpec
    label: str
    ports: Mapping[str, int]
    cookie: str
    url: str
    token: str
    layout: Layout
    ca_bundle: Path | None = None
    listen: str = "127.0.0.1"


def _port_text(req: ProcessRequest, name: str) -> str:
    """A port as a program argument: the number, or the launcher's placeholder for it."""
    port = req.ports[name]
    return str(port) if port else f"${{{port_variable(name)}}}"


def _text(params: Mapping[str, object], key: str) -> str | None:
    value = params.get(key)
    return value if isinstance(value, str) else None


def _which(program: str, env: Mapping[str, str], cwd: Path) -> str | None:
    if "/" in program:
        path = cwd / program
        return str(path) if path.is_file() else None
    return shutil.which(program, path=env.get("PATH", os.defpath))


def _script_command(
    script: str, shell: str | None, field: str, env: Mapping[str, str], cwd: Path
) -> list[str]:
    path = cwd / script
    if not path.is_file():
        raise LaunchError(f"{field} {script!r} not found (looked for {path})")
    if shell is not None:
        program = _which(shell, env, cwd) or (str(cwd / shell) if (cwd / shell).is_file() else None)
        if program is None:
            raise LaunchError(f"shell {shell!r} not found on PATH or in the run volume")
        return [program, str(path)]
    suffix = path.suffix.lower()
    if suffix == ".jl":
        julia = _which("julia", env, cwd)
        if julia is None:
            raise LaunchError(
                f"{field} {script!r} is a Julia script but julia is not on PATH; install "
                "Julia (https://julialang.org/downloads/) or pass shell= to choose the program"
            )
        return [julia, str(path)]
    if suffix == ".py":
        return [sys.executable, str(path)]
    if suffix == ".sh":
        return ["/bin/sh", str(path)]
    return [str(path)]


def _service_command(
    kind: str, params: Mapping[str, object], req: ProcessRequest, env: dict[str, str], cwd: Path
) -> list[str]:
    """Program and arguments of the services: Notebook, Webserver, MessageQ."""
    if kind == "Notebook":
        jupyter = _which("jupyter", env, cwd)
        if jupyter is None:
            raise LaunchError("Notebook jobs run Jupyter: install it (pip install notebook)")
        return [
            jupyter,
            "notebook",
            "--no-browser",
            f"--ip={req.listen}",
            f"--port={_port_text(req, 'nb')}" if "nb" in req.ports else "--port=0",
            f"--NotebookApp.token={_text(params, 'passwd') or ''}",
            f"--notebook-dir={cwd}",
        ]
    cfg = _text(params, "cfg_file")
    assert cfg is not None  # a required parameter of both remaining kinds
    cfg_path = cwd / cfg
    if not cfg_path.is_file():
        raise LaunchError(f"cfg_file {cfg!r} not found (looked for {cfg_path})")
    if kind == "Webserver":
        nginx = _which("nginx", env, cwd)
        if nginx is None:
            raise LaunchError("Webserver jobs run nginx: install it (e.g. apt-get install nginx)")
        return [nginx, "-c", str(cfg_path), "-g", "daemon off;"]
    server = _which("rabbitmq-server", env, cwd)
    if server is None:
        raise LaunchError(
            "MessageQ jobs run RabbitMQ: install it (e.g. apt-get install rabbitmq-server)"
        )
    env["RABBITMQ_CONFIG_FILE"] = str(cfg_path)
    if "amqp" in req.ports:
        env["RABBITMQ_NODE_PORT"] = _port_text(req, "amqp")
    return [server]


def plan_process(req: ProcessRequest) -> LaunchPlan:
    """Work out the program, environment and limits of one process.

    Raises:
        LaunchError: The process cannot run here (program missing, script not found...).
    """
    spec = req.spec
    kind = spec.kind
    params = spec.params()
    worker = req.label != "master"
    # Workers of a master use the worker_* parameters; array units use the plain ones.
    uses_worker_fields = worker and kind in WORKER_KINDS
    layout = req.layout
    run_volume = _text(params, "run_volume")
    assert run_volume is not None  # required by every kind
    cwd = layout.volume(req.namespace, run_volume)
    work = layout.job_work(req.namespace, spec.name)
    make_private_dirs(work)

    env = {key: value for key, value in os.environ.items() if not key.startswith("JRUN_")}
    env["PYTHONUNBUFFERED"] = "1"
    bundle = _text(params, "pkg_bundle")
    if bundle is not None:
        bundle_dir = layout.volume(req.namespace, bundle, "pkg_bundle")
        env["JRUN_PKG_BUNDLE"] = str(bundle_dir)
        env["JULIA_LOAD_PATH"] = f"{bundle_dir}{os.pathsep}"
    user_env = params.get("worker_envvars" if uses_worker_fields else "envvars")
    if isinstance(user_env, Mapping):
        env.update(user_env)
    env.update(
        {
            "JRUN_TYPE": kind,
            "JRUN_NAME": spec.name,
            "JRUN_DIR": str(work),
            "JRUN_PROC": req.label,
            "JRUN_URL": req.url,
            "JRUN_TOKEN": req.token,
            "JRUN_NAMESPACE": req.namespace,
        }
    )
    if req.ca_bundle is not None:
        env["JRUN_CA_BUNDLE"] = str(req.ca_bundle)
    if kind in CLUSTER_KINDS:
        env["JRUN_CLUSTER_COOKIE"] = req.cookie
    if uses_worker_fields:
        # The master runs on this machine (a backend that runs it elsewhere says where).
        env["JRUN_MASTER_HOST"] = "127.0.0.1"
    for name, port in req.ports.items():
        if port:
            env[port_variable(name)] = str(port)
    volumes = params.get("additional_volumes") or ()
    assert isinstance(volumes, tuple)
    for volume in volumes:
        path = layout.volume(req.namespace, volume, "additional_volumes")
        env[f"JRUN_VOLUME_{env_suffix(volume)}"] = str(path)

    if uses_worker_fields:
        script = _text(params, "worker_start_script")
        if script is None:
            raise LaunchError(
                "workers run worker_start_script, which is not set; update the job with one"
            )
        argv = _script_command(
            script, _text(params, "worker_shell"), "worker_start_script", env, cwd
        )
    elif kind == "Generic":
        command = _text(params, "command")
        if command is None:
            raise LaunchError(
                "Generic jobs need command= locally: there is no image entrypoint to run"
            )
        program = _which(command, env, cwd)
        if program is None:
            raise LaunchError(f"command {command!r} not found on PATH or in the run volume")
        args = params.get("args") or ()
        assert isinstance(args, tuple)
        argv = [program, *args]
    elif kind in ("Notebook", "Webserver", "MessageQ"):
        argv = _service_command(kind, params, req, env, cwd)
    else:
        field = "builder_script" if kind == "PkgBuilder" else "start_script"
        script = _text(params, field)
        assert script is not None  # required by these kinds
        argv = _script_command(script, _text(params, "shell"), field, env, cwd)

    memory = _text(params, "worker_memory" if uses_worker_fields else "memory")
    return LaunchPlan(
        argv=argv,
        env=env,
        cwd=cwd,
        memory_bytes=memory_bytes(memory) if memory is not None else None,
    )
