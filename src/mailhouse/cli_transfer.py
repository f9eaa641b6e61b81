"""`mailhouse export` / `import` run as root: privilege separation, as Postfix's and Dovecot's
tools do it.

Every store-using command drops root for good before opening the store (cli_common,
privileges.py). For export and import that would leave the Maildir or mbox to the service
user, who usually cannot write /root/backup or read a user's 0600 mbox. So, when the command
runs as root and would drop privileges, it forks: the child becomes the data_dir owner exactly
as every command does (`become_data_dir_owner`) and does the store side; the root parent does
the file side (mailfiles.MaildirWriter, read_maildir, read_mbox) with root's rights. The store
is only ever opened by the child, so data_dir never gains a root-owned file; the files the
parent exports are root's, with the usual modes.

Why fork and not spawning `python -m mailhouse.…`: at this point the command line is
single-threaded (no event loop has run, no store is open; checked with
`threading.active_count()` before forking), which is when fork is safe, and the child inherits
the parsed config and arguments with nothing to serialise or re-validate. The child never
returns into the caller: it ends with os._exit.

The two talk over a socketpair in frames: one type octet, a 4-octet big-endian length, the
payload (raw for message data, a JSON object for everything else). Every frame is bounded by
FRAME_LIMIT; a longer, truncated or malformed frame ends the transfer with one line and exit
code 1. Export: child → parent Ready, then mailbox/message/data/end records, then Done.
Import: child → parent Ready (the account's address and mailboxes); parent → child the
records read from the files, then Done; child → parent the TransferReport. A Failure frame
carries the child's error line and exit code (no user, storage error) for the parent to print.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import socket
import struct
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeVar

from mailhouse.cli_common import EXIT_FAILED, EXIT_OK, error, out
from mailhouse.config import Config
from mailhouse.model import Account
from mailhouse.privileges import owner_of, service_account
from mailhouse.service.accounts import NotFound, canonical_address
from mailhouse.service.mailfiles import (
    MAX_DATA_RECORD,
    Data,
    ExportMailbox,
    ExportMessage,
    Folder,
    ImportEnd,
    ImportMessage,
    ImportRecord,
    MaildirWriter,
    MailFileError,
    MessageEnd,
    Problem,
    TransferReport,
    export_records,
    mailbox_names,
    read_maildir,
    read_mbox,
    store_records,
)
from mailhouse.store.base import Store

# Room for a frame's JSON beside the largest data record: mailbox lists, problem lines, paths.
FRAME_HEADROOM: Final = 64 * 1024
FRAME_LIMIT: Final = MAX_DATA_RECORD + FRAME_HEADROOM
HEADER: Final = struct.Struct(">cI")


@dataclass(frozen=True, slots=True)
class Ready:
    """The child found the account: its address and (import) its mailboxes."""

    address: str
    mailboxes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Failure:
    """The child failed: the line to print and the exit code (as the in-process command)."""

    code: int
    text: str


@dataclass(frozen=True, slots=True)
class Done:
    """No more records."""


Message = (Ready | Failure | Done | TransferReport | ExportMailbox | ExportMessage | Data
           | MessageEnd | Problem | Folder | ImportMessage | ImportEnd)


class TransferBroken(Exception):
    """The other side went away mid-transfer or sent a frame we cannot accept."""


class StoreSideFailed(Exception):
    """The child reported a failure (a Failure frame)."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.text)
        self.failure = failure


# --- frames -------------------------------------------------------------------------------------

def encode(message: Message) -> bytes:
    """One frame. TransferBroken when it would cross FRAME_LIMIT."""
    kind, payload = _payload(message)
    if len(payload) > FRAME_LIMIT:
        raise TransferBroken(f"a {type(message).__name__} frame of {len(payload)} octets "
                             f"exceeds the limit of {FRAME_LIMIT}")
    return HEADER.pack(kind, len(payload)) + payload


