"""Signing the Apple configuration profile with the server's own certificate.

An unsigned `.mobileconfig` is shown as "Unverified" on the device. Signed (CMS SignedData with
the profile attached, RFC 5652 §5, DER — the form Apple's tools make) with a certificate whose
chain the device trusts (the ACME one, or a commercial one in `[tls]`), it is shown as
"Verified" with the server's name, and the device can tell that nobody on the way changed the
servers in it. With the self-signed certificate the signature is still made (the device then
says "Not Verified", as for an unsigned profile).

The pair is read once and again only when the certificate file changes (a renewal), so a
profile request costs one signature, not two file reads and a key parse. A key the service
user cannot read (a root-only `[tls] key`) leaves profiles unsigned, logged once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7

log = logging.getLogger("mailhouse.autoconfig")

Signing = tuple[list[x509.Certificate], rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey]


class ProfileSigner:
    """`pair`: where the certificate (chain) and key the listeners present are, now."""

    def __init__(self, pair: Callable[[], tuple[Path, Path]]) -> None:
        self._pair = pair
        self._lock = threading.Lock()
        self._loaded: tuple[tuple[Path, int, int], Signing] | None = None
        self._failed: tuple[Path, int, int] | None = None

    def sign(self, profile: bytes) -> bytes:
        """The profile as CMS SignedData (DER), or as given when no usable pair is there."""
        signing = self._signing()
        if signing is None:
            return profile
        chain, key = signing
        builder = pkcs7.PKCS7SignatureBuilder().set_data(profile).add_signer(
            chain[0], key, hashes.SHA256())
        for extra in chain[1:]:
            builder = builder.add_certificate(extra)
        # Binary: the profile exactly as made (without it, newlines become CRLF: S/MIME's
        # canonical text form, RFC 8551 §3.1.1, which a plist is not).
        return builder.sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])

    def _signing(self) -> Signing | None:
        try:
            cert, key = self._pair()
            stat = cert.stat()
        except OSError:
            return None
        stamp = (cert, stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if self._loaded is not None and self._loaded[0] == stamp:
                return self._loaded[1]
            if self._failed == stamp:
                return None
            try:
                chain = x509.load_pem_x509_certificates(cert.read_bytes())
                private = serialization.load_pem_private_key(key.read_bytes(), password=None)
                if not isinstance(private, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
                    raise ValueError(f"a {type(private).__name__} cannot sign a profile")
            except (OSError, ValueError) as exc:
                self._failed = stamp
                log.warning("event=autoconfig.profile_unsigned cert=%s error=%s", cert, exc)
                return None
            self._loaded = (stamp, (chain, private))
            return chain, private
