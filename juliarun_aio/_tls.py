"""TLS of a Context: which certificates it trusts, and when its credential travels in clear.

**Trust.**  What a Context verifies the server's certificate with, first match wins:

1. ``Context(verify=...)`` (``juliarun --ca-bundle FILE``): ``True`` (the usual CAs), a CA
   bundle (a PEM file, or a directory of hashed certificates), an :class:`ssl.SSLContext`,
   or ``False`` (no verification: anyone on the way can then read the credential);
2. ``JRUN_CA_BUNDLE``: a CA bundle -- a server started with ``--tls-self-signed`` prints
   its own as ``export JRUN_CA_BUNDLE=...``, and gives it to its jobs;
3. ``SSL_CERT_FILE``, then ``SSL_CERT_DIR``, the variables OpenSSL reads;
4. the usual CAs (certifi's bundle, as httpx has it).

A bundle replaces the usual CAs.  It is read once, when the Context is made: a bundle that
is missing or unreadable is a :class:`~juliarun_aio.ConfigurationError` then, naming the
file and where it came from.

**Clear text.**  The protocol puts the credential in every request's URL, so a plain
``http://`` URL to any host but this machine's loopback (``127.0.0.0/8``, ``::1``,
``localhost``) sends it across the network in clear.  A Context made with such a URL
warns once, as it is made, with :class:`~juliarun_aio.InsecureTransportWarning`.  To say
that it is on purpose (a trusted network), silence it as any warning -- in Python
``warnings.filterwarnings("ignore", category=juliarun_aio.InsecureTransportWarning)``,
for the command line and jobs ``JRUN_ALLOW_INSECURE_HTTP=1``.  The in-cluster default URL
never warns: it is the platform's own service, which the caller does not choose.

**Failures.**  A certificate that fails verification ends the call at once (asking again
gets the same certificate, so it is not retried) with
:class:`~juliarun_aio.CertificateError`, which says what failed -- an unknown CA, a name
the certificate does not hold, an expired certificate -- and what to do.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
import warnings
from collections.abc import Mapping

import attrs
import httpx

from ._base import Verify
from ._errors import (
    SDK_TERMS,
    CertificateError,
    ConfigurationError,
    HintTerms,
    InsecureTransportWarning,
)

__all__ = [
    "ALLOW_INSECURE_VARIABLE",
    "CA_BUNDLE_VARIABLE",
    "USUAL_CAS",
    "Trust",
    "Verify",
    "certificate_advice",
    "certificate_error",
    "certificate_failure",
    "insecure_http_allowed",
    "is_loopback_host",
    "load_bundle",
    "resolve_trust",
    "warn_if_cleartext",
]

CA_BUNDLE_VARIABLE = "JRUN_CA_BUNDLE"
ALLOW_INSECURE_VARIABLE = "JRUN_ALLOW_INSECURE_HTTP"

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})

# OpenSSL's X509_V_ERR_* codes, by what they mean to a user.
_UNKNOWN_CA = frozenset({2, 18, 19, 20, 21})  # no issuer found, self-signed
_EXPIRED = frozenset({10})
_NOT_YET_VALID = frozenset({9})
_NAME_MISMATCH = frozenset({62, 63, 64})  # host name, e-mail, IP address


@attrs.frozen
class Trust:
    """What a Context verifies server certificates with.

    Attributes:
        verify: What its httpx client is given.
        source: Where it came from, for messages (``JRUN_CA_BUNDLE=/path``...).
        bundle: A CA bundle (or context) was given for this server, instead of the usual CAs.
        given: It came from the ``verify=`` argument (not the environment).
    """

    verify: ssl.SSLContext | bool
    source: str
    bundle: bool = False
    given: bool = False


#: Verification with the CAs httpx trusts by default.
USUAL_CAS = Trust(True, "the usual CAs")


def load_bundle(path: str | os.PathLike[str], source: str, *, given: bool = False) -> Trust:
    """Read a CA bundle (a PEM file, or a directory of hashed certificates).

    Args:
        path: The file or directory.
        source: Where it came from, for messages (``JRUN_CA_BUNDLE``, ``verify=``,
            ``--ca-bundle``).
        given: It was passed as an argument rather than found in the environment.

    Raises:
        ConfigurationError: It cannot be read or holds no certificate; the message names
            the path and ``source``.
    """
    path = os.fspath(path)
    try:
        if os.path.isdir(path):
            context = ssl.create_default_context(capath=path)
        else:
            context = ssl.create_default_context(cafile=path)
    except OSError as exc:  # ssl.SSLError is an OSError
        problem = exc.strerror or str(exc)
        raise ConfigurationError(
            f"cannot read the CA bundle {path} (from {source}): {problem}; point {source} "
            "at the server's CA certificate, a PEM file"
        ) from None
    return Trust(context, f"{source.rstrip('=')}={path}", bundle=True, given=given)


def resolve_trust(verify: Verify | None, env: Mapping[str, str]) -> Trust:
    """Work out what to verify certificates with (the order is in the module docstring).

    Args:
        verify: The ``verify=`` argument; ``None`` when not given.
        env: The environment to read.

    Raises:
        ConfigurationError: A CA bundle cannot be read; the message names it and where it
            came from.
        TypeError: ``verify`` is none of the kinds it takes.
    """
    if not isinstance(verify, bool | str | os.PathLike | ssl.SSLContext | None):
        raise TypeError(
            "verify= takes True, False, the path of a CA bundle or an ssl.SSLContext, got "
            f"{type(verify).__name__}"
        )
    if isinstance(verify, ssl.SSLContext):
        return Trust(verify, "the ssl.SSLContext given as verify=", bundle=True, given=True)
    if isinstance(verify, bool):
        if verify:
            return attrs.evolve(USUAL_CAS, given=True)
        return Trust(False, "no verification (verify=False)", given=True)
    if verify is not None:
        return load_bundle(verify, "verify=", given=True)
    for variable in (CA_BUNDLE_VARIABLE, "SSL_CERT_FILE", "SSL_CERT_DIR"):
        if env.get(variable):
            return load_bundle(env[variable], variable)
    return USUAL_CAS


def insecure_http_allowed(env: Mapping[str, str]) -> bool:
    """Whether plain HTTP off loopback is meant: ``JRUN_ALLOW_INSECURE_HTTP`` is true.

    Raises:
        ConfigurationError: ``JRUN_ALLOW_INSECURE_HTTP`` is neither true nor false.
    """
    text = env.get(ALLOW_INSECURE_VARIABLE, "").strip().lower()
    if text in _TRUE | _FALSE:
        return text in _TRUE
    raise ConfigurationError(
        f"{ALLOW_INSECURE_VARIABLE} must be 1 or 0 (true or false), got {text[:20]!r}"
    )


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` names this machine's loopback (without asking any resolver)."""
    host = host.strip("[]").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def warn_if_cleartext(url: str, *, stacklevel: int) -> None:
    """Warn when ``url`` would send the credential across a network in clear.

    Args:
        url: The server's root URL.
        stacklevel: As :func:`warnings.warn` takes it, counted from the caller.
    """
    parsed = httpx.URL(url)
    if parsed.scheme != "http" or is_loopback_host(parsed.host):
        return
    warnings.warn(
        InsecureTransportWarning(
            f"{url} is plain HTTP to another host: the protocol puts the credential in "
            "every request's URL, so it crosses the network in clear; use the server's "
            f"https:// URL; if the network is trusted, set {ALLOW_INSECURE_VARIABLE}=1 or "
            "filter InsecureTransportWarning out"
        ),
        stacklevel=stacklevel + 1,
    )


