"""SmtpDelivery end to end on loopback: the test DNS server names scripted SMTP peers on 127.0.0.x
(tests/helpers/fake_smtp.py), and one test delivers to Postfix's real smtp-sink."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Coroutine, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trustme

from mailhouse.config import DeliveryConfig, DnsConfig
from mailhouse.errors import Reply
from mailhouse.net.delivery import SmtpDelivery
from mailhouse.queue.contracts import OutboundMessage, RemoteResult
from mailhouse.store.base import Outcome
from tests.helpers.dns import SERVFAIL, DnsServer
from tests.helpers.fake_smtp import FakeSmtp, Script
from tests.helpers.net import free_port, smtp_greets, wait_until
from tests.helpers.tools import require_tools

MX1, MX2, MX3 = "127.0.0.2", "127.0.0.3", "127.0.0.4"
NOBODY_LISTENS = "127.0.0.99"
ZONES = {
    "dest.test": {"MX": [(10, "mx1.dest.test"), (20, "mx2.dest.test")]},
    "mx1.dest.test": {"A": [MX1]},
    "mx2.dest.test": {"A": [MX2]},
    "one.test": {"MX": [(10, "mx1.dest.test")]},
    "dead-first.test": {"MX": [(10, "dead.dest.test"), (20, "mx2.dest.test")]},
    "dead.dest.test": {"A": [NOBODY_LISTENS]},
    "null.test": {"MX": [(0, ".")]},
    "failing.test": SERVFAIL,
    "loop.test": {"MX": [(10, "mail.us.test")]},
    "mail.us.test": {"A": ["127.0.0.1"]},
    "sink.test": {"MX": [(10, "sink.dest.test")]},
    "sink.dest.test": {"A": [MX3]},
}
MESSAGE = (b"From: a@us.test\r\nTo: b@dest.test\r\nSubject: test\r\n\r\n"
           b".leading dot\r\nbare LF here\n..two dots\r\nbare CR\rend without newline")


@pytest.fixture(scope="module")
def dns_server() -> Iterator[DnsServer]:
    with DnsServer(ZONES) as server:
        yield server


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


def message(body: bytes = MESSAGE, *, chunk: int = 7, sender: str = "a@us.test",
            **kw: Any) -> OutboundMessage:
    async def source() -> AsyncIterator[bytes]:
        for i in range(0, len(body), chunk):
            yield body[i:i + chunk]

    return OutboundMessage(queue_id=1, sender=sender, size=len(body),
                           smtputf8=kw.get("smtputf8", False),
                           body_8bit=kw.get("body_8bit", False), source=source)


def delivery(dns: DnsServer, port: int, **config: Any) -> SmtpDelivery:
    cfg = replace(DeliveryConfig(port=port, connect_timeout=2.0, command_timeout=5.0,
                                 data_timeout=5.0), **config)
    return SmtpDelivery(cfg, DnsConfig(nameservers=(dns.nameserver,)), hostname="mail.us.test",
                        local_addresses=frozenset({"192.0.2.10"}), dns_timeout=2.0)


async def deliver(d: SmtpDelivery, domain: str, *rcpts: str,
                  msg: OutboundMessage | None = None) -> list[RemoteResult]:
    return await d.deliver(domain, msg or message(), list(rcpts))


def outcomes(results: list[RemoteResult]) -> list[Outcome]:
    return [r.outcome for r in results]


def clean_wire(wire: bytes) -> bool:
    """CRLF line ends only (security checklist 28)."""
    return wire.count(b"\r") == wire.count(b"\n") == wire.count(b"\r\n")


# --- the ordinary path ---------------------------------------------------------------------------

def test_delivers_to_the_best_mx_with_crlf_only_and_dot_stuffed(dns_server: DnsServer) -> None:
    async def scenario() -> None:
        async with FakeSmtp.group({MX1: Script(), MX2: Script()}) as servers:
            d = delivery(dns_server, servers.port)
            results = await deliver(d, "dest.test", "b@dest.test", "c@dest.test")
            await d.close()
            assert outcomes(results) == [Outcome.DELIVERED] * 2
            assert results[0].remote_host == f"mx1.dest.test [{MX1}]"
            assert results[0].reply == Reply(250, "2.0.0", "Ok: queued")
            (wire,) = servers[MX1].messages
            assert clean_wire(wire)
            assert wire == (b"From: a@us.test\r\nTo: b@dest.test\r\nSubject: test\r\n\r\n"
                            b"..leading dot\r\nbare LF here\r\n...two dots\r\nbare CR\r\n"
                            b"end without newline\r\n.\r\n")
            commands = servers[MX1].commands
            assert commands[:4] == ["EHLO mail.us.test",
                                    f"MAIL FROM:<a@us.test> SIZE={len(MESSAGE)}",
                                    "RCPT TO:<b@dest.test>", "RCPT TO:<c@dest.test>"]
            assert servers[MX2].sessions == []

    run(scenario())


def test_greylisted_450_then_delivered_once_on_the_next_attempt(dns_server: DnsServer) -> None:
    grey = Script(rcpt=lambda rcpt, n: "450 4.2.0 Greylisted, try later" if n == 0 else None)

    async def scenario() -> None:
        async with FakeSmtp.group({MX1: grey}) as servers:
            d = delivery(dns_server, servers.port)
            (first,) = await deliver(d, "one.test", "b@one.test")
            assert first.outcome is Outcome.TEMPORARY
            assert first.reply == Reply(450, "4.2.0", "Greylisted, try later")
            assert first.remote_host == f"mx1.dest.test [{MX1}]"
            assert servers[MX1].messages == []
            (second,) = await deliver(d, "one.test", "b@one.test")
            assert second.outcome is Outcome.DELIVERED
            assert len(servers[MX1].messages) == 1
            await d.close()

    run(scenario())


def test_one_recipient_refused_the_other_delivered(dns_server: DnsServer) -> None:
    script = Script(rcpt=lambda rcpt, n: "550 5.1.1 <bad@one.test>: User unknown"
                    if "bad@" in rcpt else None)

    async def scenario() -> None:
        async with FakeSmtp.group({MX1: script}) as servers:
            d = delivery(dns_server, servers.port)
            results = await deliver(d, "one.test", "bad@one.test", "good@one.test")
            await d.close()
            assert outcomes(results) == [Outcome.PERMANENT, Outcome.DELIVERED]
            assert results[0].reply == Reply(550, "5.1.1", "<bad@one.test>: User unknown")
            assert [r.recipient for r in results] == ["bad@one.test", "good@one.test"]
            assert len(servers[MX1].messages) == 1

    run(scenario())


def test_mail_refused_is_permanent_for_everyone(dns_server: DnsServer) -> None:
    script = Script(mail=lambda arg, n: "553 5.7.1 Sender rejected")

    async def scenario() -> None:
        async with FakeSmtp.group({MX1: script, MX2: Script()}) as servers:
            d = delivery(dns_server, servers.port)
            results = await deliver(d, "dest.test", "a@dest.test", "b@dest.test")
            await d.close()
            assert outcomes(results) == [Outcome.PERMANENT] * 2
            assert results[1].reply.enhanced == "5.7.1"
            assert servers[MX2].sessions == []  # a 5xx is an answer: no other MX tried

    run(scenario())


def test_final_reply_5xx_is_permanent(dns_server: DnsServer) -> None:
    script = Script(final=lambda msg, n: "554 5.7.1 Spam\nContact postmaster")

    async def scenario() -> None:
        async with FakeSmtp.group({MX1: script}) as servers:
            d = delivery(dns_server, servers.port)
            (result,) = await deliver(d, "one.test", "a@one.test")
            await d.close()
            assert result.outcome is Outcome.PERMANENT
            assert result.reply == Reply(554, "5.7.1", "Spam\nContact postmaster")

    run(scenario())


# --- trying the next host ------------------------------------------------------------------------

def test_unreachable_or_refusing_first_mx_falls_through_to_the_second(
        dns_server: DnsServer) -> None:
    async def scenario() -> None:
        async with FakeSmtp.group({MX2: Script()}) as servers:
            d = delivery(dns_server, servers.port)
            (result,) = await deliver(d, "dead-first.test", "a@dead-first.test")
            assert result.outcome is Outcome.DELIVERED
            assert result.remote_host == f"mx2.dest.test [{MX2}]"
            await d.close()
        async with FakeSmtp.group({MX1: Script(greeting="554 5.7.1 Go away"),
                                   MX2: Script()}) as servers:
            d = delivery(dns_server, servers.port)
            (result,) = await deliver(d, "dest.test", "a@dest.test")
            await d.close()
            assert result.outcome is Outcome.DELIVERED and len(servers[MX2].messages) == 1

    run(scenario())


def test_temporary_everywhere_is_temporary(dns_server: DnsServer) -> None:
    refuse = Script(greeting="554 5.7.1 Blocked")
    busy = Script(mail=lambda arg, n: "451 4.3.0 Try again")

    async def scenario() -> None:
        async with FakeSmtp.group({MX1: refuse, MX2: busy}) as servers:
            d = delivery(dns_server, servers.port)
            results = await deliver(d, "dest.test", "a@dest.test", "b@dest.test")
            await d.close()
            assert outcomes(results) == [Outcome.TEMPORARY] * 2
            assert results[0].reply == Reply(451, "4.3.0", "Try again")  # the last host's word
            assert results[0].remote_host == f"mx2.dest.test [{MX2}]"
        async with FakeSmtp.group({MX1: refuse}) as servers:
            d = delivery(dns_server, servers.port)
            (result,) = await deliver(d, "one.test", "a@one.test")
            await d.close()
            # A 5xx greeting is not the recipient's fault: temporary, reported as a 4xx.
            assert result.outcome is Outcome.TEMPORARY
            assert result.reply == Reply(454, "4.7.1", "Blocked")

    run(scenario())


def test_soft_failed_recipients_are_retried_on_the_next_mx(dns_server: DnsServer) -> None:
    picky = Script(rcpt=lambda rcpt, n: "452 4.2.2 Mailbox full" if "full@" in rcpt else None)

    async def scenario() -> None:
        async with FakeSmtp.group({MX1: picky, MX2: Script()}) as servers:
            d = delivery(dns_server, servers.port)
            results = await deliver(d, "dest.test", "ok@dest.test", "full@dest.test")
            await d.close()
            assert outcomes(results) == [Outcome.DELIVERED] * 2
            assert results[1].remote_host == f"mx2.dest.test [{MX2}]"
            assert servers[MX2].commands[2:3] == ["RCPT TO:<full@dest.test>"]

    run(scenario())


def test_a_full_remote_mailbox_defers_only_its_recipient(dns_server: DnsServer) -> None:
    """RCPT replies are per recipient (as LMTP's after DATA): a 452 4.2.2 for one (RFC 3463
    mailbox full) leaves it TEMPORARY for the queue to retry, the others are delivered."""
    picky = Script(rcpt=lambda rcpt, n: "452 4.2.2 Mailbox full" if "full@" in rcpt else None)

    async def scenario() -> None:
        async with FakeSmtp.group({MX1: picky}) as servers:
            d = delivery(dns_server, servers.port)
            results = await deliver(d, "one.test", "ok@one.test", "full@one.test")
            await d.close()
            assert outcomes(results) == [Outcome.DELIVERED, Outcome.TEMPORARY]
            assert results[1].reply == Reply(452, "4.2.2", "Mailbox full")

    run(scenario())


# --- faults: drops and stalls --------------------------------------------------------------------

@pytest.mark.parametrize("script", [Script(drop_after_data_lines=2), Script(drop_after_dot=True)],
                         ids=["mid-data", "after-dot"])
def test_connection_dropped_during_data_is_temporary(dns_server: DnsServer,
                                                     script: Script) -> None:
    async def scenario() -> None:
        async with FakeSmtp.group({MX1: script}) as servers:
            d = delivery(dns_server, servers.port)
            results = await deliver(d, "one.test", "a@one.test", "b@one.test")
            await d.close()
            assert outcomes(results) == [Outcome.TEMPORARY] * 2
            assert results[0].reply.enhanced == "4.4.2"

    run(scenario())


def test_a_stall_after_the_final_dot_is_waited_for_then_deferred(dns_server: DnsServer) -> None:
    async def scenario() -> None:
        async with FakeSmtp.group({MX1: Script(stall_after_dot=10)}) as servers:
            d = delivery(dns_server, servers.port, data_timeout=1.0)
            started = time.monotonic()
            (result,) = await deliver(d, "one.test", "a@one.test")
            elapsed = time.monotonic() - started
            await d.close()
            assert result.outcome is Outcome.TEMPORARY
            assert result.reply.enhanced == "4.4.2" and "may have been delivered" in (
                result.reply.text)
            assert 1.0 <= elapsed < 4.0
            assert len(servers[MX1].messages) == 1  # it went out, and it is not dropped

    run(scenario())


def test_cancelled_delivery_drops_its_connection(dns_server: DnsServer) -> None:
    async def scenario() -> None:
        async with FakeSmtp.group({MX1: Script(stall_after_dot=10)}) as servers:
            d = delivery(dns_server, servers.port)
            task = asyncio.create_task(deliver(d, "one.test", "a@one.test"))
            assert await asyncio.to_thread(
                wait_until, lambda: bool(servers[MX1].messages), 5)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            assert d.pool.idle_count == 0
            await asyncio.sleep(0.1)
            assert servers[MX1].by_peer_closed == 1
            await d.close()

    run(scenario())


def test_connection_refused_is_temporary_without_a_remote_host(dns_server: DnsServer) -> None:
    async def scenario() -> None:
        d = delivery(dns_server, free_port())
        (result,) = await d.deliver(f"[{NOBODY_LISTENS}]", message(), [f"a@[{NOBODY_LISTENS}]"])
        await d.close()
        assert result.outcome is Outcome.TEMPORARY and result.reply.enhanced == "4.4.1"
        assert result.remote_host is None

    run(scenario())


@contextlib.contextmanager
def full_backlog(address: str) -> Iterator[int]:
    """A port whose accept queue is full: the kernel drops further SYNs, so connects hang."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((address, 0))
    listener.listen(0)
    port = int(listener.getsockname()[1])
    fillers = []
    try:
        for _ in range(3):
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            filler.setblocking(False)
            fillers.append(filler)
            with contextlib.suppress(BlockingIOError):
                filler.connect((address, port))
        time.sleep(0.1)
        yield port
    finally:
        for sock in [*fillers, listener]:
            sock.close()


