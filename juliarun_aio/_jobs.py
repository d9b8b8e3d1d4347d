"""Job specs: one frozen attrs class per JuliaRun job type.

A spec holds the parameters of one job, as the platform documents them (docs/protocol.md,
"Job types and their parameters").
Required parameters are required keyword arguments; every optional parameter defaults
to ``None``, which means "not sent": the server's documented default applies, exactly as
when the Julia client omits it.  Everything is checked at construction and a bad value
raises :class:`~juliarun_aio.SpecError` naming the parameter, before any request is made.

Containers are stored frozen so that specs are immutable, hashable and comparable:
lists become tuples and mappings (``envvars``, ``worker_envvars``, ``ports``) become
:class:`FrozenDict`, a read-only mapping that compares equal to a ``dict`` with the same
items.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar, get_args

import attrs

from ._base import JOB_KINDS
from ._errors import SpecError, excerpt

if TYPE_CHECKING:
    from decimal import Decimal

__all__ = [
    "JOB_KINDS",
    "MAX_NAME_LENGTH",
    "RESTART_POLICIES",
    "FrozenDict",
    "Job",
    "JobRef",
    "JobSpec",
    "Restart",
    "check_parameters",
    "make_spec",
    "memory_bytes",
    "quote",
    "validate_name",
]

Restart = Literal["RestartAlways", "RestartOnFailure", "Never"]
"""The values of the ``restart`` parameter."""

RESTART_POLICIES: tuple[str, ...] = get_args(Restart)
"""The values of the ``restart`` parameter, in documentation order."""

#: The longest job or volume name: a DNS-1123 label is at most 63 characters.
MAX_NAME_LENGTH = 63
# Kubernetes limits a port name to 15 characters.
_MAX_PORT_NAME = 15
_MAX_PORT = 65535
# How much of a bad value an error message quotes.
_QUOTE_LIMIT = 40

_DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Kubernetes CPU: a positive decimal number of cores ("0.5", "2") or of millicores ("500m").
_CPU = re.compile(r"[0-9]+(\.[0-9]+)?|(?P<milli>[0-9]+)m")
# Kubernetes memory: a positive decimal number of bytes, optionally with a binary or
# decimal suffix ("512Mi", "1G") or a decimal exponent ("1e9").
_MEMORY = re.compile(r"(?P<number>[0-9]+(\.[0-9]+)?)(?P<suffix>[KMGTPE]i|[kMGTPE]|[eE][0-9]+)?")
_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"k": 1, "M": 2, "G": 3, "T": 4, "P": 5, "E": 6}

_K = TypeVar("_K")
_V = TypeVar("_V")
_S = TypeVar("_S", bound="JobSpec")


def quote(value: object) -> str:
    """Render a bad value for an error message, truncated so messages stay short.

    Args:
        value: Whatever the caller passed.

    Returns:
        The ``repr`` of the value, cut to about 40 characters.
    """
    return excerpt(value, _QUOTE_LIMIT)


class FrozenDict(Mapping[_K, _V]):
    """A read-only, hashable mapping.

    Specs store ``envvars``, ``worker_envvars`` and ``ports`` as a ``FrozenDict`` so the
    spec stays frozen and hashable.  It compares equal to any mapping with the same
    items, including a plain ``dict``.
    """

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[_K, _V] | Iterable[tuple[_K, _V]] = ()) -> None:
        self._items: dict[_K, _V] = dict(items)

    def __getitem__(self, key: _K) -> _V:
        return self._items[key]

    def __iter__(self) -> Iterator[_K]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(frozenset(self._items.items()))

    def __repr__(self) -> str:
        return f"FrozenDict({self._items!r})"


def _check_wire_text(field: str, value: str) -> None:
    """Reject text that cannot travel in a query parameter."""
    if "\x00" in value:
        raise SpecError(field, f"must not contain NUL characters, got {quote(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise SpecError(field, f"must be valid Unicode text, got {quote(value)}") from None


def validate_name(value: str, field: str = "name") -> str:
    """Check a job or volume name: a lowercase DNS-1123 label.

    A label is 1 to 63 characters of lowercase letters, digits and ``-``, starting and
    ending with a letter or digit (``"train-2024"``).

    Args:
        value: The name to check.
        field: The parameter name to report in an error.

    Returns:
        The name, unchanged.

    Raises:
        SpecError: If the name is not a valid label; the message says what to change.
    """
    if not isinstance(value, str):
        raise SpecError(field, f"must be a string, got {quote(value)}")
    if not value:
        raise SpecError(field, "must not be empty")
    if len(value) > MAX_NAME_LENGTH:
        raise SpecError(
            field, f"is {len(value)} characters long; shorten it to at most {MAX_NAME_LENGTH}"
        )
    if _DNS_LABEL.fullmatch(value) is None:
        if "/" in value or ".." in value:
            hint = "give a plain name, not a path"
        elif value != value.lower():
            hint = "use lowercase letters only"
        else:
            hint = "use only a-z, 0-9 and '-', starting and ending with a letter or digit"
        raise SpecError(field, f"{quote(value)} is not a valid name; {hint}")
    return value


def _check_name(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str):
        raise SpecError(attribute.name, f"must be a string, got {quote(value)}")
    validate_name(value, attribute.name)


def _check_text(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str):
        raise SpecError(attribute.name, f"must be a string, got {quote(value)}")
    if not value:
        raise SpecError(attribute.name, "must not be empty; leave it out to use the default")
    _check_wire_text(attribute.name, value)


def _check_flag(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, bool):
        raise SpecError(attribute.name, f"must be True or False, got {quote(value)}")


def _check_count(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    # bool is an int subclass; True is never a sensible count, so it is refused.
    if not isinstance(value, int) or isinstance(value, bool):
        raise SpecError(attribute.name, f"must be an integer, got {quote(value)}")
    if value < 0:
        raise SpecError(attribute.name, f"must be 0 or more, got {value}")


def _check_restart(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value not in RESTART_POLICIES:
        raise SpecError(
            attribute.name, f"must be one of {', '.join(RESTART_POLICIES)}; got {quote(value)}"
        )


def _decimal(text: str) -> Decimal:
    from decimal import Decimal  # noqa: PLC0415 - needed only to check quantities

    return Decimal(text)


def _check_cpu(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    match = _CPU.fullmatch(value) if isinstance(value, str) else None
    if match is None or _decimal(match["milli"] or match[0]) == 0:
        raise SpecError(
            attribute.name,
            f"{quote(value)} is not a CPU quantity; use a positive number of cores "
            "such as '0.5' or '2', or millicores such as '500m'",
        )


def _check_memory(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str) or _MEMORY.fullmatch(value) is None or memory_bytes(value) == 0:
        raise SpecError(
            attribute.name,
            f"{quote(value)} is not a memory quantity; use a positive number of bytes "
            "with an optional suffix such as '512Mi', '1Gi', '500M' or '1e9'",
        )


def memory_bytes(quantity: str) -> int:
    """Convert a Kubernetes memory quantity (``512Mi``, ``1G``, ``1e9``) to bytes, rounding up.

    The one reading of memory quantities: spec validation accepts exactly what this
    converts, and the server sizes its limits with it.

    Raises:
        ValueError: ``quantity`` is not a memory quantity.
    """
    match = _MEMORY.fullmatch(quantity)
    if match is None:
        raise ValueError(f"not a memory quantity: {quote(quantity)}")
    number = _decimal(match["number"])
    suffix = match["suffix"] or ""
    if suffix in _BINARY:
        number *= 1024 ** _BINARY[suffix]
    elif suffix in _DECIMAL:
        number *= 1000 ** _DECIMAL[suffix]
    elif suffix:
        number *= 10 ** int(suffix[1:])
    return int(number.to_integral_value(rounding="ROUND_CEILING"))


def _quantity_text(value: str | float | None) -> str | None:
    """Write a numeric CPU or memory quantity as decimal text; leave text alone.

    Anything else (a bool, a list...) becomes its repr, which the validator then rejects
    with a message quoting it.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        # Decimal(repr(...)) keeps the shortest exact spelling: 0.5 -> "0.5", 1e-05 ->
        # "0.00001"; a NaN or infinity becomes text the validator refuses.
        return format(_decimal(repr(value)), "f")
    return value if value is None or isinstance(value, str) else repr(value)


