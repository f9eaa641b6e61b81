"""kill -9 under load: every message that got 250 is there after a restart (RFC 5321 §6.1).

20 concurrent smtplib senders deliver uniquely numbered messages to mailhouse; after about a
second the whole server process group gets SIGKILL. Each message whose DATA was answered 250
is recorded. After a restart on the same data directory, the export must contain every recorded
message (duplicates would be tolerable, loss is not), and every stored message must be complete
and byte-identical to what was sent: a crash must never leave a torn message behind.
"""

from __future__ import annotations

import random
import re
import smtplib
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import pytest

from tests.helpers.fixtures import MailhouseFactory
from tests.helpers.net import LOOPBACK
from tests.helpers.swaks import crlf

pytestmark = pytest.mark.interop

ALICE = "alice@example.test"
SENDER = "load@remote.test"
SENDERS = 20
RUN_BEFORE_KILL = 1.0  # seconds of load before SIGKILL
MAX_MESSAGES_PER_SENDER = 5_000  # bounds each sender's loop by count as well as by time
SENDER_DEADLINE = 30.0  # seconds: no sender thread outlives this

_TOKEN = re.compile(rb"crash-\d{2}-\d{5}")


def crash_message(token: str) -> bytes:
    """Deterministic ~8 KB message for `token`, so the stored copy can be checked exactly."""
    rng = random.Random(token)
    lines = [
        f"{token} line {n:03d} " + "".join(rng.choices("abcdefghij ", k=60)) for n in range(120)
    ]
    return crlf(
        (
            f"From: <{SENDER}>\n"
            f"To: <{ALICE}>\n"
            f"Subject: {token}\n"
            f"Message-ID: <{token}@remote.test>\n"
            "\n" + "\n".join(lines) + f"\nEND {token}\n"
        ).encode()
    )


@dataclass
class LoadResult:
    acked: list[str] = field(default_factory=list)  # got 250 after DATA
    attempts: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def sender(index: int, port: int, killed: threading.Event, result: LoadResult) -> None:
    """Send numbered messages over reused connections until the server dies."""
    deadline = time.monotonic() + SENDER_DEADLINE
    sequence = 0
    while sequence < MAX_MESSAGES_PER_SENDER and time.monotonic() < deadline:
        try:
            with smtplib.SMTP(LOOPBACK, port, timeout=10) as smtp:
                smtp.ehlo("load.remote.test")
                while sequence < MAX_MESSAGES_PER_SENDER and time.monotonic() < deadline:
                    token = f"crash-{index:02d}-{sequence:05d}"
                    sequence += 1
                    with result.lock:
                        result.attempts += 1
                    smtp.sendmail(SENDER, [ALICE], crash_message(token))  # raises unless 250
                    with result.lock:
                        result.acked.append(token)
        except (OSError, smtplib.SMTPException):
            if killed.is_set():
                return
            time.sleep(0.01)  # a transient refusal before the kill: reconnect


def test_kill_9_loses_no_acknowledged_message(mailhouse_factory: MailhouseFactory) -> None:
    server = mailhouse_factory()
    port = server.smtp_port
    killed = threading.Event()
    result = LoadResult()
    threads = [
        threading.Thread(target=sender, args=(i, port, killed, result), daemon=True)
        for i in range(SENDERS)
    ]
    for thread in threads:
        thread.start()

    time.sleep(RUN_BEFORE_KILL)
    # Make sure the load actually reached the store before the crash (bounded wait).
    for _ in range(100):
        with result.lock:
            if result.acked:
                break
        time.sleep(0.05)
    server.kill()
    killed.set()
    for thread in threads:
        thread.join(timeout=SENDER_DEADLINE)
    assert not any(t.is_alive() for t in threads), "a sender thread did not finish"

    acked = set(result.acked)
    assert acked, f"no message was acknowledged in {RUN_BEFORE_KILL}s ({result.attempts} tried)"

    server.start()
    stored = server.export(ALICE)
    copies: Counter[str] = Counter()
    for msg in stored:
        match = _TOKEN.search(msg.data)
        if match is None:
            continue
        token = match.group().decode()
        copies[token] += 1
        assert msg.content_crlf == crash_message(token), f"stored copy of {token} is not intact"

    lost = sorted(acked - set(copies))
    assert not lost, f"{len(lost)} of {len(acked)} acknowledged messages lost: {lost[:20]}"

    # The restarted server works normally.
    with smtplib.SMTP(LOOPBACK, server.smtp_port, timeout=10) as smtp:
        assert smtp.sendmail(SENDER, [ALICE], crash_message("crash-99-00000")) == {}
    print(
        f"kill -9 after {RUN_BEFORE_KILL}s: {len(acked)} acknowledged, {result.attempts} tried,"
        f" {sum(copies.values())} stored ({sum(n - 1 for n in copies.values())} duplicates)"
    )
