"""Tests for juliarun_aio._jobs: job specs, their parameters and their validation."""

from __future__ import annotations

import copy
import math
import pickle
import re
from collections.abc import Callable
from typing import Any

import attrs
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from strategies import cpu_quantities, memory_quantities, names, port_maps, specs

from juliarun_aio import SpecError
from juliarun_aio._jobs import (
    JOB_KINDS,
    RESTART_POLICIES,
    FrozenDict,
    JobRef,
    JobSpec,
    check_parameters,
    make_spec,
    validate_name,
)
from juliarun_aio._specs import (
    SPEC_TYPES,
    Generic,
    JuliaBatch,
    JuliaParBatch,
    MessageQ,
    Notebook,
    PkgBuilder,
    Webserver,
)

# The parameters of each job type as the platform documents them (docs/protocol.md):
# required ones first, then the optional ones, in the documented order.
DOCUMENTED: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "JuliaParBatch": (
        ("name", "start_script", "run_volume"),
        (
            "pkg_bundle", "additional_volumes", "ports", "external", "image", "cpu", "gpu",
            "memory", "shell", "envvars", "nworkers", "worker_cpu", "worker_gpu",
            "worker_memory", "worker_shell", "worker_envvars", "worker_start_script",
            "restart",
        ),
    ),
    "JuliaParBatchWorkers": (
        ("name", "start_script", "run_volume"),
        (
            "pkg_bundle", "additional_volumes", "ports", "external", "image", "cpu", "gpu",
            "memory", "shell", "envvars", "nworkers", "restart",
        ),
    ),
    "Notebook": (
        ("name", "run_volume"),
        (
            "pkg_bundle", "additional_volumes", "image", "cpu", "gpu", "memory", "shell",
            "envvars", "worker_cpu", "worker_gpu", "worker_memory", "worker_shell",
            "worker_envvars", "worker_start_script", "passwd", "ports", "external", "restart",
        ),
    ),
    "JuliaBatch": (
        ("name", "start_script", "run_volume"),
        (
            "pkg_bundle", "additional_volumes", "ports", "external", "image", "cpu", "gpu",
            "memory", "shell", "envvars",
        ),
    ),
    "PkgBuilder": (
        ("name", "builder_script", "run_volume", "pkg_bundle"),
        ("additional_volumes", "image", "cpu", "gpu", "memory", "shell", "envvars"),
    ),
    "Webserver": (
        ("name", "cfg_file", "run_volume"),
        (
            "additional_volumes", "image", "cpu", "memory", "envvars", "ports", "external",
            "nworkers",
        ),
    ),
    "MessageQ": (
        ("name", "cfg_file", "run_volume"),
        ("additional_volumes", "image", "cpu", "memory", "envvars", "ports", "external"),
    ),
    "Generic": (
        ("name", "image", "run_volume"),
        (
            "command", "args", "additional_volumes", "cpu", "memory", "envvars", "ports",
            "external", "nworkers",
        ),
    ),
}  # fmt: skip


def batch(**params: Any) -> JuliaBatch:
    """A JuliaBatch spec with its required parameters filled in."""
    required: dict[str, Any] = {"name": "job", "start_script": "run.jl", "run_volume": "work"}
    return JuliaBatch(**(required | params))


def field_names(spec_type: type[JobSpec]) -> list[str]:
    """The parameter names of a spec class, in declaration order."""
    return [field.name for field in attrs.fields(spec_type)]


def docstring_entries(spec_type: type[JobSpec]) -> dict[str, str]:
    """Split the Args section of a spec class docstring into one text per parameter."""
    doc = spec_type.__doc__ or ""
    args = doc.split("Args:")[1].split("Raises:")[0]
    parts = re.split(r"^ {8}(\w+): ", args, flags=re.MULTILINE)[1:]
    return {
        name: " ".join(text.split()) for name, text in zip(parts[::2], parts[1::2], strict=True)
    }


# -- job types and their parameters ---------------------------------------------------------


def test_job_kinds_are_the_eight_protocol_types() -> None:
    """JOB_KINDS lists the eight protocol job types in protocol order."""
    assert JOB_KINDS == (
        "JuliaParBatch",
        "JuliaParBatchWorkers",
        "Notebook",
        "JuliaBatch",
        "PkgBuilder",
        "Webserver",
        "MessageQ",
        "Generic",
    )


