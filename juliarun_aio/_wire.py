r"""The wire encoding of job specs: query parameters of ``submitJob`` and ``updateJob``.

Every value travels as one query-parameter string (docs/protocol.md, "Value encodings").
One cattrs converter, dispatching on each parameter's declared type, owns these rules in
both directions:

- Only parameters the caller set are sent, each under its documented name (``name``
  included); ``jruntok`` and ``jrunns`` are the caller's business and are ignored when
  decoding.
- Text (scripts, volumes, image, shell, passwd, command, cfg_file, cpu, memory,
  restart) is sent as itself.
- Integers (``gpu``, ``worker_gpu``, ``nworkers``) are decimal: ``2``.
- Booleans (``external``) are ``true`` / ``false``.
- Lists (``additional_volumes``, ``args``) are a JSON array of strings:
  ``["data", "models"]``.  Decoding also takes the Julia form ``String["data"]`` and
  Julia string escapes such as ``\$``.
- ``envvars`` / ``worker_envvars`` are a JSON object of strings: ``{"A": "1"}``.
  Decoding also takes the Julia forms ``Dict("A" => "1")`` and
  ``Dict{String,String}("A" => "1")``.
- ``ports`` are comma-separated ``name:container:service`` entries:
  ``http:80:8080,https:443:8443``.  An entry ``container:service`` names the port
  ``port<container>``, as the platform does.  Decoding also takes the Julia forms
  ``Dict("http" => (80, 80))`` and ``Dict{String,Tuple{Int64,Int64}}(...)``.
- Decoding an unknown parameter, a missing required one or a value that does not parse
  raises :class:`~juliarun_aio.SpecError` naming the parameter and quoting the value;
  the decoded spec is then checked exactly like one built in Python.

``decode_spec(spec.kind, encode_spec(spec)) == spec`` holds for every valid spec.
"""

from __future__ import annotations

import functools
import json
import re
import types
import typing
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal, TypeVar, Union

import attrs

from ._errors import SpecError
from ._jobs import FrozenDict, JobSpec, check_parameters, make_spec, quote

if TYPE_CHECKING:
    import cattrs

__all__ = ["decode_spec", "decode_value", "encode_spec", "encode_value", "parameter_type"]

# Sent on every call alongside the spec's parameters; not part of the spec.
_CALL_PARAMETERS = frozenset({"jruntok", "jrunns"})

_STRINGS = tuple[str, ...]
_ENVVARS = FrozenDict[str, str]
_PORTS = FrozenDict[str, tuple[int, int]]

_T = TypeVar("_T")

_INTEGER = re.compile(r"[+-]?[0-9]+")
_PORT_ENTRY = re.compile(r"(?:(?P<name>[^:]+):)?(?P<container>[0-9]+):(?P<service>[0-9]+)")


class _WireError(Exception):
    """A parameter's text does not parse; decode_value adds the parameter and the value."""


def _value_type(declared: Any) -> Any:
    """The type of a set parameter: its declared type without the ``| None``."""
    if typing.get_origin(declared) in (Union, types.UnionType):
        (inner,) = (arg for arg in typing.get_args(declared) if arg is not type(None))
        return inner
    return declared


@functools.cache
def _parameter_types() -> dict[str, Any]:
    """Map every parameter name to its value type (a name means the same in every type)."""
    from ._specs import SPEC_TYPES  # noqa: PLC0415 - the specs are defined on first use

    found: dict[str, Any] = {}
    for spec_type in SPEC_TYPES.values():
        for field in attrs.fields(spec_type):
            found.setdefault(field.name, _value_type(field.type))
    return found


