"""Typed results of the protocol's read verbs, and the tolerant readers that build them.

The readers accept every shape a JuliaRun server is known to send (docs/protocol.md,
"Responses"):

- ``getJobStatus``: the dict form ``{"succeeded": ..., "created": ..., ...}`` and the legacy
  5-array ``[completed, nworkers_succeeded, nworkers_started, created, is_notebook]``.
- ``getJobScale``: ``[running, requested]``.
- ``getJobEndpoint``: ``[ip, {port_name: port}]``; ``null`` or ``[]`` mean "no endpoint yet".
- ``listJobs`` / ``getAllJobInfo``: ``{name: {"type": ..., "status": ..., ...}}``.
- ``getSystemStatus``, ``setJobScale``, ``deleteJob``: a boolean (:func:`bool_from_wire`);
  ``getEncodedURL``, ``tailJob``: a string (:func:`str_from_wire`).

Unknown keys are ignored (kept in ``extra`` where that helps debugging); a value of the
wrong type raises :class:`ValueError` quoting what was wrong, which the client turns into a
:class:`~juliarun_aio.ResponseError` naming the verb.  Each model also has ``to_wire()``,
used by the local server so both halves agree on one shape.

In notebooks the models and :class:`JobTable` display as HTML (``_repr_html_``, every
value escaped) with the phase in colour; ``str()`` gives a one-line (for the table, an
aligned plain-text) form.  Nothing here imports IPython or rich.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from ._errors import excerpt
from ._jobs import JobRef

__all__ = [
    "Endpoint",
    "JobInfo",
    "JobScale",
    "JobStatus",
    "JobTable",
    "bool_from_wire",
    "endpoint_text",
    "info_row",
    "phase_of",
    "str_from_wire",
]

#: Phases reported by servers that say more than ``succeeded`` (the local server does).
TERMINAL_PHASES = frozenset({"succeeded", "failed", "lost"})


def bool_from_wire(data: object) -> bool:
    """Read a boolean answer (``true``/``false``; ``null`` reads as ``False``).

    Raises:
        ValueError: ``data`` is neither.
    """
    if data is None:
        return False
    if isinstance(data, bool):
        return data
    if isinstance(data, str) and data.lower() in ("true", "false"):
        return data.lower() == "true"
    raise ValueError(f"expected true/false, got {excerpt(data)}")


def str_from_wire(data: object) -> str:
    """Read a string answer (``null`` reads as ``""``).

    Raises:
        ValueError: ``data`` is not a string.
    """
    if data is None:
        return ""
    if isinstance(data, str):
        return data
    raise ValueError(f"expected a string, got {excerpt(data)}")


def _bool(value: object, what: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ValueError(f"{what}: expected a boolean, got {excerpt(value)}")


def _int(value: object, what: str) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    raise ValueError(f"{what}: expected an integer, got {excerpt(value)}")


@attrs.frozen
class JobStatus:
    """The status of a job, as ``getJobStatus`` reports it.

    Attributes:
        succeeded: The job completed successfully (legacy servers: "completed").
        created: The job's processes/containers have been created (vs. only scheduled).
        parallelism: Requested parallelism (worker count) of the job.
        nworkers_succeeded: Workers that completed successfully.
        npending: Workers not yet running.
        nuptodate: Workers running the current job definition.
        nworkers_started: Workers started (legacy array form only).
        is_notebook: Legacy array form only.
        phase: ``pending``, ``running``, ``succeeded``, ``failed`` or ``lost`` when the
            server says (the local server does; a plain JuliaRun server does not).
        failed: The job ended unsuccessfully (only servers that report failures).
        message: A human-readable reason from the server, if any.
        uid: The identity of this submission of the job, when the server reports one (the
            local server does): a job deleted and submitted again under the same name has
            a new ``uid``.
        extra: Keys the server sent that this model does not know.
    """

    succeeded: bool = False
    created: bool = False
    parallelism: int = 0
    nworkers_succeeded: int = 0
    npending: int = 0
    nuptodate: int = 0
    nworkers_started: int | None = None
    is_notebook: bool | None = None
    phase: str | None = None
    failed: bool = False
    message: str | None = None
    uid: str | None = None
    extra: Mapping[str, Any] = attrs.field(factory=dict, eq=False)

    @property
    def completed(self) -> bool:
        """True once the job will not change any more: succeeded, failed or lost."""
        return self.succeeded or self.failed or self.phase in TERMINAL_PHASES

    @classmethod
    def from_wire(cls, data: object) -> JobStatus:
        """Read the dict form or the legacy 5-array form.

        Raises:
            ValueError: ``data`` is neither form, or a value has the wrong type.
        """
        if isinstance(data, list | tuple):
            if len(data) < 4:
                raise ValueError(f"status array needs at least 4 items, got {excerpt(data)}")
            return cls(
                succeeded=_bool(data[0], "status[0] (completed)"),
                nworkers_succeeded=_int(data[1], "status[1] (nworkers_succeeded)"),
                nworkers_started=_int(data[2], "status[2] (nworkers_started)"),
                created=_bool(data[3], "status[3] (created)"),
                is_notebook=_bool(data[4], "status[4] (is_notebook)") if len(data) > 4 else None,
            )
        if not isinstance(data, Mapping):
            raise ValueError(f"expected a status object or array, got {excerpt(data)}")
        known = {
            "succeeded": _bool,
            "created": _bool,
            "parallelism": _int,
            "nworkers_succeeded": _int,
            "npending": _int,
            "nuptodate": _int,
            "nworkers_started": _int,
            "is_notebook": _bool,
            "failed": _bool,
        }
        values: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in data.items():
            if key in known and value is not None:
                values[key] = known[key](value, f"status.{key}")
            elif key in ("phase", "message", "uid") and value is not None:
                values[key] = str(value)
            elif key not in known:
                extra[key] = value
        if "succeeded" not in values and "completed" in extra:
            values["succeeded"] = _bool(extra.pop("completed"), "status.completed")
        return cls(**values, extra=extra)

    def to_wire(self) -> dict[str, Any]:
        """Return the dict form, with the optional fields only when known."""
        out: dict[str, Any] = {
            "succeeded": self.succeeded,
            "created": self.created,
            "parallelism": self.parallelism,
            "nworkers_succeeded": self.nworkers_succeeded,
            "npending": self.npending,
            "nuptodate": self.nuptodate,
        }
        if self.nworkers_started is not None:
            out["nworkers_started"] = self.nworkers_started
        if self.is_notebook is not None:
            out["is_notebook"] = self.is_notebook
        if self.phase is not None:
            out["phase"] = self.phase
        if self.phase is not None or self.failed:
            out["failed"] = self.failed
        if self.message is not None:
            out["message"] = self.message
        if self.uid is not None:
            out["uid"] = self.uid
        out.update(self.extra)
        return out

    def __str__(self) -> str:
        workers = f", {self.nuptodate}/{self.parallelism} workers" if self.parallelism else ""
        message = f": {self.message}" if self.message else ""
        return f"{phase_of(self)}{workers}{message}"

    def _repr_html_(self) -> str:
        rows = [
            ("succeeded", self.succeeded),
            ("created", self.created),
            ("parallelism", self.parallelism),
            ("workers up to date", self.nuptodate),
            ("workers pending", self.npending),
            ("workers succeeded", self.nworkers_succeeded),
            ("workers started", self.nworkers_started),
            ("message", self.message),
            ("uid", self.uid),
            *sorted(self.extra.items()),
        ]
        cells = "".join(
            f"<tr><th {_CELL}>{_text(key)}</th><td {_CELL}>{_text(value)}</td></tr>"
            for key, value in rows
            if value is not None and value != {}
        )
        return (
            f"<div><b>JobStatus</b> {_badge(phase_of(self))}"
            f"<table {_TABLE}><tbody>{cells}</tbody></table></div>"
        )


@attrs.frozen
class JobScale:
    """Workers running and requested, as ``getJobScale`` reports them."""

    running: int
    requested: int

    @classmethod
    def from_wire(cls, data: object) -> JobScale:
        """Read ``[running, requested]`` (or a ``{"running":..., "requested":...}`` object).

        Raises:
            ValueError: ``data`` has another shape.
        """
        if isinstance(data, Mapping) and "running" in data and "requested" in data:
            return cls(_int(data["running"], "running"), _int(data["requested"], "requested"))
        if isinstance(data, list | tuple) and len(data) >= 2:
            return cls(_int(data[0], "scale[0] (running)"), _int(data[1], "scale[1] (requested)"))
        raise ValueError(f"expected [running, requested], got {excerpt(data)}")

    def to_wire(self) -> list[int]:
        """Return ``[running, requested]``."""
        return [self.running, self.requested]

    def __str__(self) -> str:
        return f"{self.running}/{self.requested} workers running"

    def _repr_html_(self) -> str:
        share = min(self.running / self.requested, 1.0) if self.requested else 1.0
        return (
            f"<div><b>{self.running}</b> of <b>{self.requested}</b> workers running"
            '<div style="width:220px;height:6px;border-radius:3px;margin-top:4px;'
            'background:rgba(127,127,127,.25)">'
            f'<div style="width:{share * 100:.0f}%;height:6px;border-radius:3px;'
            f'background:{PHASE_COLOURS["running"]}"></div></div></div>'
        )


@attrs.frozen
class Endpoint:
    """Where a job's service can be reached: ``host`` and named ``ports``.

    ``host`` is ``None`` while the job has no endpoint yet.
    """

    host: str | None
    ports: Mapping[str, int] = attrs.field(factory=dict)

    @classmethod
    def from_wire(cls, data: object) -> Endpoint:
        """Read ``[ip, {name: port}]``; ``null``, ``[]`` and ``[ip]`` are accepted.

        Raises:
            ValueError: ``data`` has another shape.
        """
        if data is None or data == "" or (isinstance(data, list | tuple) and not data):
            return cls(None, {})
        if isinstance(data, str):
            return cls(data, {})
        if isinstance(data, list | tuple) and isinstance(data[0], str | None):
            ports_raw = data[1] if len(data) > 1 else {}
            if ports_raw is None:
                ports_raw = {}
            if not isinstance(ports_raw, Mapping):
                raise ValueError(f"endpoint ports: expected an object, got {excerpt(ports_raw)}")
            ports = {str(k): _int(v, f"endpoint port {k!r}") for k, v in ports_raw.items()}
            return cls(data[0], ports)
        raise ValueError(f"expected [host, {{name: port}}], got {excerpt(data)}")

    def to_wire(self) -> list[Any]:
        """Return ``[host, {name: port}]``."""
        return [self.host, dict(self.ports)]

    def __str__(self) -> str:
        return endpoint_text(self)

    def _repr_html_(self) -> str:
        return f"<div><b>Endpoint</b> {_endpoint_html(self)}</div>"


@attrs.frozen
class JobInfo:
    """One entry of ``listJobs`` (kind only) or ``getAllJobInfo`` (everything).

    Attributes:
        name: The job's name.
        kind: The job type (``"JuliaBatch"``...).
        status: ``None`` when the server did not include it (``listJobs``).
        scale: As ``status``.
        endpoint: As ``status``.
    """

    name: str
    kind: str
    status: JobStatus | None = None
    scale: JobScale | None = None
    endpoint: Endpoint | None = None

    @property
    def ref(self) -> JobRef:
        """The :class:`JobRef` to pass to job verbs.

        Raises:
            SpecError: the server listed a job type this SDK does not know.
        """
        return JobRef(self.kind, self.name)

    @classmethod
    def mapping_from_wire(cls, data: object) -> dict[str, JobInfo]:
        """Read ``{name: {"type": ..., "status": ..., "scale": ..., "endpoint": ...}}``.

        Raises:
            ValueError: the outer value is not an object, an entry lacks a known ``type``,
                or a nested value is malformed.
        """
        if data is None:
            return {}
        if not isinstance(data, Mapping):
            raise ValueError(f"expected an object of jobs, got {excerpt(data)}")
        jobs: dict[str, JobInfo] = {}
        for name, entry in data.items():
            if not isinstance(entry, Mapping) or not isinstance(entry.get("type"), str):
                raise ValueError(f"job {name!r}: expected {{'type': ...}}, got {excerpt(entry)}")
            # A job type newer than this SDK is listed as it is; only its ``ref`` fails.
            kind = entry["type"]
            status = entry.get("status")
            scale = entry.get("scale")
            endpoint = entry.get("endpoint")
            jobs[str(name)] = cls(
                name=str(name),
                kind=kind,
                status=JobStatus.from_wire(status) if status not in (None, []) else None,
                scale=JobScale.from_wire(scale) if scale not in (None, []) else None,
                endpoint=Endpoint.from_wire(endpoint) if "endpoint" in entry else None,
            )
        return jobs

    def to_wire(self) -> dict[str, Any]:
        """Return this entry's value in the ``getAllJobInfo`` object."""
        out: dict[str, Any] = {"type": self.kind}
        if self.status is not None:
            out["status"] = self.status.to_wire()
        if self.scale is not None:
            out["scale"] = self.scale.to_wire()
        if self.endpoint is not None:
            out["endpoint"] = self.endpoint.to_wire()
        return out

    def __str__(self) -> str:
        return "  ".join(info_row(self))

    def _repr_html_(self) -> str:
        return _table_html([self])


