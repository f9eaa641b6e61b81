"""Moving a user's mail in and out as files: Maildir++ export, Maildir++ and mbox import.

Formats, and where we follow whom:
- Maildir (maildir(5), D. J. Bernstein's spec) with Courier/Dovecot's Maildir++ folders: INBOX is
  the root (cur/ new/ tmp/), every other mailbox a `.Name` directory beside them, hierarchy
  levels joined by "." (`Lists/Python` → `.Lists.Python`). Folder names are modified UTF-7
  (RFC 3501 §5.1.3), as Dovecot and Courier write them; a literal "." or "%" inside one level is
  written `%2E` / `%25`, so every mailbox name survives a round trip.
- Maildir files hold LF line endings (the Unix convention every MUA reading them expects); our
  store keeps the CRLF wire form. Export turns CRLF into LF, import turns bare LF into CRLF, so
  export(import(file)) gives the file back byte for byte.
- Flags go in the info suffix `:2,` + letters in ASCII order (D Draft, F Flagged, P $Forwarded,
  R Answered, S Seen, T Deleted); keywords as letters a-z listed in Dovecot's `dovecot-keywords`
  file. The internal date is the file's mtime, as in Dovecot. Export puts every message in
  cur/: new/ means "no mail reader has seen this yet", which an export cannot know, and the
  flags already say whether it was read.
- mbox is read as mboxrd: every line starting "From " begins a message, one ">" is removed from
  lines matching `>+From ` (which also un-escapes mboxo), the blank line a writer puts between
  messages is dropped, and the From_ line's date becomes the internal date. Status/X-Status
  headers (mutt, Thunderbird, Dovecot) give the flags; the message bytes are kept untouched.

Safety: export file names come only from server data (internal date, pid, a counter, our host
name with '/', ':' and ',' escaped), never from message content, and files are created with
O_EXCL | O_NOFOLLOW in a directory we made. Import never follows symbolic links inside the
maildir, so a planted link cannot smuggle another file (say /etc/shadow) into a mailbox when an
operator imports a user's directory as root.
"""

from __future__ import annotations

import asyncio
import base64
import calendar
import contextlib
import email.utils
import os
import re
import stat
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Final

from mailhouse.errors import MailError
from mailhouse.model import Account
from mailhouse.store.base import (
    DeliveryTarget,
    MailboxInfo,
    MessageInfo,
    Outcome,
    Spool,
    Store,
)

INBOX: Final = "INBOX"
# IMAP hierarchy delimiter of mailbox names in the store.
MAILBOX_DELIMITER: Final = "/"
# Maildir++ joins hierarchy levels with "." and marks folders with a leading ".".
MAILDIRPP_SEPARATOR: Final = "."
MAILDIR_SUBDIRS: Final = ("tmp", "new", "cur")
INFO_PREFIX: Final = ":2,"
KEYWORDS_FILE: Final = "dovecot-keywords"
MAX_KEYWORD_LETTERS: Final = 26  # a-z
CHUNK: Final = 1 << 20

# maildir(5) info letters ↔ IMAP system flags (RFC 9051 §2.3.2); P is RFC 5550's $Forwarded.
FLAG_LETTERS: Final = {
    "D": "\\Draft",
    "F": "\\Flagged",
    "P": "$Forwarded",
    "R": "\\Answered",
    "S": "\\Seen",
    "T": "\\Deleted",
}
LETTER_OF_FLAG: Final = {flag: letter for letter, flag in FLAG_LETTERS.items()}
# mbox Status / X-Status header letters (as written by mutt, Thunderbird and Dovecot).
STATUS_LETTERS: Final = {"R": "\\Seen"}
X_STATUS_LETTERS: Final = {"A": "\\Answered", "F": "\\Flagged", "T": "\\Draft", "D": "\\Deleted"}


class MailFileError(Exception):
    """An import or export that cannot start (bad path, not a maildir …); the message says why."""


@dataclass(slots=True)
class TransferReport:
    """What an import or export did; `problems` lists each thing skipped and why."""

    mailboxes: int = 0
    messages: int = 0
    problems: list[str] = field(default_factory=list)


# --- names ------------------------------------------------------------------------------------

