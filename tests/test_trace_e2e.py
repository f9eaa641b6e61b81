"""The message trace over real sockets: a message sent through the running server (submission
to three remote recipients and a local one, and one by the MX port with a refused recipient) is
found with `mailhouse trace` by each thing an operator may know of it, with every step:
reception, local storage, the queue, a delivery, a deferral (remote 4xx), a bounce (5xx) and
the DSN sent for it."""

from __future__ import annotations

import json
import smtplib
import sqlite3
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.fake_smtp import Script, Servers
from tests.helpers.mailhouse import MailhouseServer
from tests.helpers.net import wait_until
from tests.helpers.relay import MX_IP, PASSWORD, relaying_server, remote_mx


def _rcpt(address: str, count: int) -> str | None:
    if "later" in address:
        return "451 4.7.1 Greylisted, try again later"
    if "gone" in address:
        return "550 5.1.1 No such user here"
    return None


@pytest.fixture
def remote() -> Iterator[Servers]:
    with remote_mx(Script(rcpt=_rcpt)) as servers:
        yield servers


@pytest.fixture
def server(tmp_path: Path, remote: Servers) -> Iterator[MailhouseServer]:
    with relaying_server(tmp_path / "mh", remote) as instance:
        yield instance


def _trace(server: MailhouseServer, query: str) -> list[dict[str, Any]]:
    result = server.cli("trace", query, "--json", check=False)
    if result.returncode != 0:
        return []
    traces = json.loads(result.stdout)["traces"]
    assert isinstance(traces, list)
    return traces


def _kinds(trace: dict[str, Any]) -> dict[str, list[str]]:
    """Step kind -> the recipients of the steps of that kind."""
    out: dict[str, list[str]] = {}
    steps = trace["steps"]
    assert isinstance(steps, list)
    for step in steps:
        out.setdefault(step["kind"], []).append(step["recipient"])
    return out


def test_a_submitted_message_is_traced_to_delivery_deferral_and_bounce(
        server: MailhouseServer, remote: Servers) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    body = (b"From: <alice@example.test>\r\nTo: <bob@remote.test>\r\n"
            b"Message-ID: <trace-1@example.test>\r\nSubject: trace me\r\n\r\nHello.\r\n")
    rcpts = ["bob@remote.test", "later@remote.test", "gone@remote.test", "alice@example.test"]
    with smtplib.SMTP_SSL("127.0.0.1", server.port("submissions"), context=ctx,
                          timeout=30) as smtp:
        smtp.login("alice@example.test", PASSWORD)
        smtp.mail("alice@example.test")
        for rcpt in rcpts:
            assert smtp.rcpt(rcpt)[0] == 250
        code, reply = smtp.data(body)
        assert code == 250, reply
    trace_id = reply.decode().rsplit(" ", 1)[1]  # "Ok: queued as <id>"

    def complete() -> bool:
        found = _trace(server, "<trace-1@example.test>")
        return len(found) == 1 and {"delivered", "deferred", "bounced", "dsn"} <= set(
            _kinds(found[0]))

    assert wait_until(complete, timeout=30, interval=0.3), server.log_tail()
    [trace] = _trace(server, "<trace-1@example.test>")
    assert trace["trace"] == trace_id
    assert trace["message_id"] == "<trace-1@example.test>"
    kinds = _kinds(trace)
    assert sorted(kinds["received"]) == sorted(rcpts)
    assert kinds["stored"] == ["alice@example.test"]
    assert sorted(kinds["queued"]) == sorted(rcpts[:3])
    assert kinds["delivered"] == ["bob@remote.test"]
    assert kinds["deferred"] == ["later@remote.test"]
    assert kinds["bounced"] == ["gone@remote.test"]
    assert kinds["dsn"] == ["alice@example.test"]
    steps = {s["kind"] + ":" + s["recipient"]: s for s in trace["steps"]}
    received = steps["received:bob@remote.test"]
    assert "authenticated as alice@example.test" in received["description"]
    assert "over TLS" in received["description"]
    assert received["detail"]["client"].startswith("127.0.0.1")
    assert "250" in steps["delivered:bob@remote.test"]["description"]
    assert MX_IP in steps["delivered:bob@remote.test"]["description"]
    deferred = steps["deferred:later@remote.test"]["description"]
    assert "451 4.7.1 Greylisted" in deferred and "next attempt" in deferred
    assert "550 5.1.1 No such user here" in steps["bounced:gone@remote.test"]["description"]
    queue_id = steps["delivered:bob@remote.test"]["queue_id"]
    assert isinstance(queue_id, int) and queue_id > 0

    # The same message by each key an operator may have.
    for query in (trace_id, trace_id.lower(), str(queue_id), "later@remote.test",
                  "ALICE@example.test"):
        assert trace_id in [t["trace"] for t in _trace(server, query)], query
    # The text face: one line a step.
    text = server.cli("trace", trace_id).stdout.decode()
    assert f"trace {trace_id}" in text and "bounced" in text and "Greylisted" in text
    missing = server.cli("trace", "nobody@nowhere.test", check=False)
    assert missing.returncode == 1 and b"no message found" in missing.stderr


def test_mail_by_the_mx_port_is_traced_with_its_refused_recipient(
        server: MailhouseServer) -> None:
    body = (b"From: <x@remote.test>\r\nTo: <alice@example.test>\r\n"
            b"Message-ID: <trace-2@remote.test>\r\nSubject: in\r\n\r\nHello.\r\n")
    with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=30) as smtp:
        smtp.ehlo("client.remote.test")
        smtp.mail("x@remote.test")
        assert smtp.rcpt("nobody@example.test")[0] == 550
        assert smtp.rcpt("alice@example.test")[0] == 250
        code, reply = smtp.data(body)
        assert code == 250, reply
    trace_id = reply.decode().rsplit(" ", 1)[1]

    def found() -> list[dict[str, Any]]:
        return _trace(server, "x@remote.test")

    assert wait_until(lambda: bool(found()) and "stored" in _kinds(found()[0]), timeout=15,
                      interval=0.2), server.log_tail()
    [trace] = found()
    assert trace["trace"] == trace_id
    kinds = _kinds(trace)
    assert kinds == {"refused": ["nobody@example.test"], "received": ["alice@example.test"],
                     "stored": ["alice@example.test"]}
    descriptions = [s["description"] for s in trace["steps"]]
    assert "550 5.1.1" in descriptions[0] and "unknown user" in descriptions[0]
    assert "HELO client.remote.test" in descriptions[1]
    assert "without TLS" in descriptions[1]
    assert "INBOX" in descriptions[2]


def test_steps_older_than_keep_days_are_pruned_by_the_server(server: MailhouseServer) -> None:
    with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=30) as smtp:
        smtp.sendmail("old@remote.test", ["alice@example.test"], b"Subject: old\r\n\r\nx\r\n")
    assert wait_until(lambda: bool(_trace(server, "old@remote.test")), timeout=15,
                      interval=0.2), server.log_tail()
    assert server.stop() == 0
    with sqlite3.connect(server.data_dir / "mailhouse.db") as conn:
        conn.execute("UPDATE message_events SET at = at - 31 * 86400")  # a month ago
    server.start()
    assert wait_until(lambda: not _trace(server, "old@remote.test"), timeout=15,
                      interval=0.2), server.log_tail()
    assert "event=trace.pruned steps=2" in server.log_path.read_text()
