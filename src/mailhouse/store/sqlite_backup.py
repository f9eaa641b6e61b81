"""A consistent copy of the embedded store while the server runs, and its way back.

Why this order: SQLite's online backup (`Connection.backup`, one step) copies the database as
one read transaction sees it, so the copy is a snapshot even while other processes write
(readers never block writers in WAL mode). Message files are immutable once written, so after
the snapshot each file its rows name is copied as it is. A file may have gone in between (an
EXPUNGE, a delivered queue entry, committed after the snapshot): its rows are dropped from the
copy, which is then the state just after that removal, never a row without its file. Files no
row of the snapshot names (written after it) are not copied: they belong to a later state.

Everything written is fsynced before `backup` returns (files, then their directories), so a
backup that reported success survives a crash of the machine that made it.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from mailhouse.store.blobs import BlobFiles, sync_dir, sync_file
from mailhouse.store.sqlite import DB_NAME

_REFERENCED = "SELECT blob_id FROM messages UNION SELECT blob_id FROM queue"
_RECOUNT = """UPDATE mailboxes SET
    message_count = (SELECT count(*) FROM messages AS m WHERE m.mailbox_id = mailboxes.id),
    unseen = (SELECT count(*) FROM messages AS m WHERE m.mailbox_id = mailboxes.id
              AND instr(' ' || m.flags || ' ', ' \\Seen ') = 0),
    deleted = (SELECT count(*) FROM messages AS m WHERE m.mailbox_id = mailboxes.id
               AND instr(' ' || m.flags || ' ', ' \\Deleted ') > 0),
    total_size = (SELECT coalesce(sum(m.size), 0) FROM messages AS m
                  WHERE m.mailbox_id = mailboxes.id)"""


@dataclass(frozen=True, slots=True)
class StoreCopy:
    """What a backup or restore copied."""

    files: int  # message files
    octets: int
    dropped: int  # rows whose file went after the snapshot (removed from the copy)


def backup(data_dir: Path, dest: Path) -> StoreCopy:
    """Copy the store of `data_dir` into `dest` (an existing, empty directory of ours)."""
    source = sqlite3.connect(data_dir / DB_NAME)
    source.execute("PRAGMA query_only = ON")
    target = sqlite3.connect(dest / DB_NAME, isolation_level=None)
    try:
        source.backup(target)  # pages=-1: the whole database in one step, one snapshot
    finally:
        source.close()
    try:
        target.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
        copied = _copy_blobs(BlobFiles(data_dir), BlobFiles(dest), target)
        target.execute("PRAGMA synchronous = FULL")
    finally:
        target.close()
    sync_file(dest / DB_NAME)
    sync_dir(dest)
    return copied


def restore(src: Path, data_dir: Path) -> StoreCopy:
    """Copy a backup's store into `data_dir` (an existing, empty directory of ours). The
    copy is checked first: a damaged database or a missing message file refuses it."""
    _check(src)
    shutil.copyfile(src / DB_NAME, data_dir / DB_NAME)
    conn = sqlite3.connect(data_dir / DB_NAME, isolation_level=None)
    try:
        copied = _copy_blobs(BlobFiles(src), BlobFiles(data_dir), conn, drop=False)
    finally:
        conn.close()
    sync_file(data_dir / DB_NAME)
    sync_dir(data_dir)
    return copied


class DamagedBackup(Exception):
    """The backup cannot be restored as it is; the message says why."""


def _check(src: Path) -> None:
    db = src / DB_NAME
    if not db.is_file():
        raise DamagedBackup(f"{src} holds no {DB_NAME}: not a mailhouse backup")
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        result = conn.execute("PRAGMA integrity_check").fetchone()[0]
        if result != "ok":
            raise DamagedBackup(f"{db} is damaged: {result}")
        files = BlobFiles(src)
        missing = [blob_id for (blob_id,) in conn.execute(_REFERENCED)
                   if not os.path.isfile(files.path(blob_id))]
    except sqlite3.DatabaseError as exc:
        raise DamagedBackup(f"{db} is not a readable database: {exc}") from None
    finally:
        conn.close()
    if missing:
        raise DamagedBackup(f"{len(missing)} message files are missing from {src / 'blobs'}, "
                            f"e.g. {missing[0]}")


def _copy_blobs(source: BlobFiles, target: BlobFiles, conn: sqlite3.Connection, *,
                drop: bool = True) -> StoreCopy:
    """Copy every file the rows in `conn` name; with `drop`, remove the rows of a file that is
    gone (see the module's doc)."""
    target.prepare()
    conn.execute("PRAGMA foreign_keys = ON")  # a dropped queue entry takes its recipients
    files = octets = dropped = 0
    days: set[str] = set()
    gone: list[str] = []
    for (blob_id,) in conn.execute(_REFERENCED).fetchall():
        origin = source.path(blob_id)
        day = blob_id.partition("/")[0]
        if day not in days:
            os.makedirs(os.path.join(target.root, day), mode=0o700, exist_ok=True)
            days.add(day)
        copy = target.path(blob_id)
        try:
            shutil.copyfile(origin, copy)
        except FileNotFoundError:
            gone.append(blob_id)
            continue
        sync_file(Path(copy))
        files += 1
        octets += os.path.getsize(copy)
    if gone and drop:
        conn.execute("BEGIN IMMEDIATE")
        for blob_id in gone:
            dropped += conn.execute("DELETE FROM messages WHERE blob_id = ?", (blob_id,)).rowcount
            dropped += conn.execute("DELETE FROM queue WHERE blob_id = ?", (blob_id,)).rowcount
            conn.execute("DELETE FROM blobs WHERE id = ?", (blob_id,))
        conn.execute(_RECOUNT)  # the STATUS counters (and so quota use) as the rows now are
        conn.execute("COMMIT")
    for day in days:
        sync_dir(Path(target.root) / day)
    sync_dir(Path(target.root))
    return StoreCopy(files, octets, dropped)
