"""Every way a command is refused, and that the parser goes on with the next one."""

from __future__ import annotations

import pytest

from mailhouse.proto.imap.commands import Login
from mailhouse.proto.imap.events import Bad, Command, ContinuationNeeded, No
from tests.proto.imap.driver import drive

BAD = [
    # (input, tag or None, text fragment)
    (b"+ NOOP\r\n", None, "tag"),
    (b"* NOOP\r\n", None, "tag"),
    (b"NOOP\r\n", "NOOP", "SP"),
    (b"a\r\n", "a", "SP"),
    (b"\x00\r\n", None, "tag"),
    (b"a FROB\r\n", "a", "Unknown command"),
    (b"a UID LOGIN x y\r\n", "a", "not a command"),
    (b"a NOOP x\r\n", "a", "extra"),
    (b"a  NOOP\r\n", "a", "command name"),
    (b"a LOGIN x\r\n", "a", "SP"),
    (b'a LOGIN "x y\r\n', "a", "quoted"),
    (b'a LOGIN "x\\y" z\r\n', "a", "quoted"),
    (b"a LOGIN \"\xff\" z\r\n", "a", "UTF-8"),
    (b"a LOGIN {3}\r\na\x00b z\r\n", "a", "NUL"),
    (b"a LOGIN ~{3+}\r\nabc z\r\n", "a", "literal8"),
    (b"a AUTHENTICATE PL@IN\r\n", "a", "extra"),
    (b"a AUTHENTICATE PLAIN abc\r\n", "a", "initial response"),
    (b"a FETCH 0 FLAGS\r\n", "a", "non-zero"),
    (b"a FETCH 4294967296 FLAGS\r\n", "a", "range"),
    (b"a FETCH 1:x FLAGS\r\n", "a", "number"),
    (b"a FETCH 1, FLAGS\r\n", "a", "number"),
    (b"a FETCH 1 FROB\r\n", "a", "Unknown fetch"),
    (b"a FETCH 1 (FLAGS\r\n", "a", ")"),
    (b"a FETCH 1 ()\r\n", "a", "fetch attribute"),
    (b"a FETCH 1 BODY[MIME]\r\n", "a", "section"),
    (b"a FETCH 1 BODY[1.FROB]\r\n", "a", "section"),
    (b"a FETCH 1 BODY[HEADER.FIELDS ()]\r\n", "a", "astring"),
    (b"a FETCH 1 BODY[HEADER.FIELDS (a:b)]\r\n", "a", "header field"),
    (b"a FETCH 1 BODY[]<0.0>\r\n", "a", "non-zero"),
    (b"a FETCH 1 BODY[]<5>\r\n", "a", "'.'"),
    (b"a FETCH 1 UID[1]\r\n", "a", "Unknown fetch"),
    (b"a FETCH 1 FLAGS (FROB)\r\n", "a", "modifier"),
    (b"a FETCH 1 FLAGS (CHANGEDSINCE 1 CHANGEDSINCE 2)\r\n", "a", "modifier"),
    (b"a UID FETCH 1 FLAGS (VANISHED)\r\n", "a", "CHANGEDSINCE"),
    (b"a FETCH 1 FLAGS (CHANGEDSINCE 1 VANISHED)\r\n", "a", "UID FETCH"),
    (b"a STORE 1 +FLAG (\\Seen)\r\n", "a", "FLAGS"),
    (b"a STORE 1 (UNCHANGEDSINCE x) FLAGS ()\r\n", "a", "number"),
    (b"a STORE 1 FLAGS (\\)\r\n", "a", "flag"),
    (b"a SEARCH\r\n", "a", "SP"),
    (b"a SEARCH FROB\r\n", "a", "Unknown search key"),
    (b"a SEARCH KEYWORD \\Seen\r\n", "a", "keyword"),
    (b"a SEARCH HEADER a:b x\r\n", "a", "header field"),
    (b"a SEARCH SINCE 31-Feb-2020\r\n", "a", "date"),
    (b"a SEARCH SINCE 1-Foo-2020\r\n", "a", "date"),
    (b"a SEARCH (SEEN\r\n", "a", ")"),
    (b"a SEARCH OR SEEN\r\n", "a", "SP"),
    (b"a SEARCH MODSEQ \"/flags/\\\\seen\" other 5\r\n", "a", "entry type"),
    (b"a SEARCH MODSEQ \"/other\" all 5\r\n", "a", "entry name"),
    (b"a SEARCH RETURN (FROB) ALL\r\n", "a", "RETURN"),
    (b"a SEARCH CHARSET \"\xff\" ALL\r\n", "a", "UTF-8"),
    (b"a SEARCH 1:2:3\r\n", "a", "extra"),
    (b"a SORT () UTF-8 ALL\r\n", "a", "criteria"),
    (b"a SORT (FROB) UTF-8 ALL\r\n", "a", "sort key"),
    (b"a THREAD REFERENCES\r\n", "a", "SP"),
    (b"a SELECT INBOX (FROB)\r\n", "a", "SELECT parameter"),
    (b"a SELECT INBOX (QRESYNC (0 1))\r\n", "a", "non-zero"),
    (b"a SELECT INBOX (QRESYNC (1 1 1:5 (1:2)))\r\n", "a", "SP"),
    (b"a CREATE x (USE (Sent))\r\n", "a", "special-use"),
    (b"a CREATE x (FROB (\\Sent))\r\n", "a", "USE"),
    (b"a LIST (FROB) \"\" *\r\n", "a", "option"),
    (b"a LIST \"\" * RETURN (FROB)\r\n", "a", "RETURN option"),
    (b"a LSUB \"\" (*)\r\n", "a", "pattern"),
    (b"a STATUS INBOX ()\r\n", "a", "needs items"),
    (b"a STATUS INBOX (FROB)\r\n", "a", "option"),
    (b"a ENABLE\r\n", "a", "needs"),
    (b"a ID (\"a\")\r\n", "a", "SP"),
    (b"a ID (\"a\" \"b\" " + b"\"k\" \"v\" " * 30 + b")\r\n", "a", "2971"),
    (b"a SETQUOTA \"\" (STORAGE)\r\n", "a", "SP"),
    (b"a APPEND INBOX (\\Recent) {1+}\r\nx\r\n", "a", "Recent"),
    (b"a APPEND INBOX \"x\"\r\n", "a", "date-time"),
    (b"a APPEND INBOX\r\n", "a", "SP"),
    (b"a APPEND INBOX \"1-Jan-2020 00:00:00 +0000\" {1+}\r\nx\r\n", "a", "date-time"),
    (b"a APPEND INBOX \"01-Jan-2020 00:00:00 +0099\" {1+}\r\nx\r\n", "a", "zone"),
    (b"a APPEND INBOX \"01-Jan-2020 00:00:00 +9900\" {1+}\r\nx\r\n", "a", "zone"),
    (b"a APPEND INBOX \"01-Jan-2020 25:00:00 +0000\" {1+}\r\nx\r\n", "a", "date-time"),
    (b"a SELECT &Jjo\r\n", "a", "modified UTF-7"),
    (b"a SELECT &AGE-\r\n", "a", "modified UTF-7"),
    (b"a SELECT \"caf\xc3\xa9\"\r\n", "a", "modified UTF-7"),
]