def test_spec_types_map_each_kind_to_its_class() -> None:
    """SPEC_TYPES maps every kind to the class whose kind it is."""
    assert tuple(SPEC_TYPES) == JOB_KINDS
    for kind, spec_type in SPEC_TYPES.items():
        assert spec_type.kind == kind
        assert spec_type.__name__ == kind


@pytest.mark.parametrize("kind", JOB_KINDS)
def test_each_type_has_exactly_the_documented_parameters(kind: str) -> None:
    """A spec class declares every documented parameter of its type, and no other."""
    required, optional = DOCUMENTED[kind]
    assert sorted(field_names(SPEC_TYPES[kind])) == sorted([*required, *optional])


def test_parameters_of_every_type_are_declared_once_on_the_base_class() -> None:
    """The parameters all eight types take alike are JobSpec's fields, inherited by each."""
    # image too is in every type, but Generic requires it and the others do not.
    required = set.intersection(*(set(req) for req, _ in DOCUMENTED.values()))
    optional = set.intersection(*(set(opt) for _, opt in DOCUMENTED.values()))
    shared = required | optional
    assert set(field_names(JobSpec)) == shared
    for spec_type in SPEC_TYPES.values():
        assert shared <= set(field_names(spec_type))
        assert not shared & set(vars(spec_type).get("__annotations__", {})), spec_type


@pytest.mark.parametrize("kind", JOB_KINDS)
def test_required_parameters_have_no_default_and_optional_ones_default_to_none(
    kind: str,
) -> None:
    """Documented required parameters are required; every optional one defaults to None."""
    required, optional = DOCUMENTED[kind]
    fields = attrs.fields_dict(SPEC_TYPES[kind])
    assert [name for name in required if fields[name].default is attrs.NOTHING] == list(required)
    assert all(fields[name].default is None for name in optional)
    assert all(field.kw_only for field in fields.values())


@pytest.mark.parametrize("kind", JOB_KINDS)
def test_class_docstring_documents_every_parameter_and_its_default(kind: str) -> None:
    """Each class docstring lists every parameter as required or with its default."""
    required, optional = DOCUMENTED[kind]
    entries = docstring_entries(SPEC_TYPES[kind])
    assert list(entries) == [*required, *optional]
    for name in required:
        assert "(required)" in entries[name], name
    for name in optional:
        assert "(default:" in entries[name], name


def test_docstrings_carry_the_documented_special_defaults() -> None:
    """Port and resource defaults that differ by type are copied from the reference."""
    assert '"nb": (8888, 8888)' in docstring_entries(Notebook)["ports"]
    assert '"https": (443, 443)' in docstring_entries(Webserver)["ports"]
    assert '"mgmttls": (15672, 15671)' in docstring_entries(MessageQ)["ports"]
    assert "4Gi to 8 Gi" in docstring_entries(PkgBuilder)["memory"]
    assert "notebook.sh" in docstring_entries(Notebook)["shell"]
    assert "RestartAlways" in docstring_entries(JuliaParBatch)["restart"]


# -- construction ---------------------------------------------------------------------------


def test_optional_parameters_left_out_are_none() -> None:
    """A spec built with only its required parameters has None everywhere else."""
    spec = batch()
    assert spec.pkg_bundle is None
    assert spec.cpu is None
    assert spec.envvars is None


def test_params_returns_only_set_parameters_name_first() -> None:
    """params() starts with name, holds every parameter set (falsy ones too), no None."""
    spec = batch(envvars={"A": "1"}, gpu=0, external=False, pkg_bundle="pkgs")
    assert spec.params() == {
        "name": "job",
        "start_script": "run.jl",
        "run_volume": "work",
        "pkg_bundle": "pkgs",
        "external": False,
        "gpu": 0,
        "envvars": {"A": "1"},
    }
    assert next(iter(spec.params())) == "name"
    assert spec.params()["gpu"] == 0
    assert spec.params()["external"] is False


def test_ref_is_the_jobref_of_kind_and_name() -> None:
    """A spec's ref is a JobRef with its kind and name."""
    assert batch(name="train").ref == JobRef("JuliaBatch", "train")


