"""ENVELOPE, BODY and BODYSTRUCTURE as IMAP text (RFC 9051 §7.5.2, grammar in §9), from a
parsed MessageStructure, so the server formats them without touching the message file.

Strings are quoted when every character may stand in a quoted string, else sent as a literal
`{n}\\r\\n` followed by the octets. Without UTF-8 (a client that has not enabled IMAP4rev2 or
UTF8=ACCEPT) non-ASCII text goes as a literal too, and non-ASCII parameter values are encoded
the RFC 2231 way (`name*` = `utf-8''%XX`), since the structure keeps parameters decoded.
NUL, which no IMAP string may carry, is dropped.

A multipart that had no part (no boundary, or no delimiter) is shown with one empty text/plain
part, because the grammar requires at least one; message/rfc822 whose body was not parsed
(e.g. base64 encoded, or past the depth limit) is shown as a basic part.
"""

from __future__ import annotations

import re
from urllib.parse import quote

from mailhouse.message.envelope import Address, Envelope
from mailhouse.message.mime_headers import ContentInfo
from mailhouse.message.structure import Part
from mailhouse.proto.imap.responses import QUOTED_MAX, nstring

# Printable ASCII but the quoted-string specials: such a value is its own quoted string.
_PLAIN = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]*")
_EMPTY_TEXT = b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0)'


def istring(value: str | None, utf8: bool = False) -> bytes:
    """NIL, a quoted string, or a literal (proto/imap/responses.py decides which); NUL, which
    no header value should carry, is dropped rather than sent as literal8."""
    if value is None:
        return b"NIL"
    if len(value) <= QUOTED_MAX and _PLAIN.fullmatch(value):
        return b'"' + value.encode("ascii") + b'"'  # what quoted() makes of it, without escapes
    return nstring(value.replace("\x00", "").encode("utf-8", errors="replace"), utf8=utf8)


def _list(items: list[bytes]) -> bytes:
    return b"(" + b" ".join(items) + b")"


def _address(a: Address, utf8: bool) -> bytes:
    return _list([istring(a.name, utf8), istring(a.adl, utf8), istring(a.mailbox, utf8),
                  istring(a.host, utf8)])


def _addresses(addresses: list[Address] | None, utf8: bool) -> bytes:
    if not addresses:
        return b"NIL"
    return b"(" + b"".join(_address(a, utf8) for a in addresses) + b")"


def envelope(env: Envelope | None, utf8: bool = False) -> bytes:
    env = env or Envelope()
    return _list([
        istring(env.date, utf8), istring(env.subject, utf8),
        *(_addresses(x, utf8) for x in (env.from_, env.sender, env.reply_to, env.to, env.cc,
                                         env.bcc)),
        istring(env.in_reply_to, utf8), istring(env.message_id, utf8)])


def _params(params: list[tuple[str, str]], utf8: bool) -> bytes:
    if not params:
        return b"NIL"
    out: list[bytes] = []
    for name, value in params:
        if not utf8 and not value.isascii():
            name, value = name + "*", "utf-8''" + quote(value, safe="")
        out += [istring(name, utf8), istring(value, utf8)]
    return _list(out)


def _extension(info: ContentInfo, utf8: bool) -> list[bytes]:
    disposition = b"NIL" if info.disposition is None else _list(
        [istring(info.disposition, utf8), _params(info.disposition_params, utf8)])
    if not info.language:
        language = b"NIL"
    elif len(info.language) == 1:
        language = istring(info.language[0], utf8)
    else:
        language = _list([istring(x, utf8) for x in info.language])
    return [disposition, language, istring(info.location, utf8)]


def body(part: Part, extensible: bool = True, utf8: bool = False) -> bytes:
    """BODYSTRUCTURE (extensible) or BODY (not) of a part; the root part is the message."""
    info = part.content
    if info.type == "multipart":
        kids = b"".join(body(c, extensible, utf8) for c in part.children) or _EMPTY_TEXT
        fields = [kids, istring(info.subtype, utf8)]
        if extensible:
            fields += [_params(info.params, utf8), *_extension(info, utf8)]
        return b"(" + b" ".join(fields) + b")"
    params = info.params
    if info.type == "text" and info.param("charset") is None:
        params = [("charset", "us-ascii"), *params]  # RFC 2045 §5.2's default, made explicit
    fields = [istring(info.type, utf8), istring(info.subtype, utf8),
              _params(params, utf8), istring(info.id, utf8),
              istring(info.description, utf8), istring(info.encoding, utf8),
              b"%d" % part.body_size]
    if part.message is not None:
        fields += [envelope(part.message.envelope, utf8),
                   body(part.message, extensible, utf8), b"%d" % part.lines]
    elif info.type == "text":
        fields.append(b"%d" % part.lines)
    if extensible:
        fields += [istring(info.md5, utf8), *_extension(info, utf8)]
    return _list(fields)
