"""TLS: HTTPS with the server's own CA or a given certificate; no plain HTTP off loopback."""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from server_support import FAST, Api
from support import QUICK_KILL, issue_certificate, on_loopback, project_address, write_script

from juliarun_aio.server import ConfigError, LocalServer, ServerConfig, ServerProcess
from juliarun_aio.server import _tls as tls_module
from juliarun_aio.server._serve import dial_hosts
from juliarun_aio.server._tls import covers

#: A job that prints what it was given to call the server back with.
SHOW_ENV = (
    "import os\n"
    "print(os.environ['JRUN_URL'])\n"
    "print(os.environ.get('JRUN_CA_BUNDLE', 'no bundle'))\n"
)


def _names(cert_file: Path) -> set[str]:
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {
        *names.get_values_for_type(x509.DNSName),
        *(str(address) for address in names.get_values_for_type(x509.IPAddress)),
    }


def _refused_certificate(url: str) -> ssl.SSLCertVerificationError:
    """Call ``url`` trusting the usual CAs only; return the verification error."""
    with pytest.raises(httpx.ConnectError) as caught:
        httpx.get(f"{url}/getSystemStatus/", timeout=30)
    cause = caught.value.__cause__ or caught.value.__context__
    while cause is not None and not isinstance(cause, ssl.SSLCertVerificationError):
        cause = cause.__cause__ or cause.__context__
    assert isinstance(cause, ssl.SSLCertVerificationError), caught.value
    return cause


def _job_env(api: Api, volume: Path, name: str) -> list[str]:
    """Run a job that prints its JRUN_URL and JRUN_CA_BUNDLE; return the two lines."""
    write_script(volume, "show_env.py", SHOW_ENV)
    api.data("submitJob", "JuliaBatch", name=name, start_script="show_env.py", run_volume="work")
    assert api.wait_done("JuliaBatch", name)["phase"] == "succeeded"
    return api.lines("JuliaBatch", name)


# -- the server's own CA -----------------------------------------------------------------


def test_a_self_signed_server_speaks_https_that_its_ca_verifies(tmp_path: Path) -> None:
    """HTTPS on loopback; clients with ``ca_bundle`` verify it, others refuse it; jobs get both."""
    with LocalServer(tmp_path / "data", tls_self_signed=True, **FAST) as server:
        assert server.url.startswith("https://127.0.0.1:")
        assert server.ca_bundle == str(server.data_dir / "tls" / "ca.pem")
        assert server.env["JRUN_CA_BUNDLE"] == server.ca_bundle
        assert server.dashboard_url.startswith(f"{server.url}/ui/login?code=")
        api = Api(server.url, server.token, server.namespace, ca_bundle=server.ca_bundle)
        try:
            assert api.data("getSystemStatus") is True
            volume = server.data_dir / "namespaces" / "default" / "volumes" / "work"
            assert _job_env(api, volume, "env") == [server.url, server.ca_bundle]
        finally:
            api.close()
        assert "unable to get local issuer" in _refused_certificate(server.url).verify_message
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.get(f"{server.url.replace('https', 'http')}/getSystemStatus/", timeout=30)
        assert {"127.0.0.1", "::1", "localhost"} <= _names(server.data_dir / "tls" / "server.pem")


def test_the_certificates_are_reused_and_the_server_certificate_follows_the_names(
    tmp_path: Path,
) -> None:
    """A restart reuses CA and certificate; another address gets a new certificate, same CA."""
    data_dir = tmp_path / "data"
    tls = data_dir / "tls"
    with LocalServer(data_dir, tls_self_signed=True, **FAST):
        first = {path.name: path.read_bytes() for path in tls.iterdir()}
    with LocalServer(data_dir, tls_self_signed=True, **FAST):
        assert {path.name: path.read_bytes() for path in tls.iterdir()} == first
    with LocalServer(data_dir, tls_self_signed=True, host="127.0.0.2", **FAST) as moved:
        assert moved.url.startswith("https://127.0.0.2:")
        assert (tls / "ca.pem").read_bytes() == first["ca.pem"]
        assert (tls / "server.pem").read_bytes() != first["server.pem"]
        assert "127.0.0.2" in _names(tls / "server.pem")
        # A client that trusted the CA before trusts the server at its new address.
        api = Api(moved.url, moved.token, moved.namespace, ca_bundle=tls / "ca.pem")
        try:
            assert api.data("getSystemStatus") is True
        finally:
            api.close()


