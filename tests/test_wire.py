"""Tests for juliarun_aio._wire: specs to query parameters and back."""

from __future__ import annotations

import json
import typing
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import port_maps, specs, texts

from juliarun_aio import SpecError
from juliarun_aio._jobs import JOB_KINDS, JobSpec
from juliarun_aio._specs import SPEC_TYPES, Generic, JuliaBatch, JuliaParBatch, Notebook, Webserver
from juliarun_aio._wire import decode_spec, decode_value, encode_spec, encode_value


def julia_repr(text: str) -> str:
    """Write a string the way Julia's ``repr`` does for the characters it escapes."""
    escaped = (
        text.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$").replace("\n", "\\n")
    )
    return f'"{escaped}"'


# -- encoding -------------------------------------------------------------------------------


def test_encode_spec_writes_every_value_type_per_the_protocol() -> None:
    """Each value type has its documented text form; name is included, tokens are not."""
    spec = JuliaParBatch(
        name="train",
        start_script="run.jl",
        run_volume="work",
        additional_volumes=["data", "models"],
        ports={"http": (80, 8080), "port8000": (8000, 8000)},
        external=True,
        cpu=0.5,
        gpu=0,
        memory="1Gi",
        envvars={"A": "1", "B": "x y"},
        nworkers=4,
        worker_envvars={},
        restart="Never",
    )
    assert encode_spec(spec) == {
        "name": "train",
        "start_script": "run.jl",
        "run_volume": "work",
        "additional_volumes": '["data", "models"]',
        "ports": "http:80:8080,port8000:8000:8000",
        "external": "true",
        "cpu": "0.5",
        "gpu": "0",
        "memory": "1Gi",
        "envvars": '{"A": "1", "B": "x y"}',
        "nworkers": "4",
        "worker_envvars": "{}",
        "restart": "Never",
    }


def test_encode_spec_sends_only_what_was_set() -> None:
    """Unset parameters are left out so the server's defaults apply."""
    spec = Notebook(name="nb", run_volume="work")
    assert encode_spec(spec) == {"name": "nb", "run_volume": "work"}


def test_encode_value_writes_false_and_empty_containers() -> None:
    """False, empty lists and empty port maps still have a text form."""
    assert encode_value("external", False) == "false"
    assert encode_value("args", ()) == "[]"
    assert encode_value("ports", {}) == ""


def test_encode_value_takes_plain_lists_and_dicts() -> None:
    """Containers need not be frozen first: lists and dicts encode like tuples and FrozenDicts."""
    assert encode_value("additional_volumes", ["a", "b"]) == '["a", "b"]'
    assert encode_value("worker_envvars", {"A": "1"}) == '{"A": "1"}'
    assert encode_value("ports", {"web": (80, 8080)}) == "web:80:8080"


def test_encode_value_keeps_non_ascii_text_readable() -> None:
    """JSON lists and objects keep non-ASCII characters as they are."""
    assert encode_value("args", ("é",)) == '["é"]'


def test_encode_value_refuses_an_unknown_parameter() -> None:
    """Encoding a name that no job type has raises SpecError naming it."""
    with pytest.raises(SpecError) as caught:
        encode_value("colour", "red")
    assert caught.value.field == "colour"


def test_a_parameter_name_has_one_type_across_job_types() -> None:
    """Every parameter shared by several types is declared with the same type."""
    seen: dict[str, Any] = {}
    for spec_type in SPEC_TYPES.values():
        for field in attrs.fields(spec_type):
            declared = typing.get_args(field.type) or (field.type,)
            value_type = next(arg for arg in declared if arg is not type(None))
            assert seen.setdefault(field.name, value_type) == value_type, field.name


# -- decoding -------------------------------------------------------------------------------


def test_decode_spec_ignores_the_credential_and_namespace() -> None:
    """jruntok and jrunns are not spec parameters and are skipped."""
    params = {"jruntok": "c2VjcmV0", "jrunns": "team", "name": "nb", "run_volume": "work"}
    assert decode_spec("Notebook", params) == Notebook(name="nb", run_volume="work")


