"""Bytes received and not yet parsed, for the line-oriented protocol cores (SMTP, POP3).

Why a class of its own: the obvious `line, buf = buf[:n], buf[n:]` copies the whole rest of the
buffer for every command, so a client pipelining N commands in one write costs O(N * bytes):
100,000 NOOPs (600 KB) meant 30 GB of copying, and one such connection stalled every other
session on the event loop. Here the unparsed bytes are `_data[_pos:]`: taking a line moves an
offset and copies only the line, and the consumed prefix is dropped only once it is at least
half of the buffer (and at least `COMPACT_AT` octets), so every octet is moved at most a constant
number of times: O(total bytes), whatever the pipelining.

The search for the next LF is incremental too (`_scanned`): a line trickling in byte by byte is
scanned once, not once per arrival.
"""

from __future__ import annotations

# Below this many consumed octets the prefix is left in place: compacting small buffers often
# would cost more calls than it saves memory.
COMPACT_AT = 4096


class InputBuffer:
    """A FIFO of octets with line search. Offsets given to and returned by the methods are
    relative to the first unparsed octet."""

    __slots__ = ("_data", "_pos", "_scanned", "moved")

    def __init__(self) -> None:
        self._data = bytearray()
        self._pos = 0  # the first unparsed octet in _data
        self._scanned = 0  # no LF in _data[_pos:_scanned] (absolute index; may lag _pos)
        self.moved = 0  # octets moved by compactions: never more than those consumed (tested)

    def __len__(self) -> int:
        return len(self._data) - self._pos

    def __bool__(self) -> bool:
        return len(self._data) > self._pos

    def feed(self, data: bytes) -> None:
        """Append received octets (amortised O(len(data)): bytearray over-allocates)."""
        self._data += data

    def clear(self) -> None:
        """Forget everything unparsed (STARTTLS/STLS, close)."""
        self._data = bytearray()
        self._pos = self._scanned = 0

    def find_lf(self) -> int:
        """Offset of the first LF, or -1. Octets already searched without success are not
        searched again."""
        data, pos = self._data, self._pos
        at = data.find(b"\n", max(pos, self._scanned))
        if at < 0:
            self._scanned = len(data)
            return -1
        return at - pos

    def has_lf(self) -> bool:
        return self.find_lf() >= 0

    def startswith(self, prefix: bytes) -> bool:
        return self._data.startswith(prefix, self._pos)

    def peek(self, size: int) -> bytes:
        """Up to `size` octets from the front, left in place."""
        return bytes(self._data[self._pos : self._pos + size])

    def window(self) -> tuple[bytearray, int]:
        """The storage and the offset of the first unparsed octet in it, for a parser that scans
        in place (DotReader). Valid until the next call that changes the buffer."""
        return self._data, self._pos

    def take(self, size: int) -> bytes:
        """Remove and return up to `size` octets from the front."""
        pos = self._pos
        out = bytes(self._data[pos : pos + size])
        self._advance(len(out))
        return out

    def skip(self, size: int) -> None:
        """Remove up to `size` octets from the front without copying them."""
        self._advance(min(size, len(self)))

    def _advance(self, size: int) -> None:
        self._pos += size
        data, pos = self._data, self._pos
        if pos == len(data):
            # Everything parsed: start afresh (keeps the common case, one write of whole
            # commands, free of any compaction).
            data.clear()
            self._pos = self._scanned = 0
        elif pos >= COMPACT_AT and pos * 2 >= len(data):
            # Moves len(data) - pos <= pos octets, all of them consumed since the last
            # compaction: the total moved never exceeds the total consumed.
            del data[:pos]
            self._scanned = max(0, self._scanned - pos)
            self._pos = 0
            self.moved += len(data)
