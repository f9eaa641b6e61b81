"""`mailhouse serve` with IMAP: imap (143, STARTTLS) and imaps (993, implicit TLS) over real
sockets with imaplib, in the main process (`[imap] workers = 1`) and in two worker processes
that share the login throttle (worker_process.py), as tests/test_pop3_workers.py does for POP3.

Only what the wiring decides is tested here: what is announced before and after TLS (RFC 9051
§6.2.1, LOGINDISABLED §7.2.2), logins and their throttle, the connection caps, the workers. The
mailbox commands are the service's (tests/service/imap/); the transport's are
tests/net/test_imap_transport.py's.
"""

from __future__ import annotations

import contextlib
import imaplib
import os
import signal
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mailhouse.app import imap_core_config, imap_settings
from mailhouse.config import config_from_table
from mailhouse.service.imap import CAPABILITIES, ENABLEABLE
from tests.helpers.mailhouse_imap import (
    FAILURE_DELAY,
    MailhouseImap,
    mailhouse_imap,  # noqa: F401 (a fixture)
    start_mailhouse_imap,
)
from tests.helpers.net import wait_until

LIMIT = 3  # auth_failure_limit of the throttle test


def close(client: imaplib.IMAP4) -> None:
    """Drop the connection, whether or not LOGOUT already did."""
    with contextlib.suppress(OSError):
        client.shutdown()


def caps(client: imaplib.IMAP4) -> set[str]:
    typ, data = client.capability()
    assert typ == "OK"
    return set(data[-1].decode().upper().split())


# --- what the config gives the core --------------------------------------------------------------

def test_the_core_gets_the_configured_limits(tmp_path: Path) -> None:
    config = config_from_table({"limits": {"max_message_size": 5000, "max_errors": 7}},
                               base_dir=tmp_path)
    settings = imap_settings(config)
    core = imap_core_config(config, settings)
    # APPENDLIMIT defaults to what SMTP accepts; the parser refuses more before reading it.
    assert settings.append_limit == core.parser.max_append_size == 5000
    assert "APPENDLIMIT=5000" in core.capabilities
    assert set(CAPABILITIES) <= set(core.capabilities) and core.enableable == ENABLEABLE
    assert (core.allow_plaintext_auth, core.max_errors) == (False, 7)
    config = config_from_table({"imap": {"append_limit": 123, "allow_plaintext_auth": True,
                                         "fetch_batch": 9, "search_content_limit": 8,
                                         "max_search_updates": 2}},
                               base_dir=tmp_path)
    settings = imap_settings(config)
    core = imap_core_config(config, settings)
    assert (settings.append_limit, settings.fetch_batch, settings.search_content_limit,
            settings.max_search_updates) == (123, 9, 8, 2)
    assert "APPENDLIMIT=123" in core.capabilities and core.allow_plaintext_auth


# --- one process ---------------------------------------------------------------------------------

def test_plain_port_offers_starttls_and_refuses_passwords_before_it(
        mailhouse_imap: MailhouseImap) -> None:  # noqa: F811
    server = mailhouse_imap
    client = imaplib.IMAP4(server.host, server.ports["starttls"], timeout=10)
    try:
        before = caps(client)
        assert {"IMAP4REV1", "IMAP4REV2", "STARTTLS", "LOGINDISABLED"} <= before
        assert not any(c.startswith("AUTH=") for c in before)
        with pytest.raises(imaplib.IMAP4.error, match="PRIVACYREQUIRED"):
            client.login(server.user, server.password)
        client.starttls(server.ssl_context())  # verifies the certificate against cafile
        after = caps(client)
        assert "STARTTLS" not in after and "LOGINDISABLED" not in after
        assert "AUTH=PLAIN" in after
        typ, _ = client.login(server.user, server.password)
        assert typ == "OK"
        # After login: exactly the service's capabilities, with the configured APPENDLIMIT.
        logged_in = caps(client)
        assert {"UIDPLUS", "MOVE", "CONDSTORE", f"APPENDLIMIT={10 * 1024 * 1024}"} <= logged_in
        assert client.logout()[0] == "BYE"
    finally:
        close(client)


