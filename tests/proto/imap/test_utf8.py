"""RFC 6855 (UTF8=ACCEPT) in the core: UTF-8 quoted mailbox names before and after ENABLE,
APPEND's UTF8 data item (literal8 inside parentheses, RFC 6855 §4) with MULTIAPPEND and
LITERAL+, its error paths, ENABLE of what is announced only (RFC 5161 §3.1), and the charset
rules of RFC 6855 §3 (erratum 4029)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailhouse.proto.imap import commands as c
from mailhouse.proto.imap import server_events as ev
from mailhouse.proto.imap.events import AppendData, Bad, Command, ContinuationNeeded, No
from mailhouse.proto.imap.mailbox import MAX_NAME_LENGTH
from mailhouse.proto.imap.parser import CommandParser
from mailhouse.proto.imap.server import ImapServer, ImapServerConfig
from tests.proto.imap.driver import serve

CONFIG = ImapServerConfig(hostname="imap.example.test",
                          capabilities=("MULTIAPPEND", "UTF8=ACCEPT", "SORT", "THREAD=REFERENCES"),
                          enableable=("UTF8=ACCEPT",))


def parse(data: bytes, *, utf8: bool = False, append: bool = False) -> list[object]:
    """Every event of `data` through a parser in the given mode, each literal accepted."""
    parser = CommandParser()
    parser.utf8, parser.utf8_append = utf8, append
    events: list[object] = []
    pending = list(parser.feed(data))
    while pending:
        event = pending.pop(0)
        events.append(event)
        if isinstance(event, ContinuationNeeded):
            pending.extend(parser.accept_literal())
    return events


def only_command(events: list[object]) -> Command:
    commands = [e for e in events if isinstance(e, Command | Bad | No)]
    assert len(commands) == 1, events
    command = commands[0]
    assert isinstance(command, Command), command
    return command


def message_octets(events: list[object]) -> list[bytes]:
    out: dict[int, bytes] = {}
    for e in events:
        if isinstance(e, AppendData):
            out[e.index] = out.get(e.index, b"") + e.data
    return [out[i] for i in sorted(out)]


# --- mailbox names ---------------------------------------------------------------------------
def test_quoted_utf8_names_only_after_enable() -> None:
    line = 'a SELECT "Données/été"\r\n'.encode()
    bad = parse(line)[0]
    assert isinstance(bad, Bad) and "modified UTF-7" in bad.text  # RFC 3501 §5.1.3
    assert only_command(parse(line, utf8=True)).args == c.Select("Données/été")
    # Modified UTF-7 is not decoded once UTF-8 is on: "&AOk-" is a plain name then.
    assert only_command(parse(b"a SELECT &AOk-\r\n", utf8=True)).args == c.Select("&AOk-")
    assert only_command(parse(b"a SELECT &AOk-\r\n")).args == c.Select("é")


def test_utf8_names_in_a_literal_and_list_patterns() -> None:
    name = "日本語".encode()
    command = only_command(parse(b"a CREATE {%d}\r\n%s\r\n" % (len(name), name), utf8=True))
    assert command.args == c.Create("日本語")
    command = only_command(parse('a LIST "" "日本%"\r\n'.encode(), utf8=True))
    assert isinstance(command.args, c.ListMailboxes) and command.args.patterns == ("日本%",)


@pytest.mark.parametrize("octets", [b"\xff", b"\xc3", b"\xc0\xaf", b"\xed\xa0\x80",
                                    b"caf\xe9"])
def test_invalid_utf8_in_a_name_is_bad(octets: bytes) -> None:
    # RFC 6855 §3: octets with the high bit set that are not UTF-8 are rejected with BAD.
    for line in (b'a SELECT "' + octets + b'"\r\n', b'a LIST "" "' + octets + b'"\r\n'):
        event = parse(line, utf8=True)[0]
        assert isinstance(event, Bad) and "UTF-8" in event.text


@pytest.mark.parametrize("name", ["a\u0085b", "a\x7fb", "a\u2028b", "a\u2029b"])
def test_controls_and_separators_in_names_are_refused(name: str) -> None:
    event = parse(b'a CREATE "' + name.encode() + b'"\r\n', utf8=True)[0]
    assert isinstance(event, No) and event.code == "CANNOT"  # RFC 6855 §3


def test_new_names_must_be_nfc() -> None:
    decomposed = "e\u0301t\u00e9"  # "été" with its first é decomposed
    for line in (b'a CREATE "' + decomposed.encode() + b'"\r\n',
                 b'a RENAME Old "' + decomposed.encode() + b'"\r\n'):
        event = parse(line, utf8=True)[0]
        assert isinstance(event, No) and event.code == "CANNOT" and "NFC" in event.text
    # The same name in modified UTF-7 (e, U+0301, t, U+00E9) is refused alike.
    event = parse(b"a CREATE e&AwE-t&AOk-\r\n")[0]
    assert isinstance(event, No) and "NFC" in event.text
    # Existing names are not checked: a mailbox made some other way can still be opened.
    assert only_command(parse(b'a SELECT "' + decomposed.encode() + b'"\r\n', utf8=True)).args \
        == c.Select(decomposed)


def test_name_length_limit_counts_characters() -> None:
    fits = "😀" * MAX_NAME_LENGTH  # 4 octets each in UTF-8
    command = only_command(parse(b'a CREATE "' + fits.encode() + b'"\r\n', utf8=True))
    assert command.args == c.Create(fits)
    event = parse(b'a CREATE "' + (fits + "x").encode() + b'"\r\n', utf8=True)[0]
    assert isinstance(event, No) and event.code == "CANNOT" and "too long" in event.text


# --- APPEND UTF8 (literal8) ---------------------------------------------------------------------
MSG = "Subject: Grüße\r\n\r\nHallo\r\n".encode()


def test_append_utf8_data_item() -> None:
    data = b"a APPEND INBOX UTF8 (~{%d}\r\n%s)\r\n" % (len(MSG), MSG)
    events = parse(data, append=True)
    assert events[0] == ContinuationNeeded("a", len(MSG), True)
    command = only_command(events)
    assert command.args == c.Append("INBOX", (c.AppendMessage(0, len(MSG), binary=True,
                                                              utf8=True),))
    assert message_octets(events) == [MSG]


def test_append_utf8_with_flags_date_literal_plus_and_multiappend() -> None:
    second = b"Subject: plain\r\n\r\nx\r\n"
    data = (b'a APPEND "Entw\xc3\xbcrfe" (\\Seen) "05-Dec-2026 10:00:00 +0100" utf8 (~{%d+}\r\n'
            b"%s) {%d+}\r\n%s UTF8 (~{%d}\r\n%s)\r\n"
            % (len(MSG), MSG, len(second), second, len(MSG), MSG))
    events = parse(data, utf8=True, append=True)
    command = only_command(events)
    when = datetime(2026, 12, 5, 10, 0, tzinfo=timezone(timedelta(hours=1)))
    assert command.args == c.Append("Entwürfe", (
        c.AppendMessage(0, len(MSG), ("\\Seen",), when, binary=True, utf8=True),
        c.AppendMessage(1, len(second)),
        c.AppendMessage(2, len(MSG), binary=True, utf8=True),
    ))
    assert message_octets(events) == [MSG, second, MSG]
    # Only the last literal is synchronising: one continuation request.
    assert [e for e in events if isinstance(e, ContinuationNeeded)] == [
        ContinuationNeeded("a", len(MSG), True)]


def test_append_utf8_before_enable_is_bad_before_the_octets() -> None:
    events = parse(b"a APPEND INBOX UTF8 (~{%d}\r\n" % len(MSG))
    assert len(events) == 1
    assert isinstance(events[0], Bad) and "UTF8=ACCEPT" in events[0].text
    # IMAP4rev2 alone does not bring it (names are UTF-8, the data item is not there).
    events = parse(b"a APPEND INBOX UTF8 (~{%d}\r\n" % len(MSG), utf8=True)
    assert isinstance(events[0], Bad)


def test_append_utf8_before_enable_with_literal_plus_skips_the_octets() -> None:
    events = parse(b"a APPEND INBOX UTF8 (~{%d+}\r\n%s)\r\nb NOOP\r\n" % (len(MSG), MSG))
    assert isinstance(events[0], Bad) and events[0].tag == "a"
    assert not any(isinstance(e, AppendData) for e in events)
    assert isinstance(events[-1], Command) and events[-1].tag == "b"


@pytest.mark.parametrize("data", [
    b"a APPEND INBOX UTF8 ({5}\r\n",  # a plain literal inside UTF8 (): literal8 only
    b"a APPEND INBOX UTF8 ~{5}\r\n",  # no parenthesis
    b"a APPEND INBOX UTF8 (\r\n",  # no literal at all
    b"a APPEND INBOX UTF8(~{5}\r\n",  # no SP
])
def test_malformed_utf8_data_items_are_bad_before_the_octets(data: bytes) -> None:
    events = parse(data, utf8=True, append=True)
    assert len(events) == 1 and isinstance(events[0], Bad), events


@pytest.mark.parametrize("tail", [b"\r\n", b" )\r\n", b"))\r\n", b") junk\r\n"])
def test_the_closing_parenthesis_is_required(tail: bytes) -> None:
    events = parse(b"a APPEND INBOX UTF8 (~{5}\r\nHello" + tail, append=True)
    assert isinstance(events[-1], Bad), events


@settings(max_examples=100, deadline=None)
@given(messages=st.lists(st.tuples(st.binary(min_size=1, max_size=200), st.booleans(),
                                   st.booleans()), min_size=1, max_size=4),
       cut=st.integers(min_value=1, max_value=64))
def test_any_multiappend_with_utf8_items_parses_whole_in_any_split(
        messages: list[tuple[bytes, bool, bool]], cut: int) -> None:
    """Any mix of UTF8 data items and plain literals, synchronising or not, fed in pieces of
    any size: the same command and the same octets."""
    data = b"t APPEND INBOX"
    for body, utf8, plus in messages:
        header = b"{%d%s}\r\n" % (len(body), b"+" if plus else b"")
        data += (b" UTF8 (~" + header + body + b")") if utf8 else (b" ~" + header + body)
    data += b"\r\n"
    parser = CommandParser()
    parser.utf8 = parser.utf8_append = True
    events: list[object] = []
    pending: list[object] = []
    for at in range(0, len(data), cut):
        pending.extend(parser.feed(data[at:at + cut]))
        while pending:
            event = pending.pop(0)
            events.append(event)
            if isinstance(event, ContinuationNeeded):
                pending.extend(parser.accept_literal())
    command = only_command(events)
    assert isinstance(command.args, c.Append)
    assert [(m.utf8, m.binary, m.size) for m in command.args.messages] == [
        (utf8, True, len(body)) for body, utf8, _ in messages]
    assert message_octets(events) == [body for body, _, _ in messages]


# --- the session core: ENABLE, charsets, response text --------------------------------------------
def logged_in(config: ImapServerConfig = CONFIG) -> ImapServer:
    core = ImapServer(config, tls_active=True)
    serve(core, [b"l LOGIN alice pw\r\n"])
    return core


def test_enable_utf8_accept_only_when_announced() -> None:
    core = logged_in()
    assert serve(core, [b"e ENABLE UTF8=ACCEPT\r\n"]) == \
        b"* ENABLED UTF8=ACCEPT\r\ne OK Enabled\r\n"
    silent = logged_in(ImapServerConfig(hostname="h", capabilities=("MOVE",),
                                        enableable=("UTF8=ACCEPT",)))
    assert serve(silent, [b"e ENABLE UTF8=ACCEPT\r\n"]) == b"* ENABLED\r\ne OK Enabled\r\n"
    # Not enabled, so names stay modified UTF-7: a UTF-8 quoted name is BAD.
    out = serve(silent, ['s SELECT "été"\r\n'.encode()])
    assert out.startswith(b"s BAD")


def test_enable_applies_to_the_commands_pipelined_behind_it() -> None:
    core = logged_in()
    data = b"e ENABLE UTF8=ACCEPT\r\na APPEND INBOX UTF8 (~{%d+}\r\n%s)\r\n" % (len(MSG), MSG)
    core.receive_data(data)
    seen: list[ev.ServerEvent] = []
    while not isinstance(event := core.next_event(), ev.NeedData):
        seen.append(event)
        if isinstance(event, ev.Request):
            core.complete("OK", "done")
    requests = [e for e in seen if isinstance(e, ev.Request)]
    assert [r.command.name for r in requests] == ["APPEND"]
    assert requests[0].enabled == frozenset({"UTF8=ACCEPT"})
    assert b"".join(e.data for e in seen if isinstance(e, ev.AppendChunk)) == MSG


@pytest.mark.parametrize("line", [b"s SEARCH CHARSET UTF-8 SUBJECT x",
                                  b"s SEARCH CHARSET US-ASCII ALL",
                                  b"s SORT (DATE) US-ASCII ALL",
                                  b"s THREAD REFERENCES ISO-8859-1 ALL"])
def test_charsets_conflicting_with_utf8_accept_are_bad(line: bytes) -> None:
    core = logged_in()
    serve(core, [b"e ENABLE UTF8=ACCEPT\r\n", b"x SELECT INBOX\r\n"])
    out = serve(core, [line + b"\r\n"])
    assert out.startswith(b"s BAD") and b"UTF8=ACCEPT" in out, out


@pytest.mark.parametrize("line", [b"s SEARCH SUBJECT x", b"s SORT (DATE) UTF-8 ALL",
                                  b"s THREAD REFERENCES utf-8 ALL"])
def test_utf8_charsets_still_pass(line: bytes) -> None:
    core = logged_in()
    serve(core, [b"e ENABLE UTF8=ACCEPT\r\n", b"x SELECT INBOX\r\n"])
    assert serve(core, [line + b"\r\n"]) == b"s OK done\r\n"


def test_charset_in_search_is_fine_before_enable_and_under_imap4rev2() -> None:
    before = logged_in()
    serve(before, [b"x SELECT INBOX\r\n"])
    assert serve(before, [b"s SEARCH CHARSET UTF-8 ALL\r\n"]) == b"s OK done\r\n"
    rev2 = logged_in()
    serve(rev2, [b"e ENABLE IMAP4rev2 UTF8=ACCEPT\r\n", b"x SELECT INBOX\r\n"])
    assert serve(rev2, [b"s SEARCH CHARSET UTF-8 ALL\r\n"]) == b"s OK done\r\n"  # RFC 9051


def test_response_text_is_ascii_until_utf8_is_enabled() -> None:
    core = logged_in()
    core.receive_data(b"a STATUS INBOX (MESSAGES)\r\n")
    assert isinstance(core.next_event(), ev.Request)
    core.complete("NO", "cannot rename 'été'")
    assert core.data_to_send() == b"a NO cannot rename '\\xe9t\\xe9'\r\n"
    serve(core, [b"e ENABLE UTF8=ACCEPT\r\n"])
    core.receive_data(b"b STATUS INBOX (MESSAGES)\r\n")
    assert isinstance(core.next_event(), ev.Request)
    core.complete("NO", "cannot rename 'été'")
    assert core.data_to_send() == "b NO cannot rename 'été'\r\n".encode()
