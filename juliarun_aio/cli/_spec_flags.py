"""Command-line flags for job specs, derived from the spec classes' fields.

Every field of every spec class becomes a flag of ``submit TYPE`` and ``update TYPE``, so
a parameter added to a spec class is reachable from the command line without touching
this module: ``start_script`` is ``--start-script`` (the documented spelling
``--start_script`` works too).  Values use the wire syntax and are decoded by
:func:`juliarun_aio._wire.decode_spec`, so the command line accepts exactly what a
JuliaRun server accepts:

- text and numbers: the value itself (``--cpu 500m``, ``--nworkers 2``);
- booleans: ``--external`` alone means ``true``, ``--external false`` says so;
- ports: ``name:container:service`` or ``container:service`` entries, comma-separated;
  the flag may be repeated (``--ports http:8080:80 --ports 9000:9000``);
- lists: a JSON array (``--args '["-v", "x"]'``) or one item per repeated singular flag
  (``--arg=-v --arg x``, ``--volume data``);
- environment variables: a JSON object (``--envvars '{"A": "1"}'``) or repeated
  ``--env A=1`` (``--worker-env`` for ``worker_envvars``).
"""

from __future__ import annotations

import argparse
import copy
import enum
import inspect
import json
import re
import typing
from collections.abc import Mapping
from typing import Any, Literal

import attrs

from .._jobs import FrozenDict, JobSpec
from .._specs import SPEC_TYPES
from .._wire import decode_spec, parameter_type
from ._errors import UsageError

__all__ = [
    "Shape",
    "SpecFlag",
    "SpecHelpFormatter",
    "add_spec_arguments",
    "spec_flags",
    "spec_from_args",
]


class Shape(enum.Enum):
    """How a spec field's value is given on the command line."""

    TEXT = "text"
    FLAG = "flag"
    PORTS = "ports"
    LIST = "list"
    ENV = "env"


# The singular flag that adds one item to a list or one variable to a mapping.
_ITEM_FLAGS: Mapping[str, str] = {
    "additional_volumes": "volume",
    "args": "arg",
    "envvars": "env",
    "worker_envvars": "worker-env",
}

_ARGS_SECTION = re.compile(r"^Args:\n(?P<body>(?:(?: {4}.*)?\n)*)", re.MULTILINE)
_ARG_ENTRY = re.compile(r"^ {4}(?P<name>\w+): (?P<text>.*(?:\n {8}.*)*)", re.MULTILINE)


@attrs.frozen
class SpecFlag:
    """One spec field as a command-line flag.

    Attributes:
        field: The parameter name, as documented and sent on the wire.
        shape: How the value is given.
        required: The job type requires the parameter.
        help: The parameter's description from the spec class.
        choices: The allowed values, for a parameter typed as a ``Literal``.
    """

    field: str
    shape: Shape
    required: bool
    help: str
    choices: tuple[str, ...] | None = None

    @property
    def option(self) -> str:
        """The flag, e.g. ``--start-script``."""
        return "--" + self.field.replace("_", "-")

    @property
    def item_option(self) -> str | None:
        """The singular flag adding one item (``--volume``), for lists and mappings."""
        item = _ITEM_FLAGS.get(self.field)
        return None if item is None or self.shape not in (Shape.LIST, Shape.ENV) else "--" + item

    @property
    def dest(self) -> str:
        """The argparse destination of the main flag."""
        return f"spec_{self.field}"

    @property
    def item_dest(self) -> str:
        """The argparse destination of the singular flag."""
        return f"spec_item_{self.field}"


def _choices(value_type: Any) -> tuple[str, ...] | None:
    if typing.get_origin(value_type) is Literal:
        return tuple(str(choice) for choice in typing.get_args(value_type))
    return None


def _shape(value_type: Any) -> Shape:
    """Classify a parameter by the type of its value."""
    origin = typing.get_origin(value_type)
    if value_type is bool:
        return Shape.FLAG
    if origin is tuple:
        return Shape.LIST
    if origin is FrozenDict:
        item_type = typing.get_args(value_type)[1]
        return Shape.ENV if item_type is str else Shape.PORTS
    return Shape.TEXT


def _field_help(spec_type: type[JobSpec]) -> dict[str, str]:
    """Read each parameter's description from the ``Args:`` section of the docstring."""
    section = _ARGS_SECTION.search(inspect.cleandoc(spec_type.__doc__ or ""))
    if section is None:
        return {}
    return {
        entry["name"]: " ".join(entry["text"].replace("``", "").split())
        for entry in _ARG_ENTRY.finditer(section["body"])
    }