def test_specs_are_frozen() -> None:
    """Assigning to a spec's field is refused."""
    spec = batch()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        spec.cpu = "1"  # type: ignore[misc]


def test_specs_compare_and_hash_by_value() -> None:
    """Two specs with the same parameters are equal and hash alike, containers included."""
    first = batch(envvars={"A": "1"}, ports={"http": (80, 8080)}, additional_volumes=["d"])
    second = batch(envvars={"A": "1"}, ports={"http": (80, 8080)}, additional_volumes=("d",))
    assert first == second
    assert hash(first) == hash(second)
    assert first != batch(envvars={"A": "2"}, ports={"http": (80, 8080)})


def test_specs_survive_pickle_copy_and_evolve() -> None:
    """Pickling, deep-copying and attrs.evolve keep a spec valid and equal."""
    spec = batch(envvars={"A": "1"}, cpu=0.5)
    assert pickle.loads(pickle.dumps(spec)) == spec
    assert copy.deepcopy(spec) == spec
    assert attrs.evolve(spec, cpu="0.5") == spec
    with pytest.raises(SpecError):
        attrs.evolve(spec, cpu="0")


def test_unknown_parameter_raises_spec_error_listing_accepted_ones() -> None:
    """Passing a parameter the type does not have raises SpecError, not TypeError."""
    with pytest.raises(SpecError) as caught:
        batch(nworkers=2)
    assert caught.value.field == "nworkers"
    assert "JuliaBatch has no parameter 'nworkers'" in str(caught.value)
    accepted = str(caught.value).split("it accepts ")[1]
    assert sorted(accepted.split(", ")) == sorted(field_names(JuliaBatch))


def test_missing_required_parameter_raises_spec_error_naming_it() -> None:
    """Leaving out a required parameter raises SpecError naming it."""
    with pytest.raises(SpecError) as caught:
        PkgBuilder(name="b", builder_script="build.jl", run_volume="work")  # type: ignore[call-arg]
    assert caught.value.field == "pkg_bundle"
    assert "requires 'pkg_bundle'" in str(caught.value)


def test_inherited_parameters_keep_their_types_for_type_checkers() -> None:
    """A parameter declared on JobSpec is typed in each type's __init__, and checked.

    ``mypy --strict`` checks this file (``nox -s typecheck``): each ignore below is needed,
    and so accepted, only while the inherited parameter keeps its type in the subclass.
    """
    with pytest.raises(SpecError, match="run_volume"):
        JuliaBatch(name="j", start_script="s", run_volume=3)  # type: ignore[arg-type]
    with pytest.raises(SpecError, match="envvars"):
        Generic(name="g", image="i", run_volume="w", envvars=["A=1"])  # type: ignore[arg-type]
    with pytest.raises(SpecError, match="run_volume"):
        Notebook(name="n")  # type: ignore[call-arg]


def test_positional_arguments_are_refused_as_a_calling_mistake() -> None:
    """Spec classes are keyword-only; positional arguments raise a clear TypeError."""
    with pytest.raises(TypeError, match="keyword arguments only"):
        JuliaBatch("job", "run.jl", "work")  # type: ignore[call-arg]


@given(st.from_regex(r"[a-z_]{1,20}", fullmatch=True))
def test_any_undocumented_parameter_is_refused(parameter: str) -> None:
    """Every name that is not a parameter of the type raises SpecError naming it."""
    assume(parameter not in attrs.fields_dict(JuliaBatch))
    with pytest.raises(SpecError) as caught:
        batch(**{parameter: "x"})
    assert caught.value.field == parameter


def test_make_spec_builds_the_class_of_the_kind() -> None:
    """make_spec returns an instance of the kind's class with the given parameters."""
    spec = make_spec("Generic", name="g", image="alpine", run_volume="work", args=["-c", "x"])
    assert spec == Generic(name="g", image="alpine", run_volume="work", args=("-c", "x"))


def test_make_spec_rejects_an_unknown_kind_listing_the_valid_ones() -> None:
    """An unknown kind raises SpecError on 'kind' that lists the eight types."""
    with pytest.raises(SpecError) as caught:
        make_spec("Batch", name="x")
    assert caught.value.field == "kind"
    assert all(kind in str(caught.value) for kind in JOB_KINDS)


