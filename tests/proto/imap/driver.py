"""Runs the IMAP command parser as a server would, answering every decision the same way."""

from __future__ import annotations

from mailhouse.proto.imap import server_events as ev
from mailhouse.proto.imap.config import ParserConfig
from mailhouse.proto.imap.events import (
    Command,
    ContinuationNeeded,
    Event,
    Fatal,
    SaslResponse,
)
from mailhouse.proto.imap.parser import CommandParser
from mailhouse.proto.imap.server import ImapServer, LoginOutcome


def drive(pieces: list[bytes], config: ParserConfig | None = None, *,
          accept: bool = True, check_bound: bool = True) -> list[Event]:
    """Feed `pieces` one after the other; accept (or refuse) every literal, start IDLE and SASL
    when asked, end SASL after one response. The unparsed input must stay bounded."""
    parser = CommandParser(config)
    events: list[Event] = []
    pending: list[Event] = []
    for piece in pieces:
        pending.extend(parser.feed(piece))
        while pending:
            event = pending.pop(0)
            events.append(event)
            if isinstance(event, ContinuationNeeded):
                pending.extend(parser.accept_literal() if accept else parser.reject_literal())
            elif isinstance(event, Command) and event.name == "IDLE":
                pending.extend(parser.start_idle())
            elif isinstance(event, Command) and event.name == "AUTHENTICATE":
                pending.extend(parser.start_sasl())
            elif isinstance(event, SaslResponse) or (
                    isinstance(event, Command) and event.name == "ENABLE"):
                pending.extend(parser.resume())  # SASL over after one response; ENABLE applied
            elif isinstance(event, Fatal):
                assert parser.feed(b"a NOOP\r\n") == []
        if check_bound and not parser.paused:
            limit = parser.config
            assert parser.buffered <= max(limit.max_line_length, limit.max_literal_size) + \
                len(piece) or parser.buffered <= len(piece)
    return events


def one(line: bytes, config: ParserConfig | None = None) -> Event:
    events = drive([line], config)
    assert len(events) == 1, events
    return events[0]


def command(line: bytes, config: ParserConfig | None = None) -> Command:
    """The one command `line` holds (continuation requests for its literals aside)."""
    events = [e for e in drive([line], config) if not isinstance(e, ContinuationNeeded)]
    assert len(events) == 1, events
    event = events[0]
    assert isinstance(event, Command), event
    return event


def serve(core: ImapServer, chunks: list[bytes]) -> bytes:
    """Feed the session core `chunks` and play the service: logins succeed, requests and IDLE
    complete OK, STARTTLS completes. Returns everything the core wrote (what it had pending
    first). Bounded: the core must ask for more input within 100,000 events of each chunk."""
    out = core.data_to_send()
    for chunk in chunks:
        core.receive_data(chunk)
        for _ in range(100_000):
            event = core.next_event()
            if isinstance(event, ev.Credentials):
                core.login_result(LoginOutcome.OK)
            elif isinstance(event, ev.Request | ev.IdleEnded):
                core.complete("OK", "done")
            elif isinstance(event, ev.StartTls):
                core.tls_established()
            elif isinstance(event, ev.NeedData | ev.Closed):
                break
        else:
            raise AssertionError("the core never asked for more input")
        out += core.data_to_send()
    return out