def test_certificates_close_to_expiry_or_unreadable_are_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A server certificate about to expire is issued again by the same CA; a broken CA anew."""
    data_dir = tmp_path / "data"
    tls = data_dir / "tls"
    monkeypatch.setattr(tls_module, "SERVER_LIFETIME", datetime.timedelta(days=10))
    caplog.set_level(logging.WARNING, logger="juliarun_aio.server")
    with LocalServer(data_dir, tls_self_signed=True, **FAST):
        short = x509.load_pem_x509_certificate((tls / "server.pem").read_bytes())
        ca = (tls / "ca.pem").read_bytes()
    monkeypatch.undo()
    with LocalServer(data_dir, tls_self_signed=True, **FAST):
        renewed = x509.load_pem_x509_certificate((tls / "server.pem").read_bytes())
        assert renewed.not_valid_after_utc - short.not_valid_after_utc > datetime.timedelta(
            days=365
        )
        assert (tls / "ca.pem").read_bytes() == ca
    assert "server's CA" not in caplog.text
    (tls / "ca-key.pem").write_text("not a key")
    with LocalServer(data_dir, tls_self_signed=True, **FAST) as server:
        assert (tls / "ca.pem").read_bytes() != ca
        # The operator learns that clients' JRUN_CA_BUNDLE must be handed out again.
        assert f"clients must trust the new {tls / 'ca.pem'}" in caplog.text
        api = Api(server.url, server.token, server.namespace, ca_bundle=server.ca_bundle)
        try:
            assert api.data("getSystemStatus") is True
        finally:
            api.close()


def test_strict_clients_accept_the_self_signed_certificate(tmp_path: Path) -> None:
    """The CA and certificate pass OpenSSL's strict X.509 checks (the default of newer Pythons)."""
    with LocalServer(tmp_path / "data", tls_self_signed=True, **FAST) as server:
        assert server.ca_bundle is not None
        context = ssl.create_default_context(cafile=server.ca_bundle)
        context.verify_flags |= ssl.VERIFY_X509_STRICT
        answer = httpx.get(f"{server.url}/getSystemStatus/", verify=context, timeout=30)
        assert answer.status_code == 401  # no credential, but the handshake went through


# -- certificates given by the user ------------------------------------------------------


def test_a_certificate_from_another_ca_names_the_url(tmp_path: Path) -> None:
    """With --tls-cert/--tls-key the URL uses a name the certificate holds; no bundle is printed."""
    files = issue_certificate(tmp_path / "certs", "localhost")
    with ServerProcess(
        tmp_path / "data", tls_cert=files.cert, tls_key=files.key, args=QUICK_KILL
    ) as server:
        assert server.url == f"https://localhost:{server.port}"
        assert server.ca_bundle is None
        assert "JRUN_CA_BUNDLE" not in server.output()
        api = Api(server.url, server.token, server.namespace, ca_bundle=files.ca)
        try:
            assert api.data("getSystemStatus") is True
            volume = tmp_path / "data" / "namespaces" / "default" / "volumes" / "work"
            assert _job_env(api, volume, "env") == [server.url, "no bundle"]
        finally:
            api.close()


def test_a_certificate_that_names_none_of_the_addresses_is_served_with_a_warning(
    tmp_path: Path,
) -> None:
    """The server starts, and its log says that clients will refuse the certificate."""
    files = issue_certificate(tmp_path / "certs", "elsewhere.example")
    with ServerProcess(
        tmp_path / "data", tls_cert=files.cert, tls_key=files.key, args=QUICK_KILL
    ) as server:
        assert server.url == f"https://127.0.0.1:{server.port}"
        printed = server.output()
    assert "names elsewhere.example but not 127.0.0.1" in printed


def _encrypted_key(directory: Path, key_file: Path) -> Path:
    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    path = directory / "encrypted.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pass"),
        )
    )
    return path


def test_unusable_tls_files_are_refused_at_start(tmp_path: Path) -> None:
    """A wrong key, a missing file, an expired or encrypted key: ConfigError, nothing served."""
    good = issue_certificate(tmp_path / "good", "127.0.0.1")
    other = issue_certificate(tmp_path / "other", "127.0.0.1")
    expired = issue_certificate(tmp_path / "expired", "127.0.0.1", expired=True)
    cases = {
        "another key": (good.cert, other.key, "cannot use the TLS certificate"),
        "missing": (tmp_path / "missing.pem", good.key, "not found"),
        "missing certificate named": (tmp_path / "gone.pem", good.key, "gone.pem"),
        "missing key named": (good.cert, tmp_path / "gone-key.pem", "gone-key.pem"),
        "expired": (expired.cert, expired.key, "expired on"),
        "encrypted": (good.cert, _encrypted_key(tmp_path, good.key), "is encrypted"),
        "not PEM": (good.key, good.key, "cannot use the TLS certificate"),
    }
    data_dir = tmp_path / "data"
    for what, (cert, key, message) in cases.items():
        with pytest.raises(ConfigError, match=message):
            LocalServer(data_dir, tls_cert=cert, tls_key=key, **FAST).start()
        assert "\n" not in message, what
    # Nothing was left holding the data directory.
    with LocalServer(data_dir, tls_cert=good.cert, tls_key=good.key, **FAST) as server:
        assert server.url.startswith("https://127.0.0.1:")