def test_connect_timeout_then_next_mx(dns_server: DnsServer) -> None:
    async def scenario() -> None:
        with full_backlog(MX1) as port:
            async with contextlib.AsyncExitStack() as stack:
                server = FakeSmtp(MX2, port, Script())
                await server.start()
                stack.push_async_callback(server.stop)
                d = delivery(dns_server, port, connect_timeout=0.5)
                started = time.monotonic()
                (result,) = await deliver(d, "dest.test", "a@dest.test")
                await d.close()
                assert result.outcome is Outcome.DELIVERED
                assert result.remote_host == f"mx2.dest.test [{MX2}]"
                assert 0.5 <= time.monotonic() - started < 3

    run(scenario())


def test_a_silent_server_times_out_per_command_then_next_mx(dns_server: DnsServer) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            with contextlib.suppress(ConnectionError):
                await reader.read()  # never greets
        finally:
            writer.transport.abort()

    async def scenario() -> None:
        async with FakeSmtp.group({MX2: Script()}) as servers:
            mute = await asyncio.start_server(silent, MX1, servers.port)
            try:
                d = delivery(dns_server, servers.port, command_timeout=0.5)
                started = time.monotonic()
                (result,) = await deliver(d, "dest.test", "a@dest.test")
                assert result.outcome is Outcome.DELIVERED
                assert 0.5 <= time.monotonic() - started < 3
                (result,) = await deliver(d, "one.test", "a@one.test")  # MX1 only
                await d.close()
                assert (result.outcome, result.reply.enhanced) == (Outcome.TEMPORARY, "4.4.2")
            finally:
                mute.close()

    run(scenario())


