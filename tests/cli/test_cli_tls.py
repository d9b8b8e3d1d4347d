"""The CLI over HTTPS: --ca-bundle and JRUN_CA_BUNDLE, refused certificates, plain HTTP."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from support import TlsListener, issue_certificate, write_script

from juliarun_aio.cli import main
from juliarun_aio.server import LocalServer


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """A local server with its own CA (``--tls-self-signed``), for the module."""
    data_dir = tmp_path_factory.mktemp("tls") / "data"
    with LocalServer(data_dir, tls_self_signed=True, kill_grace=1.0) as server:
        yield server


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def connect(server: LocalServer, url: str | None = None) -> list[str]:
    """The connection flags for ``server`` (at ``url``), without a CA bundle."""
    return ["--url", url or server.url, f"--token={server.token}", "--namespace", server.namespace]


def assert_one_line_error(err: str, token: str) -> None:
    assert err.startswith("juliarun: error: ")
    assert err.count("\n") == 1
    assert " -- " in err
    assert token not in err
    assert base64.b64encode(token.encode()).decode() not in err


def test_ca_bundle_flag_and_variable_reach_a_self_signed_server(
    capsys: pytest.CaptureFixture[str], tls_server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--ca-bundle, or JRUN_CA_BUNDLE as the server printed it, run commands over HTTPS."""
    assert tls_server.ca_bundle is not None
    volume = tls_server.data_dir / "namespaces" / "default" / "volumes" / "work"
    write_script(volume, "hi.py", "print('hello over tls')\n")
    bundle = ["--ca-bundle", tls_server.ca_bundle]
    code, out, err = run(capsys, *connect(tls_server), *bundle, "status")
    assert (code, err) == (0, "")
    code, _, err = run(
        capsys,
        *connect(tls_server),
        "submit",
        "JuliaBatch",
        "hi",
        "--start-script",
        "hi.py",
        "--run-volume",
        "work",
        "--wait",
        *bundle,
    )
    assert code == 0, err
    for key, value in tls_server.env.items():  # the export lines the server printed
        monkeypatch.setenv(key, value)
    assert tls_server.env["JRUN_CA_BUNDLE"] == tls_server.ca_bundle
    code, out, err = run(capsys, "logs", "hi")
    assert (code, out) == (0, "hello over tls\n"), err
    code, _, err = run(capsys, "delete", "JuliaBatch/hi")
    assert code == 0, err


def test_a_certificate_from_a_test_ca(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A server given --tls-cert/--tls-key from another CA: --ca-bundle with that CA works."""
    files = issue_certificate(tmp_path / "certs", "localhost", "127.0.0.1")
    with LocalServer(tmp_path / "data", tls_cert=files.cert, tls_key=files.key) as server:
        code, _, err = run(capsys, *connect(server), "--ca-bundle", str(files.ca), "list")
        assert (code, err) == (0, "")
        code, _, err = run(capsys, *connect(server), "list")
        assert code == 8
        assert_one_line_error(err, server.token)


def test_an_unknown_ca_exits_8_naming_the_flag(
    capsys: pytest.CaptureFixture[str], tls_server: LocalServer, tmp_path: Path
) -> None:
    """Without the server's CA, or with another one, the CLI exits 8 saying to give it."""
    code, out, err = run(capsys, *connect(tls_server), "status")
    assert (code, out) == (8, "")
    assert_one_line_error(err, tls_server.token)
    assert "issued by a CA this client does not trust" in err
    assert "(or --ca-bundle FILE)" in err
    assert "export JRUN_CA_BUNDLE=..." in err
    assert "verify=" not in err
    other = issue_certificate(tmp_path / "other", "127.0.0.1")
    code, _, err = run(capsys, *connect(tls_server), "--ca-bundle", str(other.ca), "list")
    assert code == 8
    assert f"--ca-bundle={other.ca} did not issue it" in err


def test_a_name_mismatch_and_an_expired_certificate_exit_8(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A certificate for another name, or expired, exits 8 with what failed and what to do."""
    ca = trustme.CA()
    named = issue_certificate(tmp_path / "named", "localhost", ca=ca)
    with LocalServer(tmp_path / "data", tls_cert=named.cert, tls_key=named.key) as server:
        dialled = server.url.replace("localhost", "127.0.0.1")
        code, _, err = run(capsys, *connect(server, dialled), "--ca-bundle", str(named.ca), "list")
        assert code == 8
        assert_one_line_error(err, server.token)
        assert "it is not valid for 127.0.0.1" in err
        assert "the URL it printed at start" in err
    expired = issue_certificate(tmp_path / "expired", "127.0.0.1", ca=ca, expired=True)
    with TlsListener(expired) as listener:
        argv = ["--url", listener.url, "--token=t0ken-value", "--namespace", "n"]
        code, _, err = run(capsys, *argv, "--ca-bundle", str(expired.ca), "info")
        assert listener.connections == 1
    assert code == 8
    assert_one_line_error(err, "t0ken-value")
    assert "it has expired" in err
    assert "renew the server's certificate" in err


def test_an_unreadable_ca_bundle_exits_1_naming_the_flag(
    capsys: pytest.CaptureFixture[str], tls_server: LocalServer, tmp_path: Path
) -> None:
    """--ca-bundle (or JRUN_CA_BUNDLE) naming a missing file: exit 1, file and flag named."""
    missing = tmp_path / "missing.pem"
    code, _, err = run(capsys, *connect(tls_server), "--ca-bundle", str(missing), "list")
    assert code == 1
    assert_one_line_error(err, tls_server.token)
    assert f"cannot read the CA bundle {missing} (from --ca-bundle)" in err


@pytest.mark.filterwarnings("default::juliarun_aio.InsecureTransportWarning")
def test_plain_http_to_another_host_warns_in_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """http:// off loopback prints one warning line; JRUN_ALLOW_INSECURE_HTTP=1 silences it."""
    # A scale to -1 workers is refused before any request: nothing is sent anywhere.
    argv = ["--url", "http://10.231.0.1:8080", "--token=t0ken-value", "-n", "n"]
    code, _, err = run(capsys, *argv, "scale", "JuliaBatch/job", "--", "-1")
    assert code == 2
    warning, error = err.splitlines()
    assert warning.startswith("juliarun: warning: http://10.231.0.1:8080 is plain HTTP")
    assert "JRUN_ALLOW_INSECURE_HTTP=1" in warning
    assert error.startswith("juliarun: error: cannot scale to -1 workers")
    monkeypatch.setenv("JRUN_ALLOW_INSECURE_HTTP", "1")
    code, _, err = run(capsys, *argv, "scale", "JuliaBatch/job", "--", "-1")
    assert code == 2
    assert err.count("\n") == 1