def test_contradicting_tls_settings_are_refused(tmp_path: Path) -> None:
    """A cert without key, self-signed with a cert, TLS with --insecure-http: each is refused."""
    base: dict[str, Any] = {"data_dir": tmp_path, "tokens": {"default": "t"}}
    with pytest.raises(ConfigError, match="go together"):
        ServerConfig(**base, tls_cert=tmp_path / "c.pem")
    with pytest.raises(ConfigError, match="not both"):
        ServerConfig(**base, tls_cert="c", tls_key="k", tls_self_signed=True)
    with pytest.raises(ConfigError, match="--insecure-http serves plain HTTP"):
        ServerConfig(**base, tls_self_signed=True, insecure_http=True)


def test_certificate_names_match_as_clients_match_them() -> None:
    """Names match case-insensitively, a star stands for one label, addresses by value."""
    names = ["Host.Example.org", "*.nodes.example.org", "10.0.0.1", "::1"]
    assert covers(names, "host.example.ORG")
    assert covers(names, "n1.nodes.example.org")
    assert not covers(names, "a.b.nodes.example.org")
    assert not covers(names, "nodes.example.org")
    assert covers(names, "10.0.0.1")
    assert covers(names, "0:0:0:0:0:0:0:1")
    assert not covers(names, "10.0.0.2")
    assert not covers(["10.0.0.1"], "localhost")