def test_duplicate_recipients_get_one_rcpt_and_a_result_each(dns_server: DnsServer) -> None:
    async def scenario() -> None:
        async with FakeSmtp.group({MX1: Script()}) as servers:
            d = delivery(dns_server, servers.port)
            results = await deliver(d, "one.test", "a@one.test", "a@one.test")
            await d.close()
            assert outcomes(results) == [Outcome.DELIVERED] * 2
            assert servers[MX1].commands.count("RCPT TO:<a@one.test>") == 1

    run(scenario())


# --- what the message needs ----------------------------------------------------------------------

def test_smtputf8_and_size_limits_are_permanent_without_sending(dns_server: DnsServer) -> None:
    small = Script(extensions=("PIPELINING", "SIZE 100"))

    async def scenario() -> None:
        async with FakeSmtp.group({MX1: small}) as servers:
            d = delivery(dns_server, servers.port)
            (utf8,) = await deliver(d, "one.test", "a@one.test", msg=message(smtputf8=True))
            (big,) = await deliver(d, "one.test", "a@one.test", msg=message(b"x" * 101))
            await d.close()
            assert (utf8.outcome, utf8.reply.enhanced) == (Outcome.PERMANENT, "5.6.7")
            assert (big.outcome, big.reply.code, big.reply.enhanced) == (
                Outcome.PERMANENT, 552, "5.3.4")
            assert not any(c.startswith("MAIL") for c in servers[MX1].commands)

    run(scenario())


