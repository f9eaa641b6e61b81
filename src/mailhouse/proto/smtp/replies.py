"""Reading SMTP replies (RFC 5321 §4.2) and what an EHLO reply announces (§4.1.1.1), for the
client core. Pure and bounded: a reply line is at most MAX_REPLY_LINE octets, a reply at most
MAX_REPLY_LINES lines; anything else is a `ReplyError`, never a crash and never a guess (OpenSMTPD
CVE-2020-8794 was a client trusting a malformed multi-line reply).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from mailhouse.errors import Reply

# RFC 5321 §4.5.3.1.5 sets 512 octets for a reply line, but real servers exceed it (long EHLO
# keyword lists, verbose rejections). Postfix reads up to its line_length_limit, 2048.
MAX_REPLY_LINE = 2048
# Lines in one multi-line reply; a long EHLO has ~20. More is a server talking forever.
MAX_REPLY_LINES = 100
# Unparsed input kept at most (a flood while we stream a message body is refused, not stored).
MAX_BUFFERED = 1 << 20
# A reply's text is kept for the queue and the DSN; a remote's essay is cut to this.
MAX_REPLY_TEXT = 4096

_ENHANCED = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?: +|\Z)")
_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*\Z")
# Reply text ends up in logs and in DSNs (a header field): no control characters get through.
_SANITIZE = {i: "?" for i in range(32)} | {9: " ", 127: "?"}


class ReplyError(Exception):
    """The remote's bytes are not a valid SMTP reply."""


def malformed(detail: str) -> Reply:
    return Reply(451, "4.5.0", f"Protocol error: malformed reply from the remote server "
                               f"({detail})")


def as_temporary(reply: Reply) -> Reply:
    """The same reply as a 4xx: for a remote's 5xx that must not bounce the message, such as a
    5xx greeting (Postfix's smtp_skip_5xx_greeting: try the next MX, then retry later)."""
    if reply.code < 500:
        return reply
    enhanced = reply.enhanced
    if enhanced is not None:
        enhanced = "4" + enhanced[1:]
    return Reply(reply.code - 100, enhanced, reply.text)


# --- replies -------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class RawReply:
    """A complete reply: its code and the text of each line (after "NNN-" / "NNN ")."""

    code: int
    lines: tuple[str, ...]

    def to_reply(self) -> Reply:
        """RFC 2034 §4: an enhanced code leads each line when its class matches the reply's."""
        first = _ENHANCED.match(self.lines[0])
        if first is None or first.group(1) != str(self.code)[0]:
            return Reply(self.code, None, _cut("\n".join(self.lines)))
        code = ".".join(first.groups())
        texts = []
        for line in self.lines:
            match = _ENHANCED.match(line)
            texts.append(line[match.end():] if match and line.startswith(code) else line)
        return Reply(self.code, code, _cut("\n".join(texts)))


def _cut(text: str) -> str:
    return text if len(text) <= MAX_REPLY_TEXT else text[: MAX_REPLY_TEXT - 3] + "..."



class ReplyReader:
    """Splits the byte stream into replies (RFC 5321 §4.2, §4.2.1), bounded in line length, line
    count and buffered bytes. Lines end with CRLF; a bare LF is tolerated, as Postfix's client
    does, since a server's line ends cannot smuggle anything into our state."""

    __slots__ = ("_buf", "_code", "_lines")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._lines: list[str] = []
        self._code = 0

    def feed(self, data: bytes) -> None:
        self._buf += data

    def clear(self) -> None:
        self._buf.clear()
        self._lines, self._code = [], 0

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def next(self) -> RawReply | None:
        """The next complete reply, None when more bytes are needed; ReplyError when broken."""
        for _ in range(MAX_REPLY_LINES + 1):
            nl = self._buf.find(b"\n", 0, MAX_REPLY_LINE + 1)
            if nl < 0:
                if len(self._buf) > MAX_REPLY_LINE:
                    raise ReplyError("reply line too long")
                return None
            raw = bytes(self._buf[:nl])
            del self._buf[: nl + 1]
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            code, last, text = self._parse_line(raw)
            if self._lines and code != self._code:
                raise ReplyError("reply code changes within a multi-line reply")
            self._code = code
            self._lines.append(text)
            if last:
                reply = RawReply(code, tuple(self._lines))
                self._lines, self._code = [], 0
                return reply
            if len(self._lines) >= MAX_REPLY_LINES:
                raise ReplyError("too many reply lines")
        raise ReplyError("too many reply lines")  # unreachable: the loop returns or raises

    @staticmethod
    def _parse_line(raw: bytes) -> tuple[int, bool, str]:
        # Reply-line = *( Reply-code "-" [ textstring ] CRLF ) Reply-code [ SP textstring ] CRLF
        head = raw[:3]
        if len(head) != 3 or not head.isdigit() or head[0] not in b"2345" or head[1] > 0x35:
            raise ReplyError("bad reply code")
        sep = raw[3:4]
        if sep not in (b"", b" ", b"-"):
            raise ReplyError("bad separator after the reply code")
        text = raw[4:].decode("utf-8", "replace").translate(_SANITIZE)
        return int(head), sep != b"-", text



@dataclass(frozen=True, slots=True)
class Capabilities:
    """What the remote announced in its EHLO reply (RFC 5321 §4.1.1.1); empty after HELO."""

    esmtp: bool
    keywords: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_ehlo(cls, lines: Iterable[str]) -> Capabilities:
        keywords: dict[str, str] = {}
        for line in list(lines)[1:]:  # the first line is the server's name and greeting
            keyword, _, params = line.strip().partition(" ")
            if _KEYWORD.match(keyword):
                keywords.setdefault(keyword.upper(), params.strip())
        return cls(True, keywords)

    @property
    def pipelining(self) -> bool:
        return "PIPELINING" in self.keywords

    @property
    def starttls(self) -> bool:
        return "STARTTLS" in self.keywords

    @property
    def eightbitmime(self) -> bool:
        return "8BITMIME" in self.keywords

    @property
    def smtputf8(self) -> bool:
        return "SMTPUTF8" in self.keywords

    @property
    def size(self) -> int | None:
        """None without SIZE; 0 when SIZE is offered with no fixed limit (RFC 1870 §4)."""
        value = self.keywords.get("SIZE")
        if value is None:
            return None
        value = value.split(" ")[0]
        # isascii(): "²" is a str digit that int() refuses (a remote server chooses this text).
        return int(value) if value.isascii() and value.isdigit() and len(value) <= 18 else 0
