"""The spec class of each job type (see :mod:`._jobs` for what they share).

Defining eight attrs classes costs more than the rest of ``import juliarun_aio``; they are
defined when first used (``juliarun_aio.JuliaBatch``, :func:`~._jobs.make_spec`, decoding
a spec), not when the package is imported.
"""

from __future__ import annotations

from typing import ClassVar

import attrs

from ._jobs import (
    _OPTIONAL_COUNT,
    _OPTIONAL_CPU,
    _OPTIONAL_FLAG,
    _OPTIONAL_MEMORY,
    _OPTIONAL_RESTART,
    _OPTIONAL_TEXT,
    _OPTIONAL_VOLUME,
    FrozenDict,
    JobSpec,
    Restart,
    _check_name,
    _check_text,
    _checked_parameters,
    _freeze_args,
    _freeze_ports,
    _freeze_worker_envvars,
    _quantity_text,
)

__all__ = [
    "SPEC_TYPES",
    "Generic",
    "JuliaBatch",
    "JuliaParBatch",
    "JuliaParBatchWorkers",
    "MessageQ",
    "Notebook",
    "PkgBuilder",
    "Webserver",
]


@_checked_parameters
@attrs.frozen(kw_only=True)
class JuliaParBatch(JobSpec):
    """A Julia master-worker parallel batch job.

    A master process and an array of uniformly sized worker processes, each in its own
    container, initialised for Julia parallel constructs.  The number of workers follows
    the requested scale (``set_job_scale``).

    Args:
        name: Name of the job, unique in the namespace (required).
        start_script: A Julia script to start the master node with (required).
        run_volume: A persistent volume to use as the master volume (required).
        pkg_bundle: A package bundle to set at LOAD_PATH (default: none).
        additional_volumes: More persistent volumes to attach at ``/mnt/<volume name>``
            (default: none).
        ports: Network ports to expose from the master, as name ->
            ``(container_port, service_port)`` (default: nothing).
        external: Whether the ports are exposed to the external network (default: false).
        image: The docker image to run (default: julia).
        cpu: CPU share for the master, e.g. ``"0.5"`` or ``"500m"``; numbers are accepted
            (default: 0.1 of a core, burstable to 1 core).
        gpu: GPUs to allocate (default: 0).
        memory: RAM for the master, e.g. ``"512Mi"`` (default: 512 Mi to 1 Gi).
        shell: The script to use for the master shell (default: master.sh).
        envvars: Additional environment variables for the master (default: none).
        nworkers: Number of worker processes to start (default: 0, can be scaled later).
        worker_cpu: CPU share for a worker process (default: 0.1 of a core, burstable to
            1 core).
        worker_gpu: GPUs to allocate to a worker process (default: 0).
        worker_memory: RAM for a worker process (default: 512 Mi to 1 Gi).
        worker_shell: The script to use for a worker shell (default: master.sh).
        worker_envvars: Additional environment variables for the workers (default: none).
        worker_start_script: A Julia script to start a worker node with (default:
            worker.sh).
        restart: Whether workers are restarted: ``"RestartAlways"``,
            ``"RestartOnFailure"`` or ``"Never"`` (default: RestartAlways).

    Raises:
        SpecError: If a parameter is missing, unknown or invalid.
    """

    kind: ClassVar[str] = "JuliaParBatch"

    start_script: str = attrs.field(validator=_check_text)
    pkg_bundle: str | None = attrs.field(default=None, validator=_OPTIONAL_VOLUME)
    ports: FrozenDict[str, tuple[int, int]] | None = attrs.field(
        default=None, converter=_freeze_ports
    )
    external: bool | None = attrs.field(default=None, validator=_OPTIONAL_FLAG)
    image: str | None = attrs.field(default=None, validator=_OPTIONAL_TEXT)
    gpu: int | None = attrs.field(default=None, validator=_OPTIONAL_COUNT)
    shell: str | None = attrs.field(default=None, validator=_OPTIONAL_TEXT)
    nworkers: int | None = attrs.field(default=None, validator=_OPTIONAL_COUNT)
    worker_cpu: str | None = attrs.field(
        default=None, converter=_quantity_text, validator=_OPTIONAL_CPU
    )
    worker_gpu: int | None = attrs.field(default=None, validator=_OPTIONAL_COUNT)
    worker_memory: str | None = attrs.field(
        default=None, converter=_quantity_text, validator=_OPTIONAL_MEMORY
    )
    worker_shell: str | None = attrs.field(default=None, validator=_OPTIONAL_TEXT)
    worker_envvars: FrozenDict[str, str] | None = attrs.field(
        default=None, converter=_freeze_worker_envvars
    )
    worker_start_script: str | None = attrs.field(default=None, validator=_OPTIONAL_TEXT)
    restart: Restart | None = attrs.field(default=None, validator=_OPTIONAL_RESTART)


