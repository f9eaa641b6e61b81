"""TLS for every listener: the server context, and a self-signed certificate made once on first
start when the operator configured none (so STARTTLS works out of the box; peers that verify will
want a real certificate, see docs/operations.md)."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mailhouse.private_files import write_private


def ensure_self_signed(directory: Path, hostname: str) -> tuple[Path, Path]:
    """Return (cert, key) under `directory`, creating them the first time (both mode 0600,
    directory 0700). Called after privileges were dropped: the pair belongs to the service
    user."""
    cert_path, key_path = directory / "selfsigned-cert.pem", directory / "selfsigned-key.pem"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    alt: list[x509.GeneralName] = [x509.DNSName(hostname)]
    with contextlib.suppress(ValueError):
        alt = [x509.IPAddress(ipaddress.ip_address(hostname))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_bytes = key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
    # Each file replaced whole; the pair counts as made once both exist.
    write_private(directory, key_path, key_bytes)
    write_private(directory, cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """TLS 1.2 or newer only (RFC 8996, security checklist item 8)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    ctx.options |= ssl.OP_NO_COMPRESSION  # CRIME
    return ctx


def reload_certificate(ctx: ssl.SSLContext, cert: Path, key: Path) -> str | None:
    """Load a renewed certificate and key into `ctx` in place: every listener holding the
    context hands the new pair to the handshakes that start from now on, and sessions already
    established keep theirs (nothing is dropped). None when done, else why not (the old pair
    stays: a bad renewal never leaves the server without a certificate)."""
    try:
        check = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        check.load_cert_chain(cert, key)  # the pair must load on its own first
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def describe(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str | None:
    """`TLSv1.3 TLS_AES_256_GCM_SHA384` for logs and the Received header."""
    if ssl_object is None:
        return None
    cipher = ssl_object.cipher()
    version = ssl_object.version() or "TLS"
    return f"{version} {cipher[0]}" if cipher else version
