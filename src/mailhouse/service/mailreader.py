"""The file side of an import (service/mailfiles.py): reading a Maildir++ tree or an mbox
file into records, with the rights of whoever runs it (root, for `mailhouse import` as root:
cli_transfer.py). Message content is only split into messages and lines, never interpreted
beyond the mbox Status/X-Status/Date headers. Symbolic links inside a maildir are never
followed."""

from __future__ import annotations

import calendar
import contextlib
import email.utils
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Final

from mailhouse.service.maildir_names import (
    CHUNK,
    INBOX,
    INFO_PREFIX,
    KEYWORDS_FILE,
    MAX_KEYWORD_LETTERS,
    STATUS_LETTERS,
    X_STATUS_LETTERS,
    LfToCrlf,
    flags_from_info,
    mailbox_from_folder,
)
from mailhouse.service.mailrecords import (
    Data,
    Folder,
    ImportEnd,
    ImportMessage,
    ImportRecord,
    MailFileError,
    Problem,
    canonical_mailbox,
    missing_mailbox,
)

# mbox lines are gathered into records of about this size rather than one record per line.
MBOX_BATCH: Final = 64 * 1024


# --- import: file side, maildir -----------------------------------------------------------------

def read_maildir(source: Path, existing: set[str]) -> Iterator[ImportRecord]:
    """Records for every message of a Maildir++ tree; `existing` are the account's mailboxes
    (a folder without one is reported and not read). MailFileError when it cannot start."""
    if not source.is_dir():
        raise MailFileError(f"{source} is not a directory")
    folders: list[tuple[str, Path]] = []
    if _has_maildir_subdirs(source):
        folders.append((INBOX, source))
    problems: list[str] = []
    for entry in sorted(os.listdir(source)):
        path = source / entry
        if not entry.startswith(".") or entry in (".", ".."):
            continue
        if not stat.S_ISDIR(path.lstat().st_mode):
            continue  # symbolic links and stray files are not folders
        if not _has_maildir_subdirs(path):
            continue
        try:
            folders.append((mailbox_from_folder(entry), path))
        except ValueError as exc:
            problems.append(f"folder {entry!r} skipped: {exc}")
    if not folders:
        raise MailFileError(f"{source} is not a maildir (no cur/ or new/ directory)")
    for problem in problems:
        yield Problem(problem)
    for name, path in folders:
        mailbox = canonical_mailbox(name)
        if mailbox not in existing:
            yield Problem(f"folder {path.name!r}: {missing_mailbox(mailbox)}")
            continue
        yield Folder(mailbox)
        yield from _read_folder(path)



def _has_maildir_subdirs(path: Path) -> bool:
    for sub in ("cur", "new"):
        with contextlib.suppress(OSError):
            if stat.S_ISDIR((path / sub).lstat().st_mode):
                return True
    return False