def test_make_spec_rejects_a_parameter_of_another_type() -> None:
    """make_spec refuses a parameter that only other types accept."""
    with pytest.raises(SpecError) as caught:
        make_spec("MessageQ", name="q", cfg_file="mq.conf", run_volume="work", gpu=1)
    assert caught.value.field == "gpu"


def test_check_parameters_returns_the_spec_class() -> None:
    """check_parameters accepts a complete parameter set and returns the class."""
    assert check_parameters("Notebook", ["name", "run_volume", "passwd"]) is Notebook


# -- names ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "job-1", "0", "a" * 63, "x-y-z9"])
def test_validate_name_accepts_dns_labels(name: str) -> None:
    """Lowercase DNS-1123 labels up to 63 characters are valid names."""
    assert validate_name(name) == name


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        ("", "must not be empty"),
        ("a" * 64, "at most 63"),
        ("Job", "lowercase"),
        ("-job", "starting and ending"),
        ("job-", "starting and ending"),
        ("my_job", "a-z, 0-9"),
        ("data/sub", "not a path"),
        ("..", "not a path"),
        ("a\x00b", "a-z, 0-9"),
    ],
)
def test_validate_name_says_what_to_fix(name: str, hint: str) -> None:
    """Invalid names raise SpecError whose message says what to change."""
    with pytest.raises(SpecError, match=re.escape(hint)) as caught:
        validate_name(name, "run_volume")
    assert caught.value.field == "run_volume"


def test_validate_name_rejects_non_strings() -> None:
    """A name that is not a string is refused."""
    with pytest.raises(SpecError, match="must be a string"):
        validate_name(42)  # type: ignore[arg-type]


@given(names())
def test_generated_names_are_valid(name: str) -> None:
    """Every DNS label of 1..63 characters passes validate_name unchanged."""
    assert validate_name(name) == name


@given(st.text(max_size=80))
def test_text_that_is_not_a_dns_label_is_refused(text: str) -> None:
    """Any text outside the DNS-1123 label rule raises SpecError."""
    assume(re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", text) is None)
    with pytest.raises(SpecError):
        validate_name(text)


@pytest.mark.parametrize("field", ["name", "run_volume", "pkg_bundle"])
def test_spec_name_and_volumes_follow_the_name_rule(field: str) -> None:
    """The job name, run volume and package bundle are checked as DNS labels."""
    with pytest.raises(SpecError) as caught:
        batch(**{field: "Not/Valid"})
    assert caught.value.field == field


def test_additional_volumes_are_frozen_to_a_tuple() -> None:
    """Any iterable of volume names is stored as a tuple."""
    assert batch(additional_volumes=iter(["a", "b"])).additional_volumes == ("a", "b")


@pytest.mark.parametrize(
    ("volumes", "message"),
    [
        ("data", "list of strings"),
        (42, "list of strings"),
        (["ok", "../etc"], "not a path"),
        (["ok", 3], "only strings"),
        (["a", "a"], "twice"),
    ],
)
def test_bad_additional_volumes_are_refused(volumes: Any, message: str) -> None:
    """A lone string, a non-string or invalid entry, or a repeat raises SpecError."""
    with pytest.raises(SpecError, match=re.escape(message)) as caught:
        batch(additional_volumes=volumes)
    assert caught.value.field == "additional_volumes"


# -- JobRef ---------------------------------------------------------------------------------


def test_jobref_holds_kind_and_name_and_is_its_own_ref() -> None:
    """A JobRef keeps kind and name, and .ref returns the same object."""
    ref = JobRef("Notebook", "nb")
    assert (ref.kind, ref.name) == ("Notebook", "nb")
    assert ref.ref is ref


def test_jobref_rejects_an_unknown_kind_listing_valid_ones() -> None:
    """An unknown kind raises SpecError on 'kind' listing the job types."""
    with pytest.raises(SpecError) as caught:
        JobRef("Batch", "x")
    assert caught.value.field == "kind"
    assert "JuliaParBatchWorkers" in str(caught.value)


def test_jobref_rejects_an_invalid_name() -> None:
    """A JobRef's name follows the job name rule."""
    with pytest.raises(SpecError) as caught:
        JobRef("JuliaBatch", "UPPER")
    assert caught.value.field == "name"


def test_jobref_is_frozen_and_hashable() -> None:
    """JobRefs are immutable values usable as dict keys."""
    ref = JobRef("JuliaBatch", "a")
    assert {ref: 1}[JobRef("JuliaBatch", "a")] == 1
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        ref.name = "b"  # type: ignore[misc]


# -- quantities -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given_cpu", "stored"),
    [
        ("0.5", "0.5"),
        ("2", "2"),
        ("500m", "500m"),
        (0.5, "0.5"),
        (2, "2"),
        (2.0, "2.0"),
        (1e-05, "0.00001"),
    ],
)
def test_cpu_accepts_quantities_and_numbers(given_cpu: str | float, stored: str) -> None:
    """CPU takes decimal cores or millicores; numbers are stored as decimal text."""
    assert batch(cpu=given_cpu).cpu == stored
    assert (
        JuliaParBatch(
            name="p", start_script="s.jl", run_volume="w", worker_cpu=given_cpu
        ).worker_cpu
        == stored
    )


