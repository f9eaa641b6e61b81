"""SMTP command-line grammar (RFC 5321 §4.1), pure parsing into typed values.

Only what a command line *says* is decided here; whether it is allowed now is the state table's
job (server.py), and whether we want the mail is the service's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mailhouse.errors import Reply
from mailhouse.model import Address, AddressError

# RFC 5321 §4.1.2 esmtp-keyword / esmtp-value; RFC 6531 §3.3 lets values carry UTF-8.
_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*\Z")
_VALUE = re.compile(r"[\x21-\x3c\x3e-\x7e\u0080-\U0010ffff]+\Z")
_SOURCE_ROUTE = re.compile(r"@[^:,]+(,@[^:,]+)*:")
# RFC 4422 §3.1: a mechanism name is 1 to 20 of upper-case letters, digits, "-" and "_"
# (matched case-insensitively; RFC 4954 §4 leaves the case to the client).
_SASL_MECHANISM = re.compile(r"[A-Za-z0-9_-]{1,20}\Z")

SYNTAX_PARAM = Reply(501, "5.5.4", "Syntax error in parameters or arguments")
SYNTAX_ADDRESS = Reply(501, "5.1.7", "Bad address syntax")
CONTROL_CHAR = Reply(501, "5.5.2", "Control character in command arguments")
NON_ASCII = Reply(553, "5.6.7", "Non-ASCII address needs SMTPUTF8")  # RFC 6531 §3.5


class ParseError(Exception):
    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.text)
        self.reply = reply


@dataclass(frozen=True, slots=True)
class Path:
    """A reverse- or forward-path with its ESMTP parameters (keywords upper-cased)."""

    address: Address | None  # None: the null path <> (MAIL) or bare <Postmaster> (RCPT)
    params: dict[str, str | None]
    postmaster: bool = False


def split_command(line: str) -> tuple[str, str]:
    """`VERB args` → ("VERB", "args"). Verbs are case-insensitive (RFC 5321 §2.4)."""
    verb, _, rest = line.partition(" ")
    return verb.upper(), rest


def _take_bracketed(text: str) -> tuple[str, str]:
    """Split "<path> rest" honouring quoted local parts, which may hold '>' or spaces."""
    i, quoted = 1, False
    while i < len(text):
        ch = text[i]
        if quoted and ch == "\\":
            i += 2
            continue
        if ch == '"':
            quoted = not quoted
        elif ch == ">" and not quoted:
            return text[1:i], text[i + 1 :]
        i += 1
    raise ParseError(SYNTAX_ADDRESS)


def parse_params(text: str, *, utf8: bool) -> dict[str, str | None]:
    params: dict[str, str | None] = {}
    for item in text.split():
        key, eq, value = item.partition("=")
        if not _KEYWORD.match(key) or (eq and not _VALUE.match(value)):
            raise ParseError(SYNTAX_PARAM)
        if not utf8 and not value.isascii():
            raise ParseError(SYNTAX_PARAM)
        params[key.upper()] = value if eq else None
    return params


def parse_path(args: str, prefix: str, *, allow_null: bool, utf8: bool | None) -> Path:
    """Parse `FROM:<a@b> PARAMS` / `TO:<a@b> PARAMS`.

    Lenient where real clients are sloppy and it is harmless (a space after the colon, a path
    without angle brackets, as Postfix with strict_rfc821_envelopes=no); strict where it matters
    for security: control characters (501) and non-ASCII without SMTPUTF8 (553). `utf8=None`
    (MAIL in an EHLO session) lets the path's own SMTPUTF8 parameter decide.
    """
    if any(c in args for c in "\r\n\0"):
        raise ParseError(CONTROL_CHAR)
    if args[: len(prefix)].upper() != prefix:
        raise ParseError(SYNTAX_PARAM)
    rest = args[len(prefix) :].lstrip(" ")
    if rest.startswith("<"):
        inner, tail = _take_bracketed(rest)
        if tail and not tail.startswith(" "):
            raise ParseError(SYNTAX_PARAM)
    else:
        inner, _, tail = rest.partition(" ")
        if not inner:
            raise ParseError(SYNTAX_ADDRESS)
    # MAIL's SMTPUTF8 parameter decides whether addresses may be UTF-8 (RFC 6531 §3.4), so read
    # the parameters first.
    params = parse_params(tail, utf8=True)
    if utf8 is None:
        utf8 = "SMTPUTF8" in params
    # RFC 5321 §4.1.1.3 / Appendix C: accept and ignore a source route.
    route = _SOURCE_ROUTE.match(inner)
    if route:
        inner = inner[route.end() :]
    if inner == "":
        if not allow_null:
            raise ParseError(SYNTAX_ADDRESS)
        return Path(None, params)
    if not allow_null and inner.casefold() == "postmaster":
        return Path(None, params, postmaster=True)  # RFC 5321 §4.1.1.3
    if not inner.isascii() and not utf8:
        raise ParseError(NON_ASCII)
    try:
        address = Address.parse(inner, utf8=utf8)
    except AddressError as exc:
        raise ParseError(Reply(501, "5.1.7", f"Bad address syntax: {exc}")) from exc
    return Path(address, params)


def parse_auth(args: str) -> tuple[str, bytes | None]:
    """`AUTH mechanism [initial-response]` (RFC 4954 §4) → (MECHANISM, response or None).

    The initial response stays in wire form (base64, or "=" for empty): decoding it is the SASL
    layer's job, which answers 501 5.5.2 when it cannot."""
    parts = args.split(" ")
    if not 1 <= len(parts) <= 2 or not _SASL_MECHANISM.match(parts[0]):
        raise ParseError(Reply(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]"))
    if len(parts) == 2:
        if not parts[1] or not parts[1].isascii():
            raise ParseError(Reply(501, "5.5.2", "Cannot decode initial response"))
        return parts[0].upper(), parts[1].encode("ascii")
    return parts[0].upper(), None


def is_number(text: str) -> bool:
    """ASCII digits only (RFC 5321 and 3030 numbers): str.isdigit() alone also accepts "²" and
    other Unicode digits, which int() then refuses with an exception."""
    return text.isascii() and text.isdigit()


def parse_bdat(args: str) -> tuple[int, bool]:
    """`BDAT chunk-size [LAST]` (RFC 3030 §2)."""
    parts = args.split()
    if not parts or len(parts) > 2 or not is_number(parts[0]) or len(parts[0]) > 18:
        raise ParseError(Reply(501, "5.5.4", "Syntax: BDAT chunk-size [LAST]"))
    if len(parts) == 2 and parts[1].upper() != "LAST":
        raise ParseError(Reply(501, "5.5.4", "Syntax: BDAT chunk-size [LAST]"))
    return int(parts[0]), len(parts) == 2
