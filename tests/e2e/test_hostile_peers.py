"""Hostile peers against a real server (issue 7, findings 2, 3, 5, 8 and 9): no peer pins a
session, a connection slot, a maildrop or the event loop. Every server here runs with small
limits so each test crosses them in a few seconds; timing bounds are generous (loaded machine)."""

from __future__ import annotations

import poplib
import select
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.fixtures import USERS, start_mailhouse
from tests.helpers.mailhouse import MailhouseServer
from tests.helpers.net import LOOPBACK, wait_until

ALICE = "alice@example.test"
PASSWORD = USERS[ALICE]
OTHER_ADDRESS = "127.0.0.2"  # another client: all of 127.0.0.0/8 is loopback on Linux


def limits(**keys: object) -> str:
    """Keys for [limits]: the helper's config ends inside that table."""
    return "".join(f"{key} = {value}\n" for key, value in keys.items())


def server_with(tmp_path: Path, protocols: tuple[str, ...], extra: str) -> MailhouseServer:
    return start_mailhouse(tmp_path / "mh", protocols=protocols, extra_toml=extra)


def connect(port: int, *, source: str = LOOPBACK, rcvbuf: int | None = None,
            timeout: float = 10.0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:  # before connect, so the window stays small
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(timeout)
    sock.bind((source, 0))
    sock.connect((LOOPBACK, port))
    return sock


def first_line(port: int, **kwargs: object) -> bytes:
    """Connect and return the server's first line (b"" if it closed without one)."""
    with connect(port, **kwargs) as sock:  # type: ignore[arg-type]
        try:
            return sock.makefile("rb").readline()
        except ConnectionResetError:
            return b""


def closed(sock: socket.socket, timeout: float) -> bool:
    """True once the server has closed `sock` (EOF or reset), reading away whatever is left."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([sock], [], [], left)
        if not readable:
            return False
        try:
            if not sock.recv(65536):
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except (BlockingIOError, TimeoutError):
            continue
    return False


def stuff(sock: socket.socket, data: bytes) -> int:
    """Send what the kernel takes right now, without ever blocking: bytes sent, or -1 when the
    server has reset the connection."""
    sock.setblocking(False)
    sent = 0
    try:
        while sent < len(data):
            sent += sock.send(data[sent : sent + 65536])
    except (BlockingIOError, InterruptedError):
        pass
    except (ConnectionResetError, BrokenPipeError):
        return -1
    return sent


def tls_client() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def pop3_workers_ready(server: MailhouseServer, count: int) -> None:
    assert wait_until(lambda: server.log_path.read_text().count("event=pop3.process_ready")
                      >= count, timeout=20), server.log_tail()


# --- finding 2: a peer that stops reading ------------------------------------------------------

def test_pipelining_peers_that_never_read_are_cut_off_and_free_their_slots(
        tmp_path: Path) -> None:
    server = server_with(tmp_path, ("smtp",),
                         limits(write_stall_timeout=2, max_connections_per_ip=3,
                                junk_command_limit=10_000_000))  # not cut for junk here
    try:
        port = server.port("smtp")
        floods = [connect(port, rcvbuf=4096) for _ in range(3)]  # the per-IP cap
        # Pipeline EHLOs and never read: each takes 20 times its size in replies; the kernel
        # buffers megabytes of them, then the server's writes back up and it stops reading.
        # The write-stall deadline must then abort each of them (old code: held forever).
        chunk = b"EHLO flood.example\r\n" * 10_000
        start = time.monotonic()
        cut: set[socket.socket] = set()
        while len(cut) < 3 and time.monotonic() - start < 12:
            for sock in floods:
                if sock not in cut and stuff(sock, chunk) < 0:
                    cut.add(sock)
            time.sleep(0.1)
        assert len(cut) == 3, server.log_tail()
        assert server.log_path.read_text().count("event=smtp.write_stall") == 3
        # The slots they held are free: a real client gets in.
        assert first_line(port).startswith(b"220 ")
        for sock in floods:
            sock.close()
    finally:
        server.close()


def deliver(server: MailhouseServer, body: bytes) -> None:
    with smtplib.SMTP(LOOPBACK, server.port("smtp"), timeout=30) as smtp:
        assert smtp.sendmail("a@sender.test", [ALICE], body) == {}


def test_stalled_pop3_download_gives_the_maildrop_back(tmp_path: Path) -> None:
    server = server_with(tmp_path, ("smtp", "pop3"),
                         limits(write_stall_timeout=1)
                         + "[pop3]\nallow_plaintext_auth = true\nworkers = 2\n")
    try:
        pop3_workers_ready(server, 2)
        deliver(server, b"Subject: big\r\n\r\n" + (b"x" * 76 + b"\r\n") * 66_000)  # ~5 MB
        sock = connect(server.port("pop3"), rcvbuf=4096)
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"+OK")
        sock.sendall(f"USER {ALICE}\r\nPASS {PASSWORD}\r\n".encode())
        assert reader.readline().startswith(b"+OK")
        assert reader.readline().startswith(b"+OK")
        sock.sendall(b"RETR 1\r\n")
        assert reader.readline().startswith(b"+OK")  # the download starts; we stop reading

        def owner_logs_in() -> bool:
            client = poplib.POP3(LOOPBACK, server.port("pop3"), timeout=10)
            try:
                client.user(ALICE)
                client.pass_(PASSWORD)
            except poplib.error_proto as exc:
                assert b"IN-USE" in exc.args[0]
                client.quit()
                return False
            assert client.stat()[0] == 1  # nothing was deleted
            client.quit()
            return True

        start = time.monotonic()
        assert wait_until(owner_logs_in, timeout=10, interval=0.3), server.log_tail()
        assert time.monotonic() - start < 10
        assert closed(sock, timeout=5)
        sock.close()
    finally:
        server.close()


# --- finding 5: caps before the TLS handshake --------------------------------------------------

def test_silent_tls_connections_are_capped_at_accept_and_timed_out(tmp_path: Path) -> None:
    server = server_with(tmp_path, ("smtp", "submissions", "pop3s"),
                         limits(max_connections_per_ip=4, tls_handshake_timeout=1.5)
                         + "[pop3]\nworkers = 2\n")  # 995 in workers (2 each), 465 in-process
    try:
        pop3_workers_ready(server, 2)
        for name, greeting in (("submissions", b"220 "), ("pop3s", b"+OK")):
            port = server.port(name)
            start = time.monotonic()
            silent = [connect(port) for _ in range(20)]
            # Past the per-IP cap: closed at once, without a byte and without a handshake.
            gone = [sock for sock in silent if closed(sock, timeout=0.05)]
            deadline = start + 1.0
            while len(gone) < 16 and time.monotonic() < deadline:
                gone += [s for s in silent if s not in gone and closed(s, timeout=0.05)]
            assert len(gone) >= 16, (name, len(gone))
            # Meanwhile a client from another address completes its handshake.
            with connect(port, source=OTHER_ADDRESS) as raw, \
                    tls_client().wrap_socket(raw) as tls:
                assert tls.makefile("rb").readline().startswith(greeting)
            # The admitted silent ones are dropped at the handshake deadline.
            held = [sock for sock in silent if sock not in gone]
            for sock in held:
                assert closed(sock, timeout=max(0.1, start + 8 - time.monotonic())), name
            assert time.monotonic() - start < 8
            for sock in silent:
                sock.close()
    finally:
        server.close()


# --- finding 8: one counter per service --------------------------------------------------------

def test_mx_flood_does_not_refuse_submission(tmp_path: Path) -> None:
    # max_connections = 6 is split MX 4 : submission 2 (limits.* defaults otherwise).
    server = server_with(tmp_path, ("smtp", "submission"), limits(max_connections=6))
    try:
        held = [connect(server.port("smtp")) for _ in range(10)]
        greetings = [sock.makefile("rb").readline()[:4] for sock in held]
        assert greetings.count(b"220 ") == 4 and greetings.count(b"421 ") == 6, greetings
        with smtplib.SMTP(LOOPBACK, server.port("submission"), timeout=10) as smtp:
            assert smtp.ehlo("client.example")[0] == 250
        for sock in held:
            sock.close()
    finally:
        server.close()


# --- finding 9: slowloris ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def slow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MailhouseServer]:
    server = server_with(tmp_path_factory.mktemp("slow"), ("smtp", "pop3"),
                         limits(command_line_timeout=2, helo_timeout=3, login_timeout=3)
                         + "[pop3]\nallow_plaintext_auth = true\nworkers = 1\n")
    try:
        yield server
    finally:
        server.close()


def trickle(sock: socket.socket, data: bytes, interval: float, limit: float) -> tuple[bytes, float]:
    """Send `data` one byte per `interval` s (never a whole line) until the server answers or
    closes; return what it said and when (seconds from the start)."""
    start = time.monotonic()
    reader = sock.makefile("rb")
    last = b""
    for piece in (data[i : i + 1] for i in range(len(data))):
        if time.monotonic() - start > limit:
            break
        try:
            sock.sendall(piece)
        except OSError:
            break
        readable, _, _ = select.select([sock], [], [], interval)
        if readable:
            last = reader.readline()
            return last, time.monotonic() - start
    return last, time.monotonic() - start


def repeat(sock: socket.socket, line: bytes, interval: float, limit: float) -> tuple[bytes, float]:
    """Send a complete `line` every `interval` s, reading the answers, until the server says
    something else than `ok` or closes."""
    start = time.monotonic()
    reader = sock.makefile("rb")
    last = b""
    while time.monotonic() - start < limit:
        try:
            sock.sendall(line)
        except OSError:
            break
        last = reader.readline()
        if not last or last.startswith((b"421", b"-ERR")):
            break
        time.sleep(interval)
    return last, time.monotonic() - start


def test_trickled_command_line_is_cut_on_25(slow: MailhouseServer) -> None:
    with connect(slow.port("smtp")) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"220 ")
        sock.sendall(b"HELO client.example\r\n")
        assert reader.readline().startswith(b"250 ")
        said, seconds = trickle(sock, b"MAIL FROM:<a@sender.test>", 0.5, limit=10)
        assert said.startswith(b"421 4.4.2"), said
        assert seconds < 6
        assert closed(sock, timeout=5)


def test_trickled_command_line_is_cut_on_110(slow: MailhouseServer) -> None:
    with connect(slow.port("pop3")) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"+OK")
        sock.sendall(f"USER {ALICE}\r\nPASS {PASSWORD}\r\n".encode())
        assert reader.readline().startswith(b"+OK")
        assert reader.readline().startswith(b"+OK")  # logged in: the login deadline is over
        said, seconds = trickle(sock, b"UIDL 12345678", 0.5, limit=10)
        assert said.startswith(b"-ERR"), said
        assert seconds < 6
        assert closed(sock, timeout=5)


def test_client_that_never_says_ehlo_is_cut(slow: MailhouseServer) -> None:
    with connect(slow.port("smtp")) as sock:
        assert sock.makefile("rb").readline().startswith(b"220 ")
        said, seconds = repeat(sock, b"NOOP\r\n", 0.5, limit=12)  # never idle, never EHLO
        assert said.startswith(b"421 4.4.2"), said
        assert 2 < seconds < 8
        assert closed(sock, timeout=5)


def test_pop3_client_that_never_logs_in_is_cut(slow: MailhouseServer) -> None:
    with connect(slow.port("pop3")) as sock:
        assert sock.makefile("rb").readline().startswith(b"+OK")
        said, seconds = repeat(sock, f"USER {ALICE}\r\n".encode(), 0.5, limit=12)
        assert said.startswith(b"-ERR"), said
        assert 2 < seconds < 8
        assert closed(sock, timeout=5)


# --- finding 3 (transport half): one pipelining connection cannot stall the others ------------

def greeting_and_ehlo(port: int) -> float:
    start = time.monotonic()
    with connect(port, timeout=30) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"220 ")
        sock.sendall(b"EHLO client.example\r\n")
        while not (line := reader.readline()).startswith(b"250 "):
            assert line.startswith(b"250-"), line
    return time.monotonic() - start


def test_noop_flood_does_not_stall_other_clients(tmp_path: Path) -> None:
    server = server_with(tmp_path, ("smtp",), "")
    port = server.port("smtp")
    stop = threading.Event()
    flood = b"NOOP\r\n" * 20_000

    def flooder() -> None:
        while not stop.is_set():  # reconnects if a junk-command limit hangs up on it
            try:
                with connect(port, timeout=5) as sock:
                    threading.Thread(target=drain, args=(sock,), daemon=True).start()
                    while not stop.is_set():
                        sock.sendall(flood)
            except OSError:
                time.sleep(0.05)

    def drain(sock: socket.socket) -> None:
        try:
            while sock.recv(1 << 20):
                pass
        except OSError:
            pass

    thread = threading.Thread(target=flooder, daemon=True)
    thread.start()
    try:
        time.sleep(0.5)
        latencies = [greeting_and_ehlo(port) for _ in range(5)]
        assert max(latencies) < 1.0, latencies
    finally:
        stop.set()
        thread.join(10)
        server.close()