@pytest.mark.parametrize(
    "bad",
    [
        "0",
        "0.0",
        "0m",
        "-1",
        "1.5m",
        "1e3",
        "abc",
        "",
        " 1",
        "1 ",
        "\u0661",
        True,
        math.nan,
        math.inf,
    ],
)
def test_cpu_rejects_what_is_not_a_positive_quantity(bad: Any) -> None:
    """Zero, negatives, fractional millicores, words and bools are not CPU quantities."""
    with pytest.raises(SpecError, match="not a CPU quantity") as caught:
        batch(cpu=bad)
    assert caught.value.field == "cpu"


@pytest.mark.parametrize(
    ("given_memory", "stored"),
    [("512Mi", "512Mi"), ("1Gi", "1Gi"), ("1e9", "1e9"), ("1.5G", "1.5G"), (1024, "1024")],
)
def test_memory_accepts_kubernetes_quantities(given_memory: str | int, stored: str) -> None:
    """Memory takes bytes with an optional Kubernetes suffix or exponent."""
    assert batch(memory=given_memory).memory == stored


@pytest.mark.parametrize(
    "bad", ["0", "0Mi", "-1Gi", "1GB", "1gi", "Mi", "1e", "1.Gi", "", "512 Mi", False, [1]]
)
def test_memory_rejects_what_is_not_a_positive_quantity(bad: Any) -> None:
    """Zero, negatives, unknown suffixes and non-text are not memory quantities."""
    with pytest.raises(SpecError, match="not a memory quantity") as caught:
        JuliaParBatch(name="p", start_script="s.jl", run_volume="w", worker_memory=bad)
    assert caught.value.field == "worker_memory"


@given(cpu_quantities())
def test_generated_cpu_quantities_are_accepted(cpu: str | float) -> None:
    """Every generated positive CPU quantity is accepted and stored as text."""
    assert isinstance(batch(cpu=cpu).cpu, str)


@given(memory_quantities())
def test_generated_memory_quantities_are_accepted(memory: str) -> None:
    """Every generated positive memory quantity is accepted unchanged."""
    assert batch(memory=memory).memory == memory


@given(st.text(max_size=12))
def test_text_that_is_not_a_cpu_quantity_is_refused(text: str) -> None:
    """Any text outside the CPU quantity grammar, or zero, raises SpecError."""
    match = re.fullmatch(r"([0-9]+(\.[0-9]+)?)|([0-9]+)m", text)
    assume(match is None or float(match[1] or match[3]) == 0)
    with pytest.raises(SpecError):
        batch(cpu=text)


# -- counts, flags, restart, text ------------------------------------------------------------


@pytest.mark.parametrize("field", ["gpu", "nworkers", "worker_gpu"])
@pytest.mark.parametrize("bad", [-1, True, 1.5, "2"])
def test_counts_must_be_non_negative_integers(field: str, bad: object) -> None:
    """gpu, worker_gpu and nworkers refuse negatives, bools, floats and text."""
    with pytest.raises(SpecError) as caught:
        JuliaParBatch(name="p", start_script="s.jl", run_volume="w", **{field: bad})  # type: ignore[arg-type]
    assert caught.value.field == field


