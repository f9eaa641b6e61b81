"""Message bytes on disk: one file per message, written once, shared by every copy.

Layout: `data_dir/blobs/<YYYYMMDD>/<32 hex digits>`; the blob id is the path below `blobs/`.
Files go straight to their final, unique name (no temp file and rename) and all new files of a
day share one directory, so a batch of deliveries needs ONE directory fsync to make every new
directory entry durable (the maildir rule of fsyncing the directory, maildir(5), paid once per
group commit rather than once per message). A file whose delivery never committed is an orphan:
`reap_orphans()` removes it at the next open by comparing recent day directories with the
metadata.

Durability order for one delivery (security.md §1, RFC 5321 §6.1):
  1. write + fsync the file (many in parallel, so ext4's journal merges their commits);
  2. fsync the day directory (once per batch, by the group-commit writer);
  3. commit the metadata rows (one WAL fsync per batch).
Only after 3 may the caller hear "delivered".

Everything here blocks: callers run it in a thread pool, never on the event loop thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

from mailhouse.errors import MailError
from mailhouse.message.structure import StructureParser
from mailhouse.message.structure_codec import to_bytes
from mailhouse.store.failures import storage_error

log = logging.getLogger("mailhouse.store.blobs")

SPILL_AT = 256 * 1024  # a spool stays in memory up to this size, then goes to its file
FLUSH_AT = 64 * 1024  # once spilled, writes are batched to this size per thread hop
READ_CHUNK = 64 * 1024

_DAY = re.compile(r"[0-9]{8}\Z")
_NAME = re.compile(r"[0-9a-f]{32}\Z")
_BLOB_ID = re.compile(r"([0-9]{8})/([0-9a-f]{32})\Z")
_TEMP_SUFFIX = ".tmp"  # never written today; reaped in case a later release uses temp files


def sync_dir(path: Path | str) -> None:
    """fsync a directory so the entries created or removed in it survive a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_file(path: Path | str) -> None:
    """fsync a file written through a path (shutil.copyfile, write_text): its data is on disk."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes | bytearray) -> None:
    """os.write may write less than asked; loop until everything is written."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


@dataclass(frozen=True, slots=True)
class SealedBlob:
    """A blob whose bytes are fsynced; its directory entry is not durable yet (see module doc)."""

    blob_id: str
    size: int
    structure: bytes | None = None  # message/structure_codec bytes, stored with the blob row
    search: bytes | None = None  # its search fields alone (structure_codec.search_to_bytes)

    @property
    def day(self) -> str:
        return self.blob_id.partition("/")[0]