class _JuliaReader:
    """Reads the Julia literals that the Julia client's ``string(v)`` produces.

    The subset needed for parameter values: strings with Julia escapes, integers,
    ``true``/``false``, tuples ``(80, 80)``, vectors ``["a"]`` / ``String["a"]`` and
    dicts ``Dict("a" => "b")`` / ``Dict{String,String}(...)``.  Type parameters in
    braces are skipped, not checked.
    """

    _ESCAPES: typing.ClassVar[dict[str, str]] = {
        '"': '"',
        "\\": "\\",
        "$": "$",
        "'": "'",
        "n": "\n",
        "t": "\t",
        "r": "\r",
        "a": "\a",
        "b": "\b",
        "f": "\f",
        "v": "\v",
        "e": "\x1b",
    }
    _CODE_ESCAPE = re.compile(
        r"x(?P<x>[0-9A-Fa-f]{1,2})|u(?P<u>[0-9A-Fa-f]{1,4})|U(?P<U>[0-9A-Fa-f]{1,8})|(?P<o>[0-7]{1,3})"
    )
    _IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

    # Parameter values nest at most three deep (Dict -> tuple -> int); deeper input is
    # refused before it can exhaust the stack.
    _MAX_DEPTH = 8

    def __init__(self, text: str) -> None:
        self._text = text
        self._pos = 0
        self._depth = 0

    def read(self) -> object:
        """Read one value that must span the whole text."""
        value = self._value()
        self._skip_space()
        if self._pos != len(self._text):
            raise _WireError(f"unexpected text at position {self._pos}")
        return value

    def _peek(self) -> str:
        return self._text[self._pos : self._pos + 1]

    def _skip_space(self) -> None:
        while self._peek().isspace():
            self._pos += 1

    def _expect(self, token: str) -> None:
        self._skip_space()
        if not self._text.startswith(token, self._pos):
            raise _WireError(f"expected {token!r} at position {self._pos}")
        self._pos += len(token)

    def _value(self) -> object:
        self._skip_space()
        char = self._peek()
        if char == '"':
            return self._string()
        if char == "(":
            return tuple(self._items("(", ")", self._value))
        if char == "[":
            return self._items("[", "]", self._value)
        integer = _INTEGER.match(self._text, self._pos)
        if integer:
            self._pos = integer.end()
            return int(integer[0])
        word = self._IDENTIFIER.match(self._text, self._pos)
        if word:
            self._pos = word.end()
            if word[0] in ("true", "false"):
                return word[0] == "true"
            self._skip_type_parameters()
            if word[0] == "Dict" and self._peek() == "(":
                return self._dict()
            if self._peek() == "[":
                return self._items("[", "]", self._value)
        raise _WireError(f"cannot read a value at position {self._pos}")

    def _skip_type_parameters(self) -> None:
        if self._peek() != "{":
            return
        depth = 0
        for index in range(self._pos, len(self._text)):
            depth += {"{": 1, "}": -1}.get(self._text[index], 0)
            if depth == 0:
                self._pos = index + 1
                return
        raise _WireError("unbalanced '{' in a type")

    def _items(self, opening: str, closing: str, read_item: Callable[[], _T]) -> list[_T]:
        self._expect(opening)
        self._depth += 1
        if self._depth > self._MAX_DEPTH:
            raise _WireError("the value is nested too deeply")
        items: list[_T] = []
        while True:
            self._skip_space()
            if self._peek() == closing:
                self._pos += 1
                self._depth -= 1
                return items
            items.append(read_item())
            self._skip_space()
            if self._peek() == ",":
                self._pos += 1
            elif self._peek() != closing:
                raise _WireError(f"expected ',' or {closing!r} at position {self._pos}")

    def _pair(self) -> tuple[object, object]:
        key = self._value()
        self._expect("=>")
        return key, self._value()

    def _dict(self) -> dict[object, object]:
        result: dict[object, object] = {}
        for key, value in self._items("(", ")", self._pair):
            if not isinstance(key, str):
                raise _WireError(f"a Dict key must be a string, got {quote(key)}")
            if key in result:
                raise _WireError(f"the key {quote(key)} appears twice")
            result[key] = value
        return result

    def _string(self) -> str:
        self._pos += 1  # the opening quote
        chars: list[str] = []
        while True:
            char = self._peek()
            if not char:
                raise _WireError("unterminated string")
            self._pos += 1
            if char == '"':
                break
            if char == "\\":
                char = self._escape()
            chars.append(char)
        return "".join(chars)

    def _escape(self) -> str:
        char = self._peek()
        if char in self._ESCAPES:
            self._pos += 1
            return self._ESCAPES[char]
        code = self._CODE_ESCAPE.match(self._text, self._pos)
        if code is None:
            raise _WireError(f"unknown escape at position {self._pos - 1}")
        self._pos = code.end()
        digits = code["o"]
        number = int(digits, 8) if digits else int(code[0][1:], 16)
        if number > 0x10FFFF:
            raise _WireError(f"escape {code[0]!r} is not a character")
        return chr(number)


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            raise _WireError(f"the key {quote(key)} appears twice")
        result[key] = value
    return result


