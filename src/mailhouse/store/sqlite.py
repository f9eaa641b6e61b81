"""The embedded store: SQLite in WAL mode for metadata, one fsynced file per message for the bytes.

Threads, and why:
- one writer thread owns the only write connection and commits in groups (sqlite_writer.py);
- a blob pool of many threads writes and fsyncs message files in parallel, so ext4 merges their
  journal commits (20 parallel fsyncs cost about as much as one);
- a small read pool, one read connection per thread: WAL readers never block the writer.
The event loop thread never touches SQLite or a file.

Several processes may open one data directory (the CLI edits accounts while the server runs):
their writers queue on a flock around each write transaction (`write.lock`,
sqlite_writer.py), SQLite's busy handler (`busy_timeout`, `BEGIN IMMEDIATE`) backs it up, and a
flock on `store.lock` makes sure orphan blobs are only reaped when no other process can have a
delivery in flight.

Import this module only through `mailhouse.store.open_store`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from mailhouse.errors import MailError
from mailhouse.message.searchfields import SearchFields
from mailhouse.message.structure import MessageStructure
from mailhouse.message.structure_codec import literal_in_search_bytes
from mailhouse.model import Account, Directory
from mailhouse.store import (
    schema,
    sqlite_admin,
    sqlite_directory,
    sqlite_expunge,
    sqlite_mailboxes,
    sqlite_messages,
    sqlite_queue,
    sqlite_tokens,
    structures,
)
from mailhouse.store.base import (
    MAX_UID,
    AdminAccount,
    ApiToken,
    AuditEntry,
    CopyResult,
    DeliveryTarget,
    ExpungedMessage,
    FlagOp,
    FlagUpdate,
    MailboxChanges,
    MailboxInfo,
    MaildropLock,
    MessageFlags,
    MessageInfo,
    Outcome,
    QueuedMessage,
    QueueRequest,
    QueueStats,
    Quota,
    RecipientUpdate,
    Spool,
)
from mailhouse.store.blobs import (
    SPILL_AT,
    BlobDropper,
    BlobFiles,
    FileSpool,
    SealedBlob,
    read_chunks,
    read_range,
)
from mailhouse.store.failures import storage_error
from mailhouse.store.maildrop_lock import MaildropLocks
from mailhouse.store.queue_rules import checked_updates, queue_recipients
from mailhouse.store.rules import (
    INBOX,
    canonical_mailbox_name,
    check_address_key,
    check_admin_name,
    check_alias_key,
    check_flags,
    check_mailbox_name,
    check_quota,
    check_scopes,
    check_special_use,
    check_zone,
    encode_flags,
)
from mailhouse.store.sqlite_events import SqliteEvents
from mailhouse.store.sqlite_writer import GroupCommitWriter, WriteLock, WriterStats
from mailhouse.store.wakeup import Wakeups

log = logging.getLogger("mailhouse.store.sqlite")

T = TypeVar("T")

DB_NAME = "mailhouse.db"
LOCK_NAME = "store.lock"
# Not store.lock (held for the store's life), and not under locks/: the store creates no
# directory a planted link could stand in for (tests/test_privileges.py).
WRITE_LOCK_NAME = "write.lock"
PRIVATE_DIR_MODE = 0o700  # data_dir holds password hashes and mail: its owner only
PRIVATE_FILE_MODE = 0o600
INLINE_ROWS = 64  # reads of at most this many rows run on the caller's thread (`_read_small`)


class SqliteStore(SqliteEvents):
    """Store (base.py) on SQLite WAL + blob files. Open with `await open()`, end with `close()`."""

    def __init__(
        self,
        data_dir: Path,
        *,
        busy_timeout: float = 10.0,
        blob_threads: int = 32,
        read_threads: int = 4,
        spill_at: int = SPILL_AT,
        reap_days: int = 2,
        wakeups: Wakeups | None = None,
        write_lock: bool = True,
    ) -> None:
        """`write_lock`: take WRITE_LOCK_NAME around each write transaction (sqlite_writer.py);
        False only to measure without it (bench/write_contention.py)."""
        self.data_dir = Path(data_dir)
        self._write_lock = write_lock
        self._wakeups = wakeups
        self._owners: dict[int, int] = {}  # mailbox id -> account id (never changes)
        self._db_path = self.data_dir / DB_NAME
        self._files = BlobFiles(self.data_dir)
        self._busy_timeout = busy_timeout
        self._blob_threads = blob_threads
        self._read_threads = read_threads
        self._spill_at = spill_at
        self._reap_days = reap_days
        self._conn: sqlite3.Connection | None = None
        self._writer: GroupCommitWriter | None = None
        self._blob_pool: ThreadPoolExecutor | None = None
        self._read_pool: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._lock_fd: int | None = None
        self._maildrops = MaildropLocks(self.data_dir)  # data_dir/locks/pop3/<account id>
        self._droppers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, BlobDropper] = (
            weakref.WeakKeyDictionary()
        )

    @property
    def wakeups(self) -> Wakeups | None:
        return self._wakeups

    async def _publish(self, mailbox_id: int, modseq: int | None = None) -> None:
        """Tell watchers the mailbox changed, with its HIGHESTMODSEQ (read after the commit when
        the write did not return it: a later commit's value is as good, watchers keep the
        highest); after the commit, never failing the caller (a lost wake-up costs latency,
        store/wakeup.py)."""
        if self._wakeups is None:
            return
        account_id = self._owners.get(mailbox_id)
        if account_id is None or modseq is None:
            try:
                found = await self._read(partial(sqlite_mailboxes.owner_and_modseq,
                                                 mailbox_id=mailbox_id))
            except MailError:
                return
            if found is None:
                return  # deleted meanwhile: its DELETE published
            account_id, current = found
            modseq = current if modseq is None else modseq
            self._owners[mailbox_id] = account_id
        self._wakeups.publish(account_id, mailbox_id, modseq)

    def _announce(self, changed: list[tuple[int, int, int]]) -> None:
        """Publish what a committed write reported: (account id, mailbox id, its new
        HIGHESTMODSEQ), learnt in the write itself, so no read follows it."""
        if self._wakeups is None:
            return
        for account_id, mailbox_id, modseq in changed:
            self._owners[mailbox_id] = account_id
            self._wakeups.publish(account_id, mailbox_id, modseq)

    @property
    def writer_stats(self) -> WriterStats:
        """Batches and jobs committed so far: how well group commit is grouping."""
        return self._open_writer().stats

    # --- lifecycle ------------------------------------------------------------------------------
    async def open(self) -> None:
        if self._writer is not None:
            raise RuntimeError("store is already open")
        await asyncio.to_thread(self._open_sync)

    def _open_sync(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
        self._files.prepare()
        # Made 0600 before SQLite sees it: SQLite gives the -wal and -shm files the database
        # file's mode, so the password hashes stay private whatever the umask.
        os.close(os.open(self._db_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE_MODE))
        lock_fd = os.open(self.data_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                          PRIVATE_FILE_MODE)
        conn: sqlite3.Connection | None = None
        try:
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                alone = True
            except BlockingIOError:
                alone = False
            conn = self._connect(writer=True)
            schema.migrate(conn)
            if alone:  # no other process can have a delivery in flight: clean up after crashes
                self._collect_garbage(conn)
                days = self._files.recent_days(self._reap_days)
                self._files.reap_orphans(days, partial(_referenced_in_day, conn))
            fcntl.flock(lock_fd, fcntl.LOCK_SH)  # others may now open, but not reap
            write_lock = WriteLock(self.data_dir / WRITE_LOCK_NAME) if self._write_lock else None
        except BaseException:
            if conn is not None:
                conn.close()
            os.close(lock_fd)
            raise
        self._lock_fd = lock_fd
        self._conn = conn
        self._blob_pool = ThreadPoolExecutor(self._blob_threads, "mailhouse-store-blob")
        self._read_pool = ThreadPoolExecutor(self._read_threads, "mailhouse-store-read")
        self._writer = GroupCommitWriter(conn, self._files.sync_days, lock=write_lock)
        self._writer.start()

    async def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            self._maildrops.release_all()
            await asyncio.to_thread(self._close_sync, writer)

    def _close_sync(self, writer: GroupCommitWriter) -> None:
        writer.stop()
        stats = writer.stats
        log.info("event=store.writer_stats batches=%d jobs=%d largest_batch=%d busy_waits=%d "
                 "busy_seconds=%.3f lock_waits=%d lock_seconds=%.3f", stats.batches, stats.jobs,
                 stats.largest_batch, stats.busy_waits, stats.busy_seconds, stats.lock_waits,
                 stats.lock_seconds)
        for pool in (self._blob_pool, self._read_pool):
            if pool is not None:
                pool.shutdown(wait=True)
        with self._readers_lock:
            readers, self._readers = self._readers, []
        for conn in [*readers, self._conn]:
            if conn is not None:
                conn.close()
        self._conn = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def _connect(self, *, writer: bool) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self._db_path,
            timeout=self._busy_timeout,  # busy handler: the CLI and the server both write
            isolation_level=None,  # we issue BEGIN IMMEDIATE ourselves
            check_same_thread=False,  # opened on one thread, used by exactly one other
            cached_statements=256,
        )
        try:
            if writer:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA journal_size_limit = 67108864")
            conn.execute("PRAGMA synchronous = FULL")  # WAL fsynced at every commit
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA cache_size = -16384")  # KiB
            conn.execute("PRAGMA temp_store = MEMORY")
            if not writer:
                conn.execute("PRAGMA query_only = ON")
        except BaseException:
            conn.close()
            raise
        return conn

    def _open_writer(self) -> GroupCommitWriter:
        if self._writer is None:
            raise RuntimeError("store is not open")
        return self._writer

    def _open_pool(self) -> ThreadPoolExecutor:
        if self._blob_pool is None or self._writer is None:
            raise RuntimeError("store is not open")
        return self._blob_pool

    async def _write(self, apply: Callable[[sqlite3.Connection], T], **kw: Any) -> T:
        return await self._open_writer().run(apply, **kw)

    async def _read(self, query: Callable[[sqlite3.Connection], T]) -> T:
        if self._read_pool is None or self._writer is None:
            raise RuntimeError("store is not open")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._read_pool, self._read_sync, query)

    def _read_small(self, query: Callable[[sqlite3.Connection], T]) -> T:
        """A read bounded to a few rows by an index (a mailbox's status, a short UID range),
        run on the caller's thread: it costs less than the hop to the pool and back, which
        was most of the CPU of an IMAP STORE or FETCH of one message. Never for a read whose
        size the caller does not bound, nor for one that may touch message files."""
        if self._read_pool is None or self._writer is None:
            raise RuntimeError("store is not open")
        return self._read_sync(query)

    def _read_sync(self, query: Callable[[sqlite3.Connection], T]) -> T:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        try:
            if conn is None:
                conn = self._connect(writer=False)
                self._local.conn = conn
                with self._readers_lock:
                    self._readers.append(conn)
            return query(conn)
        except sqlite3.Error as exc:
            raise storage_error(exc) from exc

    # --- directory ------------------------------------------------------------------------------
    async def directory_serial(self) -> int:
        return await self._read(sqlite_directory.serial)

    async def directory(self) -> Directory:
        return await self._read(sqlite_directory.directory)

    async def add_domain(self, name: str) -> None:
        await self._write(partial(sqlite_directory.add_domain, name=name))

    async def remove_domain(self, name: str) -> bool:
        return await self._write(partial(sqlite_directory.remove_domain, name=name))

    async def list_domains(self) -> list[str]:
        return await self._read(sqlite_directory.list_domains)

    async def add_account(self, address: str, password_hash: str) -> Account:
        check_address_key(address)
        apply = partial(sqlite_directory.add_account, address=address, password_hash=password_hash)
        return await self._write(apply)

    async def set_password(self, address: str, password_hash: str) -> bool:
        apply = partial(sqlite_directory.set_password, address=address, password_hash=password_hash)
        return await self._write(apply)

    async def set_quota(self, address: str, limit: int | None) -> bool:
        apply = partial(sqlite_messages.set_quota, address=address, limit=check_quota(limit))
        return await self._write(apply)

    async def get_quota(self, account_id: int) -> Quota | None:
        return await self._read(partial(sqlite_messages.quota, account_id=account_id))

    async def remove_account(self, address: str) -> bool:
        apply = partial(sqlite_directory.remove_account, address=address)
        return await self._write(apply, after_commit=self._garbage_after_commit)

    async def get_account(self, address: str) -> Account | None:
        return await self._read(partial(sqlite_directory.get_account, address=address))

    async def list_accounts(self) -> list[Account]:
        return await self._read(sqlite_directory.list_accounts)

    async def set_alias(self, alias: str, targets: Sequence[str]) -> None:
        check_alias_key(alias)
        if not targets:
            raise ValueError("an alias needs at least one target")
        for target in targets:
            check_address_key(target)
        await self._write(partial(sqlite_directory.set_alias, alias=alias, targets=tuple(targets)))

    async def remove_alias(self, alias: str) -> bool:
        return await self._write(partial(sqlite_directory.remove_alias, alias=alias))

    async def list_aliases(self) -> dict[str, tuple[str, ...]]:
        return await self._read(sqlite_directory.list_aliases)

    # --- messages -------------------------------------------------------------------------------
    def new_spool(self) -> FileSpool:
        return FileSpool(self._files, self._open_pool(), self._spill_at)

    async def deliver(
        self, spool: Spool, targets: Sequence[DeliveryTarget], queue: QueueRequest | None = None
    ) -> list[Outcome]:
        """See base.Store.deliver. Per target: DELIVERED, or PERMANENT when the account or the
        mailbox does not exist (the service may retry INBOX). The queue entry, when asked for,
        commits in the same job as the copies and holds one reference on the same blob. Raises
        StorageFull / MailError when nothing was stored; then no row exists and the blob file
        is gone (or left to the reaper if the commit's fate is unknown)."""
        if not isinstance(spool, FileSpool) or spool.files is not self._files:
            raise TypeError("spool does not belong to this store")
        writer = self._open_writer()
        try:
            now = time.time()
            rows = [
                (
                    t.account_id,
                    canonical_mailbox_name(t.mailbox),
                    encode_flags(check_flags(t.flags)),
                    now if t.internal_date is None else t.internal_date,
                    t.ignore_quota,
                )
                for t in targets
            ]
            recipients = None if queue is None else queue_recipients(queue)
        except ValueError:
            await spool.abort()
            raise
        if not rows and queue is None:
            await spool.abort()
            return []
        blob = await self._seal_parsed(spool, parse=bool(rows))
        queued = None if queue is None or recipients is None else (queue, recipients)
        changed: list[tuple[int, int, int]] = []
        outcomes = await writer.run(
            partial(sqlite_messages.deliver, blob=blob, targets=rows, queued=queued, now=now,
                    changed=changed),
            sync_days=frozenset({blob.day}),
            on_failure=partial(self._forget_blob, blob.blob_id),
        )
        self._announce(changed)
        if queued is None and Outcome.DELIVERED not in outcomes:  # no row points at the file
            await asyncio.get_running_loop().run_in_executor(
                self._open_pool(), partial(self._forget_blob, blob.blob_id, False)
            )
        return outcomes

    async def _seal_parsed(self, spool: FileSpool, *, parse: bool) -> SealedBlob:
        """Seal the spool; with `parse`, its structure rides along (structures.py): parsed from
        the memory buffer (in a thread when big), or, for a spool that went to its file, as the
        write thread wrote each chunk (FileSpool.parsed): the file is never read back."""
        data = spool.in_memory() if parse else None
        structure = None
        if data is not None:
            if len(data) <= structures.INLINE_PARSE:
                structure = structures.parse_bytes(data)
            else:
                structure = await asyncio.get_running_loop().run_in_executor(
                    self._open_pool(), structures.parse_bytes, data)
        blob = await spool.seal()
        if parse and data is None:
            structure = spool.parsed()
        if structure is None:
            return blob
        return dataclasses.replace(blob, structure=structure,
                                   search=structures.search_of(structure))

    async def structures(self, mailbox_id: int,
                         uids: Sequence[int]) -> dict[int, MessageStructure]:
        found, parsed = await self._read(
            partial(structures.load, files=self._files, mailbox_id=mailbox_id, uids=uids))
        if parsed:
            await self._write(partial(structures.save, parsed=parsed))
        return found

    async def search_candidates(self, mailbox_id: int,
                                needles: Sequence[str]) -> set[int] | None:
        literal = [b for b in map(literal_in_search_bytes, needles) if b]
        if not literal:
            return None
        return await self._read(partial(structures.candidates, mailbox_id=mailbox_id,
                                        needles=literal))

    async def search_fields(self, mailbox_id: int,
                            uids: Sequence[int]) -> dict[int, SearchFields]:
        found, derived = await self._read(
            partial(structures.load_search, files=self._files, mailbox_id=mailbox_id,
                    uids=uids))
        if derived:
            await self._write(partial(structures.save_search, derived=derived))
        return found

    async def read_range(self, message: MessageInfo, start: int, end: int) -> bytes:
        end = min(end, message.size)
        if start >= end:
            return b""
        return await asyncio.get_running_loop().run_in_executor(
            self._open_pool(), read_range, self._files, message.blob_id, start, end)

    async def read_ranges(
        self, ranges: Sequence[tuple[MessageInfo, int, int]]
    ) -> list[bytes | None]:
        """One thread hop for a whole batch (a FETCH of 500 headers is one hop, not 500)."""
        jobs = [(m.blob_id, start, min(end, m.size)) for m, start, end in ranges]
        return await asyncio.get_running_loop().run_in_executor(
            self._open_pool(), _read_ranges, self._files, jobs)

    def _forget_blob(self, blob_id: str, maybe_committed: bool) -> None:
        if maybe_committed:
            return  # a row may point at it; the reaper decides at the next open
        try:
            self._files.unlink(blob_id)
        except OSError:
            log.warning("store.blob_unlink_failed blob=%s", blob_id, exc_info=True)

    async def list_mailboxes(self, account_id: int) -> list[MailboxInfo]:
        return await self._read(partial(sqlite_mailboxes.list_all, account_id=account_id))

    async def get_mailbox(self, account_id: int, name: str) -> MailboxInfo | None:
        name = canonical_mailbox_name(name)
        return self._read_small(partial(sqlite_mailboxes.get, account_id=account_id, name=name))

    # --- mailboxes (sqlite_mailboxes.py) ----------------------------------------------------
    async def create_mailbox(
        self, account_id: int, name: str, special_use: str | None = None
    ) -> MailboxInfo:
        apply = partial(
            sqlite_mailboxes.create,
            account_id=account_id,
            name=check_mailbox_name(name),
            special_use=check_special_use(special_use),
        )
        info: MailboxInfo = await self._write(apply)
        if self._wakeups is not None:  # a session's LIST-STATUS/NOTIFY may care
            self._owners[info.id] = account_id
            self._wakeups.publish(account_id, info.id, info.highest_modseq)
        return info

    async def delete_mailbox(self, account_id: int, name: str) -> None:
        """Shielded like expunge: the unlinks must follow a commit the caller cannot stop."""
        apply = partial(
            sqlite_mailboxes.delete, account_id=account_id, name=check_mailbox_name(name)
        )
        before = await self.get_mailbox(account_id, name) if self._wakeups else None
        await asyncio.shield(self._write_then_drop(apply))
        if before is not None and self._wakeups is not None:
            self._wakeups.publish(account_id, before.id, 0)  # sessions there must notice

    async def _write_then_drop(self, apply: Callable[[sqlite3.Connection], list[str]]) -> None:
        dead = await self._write(apply)
        if dead:
            await asyncio.gather(*(self._drop_blob(blob_id) for blob_id in dead))

    async def rename_mailbox(self, account_id: int, old: str, new: str) -> None:
        apply = partial(
            sqlite_mailboxes.rename,
            account_id=account_id,
            old=check_mailbox_name(old),
            new=check_mailbox_name(new),
        )
        before = await self.get_mailbox(account_id, old) if self._wakeups else None
        await self._write(apply)
        if before is None:
            return
        await self._publish(before.id)  # renamed, or (RENAME INBOX) emptied
        if before.name == INBOX:  # its messages now live in a new mailbox
            after = await self.get_mailbox(account_id, new)
            if after is not None:
                await self._publish(after.id, after.highest_modseq)

    async def subscribe(self, account_id: int, name: str) -> None:
        name = check_mailbox_name(name)
        await self._write(partial(sqlite_mailboxes.subscribe, account_id=account_id, name=name))

    async def unsubscribe(self, account_id: int, name: str) -> bool:
        name = check_mailbox_name(name)
        apply = partial(sqlite_mailboxes.unsubscribe, account_id=account_id, name=name)
        return await self._write(apply)

    async def list_subscriptions(self, account_id: int) -> list[str]:
        return await self._read(partial(sqlite_mailboxes.subscriptions, account_id=account_id))

    async def status(self, mailbox_id: int) -> MailboxInfo | None:
        return self._read_small(partial(sqlite_mailboxes.by_id, mailbox_id=mailbox_id))

    async def lock_maildrop(self, account_id: int) -> MaildropLock | None:
        return await self._maildrops.lock(account_id, self._open_pool())

    async def list_messages_in(
        self, mailbox_id: int, first_uid: int, last_uid: int, limit: int | None = None
    ) -> list[MessageInfo]:
        apply = partial(
            sqlite_messages.list_range,
            mailbox_id=mailbox_id,
            first=first_uid,
            last=last_uid,
            limit=limit,
        )
        if last_uid - first_uid < INLINE_ROWS or (limit is not None and limit <= INLINE_ROWS):
            return self._read_small(apply)
        return await self._read(apply)

    async def list_flags(
        self, mailbox_id: int, first_uid: int = 1, last_uid: int = MAX_UID
    ) -> list[MessageFlags]:
        apply = partial(
            sqlite_messages.list_flags, mailbox_id=mailbox_id, first=first_uid, last=last_uid
        )
        if last_uid - first_uid < INLINE_ROWS:
            return self._read_small(apply)
        return await self._read(apply)

    async def list_uids(self, mailbox_id: int) -> list[int]:
        return await self._read(partial(sqlite_messages.list_uids, mailbox_id=mailbox_id))

    async def uid_bounds(self, mailbox_id: int) -> tuple[int, int] | None:
        return await self._read(partial(sqlite_messages.uid_bounds, mailbox_id=mailbox_id))

    async def changes_since(self, mailbox_id: int, modseq: int) -> MailboxChanges:
        apply = partial(sqlite_messages.changes_since, mailbox_id=mailbox_id, modseq=modseq)
        return await self._read(apply)

    async def list_messages(self, mailbox_id: int) -> list[MessageInfo]:
        return await self._read(partial(sqlite_messages.list_all, mailbox_id=mailbox_id))

    async def expunge(self, mailbox_id: int, uids: Sequence[int]) -> int:
        """See base.Store.expunge. The rows go in one writer job; blobs whose last reference
        went with them are unlinked afterwards in the blob pool (`_drop_blob`), as for the
        queue, so a POP3 QUIT deleting hundreds of messages never holds up other commits.
        Shielded: a caller cancelled mid-way (the client hung up after QUIT) must not strand
        the unlinks of a removal the writer commits anyway."""
        wanted = sorted(set(uids))
        if not wanted:
            return 0
        return await asyncio.shield(self._expunge(mailbox_id, wanted))

    async def _expunge(self, mailbox_id: int, uids: list[int]) -> int:
        changed: list[tuple[int, int, int]] = []
        apply = partial(sqlite_expunge.expunge, mailbox_id=mailbox_id, uids=uids,
                        changed=changed)
        removed, dead = await self._write(apply)
        self._announce(changed)
        if dead:  # the dropper unlinks drops arriving together as one group
            await asyncio.gather(*(self._drop_blob(blob_id) for blob_id in dead))
        return removed

    # --- messages for IMAP (sqlite_messages.py) ----------------------------------------------
    async def append(
        self,
        mailbox_id: int,
        spool: Spool,
        flags: Sequence[str] = (),
        internal_date: float | None = None,
        internal_zone: int = 0,
    ) -> tuple[int, int]:
        """See base.Store.append: sealed and committed as `deliver` is; if the mailbox is gone
        the job fails and the writer's on_failure unlinks the file."""
        if not isinstance(spool, FileSpool) or spool.files is not self._files:
            raise TypeError("spool does not belong to this store")
        writer = self._open_writer()
        try:
            encoded = encode_flags(check_flags(flags))
            zone = check_zone(internal_zone)
        except ValueError:
            await spool.abort()
            raise
        date = time.time() if internal_date is None else internal_date
        blob = await self._seal_parsed(spool, parse=True)
        changed: list[tuple[int, int, int]] = []
        apply = partial(
            sqlite_messages.append,
            mailbox_id=mailbox_id,
            blob=blob,
            flags=encoded,
            internal_date=date,
            internal_zone=zone,
            changed=changed,
        )
        result: tuple[int, int] = await writer.run(
            apply,
            sync_days=frozenset({blob.day}),
            on_failure=partial(self._forget_blob, blob.blob_id),
        )
        self._announce(changed)
        return result

    async def store_flags(
        self,
        mailbox_id: int,
        uids: Sequence[int],
        op: FlagOp,
        flags: Sequence[str],
        unchanged_since: int | None = None,
    ) -> FlagUpdate:
        changed: list[tuple[int, int, int]] = []
        apply = partial(
            sqlite_messages.store_flags,
            mailbox_id=mailbox_id,
            uids=sorted(set(uids)),
            op=op,
            flags=check_flags(flags),
            unchanged_since=unchanged_since,
            changed=changed,
        )
        update: FlagUpdate = await self._write(apply)
        self._announce(changed)
        return update

    async def copy_messages(
        self, source_id: int, uids: Sequence[int], target_id: int
    ) -> CopyResult:
        changed: list[tuple[int, int, int]] = []
        apply = partial(sqlite_messages.copy, source_id=source_id, uids=sorted(set(uids)),
                        target_id=target_id, changed=changed)
        result: CopyResult = await self._write(apply)
        self._announce(changed)
        return result

    async def move_messages(
        self, source_id: int, uids: Sequence[int], target_id: int
    ) -> CopyResult:
        changed: list[tuple[int, int, int]] = []
        apply = partial(sqlite_messages.move, source_id=source_id, uids=sorted(set(uids)),
                        target_id=target_id, changed=changed)
        result: CopyResult = await self._write(apply)
        self._announce(changed)
        return result

    async def list_expunged(self, mailbox_id: int, since_modseq: int = 0) -> list[ExpungedMessage]:
        apply = partial(sqlite_expunge.since, mailbox_id=mailbox_id, modseq=since_modseq)
        return await self._read(apply)

    def read_message(self, message: MessageInfo) -> AsyncIterator[bytes]:
        """Raises KeyError (when iterated) if the blob does not exist."""
        return read_chunks(self._files, self._open_pool(), message.blob_id)

    # --- the outbound queue -------------------------------------------------------------------
    def read_blob(self, blob_id: str) -> AsyncIterator[bytes]:
        """Raises KeyError (when iterated) if the blob does not exist."""
        return read_chunks(self._files, self._open_pool(), blob_id)

    async def queue_due(self, now: float, limit: int) -> list[QueuedMessage]:
        return await self._read(partial(sqlite_queue.due, now=now, limit=limit))

    async def queue_claim(self, now: float, limit: int, lease: float) -> list[QueuedMessage]:
        return await self._write(partial(sqlite_queue.claim, now=now, limit=limit, lease=lease))

    async def queue_release(self, message_id: int, addresses: Sequence[str], at: float) -> None:
        apply = partial(
            sqlite_queue.release, message_id=message_id, addresses=list(addresses), at=at
        )
        await self._write(apply)

    async def queue_next_attempt(self) -> float | None:
        return await self._read(sqlite_queue.next_attempt)

    # --- operators (sqlite_admin.py) --------------------------------------------------------
    async def add_admin(self, name: str, password_hash: str, now: float) -> AdminAccount:
        check_admin_name(name)
        return await self._write(partial(sqlite_admin.add, name=name,
                                         password_hash=password_hash, now=now))

    async def get_admin(self, name: str) -> AdminAccount | None:
        return await self._read(partial(sqlite_admin.get, name=name))

    async def list_admins(self) -> list[AdminAccount]:
        return await self._read(sqlite_admin.list_all)

    async def set_admin_password(self, name: str, password_hash: str) -> bool:
        return await self._write(partial(sqlite_admin.set_password, name=name,
                                         password_hash=password_hash))

    async def remove_admin(self, name: str) -> bool:
        return await self._write(partial(sqlite_admin.remove, name=name))

    async def audit(self, actor: str, action: str, detail: str, now: float) -> None:
        await self._write(partial(sqlite_admin.audit, actor=actor, action=action,
                                  detail=detail, now=now))

    async def list_audit(self, limit: int) -> list[AuditEntry]:
        return await self._read(partial(sqlite_admin.list_audit, limit=limit))

    # --- API tokens (sqlite_tokens.py) -------------------------------------------------------
    async def add_api_token(self, admin: str, label: str, scopes: Sequence[str], digest: bytes,
                            now: float, expires: float | None) -> ApiToken:
        return await self._write(partial(sqlite_tokens.add, admin=admin, label=label,
                                         scopes=check_scopes(scopes), digest=digest, now=now,
                                         expires=expires))

    async def api_token(self, digest: bytes) -> ApiToken | None:
        return await self._read(partial(sqlite_tokens.by_digest, digest=digest))

    async def list_api_tokens(self, admin: str | None = None) -> list[ApiToken]:
        return await self._read(partial(sqlite_tokens.list_for, admin=admin))

    async def remove_api_token(self, token_id: int) -> ApiToken | None:
        return await self._write(partial(sqlite_tokens.remove, token_id=token_id))

    async def touch_api_token(self, token_id: int, now: float) -> None:
        await self._write(partial(sqlite_tokens.touch, token_id=token_id, now=now))

    async def queue_stats(self) -> QueueStats:
        return await self._read(sqlite_queue.stats)

    async def queue_get(self, message_id: int) -> QueuedMessage | None:
        return await self._read(partial(sqlite_queue.get, message_id=message_id))

    async def queue_list(self) -> list[QueuedMessage]:
        return await self._read(sqlite_queue.list_all)

    async def queue_update(
        self,
        message_id: int,
        updates: Sequence[RecipientUpdate],
        *,
        delay_warned: bool | None = None,
    ) -> None:
        apply = partial(
            sqlite_queue.update,
            message_id=message_id,
            updates=checked_updates(updates),
            delay_warned=delay_warned,
        )
        dead = await self._write(apply)
        if dead is not None:
            await self._drop_blob(dead)

    async def queue_retry(self, message_id: int | None, now: float) -> int:
        return await self._write(partial(sqlite_queue.retry, message_id=message_id, now=now))

    async def queue_bounce(self, message_id: int, now: float) -> int:
        return await self._write(partial(sqlite_queue.bounce, message_id=message_id, now=now))

    async def queue_delete(self, message_id: int) -> bool:
        removed, dead = await self._write(partial(sqlite_queue.remove, message_id=message_id))
        if dead is not None:
            await self._drop_blob(dead)
        return removed

    async def _drop_blob(self, blob_id: str) -> None:
        """Unlink a blob whose last reference was just committed away, durably, then forget its
        row: the order of `_collect_garbage`, but grouped and in the blob pool rather than on the
        writer thread (unlinking an fsynced file costs ~0.1 ms of journal work here; on the
        writer it would hold up every commit behind it, and every message leaving the queue
        makes one). The caller's write is already durable, so nothing here may fail it: an
        error or a crash leaves a refcount-0 row that the next exclusive open collects."""
        loop = asyncio.get_running_loop()
        dropper = self._droppers.get(loop)
        if dropper is None:
            dropper = BlobDropper(self._files, self._open_pool(), self._forget_blob_rows)
            self._droppers[loop] = dropper
        await dropper.drop(blob_id)

    async def _forget_blob_rows(self, blob_ids: list[str]) -> None:
        await self._write(partial(_forget_blob_rows, blob_ids=blob_ids))

    # --- garbage --------------------------------------------------------------------------------
    def _garbage_after_commit(self) -> None:
        assert self._conn is not None
        self._collect_garbage(self._conn)

    def _collect_garbage(self, conn: sqlite3.Connection) -> None:
        """Unlink blobs nobody references any more, then forget their rows. The unlinks are made
        durable first: otherwise a crash could bring back a file whose row is gone, in an old day
        directory the reaper never scans."""
        ids = [row[0] for row in conn.execute("SELECT id FROM blobs WHERE refcount <= 0")]
        if not ids:
            return
        days = self._files.unlink_all(ids)
        self._files.sync_days(days, missing_ok=True)
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(
                "DELETE FROM blobs WHERE id = ? AND refcount <= 0", [(i,) for i in ids]
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


# --- statements: reads (any read connection) ---------------------------------------------------
def _referenced_in_day(conn: sqlite3.Connection, day: str) -> set[str]:
    # Range scan on the primary key: "/" sorts just before "0", so this is every "<day>/…" id.
    query = "SELECT id FROM blobs WHERE id > ? AND id < ? AND refcount > 0"
    return {row[0] for row in conn.execute(query, (day + "/", day + "0"))}


# --- statements: writes (writer thread, inside the batch transaction) --------------------------
def _forget_blob_rows(conn: sqlite3.Connection, blob_ids: list[str]) -> None:
    conn.executemany(
        "DELETE FROM blobs WHERE id = ? AND refcount <= 0", [(blob_id,) for blob_id in blob_ids]
    )


def _read_ranges(files: BlobFiles, jobs: list[tuple[str, int, int]]) -> list[bytes | None]:
    out: list[bytes | None] = []
    for blob_id, start, end in jobs:
        try:
            out.append(read_range(files, blob_id, start, end) if start < end else b"")
        except KeyError:
            out.append(None)
    return out