def test_decode_spec_rejects_an_unknown_key_naming_it() -> None:
    """A parameter the type does not take raises SpecError naming the key."""
    params = {"name": "nb", "run_volume": "work", "nworkers": "2"}
    with pytest.raises(SpecError) as caught:
        decode_spec("Notebook", params)
    assert caught.value.field == "nworkers"
    assert "Notebook has no parameter 'nworkers'" in str(caught.value)


def test_decode_spec_rejects_a_missing_required_parameter() -> None:
    """A request without a required parameter raises SpecError naming it."""
    with pytest.raises(SpecError) as caught:
        decode_spec("JuliaBatch", {"name": "job", "run_volume": "work"})
    assert caught.value.field == "start_script"


def test_decode_spec_rejects_an_unknown_kind() -> None:
    """An unknown job type raises SpecError on 'kind'."""
    with pytest.raises(SpecError) as caught:
        decode_spec("Cron", {"name": "job"})
    assert caught.value.field == "kind"


def test_decode_spec_checks_values_like_construction() -> None:
    """A value that parses but breaks a rule raises the same SpecError as in Python."""
    params = {"name": "job", "start_script": "s.jl", "run_volume": "work", "cpu": "0"}
    with pytest.raises(SpecError, match="not a CPU quantity") as caught:
        decode_spec("JuliaBatch", params)
    assert caught.value.field == "cpu"


def test_decode_spec_reads_a_julia_client_submission() -> None:
    """A submitJob query as JuliaRunClient.jl sends it decodes to the intended spec."""
    params = {
        "jruntok": "dG9r",
        "jrunns": "juliarun-team",
        "name": "site",
        "cfg_file": "/mnt/cfg/nginx.conf",
        "run_volume": "work",
        "additional_volumes": '["cfg", "logs"]',
        "ports": 'Dict("http" => (80, 80), "https" => (443, 443))',
        "envvars": 'Dict{String,String}("MODE" => "prod")',
        "external": "true",
        "nworkers": "2",
        "cpu": "0.5",
        "memory": "512Mi",
    }
    assert decode_spec("Webserver", params) == Webserver(
        name="site",
        cfg_file="/mnt/cfg/nginx.conf",
        run_volume="work",
        additional_volumes=("cfg", "logs"),
        ports={"http": (80, 80), "https": (443, 443)},
        envvars={"MODE": "prod"},
        external=True,
        nworkers=2,
        cpu="0.5",
        memory="512Mi",
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("http:80:8080", {"http": (80, 8080)}),
        ("8000:8000", {"port8000": (8000, 8000)}),
        ("http:80:80, 8000:9000", {"http": (80, 80), "port8000": (8000, 9000)}),
        ("", {}),
        ('Dict("http" => (80, 80), "https"=>(443,443))', {"http": (80, 80), "https": (443, 443)}),
        ('Dict{String,Tuple{Int64,Int64}}("nb" => (8888, 8888))', {"nb": (8888, 8888)}),
        ('Dict{String, Tuple{Int64, Int64}}("a"=>(1,2),)', {"a": (1, 2)}),
        ("Dict{String,Tuple{Int64,Int64}}()", {}),
    ],
)
def test_decode_value_reads_every_ports_form(text: str, expected: dict[str, Any]) -> None:
    """Ports decode from name:container:service entries and Julia Dict forms."""
    assert decode_value("ports", text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"A": "1", "B": ""}', {"A": "1", "B": ""}),
        ("{}", {}),
        ('Dict("A"=>"1")', {"A": "1"}),
        ('Dict{String,String}("A" => "1", "B" => "2")', {"A": "1", "B": "2"}),
        ('Dict{String, String}("P" => "\\$HOME\\n\\t\\"q\\"")', {"P": '$HOME\n\t"q"'}),
        ('Dict("U" => "\\u00e9\\x41\\e\\101")', {"U": "éA\x1bA"}),
        ("Dict{String,String}()", {}),
    ],
)
def test_decode_value_reads_every_envvars_form(text: str, expected: dict[str, str]) -> None:
    """envvars decode from a JSON object and from Julia Dict forms with Julia escapes."""
    assert decode_value("envvars", text) == expected
    assert decode_value("worker_envvars", text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('["a", "b"]', ("a", "b")),
        ("[]", ()),
        ('String["a","b"]', ("a", "b")),
        ("String[]", ()),
        ('["cost: \\$5"]', ("cost: $5",)),
        ('[ "x" , "y" , ]', ("x", "y")),
    ],
)
def test_decode_value_reads_every_list_form(text: str, expected: tuple[str, ...]) -> None:
    """Lists decode from a JSON array and from Julia vector forms."""
    assert decode_value("args", text) == expected
    assert decode_value("additional_volumes", text) == expected