def _read_literal(text: str, expected: str) -> object:
    """Read JSON (what we send) or else a Julia literal (what the Julia client sends)."""
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys)
    # The json module recurses per nesting level; absurdly nested input is not JSON we
    # sent, so it goes to the Julia reader, which refuses it.
    except (json.JSONDecodeError, RecursionError):
        pass
    try:
        return _JuliaReader(text).read()
    except _WireError as exc:
        raise _WireError(f"expected {expected} ({exc})") from None


def _read_strings(text: str) -> tuple[str, ...]:
    expected = 'a JSON array of strings such as ["a", "b"]'
    value = _read_literal(text, expected)
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise _WireError(f"expected {expected}")
    return tuple(value)


def _read_envvars(text: str) -> FrozenDict[str, str]:
    expected = 'a JSON object of strings such as {"A": "1"}'
    value = _read_literal(text, expected)
    if not isinstance(value, dict) or not all(isinstance(item, str) for item in value.values()):
        raise _WireError(f"expected {expected}")
    return FrozenDict(value)


def _read_port_entries(text: str) -> dict[str, tuple[int, int]]:
    ports: dict[str, tuple[int, int]] = {}
    if not text.strip():
        return ports
    for entry in text.split(","):
        match = _PORT_ENTRY.fullmatch(entry.strip())
        if match is None:
            raise _WireError(
                f"the entry {quote(entry)} is not name:container:service or container:service"
            )
        name = match["name"] or f"port{int(match['container'])}"
        if name in ports:
            raise _WireError(f"the port name {quote(name)} appears twice")
        ports[name] = (int(match["container"]), int(match["service"]))
    return ports


def _read_julia_ports(text: str) -> dict[str, tuple[int, int]]:
    value = _read_literal(text, 'a Dict such as Dict("http" => (80, 80))')
    if not isinstance(value, dict):
        raise _WireError('expected a Dict such as Dict("http" => (80, 80))')
    ports: dict[str, tuple[int, int]] = {}
    for name, pair in value.items():
        if not (isinstance(pair, tuple) and len(pair) == 2 and all(type(p) is int for p in pair)):
            raise _WireError(f"the port {quote(name)} needs a (container, service) tuple")
        ports[name] = (pair[0], pair[1])
    return ports


def _read_ports(text: str) -> FrozenDict[str, tuple[int, int]]:
    if text.lstrip().startswith("Dict"):
        return FrozenDict(_read_julia_ports(text))
    return FrozenDict(_read_port_entries(text))


def _read_bool(text: str) -> bool:
    if text not in ("true", "false"):
        raise _WireError("expected true or false")
    return text == "true"


def _read_int(text: str) -> int:
    if _INTEGER.fullmatch(text) is None:
        raise _WireError("expected a decimal integer")
    return int(text)


def _write_ports(ports: Mapping[str, tuple[int, int]]) -> str:
    return ",".join(f"{name}:{container}:{service}" for name, (container, service) in ports.items())


def _write_strings(items: tuple[str, ...]) -> str:
    return json.dumps(list(items), ensure_ascii=False)


def _write_envvars(envvars: Mapping[str, str]) -> str:
    return json.dumps(dict(envvars), ensure_ascii=False)


def _is_literal(declared: Any) -> bool:
    return typing.get_origin(declared) is Literal