class JobTable(dict[str, JobInfo]):
    """The jobs of a namespace by name, as ``get_all_job_info`` returns them.

    A plain ``dict`` in every way, which also displays as a table in notebooks (like
    ``juliarun info``) and prints as an aligned plain-text table.
    """

    __slots__ = ()

    def __str__(self) -> str:
        if not self:
            return "no jobs"
        rows = [TABLE_COLUMNS, *(info_row(info) for info in self._sorted())]
        widths = [max(len(row[i]) for row in rows) for i in range(len(TABLE_COLUMNS))]
        return "\n".join(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            for row in rows
        )

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text("JobTable(...)" if cycle else str(self))

    def _repr_html_(self) -> str:
        if not self:
            return "<div><i>no jobs</i></div>"
        return _table_html(self._sorted())

    def _sorted(self) -> list[JobInfo]:
        return [self[name] for name in sorted(self)]


# -- plain text and HTML ---------------------------------------------------------------

#: The columns of :func:`info_row`, as ``juliarun info`` prints them.
TABLE_COLUMNS = ("NAME", "TYPE", "PHASE", "WORKERS", "ENDPOINT")
#: Badge colours of the phases (the dashboard uses the same).
PHASE_COLOURS = {
    "pending": "#8a6d1f",
    "running": "#2f6fdb",
    "succeeded": "#1f8a4c",
    "failed": "#c8302c",
    "lost": "#8e44ad",
}
_TABLE = 'style="border-collapse:collapse;margin-top:4px"'
_CELL = (
    'style="text-align:left;padding:2px 10px 2px 0;border-bottom:1px solid rgba(127,127,127,.3)"'
)


