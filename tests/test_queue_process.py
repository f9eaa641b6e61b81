"""`[queue] process = "separate"` (the default): `mailhouse serve` runs the queue in a child
process. It is woken at once by the listener process, restarted when it dies, stopped with the
server, and never outlives a parent killed with SIGKILL (queue_process.py)."""

from __future__ import annotations

import os
import signal
import smtplib
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.dns import DnsServer
from tests.helpers.fake_smtp import Script, Servers
from tests.helpers.mailhouse import MailhouseServer
from tests.helpers.net import port_accepts, wait_until
from tests.helpers.relay import MX_IP, remote_mx

PASSWORD = "correct horse battery"


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(p) for p in text.split()]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def queue_child(server: MailhouseServer, timeout: float = 10.0) -> int:
    assert server.process is not None
    parent = server.process.pid
    found: list[int] = []

    def one() -> bool:
        found[:] = [c for c in children(parent) if alive(c)]
        return len(found) == 1

    assert wait_until(one, timeout=timeout, interval=0.05), server.log_tail()
    return found[0]


def wait_ready(server: MailhouseServer, count: int) -> None:
    """Until the log shows `count` queue processes ready (signal handlers installed)."""
    def ready() -> bool:
        return server.log_path.read_text().count("event=queue.process_ready") >= count

    assert wait_until(ready, timeout=15, interval=0.05), server.log_tail()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[MailhouseServer]:
    instance = MailhouseServer(tmp_path / "mh")
    instance.start()
    try:
        yield instance
    finally:
        instance.close()


def test_child_is_restarted_and_the_listeners_stay_up(server: MailhouseServer) -> None:
    wait_ready(server, 1)
    first = queue_child(server)
    os.kill(first, signal.SIGKILL)
    assert wait_until(lambda: queue_child(server) != first, timeout=15, interval=0.1)
    wait_ready(server, 2)
    assert server.running and port_accepts(server.port("smtp"))
    assert "event=queue.process_exited" in server.log_tail()
    second = queue_child(server)
    assert server.stop() == 0
    assert not alive(second)
    log = server.log_path.read_text()
    assert "role=queue event=queue.process_stopping reason=signal" in log


def test_child_dies_with_a_killed_parent(server: MailhouseServer) -> None:
    child = queue_child(server)
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGKILL)  # the parent alone, not the process group
    server.process.wait(10)
    assert wait_until(lambda: not alive(child), timeout=10, interval=0.05)


@pytest.fixture
def sink() -> Iterator[Servers]:
    with remote_mx(Script()) as servers:
        yield servers


def test_queued_mail_wakes_the_queue_process_at_once(tmp_path: Path, sink: Servers) -> None:
    """Faster than the 1 s poll: each message reaches the remote well within half of it."""
    zones: dict[str, object] = {"remote.test": {"MX": [(10, "mx.remote.test")]},
                                "mx.remote.test": {"A": [MX_IP]}}
    with DnsServer(zones) as dns:  # type: ignore[arg-type]
        server = MailhouseServer(
            tmp_path / "mh", protocols=("submissions",),
            extra_toml=(f"[delivery]\nport = {sink.port}\n"
                        f'[dns]\nnameservers = ["{dns.nameserver}"]\n'
                        "[dkim]\nenabled = false\n"))
        server.add_domain("example.test")
        server.add_user("alice@example.test", PASSWORD)
        server.start()
        try:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            queue_child(server)
            time.sleep(1.5)  # the child is up and idle, between two polls
            delays = []
            for n in range(5):
                body = (f"From: <alice@example.test>\r\nTo: <bob@remote.test>\r\n"
                        f"Subject: {n}\r\n\r\nHello.\r\n").encode()
                with smtplib.SMTP_SSL("127.0.0.1", server.port("submissions"), context=ctx,
                                      timeout=30) as smtp:
                    smtp.login("alice@example.test", PASSWORD)
                    started = time.monotonic()
                    smtp.sendmail("alice@example.test", ["bob@remote.test"], body)
                assert wait_until(lambda n=n: len(sink[MX_IP].messages) > n, timeout=10,
                                  interval=0.005), server.log_tail()
                delays.append(time.monotonic() - started)
            assert max(delays) < 0.5, delays
        finally:
            server.close()
