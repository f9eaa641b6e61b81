"""Every limit of the MX listener, crossed over a real socket (security checklist 13-19)."""

from __future__ import annotations

import smtplib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailhouse.errors import StorageFull
from tests.e2e.conftest import Running, make_config, start_server

MESSAGE = b"Subject: hi\r\n\r\nHello.\r\n"


def raw(server: Running) -> tuple[socket.socket, object]:
    sock = socket.create_connection(("127.0.0.1", server.smtp_port), timeout=10)
    f = sock.makefile("rb")
    assert f.readline().startswith(b"220 ")
    return sock, f


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[Running]:
    config = make_config(tmp_path, max_connections=5, max_connections_per_ip=3,
                         idle_timeout=1.0, max_message_size=10_000, max_recipients=100)
    yield from start_server(config)


def test_per_ip_connection_cap_refuses_with_421(limited: Running) -> None:
    # Checklist 16: past the cap 421; once a slot frees, a fresh client gets in.
    held = [raw(limited) for _ in range(3)]
    sock = socket.create_connection(("127.0.0.1", limited.smtp_port), timeout=10)
    assert sock.recv(100).startswith(b"421 4.7.0")
    sock.close()
    held.pop()[0].close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        sock = socket.create_connection(("127.0.0.1", limited.smtp_port), timeout=10)
        if sock.recv(100).startswith(b"220 "):
            break
        sock.close()
        time.sleep(0.05)
    else:
        pytest.fail("no slot freed")
    sock.close()
    for s, _ in held:
        s.close()


def test_idle_timeout_closes_with_421(limited: Running) -> None:
    sock, f = raw(limited)
    start = time.monotonic()
    assert f.readline().startswith(b"421 4.4.2")  # type: ignore[attr-defined]
    assert 0.5 < time.monotonic() - start < 5
    sock.close()


def test_message_size_limit(limited: Running) -> None:
    with smtplib.SMTP("127.0.0.1", limited.smtp_port, timeout=10) as smtp:
        smtp.ehlo("c")
        assert smtp.esmtp_features["size"] == "10000"
        with pytest.raises(smtplib.SMTPSenderRefused) as exc:
            smtp.sendmail("a@sender.test", ["alice@example.test"], b"x" * 20_000,
                          mail_options=["SIZE=20000"])
        assert exc.value.smtp_code == 552
        smtp.rset()
        # A client that does not declare SIZE is stopped at the end of DATA.
        assert smtp.mail("a@sender.test")[0] == 250
        assert smtp.rcpt("alice@example.test")[0] == 250
        assert smtp.data((b"y" * 70 + b"\r\n") * 300)[0] == 552
    assert limited.messages("alice@example.test") == []


def test_hundred_recipients_then_452(server: Running) -> None:
    # Checklist 14, with the default limit of 100: RFC 5321 §4.5.3.1.8 minimum.
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=10) as smtp:
        smtp.ehlo("c")
        smtp.mail("a@sender.test")
        for i in range(100):
            assert smtp.rcpt(f"alice+{i}@example.test")[0] == 250
        assert smtp.rcpt("bob@example.test")[0] == 452
        assert smtp.data(MESSAGE)[0] == 250
    assert len(server.messages("alice@example.test")) == 1
    assert server.messages("bob@example.test") == []


def test_disk_full_answers_452_never_250(server: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    # Checklist 19: a full store gives 452, and the next message goes through once space is back.
    async def full(*args: object, **kwargs: object) -> None:
        raise StorageFull()

    monkeypatch.setattr(server.app.store, "deliver", full)
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=10) as smtp:
        with pytest.raises(smtplib.SMTPDataError) as exc:
            smtp.sendmail("a@sender.test", ["alice@example.test"], MESSAGE)
        assert (exc.value.smtp_code, exc.value.smtp_error[:5]) == (452, b"4.3.1")
        monkeypatch.undo()
        assert smtp.sendmail("a@sender.test", ["alice@example.test"], MESSAGE) == {}
    assert len(server.messages("alice@example.test")) == 1


def test_unexpected_store_error_is_temporary(server: Running,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(server.app.store, "deliver", broken)
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=10) as smtp:
        with pytest.raises(smtplib.SMTPDataError) as exc:
            smtp.sendmail("a@sender.test", ["alice@example.test"], MESSAGE)
        assert exc.value.smtp_code == 451
        assert b"fire" not in exc.value.smtp_error  # no internals on the wire


def test_shutdown_lets_message_in_flight_finish(server: Running) -> None:
    sock, f = raw(server)
    sock.sendall(b"EHLO c\r\nMAIL FROM:<a@sender.test>\r\nRCPT TO:<alice@example.test>\r\n"
                 b"DATA\r\n")
    lines = [f.readline() for _ in range(11)]  # type: ignore[attr-defined]
    assert lines[-1].startswith(b"354")
    sock.sendall(b"Subject: in flight\r\n\r\n")
    _idle, idle_f = raw(server)

    import asyncio
    import threading

    done = threading.Event()

    def stop() -> None:
        asyncio.run_coroutine_threadsafe(server.app.tracker.shutdown(10), server.loop).result(20)
        done.set()

    threading.Thread(target=stop, daemon=True).start()
    assert idle_f.readline().startswith(b"421 4.3.2")  # type: ignore[attr-defined]
    time.sleep(0.2)
    sock.sendall(b"finished\r\n.\r\n")
    assert f.readline().startswith(b"250 ")  # type: ignore[attr-defined]
    assert f.readline().startswith(b"421 4.3.2")  # type: ignore[attr-defined]
    assert done.wait(15)
    [stored] = server.messages("alice@example.test")
    assert stored.endswith(b"Subject: in flight\r\n\r\nfinished\r\n")


def test_slow_drip_client_cut_off_at_session_lifetime(tmp_path: Path) -> None:
    # Checklist 17: a client that keeps the session busy forever is cut off.
    config = make_config(tmp_path, session_lifetime=1.5, idle_timeout=300.0)
    for server in start_server(config):
        sock, f = raw(server)
        start = time.monotonic()
        closed_by = b""
        while time.monotonic() - start < 8:
            try:
                sock.sendall(b"NOOP\r\n")
                line = f.readline()  # type: ignore[attr-defined]
            except OSError:
                break
            if not line.startswith(b"250"):
                closed_by = line
                break
            time.sleep(0.2)
        assert closed_by.startswith(b"421 4.4.2"), closed_by
        assert time.monotonic() - start < 5
        sock.close()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_tls_below_1_2_is_refused(server: Running) -> None:
    import ssl

    sock, f = raw(server)
    sock.sendall(b"EHLO c\r\nSTARTTLS\r\n")
    while not f.readline().startswith(b"220 "):  # type: ignore[attr-defined]
        pass
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises((ssl.SSLError, OSError)):
        ctx.wrap_socket(sock, server_hostname="mx.example.test")
    sock.close()