class BlobFiles:
    """The blob directory tree. Thread-safe; every method blocks."""

    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir / "blobs"
        self._lock = threading.Lock()
        self._durable_days: set[str] = set()

    def prepare(self) -> None:
        """Create `blobs/` and make sure its own entry is durable before anything goes in it."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        sync_dir(self.root.parent)
        sync_dir(self.root)

    @staticmethod
    def new_id(now: float | None = None) -> str:
        day = time.strftime("%Y%m%d", time.gmtime(now))
        return f"{day}/{uuid.uuid4().hex}"

    def path(self, blob_id: str) -> str:
        """The file of a blob id. Ids come back from callers (MessageInfo is a plain dataclass),
        so anything but the exact shape is refused: no path can escape `blobs/`."""
        if not _BLOB_ID.match(blob_id):
            raise KeyError(blob_id)
        return os.path.join(self.root, blob_id)

    def create(self, blob_id: str) -> int:
        """Open a new blob file for writing. O_EXCL: an id is never written twice."""
        self._ensure_day(blob_id.partition("/")[0])
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        return os.open(self.path(blob_id), flags, 0o600)

    def _ensure_day(self, day: str) -> None:
        """The day directory must exist and its entry in `blobs/` be durable before a blob in it
        can be acknowledged; done once per day and process, under a lock so no other thread
        uses the directory before the fsync."""
        if day in self._durable_days:
            return
        with self._lock:
            if day in self._durable_days:
                return
            with contextlib.suppress(FileExistsError):
                os.mkdir(self.root / day, 0o700)
            sync_dir(self.root)
            self._durable_days.add(day)

    def sync_days(self, days: Iterable[str], *, missing_ok: bool = False) -> None:
        for day in sorted(set(days)):
            try:
                sync_dir(self.root / day)
            except FileNotFoundError:
                if not missing_ok:
                    raise

    def unlink(self, blob_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(blob_id))

    def unlink_all(self, blob_ids: Iterable[str]) -> set[str]:
        """Remove blobs; returns the day directories touched (to fsync if it matters)."""
        days: set[str] = set()
        for blob_id in blob_ids:
            self.unlink(blob_id)
            days.add(blob_id.partition("/")[0])
        return days

    def open_for_read(self, blob_id: str, chunk_size: int) -> tuple[int | None, bytes]:
        """Open and read the first chunk in one thread hop; a small message needs no second one.
        Returns the still-open fd when more may follow."""
        try:
            fd = os.open(self.path(blob_id), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise KeyError(blob_id) from None
        try:
            data = os.pread(fd, chunk_size, 0)
        except BaseException:
            os.close(fd)
            raise
        if len(data) < chunk_size:
            os.close(fd)
            return None, data
        return fd, data

    def recent_days(self, count: int) -> list[str]:
        """The newest `count` day directories, by name (not by today's date, so a wrong clock
        at the previous run does not hide its leftovers)."""
        try:
            names = [n for n in os.listdir(self.root) if _DAY.match(n)]
        except FileNotFoundError:
            return []
        return sorted(names)[-count:] if count > 0 else sorted(names)

    def reap_orphans(self, days: Iterable[str], referenced: Callable[[str], set[str]]) -> int:
        """Delete files in `days` that no committed row references, and temp files.

        Only safe while no other process writes blobs (the caller holds the store's exclusive
        lock): an in-flight delivery looks exactly like an orphan. Returns the count removed.
        """
        removed = 0
        for day in days:
            directory = self.root / day
            keep = referenced(day)
            gone = 0
            for name in os.listdir(directory):
                orphan = _NAME.match(name) and f"{day}/{name}" not in keep
                if orphan or name.endswith(_TEMP_SUFFIX):
                    try:
                        os.unlink(directory / name)
                        gone += 1
                    except FileNotFoundError:
                        pass
            if gone:
                sync_dir(directory)
                removed += gone
        if removed:
            log.info("store.blobs.reaped count=%d", removed)
        return removed


def read_range(files: BlobFiles, blob_id: str, start: int, end: int) -> bytes:
    """Octets [start, end) of a blob (fewer at its end). KeyError if the blob does not exist."""
    try:
        fd = os.open(files.path(blob_id), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise KeyError(blob_id) from None
    try:
        out = bytearray()
        while start + len(out) < end:
            piece = os.pread(fd, min(end - start - len(out), 1 << 20), start + len(out))
            if not piece:
                break
            out += piece
        return bytes(out)
    finally:
        os.close(fd)


async def read_chunks(
    files: BlobFiles, executor: Executor, blob_id: str, chunk_size: int = READ_CHUNK
) -> AsyncIterator[bytes]:
    """A blob's bytes in chunks, each read in the pool. pread keeps no file offset, so abandoning
    the iterator while a read is pending cannot disturb anything (the fd is closed here)."""
    loop = asyncio.get_running_loop()
    fd, data = await loop.run_in_executor(executor, files.open_for_read, blob_id, chunk_size)
    try:
        offset = len(data)
        if data:
            yield data
        while fd is not None:
            data = await loop.run_in_executor(executor, os.pread, fd, chunk_size, offset)
            if not data:
                break
            offset += len(data)
            yield data
    finally:
        if fd is not None:
            os.close(fd)


class BlobDropper:
    """Unlinks blobs whose last reference is committed away, in groups: the drops that arrive
    while a group is being unlinked form the next group, which pays one directory fsync per day
    and one `forget` (the caller's row deletion) for all its blobs, as group commit does for
    deliveries. One per event loop. The unlink work runs in `executor`, never on the loop.

    Order per group, as `SqliteStore._collect_garbage`: unlink, fsync the day directories, then
    forget the rows; a crash in between leaves rows at refcount 0 for the next open.
    """

    def __init__(
        self,
        files: BlobFiles,
        executor: Executor,
        forget: Callable[[list[str]], Awaitable[None]],
    ) -> None:
        self._files = files
        self._executor = executor
        self._forget = forget
        self._pending: list[str] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._task: asyncio.Task[None] | None = None

    async def drop(self, blob_id: str) -> None:
        """Returns once the blob's file is gone for good (or the attempt failed and was
        logged: the next open collects what is left)."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._pending.append(blob_id)
        self._waiters.append(waiter)
        if self._task is None:
            self._task = loop.create_task(self._run(), name="blob-dropper")
        await asyncio.shield(waiter)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                ids, waiters = self._pending, self._waiters
                self._pending, self._waiters = [], []
                try:
                    await loop.run_in_executor(self._executor, self._unlink_sync, ids)
                    await self._forget(ids)
                except Exception:
                    log.warning("store.blobs.drop_failed count=%d", len(ids), exc_info=True)
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(None)
        finally:
            self._task = None

    def _unlink_sync(self, ids: list[str]) -> None:
        self._files.sync_days(self._files.unlink_all(ids), missing_ok=True)


_SpoolState = Literal["open", "sealing", "sealed", "aborted", "failed"]


