"""What an operator wants to know about the server's certificate (the admin API and pages):
who it names, who issued it, until when, and whether it is the self-signed stand-in that
clients refuse."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from mailhouse.config import Config
from mailhouse.service.acme_files import current_pair

SELF_SIGNED_CERT: Final = ("tls", "selfsigned-cert.pem")  # under data_dir (net/tls.py)


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    path: str
    subject: str  # RFC 4514 string
    issuer: str
    names: tuple[str, ...]  # subjectAltName DNS names
    not_before: float  # epoch seconds
    not_after: float
    self_signed: bool

    def days_left(self, now: float) -> int:
        return int((self.not_after - now) // 86400)


def presented_certificate(config: Config) -> tuple[str, Path | None]:
    """(source, file) of the certificate `serve` presents, in App.tls_files' order: `tls.cert`
    ("configured"), else the ACME pair once issued ("acme"), else the self-signed one once
    made ("self-signed"; None before the first start). Every face asks here."""
    if config.tls.cert is not None:
        return "configured", config.tls.cert
    pair = current_pair(config.data_dir) if config.acme.enabled else None
    if pair is not None:
        return "acme", pair[0]
    path = config.data_dir.joinpath(*SELF_SIGNED_CERT)
    return "self-signed", path if path.exists() else None


def describe(path: Path) -> CertificateInfo:
    """OSError or ValueError when the file is not a readable PEM certificate."""
    cert = x509.load_pem_x509_certificates(path.read_bytes())[0]
    try:
        names = tuple(cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        names = ()
    self_signed = cert.issuer == cert.subject
    if self_signed:
        try:
            cert.verify_directly_issued_by(cert)
        except (InvalidSignature, ValueError, TypeError):
            self_signed = False
    return CertificateInfo(str(path), cert.subject.rfc4514_string(),
                           cert.issuer.rfc4514_string(), names,
                           cert.not_valid_before_utc.timestamp(),
                           cert.not_valid_after_utc.timestamp(), self_signed)
