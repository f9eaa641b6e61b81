"""Properties of the IMAP command parser for any input (profiles: tests/proto/conftest.py)."""

from __future__ import annotations

import unicodedata
from datetime import date, datetime, timedelta, timezone

from hypothesis import example, given
from hypothesis import strategies as st

from mailhouse.proto.imap import commands as c
from mailhouse.proto.imap import mutf7, responses
from mailhouse.proto.imap import search as s
from mailhouse.proto.imap.config import ParserConfig
from mailhouse.proto.imap.events import AppendData, Command, Event
from mailhouse.proto.imap.fetch import FetchAttribute, Section
from mailhouse.proto.imap.sequence import STAR, SequenceSet
from tests.proto.imap.driver import drive

WORDS = [
    b"a1 NOOP\r\n", b"a2 LOGIN {3}\r\nbob {2+}\r\npw\r\n", b"a3 SELECT INBOX\r\n",
    b"a4 FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (FROM)]<0.9>)\r\n",
    b"a5 APPEND INBOX (\\Seen) {5}\r\nhello ~{3+}\r\n\x00\r\n\r\n",
    b"a6 IDLE\r\n", b"DONE\r\n", b"a7 AUTHENTICATE PLAIN\r\n", b"AGFsaWNlAHB3\r\n",
    b"a8 UID SEARCH OR (FROM x) NOT 1:5\r\n", b"{", b"}", b"{5}\r\n", b"{3+}\r\n", b"~{2}\r\n",
    b"\r\n", b"\n", b" ", b"(", b")", b'"', b"\\", b"*", b"$", b"NOT ", b"a9 ",
]
SMALL = ParserConfig(max_line_length=120, max_literal_size=40, max_append_size=200,
                     max_depth=5, max_sequence_items=6)
CONFIGS = [ParserConfig(), SMALL, ParserConfig(literal_plus=False, max_literal_size=5000)]
streams = st.lists(st.one_of(st.sampled_from(WORDS), st.binary(max_size=30)),
                   max_size=40).map(b"".join)
sizes = st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=8)


def _cut(data: bytes, sizes: list[int]) -> list[bytes]:
    pieces, at, i = [], 0, 0
    while at < len(data):
        size = sizes[i % len(sizes)]
        pieces.append(data[at : at + size])
        at, i = at + size, i + 1
    return pieces


def _merged(events: list[Event]) -> list[object]:
    """AppendData chunks follow the arrival pieces: compare their concatenation."""
    out: list[object] = []
    for event in events:
        if isinstance(event, AppendData) and out and isinstance(out[-1], AppendData) and \
                (out[-1].tag, out[-1].index) == (event.tag, event.index) and not out[-1].last:
            prev = out.pop()
            assert isinstance(prev, AppendData)
            event = AppendData(event.tag, event.index, prev.data + event.data, event.last)
        out.append(event)
    return out


@given(data=streams, sizes=sizes, config=st.sampled_from(range(len(CONFIGS))),
       accept=st.booleans())
@example(data=WORDS[4] + WORDS[0], sizes=[1], config=0, accept=True)
@example(data=b"a LOGIN " + b"x" * 130 + b" {3+}\r\nabc\r\nb NOOP\r\n", sizes=[7], config=1,
         accept=True)
def test_any_cut_gives_the_same_events(data: bytes, sizes: list[int], config: int,
                                       accept: bool) -> None:
    whole = drive([data], CONFIGS[config], accept=accept)
    assert _merged(drive(_cut(data, sizes), CONFIGS[config], accept=accept)) == _merged(whole)


@given(data=st.binary(max_size=3000), config=st.sampled_from(range(len(CONFIGS))))
def test_random_bytes_only_make_events(data: bytes, config: int) -> None:
    drive([data], CONFIGS[config])  # raises nothing; the driver checks the buffer stays bounded


@given(data=streams)
def test_byte_at_a_time(data: bytes) -> None:
    assert _merged(drive([bytes([b]) for b in data])) == _merged(drive([data]))


# -- generated valid commands round-trip ---------------------------------------------------------

numbers = st.integers(min_value=1, max_value=4_294_967_295)
bounds = st.one_of(numbers, st.just(STAR))
sequence_sets = st.one_of(
    st.lists(st.tuples(bounds, bounds), min_size=1, max_size=5).map(
        lambda r: SequenceSet(tuple(r))),
    st.just(SequenceSet(saved=True)))
