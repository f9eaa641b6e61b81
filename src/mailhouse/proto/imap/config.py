"""The IMAP command parser's limits. Every one has a test that crosses it
(tests/proto/imap/test_limits.py); the defaults and why are in docs/decisions.md."""

from __future__ import annotations

from dataclasses import dataclass

# LITERAL- (RFC 7888 §5): a non-synchronising literal is at most this many octets.
LITERAL_MINUS_MAX = 4096


@dataclass(frozen=True, slots=True)
class ParserConfig:
    # Octets of command text, literals excluded, summed over the lines of one command (Dovecot's
    # imap_max_line_length is 64 KiB).
    max_line_length: int = 65_536
    # Octets of all the literals of one command other than APPEND messages (a LOGIN password, a
    # SEARCH string, a mailbox name sent as a literal).
    max_literal_size: int = 65_536
    # One APPEND message; the server passes the SMTP max_message_size here (APPENDLIMIT).
    max_append_size: int = 52_428_800
    # Nesting of search keys: parentheses, NOT and OR together (the only recursive part of the
    # command grammar; every other list is flat).
    max_depth: int = 64
    # Comma-separated items of one sequence set.
    max_sequence_items: int = 10_000
    # True: LITERAL+ (a non-synchronising literal is bound only by the limits above);
    # False: LITERAL- (at most LITERAL_MINUS_MAX octets, RFC 7888 §5).
    literal_plus: bool = True
    # The hierarchy delimiter that mailbox-name validation splits on.
    delimiter: str = "/"

    def __post_init__(self) -> None:
        for name in ("max_line_length", "max_literal_size", "max_append_size", "max_depth",
                     "max_sequence_items"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive")
        if len(self.delimiter) != 1 or not " " < self.delimiter < "\x7f":
            raise ValueError("the delimiter is one printable ASCII character")
