"""A real mailhouse serving IMAP on loopback (`mailhouse serve` as a subprocess), for socket
tests and for the interop tests of tests/interop/test_imap_clients.py.

`start_mailhouse_imap` writes a certificate for 127.0.0.1 (so clients verify it against
exactly that file, `cafile`, never with verification off), configures it as `[tls]`, adds
the domain example.test and one user, and starts the server with the imap (STARTTLS) and imaps
(implicit TLS) listeners, plus smtp to deliver with. `ports` is keyed like
tests/helpers/imap_clients.py's `TlsMode`: "starttls" is the imap port, "implicit" the imaps
port. The user name is the full address. Nothing here knows the server's internals: it goes
through the config file and the CLI, as tests/helpers/mailhouse.py does.

The `mailhouse_imap` fixture (module scope: one server for a test module; `new_user()` gives
each test its own account) is registered by importing it where it is used::

    from tests.helpers.mailhouse_imap import mailhouse_imap  # noqa: F401
"""

from __future__ import annotations

import datetime
import ipaddress
import itertools
import ssl
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.helpers.fixtures import start_mailhouse
from tests.helpers.mailhouse import DEFAULT_HOSTNAME, MailhouseServer
from tests.helpers.net import LOOPBACK

DOMAIN = "example.test"
IMAP_USER = f"imap-user@{DOMAIN}"
IMAP_PASSWORD = "imap-test-password"  # a throwaway account on a loopback-only server
# Failed logins are answered after this long (the real default is 1 s; tests wait less).
FAILURE_DELAY = 0.3


@dataclass
class MailhouseImap:
    """One running server as an IMAP client sees it (see the module docstring)."""

    server: MailhouseServer
    host: str
    ports: dict[str, int]
    user: str
    password: str
    cafile: Path
    _users: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def new_user(self, password: str = IMAP_PASSWORD) -> tuple[str, str]:
        """A fresh account (address, password): its mailboxes are its own."""
        address = f"user{next(self._users):03d}@{DOMAIN}"
        self.server.add_user(address, password)
        return address, password

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts exactly the server's certificate."""
        return ssl.create_default_context(cafile=str(self.cafile))

    def close(self) -> None:
        self.server.close()


def write_certificate(directory: Path, hostname: str = DEFAULT_HOSTNAME) -> tuple[Path, Path]:
    """A self-signed P-256 certificate for 127.0.0.1 and `hostname` (PEM), and its key."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, LOOPBACK)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([
            x509.IPAddress(ipaddress.ip_address(LOOPBACK)), x509.DNSName(hostname)]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "imap-cert.pem", directory / "imap-key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_file.chmod(0o600)
    return cert_file, key_file


def start_mailhouse_imap(base_dir: Path, *, workers: int = 1, extra_toml: str = "",
                         imap_toml: str = "", limits_toml: str = "",
                         submission_toml: str = "",
                         protocols: Iterable[str] = ("smtp", "imap", "imaps"),
                         ) -> MailhouseImap:
    """Start a server with IMAP (`[imap] workers = workers`) and return how to reach it.

    imap_toml / limits_toml / submission_toml: more lines for those tables; extra_toml: more
    tables."""
    cert, key = write_certificate(base_dir / "tls")
    toml = "\n".join([
        "[tls]", f'cert = "{cert}"', f'key = "{key}"', "",
        "[imap]", f"workers = {workers}", imap_toml, "",
        "[submission]", f"auth_failure_delay = {FAILURE_DELAY}", submission_toml, "",
        extra_toml])
    server = start_mailhouse(
        base_dir / "mailhouse", domains=(DOMAIN,), users={IMAP_USER: IMAP_PASSWORD},
        protocols=tuple(protocols), extra_toml=toml, extra_limits=limits_toml,
        max_message_size=10 * 1024 * 1024)
    ports = {mode: server.port(name) for mode, name in (("starttls", "imap"),
                                                        ("implicit", "imaps"))
             if name in server.ports}
    return MailhouseImap(server, LOOPBACK, ports, IMAP_USER, IMAP_PASSWORD, cert)


@pytest.fixture(scope="module")
def mailhouse_imap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MailhouseImap]:
    """A started mailhouse with IMAP in the main process (`[imap] workers = 1`)."""
    instance = start_mailhouse_imap(tmp_path_factory.mktemp("mailhouse-imap"))
    try:
        yield instance
    finally:
        print(instance.server.log_tail(100))
        instance.close()