def test_implicit_tls_port_authenticate_plain_namespace_id(
        mailhouse_imap: MailhouseImap) -> None:  # noqa: F811
    server = mailhouse_imap
    user, password = server.new_user("another password")
    with imaplib.IMAP4_SSL(server.host, server.ports["implicit"],
                           ssl_context=server.ssl_context(), timeout=10) as client:
        assert "AUTH=PLAIN" in caps(client) and "STARTTLS" not in caps(client)
        typ, _ = client.authenticate("PLAIN",
                                     lambda _: f"\0{user}\0{password}".encode())
        assert typ == "OK"
        typ, data = client.namespace()
        assert typ == "OK" and data[0].startswith(b'(("" "/"))'), data
        typ, data = client.xatom("ID", '("name" "wire-test")')
        assert typ == "OK"
        answers = client.untagged_responses.pop("ID", [])
        assert any(isinstance(a, bytes) and b'"name" "mailhouse"' in a for a in answers), answers


def test_a_wrong_password_is_refused_after_the_delay(
        mailhouse_imap: MailhouseImap) -> None:  # noqa: F811
    server = mailhouse_imap
    user, password = server.new_user()
    with imaplib.IMAP4_SSL(server.host, server.ports["implicit"],
                           ssl_context=server.ssl_context(), timeout=10) as client:
        started = time.monotonic()
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            client.login(user, password + "!")
        assert time.monotonic() - started >= FAILURE_DELAY
        assert client.login(user, password)[0] == "OK"  # the session goes on
    log = server.server.log_path.read_text()
    assert "event=imap.login " in log and "result=FAILED" in log


@pytest.fixture
def open_server(tmp_path: Path) -> Iterator[MailhouseImap]:
    instance = start_mailhouse_imap(tmp_path, imap_toml="allow_plaintext_auth = true",
                                    limits_toml="imap_max_connections_per_ip = 2",
                                    protocols=("imap", "imaps"))
    try:
        yield instance
    finally:
        instance.close()


def greeting(port: int) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return sock, sock.makefile("rb").readline()


def admitted(port: int) -> bool:
    """Whether a connection is greeted with OK (it is closed at once)."""
    sock, line = greeting(port)
    sock.close()
    return line.startswith(b"* OK")


def test_plaintext_logins_when_allowed_and_the_per_address_cap(
        open_server: MailhouseImap) -> None:
    server = open_server
    # The start-up probes' slots are released once the server has seen them close.
    assert wait_until(lambda: admitted(server.ports["starttls"]), timeout=10, interval=0.1)
    client = imaplib.IMAP4(server.host, server.ports["starttls"], timeout=10)
    assert "LOGINDISABLED" not in caps(client) and "AUTH=PLAIN" in caps(client)
    assert client.login(server.user, server.password)[0] == "OK"
    # imap and imaps share the IMAP service's caps: a TLS client on 993 takes the second slot
    # while its handshake has not even begun …
    second = socket.create_connection(("127.0.0.1", server.ports["implicit"]), timeout=10)
    try:
        time.sleep(0.3)  # accepted and admitted
        third, refused = greeting(server.ports["starttls"])
        third.close()
        assert refused.startswith(b"* BYE [UNAVAILABLE]"), refused
        with pytest.raises((ssl.SSLError, OSError, imaplib.IMAP4.abort)):
            imaplib.IMAP4_SSL(server.host, server.ports["implicit"],
                              ssl_context=server.ssl_context(), timeout=10)
    finally:
        second.close()
    client.logout()
    # … and a freed slot is taken again.
    assert wait_until(lambda: admitted(server.ports["starttls"]), timeout=10, interval=0.1)


# --- two worker processes ------------------------------------------------------------------------

def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def imap_workers(server: MailhouseImap, count: int = 2) -> list[int]:
    """The live IMAP worker pids, once `count` are alive and ready."""
    process = server.server.process
    assert process is not None
    found: list[int] = []

    def up() -> bool:
        found[:] = sorted(
            pid for pid in children(process.pid)
            if b"mailhouse.imap_process" in _cmdline(pid))
        log = server.server.log_path.read_text()
        return len(found) == count and log.count("event=imap.process_ready") >= count

    assert wait_until(up, timeout=20, interval=0.05), server.server.log_tail()
    return found


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return b""


def served_by(server: MailhouseImap) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in server.server.log_path.read_text().splitlines():
        if "event=imap.login " in line and "result=OK" in line:
            role = line.split("role=", 1)[1].split()[0]
            out[role] = out.get(role, 0) + 1
    return out


def login_once(server: MailhouseImap, password: str | None = None) -> str:
    """A STARTTLS session with one LOGIN; its tagged answer ("OK", or the error text)."""
    client = imaplib.IMAP4(server.host, server.ports["starttls"], timeout=15)
    try:
        client.starttls(server.ssl_context())
        try:
            return client.login(server.user, password or server.password)[0]
        except imaplib.IMAP4.error as exc:
            return str(exc)
    finally:
        close(client)


