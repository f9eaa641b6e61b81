"""The MIME tree of a message with exact octet offsets, parsed once while it streams past.

`StructureParser().feed(chunk)` ... `.finish()` returns a MessageStructure: every part with the
offsets of its header, its body and its end, the BODYSTRUCTURE fields of its own header, the
ENVELOPE of each message (the top one and every encapsulated message/rfc822 or message/global),
the number of lines of each body, and the fields SEARCH, SORT and THREAD use. So the IMAP server
answers BODY[1.2.MIME] or BODYSTRUCTURE by reading a byte range or this structure, never by
parsing the message file again.

Memory stays bounded whatever the message: the parser holds the header of one part (up to
MAX_HEADER_KEEP octets), a candidate boundary line (up to MAX_BOUNDARY_LINE) and one frame per
open nesting level (up to MAX_DEPTH); body octets are counted, never kept.

Offsets (all into the stored message, end exclusive):
  header_start..body_start  the part's header including the blank line that ends it;
  body_start..body_end      its body. Inside a multipart the line break before a boundary
                            delimiter belongs to the delimiter (RFC 2046 §5.1.1), not to the body.
A header ends at the first empty line. A header with no empty line runs to the next boundary
(or the end of the message) and its body is empty; so a message without a separator is all
header, as Dovecot treats it.

Boundaries (RFC 2046 §5.1.1): a line is a delimiter when, after trailing blanks (transport
padding) are removed, it is exactly "--" boundary or "--" boundary "--" of an open multipart,
so a boundary that is a prefix of another never matches the longer one. Any open multipart's
boundary is recognised, innermost first: an outer delimiter also ends inner multiparts whose
close delimiter is missing, and the end of the message ends everything still open. Text before
the first delimiter (preamble) and after the close delimiter (epilogue) belongs to the
multipart's body but to no child part. Bare LF line ends are handled like CRLF.

Limits (each crossed in tests/message/test_structure_limits.py): past MAX_PARTS no further
boundary is recognised, so the rest of the message is the body of the last part; a multipart or
message part at MAX_DEPTH is kept as a leaf (its body not parsed, enclosing boundaries still
recognised); header octets past MAX_HEADER_KEEP still count in the offsets but are not parsed;
past MAX_STORED_CHARS of kept header text, later parts keep only type, subtype and encoding.
`truncated` says that one of these applied; the structure is valid in every case.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from mailhouse.message.envelope import Envelope, build_envelope
from mailhouse.message.mime_headers import (
    CONTENT_FIELDS,
    ENVELOPE_FIELDS,
    MAX_CONTENT_VALUE_CHARS,
    MAX_ENVELOPE_VALUE_CHARS,
    ContentInfo,
    content_info,
    first_values,
    split_fields,
)
from mailhouse.message.searchfields import SearchFields, build_search_fields

MAX_PARTS = 1000
MAX_DEPTH = 100
MAX_HEADER_KEEP = 64 * 1024
MAX_BOUNDARY_LINE = 1024
MAX_BOUNDARY = 200
MAX_STORED_CHARS = 256 * 1024

# message/* subtypes whose body is a message parsed in turn (RFC 9051 §7.5.2), and the
# encodings under which its octets are the message itself.
ENCAPSULATING = ("rfc822", "global")
IDENTITY_ENCODINGS = ("7bit", "8bit", "binary")

_HEADER, _BODY = 0, 1


@dataclass(slots=True)
class Part:
    header_start: int
    body_start: int = -1
    body_end: int = -1
    content: ContentInfo = field(default_factory=ContentInfo)
    lines: int = 0
    children: list[Part] = field(default_factory=list)
    # The encapsulated message of a message/rfc822 or message/global part, when parsed.
    message: Part | None = None
    # Set on message roots: the top-level part and every Part.message.
    envelope: Envelope | None = None

    @property
    def is_multipart(self) -> bool:
        return self.content.type == "multipart"

    @property
    def body_size(self) -> int:
        return self.body_end - self.body_start

    def walk(self) -> list[Part]:
        """This part and all below it, depth first (encapsulated message before siblings)."""
        out: list[Part] = []
        stack: list[Part] = [self]
        while stack:
            part = stack.pop()
            out.append(part)
            below = list(part.children)
            if part.message is not None:
                below.insert(0, part.message)
            stack.extend(reversed(below))
        return out


@dataclass(slots=True)
class MessageStructure:
    root: Part
    search: SearchFields
    size: int
    truncated: bool = False


@dataclass(slots=True)
class _Frame:
    part: Part
    depth: int
    is_message: bool
    in_digest: bool  # the part's parent is multipart/digest
    nl_body: int = 0  # LFs before body_start
    delimiter: bytes | None = None  # b"--" + boundary while the multipart is open


class StructureParser:
    """Feed the message in chunks of any size; finish() returns its structure. Never raises."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._off = 0  # absolute offset of _buf[0]
        self._nl = 0  # LFs consumed
        self._mid = False  # the start of the current line was consumed already
        self._mid_cr = False  # ... and its last consumed octet was CR
        self._mid_len = 0  # ... and how many octets of it were consumed
        self._prev_eol = 0  # terminator length of the last complete line
        self._prev_empty = False  # that line had no content
        self._state = _HEADER
        self._header = bytearray()
        self._scan = True
        # Delimiters of open multiparts -> their indexes in _open (innermost last), so a line
        # is looked up once however deep the nesting.
        self._delims: dict[bytes, list[int]] = {}
        self._parts = 1
        self._budget = MAX_STORED_CHARS
        self._truncated = False
        self._root = Part(0)
        self._search = SearchFields()
        self._open = [_Frame(self._root, 0, True, False)]
        self._result: MessageStructure | None = None

    @property
    def buffered(self) -> int:
        """Octets held between calls: the unfinished line and the kept header."""
        return len(self._buf) + len(self._header)

    def feed(self, data: bytes) -> None:
        if self._result is not None or not data:
            return
        self._buf += data
        self._run(final=False)

    def finish(self) -> MessageStructure:
        if self._result is None:
            self._run(final=True)
            total = self._off
            while self._state == _HEADER:
                self._end_header(total)
            ends_lf = not self._mid and self._prev_eol > 0
            for frame in reversed(self._open):
                part = frame.part
                part.body_end = total
                part.lines = self._nl - frame.nl_body + (
                    1 if total > part.body_start and not ends_lf else 0)
            self._open.clear()
            self._result = MessageStructure(self._root, self._search, total, self._truncated)
        return self._result

    # -- line scanning ------------------------------------------------------------------

    def _run(self, final: bool) -> None:
        buf, pos, n = self._buf, 0, len(self._buf)
        while pos < n:
            if self._mid:
                e = buf.find(b"\n", pos)
                end = n if e < 0 else e + 1
                self._continue_line(buf, pos, end, e >= 0)
                pos = end
                continue
            if self._state == _BODY and not (self._scan and self._delims):
                last = buf.rfind(b"\n", pos)
                if last >= 0:
                    self._plain(buf, pos, last + 1)
                    pos = last + 1
                if pos < n:
                    self._start_line(buf, pos, n)
                    pos = n
                continue
            if self._state == _BODY and buf[pos:pos + 2] != b"--":
                k = buf.find(b"\n--", pos)
                if k >= 0:
                    self._plain(buf, pos, k + 1)
                    pos = k + 1
                    continue
                last = buf.rfind(b"\n", pos)
                if last >= 0:
                    self._plain(buf, pos, last + 1)
                    pos = last + 1
                tail = buf[pos:n]
                if pos < n and (final or not b"--".startswith(tail[:2])
                                or len(tail) > MAX_BOUNDARY_LINE):
                    if final:
                        self._line(buf, pos, n, 0)
                    else:
                        self._start_line(buf, pos, n)
                    pos = n
                break
            e = buf.find(b"\n", pos)
            if e >= 0:
                self._line(buf, pos, e + 1, 2 if e > pos and buf[e - 1] == 13 else 1)
                pos = e + 1
            elif final:
                self._line(buf, pos, n, 0)
                pos = n
            elif n - pos > (MAX_BOUNDARY_LINE if self._state == _BODY else MAX_HEADER_KEEP):
                self._start_line(buf, pos, n)
                pos = n
            else:
                break
        del buf[:pos]
        self._off += pos

    def _plain(self, buf: bytearray, a: int, b: int) -> None:
        """Complete body lines [a, b) that are no delimiter."""
        self._nl += buf.count(b"\n", a, b)
        start = max(a, buf.rfind(b"\n", a, b - 1) + 1)
        cr = b - 1 > start and buf[b - 2] == 13
        self._prev_eol = 2 if cr else 1
        self._prev_empty = b - 1 - start - cr == 0

    def _start_line(self, buf: bytearray, a: int, b: int) -> None:
        """The start of a line too long to wait for its end (no delimiter, never blank)."""
        self._mid = True
        self._mid_cr = buf[b - 1] == 13
        self._mid_len = b - a
        if self._state == _HEADER:
            self._keep_header(buf, a, b)

    def _continue_line(self, buf: bytearray, a: int, b: int, complete: bool) -> None:
        if self._state == _HEADER:
            self._keep_header(buf, a, b)
        self._mid_len += b - a
        if not complete:
            self._mid_cr = buf[b - 1] == 13
            return
        self._nl += 1
        self._mid = False
        self._prev_eol = 2 if (b - a >= 2 and buf[b - 2] == 13) or (
            b - a == 1 and self._mid_cr) else 1
        self._prev_empty = self._mid_len == self._prev_eol

    def _keep_header(self, buf: bytearray, a: int, b: int) -> None:
        room = MAX_HEADER_KEEP - len(self._header)
        if room < b - a:
            self._truncated = True
        if room > 0:
            self._header += buf[a:min(b, a + room)]

    def _line(self, buf: bytearray, a: int, b: int, eol: int) -> None:
        """One whole line [a, b), `eol` octets of it its terminator (0: the final line)."""
        content = bytes(buf[a:b - eol])
        delimiter = bool(self._scan and self._delims and content.startswith(b"--")
                         and self._delimiter(content, self._off + a, self._off + b))
        if not delimiter and self._state == _HEADER:
            if eol and not content:
                self._nl += 1
                self._end_header(self._off + b)
                self._prev_eol, self._prev_empty = eol, True
                return
            self._keep_header(buf, a, b)
        if eol:
            self._nl += 1
        self._prev_eol, self._prev_empty = eol, not content

    # -- structure ----------------------------------------------------------------------

    def _delimiter(self, content: bytes, start: int, after: int) -> bool:
        """Act on a delimiter line at [start, after); False if it is no delimiter."""
        line = content.rstrip(b" \t")
        opening = self._delims.get(line)
        closing = self._delims.get(line[:-2]) if line.endswith(b"--") else None
        if opening is None and closing is None:
            return False
        if closing is not None and (opening is None or closing[-1] > opening[-1]):
            idx = closing[-1]
            self._close_below(idx, start)
            self._forget(self._open[idx])
            self._state = _BODY
            return True
        assert opening is not None
        if self._parts >= MAX_PARTS:
            self._scan = False
            self._truncated = True
            return False
        idx = opening[-1]
        self._close_below(idx, start)
        frame = self._open[idx]
        self._parts += 1
        child = Part(after)
        frame.part.children.append(child)
        self._open.append(_Frame(child, frame.depth + 1, False,
                                 frame.part.content.subtype == "digest"))
        self._state = _HEADER
        self._header.clear()
        return True

    def _forget(self, frame: _Frame) -> None:
        """The frame's multipart is closed: its delimiter is no longer recognised."""
        if frame.delimiter is None:
            return
        stack = self._delims[frame.delimiter]
        stack.pop()
        if not stack:
            del self._delims[frame.delimiter]
        frame.delimiter = None

    def _close_below(self, idx: int, start: int) -> None:
        """End every part nested deeper than frame idx at a delimiter line starting at start."""
        while len(self._open) > idx + 1:
            frame = self._open.pop()
            part = frame.part
            self._forget(frame)
            if part.body_start < 0:
                self._parse_header(frame)
                part.body_start = max(part.header_start, start - self._prev_eol)
                frame.nl_body = self._nl
                self._state = _BODY
            end = max(part.body_start, start - self._prev_eol)
            part.body_end = end
            if end > part.body_start:
                part.lines = (self._nl - (1 if self._prev_eol else 0) - frame.nl_body
                              + (0 if self._prev_empty else 1))
            else:
                part.lines = 0
        self._state = _BODY

    def _parse_header(self, frame: _Frame) -> None:
        fields = split_fields(bytes(self._header))
        self._header.clear()
        content = first_values(fields, CONTENT_FIELDS, MAX_CONTENT_VALUE_CHARS)
        envelope = first_values(fields, ENVELOPE_FIELDS, MAX_ENVELOPE_VALUE_CHARS) \
            if frame.is_message else {}
        cost = sum(map(len, content.values())) + sum(map(len, envelope.values()))
        if cost > self._budget:
            self._truncated = True
            keep = ("content-type", "content-transfer-encoding")
            content = {k: v[:MAX_BOUNDARY + 64] for k, v in content.items() if k in keep}
            envelope = {}
        self._budget -= min(cost, self._budget)
        frame.part.content = content_info(content, frame.in_digest)
        if frame.is_message:
            frame.part.envelope = build_envelope(envelope)
            if frame.part is self._root:
                self._search = build_search_fields(envelope)

    def _end_header(self, body_start: int) -> None:
        frame = self._open[-1]
        part = frame.part
        self._parse_header(frame)
        part.body_start = body_start
        frame.nl_body = self._nl
        self._state = _BODY
        info = part.content
        if info.type == "multipart":
            boundary = info.param("boundary")
            if not boundary or len(boundary) > MAX_BOUNDARY or not self._scan:
                return
            if frame.depth >= MAX_DEPTH:
                self._truncated = True
                return
            frame.delimiter = b"--" + boundary.encode("utf-8", errors="replace")
            self._delims.setdefault(frame.delimiter, []).append(len(self._open) - 1)
        elif info.type == "message" and info.subtype in ENCAPSULATING \
                and info.encoding in IDENTITY_ENCODINGS:
            if frame.depth >= MAX_DEPTH or self._parts >= MAX_PARTS:
                self._truncated = True
                return
            self._parts += 1
            part.message = Part(body_start)
            self._open.append(_Frame(part.message, frame.depth + 1, True, False))
            self._state = _HEADER