@pytest.mark.parametrize(
    ("field", "text", "expected"),
    [
        ("external", "true", True),
        ("external", "false", False),
        ("gpu", "0", 0),
        ("nworkers", "12", 12),
        ("worker_gpu", "-1", -1),
        ("cpu", "500m", "500m"),
        ("restart", "RestartOnFailure", "RestartOnFailure"),
        ("start_script", "  keep spaces\n", "  keep spaces\n"),
    ],
)
def test_decode_value_reads_scalars(field: str, text: str, expected: object) -> None:
    """Booleans, integers and text decode to Python values (range checks come later)."""
    assert decode_value(field, text) == expected


@pytest.mark.parametrize(
    ("field", "text", "message"),
    [
        ("external", "True", "expected true or false"),
        ("external", "1", "expected true or false"),
        ("gpu", "2.0", "decimal integer"),
        ("nworkers", "", "decimal integer"),
        ("nworkers", "1_000", "decimal integer"),
        ("args", "a b", "JSON array of strings"),
        ("args", "[1, 2]", "JSON array of strings"),
        ("args", '["a"', "JSON array of strings"),
        ("args", '["\\q"]', "unknown escape"),
        ("args", "Int64[1]", "JSON array of strings"),
        ("envvars", '{"A": 1}', "JSON object of strings"),
        ("envvars", '{"A": "1", "A": "2"}', "appears twice"),
        ("envvars", 'Dict("A" => "1", "A" => "2")', "appears twice"),
        ("envvars", 'Dict("A" "1")', "expected '=>'"),
        ("envvars", 'Dict(1 => "1")', "must be a string"),
        ("envvars", '["A"]', "JSON object of strings"),
        ("ports", "http", "not name:container:service"),
        ("ports", "http:80", "not name:container:service"),
        ("ports", "http:80:80,", "not name:container:service"),
        ("ports", "a:1:1,a:2:2", "appears twice"),
        ("ports", "80:80,80:81", "appears twice"),
        ("ports", 'Dict("a" => 80)', "(container, service) tuple"),
        ("ports", 'Dict("a" => (80, 80, 80))', "(container, service) tuple"),
        ("ports", "Dict{String,Tuple{Int64,Int64}(", "unbalanced"),
        ("ports", 'Dict("a" => (1, 2)) extra', "unexpected text"),
        ("args", "[" * 100_000, "nested too deeply"),
    ],
)
def test_decode_value_rejects_bad_text_naming_the_field(
    field: str, text: str, message: str
) -> None:
    """Text that does not parse raises SpecError naming the field and quoting the value."""
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)")) as caught:
        decode_value(field, text)
    assert caught.value.field == field
    assert repr(text)[:20] in str(caught.value)


def test_decode_value_truncates_a_long_bad_value_in_the_message() -> None:
    """A long bad value is quoted only in part, so messages stay short."""
    text = "x" * 500
    with pytest.raises(SpecError) as caught:
        decode_value("args", text)
    assert "xxxx..." in str(caught.value)
    assert len(str(caught.value)) < 200


def test_decode_value_refuses_an_unknown_parameter() -> None:
    """Decoding a name that no job type has raises SpecError naming it."""
    with pytest.raises(SpecError) as caught:
        decode_value("colour", "red")
    assert caught.value.field == "colour"


def test_decoded_ports_are_checked_when_the_spec_is_built() -> None:
    """A parsed port out of range is refused by the spec, naming 'ports'."""
    params = {"name": "g", "image": "alpine", "run_volume": "w", "ports": "web:80:70000"}
    with pytest.raises(SpecError, match="from 1 to 65535") as caught:
        decode_spec("Generic", params)
    assert caught.value.field == "ports"


# -- properties -----------------------------------------------------------------------------