@_checked_parameters
@attrs.frozen(kw_only=True)
class JuliaParBatchWorkers(JobSpec):
    """A Julia embarrassingly parallel batch job: an array of independent batch units.

    The units are not linked to each other, so the array scales faster and further than
    a :class:`JuliaParBatch`.  Suited to work queues.

    Args:
        name: Name of the job, unique in the namespace (required).
        start_script: A Julia script to start each node with (required).
        run_volume: A persistent volume to use as the work volume (required).
        pkg_bundle: A package bundle to set at LOAD_PATH (default: none).
        additional_volumes: More persistent volumes to attach at ``/mnt/<volume name>``
            (default: none).
        ports: Network ports to expose, as name -> ``(container_port, service_port)``
            (default: nothing).
        external: Whether the ports are exposed to the external network (default: false).
        image: The docker image to run (default: julia).
        cpu: CPU share for each process (default: 0.1 of a core, burstable to 1 core).
        gpu: GPUs to allocate to each process (default: 0).
        memory: RAM for each process (default: 512 Mi to 1Gi).
        shell: The script to use for the process shell (default: worker.sh).
        envvars: Additional environment variables (default: none).
        nworkers: Number of worker processes to start (default: 0, can be scaled later).
        restart: Whether workers are restarted: ``"RestartAlways"``,
            ``"RestartOnFailure"`` or ``"Never"`` (default: RestartAlways).

    Raises:
        SpecError: If a parameter is missing, unknown or invalid.
    """

    kind: ClassVar[str] = "JuliaParBatchWorkers"

    start_script: str = attrs.field(validator=_check_text)
    pkg_bundle: str | None = attrs.field(default=None, validator=_OPTIONAL_VOLUME)
    ports: FrozenDict[str, tuple[int, int]] | None = attrs.field(
        default=None, converter=_freeze_ports
    )
    external: bool | None = attrs.field(default=None, validator=_OPTIONAL_FLAG)
    image: str | None = attrs.field(default=None, validator=_OPTIONAL_TEXT)
    gpu: int | None = attrs.field(default=None, validator=_OPTIONAL_COUNT)
    shell: str | None = attrs.field(default=None, validator=_OPTIONAL_TEXT)
    nworkers: int | None = attrs.field(default=None, validator=_OPTIONAL_COUNT)
    restart: Restart | None = attrs.field(default=None, validator=_OPTIONAL_RESTART)


