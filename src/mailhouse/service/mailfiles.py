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

Two sides: the store side (`export_records`, `store_records`, here) only talks to the Store
and yields or consumes message records (mailrecords.py); the file side (`MaildirWriter` here,
`read_maildir` and `read_mbox` in mailreader.py) only touches files. In one process they are
joined directly (`export_maildir`, `import_maildir`, `import_mbox`); run as root,
cli_transfer.py joins them over a socket so the files are handled with root's rights while the
store is opened only by the service user.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from mailhouse.errors import MailError
from mailhouse.model import Account
from mailhouse.service.maildir_names import (
    CHUNK,
    FLAG_LETTERS,
    INBOX,
    INFO_PREFIX,
    KEYWORDS_FILE,
    LETTER_OF_FLAG,
    MAILBOX_DELIMITER,
    MAILDIR_SUBDIRS,
    MAILDIRPP_SEPARATOR,
    MAX_KEYWORD_LETTERS,
    STATUS_LETTERS,
    X_STATUS_LETTERS,
    CrlfToLf,
    LfToCrlf,
    decode_mutf7,
    encode_mutf7,
    escape_host,
    flags_from_info,
    info_for,
    mailbox_from_folder,
    maildir_folder_name,
)
from mailhouse.service.mailreader import from_line_date, read_maildir, read_mbox
from mailhouse.service.mailrecords import (
    MAX_DATA_RECORD,
    Data,
    ExportMailbox,
    ExportMessage,
    ExportRecord,
    Folder,
    ImportEnd,
    ImportMessage,
    ImportRecord,
    MailFileError,
    MessageEnd,
    Problem,
    TransferReport,
    canonical_mailbox,
)
from mailhouse.store.base import DeliveryTarget, Outcome, Spool, Store
from mailhouse.store.blobs import sync_dir

# The whole of the transfer, for callers that need not know how it is split into modules.
__all__ = [
    "CHUNK", "FLAG_LETTERS", "INBOX", "INFO_PREFIX", "KEYWORDS_FILE", "LETTER_OF_FLAG",
    "MAILBOX_DELIMITER", "MAILDIRPP_SEPARATOR", "MAILDIR_SUBDIRS", "MAX_DATA_RECORD",
    "MAX_KEYWORD_LETTERS", "STATUS_LETTERS", "X_STATUS_LETTERS", "CrlfToLf", "Data",
    "ExportMailbox", "ExportMessage", "ExportRecord", "Folder", "ImportEnd", "ImportMessage",
    "ImportRecord", "LfToCrlf", "MailFileError", "MaildirWriter", "MessageEnd", "Problem",
    "TransferReport", "decode_mutf7", "encode_mutf7", "export_maildir", "export_records",
    "flags_from_info", "from_line_date", "import_maildir", "import_mbox", "info_for",
    "mailbox_from_folder", "mailbox_names", "maildir_folder_name", "read_maildir", "read_mbox",
    "store_records",
]


# --- export: store side -------------------------------------------------------------------------

async def export_records(store: Store, account: Account) -> AsyncIterator[ExportRecord]:
    """Every mailbox of `account` with its messages, as records for a MaildirWriter."""
    for mailbox in await store.list_mailboxes(account.id):
        messages = await store.list_messages(mailbox.id)
        keywords = sorted({f for m in messages for f in m.flags
                           if not f.startswith("\\") and f not in LETTER_OF_FLAG})
        yield ExportMailbox(mailbox.name, tuple(keywords))
        for message in messages:
            yield ExportMessage(tuple(message.flags), message.internal_date, message.size)
            async for chunk in store.read_message(message):
                for start in range(0, len(chunk), MAX_DATA_RECORD):
                    yield Data(chunk[start : start + MAX_DATA_RECORD])
            yield MessageEnd()


# --- export: file side --------------------------------------------------------------------------

class _Namer:
    """Unique maildir file names from server data only: time, pid, counter, host name."""

    def __init__(self, hostname: str) -> None:
        self._host = escape_host(hostname)
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


class _OpenMessage:
    def __init__(self, record: ExportMessage, tmp_path: Path, fd: int, info: str) -> None:
        self.record = record
        self.tmp_path = tmp_path
        self.fd = fd
        self.info = info
        self.size = 0
        self.convert = CrlfToLf()


