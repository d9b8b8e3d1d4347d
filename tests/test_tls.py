"""TLS of a Context: what it trusts, how a refused certificate reads, when it warns."""

from __future__ import annotations

import copy
import pickle
import ssl
import warnings
from pathlib import Path

import anyio
import httpx
import pytest
import support
import trustme
from support import TlsListener, issue_certificate

import juliarun_aio as jr
from juliarun_aio import CertificateError, ConfigurationError, Context, InsecureTransportWarning
from juliarun_aio._config import resolve_config
from juliarun_aio._retry import Decision, decide
from juliarun_aio._tls import USUAL_CAS, Verify, is_loopback_host, resolve_trust

TOKEN = "s3>cr?t-tls-t0ken~"
NS = "team"


@pytest.fixture
def ca() -> trustme.CA:
    """A test CA."""
    return trustme.CA()


@pytest.fixture
def certs(tmp_path: Path, ca: trustme.CA) -> support.TestCertificate:
    """A certificate for 127.0.0.1 and localhost from the test CA."""
    return issue_certificate(tmp_path / "certs", "127.0.0.1", "localhost", ca=ca)


def _loaded(context: ssl.SSLContext | bool) -> int:
    assert isinstance(context, ssl.SSLContext)
    return len(context.get_ca_certs())


# -- what a Context trusts ----------------------------------------------------------------


def test_verify_wins_over_the_variables_in_order(
    tmp_path: Path, certs: support.TestCertificate
) -> None:
    """verify= beats JRUN_CA_BUNDLE, which beats SSL_CERT_FILE, then SSL_CERT_DIR."""
    broken = tmp_path / "broken.pem"
    broken.write_text("not a certificate")
    directory = tmp_path / "hashed"
    directory.mkdir()
    everything = {
        "JRUN_CA_BUNDLE": str(certs.ca),
        "SSL_CERT_FILE": str(broken),
        "SSL_CERT_DIR": str(broken),
    }
    assert resolve_trust(True, everything).verify is True
    assert resolve_trust(False, everything).verify is False
    given = ssl.create_default_context()
    assert resolve_trust(given, everything).verify is given
    assert resolve_trust(str(certs.ca), {}).source == f"verify={certs.ca}"
    from_env = resolve_trust(None, everything)
    assert from_env.source == f"JRUN_CA_BUNDLE={certs.ca}"
    assert _loaded(from_env.verify) == 1
    from_file = resolve_trust(None, {"SSL_CERT_FILE": str(certs.ca), "SSL_CERT_DIR": str(broken)})
    assert from_file.source == f"SSL_CERT_FILE={certs.ca}"
    assert resolve_trust(None, {"SSL_CERT_DIR": str(directory)}).source == (
        f"SSL_CERT_DIR={directory}"
    )
    assert resolve_trust(None, {}) == USUAL_CAS
    assert resolve_trust(None, {"JRUN_CA_BUNDLE": ""}) == USUAL_CAS


@pytest.mark.parametrize("variable", ["JRUN_CA_BUNDLE", "SSL_CERT_FILE"])
def test_a_missing_or_unreadable_bundle_fails_at_construction(
    tmp_path: Path, variable: str
) -> None:
    """A bundle that is missing or not PEM is a ConfigurationError naming file and variable."""
    missing = tmp_path / "missing.pem"
    with pytest.raises(ConfigurationError) as caught:
        Context("https://127.0.0.1:1", TOKEN, NS, env={variable: str(missing)})
    assert f"cannot read the CA bundle {missing} (from {variable})" in str(caught.value)
    assert "No such file" in str(caught.value)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n")
    with pytest.raises(ConfigurationError, match=f"{garbage} \\(from verify=\\)"):
        Context("https://127.0.0.1:1", TOKEN, NS, verify=garbage)
    garbage.chmod(0)
    with pytest.raises(ConfigurationError, match=variable):
        Context("https://127.0.0.1:1", TOKEN, NS, env={variable: str(garbage)})


@pytest.mark.parametrize("verify", [123, 1.5, ["ca.pem"]])
def test_verify_of_another_type_says_what_it_takes(verify: object) -> None:
    """verify= of a type it does not take is a TypeError listing the kinds it takes."""
    with pytest.raises(TypeError, match="verify= takes True, False, the path of a CA bundle"):
        Context("https://127.0.0.1:1", TOKEN, NS, verify=verify)  # type: ignore[arg-type]


def test_verify_with_an_injected_client_is_refused(certs: support.TestCertificate) -> None:
    """verify= configures the client a Context makes; with client= it is a ConfigurationError."""
    client = httpx.AsyncClient()
    with pytest.raises(ConfigurationError, match="give it to the httpx\\.AsyncClient"):
        Context("https://127.0.0.1:1", TOKEN, NS, client=client, verify=False)
    # A bundle in the environment is for clients the Context makes: no conflict.
    Context("https://127.0.0.1:1", TOKEN, NS, client=client, env={"JRUN_CA_BUNDLE": str(certs.ca)})