def encode_mutf7(text: str) -> str:
    """Modified UTF-7 of RFC 3501 §5.1.3: printable ASCII as itself ("&" as "&-"), everything
    else as UTF-16 in base64 with "," for "/" between "&" and "-"."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            raw = "".join(pending).encode("utf-16-be")
            encoded = base64.b64encode(raw).decode("ascii").rstrip("=").replace("/", ",")
            out.append(f"&{encoded}-")
            pending.clear()

    for char in text:
        if 0x20 <= ord(char) <= 0x7E:
            flush()
            out.append("&-" if char == "&" else char)
        else:
            pending.append(char)
    flush()
    return "".join(out)


def decode_mutf7(text: str) -> str:
    """Inverse of encode_mutf7; ValueError for anything that is not modified UTF-7."""
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char != "&":
            if not 0x20 <= ord(char) <= 0x7E:
                raise ValueError(f"character {char!r} not allowed in modified UTF-7")
            out.append(char)
            i += 1
            continue
        end = text.find("-", i + 1)
        if end < 0:
            raise ValueError("unterminated modified UTF-7 sequence")
        if end == i + 1:
            out.append("&")
        else:
            chunk = text[i + 1 : end].replace(",", "/")
            try:
                raw = base64.b64decode(chunk + "=" * (-len(chunk) % 4), validate=True)
                out.append(raw.decode("utf-16-be"))
            except (ValueError, UnicodeDecodeError):
                raise ValueError(f"bad modified UTF-7 sequence {text[i:end + 1]!r}") from None
        i = end + 1
    return "".join(out)


def maildir_folder_name(mailbox: str) -> str:
    """Store mailbox name → Maildir++ directory name (".Lists.Python"). Never empty, never
    holds "/", never "." or "..": safe as one path component."""
    if not mailbox:
        raise ValueError("empty mailbox name")
    levels = []
    for level in mailbox.split(MAILBOX_DELIMITER):
        encoded = encode_mutf7(level).replace("%", "%25").replace(".", "%2E")
        levels.append(encoded)
    return MAILDIRPP_SEPARATOR + MAILDIRPP_SEPARATOR.join(levels)


def mailbox_from_folder(dirname: str) -> str:
    """Maildir++ directory name → store mailbox name; ValueError when it is not a folder name."""
    if not dirname.startswith(MAILDIRPP_SEPARATOR) or dirname in (".", ".."):
        raise ValueError(f"{dirname!r} is not a Maildir++ folder")
    levels = []
    for level in dirname[1:].split(MAILDIRPP_SEPARATOR):
        unescaped = re.sub(r"%(2[Ee5])", lambda m: "." if m.group(1) in "2E2e" else "%", level)
        levels.append(decode_mutf7(unescaped))
    return MAILBOX_DELIMITER.join(levels)


def _escape_host(hostname: str) -> str:
    # maildir(5): '/' and ':' in the host part as octal escapes; ',' separates Dovecot's fields.
    return hostname.replace("/", "\\057").replace(":", "\\072").replace(",", "\\054")


def info_for(flags: Iterable[str], keyword_letters: dict[str, str]) -> str:
    """Maildir info letters for a message's flags, in ASCII order as maildir(5) demands."""
    letters = {LETTER_OF_FLAG[f] for f in flags if f in LETTER_OF_FLAG}
    letters |= {keyword_letters[f] for f in flags if f in keyword_letters}
    return "".join(sorted(letters))


def flags_from_info(info: str, keywords: dict[str, str]) -> tuple[str, ...]:
    flags: list[str] = []
    for letter in info:
        if letter in FLAG_LETTERS:
            flags.append(FLAG_LETTERS[letter])
        elif letter in keywords:
            flags.append(keywords[letter])
    return tuple(dict.fromkeys(flags))


# --- line endings -----------------------------------------------------------------------------

class CrlfToLf:
    """Streaming CRLF → LF; a CR at a chunk's end waits for the next chunk."""

    def __init__(self) -> None:
        self._held = b""

    def feed(self, chunk: bytes) -> bytes:
        data = self._held + chunk
        self._held = b""
        if data.endswith(b"\r"):
            data, self._held = data[:-1], b"\r"
        return data.replace(b"\r\n", b"\n")

    def finish(self) -> bytes:
        held, self._held = self._held, b""
        return held


