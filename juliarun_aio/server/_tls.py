"""TLS certificates of the server: given by the user, or issued by a CA of its own.

Every request of the protocol carries a namespace's token in its URL, so a server that
other machines reach serves HTTPS (``_config.py`` refuses plain HTTP off loopback).

- ``--tls-cert FILE --tls-key FILE``: a certificate (PEM, optionally followed by its
  chain) and its private key (PEM, not encrypted).  :func:`load_certificate` checks at
  start that they load together and that the certificate has not expired.
- ``--tls-self-signed``: :func:`self_signed` keeps a small certificate authority of the
  server's own in ``<data-dir>/tls/`` and issues the server's certificate from it for the
  names and addresses clients and jobs reach the server at::

      ca.pem           the CA's certificate: what clients trust (JRUN_CA_BUNDLE)
      ca-key.pem       the CA's private key
      server.pem       the server's certificate, issued by the CA
      server-key.pem   the server's private key

  Both are reused across restarts while they are valid for more than
  :data:`RENEW_BEFORE` and, for the server's certificate, issued for exactly the names
  wanted now; otherwise the server's certificate is issued again by the same CA, so
  clients that trust ``ca.pem`` go on trusting the server.  A new CA is made only when
  there is none, it is unreadable, or it is about to expire.

Keys are ECDSA P-256; the files are private to the server's user (``_private.py``).
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import re
import ssl
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from ._config import ConfigError
from ._private import make_private_dirs, write_private

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

__all__ = [
    "CA_LIFETIME",
    "RENEW_BEFORE",
    "SERVER_LIFETIME",
    "TLS_DIR",
    "TlsFiles",
    "covers",
    "load_certificate",
    "self_signed",
]

logger = logging.getLogger("juliarun_aio.server")

#: The directory of the self-signed CA and certificate, inside the data directory.
TLS_DIR = "tls"
CA_LIFETIME = datetime.timedelta(days=3650)
SERVER_LIFETIME = datetime.timedelta(days=825)
#: A certificate that expires sooner than this is replaced at start.
RENEW_BEFORE = datetime.timedelta(days=30)
# Allowance for clocks of clients that are a little behind the server's.
_BACKDATE = datetime.timedelta(hours=1)
_DNS_NAME = re.compile(
    r"(?=.{1,253}\Z)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)


@attrs.frozen
class TlsFiles:
    """The certificate the server presents, and what clients need to trust it.

    Attributes:
        cert: The certificate file (PEM, with its chain when there is one).
        key: The private key file (PEM).
        names: The DNS names and IP addresses the certificate is valid for.
        ca_bundle: The CA certificate clients must trust, for a self-signed setup; None
            for a certificate given by the user (clients trust its issuer already).
    """

    cert: Path
    key: Path
    names: tuple[str, ...]
    ca_bundle: Path | None = None

    def covers(self, host: str) -> bool:
        """Whether a client that dials ``host`` accepts the certificate's name."""
        return covers(self.names, host)


def covers(names: Iterable[str], host: str) -> bool:
    """Whether a certificate valid for ``names`` matches ``host`` (a name or an address).

    DNS names match case-insensitively, and ``*.example.org`` matches one label in place
    of the star, as TLS clients check them.
    """
    address = _address(host)
    if address is not None:
        return any(_address(name) == address for name in names)
    wanted = host.rstrip(".").lower()
    for name in names:
        if _address(name) is not None:
            continue
        pattern = name.rstrip(".").lower()
        if pattern == wanted:
            return True
        if pattern.startswith("*.") and "." in wanted:
            label, _, rest = wanted.partition(".")
            if label and rest == pattern[2:]:
                return True
    return False


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None


def _names_of(cert: x509.Certificate) -> tuple[str, ...]:
    from cryptography import x509  # noqa: PLC0415 - loaded only when TLS is used

    try:
        extension = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return ()
    alternatives = extension.value
    return (
        *alternatives.get_values_for_type(x509.DNSName),
        *(str(address) for address in alternatives.get_values_for_type(x509.IPAddress)),
    )


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def load_certificate(cert: Path, key: Path) -> TlsFiles:
    """Check a certificate and key given by the user, and read the names it is valid for.

    Raises:
        ConfigError: A file cannot be read, the key does not belong to the certificate or
            is encrypted, or the certificate has expired; the message says which.
    """
    from cryptography import x509  # noqa: PLC0415 - loaded only when TLS is used

    def refuse_password() -> bytes:
        raise ConfigError(f"the TLS key {key} is encrypted; give the server an unencrypted key")

    # ssl's FileNotFoundError does not say which of the two files is missing.
    for path, what in ((cert, "certificate"), (key, "key")):
        if not path.exists():
            raise ConfigError(f"TLS {what} file not found: {path}; give an existing PEM file")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key, refuse_password)
        leaf = x509.load_pem_x509_certificate(cert.read_bytes())
    except ConfigError:
        raise
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise ConfigError(
            f"cannot use the TLS certificate {cert} with the key {key}: {exc}; give a PEM "
            "certificate and the PEM private key that belongs to it"
        ) from None
    if leaf.not_valid_after_utc <= _now():
        raise ConfigError(
            f"the TLS certificate {cert} expired on {leaf.not_valid_after_utc:%Y-%m-%d}; renew it"
        )
    return TlsFiles(cert=cert, key=key, names=_names_of(leaf))