def test_a_bundle_is_read_once_and_serves_every_event_loop(tmp_path: Path, ca: trustme.CA) -> None:
    """The bundle is read when the Context is made; the pools of later loops verify with it."""
    files = issue_certificate(tmp_path / "once", "127.0.0.1", ca=ca)
    with TlsListener(files) as listener:
        ctx = Context(listener.url, TOKEN, NS, retries=1, env={"JRUN_CA_BUNDLE": str(files.ca)})
        files.ca.unlink()

        async def call() -> None:
            # The listener hangs up after a good handshake: a transport error, not a refusal.
            with pytest.raises(jr.TransportError) as caught:
                await ctx.get_system_status()
            assert not isinstance(caught.value, CertificateError)

        anyio.run(call, backend="asyncio")
        anyio.run(call, backend="trio")
        anyio.run(ctx.aclose, backend="trio")
        assert listener.connections == 2


# -- refused certificates -----------------------------------------------------------------


async def _refusal(
    url: str, *, env: dict[str, str] | None = None, verify: Verify | None = None
) -> CertificateError:
    retries = jr.RetryPolicy(attempts=4, initial=0, maximum=0)
    async with Context(url, TOKEN, NS, env=env, verify=verify, retries=retries) as ctx:
        with pytest.raises(CertificateError) as caught:
            await ctx.get_system_status()
    return caught.value


def _check_clean(error: CertificateError) -> None:
    """The error and everything it chains to are free of the credential."""
    texts = [str(error), repr(error)]
    link: BaseException | None = error
    while link is not None:
        texts.append(str(link))
        link = link.__cause__ or link.__context__
    assert not [text for text in texts if TOKEN in text or "jruntok=czM" in text]


@pytest.mark.anyio
async def test_an_unknown_ca_says_to_trust_the_servers_ca(certs: support.TestCertificate) -> None:
    """Without the CA, the error says unknown CA and names JRUN_CA_BUNDLE; tried once."""
    with TlsListener(certs) as listener:
        error = await _refusal(listener.url, env={})
        assert listener.connections == 1
    assert error.reason == "unknown CA"
    assert error.attempts == 1
    assert error.verb == "getSystemStatus"
    assert error.trusted is None
    assert "issued by a CA this client does not trust" in error.message
    assert "set JRUN_CA_BUNDLE (or verify=)" in error.message
    assert "export JRUN_CA_BUNDLE=" in error.message
    _check_clean(error)


@pytest.mark.anyio
async def test_another_ca_says_which_bundle_did_not_issue_it(
    tmp_path: Path, certs: support.TestCertificate
) -> None:
    """Trusting another CA, the error names the bundle in use."""
    other = issue_certificate(tmp_path / "other", "127.0.0.1")
    with TlsListener(certs) as listener:
        error = await _refusal(listener.url, env={"JRUN_CA_BUNDLE": str(other.ca)})
    assert error.reason == "unknown CA"
    assert error.trusted == f"JRUN_CA_BUNDLE={other.ca}"
    assert f"JRUN_CA_BUNDLE={other.ca} did not issue it" in error.message
    _check_clean(error)


@pytest.mark.anyio
async def test_a_name_mismatch_says_which_name(tmp_path: Path, ca: trustme.CA) -> None:
    """A certificate for another name: the error says so and names the host dialled."""
    files = issue_certificate(tmp_path / "named", "server.example", ca=ca)
    with TlsListener(files) as listener:
        error = await _refusal(listener.url, verify=files.ca)
        assert listener.connections == 1
    assert error.reason == "name mismatch"
    assert error.host == "127.0.0.1"
    assert "it is not valid for 127.0.0.1" in error.message
    assert "call the server by a name or address its certificate holds" in error.message
    _check_clean(error)


@pytest.mark.anyio
async def test_an_expired_certificate_says_to_renew_it(tmp_path: Path, ca: trustme.CA) -> None:
    """An expired certificate: the error says expired and how to renew; writes are not retried."""
    files = issue_certificate(tmp_path / "old", "127.0.0.1", ca=ca, expired=True)
    with TlsListener(files) as listener:
        error = await _refusal(listener.url, verify=str(files.ca))
        async with Context(listener.url, TOKEN, NS, verify=str(files.ca)) as ctx:
            with pytest.raises(CertificateError, match="expired"):
                await ctx.submit_job(jr.JuliaBatch(name="j", start_script="s", run_volume="w"))
        assert listener.connections == 2
    assert error.reason == "expired"
    assert "it has expired" in error.message
    assert "renew the server's certificate" in error.message
    _check_clean(error)