@functools.cache
def _converter() -> cattrs.Converter:
    # Built on first use: importing cattrs is a good part of the package's import time,
    # and most programs only read results.
    import cattrs  # noqa: PLC0415

    converter = cattrs.Converter()
    # Python value -> query-parameter text.
    converter.register_unstructure_hook(str, str)
    converter.register_unstructure_hook(bool, lambda value: "true" if value else "false")
    converter.register_unstructure_hook(int, str)
    converter.register_unstructure_hook_func(_is_literal, str)
    converter.register_unstructure_hook_func(lambda t: t == _STRINGS, _write_strings)
    converter.register_unstructure_hook_func(lambda t: t == _ENVVARS, _write_envvars)
    converter.register_unstructure_hook_func(lambda t: t == _PORTS, _write_ports)
    # Query-parameter text -> Python value.
    converter.register_structure_hook(str, lambda text, _: text)
    converter.register_structure_hook(bool, lambda text, _: _read_bool(text))
    converter.register_structure_hook(int, lambda text, _: _read_int(text))
    converter.register_structure_hook_func(_is_literal, lambda text, _: text)
    converter.register_structure_hook_func(
        lambda t: t == _STRINGS, lambda text, _: _read_strings(text)
    )
    converter.register_structure_hook_func(
        lambda t: t == _ENVVARS, lambda text, _: _read_envvars(text)
    )
    converter.register_structure_hook_func(lambda t: t == _PORTS, lambda text, _: _read_ports(text))
    return converter


def parameter_type(field: str) -> Any:
    """Return the type of a set parameter: its declared type without the ``| None``.

    A parameter name means the same in every job type (``ports`` is always a mapping of
    name to a pair of ints), so the name is enough.

    Raises:
        SpecError: ``field`` is not a parameter of any job type.
    """
    try:
        return _parameter_types()[field]
    except KeyError:
        raise SpecError(field, "is not a parameter of any job type") from None


def encode_value(field: str, value: object) -> str:
    """Write one parameter value as its query-parameter text.

    Args:
        field: The parameter name (``"ports"``, ``"gpu"``...).
        value: The value as a spec holds it.

    Returns:
        The text to send.

    Raises:
        SpecError: If ``field`` is not a parameter of any job type.
    """
    text: str = _converter().unstructure(value, unstructure_as=parameter_type(field))
    return text


def decode_value(field: str, text: str) -> object:
    """Read one parameter value from its query-parameter text.

    Accepts what :func:`encode_value` writes and what the Julia client sends.  The
    result is not yet checked against the parameter's rules; building the spec does that.

    Args:
        field: The parameter name (``"ports"``, ``"gpu"``...).
        text: The received text.

    Returns:
        The value in the form a spec takes it.

    Raises:
        SpecError: If ``field`` is unknown or the text does not parse; the message
            quotes the text.
    """
    declared = parameter_type(field)
    try:
        return _converter().structure(text, declared)
    except _WireError as exc:
        raise SpecError(field, f"{exc}; got {quote(text)}") from None


def encode_spec(spec: JobSpec) -> dict[str, str]:
    """Encode a spec as ``submitJob`` / ``updateJob`` query parameters.

    Args:
        spec: The job spec.

    Returns:
        One entry per parameter the caller set, in the order of
        :meth:`~juliarun_aio.JobSpec.params` (the order is not significant on the wire);
        ``jruntok`` and ``jrunns`` are left to the caller.
    """
    return {field: encode_value(field, value) for field, value in spec.params().items()}


def decode_spec(kind: str, params: Mapping[str, str]) -> JobSpec:
    """Build a spec from received query parameters (the inverse of :func:`encode_spec`).

    Args:
        kind: The job type from the URL, one of :data:`~juliarun_aio.JOB_KINDS`.
        params: The query parameters; ``jruntok`` and ``jrunns`` are ignored.

    Returns:
        The validated spec.

    Raises:
        SpecError: If the type is unknown, a parameter is unknown or missing, or a value
            does not parse or is invalid; the error names the parameter.
    """
    names = [name for name in params if name not in _CALL_PARAMETERS]
    check_parameters(kind, names)
    return make_spec(kind, **{name: decode_value(name, params[name]) for name in names})