@pytest.mark.parametrize(("data", "tag", "text"), BAD)
def test_bad_and_the_session_goes_on(data: bytes, tag: str | None, text: str) -> None:
    events = drive([data + b"z NOOP\r\n"])
    events = [e for e in events if not isinstance(e, ContinuationNeeded)]
    assert len(events) == 2, events
    bad, after = events
    assert isinstance(bad, Bad) and bad.tag == tag, bad
    assert text.lower() in bad.text.lower(), bad
    assert isinstance(after, Command) and after.tag == "z"


@pytest.mark.parametrize("name", [b"a/../b", b"..", b"a//b", b"/a", b"&AAE-",
                                  b"&ICg-", b"."])
def test_mailbox_names_refused_by_policy(name: bytes) -> None:
    for command in (b"SELECT", b"CREATE", b"DELETE", b"RENAME INBOX", b"STATUS", b"COPY 1",
                    b"SUBSCRIBE"):
        line = b"a " + command + b" " + b'"' + name + b'"'
        line += b" (MESSAGES)" if command == b"STATUS" else b""
        events = drive([line + b"\r\n"])
        assert events == [No("a", events[0].text, "CANNOT")], (command, name, events)  # type: ignore[union-attr]


def test_broken_command_with_sync_literal_is_answered_before_the_literal() -> None:
    events = drive([b"a FROB {5}\r\n", b"b NOOP\r\n"])
    assert events[0] == Bad("a", "Unknown command FROB")
    assert isinstance(events[1], Command) and events[1].tag == "b"


def test_append_to_a_refused_name_is_refused_before_the_message() -> None:
    events = drive([b"a APPEND a/../b {5}\r\n", b"b NOOP\r\n"])
    assert isinstance(events[0], No) and events[0].code == "CANNOT"
    assert isinstance(events[1], Command)
    events = drive([b"a APPEND INBOX (\\Recent) {5}\r\n", b"b NOOP\r\n"])
    assert isinstance(events[0], Bad) and isinstance(events[1], Command)
    events = drive([b"a APPEND INBOX {5}\r\n", b"b NOOP\r\n"])  # a mailbox literal... no: message
    assert isinstance(events[0], ContinuationNeeded) and events[0].message


def test_broken_command_with_non_sync_literal_skips_the_literal() -> None:
    # The literal's octets look like a command: they must not run.
    events = drive([b"a FROB {12+}\r\nb DELETE x\r\n\r\nc NOOP\r\n"])
    assert events[0] == Bad("a", "Unknown command FROB")
    assert [e.tag for e in events[1:] if isinstance(e, Command)] == ["c"]


def test_append_message_then_bad_tail() -> None:
    events = drive([b"a APPEND INBOX {3+}\r\nabc FROB\r\nb NOOP\r\n"])
    assert isinstance(events[-2], Bad) and events[-2].tag == "a"
    assert isinstance(events[-1], Command)


def test_literal_in_a_place_for_an_atom() -> None:
    events = drive([b"a FETCH {1+}\r\n1 FLAGS\r\n"])
    assert isinstance(events[0], Bad)


def test_control_characters_in_utf8_names_are_refused_by_policy() -> None:
    from mailhouse.proto.imap.parser import CommandParser

    parser = CommandParser()
    parser.utf8 = True
    events = parser.feed(b"a CREATE {3+}\r\na\x01b\r\nb CREATE \"a\xe2\x80\xa8\"\r\n"
                         b"c CREATE \"\xff\"\r\n")
    assert [type(e).__name__ for e in events] == ["No", "No", "Bad"]


def test_literal_sizes_with_leading_zeros() -> None:
    events = drive([b"a LOGIN x {" + b"0" * 40 + b"3+}\r\nabc\r\n"])
    assert isinstance(events[0], Command) and events[0].args == Login("x", "abc")
