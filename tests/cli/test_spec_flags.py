"""Command-line flags -> job specs: every field of every type is reachable."""

from __future__ import annotations

import argparse

import attrs
import pytest

from juliarun_aio import SpecError
from juliarun_aio._jobs import JobSpec
from juliarun_aio._specs import SPEC_TYPES
from juliarun_aio.cli import main
from juliarun_aio.cli._errors import UsageError
from juliarun_aio.cli._parser import build_parser
from juliarun_aio.cli._spec_flags import Shape, spec_flags, spec_from_args

# A valid command-line value for every parameter name any job type has.
SAMPLES: dict[str, list[str]] = {
    "start_script": ["--start-script", "run.jl"],
    "builder_script": ["--builder-script", "build.jl"],
    "cfg_file": ["--cfg-file", "server.conf"],
    "run_volume": ["--run-volume", "work"],
    "pkg_bundle": ["--pkg-bundle", "bundle"],
    "additional_volumes": ["--volume", "data", "--volume", "models"],
    "ports": ["--ports", "http:8080:80", "--ports", "9000:9001"],
    "external": ["--external"],
    "image": ["--image", "julia:1.10"],
    "cpu": ["--cpu", "500m"],
    "gpu": ["--gpu", "1"],
    "memory": ["--memory", "1Gi"],
    "shell": ["--shell", "bash"],
    "envvars": ["--env", "A=1", "--env", "B=x=y"],
    "nworkers": ["--nworkers", "2"],
    "worker_cpu": ["--worker-cpu", "0.5"],
    "worker_gpu": ["--worker-gpu", "0"],
    "worker_memory": ["--worker-memory", "512Mi"],
    "worker_shell": ["--worker-shell", "sh"],
    "worker_envvars": ["--worker-envvars", '{"W": "2"}'],
    "worker_start_script": ["--worker-start-script", "worker.jl"],
    "restart": ["--restart", "Never"],
    "passwd": ["--passwd", "hunter2"],
    "command": ["--command", "echo"],
    "args": ["--arg=-n", "--arg", "hello world"],
}


def parse(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def build(kind: str, *flags: str) -> JobSpec:
    args = parse(["submit", kind, "job-1", *flags])
    return spec_from_args(args.kind, args.name, args)


@pytest.mark.parametrize("kind", sorted(SPEC_TYPES))
def test_every_field_is_reachable(kind: str) -> None:
    """Giving every flag of a job type sets every field of its spec."""
    fields = [field.name for field in attrs.fields(SPEC_TYPES[kind]) if field.name != "name"]
    argv = [token for field in fields for token in SAMPLES[field]]
    spec = build(kind, *argv)
    assert set(spec.params()) == {"name", *fields}


def test_values_use_the_wire_syntax() -> None:
    """Ports, lists, environments and booleans decode as on the wire."""
    spec = build(
        "Generic",
        *SAMPLES["run_volume"],
        "--image",
        "alpine",
        *SAMPLES["ports"],
        *SAMPLES["args"],
        *SAMPLES["envvars"],
        "--external",
        "false",
        "--additional-volumes",
        '["a", "b"]',
    )
    params = spec.params()
    assert params["ports"] == {"http": (8080, 80), "port9000": (9000, 9001)}
    assert params["args"] == ("-n", "hello world")
    assert params["envvars"] == {"A": "1", "B": "x=y"}
    assert params["external"] is False
    assert params["additional_volumes"] == ("a", "b")


def test_json_forms_of_lists_and_environments() -> None:
    """--args and --envvars take the JSON the wire carries."""
    spec = build(
        "Generic",
        "--image",
        "alpine",
        "--run-volume",
        "w",
        "--args",
        '["-v"]',
        "--envvars",
        '{"K": "v"}',
        "--external",
    )
    assert spec.params()["args"] == ("-v",)
    assert spec.params()["envvars"] == {"K": "v"}
    assert spec.params()["external"] is True


def test_documented_underscore_spelling_is_accepted() -> None:
    """--start_script works as well as --start-script."""
    spec = build("JuliaBatch", "--start_script", "a.jl", "--run_volume", "w")
    assert spec.params()["start_script"] == "a.jl"


def test_json_and_item_flags_together_are_a_usage_error() -> None:
    """Giving --envvars and --env at once is refused, naming both."""
    args = parse(
        [
            "submit",
            "JuliaBatch",
            "j",
            "--start-script",
            "a.jl",
            "--run-volume",
            "w",
            "--envvars",
            "{}",
            "--env",
            "A=1",
        ]
    )
    with pytest.raises(UsageError, match="--envvars and --env"):
        spec_from_args(args.kind, args.name, args)


def test_env_entry_without_equals_is_a_usage_error() -> None:
    """--env needs NAME=VALUE."""
    args = parse(
        ["submit", "JuliaBatch", "j", "--start-script", "a.jl", "--run-volume", "w", "--env", "A"]
    )
    with pytest.raises(UsageError) as info:
        spec_from_args(args.kind, args.name, args)
    assert "NAME=VALUE" in info.value.todo


def test_bad_value_names_the_field() -> None:
    """A value that does not parse raises SpecError for that field."""
    with pytest.raises(SpecError) as info:
        build("JuliaBatch", "--start-script", "a.jl", "--run-volume", "w", "--gpu", "two")
    assert info.value.field == "gpu"


def test_every_container_field_has_an_item_flag() -> None:
    """Each list or environment field also has its repeatable singular flag."""
    for spec_type in SPEC_TYPES.values():
        for flag in spec_flags(spec_type):
            if flag.shape in (Shape.LIST, Shape.ENV):
                assert flag.item_option is not None, flag.field


def test_every_field_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    """The help of submit TYPE describes every parameter and hides the _ aliases."""
    for kind, spec_type in SPEC_TYPES.items():
        assert main(["submit", kind, "--help"]) == 0
        text = capsys.readouterr().out
        for flag in spec_flags(spec_type):
            assert flag.help, (kind, flag.field)
            assert flag.option in text
            assert f"--{flag.field} " not in text or "_" not in flag.field


def test_missing_required_flag_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    """A missing required parameter is a usage error: exit 2 and one line."""
    assert main(["submit", "JuliaBatch", "j", "--run-volume", "w"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("juliarun: error: ")
    assert "--start-script" in err


def test_unknown_command_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown subcommand exits 2 with one line naming the choices."""
    assert main(["frobnicate"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "invalid choice" in err


def test_invalid_spec_value_from_main_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    """An invalid parameter value is reported as a usage error before any request."""
    code = main(
        [
            "--url",
            "http://127.0.0.1:9",
            "--token=t",
            "--namespace",
            "n",
            "submit",
            "JuliaBatch",
            "j",
            "--start-script",
            "a.jl",
            "--run-volume",
            "w",
            "--cpu",
            "lots",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("juliarun: error: --cpu: ")
    assert err.count("\n") == 1
