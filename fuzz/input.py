"""How a fuzz input (bytes) becomes a target's parameters: a few header bytes choose the
configuration and the cuts, the rest is the payload. Deterministic and total: any bytes are a
valid input, so every mutation libFuzzer makes is a test case."""

from __future__ import annotations

from collections.abc import Sequence


class FuzzInput:
    __slots__ = ("_at", "_data")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._at = 0

    def byte(self) -> int:
        """The next header byte (0 once the input is exhausted)."""
        if self._at >= len(self._data):
            return 0
        self._at += 1
        return self._data[self._at - 1]

    def choice(self, count: int) -> int:
        return self.byte() % count

    def flag(self) -> bool:
        return bool(self.byte() & 1)

    def sizes(self) -> list[int]:
        """1 to 4 piece sizes of 1 to 64 octets: how the transport cuts the stream."""
        return [1 + self.byte() % 64 for _ in range(1 + self.byte() % 4)]

    def rest(self) -> bytes:
        out = self._data[self._at :]
        self._at = len(self._data)
        return out


def expand(payload: bytes, words: Sequence[bytes]) -> bytes:
    """Token mode: an octet below len(words) stands for that word, any other for itself, so a
    few mutated octets make a whole session (EHLO, MAIL, DATA…) and reach the deep states."""
    count = len(words)
    return b"".join(words[b] if b < count else bytes((b,)) for b in payload)


def header(*values: int) -> bytes:
    """Seed helper: the header bytes for the given choices, in order."""
    return bytes(values)