@_checked_parameters
@attrs.frozen(kw_only=True)
class Notebook(JobSpec):
    """A Julia interactive notebook (Jupyter), reachable from outside the cluster.

    The master container runs Jupyter and the Julia kernels; workers can be provisioned
    as for :class:`JuliaParBatch` or :class:`JuliaParBatchWorkers`.

    Args:
        name: Name of the job, unique in the namespace (required).
        run_volume: A persistent volume to use as the master volume (required).
        pkg_bundle: A package bundle to set at LOAD_PATH (default: none).
        additional_volumes: More persistent volumes to attach at ``/mnt/<volume name>``
            (default: none).
        image: The docker image to run (default: julia).
        cpu: CPU share for the master (default: 0.1 of a core, burstable to 1 core).
        gpu: GPUs to allocate to the master (default: 0).
        memory: RAM for the master (default: 512 Mi to 1 Gi).
        shell: The script to use for the master shell (default: notebook.sh).
        envvars: Additional environment variables for the master (default: none).
        worker_cpu: CPU share for a worker process (default: 0.1 of a core, burstable to
            1 core).
        worker_gpu: GPUs to allocate to a worker process (default: 0).
        worker_memory: RAM for a worker process (default: 512 Mi to 1 Gi).
        worker_shell: The script to use for a worker shell (default: master.sh).
        worker_envvars: Additional environment variables for the workers (default: none).
        worker_start_script: A Julia script to start a worker node with (default:
            worker.sh).
        passwd: Password to protect the notebook with (default: no password).
        ports: Network ports to expose, as name -> ``(container_port, service_port)``
            (default: ``{"nb": (8888, 8888)}``).
        external: Whether the ports are exposed to the external network (default: false).
        restart: Whether workers are restarted: ``"RestartAlways"``,
            ``"RestartOnFailure"`` or ``"Never"`` (default: RestartAlways).

    Raises:
        SpecError: If a parameter is missing, unknown or invalid.
    """

    kind: ClassVar[str] = "Notebook"

    pkg_bundle: str | None = attrs.field(default=None, validator=_OPTIONAL_VOLUME)
    image: str | None = attrs.field(default=None, validator=_OPTIONAL_TEXT)
    gpu: int | None = attrs.field(default=None, validator=_OPTIONAL_COUNT)
    shell: str | None = attrs.field(default=None, validator=_OPTIONAL_TEXT)
    worker_cpu: str | None = attrs.field(
        default=None, converter=_quantity_text, validator=_OPTIONAL_CPU
    )
    worker_gpu: int | None = attrs.field(default=None, validator=_OPTIONAL_COUNT)
    worker_memory: str | None = attrs.field(
        default=None, converter=_quantity_text, validator=_OPTIONAL_MEMORY
    )
    worker_shell: str | None = attrs.field(default=None, validator=_OPTIONAL_TEXT)
    worker_envvars: FrozenDict[str, str] | None = attrs.field(
        default=None, converter=_freeze_worker_envvars
    )
    worker_start_script: str | None = attrs.field(default=None, validator=_OPTIONAL_TEXT)
    passwd: str | None = attrs.field(default=None, validator=_OPTIONAL_TEXT)
    ports: FrozenDict[str, tuple[int, int]] | None = attrs.field(
        default=None, converter=_freeze_ports
    )
    external: bool | None = attrs.field(default=None, validator=_OPTIONAL_FLAG)
    restart: Restart | None = attrs.field(default=None, validator=_OPTIONAL_RESTART)