def test_counts_accept_zero() -> None:
    """Zero GPUs and zero workers are valid and distinct from not set."""
    spec = JuliaParBatch(name="p", start_script="s.jl", run_volume="w", gpu=0, nworkers=0)
    assert spec.params()["gpu"] == 0
    assert spec.params()["nworkers"] == 0


@pytest.mark.parametrize("bad", ["true", 1, 0])
def test_external_must_be_a_bool(bad: object) -> None:
    """external refuses anything but True or False."""
    with pytest.raises(SpecError, match="True or False"):
        batch(external=bad)


@pytest.mark.parametrize("policy", RESTART_POLICIES)
def test_restart_accepts_the_three_policies(policy: Any) -> None:
    """restart takes RestartAlways, RestartOnFailure or Never."""
    spec = JuliaParBatch(name="p", start_script="s.jl", run_volume="w", restart=policy)
    assert spec.restart == policy


def test_restart_rejects_other_values_listing_the_valid_ones() -> None:
    """Any other restart value raises SpecError that lists the three policies."""
    with pytest.raises(SpecError, match="RestartAlways, RestartOnFailure, Never") as caught:
        JuliaParBatch(name="p", start_script="s.jl", run_volume="w", restart="always")  # type: ignore[arg-type]
    assert caught.value.field == "restart"


@pytest.mark.parametrize(
    ("bad", "message"),
    [("", "must not be empty"), ("a\x00b", "NUL"), ("\ud800", "Unicode"), (b"x", "a string")],
)
def test_text_parameters_must_be_non_empty_wire_safe_strings(bad: Any, message: str) -> None:
    """Scripts and other text refuse empty text, NUL, lone surrogates and bytes."""
    with pytest.raises(SpecError, match=message) as caught:
        batch(start_script=bad)
    assert caught.value.field == "start_script"


def test_a_required_parameter_cannot_be_none() -> None:
    """Passing None for a required parameter is refused."""
    with pytest.raises(SpecError) as caught:
        Generic(name="g", image=None, run_volume="w")  # type: ignore[arg-type]
    assert caught.value.field == "image"


# -- envvars --------------------------------------------------------------------------------


def test_envvars_are_stored_as_a_frozen_dict_equal_to_the_input() -> None:
    """envvars become a read-only FrozenDict that equals the dict given."""
    spec = batch(envvars={"PATH_X": "/opt", "_A1": ""})
    assert isinstance(spec.envvars, FrozenDict)
    assert spec.envvars == {"PATH_X": "/opt", "_A1": ""}
    assert spec.envvars["PATH_X"] == "/opt"


@pytest.mark.parametrize(
    ("envvars", "message"),
    [
        ({"1A": "x"}, "not an environment variable name"),
        ({"A-B": "x"}, "not an environment variable name"),
        ({"": "x"}, "not an environment variable name"),
        ({"A": 1}, "must be a string"),
        ({"A": "a\x00"}, "NUL"),
        ([("A", "1")], "must be a mapping"),
    ],
)
@pytest.mark.parametrize("field", ["envvars", "worker_envvars"])
def test_bad_envvars_are_refused(envvars: Any, message: str, field: str) -> None:
    """Invalid names, non-string or NUL values and non-mappings raise SpecError."""
    with pytest.raises(SpecError, match=message) as caught:
        Notebook(name="nb", run_volume="w", **{field: envvars})
    assert caught.value.field == field


# -- ports ----------------------------------------------------------------------------------


def test_ports_are_stored_as_a_frozen_dict_of_pairs() -> None:
    """Ports become a FrozenDict of (container, service) tuples; lists are accepted."""
    spec = batch(ports={"http": [80, 8080], "port8000": (8000, 8000)})
    assert spec.ports == FrozenDict({"http": (80, 8080), "port8000": (8000, 8000)})
    assert isinstance(spec.ports, FrozenDict)


def test_ports_may_share_a_container_port() -> None:
    """Two names may map one container port to different service ports (MessageQ default)."""
    ports = {"mgmttls": (15672, 15671), "mgmt": (15672, 15672)}
    assert MessageQ(name="q", cfg_file="c", run_volume="w", ports=ports).ports == FrozenDict(ports)