atoms = st.from_regex(r"[A-Za-z0-9$_.-]{1,12}", fullmatch=True)
strings = st.binary(max_size=20)
days = st.dates(min_value=date(1900, 1, 1), max_value=date(2200, 1, 1))


def _string(value: bytes) -> bytes:
    return responses.literal(value) if b"\x00" not in value else b'"x"'


leaf_keys = st.one_of(
    st.just(s.All()),
    st.sampled_from(["\\Answered", "\\Deleted", "\\Seen", "NEW", "OLD", "\\Recent"]).flatmap(
        lambda f: st.booleans().map(lambda p: s.FlagKey(f, p if f.startswith("\\") and
                                                         f != "\\Recent" else True))),
    atoms.filter(lambda a: a.upper() not in ("NIL",)).map(lambda a: s.FlagKey(a, False)),
    st.builds(s.TextKey, st.sampled_from(sorted(("BCC", "BODY", "CC", "FROM", "SUBJECT",
                                                 "TEXT", "TO"))),
              strings.filter(lambda b: b"\x00" not in b)),
    st.builds(s.HeaderKey, st.from_regex(r"[A-Z][A-Z0-9-]{0,10}", fullmatch=True),
              strings.filter(lambda b: b"\x00" not in b)),
    st.builds(s.DateKey, st.sampled_from(["BEFORE", "ON", "SINCE"]), days, st.booleans()),
    st.builds(s.SizeKey, st.booleans(), st.integers(min_value=0, max_value=2**40)),
    st.builds(s.UidKey, sequence_sets), st.builds(s.SequenceKey, sequence_sets),
    st.builds(s.ModSeqKey, st.integers(min_value=0, max_value=2**63 - 1)),
)
search_keys = st.recursive(leaf_keys, lambda inner: st.one_of(
    st.builds(s.Not, inner), st.builds(s.Or, inner, inner),
    st.lists(inner, min_size=2, max_size=3).map(lambda k: s.And(tuple(k)))), max_leaves=8)

_MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


def render_key(key: s.SearchKey) -> bytes:
    if isinstance(key, s.All):
        return b"ALL"
    if isinstance(key, s.FlagKey):
        if key.flag.startswith("\\") and key.flag != "\\Recent":
            return (b"" if key.present else b"UN") + key.flag[1:].upper().encode()
        if key.flag in ("NEW", "OLD"):
            return key.flag.encode()
        if key.flag == "\\Recent":
            return b"RECENT"
        return (b"KEYWORD " if key.present else b"UNKEYWORD ") + key.flag.encode()
    if isinstance(key, s.TextKey):
        return key.field.encode() + b" " + _string(key.value)
    if isinstance(key, s.HeaderKey):
        return b"HEADER " + key.name.encode() + b" " + _string(key.value)
    if isinstance(key, s.DateKey):
        day = key.day
        return (b"SENT" if key.sent else b"") + key.relation.encode() + \
            f" {day.day}-{_MONTHS[day.month - 1]}-{day.year:04d}".encode()
    if isinstance(key, s.SizeKey):
        return (b"LARGER " if key.larger else b"SMALLER ") + str(key.size).encode()
    if isinstance(key, s.UidKey):
        return b"UID " + str(key.sequence_set).encode()
    if isinstance(key, s.SequenceKey):
        return str(key.sequence_set).encode()
    if isinstance(key, s.ModSeqKey):
        return b"MODSEQ " + str(key.modseq).encode()
    if isinstance(key, s.Not):
        return b"NOT " + render_key(key.key)
    if isinstance(key, s.Or):
        return b"OR " + render_key(key.left) + b" " + render_key(key.right)
    assert isinstance(key, s.And)
    return b"(" + b" ".join(render_key(k) for k in key.keys) + b")"


def _canonical(key: s.SearchKey) -> s.SearchKey:
    """A one-key And is the key itself; nested NEW/OLD flags have no presence."""
    if isinstance(key, s.And):
        return s.And(tuple(_canonical(k) for k in key.keys))
    if isinstance(key, s.Not):
        return s.Not(_canonical(key.key))
    if isinstance(key, s.Or):
        return s.Or(_canonical(key.left), _canonical(key.right))
    return key


@given(key=search_keys, uid=st.booleans(), sizes=sizes)
def test_generated_search_round_trips(key: s.SearchKey, uid: bool, sizes: list[int]) -> None:
    line = b"t " + (b"UID " if uid else b"") + b"SEARCH " + render_key(key) + b"\r\n"
    events = [e for e in drive(_cut(line, sizes)) if isinstance(e, Command)]
    assert len(events) == 1
    assert events[0].args == c.Search(_canonical(key)) and events[0].uid == uid


