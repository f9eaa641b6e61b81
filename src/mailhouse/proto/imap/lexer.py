"""Tokens of an IMAP command (RFC 9051 §9): a reader over the command's lines and literals.

A command reaches the grammar whole, as alternating parts: text (one line without its CRLF and
without the literal header that ended it), a literal, text, ... . Strings come from a quoted
string or from the literal that follows the text; everything else is read from the text with
anchored regular expressions, so each octet is looked at a constant number of times.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


class ParseError(Exception):
    """The command does not match the grammar (tagged BAD). `code` is a response code."""

    def __init__(self, text: str, code: str | None = None) -> None:
        super().__init__(text)
        self.text = text
        self.code = code


class PolicyError(Exception):
    """The command is well formed but names something the server refuses (tagged NO)."""

    def __init__(self, text: str, code: str | None = None) -> None:
        super().__init__(text)
        self.text = text
        self.code = code


@dataclass(frozen=True, slots=True)
class Literal:
    """A literal kept in memory. `binary`: literal8 (~{n}, RFC 3516), which may hold NUL."""

    data: bytes
    binary: bool = False


@dataclass(frozen=True, slots=True)
class MessageRef:
    """Where an APPEND message literal stood; its octets went out as AppendData events."""

    index: int
    size: int
    binary: bool


class _Pending:
    """Marks a literal announced but not read yet (the APPEND prefix check)."""


PENDING = _Pending()
Part = bytes | Literal | MessageRef | _Pending

# RFC 9051 §9: atom-specials are ( ) { SP CTL % * " \ ]; 8-bit octets are not atom characters.
_ATOM = re.compile(rb'[^(){ \x00-\x1f\x7f-\xff%*"\\\]]+')
_ASTRING_ATOM = re.compile(rb'[^(){ \x00-\x1f\x7f-\xff%*"\\]+')  # resp-specials "]" allowed
_LIST_ATOM = re.compile(rb'[^(){ \x00-\x1f\x7f-\xff"\\]+')  # list-wildcards "%" "*" allowed
_TAG = re.compile(rb'[^(){ \x00-\x1f\x7f-\xff%*"\\+]+')
# QUOTED-CHAR: any TEXT-CHAR but quoted-specials, or "\" quoted-special; 8-bit allowed
# (UTF8-2..4 in rev2; checked by whoever decodes the value).
_QUOTED = re.compile(rb'"((?:[^"\\\r\n\x00]|\\["\\])*)"')
_NUMBER = re.compile(rb"[0-9]+")
_UNESCAPE = re.compile(rb'\\(["\\])')

MAX_NUMBER = 4_294_967_295  # number (RFC 9051 §9)
MAX_NUMBER64 = 9_223_372_036_854_775_807  # number64, mod-sequence-value (RFC 9051, RFC 7162)


class Reader:
    """A cursor over a command's parts. Every method consumes what it returns or raises
    ParseError having consumed nothing useful (the whole command is refused then)."""

    __slots__ = ("_index", "_parts", "_pos", "_text")

    def __init__(self, parts: list[Part]) -> None:
        self._parts = parts
        self._index = 0
        text = parts[0]
        assert isinstance(text, bytes)
        self._text = text
        self._pos = 0

    # -- position -------------------------------------------------------------------------

    def at_end(self) -> bool:
        """The end of the command (no more text and no literal follows)."""
        return self._pos == len(self._text) and self._index == len(self._parts) - 1

    def at_literal(self) -> bool:
        return self._pos == len(self._text) and self._index + 1 < len(self._parts)

    def at_pending(self) -> bool:
        return self.at_literal() and self._parts[self._index + 1] is PENDING

    def rest(self) -> bytes:
        """The unread text of the current line part."""
        return self._text[self._pos :]

    def peek(self) -> int:
        """The next text octet, or -1 at the end of a text part."""
        return self._text[self._pos] if self._pos < len(self._text) else -1

    def peek_ci(self, word: bytes) -> bool:
        """Whether the text continues with `word` (ASCII, case-insensitively)."""
        end = self._pos + len(word)
        return self._text[self._pos : end].upper() == word

    def skip(self, octets: bytes) -> bool:
        """Consume `octets` (ASCII case-insensitively) when they come next."""
        if self.peek_ci(octets.upper()):
            self._pos += len(octets)
            return True
        return False

    def expect(self, octets: bytes, what: str | None = None) -> None:
        if not self.skip(octets):
            raise ParseError(f"Expected {what or octets.decode()!r}")

    def sp(self) -> None:
        self.expect(b" ", "SP")

    def end(self) -> None:
        if not self.at_end():
            raise ParseError("Unexpected extra arguments")

    # -- literals ---------------------------------------------------------------------------

    def literal(self) -> Literal | MessageRef:
        if not self.at_literal() or self.at_pending():
            raise ParseError("Expected a literal")
        self._index += 1
        part = self._parts[self._index]
        assert isinstance(part, Literal | MessageRef)
        self._index += 1
        text = self._parts[self._index]
        assert isinstance(text, bytes)
        self._text, self._pos = text, 0
        return part

    # -- tokens -----------------------------------------------------------------------------

    def match(self, pattern: re.Pattern[bytes], what: str) -> bytes:
        m = pattern.match(self._text, self._pos)
        if not m:
            raise ParseError(f"Expected {what}")
        self._pos = m.end()
        return m.group()

    def atom(self, what: str = "an atom") -> bytes:
        return self.match(_ATOM, what)

    def tag(self) -> bytes:
        return self.match(_TAG, "a tag")

    def word(self) -> str:
        """An atom, upper-cased, for keywords (command names, search keys, options)."""
        return self.atom("a keyword").decode("ascii").upper()

    def number(self, *, nonzero: bool = False, wide: bool = False) -> int:
        digits = self.match(_NUMBER, "a number")
        limit = MAX_NUMBER64 if wide else MAX_NUMBER
        if len(digits) > 20 or int(digits) > limit:
            raise ParseError("Number out of range")
        value = int(digits)
        if nonzero and value == 0:
            raise ParseError("Expected a non-zero number")
        return value

    def quoted(self) -> bytes:
        m = _QUOTED.match(self._text, self._pos)
        if not m:
            raise ParseError("Bad quoted string")
        self._pos = m.end()
        return _UNESCAPE.sub(rb"\1", m.group(1))

    def string(self) -> bytes:
        if self.peek() == 0x22:
            return self.quoted()
        if self.at_literal():
            part = self.literal()
            if not isinstance(part, Literal):
                raise ParseError("Expected a string")
            if not part.binary and b"\x00" in part.data:
                raise ParseError("NUL in a literal")  # RFC 9051 §4.3: only literal8 has NUL
            return part.data
        raise ParseError("Expected a string")

    def astring(self) -> bytes:
        if self.peek() == 0x22 or self.at_literal():
            return self.string()
        return self.match(_ASTRING_ATOM, "an astring")

    def nstring(self) -> bytes | None:
        m = _ASTRING_ATOM.match(self._text, self._pos)
        if m and m.group().upper() == b"NIL":
            self._pos = m.end()
            return None
        return self.string()

    def list_mailbox(self) -> bytes:
        """list-mailbox: an atom that may hold "%", "*" and "]", or a string."""
        if self.peek() == 0x22 or self.at_literal():
            return self.string()
        return self.match(_LIST_ATOM, "a mailbox pattern")