class MaildirWriter:
    """The file side of an export: turns ExportRecords into a Maildir++ tree under `dest`.

    `begin` first: `dest` must not exist or be an empty directory, since exporting on top of
    an older export would mix the two and duplicate messages on re-import. A mailbox whose
    directory or files cannot be written is reported and its remaining records ignored."""

    def __init__(self, dest: Path, hostname: str) -> None:
        self.dest = dest
        self.report = TransferReport()
        self._namer = _Namer(hostname)
        self._mailbox: str | None = None
        self._folder: Path | None = None  # None: the current mailbox is being skipped
        self._letters: dict[str, str] = {}
        self._message: _OpenMessage | None = None
        self._begun = False

    def begin(self) -> None:
        _prepare_dest(self.dest)
        for sub in MAILDIR_SUBDIRS:  # the root is a valid maildir even without an INBOX
            (self.dest / sub).mkdir(mode=0o700)
        self._begun = True

    def feed(self, record: ExportRecord) -> None:
        if not self._begun:
            raise MailFileError("export records before the destination was prepared")
        if isinstance(record, ExportMailbox):
            self._end_mailbox()
            self._start_mailbox(record)
            return
        if self._mailbox is None:
            raise MailFileError(f"export record {type(record).__name__} outside a mailbox")
        if self._folder is None:
            return  # mailbox skipped after a problem
        try:
            self._message_record(record)
        except OSError as exc:
            self._abort_message()
            self.report.problems.append(f"mailbox {self._mailbox!r}: {exc.strerror or exc}")
            self._folder = None

    def finish(self) -> TransferReport:
        """After the last record: close the last mailbox and give the report."""
        if self._message is not None:
            raise MailFileError("the export ended inside a message")
        self._end_mailbox()
        return self.report

    def abort(self) -> None:
        """The transfer broke off: remove the half-written temporary file, if any."""
        self._abort_message()

    def _start_mailbox(self, record: ExportMailbox) -> None:
        self._mailbox = record.name
        self._folder = None
        if record.name.upper() == INBOX:
            folder = self.dest
        else:
            try:
                folder = self.dest / maildir_folder_name(record.name)
            except ValueError:
                self.report.problems.append(f"mailbox {record.name!r}: name cannot be exported")
                return
        keywords = list(record.keywords)
        if len(keywords) > MAX_KEYWORD_LETTERS:
            self.report.problems.append(
                f"mailbox {record.name!r}: only {MAX_KEYWORD_LETTERS} keywords fit in maildir "
                f"names; dropped {', '.join(keywords[MAX_KEYWORD_LETTERS:])}")
            keywords = keywords[:MAX_KEYWORD_LETTERS]
        self._letters = {kw: chr(ord("a") + i) for i, kw in enumerate(keywords)}
        try:
            _make_folder(folder, folder != self.dest)
            if keywords:
                text = "".join(f"{i} {kw}\n" for i, kw in enumerate(keywords))
                _write_new_file(folder / KEYWORDS_FILE, text.encode("utf-8"))
        except OSError as exc:
            self.report.problems.append(f"mailbox {record.name!r}: {exc.strerror or exc}")
            return
        self._folder = folder

    def _end_mailbox(self) -> None:
        if self._message is not None:
            raise MailFileError("a mailbox began inside a message")
        if self._mailbox is None or self._folder is None:
            return
        folder, self._folder = self._folder, None
        try:
            sync_dir(folder / "cur")
        except OSError as exc:
            self.report.problems.append(f"mailbox {self._mailbox!r}: {exc.strerror or exc}")
            return
        self.report.mailboxes += 1

    def _message_record(self, record: ExportMessage | Data | MessageEnd) -> None:
        assert self._folder is not None
        if isinstance(record, ExportMessage):
            if self._message is not None:
                raise MailFileError("a message began inside a message")
            tmp_path = self._folder / "tmp" / self._namer.temporary()
            fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            info = info_for(record.flags, self._letters)
            self._message = _OpenMessage(record, tmp_path, fd, info)
            return
        message = self._message
        if message is None:
            raise MailFileError(f"export record {type(record).__name__} outside a message")
        if isinstance(record, Data):
            data = message.convert.feed(record.chunk)
            message.size += len(data)
            _write_all(message.fd, data)
            return
        tail = message.convert.finish()
        message.size += len(tail)
        _write_all(message.fd, tail)
        os.fsync(message.fd)
        self._message = None
        os.close(message.fd)
        self._link_into_cur(message)
        self.report.messages += 1

    def _link_into_cur(self, message: _OpenMessage) -> None:
        """tmp/ → fsync → link into cur/ (never replacing a file) → unlink tmp, as maildir(5)."""
        assert self._folder is not None
        date = message.record.internal_date
        try:
            os.utime(message.tmp_path, (date, date))
            while True:
                name = (self._namer.next(date, message.size, message.record.wire_size)
                        + INFO_PREFIX + message.info)
                try:
                    os.link(message.tmp_path, self._folder / "cur" / name)
                    break
                except FileExistsError:
                    continue
        finally:
            os.unlink(message.tmp_path)

    def _abort_message(self) -> None:
        message, self._message = self._message, None
        if message is not None:
            with contextlib.suppress(OSError):
                os.close(message.fd)
            with contextlib.suppress(OSError):
                os.unlink(message.tmp_path)