class LfToCrlf:
    """Streaming bare LF → CRLF (existing CRLF left alone): our store keeps the wire form."""

    _BARE_LF = re.compile(rb"(?<!\r)\n")

    def __init__(self) -> None:
        self._held = b""

    def feed(self, chunk: bytes) -> bytes:
        data = self._held + chunk
        self._held = b""
        if data.endswith(b"\r"):
            data, self._held = data[:-1], b"\r"
        return self._BARE_LF.sub(b"\r\n", data)

    def finish(self) -> bytes:
        held, self._held = self._held, b""
        return held


# --- export -----------------------------------------------------------------------------------

class _Namer:
    """Unique maildir file names from server data only: time, pid, counter, host name."""

    def __init__(self, hostname: str) -> None:
        self._host = _escape_host(hostname)
        self._pid = os.getpid()
        self._counter = 0

    def next(self, when: float, size: int, wire_size: int) -> str:
        self._counter += 1
        seconds = int(when)
        micros = int((when - seconds) * 1_000_000)
        return (f"{seconds}.M{micros:06d}P{self._pid}Q{self._counter}.{self._host}"
                f",S={size},W={wire_size}")

    def temporary(self) -> str:
        self._counter += 1
        return f"export.P{self._pid}Q{self._counter}.{self._host}"


async def export_maildir(store: Store, account: Account, dest: Path, *,
                         hostname: str) -> TransferReport:
    """Write every mailbox of `account` under `dest` as Maildir++.

    `dest` must not exist or be an empty directory: exporting on top of an older export would
    mix the two and duplicate messages on re-import."""
    _prepare_dest(dest)
    for sub in MAILDIR_SUBDIRS:  # the root is a valid maildir even for an account without INBOX
        (dest / sub).mkdir(mode=0o700)
    report = TransferReport()
    namer = _Namer(hostname)
    for mailbox in await store.list_mailboxes(account.id):
        if mailbox.name.upper() == INBOX:
            folder = dest
        else:
            try:
                folder = dest / maildir_folder_name(mailbox.name)
            except ValueError:
                report.problems.append(f"mailbox {mailbox.name!r}: name cannot be exported")
                continue
        try:
            await _export_mailbox(store, mailbox, folder, folder is not dest, namer, report)
        except OSError as exc:
            report.problems.append(f"mailbox {mailbox.name!r}: {exc.strerror or exc}")
            continue
        report.mailboxes += 1
    return report


def _prepare_dest(dest: Path) -> None:
    try:
        dest.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        if not dest.is_dir():
            raise MailFileError(f"{dest} exists and is not a directory") from None
        if any(dest.iterdir()):
            raise MailFileError(
                f"{dest} is not empty; export into a new or empty directory") from None
    except OSError as exc:
        raise MailFileError(f"cannot create {dest}: {exc.strerror or exc}") from None


async def _export_mailbox(store: Store, mailbox: MailboxInfo, folder: Path, is_folder: bool,
                          namer: _Namer, report: TransferReport) -> None:
    if is_folder:
        folder.mkdir(mode=0o700)
        # Maildir++: marks a folder so deliveries into it are not mistaken for a root maildir.
        (folder / "maildirfolder").touch(mode=0o600, exist_ok=False)
    for sub in MAILDIR_SUBDIRS:
        (folder / sub).mkdir(mode=0o700, exist_ok=not is_folder)
    messages = await store.list_messages(mailbox.id)
    keywords = sorted({f for m in messages for f in m.flags
                       if not f.startswith("\\") and f not in LETTER_OF_FLAG})
    if len(keywords) > MAX_KEYWORD_LETTERS:
        report.problems.append(
            f"mailbox {mailbox.name!r}: only {MAX_KEYWORD_LETTERS} keywords fit in maildir "
            f"names; dropped {', '.join(keywords[MAX_KEYWORD_LETTERS:])}")
        keywords = keywords[:MAX_KEYWORD_LETTERS]
    letters = {kw: chr(ord("a") + i) for i, kw in enumerate(keywords)}
    if keywords:
        text = "".join(f"{i} {kw}\n" for i, kw in enumerate(keywords))
        await asyncio.to_thread(_write_new_file, folder / KEYWORDS_FILE, text.encode("utf-8"))
    for message in messages:
        await _export_message(store, message, folder, namer, info_for(message.flags, letters))
        report.messages += 1
    await asyncio.to_thread(_fsync_dir, folder / "cur")


