"""SEARCH evaluation (service/imap_search.py): every key kind against stored facts and fields,
keys parsed by the real command parser."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from mailhouse.message.structure import parse_message
from mailhouse.proto.imap import commands
from mailhouse.proto.imap.events import Command
from mailhouse.proto.imap.parser import CommandParser
from mailhouse.service.imap_search import (
    Candidate,
    Context,
    SearchError,
    compile_key,
    content_from,
    content_of,
    needs_content,
)

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def message(subject: str, sender: str, body: str, date: str = "Thu, 03 Dec 2026 10:00:00 +0000",
            extra: str = "") -> bytes:
    return (f"From: {sender}\r\nTo: bob@example.test\r\nSubject: {subject}\r\nDate: {date}\r\n"
            f"{extra}Content-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n").encode()


MAILBOX = [
    message("Quarterly report", "Alice <alice@example.test>", "numbers inside"),
    message("=?utf-8?q?Caf=C3=A9?= plans", "Zoë <zoe@example.test>", "Let's meet",
            extra="X-Priority: 1\r\n"),
    message("Re: lunch", "carol@example.test", "Ja, gern: Straße 5",
            date="Mon, 30 Nov 2026 23:30:00 -0800"),
]
FLAGS = [frozenset({"\\Seen"}), frozenset({"\\Flagged", "$Important"}), frozenset()]


def candidates() -> list[Candidate]:
    out = []
    for i, raw in enumerate(MAILBOX):
        structure = parse_message(raw)
        out.append(Candidate(seq=i + 1, uid=10 * (i + 1), flags=FLAGS[i],
                             internal_date=NOW - timedelta(days=2 - i),
                             size=len(raw), modseq=100 + i, fields=structure.search))
    return out


def search(criteria: bytes, **context: object) -> list[int]:
    (event,) = CommandParser().feed(b"t SEARCH " + criteria + b"\r\n")
    assert isinstance(event, Command), event
    args = event.args
    assert isinstance(args, commands.Search)
    ctx = Context(max_seq=3, max_uid=30, now=NOW,
                  charset=args.charset or "UTF-8", **context)  # type: ignore[arg-type]
    predicate = compile_key(args.key, ctx)
    wanted = needs_content(args.key)
    return [m.uid for m, raw in zip(candidates(), MAILBOX, strict=True)
            if predicate(m, content_of(raw) if wanted else None)]


@pytest.mark.parametrize(("criteria", "uids"), [
    (b"ALL", [10, 20, 30]),
    (b"SEEN", [10]), (b"UNSEEN", [20, 30]), (b"FLAGGED", [20]),
    (b"KEYWORD $important", [20]), (b"UNKEYWORD $Important", [10, 30]),
    (b"NEW", []), (b"OLD", [10, 20, 30]), (b"RECENT", []),
    (b"FROM alice", [10]), ('FROM "ZOË"'.encode(), [20]), ('SUBJECT "café"'.encode(), [20]),
    (b"SUBJECT REPORT", [10]), (b"TO bob", [10, 20, 30]),
    # Full Unicode case folding: ß folds to ss.
    (b"BODY strasse", [30]), (b"BODY STRASSE", [30]), ('BODY "straße"'.encode(), [30]),
    (b"TEXT quarterly", [10]), (b"TEXT meet", [20]),
    (b'HEADER X-Priority ""', [20]), (b"HEADER x-priority 1", [20]),
    (b"HEADER Subject lunch", [30]),
    (b"LARGER 10", [10, 20, 30]), (b"SMALLER 10", []),
    (b"UID 20:*", [20, 30]), (b"UID 15", []), (b"2:*", [20, 30]), (b"*", [30]),
    (b"NOT 1", [20, 30]), (b"OR SEEN FLAGGED", [10, 20]), (b"(SEEN FROM alice)", [10]),
    (b"MODSEQ 101", [20, 30]),
    (b"SINCE 3-Dec-2026", [20, 30]), (b"BEFORE 3-Dec-2026", [10]), (b"ON 4-Dec-2026", [30]),
    (b"SENTON 1-Dec-2026", [30]), (b"SENTBEFORE 3-Dec-2026", [30]),
    (b"OLDER 86400", [10, 20]), (b"YOUNGER 3600", [30]),
])
def test_keys(criteria: bytes, uids: list[int]) -> None:
    assert search(criteria) == uids


def test_saved_result() -> None:
    assert search(b"$", saved_uids=frozenset({20})) == [20]
    assert search(b"UID $", saved_uids=frozenset({10, 30})) == [10, 30]


def test_charset() -> None:
    assert search(b'CHARSET ISO-8859-1 FROM "zo\xeb"') == [20]
    with pytest.raises(SearchError) as error:
        search(b"CHARSET X-NOPE FROM x")
    assert error.value.code == "BADCHARSET"


def test_only_header_body_and_text_need_the_message() -> None:
    def needs(criteria: bytes) -> bool:
        (event,) = CommandParser().feed(b"t SEARCH " + criteria + b"\r\n")
        assert isinstance(event, Command) and isinstance(event.args, commands.Search)
        return needs_content(event.args.key)

    assert not needs(b"FROM x SUBJECT y UNSEEN 1:* OR LARGER 1 SINCE 1-Jan-2020")
    assert needs(b"OR SEEN BODY x") and needs(b"NOT HEADER X-A b") and needs(b"TEXT x")


def test_a_large_mailbox_is_one_call_per_message() -> None:
    (event,) = CommandParser().feed(b"t SEARCH UID 1:1000,5000:* UNSEEN\r\n")
    assert isinstance(event, Command) and isinstance(event.args, commands.Search)
    predicate = compile_key(event.args.key, Context(max_seq=100_000, max_uid=100_000, now=NOW))
    fields = parse_message(MAILBOX[0]).search
    hits = sum(predicate(Candidate(i, i, frozenset(), NOW, 1, 1, fields), None)
               for i in range(1, 100_001))
    assert hits == 1000 + 95_001


_CONTENT_SAMPLES = [
    b"From: A <a@example.net>\r\nSubject: plain\r\n\r\nJust some Text here\r\n",
    b"From: =?utf-8?q?J=C3=BCrgen?= <j@example.net>\r\nSubject: =?iso-8859-1?q?caf=E9?=\r\n"
    b"X-Folded: one\r\n two\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: multipart/alternative; boundary=b\r\n\r\n--b\r\n"
    b"Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable"
    b"\r\n\r\nna=EFve soft=\r\nbreak\r\n--b\r\nContent-Type: text/html; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\nPHA+w6l0w6k8L3A+\r\n--b--\r\n",
    b"Subject: attached\r\nContent-Type: multipart/mixed; boundary=o\r\n\r\n--o\r\n"
    b"Content-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\ninner body words\r\n--o\r\n"
    b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    b"AAEC\r\n--o--\r\n",
    b"Subject: odd charset\r\nContent-Type: text/plain; charset=x-unknown\r\n\r\nbytes \xe9\r\n",
]


@pytest.mark.parametrize("data", _CONTENT_SAMPLES)
def test_content_from_the_structure_answers_as_the_stdlib_parse(data: bytes) -> None:
    # content_from (the stored structure) must give HEADER/BODY/TEXT the same text to search as
    # content_of (the stdlib parser) does.
    fast, slow = content_from(parse_message(data), data), content_of(data)
    assert fast.body_text == slow.body_text
    assert fast.header_text == slow.header_text
    # The stdlib keeps a folded value's CRLF; unfolded (as here) it is the same text.
    assert fast.headers == {k: [v.replace("\r\n", "") for v in vs]
                            for k, vs in slow.headers.items()}
