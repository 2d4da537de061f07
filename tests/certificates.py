"""Self-signed TLS certificates for tests that run a TLS server here (nginx in front of the
relay, a fake LND): one maker instead of a copy per test module."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec


def self_signed(
    directory: Path,
    *,
    name: x509.NameAttribute,
    dns_names: tuple[str, ...] = (),
    files: tuple[str, str] = ("cert.pem", "key.pem"),
) -> tuple[Path, Path]:
    """A certificate (valid for a day, for 127.0.0.1 and ``dns_names``) and its key, written
    as PEM to ``directory`` under ``files``; returns their paths."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([name])
    now = dt.datetime.now(dt.UTC)
    alt: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
    alt.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / files[0], directory / files[1]
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path
