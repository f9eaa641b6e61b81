"""SORT and THREAD (service/imap_sort.py) over stored search fields (RFC 5256, RFC 5957)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from mailhouse.message.structure import parse_message
from mailhouse.service.imap_search import Candidate
from mailhouse.service.imap_sort import (
    ordered_subject,
    references,
    render_threads,
    sort_messages,
)

BASE = datetime(2026, 12, 1, tzinfo=UTC)


def msg(uid: int, subject: str, *, sender: str = "a@example.test", day: int = 1,
        msg_id: str | None = None, refs: str = "", reply_to_id: str = "",
        size: int = 100, arrived: int = 0) -> Candidate:
    headers = [f"From: {sender}", f"Subject: {subject}",
               f"Date: {day:02d} Dec 2026 10:00:00 +0000"]
    if msg_id:
        headers.append(f"Message-ID: <{msg_id}>")
    if refs:
        headers.append("References: " + " ".join(f"<{r}>" for r in refs.split()))
    if reply_to_id:
        headers.append(f"In-Reply-To: <{reply_to_id}>")
    raw = ("\r\n".join(headers) + "\r\n\r\nbody\r\n").encode()
    return Candidate(seq=uid, uid=uid, flags=frozenset(),
                     internal_date=BASE + timedelta(hours=arrived or uid), size=size,
                     modseq=1, fields=parse_message(raw).search)


def uids(messages: list[Candidate]) -> list[int]:
    return [m.uid for m in messages]


def test_sort_keys_and_reverse_and_ties() -> None:
    box = [msg(1, "Re: beta", sender="zed@x.test", day=3, size=300),
           msg(2, "alpha", sender="Amy@x.test", day=1, size=100),
           msg(3, "Beta", sender="bob@x.test", day=2, size=200),
           msg(4, "[list] Alpha (fwd)", sender="amy@x.test", day=2, size=100)]
    assert uids(sort_messages(box, [("SUBJECT", False)])) == [2, 4, 1, 3]
    assert uids(sort_messages(box, [("DATE", False)])) == [2, 3, 4, 1]
    assert uids(sort_messages(box, [("SIZE", True), ("ARRIVAL", False)])) == [1, 3, 2, 4]
    assert uids(sort_messages(box, [("FROM", False), ("SUBJECT", True)])) == [2, 4, 3, 1]
    assert uids(sort_messages(box, [("SIZE", False)])) == [2, 4, 3, 1]  # ties: mailbox order


def test_ordered_subject() -> None:
    box = [msg(1, "Lunch", day=2), msg(2, "Re: lunch", day=3), msg(3, "Report", day=1),
           msg(4, "re: Lunch", day=4), msg(5, "Report", day=5)]
    threads = ordered_subject(box)
    assert render_threads(threads, lambda m: m.uid) == b"(3 5)(1 (2)(4))"


def test_references_builds_trees_from_headers() -> None:
    box = [msg(1, "Plan", msg_id="a@x", day=1),
           msg(2, "Re: Plan", msg_id="b@x", refs="a@x", day=2),
           msg(3, "Re: Plan", msg_id="c@x", refs="a@x b@x", day=3),
           msg(4, "Re: Plan", msg_id="d@x", refs="a@x", day=4),
           msg(5, "Other", msg_id="e@x", day=5)]
    assert render_threads(references(box), lambda m: m.uid) == b"(1 (2 3)(4))(5)"


def test_references_with_a_missing_parent_and_in_reply_to() -> None:
    box = [msg(1, "Re: gone", msg_id="b@x", refs="missing@x", day=1),
           msg(2, "Re: gone", msg_id="c@x", refs="missing@x", day=2),
           msg(3, "Hi", msg_id="d@x", day=3),
           msg(4, "Re: Hi", msg_id="e@x", reply_to_id="d@x", day=4)]
    # The dummy for missing@x keeps its two children as one thread; In-Reply-To links 4.
    assert render_threads(references(box), lambda m: m.uid) == b"((1)(2))(3 4)"


def test_references_merges_by_subject_and_survives_loops_and_duplicates() -> None:
    box = [msg(1, "Topic", msg_id="a@x", day=1),
           msg(2, "Re: Topic", msg_id="z@x", day=2),  # no references: joined by subject
           msg(3, "Loop", msg_id="l@x", refs="m@x", day=3),
           msg(4, "Re: Loop", msg_id="m@x", refs="l@x", day=4),
           msg(5, "Topic", msg_id="a@x", day=5)]  # a duplicate Message-ID
    rendered = render_threads(references(box), lambda m: m.uid)
    numbers = sorted(int(n) for n in rendered.replace(b"(", b" ").replace(b")", b" ").split())
    assert numbers == [1, 2, 3, 4, 5]  # every message once, whatever the shape
    assert rendered.startswith(b"(")


def test_large_thread_is_not_recursive() -> None:
    box = [msg(1, "Chain", msg_id="m1@x", day=1)]
    chain = "m1@x"
    for i in range(2, 3001):
        box.append(msg(i, "Re: Chain", msg_id=f"m{i}@x", reply_to_id=f"m{i - 1}@x", day=1,
                       arrived=i))
        chain += f" m{i}@x"
    rendered = render_threads(references(box), lambda m: m.uid)
    assert rendered == b"(" + b" ".join(b"%d" % i for i in range(1, 3001)) + b")"
