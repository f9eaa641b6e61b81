"""Header values that SEARCH, SORT and THREAD compare, computed once at delivery.

Search texts are RFC 2047-decoded and case-folded, so SEARCH FROM/TO/CC/BCC/SUBJECT is a
substring test on stored text. Sort keys (RFC 5256 §3, RFC 5957) are stored comparator-ready
for i;ascii-casemap (ASCII letters upper-cased, RFC 4790 §9.2): the server sorts them by code
point, which is the octet order of their UTF-8 the comparator specifies.
"""

from __future__ import annotations

import datetime
import email.header
import email.utils
import re
from dataclasses import dataclass, field

from mailhouse.message.envelope import Address, parse_addresses

# Message-ids kept from References: the first (the thread's root) and the last ones (the
# nearest ancestors), which are what RFC 5256 §2.2 threading looks at first.
MAX_REFERENCES = 100

_WSP = re.compile(r"[ \t\r\n]+")
_MSGID = re.compile(r"<[^<>\s]*>")
_TRAILER = re.compile(r"(?:\s*\(fwd\))+\s*$|\s+$", re.IGNORECASE)
_BLOB = r"\[[^\[\]]*\]\s*"
_LEADER = re.compile(rf"^(?:(?:{_BLOB})*(?:re|fwd?)\s*(?:{_BLOB})?:\s*|\s+)", re.IGNORECASE)
_BLOB_ONLY = re.compile(rf"^{_BLOB}", re.IGNORECASE)
_FWD_WRAP = re.compile(r"^\[fwd:(.*)\]$", re.IGNORECASE | re.DOTALL)


def decode_words(value: str) -> str:
    """RFC 2047 encoded-words decoded; unknown charsets and bad octets become U+FFFD."""
    try:
        chunks = email.header.decode_header(value)
    except Exception:
        return value
    out: list[str] = []
    for chunk, charset in chunks:
        if isinstance(chunk, str):
            out.append(chunk)
            continue
        try:
            out.append(chunk.decode(charset or "raw-unicode-escape", errors="replace"))
        except (LookupError, UnicodeError, ValueError):
            out.append(chunk.decode("utf-8", errors="replace"))
    return "".join(out)


def ascii_casemap(text: str) -> str:
    """i;ascii-casemap's canonical form (RFC 4790 §9.2): a-z become A-Z, nothing else."""
    return text.translate(_UPPER)


_UPPER = {c: c - 32 for c in range(ord("a"), ord("z") + 1)}


def base_subject(subject: str) -> str:
    """RFC 5256 §2.1 base subject of an already decoded subject (steps 1-6)."""
    text = _WSP.sub(" ", subject)
    while True:
        text = _TRAILER.sub("", text)  # step 2
        while True:  # steps 3-5
            before = text
            while (m := _LEADER.match(text)) and m.end() > 0:
                text = text[m.end():]
            blob = _BLOB_ONLY.match(text)
            if blob and text[blob.end():]:
                text = text[blob.end():]
            if text == before:
                break
        wrapped = _FWD_WRAP.match(text)  # step 6
        if not wrapped:
            return text
        text = wrapped.group(1)


def _msgids(value: str | None) -> list[str]:
    return _MSGID.findall(value) if value else []


def _first(addresses: list[Address] | None) -> Address | None:
    return next((a for a in addresses or () if a.host is not None), None)


@dataclass(slots=True)
class SearchFields:
    from_text: str = ""
    to_text: str = ""
    cc_text: str = ""
    bcc_text: str = ""
    subject_text: str = ""
    # Date header as seconds since the epoch, UTC; None when absent or unreadable (the server
    # then uses the internal date, RFC 5256 §3 / RFC 9051 §6.4.4).
    sent_date: int | None = None
    message_id: str | None = None
    in_reply_to: list[str] = field(default_factory=list)
    references: list[str] = field(default_factory=list)
    base_subject: str = ""
    sort_from: str = ""
    sort_to: str = ""
    sort_cc: str = ""
    display_from: str = ""
    display_to: str = ""


def _sent_date(value: str | None) -> int | None:
    if not value:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    try:
        if when.tzinfo is None:  # "-0000": the zone is unknown; take it as UTC
            when = when.replace(tzinfo=datetime.UTC)
        return int(when.timestamp())
    except (OverflowError, OSError, ValueError):
        return None


def _display(addresses: list[Address] | None) -> str:
    first = _first(addresses)
    if first is None:
        return ""
    name = decode_words(first.name).strip() if first.name else ""
    if name:
        return ascii_casemap(name)
    return ascii_casemap(f"{first.mailbox or ''}@{first.host}")


def _mailbox(addresses: list[Address] | None) -> str:
    first = _first(addresses)
    return ascii_casemap(first.mailbox or "") if first else ""


def build_search_fields(values: dict[str, str]) -> SearchFields:
    """SearchFields from the first value of each envelope field of a message header."""
    def text(name: str) -> str:
        raw = values.get(name)
        return decode_words(raw).casefold() if raw else ""

    subject = decode_words(values.get("subject", ""))
    refs = _msgids(values.get("references"))
    if len(refs) > MAX_REFERENCES:
        refs = refs[:1] + refs[-(MAX_REFERENCES - 1):]
    from_ = parse_addresses(values.get("from"))
    to = parse_addresses(values.get("to"))
    ids = _msgids(values.get("message-id"))
    return SearchFields(
        from_text=text("from"), to_text=text("to"), cc_text=text("cc"), bcc_text=text("bcc"),
        subject_text=subject.casefold(), sent_date=_sent_date(values.get("date")),
        message_id=ids[0] if ids else None, in_reply_to=_msgids(values.get("in-reply-to"))[:8],
        references=refs, base_subject=ascii_casemap(base_subject(subject)),
        sort_from=_mailbox(from_), sort_to=_mailbox(to),
        sort_cc=_mailbox(parse_addresses(values.get("cc"))),
        display_from=_display(from_), display_to=_display(to))