def _read_keywords(folder: Path) -> dict[str, str]:
    """Dovecot's `dovecot-keywords`: lines "<index> <keyword>", index 0 is letter a."""
    try:
        fd = os.open(folder / KEYWORDS_FILE, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return {}
    with os.fdopen(fd, "rb") as f:
        text = f.read(64 * 1024).decode("utf-8", "replace")
    keywords = {}
    for line in text.splitlines():
        index, _, keyword = line.partition(" ")
        if index.isdigit() and int(index) < MAX_KEYWORD_LETTERS and keyword.strip():
            keywords[chr(ord("a") + int(index))] = keyword.strip()
    return keywords


def _read_folder(folder: Path) -> Iterator[ImportRecord]:
    keywords = _read_keywords(folder)
    entries: list[tuple[float, str, Path, str]] = []
    for sub in ("new", "cur"):
        directory = folder / sub
        try:
            if not stat.S_ISDIR(directory.lstat().st_mode):
                continue
            names = os.listdir(directory)
        except OSError:
            continue
        for name in names:
            if name.startswith("."):
                continue
            path = directory / name
            try:
                st = path.lstat()
            except OSError:
                continue  # gone meanwhile (a running MUA moved it)
            if not stat.S_ISREG(st.st_mode):
                yield Problem(f"{path}: skipped, not a regular file")
                continue
            info = name.rpartition(INFO_PREFIX)[2] if INFO_PREFIX in name else ""
            entries.append((st.st_mtime, name, path, info))
    entries.sort()  # oldest first, so UIDs follow arrival order
    for mtime, _, path, info in entries:
        yield from _read_file(path, flags_from_info(info, keywords), mtime)


def _read_file(path: Path, flags: tuple[str, ...], mtime: float) -> Iterator[ImportRecord]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        yield Problem(f"{path}: skipped, {exc.strerror or exc}")
        return
    with os.fdopen(fd, "rb") as stream:
        if not stat.S_ISREG(os.fstat(stream.fileno()).st_mode):
            yield Problem(f"{path}: skipped, not a regular file")
            return
        yield ImportMessage(str(path))
        convert = LfToCrlf()
        while chunk := stream.read(CHUNK):
            yield Data(convert.feed(chunk))
        yield Data(convert.finish())
    yield ImportEnd(flags, mtime, "empty file")


# --- import: file side, mbox --------------------------------------------------------------------

_ESCAPED_FROM = re.compile(rb">+From ")
_FROM_LINE_DATE = re.compile(
    r"(?P<mon>[A-Z][a-z]{2})\s+(?P<day>\d{1,2})\s+(?P<h>\d{1,2}):(?P<m>\d{2})(?::(?P<s>\d{2}))?"
    r"\s+(?:(?P<tz>[A-Z]{3,4}|[+-]\d{4})\s+)?(?P<year>\d{4})(?:\s+(?P<tz2>[+-]\d{4}))?")
_MONTHS: Final = {name: i for i, name in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}


def from_line_date(line: bytes) -> float | None:
    """The time on an mbox From_ line ("From sender Thu Jan  1 00:00:00 2004"), taken as UTC
    unless the line carries a numeric zone: writers (Python's mailbox, Dovecot) use UTC."""
    match = _FROM_LINE_DATE.search(line.decode("ascii", "replace"))
    if match is None or match["mon"] not in _MONTHS:
        return None
    try:
        seconds = calendar.timegm((int(match["year"]), _MONTHS[match["mon"]], int(match["day"]),
                                   int(match["h"]), int(match["m"]), int(match["s"] or 0)))
    except (ValueError, OverflowError):
        return None
    zone = match["tz2"] or (match["tz"] if match["tz"] and match["tz"][0] in "+-" else None)
    if zone:
        offset = (int(zone[1:3]) * 60 + int(zone[3:5])) * 60
        seconds += -offset if zone[0] == "+" else offset
    return float(seconds)


class _MboxMessage:
    """One message being read from an mbox: its date and the flags its headers give."""

    def __init__(self, from_line: bytes, number: int) -> None:
        self.number = number
        self.date = from_line_date(from_line)
        self.date_header: str | None = None
        self.flags: dict[str, None] = {}
        self.in_headers = True
        self.blank_pending = False
        self.convert = LfToCrlf()

    def header_line(self, line: bytes) -> None:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        text = value.decode("ascii", "replace").strip()
        if name == b"status":
            for letter in text:
                if letter in STATUS_LETTERS:
                    self.flags[STATUS_LETTERS[letter]] = None
        elif name == b"x-status":
            for letter in text:
                if letter in X_STATUS_LETTERS:
                    self.flags[X_STATUS_LETTERS[letter]] = None
        elif name == b"date" and self.date_header is None:
            self.date_header = text

    def internal_date(self) -> float | None:
        if self.date is not None:
            return self.date
        if self.date_header:
            with contextlib.suppress(TypeError, ValueError, IndexError, OverflowError):
                return email.utils.parsedate_to_datetime(self.date_header).timestamp()
        return None


def read_mbox(source: Path, existing: set[str], *,
              mailbox: str = INBOX) -> Iterator[ImportRecord]:
    """Records for every message of an mboxrd/mboxo file, all into `mailbox`, which must be
    one of `existing`. MailFileError when it cannot start."""
    try:
        stream = source.open("rb")
    except OSError as exc:
        raise MailFileError(f"cannot open {source}: {exc.strerror or exc}") from None
    mailbox = canonical_mailbox(mailbox)
    with stream:
        if mailbox not in existing:
            raise MailFileError(missing_mailbox(mailbox))
        if not stat.S_ISREG(os.fstat(stream.fileno()).st_mode):
            raise MailFileError(f"{source} is not a regular file")
        yield Folder(mailbox)
        current: _MboxMessage | None = None
        count = 0
        batch = bytearray()
        for line in _lines(stream):
            if line.startswith(b"From "):
                if current is not None:
                    yield from _finish_mbox_message(current, batch, source)
                count += 1
                current = _MboxMessage(line, count)
                yield ImportMessage(f"{source} message {count}")
                continue
            if current is None:
                if line.strip():
                    raise MailFileError(
                        f"{source} is not an mbox file (it must start with a 'From ' line)")
                continue
            batch += _mbox_line(current, line)
            if len(batch) >= MBOX_BATCH:
                yield Data(bytes(batch))
                batch.clear()
        if current is not None:
            yield from _finish_mbox_message(current, batch, source)


def _mbox_line(message: _MboxMessage, line: bytes) -> bytes:
    out = b""
    if message.blank_pending:
        # The blank line held back was not the separator before the next From_: it is content.
        out = message.convert.feed(b"\n")
        message.blank_pending = False
    if line in (b"\n", b"\r\n"):
        message.in_headers = False
        message.blank_pending = True
        return out
    if message.in_headers:
        message.header_line(line)
    if _ESCAPED_FROM.match(line):
        line = line[1:]
    return out + message.convert.feed(line)


def _finish_mbox_message(message: _MboxMessage, batch: bytearray,
                         source: Path) -> Iterator[ImportRecord]:
    batch += message.convert.finish()
    if batch:
        yield Data(bytes(batch))
        batch.clear()
    yield ImportEnd(tuple(message.flags), message.internal_date(), "empty")


def _lines(stream: BinaryIO) -> Iterator[bytes]:
    """Lines with their LF; the last one may lack it."""
    rest = b""
    while chunk := stream.read(CHUNK):
        data = rest + chunk
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            yield data[start : end + 1]
            start = end + 1
        rest = data[start:]
    if rest:
        yield rest