def test_8bit_body_without_8bitmime_is_sent_unlabelled(dns_server: DnsServer) -> None:
    async def scenario() -> None:
        async with FakeSmtp.group({MX1: Script(extensions=("PIPELINING",)),
                                   MX2: Script()}) as servers:
            d = delivery(dns_server, servers.port)
            body = "Subject: ü\r\n\r\nGrüße\r\n".encode()
            (result,) = await deliver(d, "one.test", "a@one.test",
                                      msg=message(body, body_8bit=True))
            await d.close()
            assert result.outcome is Outcome.DELIVERED
            assert "MAIL FROM:<a@us.test>" in servers[MX1].commands
            assert servers[MX1].messages == [body + b".\r\n"]

    run(scenario())


# --- DNS outcomes through SmtpDelivery -----------------------------------------------------------

def test_dns_outcomes(dns_server: DnsServer) -> None:
    async def scenario() -> None:
        d = delivery(dns_server, free_port())
        (null,) = await deliver(d, "null.test", "a@null.test")
        (nx,) = await deliver(d, "nowhere.test", "a@nowhere.test")
        (fail,) = await deliver(d, "failing.test", "a@failing.test")
        (loop,) = await deliver(d, "loop.test", "a@loop.test")
        await d.close()
        assert (null.outcome, null.reply.code, null.reply.enhanced) == (
            Outcome.PERMANENT, 556, "5.1.10")
        assert (nx.outcome, nx.reply.enhanced) == (Outcome.PERMANENT, "5.1.2")
        assert (fail.outcome, fail.reply.enhanced) == (Outcome.TEMPORARY, "4.4.3")
        assert (loop.outcome, loop.reply.enhanced) == (Outcome.PERMANENT, "5.4.6")

    run(scenario())


