"""The mail the IMAP benchmarks serve: generated, deterministic for a seed, written as a Maildir.

A mailbox looks like a real person's inbox rather than one repeated message, because what
IMAP servers spend their time on depends on it: header fields of different lengths (FETCH of
HEADER.FIELDS, SEARCH on headers), MIME structure (BODYSTRUCTURE), dates out of order (SORT),
bodies to scan (SEARCH TEXT) and a mix of sizes. Per message:

- 65 % text/plain (0.5-8 KB), 20 % multipart/alternative (text and HTML), 15 % multipart/mixed
  with a base64 attachment (3-60 KB; 1 in 100 of those 300-600 KB): about 10 KB on average;
- From one of 400 people, To the owner, a Cc on a fifth, a Subject of 3-8 words (a third
  replies with ``Re:``, In-Reply-To and References to an earlier message), a Date that grows
  with the message number with jitter of up to a day (so arrival and date order differ);
- 80 % seen (the newest twentieth never), none flagged or deleted.

Words the benchmarks search for, with how often they occur: `SUBJECT_WORD` in about 1 % of the
Subjects, `TEXT_WORD` in about 0.5 % of the bodies, `FROM_NAME` (one of the 20 last names of the
400 people) in about 5 % of the Froms.

Files are written as a delivery agent would (LF line endings, ``TIME.MnPpid.host,S=SIZE,W=VSIZE``
in new/, or in cur/ with ``:2,S`` when seen), owned by the mail uid when asked, so both Dovecot
and ``mailhouse import --maildir`` read the same files.
"""

from __future__ import annotations

import base64
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SUBJECT_WORD = "quarterly"
TEXT_WORD = "zeppelin"
FROM_NAME = "Okonkwo"  # one of the 20 last names (`_LAST`): 1/20 of the people

_FIRST = (
    "Ada", "Ben", "Chiara", "Dmitri", "Elif", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kofi",
    "Lena", "Mateo", "Nadia", "Omar", "Priya", "Quentin", "Rosa", "Sven", "Tariq"
)  # fmt: skip
_LAST = (
    "Abe", "Berg", "Costa", "Dubois", "Eriksen", "Fischer", "Garcia", "Haddad", "Ito", "Jensen",
    "Okonkwo", "Lindqvist", "Moreau", "Novak", "Olsen", "Pereira", "Quinn", "Rossi", "Schmidt",
    "Tanaka"
)  # fmt: skip
_WORDS = (
    "the", "of", "and", "to", "in", "is", "for", "on", "that", "with", "this", "as", "it", "be",
    "are", "from", "at", "by", "was", "an", "have", "not", "or", "meeting", "report", "draft",
    "budget", "review", "project", "update", "invoice", "travel", "schedule", "team", "release",
    "notes", "agenda", "minutes", "contract", "offer", "design", "build", "test", "deploy",
    "server", "client", "customer", "question", "answer", "thanks", "please", "attached", "find",
    "below", "regards", "week", "month", "today", "tomorrow", "friday", "monday", "plan", "call",
    "room", "office", "order", "shipment", "delivery", "account", "payment", "reminder", "summary",
    "feedback", "proposal", "changes", "version", "issue", "ticket", "support", "request",
    "approval", "launch"
)  # fmt: skip
_DOMAINS = ("example.test", "mail.example.test", "corp.test", "lists.example.test")

EPOCH = 1_735_689_600  # 2025-01-01 00:00:00 UTC: the oldest message's date


@dataclass(frozen=True)
class Generated:
    data: bytes  # LF line endings
    seen: bool