def _payload(message: Message) -> tuple[bytes, bytes]:
    if isinstance(message, Data):
        return b"D", message.chunk
    value: dict[str, object]
    match message:
        case Ready(address, mailboxes):
            kind, value = b"R", {"address": address, "mailboxes": list(mailboxes)}
        case Failure(code, text):
            kind, value = b"X", {"code": code, "text": text}
        case Done():
            kind, value = b".", {}
        case TransferReport(mailboxes, messages, problems):
            kind, value = b"T", {"mailboxes": mailboxes, "messages": messages,
                                 "problems": problems}
        case ExportMailbox(name, keywords):
            kind, value = b"M", {"name": name, "keywords": list(keywords)}
        case ExportMessage(flags, internal_date, wire_size):
            kind, value = b"S", {"flags": list(flags), "date": internal_date, "size": wire_size}
        case MessageEnd():
            kind, value = b"E", {}
        case Problem(text):
            kind, value = b"P", {"text": text}
        case Folder(mailbox):
            kind, value = b"F", {"mailbox": mailbox}
        case ImportMessage(what):
            kind, value = b"I", {"what": what}
        case ImportEnd(flags, internal_date, if_empty):
            kind, value = b"Z", {"flags": list(flags), "date": internal_date,
                                 "if_empty": if_empty}
        case _:
            raise TypeError(f"not a transfer message: {message!r}")
    # ensure_ascii: names and paths may hold surrogate escapes of undecodable bytes.
    return kind, json.dumps(value, ensure_ascii=True, allow_nan=False).encode("ascii")


def decode(kind: bytes, payload: bytes) -> Message:
    """The message of one frame; TransferBroken for anything malformed."""
    if kind == b"D":
        return Data(payload)
    fields = _Fields(kind, payload)
    message: Message
    match kind:
        case b"R":
            message = Ready(fields.text("address"), fields.texts("mailboxes"))
        case b"X":
            message = Failure(fields.integer("code"), fields.text("text"))
        case b".":
            message = Done()
        case b"T":
            message = TransferReport(fields.integer("mailboxes"), fields.integer("messages"),
                                     list(fields.texts("problems")))
        case b"M":
            message = ExportMailbox(fields.text("name"), fields.texts("keywords"))
        case b"S":
            date = fields.number("date")
            if date is None:
                raise TransferBroken("malformed frame 'S': no date")
            message = ExportMessage(fields.texts("flags"), date, fields.integer("size"))
        case b"E":
            message = MessageEnd()
        case b"P":
            message = Problem(fields.text("text"))
        case b"F":
            message = Folder(fields.text("mailbox"))
        case b"I":
            message = ImportMessage(fields.text("what"))
        case b"Z":
            message = ImportEnd(fields.texts("flags"), fields.number("date"),
                                fields.text("if_empty"))
        case _:
            raise TransferBroken(f"unknown frame type {kind!r}")
    fields.check_all_used()
    return message


class _Fields:
    """The JSON object of a frame, read field by field with its type checked."""

    def __init__(self, kind: bytes, payload: bytes) -> None:
        self._kind = kind.decode("latin-1")
        try:
            value = json.loads(payload)
        except (ValueError, RecursionError):
            raise self._bad("not JSON") from None
        if not isinstance(value, dict):
            raise self._bad("not a JSON object")
        self._value: dict[str, object] = value
        self._used: set[str] = set()

    def _bad(self, why: str) -> TransferBroken:
        return TransferBroken(f"malformed frame {self._kind!r}: {why}")

    def _get(self, key: str) -> object:
        if key not in self._value:
            raise self._bad(f"no {key}")
        self._used.add(key)
        return self._value[key]

    def text(self, key: str) -> str:
        value = self._get(key)
        if not isinstance(value, str):
            raise self._bad(f"{key} is not a string")
        return value

    def texts(self, key: str) -> tuple[str, ...]:
        value = self._get(key)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._bad(f"{key} is not a list of strings")
        return tuple(value)

    def integer(self, key: str) -> int:
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self._bad(f"{key} is not a count")
        return value

    def number(self, key: str) -> float | None:
        value = self._get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._bad(f"{key} is not a number")
        if not math.isfinite(value) or abs(value) > 1e12:
            raise self._bad(f"{key} is out of range")
        return float(value)

    def check_all_used(self) -> None:
        extra = set(self._value) - self._used
        if extra:
            raise self._bad(f"unexpected {', '.join(sorted(extra))}")