# --- TLS -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server_tls() -> ssl.SSLContext:
    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("mx1.dest.test").configure_cert(ctx)
    return ctx


def test_starttls_when_offered_and_ehlo_again(dns_server: DnsServer,
                                              server_tls: ssl.SSLContext) -> None:
    async def scenario() -> None:
        async with FakeSmtp.group({MX1: Script(tls=server_tls)}) as servers:
            d = delivery(dns_server, servers.port)
            (result,) = await deliver(d, "one.test", "a@one.test")
            await d.close()
            assert result.outcome is Outcome.DELIVERED
            (session,) = servers[MX1].sessions
            assert session.tls and len(session.messages) == 1
            assert session.commands[:3] == ["EHLO mail.us.test", "STARTTLS", "EHLO mail.us.test"]

    run(scenario())


def test_failed_handshake_never_sends_on_that_connection_then_retries_plain(
        dns_server: DnsServer, server_tls: ssl.SSLContext) -> None:
    script = Script(tls=server_tls, break_tls=True)

    async def scenario() -> None:
        async with FakeSmtp.group({MX1: script}) as servers:
            d = delivery(dns_server, servers.port)
            (result,) = await deliver(d, "one.test", "a@one.test")
            assert result.outcome is Outcome.DELIVERED
            first, second = servers[MX1].sessions
            assert first.commands == ["EHLO mail.us.test", "STARTTLS"]  # nothing after it
            assert "STARTTLS" not in second.commands and not second.tls
            assert len(second.messages) == 1
            await d.close()
        async with FakeSmtp.group({MX1: script}) as servers:
            d = delivery(dns_server, servers.port)
            d.plaintext_fallback = False
            (result,) = await deliver(d, "one.test", "a@one.test")
            await d.close()
            assert (result.outcome, result.reply.enhanced) == (Outcome.TEMPORARY, "4.7.5")
            assert len(servers[MX1].sessions) == 1 and servers[MX1].messages == []

    run(scenario())


# --- connection reuse ----------------------------------------------------------------------------

def test_connection_reused_for_the_next_message_then_expires(dns_server: DnsServer) -> None:
    async def scenario() -> None:
        async with FakeSmtp.group({MX1: Script()}) as servers:
            d = delivery(dns_server, servers.port, connection_reuse_time=0.5)
            for _ in range(3):
                (result,) = await deliver(d, "one.test", "a@one.test")
                assert result.outcome is Outcome.DELIVERED
            assert len(servers[MX1].sessions) == 1
            assert len(servers[MX1].sessions[0].messages) == 3
            await asyncio.sleep(0.8)  # idle longer than connection_reuse_time
            assert servers[MX1].sessions[0].commands[-1] == "QUIT"
            await deliver(d, "one.test", "a@one.test")
            assert len(servers[MX1].sessions) == 2
            await d.close()

    run(scenario())