class FileSpool:
    """Spool (base.py) for file-backed stores: memory first, then the blob's own file.

    Most mail is small, so it stays in memory until `seal()` writes, fsyncs and closes it in one
    thread hop. Past SPILL_AT the bytes go to the final blob file as they arrive, so a 50 MB
    message never sits whole in memory. One task uses a spool at a time (the SMTP session that
    owns it); calls are not meant to overlap.
    """

    def __init__(self, files: BlobFiles, executor: Executor, spill_at: int = SPILL_AT) -> None:
        self.files = files
        self._executor = executor
        self._spill_at = spill_at
        self._buffer = bytearray()
        self._size = 0
        self._fd: int | None = None
        self._blob_id: str | None = None
        self._state: _SpoolState = "open"
        self._error: MailError | None = None
        # Once spilled, the write thread parses each chunk as it writes it (store/structures.py):
        # a large message is never read back to learn its structure.
        self._parser: StructureParser | None = None
        self._structure: bytes | None = None

    @property
    def size(self) -> int:
        return self._size

    @property
    def spilled(self) -> bool:
        return self._blob_id is not None

    def in_memory(self) -> bytes | None:
        """Every byte written so far when none went to the file yet (most mail), else None."""
        return None if self._blob_id is not None else bytes(self._buffer)

    def parsed(self) -> bytes | None:
        """After `seal()`: the structure codec bytes (message/structure_codec.py) of a spilled
        spool, parsed in the write thread as its chunks passed; None for one sealed from memory
        (the caller parses `in_memory()` then)."""
        return self._structure

    def write_nowait(self, data: bytes) -> bool:
        self._check_open()
        if self._fd is not None or len(self._buffer) + len(data) >= self._spill_at:
            return False
        self._buffer += data
        self._size += len(data)
        return True

    async def write(self, data: bytes) -> None:
        self._check_open()
        if not data:
            return
        self._buffer += data
        self._size += len(data)
        limit = self._spill_at if self._fd is None else FLUSH_AT
        if len(self._buffer) >= limit:
            chunk, self._buffer = self._buffer, bytearray()
            await self._in_thread(partial(self._append_sync, chunk))

    async def seal(self) -> SealedBlob:
        """Write what is buffered, fsync and close: the bytes are on stable storage. After this
        the file belongs to the delivery (and to the reaper if the delivery never commits)."""
        self._check_open()
        self._state = "sealing"
        chunk, self._buffer = self._buffer, bytearray()
        await self._in_thread(partial(self._seal_sync, chunk))
        self._state = "sealed"
        assert self._blob_id is not None
        return SealedBlob(self._blob_id, self._size)

    async def abort(self) -> None:
        if self._state in ("sealed", "aborted"):
            return
        self._state = "aborted"
        self._buffer = bytearray()
        if self._blob_id is not None:
            await self._in_thread(self._discard_sync)

    def _check_open(self) -> None:
        if self._error is not None:
            raise self._error
        if self._state != "open":
            raise RuntimeError(f"spool is {self._state}")

    async def _in_thread(self, job: Callable[[], None]) -> None:
        future: Future[None] = self._executor.submit(job)
        try:
            await asyncio.wrap_future(future)
        except MailError as exc:
            self._state, self._error = "failed", exc
            raise
        except asyncio.CancelledError:
            # The thread may still be writing: remove the file once it is done with it.
            self._state = "failed"
            future.add_done_callback(lambda _: self._discard_soon())
            raise

    def _discard_soon(self) -> None:
        try:
            self._executor.submit(self._discard_sync)
        except RuntimeError:  # pool already shut down: the store is closing
            self._discard_sync()

    def _open_file(self) -> int:
        if self._fd is None:
            if self._blob_id is None:
                self._blob_id = self.files.new_id()
            self._fd = self.files.create(self._blob_id)
        return self._fd

    def _append_sync(self, chunk: bytearray) -> None:
        try:
            write_all(self._open_file(), chunk)
        except OSError as exc:
            self._discard_sync()
            raise storage_error(exc) from exc
        if self._parser is None:
            self._parser = StructureParser()
        self._parser.feed(bytes(chunk))

    def _seal_sync(self, chunk: bytearray) -> None:
        try:
            fd = self._open_file()
            if chunk:
                write_all(fd, chunk)
            os.fsync(fd)
            self._fd = None
            os.close(fd)  # close can report a deferred write error too
        except OSError as exc:
            self._discard_sync()
            raise storage_error(exc) from exc
        if self._parser is not None:  # spilled: parsed chunk by chunk, never read back
            self._parser.feed(bytes(chunk))
            self._structure = to_bytes(self._parser.finish())
            self._parser = None

    def _discard_sync(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
        if self._blob_id is not None:
            try:
                self.files.unlink(self._blob_id)
            except OSError:  # the reaper gets it at the next open
                log.warning("store.blobs.unlink_failed", exc_info=True)
