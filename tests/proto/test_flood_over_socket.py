"""Finding 3 of issue 7 over a real socket: a client pipelining NOOPs on port 25 is cut off by
the junk-command limit, and greeting+EHLO on 25 and 587 stay prompt while five such clients
flood (the junk limit ends each flood after 120 commands; the parser is linear in what it
reads: tests/proto/test_linear_parsing.py).

Before: every NOOP was answered (no junk limit) and each one copied the rest of the parser's
buffer, so the flooder kept its connection and the loop stalled for seconds."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Running, make_config, start_server

NOOPS = 400_000


@pytest.fixture
def mx_and_submission(tmp_path: Path) -> Iterator[Running]:
    config = make_config(tmp_path, listen={"submission": ("127.0.0.1:0",)})
    yield from start_server(config)


def greeting_and_ehlo(port: int) -> float:
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        f = sock.makefile("rb")
        assert f.readline().startswith(b"220 ")
        sock.sendall(b"EHLO client.test\r\n")
        while (line := f.readline()).startswith(b"250-"):
            pass
        assert line.startswith(b"250 ")
        sock.sendall(b"QUIT\r\n")
    return time.monotonic() - start


def test_pipelined_noops_end_in_421(mx_and_submission: Running) -> None:
    # As many NOOPs as one read takes in (more would be unread when the server hangs up, and the
    # kernel would answer them with a reset that can overtake the 421).
    with socket.create_connection(("127.0.0.1", mx_and_submission.smtp_port), timeout=10) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"220 ")
        sock.sendall(b"EHLO flood.test\r\n" + b"NOOP\r\n" * 150)
        replies = []
        while line := reader.readline():
            replies.append(line)
    finals = [line[:3] for line in replies if line[3:4] == b" "]
    # EHLO and 119 NOOPs answered (100 free junk commands, then 20 counted as errors), then 421.
    assert finals == [b"250"] * 120 + [b"421"]
    assert replies[-1] == b"421 4.7.0 Too many errors, closing connection\r\n"


def test_the_configured_limits_reach_smtp_and_pop3(tmp_path: Path) -> None:
    config = make_config(tmp_path, listen={"pop3": ("127.0.0.1:0",)}, junk_command_limit=10,
                         max_errors=3)
    for server in start_server(config):
        with socket.create_connection(("127.0.0.1", server.smtp_port), timeout=10) as sock:
            reader = sock.makefile("rb")
            reader.readline()
            sock.sendall(b"NOOP\r\n" * 14)
            assert reader.read() == b"250 2.0.0 Ok\r\n" * 13 + (
                b"421 4.7.0 Too many errors, closing connection\r\n")
        with socket.create_connection(("127.0.0.1", server.port("pop3")), timeout=10) as sock:
            reader = sock.makefile("rb")
            reader.readline()
            sock.sendall(b"CAPA\r\n" * 14)  # before login: junk too
            out = reader.read()
            assert out.count(b"+OK Capability list follows") == 13
            assert out.endswith(b"\r\n.\r\n-ERR Too many errors, closing connection\r\n")


@pytest.mark.timeout(60)
def test_a_noop_flood_does_not_stall_others(mx_and_submission: Running) -> None:
    server = mx_and_submission
    flooders = [socket.create_connection(("127.0.0.1", server.smtp_port), timeout=10)
                for _ in range(5)]

    def flood(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):  # the server hanging up on us is the point
            sock.sendall(b"EHLO flood.test\r\n" + b"NOOP\r\n" * NOOPS)

    senders = [threading.Thread(target=flood, args=(s,), daemon=True) for s in flooders]
    for sender in senders:
        sender.start()
    try:
        for port in (server.smtp_port, server.port("submission")):
            # Measured: 1 ms now, 8.7 s before (five flooders); generous for a shared machine.
            assert greeting_and_ehlo(port) < 1.0
    finally:
        for sender in senders:
            sender.join(10)
        for sock in flooders:
            sock.close()