def test_rset_before_reusing_a_session_whose_transaction_failed(dns_server: DnsServer) -> None:
    script = Script(rcpt=lambda rcpt, n: "550 5.1.1 No" if n == 0 else None)

    async def scenario() -> None:
        async with FakeSmtp.group({MX1: script}) as servers:
            d = delivery(dns_server, servers.port)
            (first,) = await deliver(d, "one.test", "a@one.test")
            (second,) = await deliver(d, "one.test", "a@one.test")
            await d.close()
            assert (first.outcome, second.outcome) == (Outcome.PERMANENT, Outcome.DELIVERED)
            (session,) = servers[MX1].sessions
            assert "RSET" in session.commands

    run(scenario())


def test_a_pooled_session_that_died_is_replaced(dns_server: DnsServer) -> None:
    async def scenario() -> None:
        async with FakeSmtp.group({MX1: Script()}) as servers:
            d = delivery(dns_server, servers.port)
            await deliver(d, "one.test", "a@one.test")
        async with FakeSmtp.group({MX1: Script()}) as servers:  # the remote restarted
            d.config = replace(d.config, port=servers.port)
            (result,) = await deliver(d, "one.test", "a@one.test")
            await d.close()
            assert result.outcome is Outcome.DELIVERED

    run(scenario())


# --- Postfix's smtp-sink as the remote -----------------------------------------------------------

@contextlib.contextmanager
def smtp_sink(address: str, port: int) -> Iterator[Path]:
    """smtp-sink on address:port dumping each message into the yielded directory."""
    tools = require_tools("smtp-sink")
    dump = Path(tempfile.mkdtemp(prefix="sink", dir="/tmp"))
    dump.chmod(0o777)  # smtp-sink drops to nobody before writing
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    proc = subprocess.Popen([tools["smtp-sink"], *user, "-d", f"{dump}/%H%M%S.",
                             f"{address}:{port}", "100"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if not wait_until(lambda: smtp_greets(port, address), timeout=10,
                          abort=lambda: None if proc.poll() is None else "smtp-sink exited"):
            raise RuntimeError("smtp-sink did not start")
        yield dump
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(dump, ignore_errors=True)


async def recording_proxy(listen: tuple[str, int], target: tuple[str, int],
                          wire: bytearray) -> asyncio.Server:
    """Forwards one TCP stream and keeps what the client sent."""
    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   record: bool) -> None:
        with contextlib.suppress(ConnectionError):
            for _ in range(100_000):
                data = await reader.read(65536)
                if not data:
                    break
                if record:
                    wire.extend(data)
                writer.write(data)
                await writer.drain()
        writer.close()

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*target)
        await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False))

    return await asyncio.start_server(session, *listen)


def test_wire_bytes_to_postfix_smtp_sink_are_crlf_only_and_dot_stuffed(
        dns_server: DnsServer) -> None:
    sink_port = free_port()
    with smtp_sink("127.0.0.1", sink_port) as dump:
        wire = bytearray()

        async def scenario() -> list[RemoteResult]:
            port = free_port()
            proxy = await recording_proxy((MX3, port), ("127.0.0.1", sink_port), wire)
            try:
                d = delivery(dns_server, port)
                results = await deliver(d, "sink.test", "x@sink.test", "y@sink.test")
                await d.close()
                await asyncio.sleep(0.2)
                return results
            finally:
                proxy.close()

        results = run(scenario())
        assert outcomes(results) == [Outcome.DELIVERED] * 2
        assert clean_wire(bytes(wire))
        data = bytes(wire).split(b"DATA\r\n", 1)[1].split(b"\r\n.\r\n", 1)[0]
        assert b"\r\n..leading dot\r\n" in data and b"\r\n...two dots\r\n" in data
        assert wait_until(lambda: any(dump.iterdir()), timeout=5)
        (dumped,) = list(dump.iterdir())
        content = dumped.read_bytes()
        # smtp-sink unstuffs and writes LF lines: what it understood is the original message.
        assert content.endswith(MESSAGE.replace(b"\r\n", b"\n").replace(b"\r", b"\n") + b"\n\n")
        assert b"X-Rcpt-Args: <x@sink.test>\nX-Rcpt-Args: <y@sink.test>\n" in content
