"""Each ParserConfig limit, crossed (and met)."""

from __future__ import annotations

from mailhouse.proto.imap.config import ParserConfig
from mailhouse.proto.imap.events import (
    AppendData,
    Bad,
    Command,
    ContinuationNeeded,
    Fatal,
    IdleDone,
    No,
)
from mailhouse.proto.imap.parser import CommandParser
from tests.proto.imap.driver import drive

SMALL = ParserConfig(max_line_length=100, max_literal_size=50, max_append_size=1000,
                     max_depth=4, max_sequence_items=5)


def test_max_line_length_line_without_end_is_dropped_as_it_arrives() -> None:
    parser = CommandParser(SMALL)
    assert parser.feed(b"a1 SEARCH " + b"x" * 95) == []
    for _ in range(100):
        assert parser.feed(b"y" * 1000) == []
        assert parser.buffered == 0  # nothing of the overlong line is held
    assert parser.feed(b"\r\nb NOOP\r\n") == [
        Bad("a1", "Command line too long", "TOOBIG"),
        Command("b", "NOOP", parser.feed(b"c NOOP\r\n")[0].args)]  # type: ignore[union-attr]


def test_max_line_length_met_and_crossed_in_one_piece() -> None:
    line = b"a LOGIN " + b"x" * (100 - 10) + b" y"
    assert len(line) == 100
    assert isinstance(drive([line + b"\r\n"], SMALL)[0], Command)
    events = drive([line + b"z\r\nb NOOP\r\n"], SMALL)
    assert events[0] == Bad("a", "Command line too long", "TOOBIG")
    assert isinstance(events[1], Command)


def test_max_line_length_counts_every_line_of_a_command() -> None:
    pieces = b"a SEARCH" + b" TEXT {1+}\r\nx" * 20 + b"\r\nb NOOP\r\n"
    events = drive([pieces], SMALL)
    assert events[0] == Bad("a", "Command line too long", "TOOBIG")
    assert isinstance(events[1], Command) and events[1].tag == "b"


def test_overlong_line_ending_in_a_literal_header_still_skips_the_literal() -> None:
    events = drive([b"a LOGIN " + b"x" * 200 + b" {10+}\r\n0123456789\r\nb NOOP\r\n"], SMALL)
    assert events[0] == Bad("a", "Command line too long", "TOOBIG")
    assert [e.tag for e in events[1:] if isinstance(e, Command)] == ["b"]


def test_max_literal_size_sync_refused_before_the_octets() -> None:
    assert drive([b"a LOGIN {50}\r\n", b"x" * 50 + b" y\r\n"], SMALL)[0] == \
        ContinuationNeeded("a", 50, False)
    events = drive([b"a LOGIN {51}\r\n", b"b NOOP\r\n"], SMALL)
    assert events[0] == Bad("a", "Literal too large", "TOOBIG")
    assert isinstance(events[1], Command)


def test_max_literal_size_non_sync_skipped_then_refused() -> None:
    events = drive([b"a LOGIN {51+}\r\n" + b"x" * 51 + b" y\r\nb NOOP\r\n"], SMALL)
    assert events[0] == Bad("a", "Literal too large", "TOOBIG")
    assert isinstance(events[1], Command)


def test_max_literal_size_is_the_sum_of_a_commands_literals() -> None:
    events = drive([b"a LOGIN {30+}\r\n" + b"x" * 30 + b" {30+}\r\n" + b"y" * 30 + b"\r\n"],
                   SMALL)
    assert events == [Bad("a", "Literal too large", "TOOBIG")]


def test_max_append_size() -> None:
    events = drive([b"a APPEND INBOX {1000}\r\n", b"m" * 1000, b"\r\n"], SMALL)
    assert events[0] == ContinuationNeeded("a", 1000, True)
    assert isinstance(events[-1], Command)
    assert sum(len(e.data) for e in events if isinstance(e, AppendData)) == 1000
    events = drive([b"a APPEND INBOX {1001}\r\n", b"b NOOP\r\n"], SMALL)
    assert events[0] == No("a", "Message too large", "TOOBIG")
    assert isinstance(events[1], Command)


def test_non_sync_message_beyond_max_append_size_ends_the_session() -> None:
    parser = CommandParser(SMALL)
    assert parser.feed(b"a APPEND INBOX {1001+}\r\n") == [Fatal("Literal too large to skip")]
    assert parser.feed(b"b NOOP\r\n") == []


def test_non_sync_huge_literal_number_ends_the_session() -> None:
    events = drive([b"a LOGIN {" + b"9" * 40 + b"+}\r\n"], SMALL)
    assert events == [Fatal("Literal too large to skip")]


def test_literal_minus() -> None:
    minus = ParserConfig(literal_plus=False)
    ok = drive([b"a LOGIN {4096+}\r\n" + b"x" * 4096 + b" y\r\n"], minus)
    assert isinstance(ok[0], Command)
    events = drive([b"a LOGIN {4097+}\r\n" + b"x" * 4097 + b" y\r\nb NOOP\r\n"], minus)
    assert events[0] == Bad("a", "Non-synchronising literal over 4096 octets", "TOOBIG")
    assert isinstance(events[1], Command)
    # A synchronising one may be larger (up to max_literal_size).
    big = drive([b"a LOGIN {5000}\r\n", b"x" * 5000 + b" y\r\n"], minus)
    assert isinstance(big[-1], Command)


def test_max_depth() -> None:
    assert isinstance(drive([b"a SEARCH " + b"(" * 3 + b"ALL" + b")" * 3 + b"\r\n"], SMALL)[0],
                      Command)
    for key in (b"(" * 4 + b"ALL" + b")" * 4, b"NOT " * 4 + b"ALL",
                b"OR ALL " * 4 + b"ALL"):
        events = drive([b"a SEARCH " + key + b"\r\n"], SMALL)
        assert events == [Bad("a", "Search keys nested too deeply", "LIMIT")], key


def test_default_depth_stops_deep_nesting_long_before_recursion_limits() -> None:
    events = drive([b"a SEARCH " + b"NOT " * 10_000 + b"ALL\r\n"])
    assert events == [Bad("a", "Search keys nested too deeply", "LIMIT")]


def test_max_sequence_items() -> None:
    assert isinstance(drive([b"a FETCH 1,2,3,4,5 FLAGS\r\n"], SMALL)[0], Command)
    events = drive([b"a FETCH 1,2,3,4,5,6 FLAGS\r\n"], SMALL)
    assert events == [Bad("a", "Too many items in a sequence set", "LIMIT")]
    events = drive([b"a SEARCH UID 1,2,3,4,5,6\r\n"], SMALL)
    assert events == [Bad("a", "Too many items in a sequence set", "LIMIT")]


def test_overlong_lines_in_idle_and_sasl() -> None:
    events = drive([b"a IDLE\r\n", b"x" * 500 + b"\r\n"], SMALL)
    assert events[1] == IdleDone(False)
    events = drive([b"a AUTHENTICATE PLAIN\r\n", b"x" * 500 + b"\r\nb NOOP\r\n"], SMALL)
    assert events[1] == Bad("a", "SASL response too long", "TOOBIG")
    assert isinstance(events[2], Command)


def test_config_is_checked() -> None:
    import pytest

    with pytest.raises(ValueError):
        ParserConfig(max_depth=0)
    with pytest.raises(ValueError):
        ParserConfig(delimiter="ab")


def test_an_overlong_line_is_answered_alike_however_it_arrives() -> None:
    """Found by fuzz/imap_server.py: the whole line and the same line in pieces gave different
    tags (the first 256 octets, or all of them). Tags over TAG_MAX octets are not echoed."""
    from mailhouse.proto.imap.config import ParserConfig
    from mailhouse.proto.imap.events import Bad
    from mailhouse.proto.imap.parser import TAG_MAX, CommandParser

    line = b"x" * 600 + b"\r\n"
    whole = CommandParser(ParserConfig(max_line_length=512)).feed(line)
    parser = CommandParser(ParserConfig(max_line_length=512))
    pieces = [e for i in range(0, len(line), 64) for e in parser.feed(line[i:i + 64])]
    assert whole == pieces == [Bad(None, "Command line too long", "TOOBIG")]
    short = b"t" * TAG_MAX + b" " + b"y" * 600 + b"\r\n"
    (bad,) = CommandParser(ParserConfig(max_line_length=512)).feed(short)
    assert isinstance(bad, Bad) and bad.tag == "t" * TAG_MAX
