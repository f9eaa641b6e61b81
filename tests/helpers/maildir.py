"""Reading messages back from a Maildir, and splitting off the trace headers a server prepends.

mailhouse's contract: a stored message is ``Return-Path:`` + ``Received:`` (prepended by the
server) followed by the bytes exactly as the client sent them (after dot-unstuffing). Postfix's
virtual(8) writes ``Delivered-To:`` and ``Return-Path:`` the same way. `split_trace` recovers the
client's bytes so a test can compare them byte for byte; Maildir files may store lines with LF
instead of CRLF (mailhouse's export does), which `StoredMessage.content_crlf` undoes.
"""

from __future__ import annotations

import email
import email.policy
import re
from dataclasses import dataclass
from email.message import EmailMessage
from functools import cached_property
from pathlib import Path

# Header names a delivering server may prepend (RFC 5321 §4.4 trace fields, plus Delivered-To).
TRACE_HEADERS = (b"return-path", b"received", b"delivered-to")

_HEADER_NAME = re.compile(rb"([!-9;-~]+):")  # used with .match(data, pos)


@dataclass(frozen=True)
class StoredMessage:
    """One message file read from a Maildir."""

    path: Path
    data: bytes

    @cached_property
    def parsed(self) -> EmailMessage:
        """The message parsed with the stdlib (default policy: headers decoded)."""
        msg = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        return msg

    def header(self, name: str) -> str | None:
        value = self.parsed[name]
        return None if value is None else str(value)

    @property
    def trace(self) -> list[bytes]:
        """The leading trace header fields (each with its folded continuation lines)."""
        return split_trace(self.data)[0]

    @property
    def content(self) -> bytes:
        """Everything after the leading trace fields: what the client sent."""
        return split_trace(self.data)[1]

    @property
    def uses_lf(self) -> bool:
        """True if the file stores lines with bare LF (the usual Maildir convention)."""
        return b"\r\n" not in self.data and b"\n" in self.data

    @property
    def content_crlf(self) -> bytes:
        """`content` with the SMTP line ending restored when the file was written with LF.

        Maildir files conventionally end lines with LF (the exporter converts), so a byte-exact
        comparison with what went over the wire converts back; a CRLF file is left alone.
        """
        content = self.content
        return content.replace(b"\n", b"\r\n") if self.uses_lf else content


def split_trace(data: bytes) -> tuple[list[bytes], bytes]:
    """Split leading trace header fields (Return-Path, Received, Delivered-To) from the rest.

    A field runs from its name line through the continuation lines that start with SP or HTAB
    (RFC 5322 §2.2.3 folding). Works for CRLF and LF line endings alike.
    """
    fields: list[bytes] = []
    pos = 0
    while pos < len(data):
        match = _HEADER_NAME.match(data, pos)
        if match is None or match.group(1).lower() not in TRACE_HEADERS:
            break
        end = _field_end(data, pos)
        fields.append(data[pos:end])
        pos = end
    return fields, data[pos:]


def _field_end(data: bytes, start: int) -> int:
    """Index just past the header field starting at `start` (including folded lines)."""
    pos = start
    while True:
        newline = data.find(b"\n", pos)
        if newline < 0:
            return len(data)
        pos = newline + 1
        if pos >= len(data) or data[pos : pos + 1] not in (b" ", b"\t"):
            return pos


def maildir_files(maildir: Path) -> list[Path]:
    """Message files in maildir/new and maildir/cur (not tmp), sorted by name."""
    files: list[Path] = []
    for sub in ("new", "cur"):
        directory = maildir / sub
        if directory.is_dir():
            files.extend(p for p in directory.iterdir() if p.is_file())
    return sorted(files)


def count_maildir(maildir: Path) -> int:
    """Number of delivered messages (new + cur); cheap enough to poll."""
    total = 0
    for sub in ("new", "cur"):
        directory = maildir / sub
        if directory.is_dir():
            total += sum(1 for _ in directory.iterdir())
    return total


def read_maildir(maildir: Path) -> list[StoredMessage]:
    """Every message in maildir/new and maildir/cur."""
    return [StoredMessage(path=p, data=p.read_bytes()) for p in maildir_files(maildir)]