@_checked_parameters
@attrs.frozen(kw_only=True)
class JuliaBatch(JobSpec):
    """A Julia batch job in a single container.

    The Julia process may start threads or local worker processes, all within the
    job's CPU and memory limits.

    Args:
        name: Name of the job, unique in the namespace (required).
        start_script: A Julia script to start the master node with (required).
        run_volume: A persistent volume to use as the master volume (required).
        pkg_bundle: A package bundle to set at LOAD_PATH (default: none).
        additional_volumes: More persistent volumes to attach at ``/mnt/<volume name>``
            (default: none).
        ports: Network ports to expose, as name -> ``(container_port, service_port)``
            (default: nothing).
        external: Whether the ports are exposed to the external network (default: false).
        image: The docker image to run (default: julia).
        cpu: CPU share to allocate (default: minimum 0.1 of a core, burstable to 1 core).
        gpu: GPUs to allocate (default: 0).
        memory: RAM to allocate (default: 512 MiB to 1Gi).
        shell: The script to use for the startup shell (default: master.sh).
        envvars: Additional environment variables (default: none).

    Raises:
        SpecError: If a parameter is missing, unknown or invalid.
    """

    kind: ClassVar[str] = "JuliaBatch"

    start_script: str = attrs.field(validator=_check_text)
    pkg_bundle: str | None = attrs.field(default=None, validator=_OPTIONAL_VOLUME)
    ports: FrozenDict[str, tuple[int, int]] | None = attrs.field(
        default=None, converter=_freeze_ports
    )
    external: bool | None = attrs.field(default=None, validator=_OPTIONAL_FLAG)
    image: str | None = attrs.field(default=None, validator=_OPTIONAL_TEXT)
    gpu: int | None = attrs.field(default=None, validator=_OPTIONAL_COUNT)
    shell: str | None = attrs.field(default=None, validator=_OPTIONAL_TEXT)


@_checked_parameters
@attrs.frozen(kw_only=True)
class PkgBuilder(JobSpec):
    """A job that builds or updates a Julia package bundle.

    The bundle's package folder is mounted read-write and a build script runs, much
    like a :class:`JuliaBatch` job.

    Args:
        name: Name of the job, unique in the namespace (required).
        builder_script: A Julia script that builds the packages (required).
        run_volume: A persistent volume to use as the master volume (required).
        pkg_bundle: The package bundle to build (required).
        additional_volumes: More persistent volumes to attach at ``/mnt/<volume name>``
            (default: none).
        image: The docker image to run (default: julia).
        cpu: CPU share to allocate (default: 1 core, burstable to 2 cores).
        gpu: GPUs to allocate (default: 0).
        memory: RAM to allocate (default: 4Gi to 8 Gi).
        shell: The script to use for the startup shell (default: master.sh).
        envvars: Additional environment variables for the master (default: none).

    Raises:
        SpecError: If a parameter is missing, unknown or invalid.
    """

    kind: ClassVar[str] = "PkgBuilder"

    builder_script: str = attrs.field(validator=_check_text)
    pkg_bundle: str = attrs.field(validator=_check_name)
    image: str | None = attrs.field(default=None, validator=_OPTIONAL_TEXT)
    gpu: int | None = attrs.field(default=None, validator=_OPTIONAL_COUNT)
    shell: str | None = attrs.field(default=None, validator=_OPTIONAL_TEXT)


@_checked_parameters
@attrs.frozen(kw_only=True)
class Webserver(JobSpec):
    """A web server (nginx) serving an API, a UI or files for other jobs.

    Args:
        name: Name of the job, unique in the namespace (required).
        cfg_file: Configuration file to start the web server with (required).
        run_volume: A persistent volume to use as the master volume (required).
        additional_volumes: More persistent volumes to attach at ``/mnt/<volume name>``
            (default: none).
        image: The docker image to run (default: nginx).
        cpu: CPU share to allocate (default: 0.1 core, burstable to 1 core).
        memory: RAM to allocate (default: 512Mi to 1Gi).
        envvars: Additional environment variables (default: none).
        ports: Network ports to expose, as name -> ``(container_port, service_port)``
            (default: ``{"http": (80, 80), "https": (443, 443)}``).
        external: Whether the ports are exposed to the external network (default: false).
        nworkers: Number of web server containers to start (default: not documented).

    Raises:
        SpecError: If a parameter is missing, unknown or invalid.
    """

    kind: ClassVar[str] = "Webserver"

    cfg_file: str = attrs.field(validator=_check_text)
    image: str | None = attrs.field(default=None, validator=_OPTIONAL_TEXT)
    ports: FrozenDict[str, tuple[int, int]] | None = attrs.field(
        default=None, converter=_freeze_ports
    )
    external: bool | None = attrs.field(default=None, validator=_OPTIONAL_FLAG)
    nworkers: int | None = attrs.field(default=None, validator=_OPTIONAL_COUNT)