async def _export_message(store: Store, message: MessageInfo, folder: Path, namer: _Namer,
                          info: str) -> None:
    """tmp/ → fsync → link into cur/ (never replacing a file) → unlink tmp, as maildir(5)."""
    tmp_path = folder / "tmp" / namer.temporary()
    fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    size = 0
    try:
        convert = CrlfToLf()
        async for chunk in store.read_message(message):
            data = convert.feed(chunk)
            size += len(data)
            await asyncio.to_thread(_write_all, fd, data)
        tail = convert.finish()
        size += len(tail)
        await asyncio.to_thread(_write_all, fd, tail)
        await asyncio.to_thread(os.fsync, fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp_path)
        raise
    os.close(fd)
    os.utime(tmp_path, (message.internal_date, message.internal_date))
    while True:
        name = namer.next(message.internal_date, size, message.size) + INFO_PREFIX + info
        try:
            os.link(tmp_path, folder / "cur" / name)
            break
        except FileExistsError:
            continue
    os.unlink(tmp_path)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _write_new_file(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        _write_all(fd, data)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- import: common ---------------------------------------------------------------------------

async def _deliver(store: Store, spool: Spool, target: DeliveryTarget, what: str,
                   report: TransferReport) -> None:
    try:
        outcomes = await store.deliver(spool, [target])
    except MailError as exc:
        report.problems.append(f"{what}: not stored ({exc.reply.text})")
        return
    if outcomes and outcomes[0] is Outcome.DELIVERED:
        report.messages += 1
    elif outcomes and outcomes[0] is Outcome.TEMPORARY:
        # Import respects the quota (no grace: nobody else receives this copy); the operator
        # raises it with `mailhouse user quota` and imports again.
        report.problems.append(f"{what}: not stored, {target.mailbox!r} is over its account's "
                               "quota")
    else:
        outcome = outcomes[0].value if outcomes else "no outcome"
        report.problems.append(f"{what}: not stored in mailbox {target.mailbox!r} ({outcome})")


async def _read_chunks(stream: BinaryIO) -> AsyncIterator[bytes]:
    while True:
        chunk = await asyncio.to_thread(stream.read, CHUNK)
        if not chunk:
            return
        yield chunk


# --- import: maildir --------------------------------------------------------------------------

async def import_maildir(store: Store, account: Account, source: Path) -> TransferReport:
    """Deliver every message of a Maildir++ tree into the account's mailboxes of the same
    names. Running it twice imports the messages twice."""
    if not source.is_dir():
        raise MailFileError(f"{source} is not a directory")
    folders: list[tuple[str, Path]] = []
    if _has_maildir_subdirs(source):
        folders.append((INBOX, source))
    report = TransferReport()
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
            report.problems.append(f"folder {entry!r} skipped: {exc}")
    if not folders:
        raise MailFileError(f"{source} is not a maildir (no cur/ or new/ directory)")
    existing = await _mailbox_names(store, account)
    for name, path in folders:
        mailbox = _canonical_mailbox(name)
        if mailbox not in existing:
            report.problems.append(f"folder {path.name!r}: {_missing_mailbox(mailbox)}")
            continue
        await _import_folder(store, account, mailbox, path, report)
        report.mailboxes += 1
    return report


async def _mailbox_names(store: Store, account: Account) -> set[str]:
    return {_canonical_mailbox(m.name) for m in await store.list_mailboxes(account.id)}


def _canonical_mailbox(name: str) -> str:
    return INBOX if name.upper() == INBOX else name  # RFC 9051 §5.1: only INBOX ignores case


def _missing_mailbox(mailbox: str) -> str:
    # The Store interface cannot create mailboxes yet (IMAP CREATE will bring that); checking
    # up front gives one clear line per folder instead of one failure per message.
    return (f"mailbox {mailbox!r} does not exist and cannot be created from the command line "
            "yet; its messages were not imported")


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


async def _import_folder(store: Store, account: Account, mailbox: str, folder: Path,
                         report: TransferReport) -> None:
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
                report.problems.append(f"{path}: skipped, not a regular file")
                continue
            info = name.rpartition(INFO_PREFIX)[2] if INFO_PREFIX in name else ""
            entries.append((st.st_mtime, name, path, info))
    entries.sort()  # oldest first, so UIDs follow arrival order
    for mtime, _, path, info in entries:
        flags = flags_from_info(info, keywords)
        target = DeliveryTarget(account.id, mailbox, flags, mtime)
        await _import_file(store, path, target, report)


async def _import_file(store: Store, path: Path, target: DeliveryTarget,
                       report: TransferReport) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        report.problems.append(f"{path}: skipped, {exc.strerror or exc}")
        return
    with os.fdopen(fd, "rb") as stream:
        if not stat.S_ISREG(os.fstat(stream.fileno()).st_mode):
            report.problems.append(f"{path}: skipped, not a regular file")
            return
        spool = store.new_spool()
        convert = LfToCrlf()
        try:
            async for chunk in _read_chunks(stream):
                await spool.write(convert.feed(chunk))
            await spool.write(convert.finish())
        except BaseException:
            await spool.abort()
            raise
    if spool.size == 0:
        await spool.abort()
        report.problems.append(f"{path}: skipped, empty file")
        return
    await _deliver(store, spool, target, str(path), report)


# --- import: mbox -----------------------------------------------------------------------------

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
    """One message being read from an mbox: its spool, date and the flags its headers give."""

    def __init__(self, spool: Spool, from_line: bytes, number: int) -> None:
        self.spool = spool
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


async def import_mbox(store: Store, account: Account, source: Path, *,
                      mailbox: str = INBOX) -> TransferReport:
    """Deliver every message of an mboxrd/mboxo file into one mailbox."""
    try:
        stream = source.open("rb")
    except OSError as exc:
        raise MailFileError(f"cannot open {source}: {exc.strerror or exc}") from None
    report = TransferReport(mailboxes=1)
    mailbox = _canonical_mailbox(mailbox)
    with stream:
        if mailbox not in await _mailbox_names(store, account):
            raise MailFileError(_missing_mailbox(mailbox))
        if not stat.S_ISREG(os.fstat(stream.fileno()).st_mode):
            raise MailFileError(f"{source} is not a regular file")
        current: _MboxMessage | None = None
        count = 0
        try:
            async for line in _lines(stream):
                if line.startswith(b"From "):
                    if current is not None:
                        finished, current = current, None
                        await _finish_mbox_message(store, account, mailbox, finished, source,
                                                   report)
                    count += 1
                    current = _MboxMessage(store.new_spool(), line, count)
                    continue
                if current is None:
                    if line.strip():
                        raise MailFileError(
                            f"{source} is not an mbox file (it must start with a 'From ' line)")
                    continue
                await _mbox_line(current, line)
            if current is not None:
                finished, current = current, None
                await _finish_mbox_message(store, account, mailbox, finished, source, report)
        except BaseException:
            if current is not None:
                await current.spool.abort()
            raise
    return report


async def _mbox_line(message: _MboxMessage, line: bytes) -> None:
    if message.blank_pending:
        # The blank line held back was not the separator before the next From_: it is content.
        await message.spool.write(message.convert.feed(b"\n"))
        message.blank_pending = False
    if line in (b"\n", b"\r\n"):
        message.in_headers = False
        message.blank_pending = True
        return
    if message.in_headers:
        message.header_line(line)
    if _ESCAPED_FROM.match(line):
        line = line[1:]
    await message.spool.write(message.convert.feed(line))


async def _finish_mbox_message(store: Store, account: Account, mailbox: str,
                               message: _MboxMessage, source: Path,
                               report: TransferReport) -> None:
    await message.spool.write(message.convert.finish())
    what = f"{source} message {message.number}"
    if message.spool.size == 0:
        await message.spool.abort()
        report.problems.append(f"{what}: skipped, empty")
        return
    target = DeliveryTarget(account.id, mailbox, tuple(message.flags), message.internal_date())
    await _deliver(store, message.spool, target, what, report)


async def _lines(stream: BinaryIO) -> AsyncIterator[bytes]:
    """Lines with their LF; the last one may lack it."""
    rest = b""
    async for chunk in _read_chunks(stream):
        data = rest + chunk
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            yield data[start : end + 1]
            start = end + 1
        rest = data[start:]
    if rest:
        yield rest