sections = st.one_of(
    st.just(Section()),
    st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=3).map(
        lambda p: Section(tuple(p))),
    st.builds(Section, st.just(()), st.sampled_from(["HEADER", "TEXT"])),
    st.builds(Section, st.just((1,)), st.just("MIME")),
    st.builds(Section, st.just(()), st.sampled_from(["HEADER.FIELDS", "HEADER.FIELDS.NOT"]),
              st.lists(st.from_regex(r"[A-Z][A-Z0-9-]{0,8}", fullmatch=True), min_size=1,
                       max_size=3).map(tuple)),
)
partials = st.one_of(st.none(), st.tuples(st.integers(min_value=0, max_value=2**40),
                                          st.integers(min_value=1, max_value=2**40)))
attributes = st.one_of(
    st.sampled_from(["ENVELOPE", "FLAGS", "INTERNALDATE", "RFC822.SIZE", "BODYSTRUCTURE", "UID",
                     "MODSEQ", "RFC822", "RFC822.TEXT"]).map(FetchAttribute),
    st.builds(FetchAttribute, st.just("BODY"), sections, partials, st.booleans()),
    st.builds(FetchAttribute, st.just("BINARY"),
              sections.filter(lambda x: x.text is None), partials, st.booleans()),
)


def render_attribute(att: FetchAttribute) -> bytes:
    if att.section is None:
        return att.name.encode()
    sec = att.section
    spec = ".".join([*map(str, sec.part), *([sec.text] if sec.text else [])])
    if sec.fields:
        spec += " (" + " ".join(sec.fields) + ")"
    name = att.name + (".PEEK" if att.peek else "")
    partial = f"<{att.partial[0]}.{att.partial[1]}>" if att.partial else ""
    return f"{name}[{spec}]{partial}".encode()


@given(seq=sequence_sets, atts=st.lists(attributes, min_size=1, max_size=5),
       changed=st.one_of(st.none(), st.integers(min_value=0, max_value=2**63 - 1)))
def test_generated_fetch_round_trips(seq: SequenceSet, atts: list[FetchAttribute],
                                     changed: int | None) -> None:
    line = b"t FETCH " + str(seq).encode() + b" (" + b" ".join(map(render_attribute, atts)) + \
        b")" + (b" (CHANGEDSINCE %d)" % changed if changed is not None else b"") + b"\r\n"
    events = drive([line])
    assert events == [Command("t", "FETCH", c.Fetch(seq, tuple(atts), changed))]


names = st.lists(st.text(alphabet=st.characters(blacklist_categories=["Cc", "Cs", "Zl"],
                                                blacklist_characters="/"), min_size=1,
                         max_size=8).filter(lambda t: t not in (".", "..")),
                 min_size=1, max_size=3).map("/".join).filter(
                     lambda n: unicodedata.is_normalized("NFC", n))  # the core refuses others


@given(name=names, literal=st.booleans())
def test_generated_mailbox_names_round_trip(name: str, literal: bool) -> None:
    wire = mutf7.encode(name)
    arg = responses.literal(wire) if literal else responses.astring(wire)
    events = [e for e in drive([b"t CREATE " + arg + b"\r\n"]) if isinstance(e, Command)]
    expected = "INBOX" + name[5:] if name[:5].upper() == "INBOX" and name[5:6] in ("", "/") \
        else name
    assert events == [Command("t", "CREATE", c.Create(expected))]


# -- grammar-shaped garbage: reaches deep into every command's grammar ----------------------------

TOKENS = [
    "FETCH", "UID", "SEARCH", "STORE", "COPY", "MOVE", "SELECT", "EXAMINE", "CREATE", "LIST",
    "LSUB", "STATUS", "APPEND", "ENABLE", "ID", "SORT", "THREAD", "SETQUOTA", "GETQUOTA",
    "AUTHENTICATE", "LOGIN", "RENAME", "EXPUNGE", "RETURN", "CHARSET", "UTF-8", "OR", "NOT",
    "ALL", "HEADER", "MODSEQ", "KEYWORD", "SINCE", "SENTON", "LARGER", "BODY", "BODY.PEEK",
    "BINARY", "BINARY.SIZE", "FLAGS", "+FLAGS.SILENT", "UNCHANGEDSINCE", "CHANGEDSINCE",
    "VANISHED", "QRESYNC", "CONDSTORE", "USE", "STATUS", "SPECIAL-USE", "PARTIAL", "SAVE",
    "REVERSE", "SUBJECT", "NIL", "INBOX", "\\Seen", "\\Recent", "$", "*", "1", "0", "1:*",
    "5,3:2", "-1:-5", "4294967296", "99999999999999999999999", "[", "]", "[1.2.MIME]",
    "[HEADER.FIELDS", "<0.5>", "<1>", "(", ")", '"', '"x"', '"1-Feb-1994"',
    '"01-Jan-2020 10:00:00 +0100"', '" 1-Jan-2020 99:99:99 +9999"', "1-Feb-1994", "31-Feb-2020",
    "&Jjo-", "&-", "a/../b", "{3+}\r\nabc", "~{2+}\r\n\x00\x01", "{0+}\r\n", "\\", "%",
    "\"/flags/\\\\seen\"", "priv", "=", "AGFsaWNlAHB3",
]