def test_an_empty_port_map_is_kept_and_differs_from_not_set() -> None:
    """An empty port map means 'expose nothing', unlike None which keeps the default."""
    assert Notebook(name="nb", run_volume="w", ports={}).params()["ports"] == {}
    assert "ports" not in Notebook(name="nb", run_volume="w").params()


@pytest.mark.parametrize(
    ("ports", "message"),
    [
        ({"http": (0, 80)}, "from 1 to 65535"),
        ({"http": (80, 65536)}, "from 1 to 65535"),
        ({"http": (True, 80)}, "from 1 to 65535"),
        ({"http": ("80", 80)}, "from 1 to 65535"),
        ({"http": (80,)}, "(container_port, service_port)"),
        ({"http": 80}, "(container_port, service_port)"),
        ({"a-very-long-name": (80, 80)}, "not a valid port name"),
        ({"HTTP": (80, 80)}, "not a valid port name"),
        ({"8080": (80, 80)}, "not a valid port name"),
        ({"a--b": (80, 80)}, "not a valid port name"),
        ({"-ab": (80, 80)}, "not a valid port name"),
        ({"a:b": (80, 80)}, "not a valid port name"),
        ({1: (80, 80)}, "not a valid port name"),
        ({"a": (80, 80), "b": (81, 80)}, "service port 80 is used twice"),
        ("http:80:80", "must map a port name"),
    ],
)
def test_bad_ports_are_refused(ports: Any, message: str) -> None:
    """Out-of-range or non-integer ports, bad names and shared service ports are refused."""
    with pytest.raises(SpecError, match=re.escape(message)) as caught:
        batch(ports=ports)
    assert caught.value.field == "ports"


@given(port_maps())
def test_generated_port_maps_are_accepted(ports: dict[str, tuple[int, int]]) -> None:
    """Every map of distinct valid names and service ports is accepted as given."""
    assert batch(ports=ports).ports == FrozenDict(ports)


@given(st.integers().filter(lambda port: not 1 <= port <= 65535), st.booleans())
def test_any_port_number_out_of_range_is_refused(port: int, as_service: bool) -> None:
    """A container or service port outside 1..65535 raises SpecError on 'ports'."""
    pair = (80, port) if as_service else (port, 80)
    with pytest.raises(SpecError) as caught:
        batch(ports={"web": pair})
    assert caught.value.field == "ports"


# -- args -----------------------------------------------------------------------------------


def test_args_are_frozen_to_a_tuple_and_may_hold_empty_strings() -> None:
    """Generic args take any iterable of strings, empty strings included."""
    spec = Generic(name="g", image="alpine", run_volume="w", args=["sh", "-c", ""])
    assert spec.args == ("sh", "-c", "")


@pytest.mark.parametrize(("args", "message"), [("-c", "list of strings"), ([1], "only strings")])
def test_bad_args_are_refused(args: Any, message: str) -> None:
    """A lone string or a non-string argument raises SpecError on 'args'."""
    with pytest.raises(SpecError, match=message) as caught:
        Generic(name="g", image="alpine", run_volume="w", args=args)
    assert caught.value.field == "args"


# -- FrozenDict -----------------------------------------------------------------------------


def test_frozen_dict_is_a_hashable_read_only_mapping() -> None:
    """FrozenDict compares with dicts, hashes by content and has no item assignment."""
    first = FrozenDict({"a": "1", "b": "2"})
    second = FrozenDict([("b", "2"), ("a", "1")])
    assert first == second == {"a": "1", "b": "2"}
    assert hash(first) == hash(second)
    assert len(first) == 2
    assert repr(first) == "FrozenDict({'a': '1', 'b': '2'})"
    setter: Callable[..., object] | None = getattr(first, "__setitem__", None)
    assert setter is None


# -- every type -----------------------------------------------------------------------------


@given(specs())
def test_generated_specs_are_valid_and_report_what_was_set(spec: JobSpec) -> None:
    """params() of any spec starts with name, holds no None and rebuilds an equal spec."""
    params = spec.params()
    assert next(iter(params)) == "name"
    assert None not in params.values()
    assert make_spec(spec.kind, **params) == spec
    assert hash(make_spec(spec.kind, **params)) == hash(spec)