class Channel:
    """Frames over one end of the socketpair, buffered both ways."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._reader = sock.makefile("rb")
        self._writer = sock.makefile("wb")

    def send(self, message: Message) -> None:
        self._writer.write(encode(message))

    def flush(self) -> None:
        self._writer.flush()

    def receive(self) -> Message:
        """The next message; StoreSideFailed for a Failure, TransferBroken when the other
        side is gone or sent something we refuse."""
        header = self._read(HEADER.size, at_start=True)
        kind, length = HEADER.unpack(header)
        if length > FRAME_LIMIT:
            raise TransferBroken(f"a frame of {length} octets exceeds the limit of "
                                 f"{FRAME_LIMIT}")
        message = decode(kind, self._read(length, at_start=False))
        if isinstance(message, Failure):
            raise StoreSideFailed(message)
        return message

    def _read(self, size: int, *, at_start: bool) -> bytes:
        try:
            data = self._reader.read(size)
        except OSError as exc:
            raise TransferBroken(f"reading from the other side: {exc.strerror or exc}") from None
        if len(data) < size:
            if at_start and not data:
                raise TransferBroken("the other side ended the transfer early")
            raise TransferBroken("truncated frame")
        return data

    def close(self) -> None:
        for stream in (self._writer, self._reader):
            with contextlib.suppress(OSError):
                stream.close()
        self._sock.close()


# --- running the two sides ----------------------------------------------------------------------

StoreAction = Callable[[Store], Awaitable[int]]
# Runs an action as every store command does (drop privileges, open, close) and gives the exit
# code and the error line, if any, instead of printing it: __main__._store_outcome.
RunStore = Callable[[StoreAction], tuple[int, str | None]]
StoreSide = Callable[[Store, Channel], Awaitable[int]]
FileSide = Callable[[Channel], int]


def splits(config: Config) -> bool:
    """Would this command drop root before opening the store (cli_common)? Then the files
    are handled by a root parent and the store by an unprivileged child."""
    if os.geteuid() != 0:
        return False
    return (service_account(config) or owner_of(config.data_dir)) is not None


def run_split(run_store: RunStore, store_side: StoreSide, file_side: FileSide) -> int:
    """Fork; the child runs `store_side` through `run_store`, this process `file_side`. Waits
    for the child and maps how it ended."""
    if threading.active_count() != 1:
        error("export/import as root needs a single-threaded process to fork; "
              f"{threading.active_count()} threads are running")
        return EXIT_FAILED
    sys.stdout.flush()
    sys.stderr.flush()
    parent_end, child_end = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the caller
        code = EXIT_FAILED
        try:
            parent_end.close()
            code = _child(run_store, store_side, Channel(child_end))
        finally:
            os._exit(code)
    child_end.close()
    channel = Channel(parent_end)
    broken: TransferBroken | None = None
    try:
        code = file_side(channel)
    except StoreSideFailed as exc:
        error(exc.failure.text)
        code = exc.failure.code
    except TransferBroken as exc:
        broken, code = exc, EXIT_FAILED
    except MailFileError as exc:
        error(str(exc))
        code = EXIT_FAILED
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        error(f"{where}{exc.strerror or exc}")
        code = EXIT_FAILED
    finally:
        channel.close()  # a child still reading sees the end, one still writing EPIPE
        status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    if broken is not None:
        error(f"transfer broken off: {broken} ({_ended(status)}); nothing more was transferred")
        return EXIT_FAILED
    if code == EXIT_OK and status != 0:
        error(f"the store process {_ended(status)} after the transfer")
        return EXIT_FAILED
    return code


def _ended(status: int) -> str:
    if status < 0:
        return f"the store process was killed by signal {-status}"
    return f"the store process exited with status {status}"


def _child(run_store: RunStore, store_side: StoreSide, channel: Channel) -> int:
    async def action(store: Store) -> int:
        return await store_side(store, channel)

    try:
        code, message = run_store(action)
    except TransferBroken as exc:  # e.g. a frame over the limit: say so rather than vanish
        code, message = EXIT_FAILED, f"transfer broken off: {exc}"
    if message is not None:
        with contextlib.suppress(OSError, TransferBroken):
            channel.send(Failure(code, message))
            channel.flush()
    return code


Expected = TypeVar("Expected", Ready, TransferReport)


def _expect(channel: Channel, wanted: type[Expected]) -> Expected:
    message = channel.receive()
    if not isinstance(message, wanted):
        raise TransferBroken(f"expected {wanted.__name__}, got {type(message).__name__}")
    return message


def _to_child(channel: Channel, message: Message | None) -> None:
    """Parent → child (None: flush); when the child has gone, its Failure frame (if it sent
    one) says why."""
    try:
        if message is None:
            channel.flush()
        else:
            channel.send(message)
    except OSError:
        channel.receive()  # raises StoreSideFailed, or TransferBroken
        raise TransferBroken("the store process stopped reading") from None


# --- the commands -------------------------------------------------------------------------------

async def account_of(store: Store, address: str) -> Account:
    key = canonical_address(address)
    account = await store.get_account(key)
    if account is None:
        raise NotFound(f"no user {key}")
    return account


def transfer_result(verb: str, report: TransferReport, where: str) -> int:
    """Problems go to stderr and make the exit code 1: a partial transfer must not pass for a
    complete one in a script."""
    out(f"{verb} {report.messages} message{'s' if report.messages != 1 else ''} in "
        f"{report.mailboxes} mailbox{'es' if report.mailboxes != 1 else ''} {where}")
    for problem in report.problems:
        error(problem)
    return EXIT_FAILED if report.problems else EXIT_OK


def export_as_root(run_store: RunStore, address: str, dest: Path, hostname: str) -> int:
    async def store_side(store: Store, channel: Channel) -> int:
        account = await account_of(store, address)
        channel.send(Ready(account.address, ()))
        channel.flush()  # the parent prepares the destination now, before any record
        async for record in export_records(store, account):
            channel.send(record)
        channel.send(Done())
        channel.flush()
        return EXIT_OK

    def file_side(channel: Channel) -> int:
        _expect(channel, Ready)
        writer = MaildirWriter(dest, hostname)
        writer.begin()
        try:
            while not isinstance(message := channel.receive(), Done):
                if not isinstance(message, ExportMailbox | ExportMessage | Data | MessageEnd):
                    raise TransferBroken(f"unexpected {type(message).__name__} in an export")
                writer.feed(message)
            report = writer.finish()
        except BaseException:
            writer.abort()
            raise
        return transfer_result("exported", report, f"to {dest}")

    return run_split(run_store, store_side, file_side)


def import_as_root(run_store: RunStore, address: str, *, maildir: Path | None,
                   mbox: Path | None, mailbox: str) -> int:
    async def store_side(store: Store, channel: Channel) -> int:
        account = await account_of(store, address)
        channel.send(Ready(account.address, tuple(sorted(await mailbox_names(store, account)))))
        channel.flush()
        report = await store_records(store, account, _received(channel))
        channel.send(report)
        channel.flush()
        return EXIT_OK

    def file_side(channel: Channel) -> int:
        ready = _expect(channel, Ready)
        existing = set(ready.mailboxes)
        if maildir is not None:
            source, records = maildir, read_maildir(maildir, existing)
        else:
            assert mbox is not None
            source, records = mbox, read_mbox(mbox, existing, mailbox=mailbox)
        for record in records:
            _to_child(channel, record)
        _to_child(channel, Done())
        _to_child(channel, None)
        report = _expect(channel, TransferReport)
        return transfer_result("imported", report, f"from {source} into {ready.address}")

    return run_split(run_store, store_side, file_side)


async def _received(channel: Channel) -> AsyncIterator[ImportRecord]:
    while True:
        message = await asyncio.to_thread(channel.receive)
        if isinstance(message, Done):
            return
        if not isinstance(message, Problem | Folder | ImportMessage | Data | ImportEnd):
            raise TransferBroken(f"unexpected {type(message).__name__} in an import")
        yield message
