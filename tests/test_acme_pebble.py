"""ACME issuance against a real local CA (Pebble, really validating): HTTP-01 and TLS-ALPN-01
through the server's own listeners, renewal inside the window only, and failures (CA
unreachable, challenge failing) that keep the old certificate and record the error."""

from __future__ import annotations

import asyncio
import datetime
import imaplib
import json
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from cryptography import x509

from mailhouse.net.acme_http import challenge_app, install_alpn_responder
from mailhouse.net.http import HttpListener
from mailhouse.net.listener import bind_sockets
from mailhouse.net.tls import ensure_self_signed, server_context
from mailhouse.service.acme_challenges import ChallengeBoard
from mailhouse.service.acme_client import AcmeSettings
from mailhouse.service.acme_files import current_pair, install_pair, load_state
from mailhouse.service.acme_renewal import RenewalService
from tests.helpers.dns import DnsServer
from tests.helpers.mailhouse import MailhouseServer
from tests.helpers.net import free_ports, served_serial, wait_until
from tests.helpers.pebble import Pebble
from tests.helpers.tools import require_tools

pytestmark = pytest.mark.interop

NAMES = ("mx.example.test", "mta-sts.example.test")


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    with DnsServer({name: {"A": ["127.0.0.1"]} for name in NAMES}) as server:
        yield server


@pytest.fixture
def ports() -> tuple[int, int]:
    http_port, tls_port = free_ports(2)
    return http_port, tls_port


@pytest.fixture
def pebble(tmp_path: Path, dns: DnsServer, ports: tuple[int, int]) -> Iterator[Pebble]:
    require_tools("pebble")
    with Pebble(tmp_path / "pebble", dns.nameserver, http_port=ports[0],
                tls_port=ports[1]) as ca:
        yield ca


def acme_toml(pebble: Pebble, http_port: int, extra: str = "") -> str:
    return (f'[acme]\nenabled = true\ndirectory = "{pebble.directory}"\n'
            f'ca_bundle = "{pebble.ca_bundle}"\nextra_names = ["{NAMES[1]}"]\n'
            f'http_listen = ["127.0.0.1:{http_port}"]\n{extra}')


def settings(pebble: Pebble, data_dir: Path, challenges: tuple[str, ...] = ("http-01",),
             directory: str | None = None) -> AcmeSettings:
    return AcmeSettings(directory=directory or pebble.directory, names=NAMES,
                        challenges=challenges, data_dir=data_dir,
                        contact="postmaster@example.test", ca_bundle=pebble.ca_bundle,
                        order_deadline=60)


async def with_http_listener(port: int, board: ChallengeBoard, service: RenewalService,
                             force: bool = False) -> bool:
    listener = HttpListener(challenge_app(board), bind_sockets("127.0.0.1", port), None,
                            name="acme-http")
    await listener.start()
    try:
        return await service.check(force=force)
    finally:
        await listener.stop()


def issued_by(pebble: Pebble, cert_path: Path) -> None:
    """The chain verifies up to this run's Pebble root and names every requested name."""
    roots = ssl.create_default_context(cadata=pebble.roots().decode())
    leaf = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(san.get_values_for_type(x509.DNSName)) == sorted(NAMES)
    chain = x509.load_pem_x509_certificates(cert_path.read_bytes())
    assert len(chain) >= 2  # leaf and intermediate: what clients need
    assert roots.get_ca_certs()  # the root loads; full path checked by the TLS test below


def test_http01_obtains_and_installs_a_certificate(tmp_path: Path, pebble: Pebble,
                                                   ports: tuple[int, int]) -> None:
    data_dir = tmp_path / "data"
    board = ChallengeBoard()
    reloads: list[int] = []
    service = RenewalService(settings(pebble, data_dir), 30, 3600, board,
                             on_installed=lambda: reloads.append(1))
    assert service.due()  # nothing yet
    assert asyncio.run(with_http_listener(ports[0], board, service)) is True
    pair = current_pair(data_dir)
    assert pair is not None
    issued_by(pebble, pair[0])
    assert reloads == [1]
    assert (data_dir / "acme" / "account-key.pem").stat().st_mode & 0o777 == 0o600
    assert pair[1].stat().st_mode & 0o777 == 0o600
    state = load_state(data_dir)
    assert state is not None and state.last_error is None and state.last_success is not None
    assert state.not_after is not None and state.failures == 0
    assert not service.due()  # Pebble's certificates outlive the 30-day window
    # A second run reuses the account (same key: RFC 8555 §7.3.1) and renews on request.
    first = pair[0].resolve()
    assert asyncio.run(with_http_listener(ports[0], board, service, force=True)) is True
    second = current_pair(data_dir)
    assert second is not None and second[0].resolve() != first
    assert board.http_answer("x") is None  # answers are withdrawn after each order


