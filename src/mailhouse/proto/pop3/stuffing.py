"""Byte-stuffing of a message streamed into a POP3 multi-line response (RFC 1939 §3), and the cut
that TOP makes (RFC 1939 §7). Kept apart from the state machine: it is the one piece that sees
every octet of every message, so it is written for speed and tested on its own.
"""

from __future__ import annotations

_LF = 0x0A
_DOT = 0x2E
CRLF = b"\r\n"
TERMINATOR = b".\r\n"


class MessageStuffer:
    """Turns the stored bytes of one message, in chunks of any size, into the body of a
    multi-line response.

    RFC 1939 §3: a line that begins with "." goes out with one more "." in front, so a line that is
    a single "." goes out as ".." (security checklist 25) and can never end the response early.
    A "line" begins at the start of the message and after every LF: stored messages are CRLF, but
    stuffing after a bare LF too costs nothing and keeps clients that split on LF (poplib does)
    from ever seeing a premature terminator. The state carried between chunks is whether the next
    octet starts a line, so a chunk ending in CRLF followed by one starting with "." is stuffed.

    The response must end with CRLF "." CRLF: `finish()` adds the CRLF a stored message lacks.

    For TOP (`body_lines` not None) the stuffer passes the header section, the empty line that
    ends it, and the first `body_lines` lines of the body, then drops everything else; `complete`
    tells the transport it may stop streaming. A message without an empty line is all header and
    goes out whole.
    """

    __slots__ = ("_at_line_start", "_body_left", "_first", "_in_header", "_line_len", "_tail",
                 "_top", "complete")

    def __init__(self, body_lines: int | None = None) -> None:
        self._at_line_start = True
        self._tail = b""  # the last (up to) two octets passed, to see whether they are CRLF
        self._top = body_lines is not None  # only TOP looks at the structure
        self._in_header = self._top
        self._body_left = body_lines or 0
        self._line_len = 0  # TOP, in the header: octets of the unfinished line so far
        self._first = b""  # and its first octet: a line of just "\r" is empty too
        self.complete = False

    def feed(self, chunk: bytes) -> bytes:
        """The stuffed form of `chunk` (after TOP's cut); b"" once `complete`."""
        if self.complete or not chunk:
            return b""
        if self._top:
            chunk = self._cut(chunk)  # never empty: a cut falls just after an LF it passes
        out = chunk.replace(b"\n.", b"\n..")
        if self._at_line_start and chunk[0] == _DOT:
            out = b"." + out
        self._at_line_start = chunk[-1] == _LF
        self._tail = (self._tail + chunk[-2:])[-2:]
        return out

    def finish(self) -> bytes:
        """The end of the response: a CRLF if the data passed did not end with one, then "."."""
        self.complete = True
        if self._tail and self._tail != CRLF:
            return CRLF + TERMINATOR
        return TERMINATOR

    # --- TOP ---------------------------------------------------------------------------------
    def _cut(self, chunk: bytes) -> bytes:
        """The part of `chunk` TOP still wants; sets `complete` when the cut falls inside it."""
        pos, size = 0, len(chunk)
        while self._in_header:
            nl = chunk.find(b"\n", pos)
            first = self._first if self._line_len else chunk[pos : pos + 1]
            if nl < 0:  # the line goes on in the next chunk
                self._first = first
                self._line_len += size - pos
                return chunk
            length = self._line_len + nl - pos
            self._line_len = 0
            pos = nl + 1
            if length == 0 or (length == 1 and first == b"\r"):  # RFC 5322 §2.1: header ends
                self._in_header = False
                if self._body_left == 0:
                    self.complete = True
                    return chunk[:pos]
        # In the body: count whole lines at C speed, and only walk to the cut when it is here.
        lines = chunk.count(b"\n", pos)
        if lines < self._body_left:
            self._body_left -= lines
            return chunk
        for _ in range(self._body_left):
            pos = chunk.find(b"\n", pos) + 1
        self._body_left = 0
        self.complete = True
        return chunk[:pos]
