"""A local certificate authority and server certificate for the Deployment Engine.

The SuperLink serves its Fleet, Control and Runtime APIs over HTTPS by default. On one machine (or a
private network) FleetFL makes its own CA with ``cryptography`` and signs a server certificate for
the addresses the SuperLink listens on (``127.0.0.1`` and ``localhost`` by default). SuperNodes and
``flwr`` trust only that CA (``--root-certificates`` / ``root-certificates`` in Flower's
``config.toml``).

Files live in ``<state_dir>/tls/``: ``ca.crt``, ``ca.key``, ``server.crt``, ``server.key``. Private
keys are written with mode 0600 (the folder 0700), every file atomically (temp file + ``os.replace``).
Existing material is reused when it is still valid: parsable, not expiring within
:data:`RENEW_BEFORE`, the server certificate signed by the CA, its key matching, and its SANs covering
every requested host. Otherwise only what is invalid is regenerated.

SuperNode authentication (Flower's ``--enable-supernode-auth``): :func:`ensure_node_key` makes one
EC key pair per SuperNode in OpenSSH format (``<state_dir>/tls/nodes/<name>.key``/``.pub``); the
public key is registered at the SuperLink (``flwr supernode register``) and the SuperNode proves
it holds the private key (``--auth-supernode-private-key``). Unregistered nodes are refused.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LOG = logging.getLogger(__name__)

#: Hosts the server certificate covers unless told otherwise.
DEFAULT_HOSTS: tuple[str, ...] = ("127.0.0.1", "localhost")
#: Validity of a new CA and of a new server certificate.
CA_VALIDITY = dt.timedelta(days=3650)
SERVER_VALIDITY = dt.timedelta(days=825)
#: Material that expires sooner than this is regenerated.
RENEW_BEFORE = dt.timedelta(days=7)

_KEY_MODE = 0o600
_CERT_MODE = 0o644
_DIR_MODE = 0o700


class TLSError(ValueError):
    """TLS material that cannot be used or made (bad host name, unreadable file)."""


@dataclass(frozen=True)
class TLSMaterial:
    """Paths of the PEM files a SuperLink and its SuperNodes need.

    Attributes:
        ca_cert: the CA certificate: ``--ssl-ca-certfile`` of the SuperLink, ``--root-certificates``
            of SuperNodes and ``root-certificates`` of the ``flwr`` CLI.
        server_cert: the SuperLink's certificate (``--ssl-certfile``).
        server_key: the SuperLink's private key (``--ssl-keyfile``, mode 0600).
        ca_key: the CA's private key (mode 0600); only needed to sign new server certificates.
        hosts: the host names and IP addresses the server certificate is valid for.
    """

    ca_cert: Path
    server_cert: Path
    server_key: Path
    ca_key: Path
    hosts: tuple[str, ...]

    def superlink_args(self) -> list[str]:
        """Command-line flags that make ``flower-superlink`` serve HTTPS with this material."""
        return [
            "--ssl-ca-certfile",
            str(self.ca_cert),
            "--ssl-certfile",
            str(self.server_cert),
            "--ssl-keyfile",
            str(self.server_key),
        ]

    def supernode_args(self) -> list[str]:
        """Command-line flags that make ``flower-supernode`` trust the SuperLink's certificate."""
        return ["--root-certificates", str(self.ca_cert)]


def ensure_tls(state_dir: Path, hosts: Sequence[str] = DEFAULT_HOSTS) -> TLSMaterial:
    """Return valid TLS material under ``state_dir/tls``, creating or renewing what is needed.

    Args:
        state_dir: FleetFL's state folder (for instance the value of ``configure_offline()``).
        hosts: DNS names and IP addresses the SuperLink is reached at (all go into the SANs).

    Returns:
        The paths of the CA and server certificate and key.

    Raises:
        TLSError: a host is empty, or an existing file cannot be replaced.
    """
    hosts = tuple(dict.fromkeys(h.strip() for h in hosts))
    if not hosts or any(not h for h in hosts):
        raise TLSError(f"TLS hosts must be non-empty names or IP addresses, got {list(hosts)!r}")
    folder = Path(state_dir) / "tls"
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, _DIR_MODE)
    material = TLSMaterial(
        ca_cert=folder / "ca.crt",
        server_cert=folder / "server.crt",
        server_key=folder / "server.key",
        ca_key=folder / "ca.key",
        hosts=hosts,
    )
    now = dt.datetime.now(dt.UTC)
    ca = _load_valid_ca(material, now)
    if ca is None:
        LOG.info("Creating a local certificate authority in %s", folder)
        ca = _create_ca(material, now)
        server_ok = False
    else:
        server_ok = _server_cert_is_valid(material, ca[0], now)
    if not server_ok:
        LOG.info("Creating the SuperLink certificate for %s", ", ".join(hosts))
        _create_server_cert(material, ca, now)
    return material