def test_renews_only_inside_the_window(tmp_path: Path, pebble: Pebble,
                                       ports: tuple[int, int]) -> None:
    data_dir = tmp_path / "data"
    ca = trustme.CA()
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=10)
    old = ca.issue_cert(*NAMES, not_after=soon)
    install_pair(data_dir, old.cert_chain_pems[0].bytes(), old.private_key_pem.bytes())
    board = ChallengeBoard()
    outside = RenewalService(settings(pebble, data_dir), 5, 3600, board)
    assert asyncio.run(with_http_listener(ports[0], board, outside)) is False  # 10 > 5 days
    assert outside.state.next_check is not None
    inside = RenewalService(settings(pebble, data_dir), 30, 3600, board)
    assert asyncio.run(with_http_listener(ports[0], board, inside)) is True
    pair = current_pair(data_dir)
    assert pair is not None
    issued_by(pebble, pair[0])
    assert inside.state.not_after is not None and inside.state.not_after > soon.timestamp()


def test_tls_alpn01_on_the_https_listener(tmp_path: Path, pebble: Pebble,
                                          ports: tuple[int, int]) -> None:
    """RFC 8737: the CA connects to the HTTPS port with ALPN acme-tls/1 and gets the challenge
    certificate; everything else on that listener keeps getting the server's certificate."""
    data_dir = tmp_path / "data"
    cert, key = ensure_self_signed(tmp_path / "tls", NAMES[0])
    tls = server_context(cert, key)
    board = ChallengeBoard()
    install_alpn_responder(tls, board)

    async def scenario() -> bool:
        async def plain_app(scope: object, receive: object, send: object) -> None:
            return None

        web = HttpListener(plain_app, bind_sockets("127.0.0.1", ports[1]), tls, name="web")
        await web.start()
        try:
            service = RenewalService(settings(pebble, data_dir, ("tls-alpn-01",)), 30, 3600,
                                     board)
            return await service.check()
        finally:
            await web.stop()

    assert asyncio.run(scenario()) is True
    pair = current_pair(data_dir)
    assert pair is not None
    issued_by(pebble, pair[0])


def test_ca_unreachable_keeps_the_old_certificate(tmp_path: Path, pebble: Pebble,
                                                  ports: tuple[int, int]) -> None:
    data_dir = tmp_path / "data"
    ca = trustme.CA()
    old = ca.issue_cert(*NAMES, not_after=datetime.datetime.now(datetime.UTC)
                        + datetime.timedelta(days=3))
    before = install_pair(data_dir, old.cert_chain_pems[0].bytes(),
                          old.private_key_pem.bytes())
    closed = free_ports(1)[0]
    board = ChallengeBoard()
    service = RenewalService(settings(pebble, data_dir, directory=f"https://127.0.0.1:{closed}/d"),
                             30, 3600, board)
    assert asyncio.run(service.check()) is False
    assert service.state.last_error and "Connection" in service.state.last_error
    assert service.state.failures == 1
    first_retry = service.state.next_check
    assert asyncio.run(service.check()) is False
    assert service.state.failures == 2  # backoff grows
    assert service.state.next_check is not None and first_retry is not None
    pair = current_pair(data_dir)
    assert pair is not None and pair[0].resolve() == before[0].resolve()
    saved = load_state(data_dir)
    assert saved is not None and saved.last_error == service.state.last_error


