"""Fuzz target: the IMAP parser and session core (proto/imap) on any byte stream, cut anywhere.

Input: flags (1 byte: bit 0 TLS active, bit 1 token mode, bit 2 plaintext logins allowed), the
cuts, then the stream. Every decision is answered as a service would (logins succeed, requests
complete OK, STARTTLS completes). Contract: nothing raises, the replies do not depend on how
the stream was cut (unless it holds STARTTLS, which drops what was pipelined behind it), and
every line out is untagged, a continuation, or a tagged status."""

from __future__ import annotations

import re

from fuzz.input import FuzzInput, expand, header
from mailhouse.proto.imap.config import ParserConfig
from mailhouse.proto.imap.server import ImapServer, ImapServerConfig
from tests.proto.imap.driver import serve

WORDS = (
    b"a ", b"b ", b"LOGIN ", b"alice ", b"pw", b"SELECT ", b"INBOX", b"IDLE", b"DONE", b"NOOP",
    b"FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (FROM)])", b"APPEND INBOX (\\Seen) ", b"{3}",
    b"{3+}", b"~{3}", b"abc", b"STARTTLS", b"AUTHENTICATE PLAIN", b"AGFsaWNlAHB3", b"*",
    b"LOGOUT", b"ENABLE IMAP4rev2 CONDSTORE", b"UID SEARCH OR SEEN (FROM x) NOT 1:5", b" ",
    b"\r\n", b"\n", b"(", b")", b'"', b"\x00", b"\xff", b"&AOk-", b"CAPABILITY", b"ID NIL",
    b"STORE 1 +FLAGS.SILENT (\\Deleted)", b"UID EXPUNGE 1:*", b"LIST \"\" *", b"UNSELECT",
    b"ENABLE UTF8=ACCEPT", b"UTF8 (", b"SEARCH CHARSET UTF-8 ALL",
)
_STATUS = re.compile(rb"(\* |\+ |[^ ]+ (OK|NO|BAD) )")
_CONFIG = ImapServerConfig(hostname="fuzz.example", max_errors=50,
                           capabilities=("UTF8=ACCEPT",), enableable=("UTF8=ACCEPT",),
                           parser=ParserConfig(max_line_length=512, max_literal_size=256,
                                               max_append_size=1024, max_depth=8))


def _drive(chunks: list[bytes], *, tls: bool, plaintext: bool) -> bytes:
    config = _CONFIG if not plaintext else ImapServerConfig(
        hostname=_CONFIG.hostname, max_errors=_CONFIG.max_errors, parser=_CONFIG.parser,
        capabilities=_CONFIG.capabilities, enableable=_CONFIG.enableable,
        allow_plaintext_auth=True)
    return serve(ImapServer(config, tls_active=tls), chunks)


def test_one_input(data: bytes) -> None:
    source = FuzzInput(data)
    flags = source.byte()
    sizes = source.sizes()
    stream = source.rest()
    if flags & 2:
        stream = expand(stream, WORDS)
    tls, plaintext = bool(flags & 1), bool(flags & 4)
    whole = _drive([stream], tls=tls, plaintext=plaintext)
    pieces, at, i = [], 0, 0
    while at < len(stream):
        size = sizes[i % len(sizes)]
        pieces.append(stream[at:at + size])
        at, i = at + size, i + 1
    cut = _drive(pieces, tls=tls, plaintext=plaintext)
    # STARTTLS drops what was pipelined behind it, so there the cut matters, by design.
    if b"STARTTLS" not in stream.upper():
        assert cut == whole
    # Lines out: untagged, continuation or tagged status (literals only in none of these).
    for line in whole.split(b"\r\n")[:-1]:
        assert _STATUS.match(line), line


SESSIONS = (
    b"a CAPABILITY\r\nb LOGIN alice pw\r\nc SELECT INBOX\r\nd FETCH 1:* FLAGS\r\ne IDLE\r\n"
    b"DONE\r\nf LOGOUT\r\n",
    b"a AUTHENTICATE PLAIN\r\nAGFsaWNlAHB3\r\nb APPEND INBOX {5}\r\nhello\r\n"
    b"c APPEND INBOX {3+}\r\nabc\r\nd ENABLE IMAP4rev2\r\ne LIST \"\" *\r\n",
    b"a STARTTLS\r\nb LOGIN alice pw\r\nc NOOP\r\n",
    b"a LOGIN {5}\r\nalice {2}\r\npw\r\nb UID SEARCH OR SEEN (FROM x) NOT 1:5\r\n"
    b"c BOGUS\r\n" + b"x" * 600 + b"\r\nd LOGOUT\r\n",
)


def seeds() -> list[bytes]:
    out = [header(flags, 0, 1) + session for session in SESSIONS for flags in (0, 1, 5)]
    out.append(header(3, 1, 5, 9) + bytes(range(len(WORDS))))
    return out
