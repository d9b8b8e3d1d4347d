"""Hypothesis strategies for valid job specs and their parts, shared by the test modules."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import attrs
from hypothesis import strategies as st

from juliarun_aio._jobs import JOB_KINDS, RESTART_POLICIES, JobSpec, make_spec
from juliarun_aio._specs import SPEC_TYPES

__all__ = [
    "cpu_quantities",
    "env_names",
    "envvars",
    "memory_quantities",
    "names",
    "port_maps",
    "port_names",
    "port_numbers",
    "specs",
    "stored_logs",
    "texts",
]


def names() -> st.SearchStrategy[str]:
    """Valid job and volume names: lowercase DNS-1123 labels of 1 to 63 characters."""
    return st.from_regex(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", fullmatch=True)


def texts(min_size: int = 1) -> st.SearchStrategy[str]:
    """Text that can travel in a query parameter: any Unicode except NUL and surrogates."""
    alphabet = st.characters(codec="utf-8", exclude_characters="\x00")
    return st.text(alphabet, min_size=min_size, max_size=30)


def cpu_quantities() -> st.SearchStrategy[str | int | float]:
    """Positive CPU quantities: decimal cores, millicores, or plain numbers."""
    decimals = st.from_regex(r"[0-9]{1,3}(\.[0-9]{1,3})?", fullmatch=True).filter(
        lambda text: Decimal(text) > 0
    )
    millicores = st.integers(1, 100_000).map(lambda n: f"{n}m")
    numbers = st.integers(1, 256) | st.floats(min_value=0.001, max_value=256)
    return decimals | millicores | numbers


def memory_quantities() -> st.SearchStrategy[str]:
    """Positive memory quantities with every suffix form Kubernetes documents."""
    suffixes = st.sampled_from(
        ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "k", "M", "G", "T", "P", "E", "e3", "e9"]
    )
    amounts = st.integers(1, 100_000).map(str) | st.from_regex(
        r"[0-9]{1,3}\.[0-9]{1,2}", fullmatch=True
    ).filter(lambda text: Decimal(text) > 0)
    return st.builds(lambda amount, suffix: amount + suffix, amounts, suffixes)


def port_names() -> st.SearchStrategy[str]:
    """Kubernetes port names: up to 15 of a-z, 0-9, single '-', with a letter."""
    return st.from_regex(r"[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?", fullmatch=True).filter(
        lambda name: "--" not in name and any(char.isalpha() for char in name)
    )


def port_numbers() -> st.SearchStrategy[int]:
    """Valid TCP port numbers."""
    return st.integers(1, 65535)


def port_maps() -> st.SearchStrategy[dict[str, tuple[int, int]]]:
    """Port maps name -> (container, service) with distinct names and service ports."""
    entries = st.lists(
        st.tuples(port_names(), port_numbers(), port_numbers()),
        max_size=4,
        unique_by=(lambda entry: entry[0], lambda entry: entry[2]),
    )
    return entries.map(lambda found: {name: (c, s) for name, c, s in found})


def env_names() -> st.SearchStrategy[str]:
    """Environment variable names."""
    return st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,15}", fullmatch=True)


def envvars() -> st.SearchStrategy[dict[str, str]]:
    """Environment variable maps; values may be empty."""
    return st.dictionaries(env_names(), texts(min_size=0), max_size=4)


_VOLUME_LISTS = st.lists(names(), unique=True, max_size=4)

# One strategy per parameter name; a name means the same thing in every job type.
_VALUES: dict[str, st.SearchStrategy[object]] = {
    "name": names(),
    "run_volume": names(),
    "pkg_bundle": names(),
    "additional_volumes": _VOLUME_LISTS,
    "start_script": texts(),
    "builder_script": texts(),
    "cfg_file": texts(),
    "worker_start_script": texts(),
    "image": texts(),
    "shell": texts(),
    "worker_shell": texts(),
    "passwd": texts(),
    "command": texts(),
    "args": st.lists(texts(min_size=0), max_size=4),
    "ports": port_maps(),
    "external": st.booleans(),
    "cpu": cpu_quantities(),
    "worker_cpu": cpu_quantities(),
    "memory": memory_quantities(),
    "worker_memory": memory_quantities(),
    "gpu": st.integers(0, 16),
    "worker_gpu": st.integers(0, 16),
    "nworkers": st.integers(0, 10_000),
    "envvars": envvars(),
    "worker_envvars": envvars(),
    "restart": st.sampled_from(RESTART_POLICIES),
}


@st.composite
def _spec_of(draw: st.DrawFn, spec_type: type[JobSpec]) -> JobSpec:
    params: dict[str, object] = {}
    for field in attrs.fields(spec_type):
        if field.default is attrs.NOTHING or draw(st.booleans()):
            params[field.name] = draw(_VALUES[field.name])
    return make_spec(spec_type.kind, **params)


def specs(*kinds: str) -> st.SearchStrategy[JobSpec]:
    """Valid specs of the given job types (all eight when none are given).

    Required parameters are always set; each optional one is set or left out at random.
    """
    return st.one_of([_spec_of(SPEC_TYPES[kind]) for kind in kinds or JOB_KINDS])


#: Log texts that look like the keys, quotes and line ends of the stored lines around them.
_LOG_TEXTS = st.one_of(
    st.text(st.characters(codec="utf-8", exclude_characters="\n"), max_size=12),
    st.sampled_from(
        ['"}', '","text":"', ',"stream":"stdout","proc":"master","text":', "\\", '\\"}', "{}", ""]
    ),
)


@st.composite
def stored_logs(draw: st.DrawFn, first: int | None = None) -> tuple[list[dict[str, Any]], bytes]:
    """A run of log lines as objects, and as the server's collector stores them.

    The stored form has the keys in this order, compact, non-ASCII escaped.  Cursors start
    at ``first`` (any up to 10**12 when not given) and skip 0 to 2 between lines (as a
    one-stream read does); streams and processes change anywhere.
    """
    cursor = (draw(st.integers(1, 10**12)) if first is None else first) - 1
    objects: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(1, 40))):
        cursor += draw(st.integers(1, 3))
        objects.append(
            {
                "cursor": cursor,
                "stream": draw(st.sampled_from(["stdout", "stderr"])),
                "proc": draw(st.sampled_from(["master", "worker-1", 'od"d \\ proc'])),
                "text": draw(_LOG_TEXTS),
            }
        )
    stored = b"".join(json.dumps(o, separators=(",", ":")).encode() + b"\n" for o in objects)
    return objects, stored
