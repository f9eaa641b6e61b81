"""Sequence sets (RFC 9051 §9 sequence-set, RFC 5182 "$")."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

STAR = 0
"""Stands for "*" (the largest number in use) in a range bound: nz-number never is 0."""


@dataclass(frozen=True, slots=True)
class SequenceSet:
    """A sequence set as the client wrote it: ranges with bounds in either order, `STAR` for
    "*", or `saved` for "$" (the result of the last SEARCH ... RETURN (SAVE), RFC 5182), which
    only the session can resolve."""

    ranges: tuple[tuple[int, int], ...] = ()
    saved: bool = False

    def resolve(self, maximum: int) -> list[tuple[int, int]]:
        """Sorted, merged, non-empty (low, high) ranges against the current maximum. Numbers
        above `maximum` are dropped ("*" is `maximum`; an empty mailbox gives nothing)."""
        if self.saved:
            raise ValueError("$ is resolved by the session, not by the set")
        spans = []
        for a, b in self.ranges:
            lo, hi = sorted((maximum if a == STAR else a, maximum if b == STAR else b))
            hi = min(hi, maximum)
            if lo <= hi and lo >= 1:
                spans.append((lo, hi))
        spans.sort()
        merged: list[tuple[int, int]] = []
        for lo, hi in spans:
            if merged and lo <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
            else:
                merged.append((lo, hi))
        return merged

    def contains(self, number: int, maximum: int) -> bool:
        return any(lo <= number <= hi for lo, hi in self.resolve(maximum))

    def iter(self, maximum: int) -> Iterator[int]:
        """Every member once, ascending (lazily: 1:4294967295 costs nothing until iterated)."""
        for lo, hi in self.resolve(maximum):
            yield from range(lo, hi + 1)

    def __str__(self) -> str:
        if self.saved:
            return "$"
        return ",".join(
            _bound(a) if a == b else f"{_bound(a)}:{_bound(b)}" for a, b in self.ranges
        )


def _bound(n: int) -> str:
    return "*" if n == STAR else str(n)