@given(specs())
def test_every_spec_survives_the_wire_round_trip(spec: JobSpec) -> None:
    """decode_spec(kind, encode_spec(spec)) rebuilds an equal spec for every job type."""
    assert decode_spec(spec.kind, encode_spec(spec)) == spec


@pytest.mark.parametrize("kind", JOB_KINDS)
@given(data=st.data())
def test_each_job_type_round_trips(kind: str, data: st.DataObject) -> None:
    """The round trip holds for each job type on its own, not only on average."""
    spec = data.draw(specs(kind))
    assert type(spec) is SPEC_TYPES[kind]
    assert decode_spec(kind, encode_spec(spec)) == spec


@given(specs())
def test_encoding_has_one_string_per_set_parameter(spec: JobSpec) -> None:
    """encode_spec yields text for exactly the parameters params() reports."""
    encoded = encode_spec(spec)
    assert list(encoded) == list(spec.params())
    assert all(isinstance(text, str) for text in encoded.values())
    assert "jruntok" not in encoded
    assert "jrunns" not in encoded


@given(specs())
def test_decoding_tolerates_the_call_parameters(spec: JobSpec) -> None:
    """Adding jruntok and jrunns to an encoded spec does not change what decodes."""
    params = {"jruntok": "dG9rZW4=", "jrunns": "ns", **encode_spec(spec)}
    assert decode_spec(spec.kind, params) == spec


@given(st.lists(texts(min_size=0), max_size=5))
def test_julia_vectors_of_any_strings_decode(items: list[str]) -> None:
    """A Julia String[...] of arbitrary strings, escaped as Julia does, reads back exactly."""
    text = "String[" + ", ".join(julia_repr(item) for item in items) + "]"
    assert decode_value("args", text) == tuple(items)


@given(port_maps())
def test_julia_port_dicts_decode(ports: dict[str, tuple[int, int]]) -> None:
    """A Julia Dict of name => (container, service) reads back as the same port map."""
    entries = ", ".join(f"{julia_repr(name)} => ({c}, {s})" for name, (c, s) in ports.items())
    text = f"Dict{{String,Tuple{{Int64,Int64}}}}({entries})"
    assert decode_value("ports", text) == ports


@given(st.lists(texts(min_size=0), max_size=5))
def test_lists_are_sent_as_json_arrays(items: list[str]) -> None:
    """Lists go on the wire as JSON arrays that any JSON reader understands."""
    assert json.loads(encode_value("args", tuple(items))) == items


@given(
    st.sampled_from(["cpu", "worker_cpu"]),
    st.text(max_size=10).filter(lambda text: not text.rstrip("m").replace(".", "").isdigit()),
)
def test_decoded_bad_cpu_text_is_refused(field: str, text: str) -> None:
    """Any CPU text that is not a number of cores or millicores is refused on decode."""
    params = {"name": "p", "start_script": "s.jl", "run_volume": "w", field: text}
    with pytest.raises(SpecError) as caught:
        decode_spec("JuliaParBatch", params)
    assert caught.value.field == field


@given(st.integers(min_value=65536) | st.just(0))
def test_decoded_out_of_range_ports_are_refused(port: int) -> None:
    """A port number outside 1..65535 on the wire is refused, naming 'ports'."""
    params = {"name": "j", "start_script": "s.jl", "run_volume": "w", "ports": f"web:{port}:80"}
    with pytest.raises(SpecError) as caught:
        decode_spec("JuliaBatch", params)
    assert caught.value.field == "ports"


def test_generic_args_round_trip_with_awkward_text() -> None:
    """Quotes, backslashes, commas, dollar signs and newlines in args survive the wire."""
    spec = Generic(
        name="g", image="alpine", run_volume="w", args=['a "b"', "c\\d", "e,f", "$HOME", "x\ny"]
    )
    assert decode_spec("Generic", encode_spec(spec)) == spec


def test_encoded_spec_of_a_batch_job_matches_the_observed_port_naming() -> None:
    """A port named port<container> encodes and decodes like the observed '8000:8000'."""
    spec = JuliaBatch(
        name="j", start_script="s.jl", run_volume="w", ports={"port8000": (8000, 8000)}
    )
    assert decode_value("ports", "8000:8000") == spec.ports
    assert encode_spec(spec)["ports"] == "port8000:8000:8000"