def _make_folder(folder: Path, is_folder: bool) -> None:
    if is_folder:
        folder.mkdir(mode=0o700)
        # Maildir++: marks a folder so deliveries into it are not mistaken for a root maildir.
        (folder / "maildirfolder").touch(mode=0o600, exist_ok=False)
    for sub in MAILDIR_SUBDIRS:
        (folder / sub).mkdir(mode=0o700, exist_ok=not is_folder)


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


# --- export: both sides in one process ----------------------------------------------------------

async def export_maildir(store: Store, account: Account, dest: Path, *,
                         hostname: str) -> TransferReport:
    """Write every mailbox of `account` under `dest` as Maildir++ (see MaildirWriter)."""
    writer = MaildirWriter(dest, hostname)
    writer.begin()
    try:
        async for record in export_records(store, account):
            await asyncio.to_thread(writer.feed, record)
    except BaseException:
        writer.abort()
        raise
    return writer.finish()


# --- import: store side -------------------------------------------------------------------------

async def mailbox_names(store: Store, account: Account) -> set[str]:
    """The account's mailboxes as the file side checks them (INBOX in one spelling)."""
    return {canonical_mailbox(m.name) for m in await store.list_mailboxes(account.id)}


async def store_records(store: Store, account: Account,
                        records: AsyncIterator[ImportRecord]) -> TransferReport:
    """Deliver what a file side read. Problems of both sides land in one report, in order."""
    report = TransferReport()
    mailbox: str | None = None
    what = ""
    spool: Spool | None = None
    try:
        async for record in records:
            if isinstance(record, Problem):
                report.problems.append(record.text)
            elif isinstance(record, Folder):
                mailbox = record.mailbox
                report.mailboxes += 1
            elif isinstance(record, ImportMessage):
                if mailbox is None or spool is not None:
                    raise MailFileError("import message record out of order")
                what, spool = record.what, store.new_spool()
            elif isinstance(record, Data):
                if spool is None:
                    raise MailFileError("import data record outside a message")
                await spool.write(record.chunk)
            else:
                if spool is None or mailbox is None:
                    raise MailFileError("import end record outside a message")
                finished, spool = spool, None
                if finished.size == 0:
                    await finished.abort()
                    report.problems.append(f"{what}: skipped, {record.if_empty}")
                    continue
                target = DeliveryTarget(account.id, mailbox, record.flags, record.internal_date)
                await _deliver(store, finished, target, what, report)
    except BaseException:
        if spool is not None:
            await spool.abort()
        raise
    if spool is not None:
        await spool.abort()
        raise MailFileError("the import ended inside a message")
    return report


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


# --- import: both sides in one process ----------------------------------------------------------

async def import_maildir(store: Store, account: Account, source: Path) -> TransferReport:
    """Deliver every message of a Maildir++ tree into the account's mailboxes of the same
    names. Running it twice imports the messages twice."""
    existing = await mailbox_names(store, account)
    return await store_records(store, account, _in_thread(read_maildir(source, existing)))


async def import_mbox(store: Store, account: Account, source: Path, *,
                      mailbox: str = INBOX) -> TransferReport:
    """Deliver every message of an mboxrd/mboxo file into one mailbox."""
    existing = await mailbox_names(store, account)
    return await store_records(store, account,
                               _in_thread(read_mbox(source, existing, mailbox=mailbox)))


async def _in_thread(records: Iterator[ImportRecord]) -> AsyncIterator[ImportRecord]:
    """A file side's blocking reads off the event loop, one record at a time."""
    done = object()
    try:
        while (record := await asyncio.to_thread(next, records, done)) is not done:
            yield record  # type: ignore[misc]
    finally:
        close = getattr(records, "close", None)
        if close is not None:
            close()