def certificate_failure(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate verification failure behind an httpx error, if that is what it is."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        if isinstance(link, ssl.SSLCertVerificationError):
            return link
        seen.add(id(link))
        link = link.__cause__ or link.__context__
    return None


def _reason(code: int) -> str:
    if code in _UNKNOWN_CA:
        return "unknown CA"
    if code in _NAME_MISMATCH:
        return "name mismatch"
    if code in _EXPIRED:
        return "expired"
    if code in _NOT_YET_VALID:
        return "not yet valid"
    return "failed verification"


_WHAT = {
    "unknown CA": "it is issued by a CA this client does not trust (or is self-signed)",
    "name mismatch": "it is not valid for {host}",
    "expired": "it has expired",
    "not yet valid": "it is not valid yet",
    "failed verification": "it failed verification",
}


def certificate_advice(
    reason: str, host: str, trusted: str | None, terms: HintTerms = SDK_TERMS
) -> str:
    """Say how to fix a refused certificate.

    Args:
        reason: :attr:`CertificateError.reason`.
        host: The host the client dialled.
        trusted: The CA bundle in use (``JRUN_CA_BUNDLE=/path``), or ``None`` for the
            usual CAs.
        terms: How to name the settings (the command line names its flags).
    """
    how = "--ca-bundle FILE" if terms.flags else "verify="
    if reason == "unknown CA":
        wanted = (
            f"trust the CA that issued the server's certificate: set {CA_BUNDLE_VARIABLE} "
            f"(or {how}) to its file; a server started with --tls-self-signed prints it as "
            f"'export {CA_BUNDLE_VARIABLE}=...'"
        )
        return wanted if trusted is None else f"{trusted} did not issue it; {wanted}"
    if reason == "name mismatch":
        return (
            "call the server by a name or address its certificate holds (the URL it "
            f"printed at start), or give the server a certificate for {host}"
        )
    if reason == "expired":
        return (
            "renew the server's certificate (one made by --tls-self-signed is renewed when "
            "the server restarts), and check this machine's clock"
        )
    if reason == "not yet valid":
        return "check the clocks of this machine and of the server"
    return f"check the server's certificate (verified with {trusted or 'the usual CAs'})"


def certificate_error(
    failure: ssl.SSLCertVerificationError,
    url: str,
    trust: Trust,
    *,
    verb: str | None,
    job: str | None,
    attempts: int,
) -> CertificateError:
    """Say what failed when ``url``'s certificate was refused, and how to fix it.

    Args:
        failure: The verification error.
        url: The server's root URL (it carries no credential).
        trust: What the certificate was verified with.
        verb: The call's verb.
        job: The call's job name, if any.
        attempts: Tries made.
    """
    reason = _reason(failure.verify_code)
    detail = failure.verify_message or failure.reason or type(failure).__name__
    host = httpx.URL(url).host
    trusted = trust.source if trust.bundle else None
    return CertificateError(
        f"the TLS certificate of {url} was refused: {_WHAT[reason].format(host=host)} "
        f"({detail}); {certificate_advice(reason, host, trusted)}",
        reason=reason,
        host=host,
        trusted=trusted,
        verb=verb,
        job=job,
        attempts=attempts,
    )
