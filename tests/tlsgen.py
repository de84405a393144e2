"""Throw-away PKI for TLS tests: a CA, a server certificate and client certificates.

Generated with the ``cryptography`` package (dev extra) in a temporary directory; EC P-256
keys so generation takes milliseconds. Nothing here is fit for production use.

Usage::

    pki = make_pki(tmp_path, server_ips=["127.0.0.1"])
    auth.server_credentials(pki.server_cert, pki.server_key, pki.ca_cert)   # mutual TLS
    credentials.channel_credentials(pki.ca_cert, pki.client_cert, pki.client_key)

``rogue_cert``/``rogue_key`` are a client pair signed by a *different* CA, which a mutual-TLS
server must refuse.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class PKI:
    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_ca_cert: Path
    rogue_cert: Path
    rogue_key: Path
    client2_cert: Path  # a second worker (CN worker-2, SAN DNS worker-2.hgo): another identity
    client2_key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    path.chmod(0o600)
    return path


def _write_cert(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _ca(cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
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
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(
    cn: str,
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    *,
    server: bool,
    dns: Sequence[str] = (),
    ips: Sequence[str] = (),
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca[0].subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    )
    alt: list[x509.GeneralName] = [x509.DNSName(n) for n in dns]
    alt += [x509.IPAddress(ipaddress.ip_address(a)) for a in ips]
    if alt:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    return builder.sign(ca[1], hashes.SHA256()), key


def make_pki(
    directory: Path,
    *,
    server_ips: Sequence[str] = ("127.0.0.1", "::1"),
    server_dns: Sequence[str] = ("localhost",),
) -> PKI:
    """Write a CA, a server pair (SAN ``server_dns`` + ``server_ips``) and client pairs in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = _ca("hgo test CA")
    rogue_ca = _ca("someone else's CA")
    server = _leaf("hgo-server", ca, server=True, dns=server_dns, ips=server_ips)
    client = _leaf("worker-1", ca, server=False)
    rogue = _leaf("worker-1", rogue_ca, server=False)
    client2 = _leaf("worker-2", ca, server=False, dns=["worker-2.hgo"])
    return PKI(
        ca_cert=_write_cert(directory / "ca.pem", ca[0]),
        server_cert=_write_cert(directory / "server.pem", server[0]),
        server_key=_write_key(directory / "server.key", server[1]),
        client_cert=_write_cert(directory / "client.pem", client[0]),
        client_key=_write_key(directory / "client.key", client[1]),
        rogue_ca_cert=_write_cert(directory / "rogue-ca.pem", rogue_ca[0]),
        rogue_cert=_write_cert(directory / "rogue.pem", rogue[0]),
        rogue_key=_write_key(directory / "rogue.key", rogue[1]),
        client2_cert=_write_cert(directory / "client2.pem", client2[0]),
        client2_key=_write_key(directory / "client2.key", client2[1]),
    )