# -- the listening address ---------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_plain_http_on_a_wildcard_is_refused_in_one_line(tmp_path: Path, host: str) -> None:
    """``--host 0.0.0.0`` without TLS exits 1 with one line naming --insecure-http."""
    with pytest.raises(ConfigError, match="--insecure-http") as caught:
        ServerConfig(data_dir=tmp_path, tokens={"default": "t"}, host=host)
    assert "\n" not in str(caught.value)
    flags = ["--data-dir", str(tmp_path / "d"), "--host", host, "--token=default=t"]
    done = subprocess.run(
        [sys.executable, "-m", "juliarun_aio.server", *flags],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith(f"juliarun-server: refusing to serve plain HTTP on {host}")
    cli = subprocess.run(
        [sys.executable, "-m", "juliarun_aio", "server", *flags],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert cli.returncode == 1
    assert "refusing to serve plain HTTP" in cli.stderr
    assert "--insecure-http" in cli.stderr


def test_loopback_needs_no_tls(tmp_path: Path) -> None:
    """Every loopback address, and names that only resolve to loopback, serve plain HTTP."""
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        assert ServerConfig(data_dir=tmp_path, tokens={"default": "t"}, host=host).host == host


def test_insecure_http_on_a_wildcard_warns_and_prints_a_dialable_url(data_dir: Path) -> None:
    """--insecure-http serves plain HTTP on 0.0.0.0 with a warning; the URL is never 0.0.0.0."""
    with ServerProcess(data_dir, host="0.0.0.0", args=(*QUICK_KILL, "--insecure-http")) as server:
        host = server.url.split("://")[1].rsplit(":", 1)[0]
        assert host not in ("0.0.0.0", "[::]")
        assert host in dial_hosts("0.0.0.0", "0.0.0.0")
        assert server.dashboard_url.startswith(f"{server.url}/ui/login")
        api = Api(on_loopback(server.url), server.token, server.namespace)
        try:
            assert api.data("getSystemStatus") is True
        finally:
            api.close()
        printed = server.output()
    assert "serving plain HTTP on 0.0.0.0 (--insecure-http)" in printed
    assert "in clear" in printed


def test_dial_hosts_never_offer_a_wildcard() -> None:
    """A wildcard offers this machine's name or address; a given name or address comes first."""
    for wildcard in ("0.0.0.0", "::"):
        hosts = dial_hosts(wildcard, wildcard)
        assert hosts
        assert all(not _is_wildcard(host) for host in hosts)
    assert dial_hosts("127.0.0.1", "127.0.0.1") == ["127.0.0.1", "localhost"]
    assert dial_hosts("localhost", "127.0.0.1")[0] == "localhost"


def _is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def test_self_signed_on_a_wildcard_names_every_way_in(data_dir: Path) -> None:
    """On 0.0.0.0 the certificate names the printed host and loopback; jobs call on loopback."""
    with ServerProcess(data_dir, host="0.0.0.0", tls_self_signed=True, args=QUICK_KILL) as server:
        assert server.ca_bundle == str(data_dir.absolute() / "tls" / "ca.pem")
        host = server.url.split("://")[1].rsplit(":", 1)[0]
        names = _names(data_dir / "tls" / "server.pem")
        assert host in names
        assert {"127.0.0.1", "localhost"} <= names
        assert server.dashboard_url.startswith(f"https://{host}:")
        local = on_loopback(server.url)
        api = Api(local, server.token, server.namespace, ca_bundle=server.ca_bundle)
        try:
            volume = data_dir / "namespaces" / "default" / "volumes" / "work"
            assert _job_env(api, volume, "env") == [local, server.ca_bundle]
        finally:
            api.close()
        assert f"export JRUN_CA_BUNDLE={server.ca_bundle}\n" in server.output()


def test_a_server_on_the_project_address_calls_its_jobs_there(tmp_path: Path) -> None:
    """On a non-loopback address (the Slurm test hosts' 10.231.0.1) jobs get that https URL."""
    address = project_address()
    with LocalServer(tmp_path / "data", host=address, tls_self_signed=True, **FAST) as server:
        assert server.url.startswith(f"https://{address}:")
        assert address in _names(server.data_dir / "tls" / "server.pem")
        api = Api(server.url, server.token, server.namespace, ca_bundle=server.ca_bundle)
        try:
            volume = server.data_dir / "namespaces" / "default" / "volumes" / "work"
            assert _job_env(api, volume, "env") == [server.url, server.ca_bundle]
        finally:
            api.close()


# -- the configuration file and the dashboard --------------------------------------------


def test_tls_settings_from_the_configuration_file(tmp_path: Path) -> None:
    """A ``server`` table sets host and TLS files (relative to the file); flags win over it."""
    files = issue_certificate(tmp_path / "conf" / "certs", "localhost")
    config = tmp_path / "conf" / "server.toml"
    config.write_text(
        'default = "s3cret"\n\n[server]\nhost = "127.0.0.1"\n'
        'tls_cert = "certs/cert.pem"\ntls_key = "certs/key.pem"\n'
    )
    data_dir = tmp_path / "data"
    command = [sys.executable, "-m", "juliarun_aio.server", "--data-dir", str(data_dir)]
    env = {key: value for key, value in os.environ.items() if not key.startswith("JRUN_")}
    proc = subprocess.Popen(
        [*command, "--config", str(config), *QUICK_KILL],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("JuliaRun server listening on https://localhost:")
        url = first.split()[-1]
        api = Api(url, "s3cret", "default", ca_bundle=files.ca)
        try:
            assert api.data("getSystemStatus") is True
        finally:
            api.close()
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    config.write_text('default = "s3cret"\n\n[server]\ntls_self_signed = "yes"\n')
    done = subprocess.run(
        [*command, "--config", str(config)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 1
    assert "server setting tls_self_signed must be bool" in done.stderr
    config.write_text('default = "s3cret"\n\n[server]\ntls = true\n')
    done = subprocess.run(
        [*command, "--config", str(config)], capture_output=True, text=True, timeout=60, check=False
    )
    assert "unknown server setting(s) tls" in done.stderr


def test_the_dashboard_cookie_is_secure_under_tls(tmp_path: Path) -> None:
    """Over HTTPS the session cookie is Secure (and still HttpOnly, SameSite=Strict)."""
    with LocalServer(tmp_path / "data", tls_self_signed=True, **FAST) as server:
        assert server.ca_bundle is not None
        verify = ssl.create_default_context(cafile=server.ca_bundle)
        with httpx.Client(verify=verify, timeout=30) as client:
            answer = client.get(server.dashboard_url)
            assert answer.status_code == 303
            cookie = answer.headers["set-cookie"].lower()
            assert "; secure" in cookie
            assert "; httponly" in cookie
            assert "samesite=strict" in cookie
            assert client.get(f"{server.url}/ui/api/session").status_code == 200


def test_a_test_ca_is_not_trusted_by_default(tmp_path: Path) -> None:
    """A certificate from a CA the client does not know fails verification (trustme sanity)."""
    ca = trustme.CA()
    files = issue_certificate(tmp_path / "certs", "127.0.0.1", ca=ca)
    with LocalServer(tmp_path / "data", tls_cert=files.cert, tls_key=files.key, **FAST) as server:
        assert "unable to get local issuer" in _refused_certificate(server.url).verify_message