@given(st.lists(st.sampled_from(TOKENS), max_size=14),
       st.lists(st.sampled_from(["", " ", "  "]), min_size=1, max_size=4),
       st.sampled_from(range(len(CONFIGS))))
def test_grammar_shaped_garbage(tokens: list[str], gaps: list[str], config: int) -> None:
    text = "t"
    for i, token in enumerate(tokens):
        text += (gaps[i % len(gaps)] or " ") + token
    drive([text.encode("utf-8", "surrogateescape") + b"\r\nz NOOP\r\n"], CONFIGS[config])


# -- more generated commands: LOGIN, STORE, APPEND ----------------------------------------------

texts = st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"),
                max_size=30)
flag_sets = st.lists(st.one_of(st.sampled_from(["\\Seen", "\\Answered", "\\Flagged",
                                                "\\Deleted", "\\Draft"]), atoms),
                     max_size=4).map(tuple)
moments = st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2100, 1, 1),
                       timezones=st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59)
                       .map(lambda m: timezone(timedelta(minutes=m)))).map(
    lambda d: d.replace(microsecond=0))


@given(user=texts, password=texts, literal=st.booleans())
def test_generated_login_round_trips(user: str, password: str, literal: bool) -> None:
    def arg(value: str) -> bytes:
        data = value.encode()
        return responses.literal(data) if literal else responses.string(data)

    events = [e for e in drive([b"t LOGIN " + arg(user) + b" " + arg(password) + b"\r\n"])
              if isinstance(e, Command)]
    assert events == [Command("t", "LOGIN", c.Login(user, password))]


@given(seq=sequence_sets, mode=st.sampled_from(["", "+", "-"]), silent=st.booleans(),
       flags=flag_sets, unchanged=st.one_of(st.none(), st.integers(0, 2**63 - 1)),
       uid=st.booleans())
def test_generated_store_round_trips(seq: SequenceSet, mode: str, silent: bool,
                                     flags: tuple[str, ...], unchanged: int | None,
                                     uid: bool) -> None:
    line = ("t " + ("UID " if uid else "") + f"STORE {seq} "
            + (f"(UNCHANGEDSINCE {unchanged}) " if unchanged is not None else "")
            + f"{mode}FLAGS{'.SILENT' if silent else ''} ({' '.join(flags)})\r\n").encode()
    assert drive([line]) == [Command("t", "STORE", c.Store(seq, mode, silent, flags, unchanged),
                                     uid)]


@given(messages=st.lists(st.tuples(flag_sets, st.one_of(st.none(), moments),
                                   st.binary(max_size=50), st.booleans()),
                         min_size=1, max_size=3), sizes=sizes)
def test_generated_append_round_trips(
        messages: list[tuple[tuple[str, ...], datetime | None, bytes, bool]],
        sizes: list[int]) -> None:
    line = b"t APPEND Archive"
    for flags, moment, body, sync in messages:
        line += b" "
        if flags:
            line += b"(" + " ".join(flags).encode() + b") "
        if moment is not None:
            line += moment.strftime('"%d-%b-%Y %H:%M:%S %z"').encode() + b" "
        line += b"{%d%s}\r\n" % (len(body), b"" if sync else b"+") + body
    events = drive(_cut(line + b"\r\n", sizes))
    bodies: dict[int, bytes] = {}
    for event in events:
        if isinstance(event, AppendData):
            bodies[event.index] = bodies.get(event.index, b"") + event.data
    assert bodies == {i: m[2] for i, m in enumerate(messages)}
    assert events[-1] == Command("t", "APPEND", c.Append("Archive", tuple(
        c.AppendMessage(i, len(body), flags, moment)
        for i, (flags, moment, body, _) in enumerate(messages))))
