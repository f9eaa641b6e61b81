"""Message content on the wire: DATA framing, dot-unstuffing and the checks that keep it honest.

SMTP smuggling (CVE-2023-51764 class) lives here: the only end of DATA is <CRLF>.<CRLF>
(RFC 5321 §4.1.1.4), and any bare CR or LF in content condemns the message, as Postfix's
`smtpd_forbid_bare_newline = yes` does, so no two servers can disagree about where it ends.
"""

from __future__ import annotations

from dataclasses import dataclass

from mailhouse.proto.input_buffer import InputBuffer

_HEAD = 16  # how much of a line's start we keep to recognise header names


class BodyScanner:
    """Watches raw message bytes fed in arbitrary pieces (DATA lines after unstuffing, or BDAT
    chunks) for bare CR/LF, overlong lines and `Received:` headers (loop detection, RFC 5321 §6.3).
    Costs a few C-level byte scans per piece, no per-byte Python."""

    __slots__ = ("_line_head", "_line_len", "_max_line", "_pending_cr", "bare_newline",
                 "in_headers", "long_line", "received", "size")

    def __init__(self, max_line: int) -> None:
        self._max_line = max_line - 2  # the limit counts the CRLF (RFC 5321 §4.5.3.1.6)
        self.size = 0
        self.received = 0
        self.in_headers = True
        self.bare_newline = False
        self.long_line = False
        self._pending_cr = False
        self._line_len = 0
        self._line_head = b""

    def _end_line(self, length: int, head: bytes) -> None:
        if length > self._max_line:
            self.long_line = True
        if self.in_headers:
            if length == 0:
                self.in_headers = False
            elif head[:9].lower() == b"received:":
                self.received += 1

    def end(self) -> None:
        """The content is complete: a CR still waiting for its LF is a bare CR (BDAT content
        may end anywhere; DATA content always ends with the CRLF before the dot)."""
        if self._pending_cr:
            self._pending_cr = False
            self.bare_newline = True

    def feed(self, data: bytes) -> None:
        if not data:
            return
        self.size += len(data)
        if self._pending_cr:
            self._pending_cr = False
            if data[0] == 0x0A:  # a CRLF split between two pieces
                self._end_line(self._line_len - 1, self._line_head)
                self._line_len, self._line_head = 0, b""
                data = data[1:]
                if not data:
                    return
            else:
                self.bare_newline = True
        self._pending_cr = data[-1] == 0x0D
        check = data[:-1] if self._pending_cr else data
        crlf = check.count(b"\r\n")
        if check.count(b"\n") != crlf or check.count(b"\r") != crlf:
            self.bare_newline = True
        pieces = data.split(b"\r\n")
        if len(pieces) == 1:
            self._line_len += len(data)
            if len(self._line_head) < _HEAD:
                self._line_head = (self._line_head + data)[:_HEAD]
            if self._line_len - self._pending_cr > self._max_line:
                self.long_line = True
            return
        first = pieces[0]
        self._end_line(self._line_len + len(first), (self._line_head + first[:_HEAD])[:_HEAD])
        middle = pieces[1:-1]
        if self.in_headers:
            for line in middle:
                if not self.in_headers:
                    break
                self._end_line(len(line), line[:_HEAD])
        if middle and max(map(len, middle)) > self._max_line:
            self.long_line = True
        last = pieces[-1]
        self._line_len, self._line_head = len(last), last[:_HEAD]
        if self._line_len - self._pending_cr > self._max_line:
            self.long_line = True


@dataclass(slots=True)
class DataChunkResult:
    content: bytes  # unstuffed message bytes to store
    consumed: int  # how many buffer bytes were used
    finished: bool  # <CRLF>.<CRLF> seen


class DotReader:
    """Turns the DATA byte stream into message content: finds the terminator and removes the
    transparency dots (RFC 5321 §4.5.2). Bounded: a line with no LF is passed on in pieces.

    Linear in the bytes it is given: the terminator search stops at the first terminator, and
    `read()` looks at an input buffer in place, so a message followed by megabytes of pipelined
    commands (or by more messages) costs only its own length, not the buffer's."""

    __slots__ = ("_at_line_start", "_max_pending")

    def __init__(self, max_pending: int = 65536) -> None:
        self._at_line_start = True
        self._max_pending = max_pending

    def read(self, source: InputBuffer) -> DataChunkResult:
        """Take what can be decided from `source` (consumed octets are removed from it)."""
        if len(source) < self._max_pending and not source.has_lf():
            return DataChunkResult(b"", 0, False)  # without searching the same octets again
        data, start = source.window()
        result = self.take(data, start)
        source.skip(result.consumed)
        return result

    def take(self, buf: bytes | bytearray, start: int = 0) -> DataChunkResult:
        """The same on `buf[start:]`; `consumed` counts from `start`."""
        at_start = self._at_line_start
        if at_start and buf.startswith(b".\r\n", start):
            return DataChunkResult(b"", 3, True)
        # A terminator ends with LF, so it lies before the last LF: searching for it first finds
        # exactly what searching the complete lines would, without scanning past it.
        end = buf.find(b"\r\n.\r\n", start)
        if end >= 0:
            stop, consumed_to, finished, full_lines = end + 2, end + 5, True, True
        else:
            finished = False
            last_lf = buf.rfind(b"\n", start)
            if last_lf >= 0:
                stop, full_lines = last_lf + 1, True
            elif len(buf) - start < self._max_pending:
                return DataChunkResult(b"", 0, False)
            else:
                # A very long line: pass it on (keeping a trailing CR that may start a CRLF).
                stop, full_lines = len(buf) - 1 if buf.endswith(b"\r") else len(buf), False
            consumed_to = stop
        with memoryview(buf) as view:
            content = bytes(view[start + (at_start and buf.startswith(b".", start)) : stop])
        content = content.replace(b"\r\n.", b"\r\n")
        self._at_line_start = full_lines
        return DataChunkResult(content, consumed_to - start, finished)