@pytest.mark.anyio
async def test_verify_false_accepts_any_certificate(tmp_path: Path) -> None:
    """verify=False gets through the handshake of an unknown, mismatched, expired certificate."""
    files = issue_certificate(tmp_path / "any", "elsewhere.example", expired=True)
    with TlsListener(files) as listener:
        async with Context(listener.url, TOKEN, NS, verify=False, retries=1) as ctx:
            with pytest.raises(jr.TransportError) as caught:
                await ctx.get_system_status()
    # The listener hangs up after the handshake: a transport error, not a certificate one.
    assert not isinstance(caught.value, CertificateError)


def test_a_refused_certificate_is_never_retried() -> None:
    """decide() fails a certificate failure at once, for reads and writes alike."""
    failure = ssl.SSLCertVerificationError(1, "certificate verify failed")
    failure.verify_code = 20
    exc = httpx.ConnectError("handshake failed")
    exc.__cause__ = failure
    assert decide(exc, idempotent=True) is Decision.FAIL
    assert decide(exc, idempotent=False) is Decision.FAIL
    assert decide(httpx.ConnectError("refused"), idempotent=False) is Decision.RETRY


# -- the credential in clear --------------------------------------------------------------


def test_plain_http_to_another_host_warns_once_per_context() -> None:
    """http:// off loopback warns at construction, once, pointing at the caller's line."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ctx = Context("http://10.231.0.1:8080", TOKEN, NS)
        assert len(caught) == 1
        warning = caught[0]
        assert warning.category is InsecureTransportWarning
        assert warning.filename == __file__
        assert "crosses the network in clear" in str(warning.message)
        assert "JRUN_ALLOW_INSECURE_HTTP=1" in str(warning.message)
        assert TOKEN not in str(warning.message)
        ctx._http.build_url("getSystemStatus", None, {})
        Context("http://node7.cluster.example", TOKEN, NS)
        assert len(caught) == 2


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080",
        "http://127.3.4.5",
        "http://[::1]:80",
        "http://localhost:8080",
        "http://api.localhost",
        "https://10.231.0.1:8443",
    ],
)
def test_loopback_and_https_never_warn(url: str) -> None:
    """Loopback in any spelling, and https anywhere, make no warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Context(url, TOKEN, NS)


def test_the_warning_is_silenced_on_purpose(tmp_path: Path) -> None:
    """JRUN_ALLOW_INSECURE_HTTP=1, a warnings filter, or the in-cluster default silence it."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for value in ("1", "true", "yes", "ON"):
            Context("http://10.231.0.1", TOKEN, NS, env={"JRUN_ALLOW_INSECURE_HTTP": value})
        warnings.filterwarnings("ignore", category=InsecureTransportWarning)
        Context("http://10.231.0.1", TOKEN, NS)
    sa_dir = tmp_path / "sa"
    sa_dir.mkdir()
    (sa_dir / "token").write_text("sa-token")
    (sa_dir / "namespace").write_text("ns")
    env = {"KUBERNETES_SERVICE_HOST": "10.0.0.1"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config = resolve_config(env=env, service_account_dir=sa_dir)
        assert config.url.startswith("http://juliarunremote-svc")
        assert config.allow_insecure_http
    with pytest.warns(InsecureTransportWarning):
        Context("http://10.231.0.1", TOKEN, NS, env={"JRUN_ALLOW_INSECURE_HTTP": "0"})
    with pytest.raises(ConfigurationError, match="JRUN_ALLOW_INSECURE_HTTP must be 1 or 0"):
        Context("http://10.231.0.1", TOKEN, NS, env={"JRUN_ALLOW_INSECURE_HTTP": "maybe"})


def test_loopback_hosts_are_recognised_without_a_resolver() -> None:
    """Loopback addresses and localhost names are loopback; everything else is not."""
    for host in ("127.0.0.1", "127.255.0.9", "::1", "[::1]", "::ffff:127.0.0.1", "LOCALHOST."):
        assert is_loopback_host(host), host
    for host in ("10.231.0.1", "0.0.0.0", "::", "example.org", "localhost.example.org"):
        assert not is_loopback_host(host), host


def test_a_certificate_error_copies_and_pickles_with_its_details() -> None:
    """Shared pollers hand each watcher a copy; pickling keeps reason, host and bundle too."""
    error = CertificateError(
        "refused", reason="expired", host="h.example", trusted="verify=/ca.pem", verb="listJobs"
    )
    for clone in (copy.copy(error), pickle.loads(pickle.dumps(error))):
        assert (clone.message, clone.reason, clone.host, clone.trusted, clone.verb) == (
            "refused",
            "expired",
            "h.example",
            "verify=/ca.pem",
            "listJobs",
        )
