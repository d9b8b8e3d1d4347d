"""The command line: credentials generated once and reused, configuration files, backends."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from juliarun_aio.server import LocalServer, ServerProcess
from juliarun_aio.server._config import (
    ConfigError,
    ServerConfig,
    generate_token,
    load_or_create_tokens,
    parse_token_flag,
    read_config_file,
    read_tokens_file,
)


def _start(data_dir: Path) -> tuple[subprocess.Popen[str], list[str]]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("JRUN_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "juliarun_aio.server", "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    lines = [proc.stdout.readline() for _ in range(6)]
    return proc, lines


def test_generated_token_is_stored_private_and_reused(tmp_path: Path) -> None:
    """Without credentials the server generates a token (0600 file), prints exports and the
    dashboard link, and reuses the token."""
    data_dir = tmp_path / "data"
    exports: list[list[str]] = []
    for _ in range(2):
        proc, lines = _start(data_dir)
        try:
            assert lines[0].startswith("JuliaRun server listening on http://127.0.0.1:")
            exports.append([line for line in lines if line.startswith("export JRUN_TOKEN=")])
            assert any(line.startswith("export JRUN_NAMESPACE=default") for line in lines)
            assert lines[5].startswith("dashboard: http://127.0.0.1:")
        finally:
            proc.terminate()
            proc.communicate(timeout=30)
    credentials = data_dir / "credentials.json"
    assert credentials.stat().st_mode & 0o777 == 0o600
    token = json.loads(credentials.read_text())["default"]
    assert exports[0] == exports[1] == [f"export JRUN_TOKEN={token}\n"]


def test_token_files_and_flags(tmp_path: Path) -> None:
    """JSON and TOML token files and NS=TOKEN flags are read; bad ones are refused clearly."""
    (tmp_path / "tokens.json").write_text('{"team-a": "secret-a"}')
    (tmp_path / "tokens.toml").write_text('team-b = "secret-b"\n')
    assert read_tokens_file(tmp_path / "tokens.json") == {"team-a": "secret-a"}
    assert read_tokens_file(tmp_path / "tokens.toml") == {"team-b": "secret-b"}
    assert parse_token_flag("ns=a=b") == ("ns", "a=b")
    (tmp_path / "bad.json").write_text('{"Bad_NS": "x"}')
    with pytest.raises(ConfigError, match="namespace"):
        read_tokens_file(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="NAMESPACE=TOKEN"):
        parse_token_flag("just-a-token")
    with pytest.raises(ConfigError, match="cannot read"):
        read_tokens_file(tmp_path / "missing.json")


def test_generated_tokens_never_start_with_a_dash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stored, LocalServer and ServerProcess tokens skip random values that start with '-'."""
    drawn = iter(["-looks-like-a-flag", "first-good", "-again", "second-good", "-x", "third"])
    monkeypatch.setattr(secrets, "token_urlsafe", lambda _nbytes: next(drawn))
    tokens, created = load_or_create_tokens(tmp_path / "data")
    assert created
    assert tokens == {"default": "first-good"}
    assert LocalServer(tmp_path / "local").token == "second-good"
    assert ServerProcess(tmp_path / "process").token == "third"
    monkeypatch.undo()
    assert not any(generate_token().startswith("-") for _ in range(2000))


def test_config_files_hold_server_settings(tmp_path: Path) -> None:
    """A server table (TOML or JSON) holds settings beside the tokens; mistakes are named."""
    toml = tmp_path / "server.toml"
    toml.write_text(
        'default = "s3cret"\n'
        '[server]\nbackend = "slurm"\nhost = "0.0.0.0"\nport = 8080\ntls_self_signed = true\n'
        'partition = "debug"\naccount = "p42"\nsbatch_args = ["--constraint=ib", "--qos=short"]\n'
    )
    tokens, settings = read_config_file(toml)
    assert tokens == {"default": "s3cret"}
    assert settings == {
        "backend": "slurm",
        "host": "0.0.0.0",
        "port": 8080,
        "tls_self_signed": True,
        "partition": "debug",
        "account": "p42",
        "sbatch_args": ["--constraint=ib", "--qos=short"],
    }
    config = ServerConfig(data_dir=tmp_path, tokens=tokens, **settings)
    assert config.sbatch_args == ("--constraint=ib", "--qos=short")
    plain = tmp_path / "plain.json"
    plain.write_text('{"server": "its-token", "default": "x"}')
    assert read_config_file(plain) == ({"server": "its-token", "default": "x"}, {})
    cases = [
        ('{"default": "x", "server": {"backend": "slurm", "nodes": 3}}', "unknown server setting"),
        ('{"default": "x", "server": {"port": "80"}}', "port must be int"),
        ('{"default": "x", "server": {"sbatch_args": "--qos=short"}}', "sbatch_args must be list"),
    ]
    for text, message in cases:
        plain.write_text(text)
        with pytest.raises(ConfigError, match=message):
            read_config_file(plain)
    plain.write_text('{"default": "x", "server": {"backend": "slurm"}}')
    with pytest.raises(ConfigError, match="namespace names to token strings"):
        read_tokens_file(plain)
    with pytest.raises(ConfigError, match=r"backend \(--backend\) must be one of local, slurm"):
        ServerConfig(data_dir=tmp_path, tokens=tokens, backend="kubernetes")
    with pytest.raises(ConfigError, match="partition"):
        ServerConfig(data_dir=tmp_path, tokens=tokens, partition="a b")
    for port in (-1, 65536, True):
        with pytest.raises(ConfigError, match="port \\(--port\\) must be a whole number from 0"):
            ServerConfig(data_dir=tmp_path, tokens=tokens, port=port)
    for slurm_only in ({"partition": "debug"}, {"account": "p42"}, {"sbatch_args": ["-q"]}):
        with pytest.raises(ConfigError, match="apply to Slurm jobs: add --backend slurm"):
            ServerConfig(data_dir=tmp_path, tokens=tokens, **slurm_only)


def test_settings_the_server_manages_are_refused_in_one_line(tmp_path: Path) -> None:
    """An sbatch argument that the server sets itself stops the server with one line."""
    config = tmp_path / "server.json"
    config.write_text('{"default": "t", "server": {"backend": "slurm"}}')
    env = {key: value for key, value in os.environ.items() if not key.startswith("JRUN_")}
    command = [sys.executable, "-m", "juliarun_aio.server", "--data-dir", str(tmp_path / "d")]
    command += ["--config", str(config), "--sbatch-arg=--job-name=mine"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("juliarun-server: --sbatch-arg: sbatch argument '--job-name")
    assert "the server manages itself" in result.stderr
