"""The answers to pending ACME challenges, shared between the ACME exchange (a worker thread)
and the listeners that the CA contacts (the event loop): HTTP-01 tokens (RFC 8555 §8.3) and
TLS-ALPN-01 certificates (RFC 8737). Entries live only while an order is being validated.
"""

from __future__ import annotations

import datetime
import hashlib
import re
import threading
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

# RFC 8555 §8.3: the token is base64url without padding; §8.1: at least 128 bits of entropy.
# Longer than any CA's token, so the HTTP listener refuses junk before looking it up.
MAX_TOKEN: Final = 256
TOKEN_PATTERN: Final = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_TOKEN}}}")
# RFC 8737 §3: the acmeIdentifier extension, id-pe-acmeIdentifier.
ACME_IDENTIFIER_OID: Final = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")
ACME_TLS_ALPN: Final = "acme-tls/1"
CHALLENGE_CERT_LIFETIME: Final = datetime.timedelta(days=7)


class ChallengeBoard:
    """Thread-safe: written by the ACME thread, read by the listeners."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._http: dict[str, str] = {}
        self._alpn: dict[str, tuple[bytes, bytes]] = {}

    def put_http(self, token: str, key_authorization: str) -> None:
        if not TOKEN_PATTERN.fullmatch(token):
            raise ValueError(f"not an ACME token: {token[:40]!r}")
        with self._lock:
            self._http[token] = key_authorization

    def http_answer(self, token: str) -> str | None:
        if not TOKEN_PATTERN.fullmatch(token):
            return None
        with self._lock:
            return self._http.get(token)

    def put_alpn(self, name: str, key_authorization: str) -> None:
        """A self-signed certificate for `name` carrying SHA-256(key authorization) in the
        critical acmeIdentifier extension (RFC 8737 §3)."""
        pair = alpn_certificate(name, key_authorization)
        with self._lock:
            self._alpn[name.lower()] = pair

    def alpn_pair(self, name: str) -> tuple[bytes, bytes] | None:
        """(cert PEM, key PEM) to serve for `name` on `acme-tls/1`, or None."""
        with self._lock:
            return self._alpn.get(name.lower())

    def alpn_pending(self) -> bool:
        with self._lock:
            return bool(self._alpn)

    def clear(self) -> None:
        with self._lock:
            self._http.clear()
            self._alpn.clear()


def alpn_certificate(name: str, key_authorization: str) -> tuple[bytes, bytes]:
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    # The extension's value is the DER OCTET STRING holding the digest (RFC 8737 §3).
    value = b"\x04\x20" + digest
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + CHALLENGE_CERT_LIFETIME)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.UnrecognizedExtension(ACME_IDENTIFIER_OID, value), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem
