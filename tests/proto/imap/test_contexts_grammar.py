"""The RFC 5267 grammar: SORT RETURN (ESORT), PARTIAL, UPDATE/CONTEXT and CANCELUPDATE."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailhouse.proto.imap import commands as c
from mailhouse.proto.imap import responses
from mailhouse.proto.imap import search as s
from mailhouse.proto.imap.events import Bad, Command, ContinuationNeeded
from tests.proto.imap.driver import command, drive


def test_rfc_examples() -> None:
    # RFC 5267 §3.3, §4.3.1, §4.3.5, §4.4.
    cmd = command(b"E01 UID SORT RETURN () (REVERSE DATE) UTF-8 UNDELETED UNKEYWORD $Junk\r\n")
    assert cmd.uid and cmd.args == c.Sort(
        (("DATE", True),), "UTF-8",
        s.And((s.FlagKey("\\Deleted", False), s.FlagKey("$Junk", False))), c.SearchReturn(()))
    cmd = command(b"B02 UID SORT RETURN (UPDATE COUNT) (SUBJECT) UTF-8 KEYWORD $Junk\r\n")
    assert isinstance(cmd.args, c.Sort)
    assert cmd.args.returns == c.SearchReturn(("UPDATE", "COUNT"))
    assert command(b'B04 CANCELUPDATE "B01"\r\n').args == c.CancelUpdate(("B01",))
    assert command(b'B05 cancelupdate "B01" "B02"\r\n').args == c.CancelUpdate(("B01", "B02"))
    cmd = command(b"A01 UID SEARCH RETURN (PARTIAL 1:500 CONTEXT) UNDELETED\r\n")
    assert isinstance(cmd.args, c.Search)
    assert cmd.args.returns == c.SearchReturn(("CONTEXT",), (1, 500))


@pytest.mark.parametrize("line", [
    b"a SEARCH RETURN (PARTIAL 1:5 PARTIAL 6:9) ALL",  # one PARTIAL (RFC 5267 §4.4)
    b"a SEARCH RETURN (PARTIAL 0:5) ALL",
    b"a SEARCH RETURN (PARTIAL 1:*) ALL",
    b"a SEARCH RETURN (PARTIAL 5) ALL",
    b"a SORT RETURN (MIN) UTF-8 ALL",  # criteria missing
    b"a CANCELUPDATE",
    b"a CANCELUPDATE B01",
    b'a CANCELUPDATE "B01" ',
    b'a CANCELUPDATE "B01""B02"',
    b'a UID CANCELUPDATE "B01"',
])
def test_refused(line: bytes) -> None:
    events = [e for e in drive([line + b"\r\nz NOOP\r\n"])
              if not isinstance(e, ContinuationNeeded)]
    assert isinstance(events[0], Bad) and events[0].tag == "a", events
    assert isinstance(events[1], Command) and events[1].tag == "z"


tags = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7e,
                                      blacklist_characters='"\\'), min_size=1, max_size=12)
options = st.lists(st.sampled_from(["MIN", "MAX", "ALL", "COUNT", "SAVE", "CONTEXT", "UPDATE"]),
                   max_size=5)
ranges = st.one_of(st.none(), st.tuples(st.integers(1, 2**32 - 1), st.integers(1, 2**32 - 1)))


@given(names=st.lists(tags, min_size=1, max_size=4))
def test_generated_cancelupdate_round_trips(names: list[str]) -> None:
    line = b"t CANCELUPDATE " + b" ".join(responses.quoted(n) for n in names) + b"\r\n"
    assert command(line).args == c.CancelUpdate(tuple(names))


@given(opts=options, partial=ranges, uid=st.booleans(), sort=st.booleans())
def test_generated_return_options_round_trip(opts: list[str], partial: tuple[int, int] | None,
                                             uid: bool, sort: bool) -> None:
    words = list(opts) + ([f"PARTIAL {partial[0]}:{partial[1]}"] if partial else [])
    returns = "RETURN (" + " ".join(words) + ")"
    text = f"t {'UID ' if uid else ''}" + (
        f"SORT {returns} (SUBJECT) UTF-8 ALL" if sort else f"SEARCH {returns} ALL")
    cmd = command(text.encode() + b"\r\n")
    assert cmd.uid == uid
    assert isinstance(cmd.args, c.Sort if sort else c.Search)
    assert cmd.args.returns == c.SearchReturn(tuple(opts), partial)