@_checked_parameters
@attrs.frozen(kw_only=True)
class MessageQ(JobSpec):
    """A message queue (RabbitMQ) for communication within or across jobs.

    Args:
        name: Name of the job, unique in the namespace (required).
        cfg_file: Configuration file to start the message queue with (required).
        run_volume: A persistent volume to use as the master volume (required).
        additional_volumes: More persistent volumes to attach at ``/mnt/<volume name>``
            (default: none).
        image: The docker image to run (default: rabbitmq).
        cpu: CPU share to allocate (default: 1 core, burstable to 2 cores).
        memory: RAM to allocate (default: 4Gi).
        envvars: Additional environment variables (default: none).
        ports: Network ports to expose, as name -> ``(container_port, service_port)``
            (default: ``{"amqptls": (5671, 5671), "amqp": (5672, 5672),
            "mgmttls": (15672, 15671), "mgmt": (15672, 15672)}``).
        external: Whether the ports are exposed to the external network (default: false).

    Raises:
        SpecError: If a parameter is missing, unknown or invalid.
    """

    kind: ClassVar[str] = "MessageQ"

    cfg_file: str = attrs.field(validator=_check_text)
    image: str | None = attrs.field(default=None, validator=_OPTIONAL_TEXT)
    ports: FrozenDict[str, tuple[int, int]] | None = attrs.field(
        default=None, converter=_freeze_ports
    )
    external: bool | None = attrs.field(default=None, validator=_OPTIONAL_FLAG)


@_checked_parameters
@attrs.frozen(kw_only=True)
class Generic(JobSpec):
    """A generic job running any command in any docker image.

    Args:
        name: Name of the job, unique in the namespace (required).
        image: The docker image to run (required).
        run_volume: A persistent volume to use as the master volume (required).
        command: The command to execute in the container (default: the image's
            entrypoint).
        args: Arguments to the command, a list of strings (default: none).
        additional_volumes: More persistent volumes to attach at ``/mnt/<volume name>``
            (default: none).
        cpu: CPU share to allocate (default: 0.1 core, burstable to 1 core).
        memory: RAM to allocate (default: 512Mi to 1Gi).
        envvars: Additional environment variables (default: none).
        ports: Network ports to expose, as name -> ``(container_port, service_port)``
            (default: none).
        external: Whether the ports are exposed to the external network (default: false).
        nworkers: Number of containers to start (default: not documented).

    Raises:
        SpecError: If a parameter is missing, unknown or invalid.
    """

    kind: ClassVar[str] = "Generic"

    image: str = attrs.field(validator=_check_text)
    command: str | None = attrs.field(default=None, validator=_OPTIONAL_TEXT)
    args: tuple[str, ...] | None = attrs.field(default=None, converter=_freeze_args)
    ports: FrozenDict[str, tuple[int, int]] | None = attrs.field(
        default=None, converter=_freeze_ports
    )
    external: bool | None = attrs.field(default=None, validator=_OPTIONAL_FLAG)
    nworkers: int | None = attrs.field(default=None, validator=_OPTIONAL_COUNT)


SPEC_TYPES: dict[str, type[JobSpec]] = {
    spec_type.kind: spec_type
    for spec_type in (
        JuliaParBatch,
        JuliaParBatchWorkers,
        Notebook,
        JuliaBatch,
        PkgBuilder,
        Webserver,
        MessageQ,
        Generic,
    )
}
"""The spec class of each job type, keyed by :data:`JOB_KINDS` name."""

for _spec_type in SPEC_TYPES.values():
    # Turn the string annotations (from __future__ import annotations) into types, so
    # that attrs.fields(...).type is usable by the wire converter.
    attrs.resolve_types(_spec_type)