@pytest.fixture
def workers_server(tmp_path: Path) -> Iterator[MailhouseImap]:
    instance = start_mailhouse_imap(
        tmp_path, workers=2, protocols=("imap", "imaps"),
        submission_toml=f"auth_failure_limit = {LIMIT}")
    try:
        yield instance
    finally:
        print(instance.server.log_tail(100))
        instance.close()


def test_each_worker_serves_logins_and_shutdown_is_clean(
        workers_server: MailhouseImap) -> None:
    server = workers_server
    first, second = imap_workers(server)
    # Every process that changes or watches mailboxes has its wake-up socket (store/wakeup.py):
    # main (deliveries), the queue process (bounces), each IMAP worker (sessions).
    wakeups = server.server.data_dir / "run" / "wakeup"
    assert wait_until(lambda: len(list(wakeups.glob("*.sock"))) == 4, timeout=10), sorted(
        p.name for p in wakeups.glob("*.sock"))
    for _ in range(6):
        assert login_once(server) == "OK"
    # Each child serves: with one stopped, the other takes every connection.
    for stopped in (first, second):
        os.kill(stopped, signal.SIGSTOP)
        try:
            for _ in range(2):
                assert login_once(server) == "OK"
        finally:
            os.kill(stopped, signal.SIGCONT)
    with imaplib.IMAP4_SSL(server.host, server.ports["implicit"],
                           ssl_context=server.ssl_context(), timeout=10) as client:
        assert client.login(server.user, server.password)[0] == "OK"
    roles = served_by(server)
    assert set(roles) == {"imap-1", "imap-2"}, roles
    assert sum(roles.values()) == 11
    assert server.server.stop() == 0
    assert list(wakeups.glob("*.sock")) == []  # each closed its own
    log = server.server.log_path.read_text()
    assert log.count("event=imap.process_exit ") == 2
    assert "Traceback" not in log


def test_guesses_spread_over_workers_get_one_allowance(workers_server: MailhouseImap) -> None:
    server = workers_server
    imap_workers(server)
    count = 10
    barrier = threading.Barrier(count)

    def guess(index: int) -> str:
        client = imaplib.IMAP4(server.host, server.ports["starttls"], timeout=15)
        try:
            client.starttls(server.ssl_context())
            barrier.wait(timeout=15)
            try:
                return client.login(server.user, f"guess {index}")[0]
            except imaplib.IMAP4.error as exc:
                return str(exc)
        finally:
            close(client)

    with ThreadPoolExecutor(count) as pool:
        replies = list(pool.map(guess, range(count)))
    assert all("AUTHENTICATIONFAILED" in r or "UNAVAILABLE" in r for r in replies), replies
    # One throttle for both processes: the right password is refused now, whichever worker.
    for _ in range(4):
        assert "UNAVAILABLE" in login_once(server)
    log = server.server.log_path.read_text()
    checked = [line for line in log.splitlines() if "event=auth.failed " in line]
    assert len(checked) == LIMIT, "\n".join(checked)
    roles = {line.split("role=", 1)[1].split()[0] for line in log.splitlines()
             if "event=auth.failed " in line or "event=auth.throttled " in line}
    assert roles <= {"imap-1", "imap-2", "main"} and len(roles - {"main"}) == 2, roles


def test_caps_are_shared_out_between_the_workers(tmp_path: Path) -> None:
    # imap_max_connections_per_ip = 2 over two workers: each admits one from an address.
    server = start_mailhouse_imap(tmp_path, workers=2, protocols=("imap",),
                                  limits_toml="imap_max_connections_per_ip = 2")
    try:
        imap_workers(server)
        time.sleep(0.5)  # the start-up probes' slots are free again
        held: list[socket.socket] = []
        lines: list[bytes] = []
        for _ in range(8):
            sock, line = greeting(server.ports["starttls"])
            held.append(sock)
            lines.append(line)
        admitted = [line for line in lines if line.startswith(b"* OK")]
        assert 1 <= len(admitted) <= 2, lines
        assert all(line.startswith(b"* BYE [UNAVAILABLE]") for line in lines
                   if line not in admitted), lines
        for sock in held:
            sock.close()
    finally:
        server.close()


def test_starttls_needs_the_certificate(mailhouse_imap: MailhouseImap) -> None:  # noqa: F811
    # The helper's certificate is what the server presents: a client with other trust fails.
    client = imaplib.IMAP4(mailhouse_imap.host, mailhouse_imap.ports["starttls"], timeout=10)
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            client.starttls(ssl.create_default_context())
    finally:
        close(client)