def _freeze_strings(field: str, value: Iterable[str]) -> tuple[str, ...]:
    # A lone string is an iterable of characters; taking it apart silently would be wrong.
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise SpecError(field, f"must be a list of strings, got {quote(value)}")
    items = tuple(value)
    for item in items:
        if not isinstance(item, str):
            raise SpecError(field, f"must hold only strings, got {quote(item)}")
        _check_wire_text(field, item)
    return items


def _freeze_volumes(value: Iterable[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    volumes = _freeze_strings("additional_volumes", value)
    for volume in volumes:
        validate_name(volume, "additional_volumes")
    if len(set(volumes)) != len(volumes):
        raise SpecError("additional_volumes", f"lists a volume twice: {quote(list(volumes))}")
    return volumes


def _freeze_args(value: Iterable[str] | None) -> tuple[str, ...] | None:
    return None if value is None else _freeze_strings("args", value)


def _freeze_env(field: str, value: Mapping[str, str]) -> FrozenDict[str, str]:
    if not isinstance(value, Mapping):
        raise SpecError(field, f"must be a mapping of variable name to value, got {quote(value)}")
    for key, item in value.items():
        if not isinstance(key, str) or _ENV_NAME.fullmatch(key) is None:
            raise SpecError(
                field,
                f"{quote(key)} is not an environment variable name; "
                "use letters, digits and '_', not starting with a digit",
            )
        if not isinstance(item, str):
            raise SpecError(field, f"the value of {key} must be a string, got {quote(item)}")
        _check_wire_text(field, item)
    return FrozenDict(value)


def _freeze_envvars(value: Mapping[str, str] | None) -> FrozenDict[str, str] | None:
    return None if value is None else _freeze_env("envvars", value)


def _freeze_worker_envvars(value: Mapping[str, str] | None) -> FrozenDict[str, str] | None:
    return None if value is None else _freeze_env("worker_envvars", value)


def _check_port_name(name: object) -> None:
    # Kubernetes port names (IANA service names): at most 15 characters, at least one
    # letter, no leading, trailing or doubled '-'.
    if (
        not isinstance(name, str)
        or len(name) > _MAX_PORT_NAME
        or _DNS_LABEL.fullmatch(name) is None
        or "--" in name
        or not any(char.isalpha() for char in name)
    ):
        raise SpecError(
            "ports",
            f"{quote(name)} is not a valid port name; use at most {_MAX_PORT_NAME} "
            "characters of a-z, 0-9 and single '-', with at least one letter",
        )


def _check_port_number(name: str, port: object) -> int:
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= _MAX_PORT:
        raise SpecError(
            "ports", f"port {name!r} needs port numbers from 1 to {_MAX_PORT}, got {quote(port)}"
        )
    return port


def _freeze_ports(
    value: Mapping[str, tuple[int, int]] | None,
) -> FrozenDict[str, tuple[int, int]] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise SpecError(
            "ports",
            f"must map a port name to (container_port, service_port), got {quote(value)}",
        )
    ports: dict[str, tuple[int, int]] = {}
    service_ports: set[int] = set()
    for name, pair in value.items():
        _check_port_name(name)
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise SpecError(
                "ports", f"port {name!r} needs (container_port, service_port), got {quote(pair)}"
            )
        container = _check_port_number(name, pair[0])
        service = _check_port_number(name, pair[1])
        # A Kubernetes service cannot expose one port twice; container ports may repeat.
        if service in service_ports:
            raise SpecError(
                "ports", f"service port {service} is used twice; ports need distinct service ports"
            )
        service_ports.add(service)
        ports[name] = (container, service)
    return FrozenDict(ports)


_OPTIONAL_TEXT = attrs.validators.optional(_check_text)
_OPTIONAL_VOLUME = attrs.validators.optional(_check_name)
_OPTIONAL_FLAG = attrs.validators.optional(_check_flag)
_OPTIONAL_COUNT = attrs.validators.optional(_check_count)
_OPTIONAL_CPU = attrs.validators.optional(_check_cpu)
_OPTIONAL_MEMORY = attrs.validators.optional(_check_memory)
_OPTIONAL_RESTART = attrs.validators.optional(_check_restart)


@attrs.frozen
class JobRef:
    """A reference to a job by type and name, enough for every verb except submit/update.

    Args:
        kind: The job type, one of :data:`JOB_KINDS`.
        name: The job name (a lowercase DNS-1123 label).

    Raises:
        SpecError: If ``kind`` is not a job type or ``name`` is not a valid name.
    """

    kind: str = attrs.field()
    name: str = attrs.field(validator=_check_name)

    @kind.validator
    def _check_kind(self, _attribute: attrs.Attribute[str], value: object) -> None:
        if value not in JOB_KINDS:
            raise SpecError(
                "kind", f"unknown job type {quote(value)}; use one of {', '.join(JOB_KINDS)}"
            )

    @property
    def ref(self) -> JobRef:
        """This reference itself, so a ``JobRef`` works wherever a spec's ``.ref`` is used."""
        return self


@attrs.frozen(kw_only=True)
class JobSpec:
    """Base class of the job specs: a job type (``kind``) and its parameters.

    Subclasses are the eight job types.  Only parameters the caller set (not ``None``)
    are sent, so the server's defaults apply to the rest.  The parameters every type
    takes are declared here, so they come first in ``attrs.fields()``, ``repr()`` and
    :meth:`params`: ``name``, ``run_volume``, ``additional_volumes``, ``cpu``, ``memory``
    and ``envvars``; each type's own parameters follow.
    """

    kind: ClassVar[str]

    name: str = attrs.field(validator=_check_name)
    run_volume: str = attrs.field(validator=_check_name)
    additional_volumes: tuple[str, ...] | None = attrs.field(
        default=None, converter=_freeze_volumes
    )
    cpu: str | None = attrs.field(default=None, converter=_quantity_text, validator=_OPTIONAL_CPU)
    memory: str | None = attrs.field(
        default=None, converter=_quantity_text, validator=_OPTIONAL_MEMORY
    )
    envvars: FrozenDict[str, str] | None = attrs.field(default=None, converter=_freeze_envvars)

    @property
    def ref(self) -> JobRef:
        """The :class:`JobRef` (type and name) of this job."""
        return JobRef(self.kind, self.name)

    def params(self) -> dict[str, object]:
        """Return the parameters the caller set, in declaration order.

        Returns:
            A dict of parameter name to value, ``name`` first, leaving out ``None``.
        """
        values = ((field.name, getattr(self, field.name)) for field in attrs.fields(type(self)))
        return {name: value for name, value in values if value is not None}


#: A job argument: a spec (``JuliaBatch(...)``) or a bare reference (``JobRef(kind, name)``).
Job = JobRef | JobSpec


def check_parameters(kind: str, names: Collection[str]) -> type[JobSpec]:
    """Check that ``names`` are a complete, valid parameter set for a job type.

    Args:
        kind: The job type, one of :data:`JOB_KINDS`.
        names: The parameter names about to be passed.

    Returns:
        The spec class for ``kind``.

    Raises:
        SpecError: If the type is unknown, a name is not a parameter of the type, or a
            required parameter is missing; the message lists what the type accepts.
    """
    from ._specs import SPEC_TYPES  # noqa: PLC0415 - defining the specs waits for first use

    spec_type = SPEC_TYPES.get(kind)
    if spec_type is None:
        raise SpecError(
            "kind", f"unknown job type {quote(kind)}; use one of {', '.join(JOB_KINDS)}"
        )
    fields = attrs.fields(spec_type)
    accepted = [field.name for field in fields]
    for name in names:
        if name not in accepted:
            raise SpecError(
                name, f"{kind} has no parameter {name!r}; it accepts {', '.join(accepted)}"
            )
    required = [field.name for field in fields if field.default is attrs.NOTHING]
    for name in required:
        if name not in names:
            raise SpecError(
                name, f"{kind} requires {name!r}; its required parameters are {', '.join(required)}"
            )
    return spec_type


def _checked_parameters(cls: type[_S]) -> type[_S]:
    """Make a spec class raise SpecError, not TypeError, for a wrong set of parameters."""
    generated_init: Callable[..., None] = cls.__init__

    @functools.wraps(generated_init)
    def checked_init(self: _S, *args: object, **params: object) -> None:
        if args:
            # Passing parameters by position is a calling mistake, not a bad value.
            raise TypeError(f"{cls.kind} takes keyword arguments only: {cls.kind}(name=..., ...)")
        check_parameters(cls.kind, params)
        generated_init(self, **params)

    setattr(cls, "__init__", checked_init)  # noqa: B010 - mypy refuses assigning to a method
    return cls


def make_spec(kind: str, **params: object) -> JobSpec:
    """Build the spec of a job type from its name and parameters.

    Args:
        kind: The job type, one of :data:`JOB_KINDS`.
        **params: The job's parameters, under their documented names.

    Returns:
        The spec instance.

    Raises:
        SpecError: If the type is unknown, or a parameter is unknown, missing or invalid.
    """
    spec_type: Any = check_parameters(kind, params)
    spec: JobSpec = spec_type(**params)
    return spec


def __getattr__(name: str) -> Any:
    # The spec classes live in _specs, defined on first use; their old home still works.
    if name in _SPEC_NAMES:
        from . import _specs  # noqa: PLC0415

        return getattr(_specs, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_SPEC_NAMES = frozenset({*JOB_KINDS, "SPEC_TYPES"})