def _person(rng: random.Random, index: int) -> tuple[str, str]:
    first, last = _FIRST[index % 20], _LAST[(index // 20) % 20]
    domain = _DOMAINS[index % len(_DOMAINS)]
    return f"{first} {last}", f"{first.lower()}.{last.lower()}@{domain}"


def _text(rng: random.Random, octets: int, needle: bool) -> str:
    words = rng.choices(_WORDS, k=max(8, octets // 6))
    if needle:
        words[rng.randrange(len(words))] = TEXT_WORD
    lines: list[str] = []
    line: list[str] = []
    width = 0
    for word in words:  # bounded by len(words)
        if width + len(word) > 72:
            lines.append(" ".join(line))
            line, width = [], 0
        line.append(word)
        width += len(word) + 1
    lines.append(" ".join(line))
    return "\n".join(lines) + "\n"


def _date(moment: int) -> str:
    return time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(moment))


def message(rng: random.Random, n: int, total: int, owner: str, seed: int) -> Generated:
    """Message number `n` (1-based) of a mailbox of `total` for `owner` (see module doc)."""
    name, address = _person(rng, rng.randrange(400))
    moment = EPOCH + n * 600 + rng.randrange(86_400)
    words = rng.choices(_WORDS[25:], k=rng.randint(3, 8))
    if rng.random() < 0.01:
        words[rng.randrange(len(words))] = SUBJECT_WORD
    subject = " ".join(words).capitalize()
    head = [
        f"Return-Path: <{address}>",
        f"Received: from mx.{address.split('@')[1]} (mx [192.0.2.{n % 250 + 1}])\n"
        f"\tby mx.bench.test with ESMTPS id {seed:x}{n:08x}; {_date(moment + 5)}",
        f'From: "{name}" <{address}>',
        f"To: <{owner}>",
    ]
    if rng.random() < 0.2:
        cc_name, cc_address = _person(rng, rng.randrange(400))
        head.append(f'Cc: "{cc_name}" <{cc_address}>')
    if n > 1 and rng.random() < 0.33:
        parent = rng.randrange(1, n)
        head += [
            f"Subject: Re: {subject}",
            f"In-Reply-To: <bench.{seed}.{parent}@example.test>",
            f"References: <bench.{seed}.{parent}@example.test>",
        ]
    else:
        head.append(f"Subject: {subject}")
    head += [
        f"Date: {_date(moment)}",
        f"Message-ID: <bench.{seed}.{n}@example.test>",
        "MIME-Version: 1.0",
    ]
    needle = rng.random() < 0.005
    roll = rng.random()
    boundary = f"=_bench_{seed}_{n}"
    if roll < 0.65:
        head.append("Content-Type: text/plain; charset=utf-8")
        body = _text(rng, rng.randint(500, 8_000), needle)
    elif roll < 0.85:
        head.append(f'Content-Type: multipart/alternative; boundary="{boundary}"')
        text = _text(rng, rng.randint(500, 4_000), needle)
        html = "<html><body><p>" + text.replace("\n\n", "</p><p>") + "</p></body></html>\n"
        body = (
            f"--{boundary}\nContent-Type: text/plain; charset=utf-8\n\n{text}\n"
            f"--{boundary}\nContent-Type: text/html; charset=utf-8\n\n{html}\n"
            f"--{boundary}--\n"
        )
    else:
        head.append(f'Content-Type: multipart/mixed; boundary="{boundary}"')
        size = rng.randint(300_000, 600_000) if rng.random() < 0.01 else rng.randint(3_000, 60_000)
        attachment = base64.encodebytes(rng.randbytes(size * 3 // 4)).decode()
        text = _text(rng, rng.randint(300, 2_000), needle)
        body = (
            f"--{boundary}\nContent-Type: text/plain; charset=utf-8\n\n{text}\n"
            f'--{boundary}\nContent-Type: application/pdf; name="doc{n}.pdf"\n'
            f'Content-Disposition: attachment; filename="doc{n}.pdf"\n'
            f"Content-Transfer-Encoding: base64\n\n{attachment}\n"
            f"--{boundary}--\n"
        )
    data = ("\n".join(head) + "\n\n" + body).encode()
    seen = n <= total - max(1, total // 20) and rng.random() < 0.84
    return Generated(data, seen)


def mailbox(count: int, owner: str, seed: int) -> Iterator[Generated]:
    """The `count` messages of `owner`'s mailbox, oldest first (one rng per mailbox)."""
    rng = random.Random(f"{seed}:{owner}")
    for n in range(1, count + 1):
        yield message(rng, n, count, owner, seed)


def write_maildir(
    maildir: Path, messages: Iterator[Generated], uid: int | None = None, gid: int | None = None
) -> tuple[int, int]:
    """Write the messages into `maildir` (new/ cur/ tmp/ created as needed), in order, each
    through tmp/ and a rename; chown to uid:gid when given. (messages, octets)."""
    for sub in ("", "new", "cur", "tmp"):
        path = maildir / sub
        path.mkdir(parents=True, exist_ok=True)
        if uid is not None and gid is not None:
            os.chown(path, uid, gid)
    now, pid = int(time.time()), os.getpid()
    count = octets = 0
    for item in messages:
        count += 1
        octets += len(item.data)
        crlf_size = len(item.data) + item.data.count(b"\n")
        name = f"{now}.M{count}P{pid}.bench,S={len(item.data)},W={crlf_size}"
        tmp = maildir / "tmp" / name
        with open(tmp, "wb") as out:
            out.write(item.data)
        if uid is not None and gid is not None:
            os.chown(tmp, uid, gid)
        tmp.rename(maildir / "cur" / f"{name}:2,S" if item.seen else maildir / "new" / name)
    return count, octets


def append_message(n: int, owner: str) -> bytes:
    """A small message for APPEND (CRLF, about 2 KB)."""
    body = ("Appended by the IMAP load benchmark. " * 50).strip()
    text = (
        f"From: Bench Client <{owner}>\r\nTo: <{owner}>\r\nSubject: draft {n}\r\n"
        f"Date: {_date(EPOCH)}\r\nMessage-ID: <append.{n}.{os.getpid()}@bench.test>\r\n"
        f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n"
    )
    return text.encode()
