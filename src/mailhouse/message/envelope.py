"""The IMAP ENVELOPE (RFC 9051 §7.5.2) of a message, from its raw header values.

Strings stay as on the wire (unfolded, encoded-words not decoded): IMAP hands clients the header
text and lets them decode. Addresses are (name, adl, mailbox, host) with RFC 9051's group
markers: a group opens with (NIL, NIL, group-name, NIL) and closes with (NIL, NIL, NIL, NIL).
The address tokenizer is written here because the stdlib either flattens groups
(email.utils.getaddresses) or keeps its parser private.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

# Host given to an address without "@domain", so that NIL keeps meaning "group marker" (the
# value UW-IMAP introduced and other servers and clients recognise).
MISSING_HOST = ".MISSING-HOST-NAME."
# Addresses kept per address field (a group's two markers count as addresses).
MAX_ADDRESSES = 256

_SPECIALS = "<>@,;:.[]"


class Address(NamedTuple):
    name: str | None
    adl: str | None
    mailbox: str | None
    host: str | None

    @property
    def is_group_start(self) -> bool:
        return self.host is None and self.mailbox is not None

    @property
    def is_group_end(self) -> bool:
        return self.host is None and self.mailbox is None


class _Tok(NamedTuple):
    kind: str  # "a" atom, "q" quoted string, "c" comment, "d" domain literal, "s" special
    text: str
    spaced: bool  # whitespace came before it


def _tokenize(value: str) -> list[_Tok]:
    toks: list[_Tok] = []
    i, n, spaced = 0, len(value), False
    while i < n:
        c = value[i]
        if c in " \t\r\n":
            spaced, i = True, i + 1
            continue
        if c == '"':
            i, text = _quoted(value, i + 1, '"')
            toks.append(_Tok("q", text, spaced))
        elif c == "(":
            depth, j, buf = 1, i + 1, []
            while j < n and depth:
                ch = value[j]
                if ch == "\\" and j + 1 < n:
                    buf.append(value[j + 1])
                    j += 2
                    continue
                depth += (ch == "(") - (ch == ")")
                if depth:
                    buf.append(ch)
                j += 1
            i = j
            toks.append(_Tok("c", "".join(buf), spaced))
        elif c == "[":
            end = value.find("]", i)
            end = n if end < 0 else end + 1
            toks.append(_Tok("d", value[i:end], spaced))
            i = end
        elif c in _SPECIALS:
            toks.append(_Tok("s", c, spaced))
            i += 1
        else:
            j = i
            while j < n and value[j] not in _SPECIALS and value[j] not in ' \t\r\n"(':
                j += 1
            toks.append(_Tok("a", value[i:j], spaced))
            i = j
        spaced = False
    return toks


def _quoted(value: str, i: int, end: str) -> tuple[int, str]:
    buf: list[str] = []
    n = len(value)
    while i < n and value[i] != end:
        if value[i] == "\\" and i + 1 < n:
            i += 1
        buf.append(value[i])
        i += 1
    return i + 1, "".join(buf)


def _phrase(toks: list[_Tok]) -> str | None:
    words = [t for t in toks if t.kind != "c"]
    text = "".join((" " if t.spaced and k else "") + t.text for k, t in enumerate(words))
    return text.strip() or None


def _joined(toks: list[_Tok]) -> str:
    return "".join(t.text for t in toks if t.kind != "c")


def _item(toks: list[_Tok]) -> Address | None:
    if not any(t.kind != "c" for t in toks):
        return None
    opening = next((k for k, t in enumerate(toks) if t.kind == "s" and t.text == "<"), None)
    adl: str | None = None
    if opening is not None:
        name = _phrase(toks[:opening])
        inner = toks[opening + 1:]
        closing = next((k for k, t in enumerate(inner) if t.kind == "s" and t.text == ">"), None)
        if closing is not None:
            inner = inner[:closing]
        inner = [t for t in inner if t.kind != "c"]
        if inner and inner[0].text == "@":
            colon = next((k for k, t in enumerate(inner) if t.kind == "s" and t.text == ":"),
                         len(inner))
            adl = _joined(inner[:colon]) or None
            inner = inner[colon + 1:]
    else:
        comments = [t.text.strip() for t in toks if t.kind == "c" and t.text.strip()]
        name = comments[-1] if comments else None
        inner = [t for t in toks if t.kind != "c"]
    if not inner:
        return None
    at = max((k for k, t in enumerate(inner) if t.kind == "s" and t.text == "@"), default=-1)
    if at < 0:
        return Address(name, adl, _joined(inner), MISSING_HOST)
    return Address(name, adl, _joined(inner[:at]), _joined(inner[at + 1:]) or MISSING_HOST)


def parse_addresses(value: str | None) -> list[Address] | None:
    """The address list of one header value, groups as RFC 9051 markers; None if empty."""
    if value is None:
        return None
    out: list[Address] = []
    cur: list[_Tok] = []
    in_angle = in_group = False

    def flush() -> None:
        addr = _item(cur)
        if addr is not None:
            out.append(addr)
        cur.clear()

    for tok in _tokenize(value):
        special = tok.text if tok.kind == "s" else ""
        if special == "<":
            in_angle = True
        elif special == ">":
            in_angle = False
        elif not in_angle and special == ":" and not in_group and not any(
                t.kind == "s" and t.text in "@<" for t in cur):
            out.append(Address(None, None, _phrase(cur) or "", None))
            cur.clear()
            in_group = True
            continue
        elif not in_angle and special == ",":
            flush()
            continue
        elif not in_angle and special == ";" and in_group:
            flush()
            out.append(Address(None, None, None, None))
            in_group = False
            continue
        cur.append(tok)
    flush()
    if in_group:
        out.append(Address(None, None, None, None))
    if len(out) > MAX_ADDRESSES:
        out = out[:MAX_ADDRESSES]
        opened = sum(a.is_group_start for a in out) - sum(a.is_group_end for a in out)
        if opened > 0:
            out[-1] = Address(None, None, None, None)
    return out or None


@dataclass(slots=True)
class Envelope:
    date: str | None = None
    subject: str | None = None
    from_: list[Address] | None = None
    sender: list[Address] | None = None
    reply_to: list[Address] | None = None
    to: list[Address] | None = None
    cc: list[Address] | None = None
    bcc: list[Address] | None = None
    in_reply_to: str | None = None
    message_id: str | None = None


def build_envelope(values: dict[str, str]) -> Envelope:
    """Envelope from the first value of each envelope field (see mime_headers.first_values).

    Sender and Reply-To fall back to From when absent or empty (RFC 9051 §7.5.2).
    """
    env = Envelope(
        date=values.get("date"), subject=values.get("subject"),
        from_=parse_addresses(values.get("from")), sender=parse_addresses(values.get("sender")),
        reply_to=parse_addresses(values.get("reply-to")), to=parse_addresses(values.get("to")),
        cc=parse_addresses(values.get("cc")), bcc=parse_addresses(values.get("bcc")),
        in_reply_to=values.get("in-reply-to"), message_id=values.get("message-id"))
    if env.sender is None:
        env.sender = env.from_
    if env.reply_to is None:
        env.reply_to = env.from_
    return env