def parse_message(data: bytes) -> MessageStructure:
    parser = StructureParser()
    parser.feed(data)
    return parser.finish()


def find_part(root: Part, path: Sequence[int]) -> Part | None:
    """The part a section number names (RFC 9051 §6.4.5), or None if there is none.

    Numbers inside a message/rfc822 part count the parts of the encapsulated message; a
    message that is not multipart has one part, number 1, its body.
    """
    current = root
    for depth, number in enumerate(path):
        if depth and current.message is not None:
            current = current.message
        if current.is_multipart:
            if not 1 <= number <= len(current.children):
                return None
            current = current.children[number - 1]
        elif number != 1 or current.envelope is None:
            return None
    return current


def section_range(root: Part, path: Sequence[int], text: str = "") -> tuple[int, int] | None:
    """Octet range [start, end) of BODY[path.text]; text is "", HEADER, TEXT or MIME.

    HEADER.FIELDS and HEADER.FIELDS.NOT select lines from the HEADER range. None when the
    section does not exist (the server returns an empty string then, RFC 9051 §6.4.5).
    """
    text = text.upper()
    if not path:
        if text == "":
            return root.header_start, root.body_end
        if text == "HEADER":
            return root.header_start, root.body_start
        if text == "TEXT":
            return root.body_start, root.body_end
        return None
    part = find_part(root, path)
    if part is None:
        return None
    if text == "":
        return part.body_start, part.body_end
    if text == "MIME":
        return part.header_start, part.body_start
    message = part.message
    if message is None:
        return None
    if text == "HEADER":
        return message.header_start, message.body_start
    if text == "TEXT":
        return message.body_start, message.body_end
    return None