@dataclass(frozen=True)
class NodeKey:
    """A SuperNode's authentication key pair (OpenSSH format)."""

    private_key: Path
    public_key: Path


def ensure_node_key(state_dir: Path, name: str) -> NodeKey:
    """Return the key pair of SuperNode ``name`` under ``state_dir/tls/nodes``, creating it if needed.

    Raises:
        TLSError: ``name`` is not a plain file name, or the files cannot be written.
    """
    if not name or Path(name).name != name or name.startswith("."):
        raise TLSError(f"node key name must be a plain file name, got {name!r}")
    folder = Path(state_dir) / "tls" / "nodes"
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, _DIR_MODE)
    pair = NodeKey(private_key=folder / f"{name}.key", public_key=folder / f"{name}.pub")
    try:
        key = serialization.load_ssh_private_key(pair.private_key.read_bytes(), password=None)
        public = serialization.load_ssh_public_key(pair.public_key.read_bytes())
        if isinstance(key, ec.EllipticCurvePrivateKey) and _ssh_public(key) == _ssh_public_of(public):
            return pair
    except (OSError, ValueError, TypeError):
        pass
    key = ec.generate_private_key(ec.SECP384R1())
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    _write_atomic(pair.private_key, private_pem, _KEY_MODE)
    _write_atomic(pair.public_key, _ssh_public(key) + b"\n", _CERT_MODE)
    return pair


def _ssh_public(key: ec.EllipticCurvePrivateKey) -> bytes:
    return _ssh_public_of(key.public_key())


def _ssh_public_of(public: object) -> bytes:
    return public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)  # type: ignore[attr-defined]


def _create_ca(
    material: TLSMaterial, now: dt.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "FleetFL local CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_atomic(material.ca_key, _key_pem(key), _KEY_MODE)
    _write_atomic(material.ca_cert, cert.public_bytes(serialization.Encoding.PEM), _CERT_MODE)
    return cert, key


def _create_server_cert(
    material: TLSMaterial,
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    now: dt.datetime,
) -> None:
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, material.hosts[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(min(now + SERVER_VALIDITY, ca_cert.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName(_san_entries(material.hosts)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_atomic(material.server_key, _key_pem(key), _KEY_MODE)
    _write_atomic(material.server_cert, cert.public_bytes(serialization.Encoding.PEM), _CERT_MODE)


def _load_valid_ca(
    material: TLSMaterial, now: dt.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    """The CA certificate and key when both exist, match, and stay valid long enough."""
    try:
        cert = x509.load_pem_x509_certificate(material.ca_cert.read_bytes())
        key = serialization.load_pem_private_key(material.ca_key.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not _same_public_key(cert, key):
        return None
    if not _in_validity(cert, now):
        return None
    return cert, key


def _server_cert_is_valid(material: TLSMaterial, ca_cert: x509.Certificate, now: dt.datetime) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(material.server_cert.read_bytes())
        key = serialization.load_pem_private_key(material.server_key.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return False
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not _same_public_key(cert, key):
        return False
    if not _in_validity(cert, now) or cert.issuer != ca_cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    return set(_san_entries(material.hosts)) <= set(sans)


def _in_validity(cert: x509.Certificate, now: dt.datetime) -> bool:
    return cert.not_valid_before_utc <= now and cert.not_valid_after_utc - RENEW_BEFORE > now


def _same_public_key(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> bool:
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    return cert.public_key().public_bytes(der, spki) == key.public_key().public_bytes(der, spki)


def _san_entries(hosts: Sequence[str]) -> list[x509.GeneralName]:
    entries: list[x509.GeneralName] = []
    for host in hosts:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            entries.append(x509.DNSName(host))
    return entries


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` via a temp file created with ``mode`` (keys never world-readable)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise TLSError(f"cannot write {path}: {exc}") from exc