def test_failing_challenge_keeps_the_old_certificate(tmp_path: Path, pebble: Pebble,
                                                     ports: tuple[int, int],
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """Nothing listens on the HTTP-01 port: Pebble's validation fails, the order is invalid."""
    data_dir = tmp_path / "data"
    ca = trustme.CA()
    old = ca.issue_cert(*NAMES)
    before = install_pair(data_dir, old.cert_chain_pems[0].bytes(),
                          old.private_key_pem.bytes())
    service = RenewalService(settings(pebble, data_dir), 30, 3600, ChallengeBoard())
    with socket.socket() as closed:  # hold the port so nothing else answers on it
        closed.bind(("127.0.0.1", ports[0]))
        assert asyncio.run(service.check(force=True)) is False
    assert service.state.last_error is not None
    assert "challenge failed" in service.state.last_error
    assert "event=acme.renewal_failed" in caplog.text
    pair = current_pair(data_dir)
    assert pair is not None and pair[0].resolve() == before[0].resolve()


@pytest.mark.slow
def test_serve_renews_inside_the_window_without_dropping_sessions(
        tmp_path: Path, pebble: Pebble, ports: tuple[int, int]) -> None:
    """`mailhouse serve` with [acme]: the pair in place expires just after the window opens;
    the renewal task renews it, every process (an IMAP worker too) serves the new one, and a
    session opened on the old one keeps working."""
    server = MailhouseServer(
        tmp_path / "mh", protocols=("smtp", "submissions", "imaps"), hostname=NAMES[0],
        extra_toml=acme_toml(pebble, ports[0], "check_interval = 1\n[imap]\nworkers = 2\n"))
    server.add_domain("example.test")
    server.add_user("alice@example.test", "correct horse battery")
    old = trustme.CA().issue_cert(*NAMES, not_after=datetime.datetime.now(datetime.UTC)
                                  + datetime.timedelta(days=30, seconds=25))
    install_pair(server.data_dir, old.cert_chain_pems[0].bytes(), old.private_key_pem.bytes())
    old_serial = x509.load_pem_x509_certificate(old.cert_chain_pems[0].bytes()).serial_number
    server.start()
    try:
        assert served_serial(server.port("submissions")) == old_serial
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        before = imaplib.IMAP4_SSL("127.0.0.1", server.port("imaps"), ssl_context=context,
                                   timeout=10)
        before.login("alice@example.test", "correct horse battery")

        def renewed() -> bool:
            return served_serial(server.port("submissions")) != old_serial

        assert wait_until(renewed, timeout=90, interval=0.5), server.log_tail()
        assert wait_until(lambda: {served_serial(server.port("imaps")) for _ in range(6)}
                          != {old_serial}, timeout=15, interval=0.2)
        pair = current_pair(server.data_dir)
        assert pair is not None
        issued_by(pebble, pair[0])
        verified = ssl.create_default_context(cadata=pebble.roots().decode())
        with socket.create_connection(("127.0.0.1", server.port("submissions")), 10) as raw, \
                verified.wrap_socket(raw, server_hostname=NAMES[0]) as tls:
            assert tls.version()  # the served chain verifies up to the CA's root
        assert before.noop()[0] == "OK"  # the session opened on the old pair still works
        before.logout()
        log = server.log_path.read_text()
        assert "event=acme.issued" in log and "event=tls.reloaded" in log
        state = load_state(server.data_dir)
        assert state is not None and state.last_error is None
    finally:
        server.stop()


def test_cli_cert_renew_and_status(tmp_path: Path, pebble: Pebble,
                                   ports: tuple[int, int]) -> None:
    server = MailhouseServer(tmp_path / "mh", hostname=NAMES[0],
                             extra_toml=acme_toml(pebble, ports[0]))
    status = server.cli("cert", "status")
    assert b"self-signed" in status.stdout and b"no attempt yet" in status.stdout
    with socket.socket() as busy:  # `serve` would hold the port: renew says so, changes nothing
        busy.bind(("127.0.0.1", ports[0]))
        busy.listen()
        refused = server.cli("cert", "renew", check=False)
    assert refused.returncode == 1 and b"renews by itself" in refused.stderr
    renewed = server.cli("cert", "renew")
    assert b"installed" in renewed.stdout and b"SIGHUP" in renewed.stdout
    pair = current_pair(server.data_dir)
    assert pair is not None
    issued_by(pebble, pair[0])
    again = server.cli("cert", "renew")
    assert b"not due" in again.stdout
    shown = json.loads(server.cli("cert", "status", "--json").stdout)
    assert shown["source"] == "acme" and shown["names"] == list(NAMES)
    assert shown["renewal"]["last_error"] is None and shown["renewal"]["failures"] == 0


def test_serve_with_the_ca_down_keeps_serving_and_warns(tmp_path: Path, pebble: Pebble,
                                                        ports: tuple[int, int]) -> None:
    closed = free_ports(1)[0]
    toml = acme_toml(pebble, ports[0]).replace(pebble.directory,
                                               f"https://127.0.0.1:{closed}/dir")
    server = MailhouseServer(tmp_path / "mh", protocols=("smtp", "submissions"),
                             hostname=NAMES[0], extra_toml=toml)
    server.start()
    try:
        def warned() -> bool:
            return "event=acme.renewal_failed" in server.log_path.read_text()

        assert wait_until(warned, timeout=30, interval=0.2), server.log_tail()
        served_serial(server.port("submissions"))  # the self-signed pair still serves
        assert current_pair(server.data_dir) is None
        status = server.cli("cert", "status", check=False)
        assert status.returncode == 1 and b"FAILING" in status.stdout
        doctor = server.cli("doctor", "--json", check=False)
        results = {r["name"]: r for r in json.loads(doctor.stdout)}
        assert "ACME renewal failing" in results["certificate"]["found"]
        assert "acme-http" in server.log_path.read_text()
    finally:
        server.stop()


def test_serve_answers_tls_alpn01_on_its_web_listener_only(tmp_path: Path, pebble: Pebble,
                                                           ports: tuple[int, int]) -> None:
    """`serve` with TLS-ALPN-01: the CA validates on the public web listener, whose context is
    its own (the challenge certificate is never offered on the mail listeners), and the
    certificate obtained is then served by every listener."""
    toml = acme_toml(pebble, ports[0], 'challenges = ["tls-alpn-01"]\n'
                     f'[web]\nlisten = ["127.0.0.1:{ports[1]}"]\n')
    server = MailhouseServer(tmp_path / "mh", protocols=("smtp", "submissions"),
                             hostname=NAMES[0], extra_toml=toml)
    server.start()
    try:
        assert wait_until(lambda: current_pair(server.data_dir) is not None, timeout=60,
                          interval=0.2), server.log_tail()
        pair = current_pair(server.data_dir)
        assert pair is not None
        issued_by(pebble, pair[0])
        want = x509.load_pem_x509_certificate(pair[0].read_bytes()).serial_number
        assert wait_until(lambda: served_serial(server.port("submissions")) == want
                          and served_serial(ports[1]) == want, timeout=15, interval=0.2)
    finally:
        server.stop()