def phase_of(status: JobStatus) -> str:
    """Name the job's phase: the server's own word, or one derived from the flags."""
    if status.phase:
        return status.phase
    if status.succeeded:
        return "succeeded"
    if status.failed:
        return "failed"
    return "running" if status.created else "pending"


def endpoint_text(endpoint: Endpoint | None) -> str:
    """Render an endpoint as ``host name=port,...`` (``-`` when there is none)."""
    if endpoint is None or endpoint.host is None:
        return "-"
    ports = ",".join(f"{name}={port}" for name, port in endpoint.ports.items())
    return f"{endpoint.host} {ports}".strip()


def info_row(info: JobInfo) -> tuple[str, str, str, str, str]:
    """One row of the status table: name, type, phase, workers and endpoint."""
    return (
        info.name,
        info.kind,
        phase_of(info.status) if info.status else "-",
        f"{info.scale.running}/{info.scale.requested}" if info.scale else "-",
        endpoint_text(info.endpoint),
    )


def _text(value: object) -> str:
    import html  # noqa: PLC0415 - only notebooks show HTML

    return html.escape(value if isinstance(value, str) else repr(value), quote=True)


def _badge(phase: str) -> str:
    colour = PHASE_COLOURS.get(phase, "#667085")
    return (
        f'<span style="background:{colour};color:#fff;border-radius:9px;padding:0 8px;'
        f'font-size:90%;font-weight:600">{_text(phase)}</span>'
    )