# -- the server's own CA ------------------------------------------------------------------


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _pem_cert(cert: x509.Certificate) -> bytes:
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    return cert.public_bytes(serialization.Encoding.PEM)


def _load_pair(
    cert_path: Path, key_path: Path
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    """A certificate and its key, if both load, belong together and stay valid long enough."""
    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415

    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        return None
    now = _now()
    if not cert.not_valid_before_utc <= now < cert.not_valid_after_utc - RENEW_BEFORE:
        return None
    return cert, key


def _new_key() -> ec.EllipticCurvePrivateKey:
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415

    return ec.generate_private_key(ec.SECP256R1())


def _key_usage(*allowed: str) -> x509.KeyUsage:
    """A key usage extension that allows ``allowed`` (``KeyUsage`` field names) only."""
    from cryptography import x509  # noqa: PLC0415

    flags = dict.fromkeys(
        (
            "digital_signature",
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "key_cert_sign",
            "crl_sign",
            "encipher_only",
            "decipher_only",
        ),
        False,
    )
    flags.update(dict.fromkeys(allowed, True))
    return x509.KeyUsage(**flags)


def _issue_ca(label: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import hashes  # noqa: PLC0415
    from cryptography.x509.oid import NameOID  # noqa: PLC0415

    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"juliarun_aio CA {label}")])
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage("key_cert_sign", "crl_sign"), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _alternative_name(name: str) -> x509.GeneralName:
    from cryptography import x509  # noqa: PLC0415

    address = _address(name)
    if address is not None:
        return x509.IPAddress(address)
    return x509.DNSName(name)


def _issue_server(
    names: tuple[str, ...], ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import hashes  # noqa: PLC0415
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: PLC0415

    key = _new_key()
    now = _now()
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(min(now + SERVER_LIFETIME, ca.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage("digital_signature"), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([_alternative_name(name) for name in names]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def certificate_names(names: Iterable[str]) -> tuple[str, ...]:
    """The names among ``names`` that a certificate can hold, each once, in order.

    Addresses keep their canonical form; DNS names are lowercased; anything else (an
    IPv6 address with a zone, a name with characters DNS does not allow) is dropped.
    """
    kept: dict[str, None] = {}
    for name in names:
        address = _address(name)
        if address is not None:
            kept[str(address)] = None
        elif _DNS_NAME.fullmatch(name):
            kept[name.rstrip(".").lower()] = None
    return tuple(kept)


def self_signed(data_dir: Path, names: Iterable[str], label: str) -> TlsFiles:
    """The server's own CA and certificate in ``data_dir/tls``, made or renewed as needed.

    Args:
        data_dir: The data directory (the caller holds its lock).
        names: The DNS names and addresses the certificate must be valid for, the one
            clients are told first.
        label: Tells this CA apart from others in a client's trust store (the host's name).

    Returns:
        The server's certificate and key, and ``ca.pem`` as the bundle clients trust.

    Raises:
        ConfigError: ``names`` holds nothing a certificate can name.
        OSError: The files cannot be written.
    """
    from cryptography.exceptions import InvalidSignature  # noqa: PLC0415

    wanted = certificate_names(names)
    if not wanted:
        raise ConfigError("no name or address to issue the server's TLS certificate for")
    directory = make_private_dirs(data_dir / TLS_DIR)
    ca_path, ca_key_path = directory / "ca.pem", directory / "ca-key.pem"
    cert_path, key_path = directory / "server.pem", directory / "server-key.pem"
    ca_pair = _load_pair(ca_path, ca_key_path)
    if ca_pair is None:
        if ca_path.exists():
            # Clients given the old ca.pem refuse the server from now on: say so.
            logger.warning(
                "the server's CA in %s is unreadable, does not match its key or expires "
                "within %d days: made a new one; clients must trust the new %s",
                directory,
                RENEW_BEFORE.days,
                ca_path,
            )
        ca_pair = _issue_ca(label)
        write_private(ca_key_path, _pem_key(ca_pair[1]))
        write_private(ca_path, _pem_cert(ca_pair[0]))
    ca, ca_key = ca_pair
    server = _load_pair(cert_path, key_path)
    current = server is not None and set(_names_of(server[0])) == set(wanted)
    if server is not None and current:
        try:
            server[0].verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            current = False
    if server is None or not current:
        cert, key = _issue_server(wanted, ca, ca_key)
        write_private(key_path, _pem_key(key))
        write_private(cert_path, _pem_cert(cert))
    return TlsFiles(cert=cert_path, key=key_path, names=wanted, ca_bundle=ca_path)