def spec_flags(spec_type: type[JobSpec]) -> list[SpecFlag]:
    """Return the flags of a job type, one per spec field, ``name`` excluded.

    Args:
        spec_type: A spec class from :data:`juliarun_aio._jobs.SPEC_TYPES`.

    Returns:
        The flags in the order the class documents its parameters (its docstring's
        ``Args:``), which keeps each type's own parameters among the shared ones.
    """
    helps = _field_help(spec_type)
    documented = {name: position for position, name in enumerate(helps)}
    fields = sorted(
        (field for field in attrs.fields(spec_type) if field.name != "name"),
        key=lambda field: documented.get(field.name, len(documented)),
    )
    return [
        SpecFlag(
            field=field.name,
            shape=_shape(parameter_type(field.name)),
            required=field.default is attrs.NOTHING,
            help=helps.get(field.name, ""),
            choices=_choices(parameter_type(field.name)),
        )
        for field in fields
    ]


class SpecHelpFormatter(argparse.HelpFormatter):
    """Show ``--start-script`` in help, not also its alias ``--start_script``."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if len(action.option_strings) > 1:
            action = copy.copy(action)
            action.option_strings = [
                option for option in action.option_strings if "_" not in option
            ]
        return super()._format_action_invocation(action)


def _options(flag: SpecFlag) -> list[str]:
    options = [flag.option]
    if "_" in flag.field:
        options.append("--" + flag.field)
    return options


def add_spec_arguments(parser: argparse.ArgumentParser, spec_type: type[JobSpec]) -> None:
    """Add one flag per field of ``spec_type`` (and the singular item flags) to ``parser``.

    Args:
        parser: The ``submit TYPE`` or ``update TYPE`` parser.
        spec_type: The job type's spec class.
    """
    required = parser.add_argument_group("required parameters")
    optional = parser.add_argument_group("optional parameters")
    for flag in spec_flags(spec_type):
        group = required if flag.required else optional
        text = flag.help.replace("%", "%%")
        metavar = flag.field.rsplit("_", 1)[-1].upper()
        if flag.shape is Shape.FLAG:
            group.add_argument(
                *_options(flag),
                dest=flag.dest,
                nargs="?",
                const="true",
                choices=("true", "false"),
                help=f"{text} Alone it means true.",
            )
        elif flag.shape is Shape.PORTS:
            group.add_argument(
                *_options(flag),
                dest=flag.dest,
                action="append",
                metavar="[NAME:]CONTAINER:SERVICE[,...]",
                help=f"{text} Repeatable.",
            )
        elif flag.shape is Shape.LIST:
            group.add_argument(
                *_options(flag), dest=flag.dest, metavar="JSON", help=f"{text} A JSON array."
            )
        elif flag.shape is Shape.ENV:
            group.add_argument(
                *_options(flag), dest=flag.dest, metavar="JSON", help=f"{text} A JSON object."
            )
        else:
            group.add_argument(
                *_options(flag),
                dest=flag.dest,
                metavar=None if flag.choices else metavar,
                choices=flag.choices,
                required=flag.required,
                help=text,
            )
        item = flag.item_option
        if item is not None:
            what = "NAME=VALUE" if flag.shape is Shape.ENV else metavar.rstrip("S")
            group.add_argument(
                item,
                dest=flag.item_dest,
                action="append",
                metavar=what,
                help=f"Add one entry to {flag.option}; repeatable.",
            )


def _env_json(option: str, entries: list[str]) -> str:
    variables: dict[str, str] = {}
    for entry in entries:
        key, sep, value = entry.partition("=")
        if not sep:
            raise UsageError(f"{option} {entry!r} has no '='", f"write it as {option} NAME=VALUE")
        variables[key] = value
    return json.dumps(variables)


def _wire_value(flag: SpecFlag, args: argparse.Namespace) -> str | None:
    """Return the wire text of one field from the parsed flags, or None when not given."""
    value: str | list[str] | None = getattr(args, flag.dest, None)
    items: list[str] | None = getattr(args, flag.item_dest, None)
    if isinstance(value, list):  # PORTS: repeated flags are one comma-separated value
        return ",".join(value)
    if items is None:
        return value
    if value is not None:
        raise UsageError(
            f"both {flag.option} and {flag.item_option} were given",
            f"use one of them for {flag.field}",
        )
    if flag.shape is Shape.ENV:
        return _env_json(str(flag.item_option), items)
    return json.dumps(items)


def spec_from_args(kind: str, name: str, args: argparse.Namespace) -> JobSpec:
    """Build the spec of a ``submit``/``update`` command from its parsed flags.

    Args:
        kind: The job type.
        name: The job name.
        args: The parsed command line.

    Returns:
        The validated spec.

    Raises:
        UsageError: a singular flag was misused.
        SpecError: a value does not parse or is invalid (the message names the flag).
    """
    params = {"name": name}
    for flag in spec_flags(SPEC_TYPES[kind]):
        value = _wire_value(flag, args)
        if value is not None:
            params[flag.field] = value
    return decode_spec(kind, params)