def _scheme(port_name: str) -> str | None:
    """``http``/``https`` for ports that serve a web page by their name, as the dashboard."""
    lower = port_name.lower()
    if "https" in lower or lower.endswith("tls"):
        return "https"
    if lower.startswith(("http", "web")) or lower in ("nb", "mgmt"):
        return "http"
    return None


def _endpoint_html(endpoint: Endpoint | None) -> str:
    if endpoint is None or endpoint.host is None or not endpoint.ports:
        return _text(endpoint_text(endpoint))
    host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
    parts = []
    for name, port in sorted(endpoint.ports.items()):
        label = _text(f"{name}={port}")
        scheme = _scheme(name)
        if scheme is None:
            parts.append(label)
        else:
            url = _text(f"{scheme}://{host}:{int(port)}/")
            parts.append(f'<a href="{url}" target="_blank" rel="noopener">{label}</a>')
    return f"{_text(endpoint.host)} {' '.join(parts)}"


def _table_html(jobs: list[JobInfo]) -> str:
    head = "".join(f"<th {_CELL}>{column}</th>" for column in (*TABLE_COLUMNS, "MESSAGE"))
    rows = []
    for info in jobs:
        name, kind, phase, workers, _ = info_row(info)
        message = info.status.message if info.status and info.status.message else ""
        cells = (
            _text(name),
            _text(kind),
            _badge(phase) if info.status else "-",
            _text(workers),
            _endpoint_html(info.endpoint),
            _text(message),
        )
        rows.append("<tr>" + "".join(f"<td {_CELL}>{cell}</td>" for cell in cells) + "</tr>")
    return f"<table {_TABLE}><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
