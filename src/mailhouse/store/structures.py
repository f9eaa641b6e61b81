"""Message structures stored beside the blobs: parsed once, when the bytes are stored.

A delivery or APPEND parses the message (message/structure.py) while its bytes are at hand —
the spool's memory buffer for most mail; for large messages the spool's write thread feeds
each chunk to the parser as it writes it (blobs.FileSpool), never reading the file back — and the
codec's bytes go into the blob row in the same transaction, shared by every copy. FETCH
ENVELOPE/BODYSTRUCTURE/BODY[part], header SEARCH, SORT and THREAD then read them; nothing
re-parses a message file. A blob without a structure (stored before schema version 8, or a
queue-only blob later copied) or with an older codec version is parsed on first use and saved.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from mailhouse.message.searchfields import SearchFields
from mailhouse.message.structure import MessageStructure, StructureParser
from mailhouse.message.structure_codec import (
    SEARCH_PREFIX,
    StructureFormatError,
    from_bytes,
    search_from_bytes,
    search_to_bytes,
    to_bytes,
)
from mailhouse.store.blobs import BlobFiles

READ_CHUNK = 256 * 1024
INLINE_PARSE = 64 * 1024  # smaller messages are parsed on the event loop, larger in a thread
_QUERY_CHUNK = 500  # UIDs per query
_SELECT = ("SELECT m.uid, m.blob_id, b.{column} FROM messages m JOIN blobs b ON b.id = m.blob_id"
           " WHERE m.mailbox_id = ?")
_RANGE = _SELECT + " AND m.uid BETWEEN ? AND ?"


def _rows(conn: sqlite3.Connection, column: str, mailbox_id: int,
          uids: Sequence[int]) -> list[tuple[int, str, bytes | None]]:
    """(uid, blob id, column) of these messages: a dense run of UIDs by one range scan of the
    (mailbox_id, uid) index (the usual FETCH 1:*, SEARCH, SORT), several times cheaper than an
    IN list; a sparse one by IN lists."""
    out: list[tuple[int, str, bytes | None]] = []
    wanted = sorted(set(uids))
    for i in range(0, len(wanted), _QUERY_CHUNK):
        chunk = wanted[i:i + _QUERY_CHUNK]
        if chunk[-1] - chunk[0] < 4 * len(chunk):
            members = set(chunk)
            out += [r for r in conn.execute(_RANGE.format(column=column),
                                            (mailbox_id, chunk[0], chunk[-1]))
                    if r[0] in members]
        else:
            marks = ",".join("?" * len(chunk))
            out += conn.execute(_SELECT.format(column=column) + f" AND m.uid IN ({marks})",
                                (mailbox_id, *chunk)).fetchall()
    return out


def parse_bytes(data: bytes) -> bytes:
    parser = StructureParser()
    parser.feed(data)
    return to_bytes(parser.finish())


def search_of(structure: bytes) -> bytes | None:
    """The search-fields bytes of a structure's codec bytes (None if they are damaged)."""
    try:
        return search_to_bytes(from_bytes(structure).search)
    except StructureFormatError:
        return None


def parse_file(files: BlobFiles, blob_id: str) -> bytes | None:
    """The codec bytes of a stored blob's structure; None when its file is gone."""
    parser = StructureParser()
    try:
        with open(files.path(blob_id), "rb") as f:
            while chunk := f.read(READ_CHUNK):
                parser.feed(chunk)
    except FileNotFoundError:
        return None
    return to_bytes(parser.finish())


def load(conn: sqlite3.Connection, files: BlobFiles, mailbox_id: int,
         uids: Sequence[int]) -> tuple[dict[int, MessageStructure], list[tuple[bytes, str]]]:
    """Structures by UID, and (codec bytes, blob id) of those parsed now, to be saved."""
    found: dict[int, MessageStructure] = {}
    parsed: dict[str, bytes] = {}
    for uid, blob_id, data in _rows(conn, "structure", mailbox_id, uids):
        structure = None
        if data is not None:
            try:
                structure = from_bytes(data)
            except StructureFormatError:
                structure = None
        if structure is None:
            fresh = parsed.get(blob_id) or parse_file(files, blob_id)
            if fresh is None:
                continue  # the file is gone: the message is being expunged
            parsed[blob_id] = fresh
            structure = from_bytes(fresh)
        found[uid] = structure
    return found, [(data, blob_id) for blob_id, data in parsed.items()]


def load_search(conn: sqlite3.Connection, files: BlobFiles, mailbox_id: int, uids: Sequence[int]
                ) -> tuple[dict[int, SearchFields], list[tuple[bytes, str, int, int]]]:
    """Search fields by UID (from `message_search`, schema v10), and (bytes, blob id, mailbox
    id, UID) of those derived now from the structure."""
    found: dict[int, SearchFields] = {}
    missing: list[int] = []
    for uid, data in _search_rows(conn, mailbox_id, uids):
        try:
            if data is not None:
                found[uid] = search_from_bytes(data)
                continue
        except StructureFormatError:
            pass
        missing.append(uid)
    derived: list[tuple[bytes, str, int, int]] = []
    if missing:
        structures, _ = load(conn, files, mailbox_id, missing)
        blob_of = {uid: blob_id for uid, blob_id, _ in _rows(conn, "size", mailbox_id, missing)}
        for uid, structure in structures.items():
            found[uid] = structure.search
            derived.append((search_to_bytes(structure.search), blob_of[uid], mailbox_id, uid))
    return found, derived


_SEARCH = "SELECT uid, search FROM message_search WHERE mailbox_id = ?"


def _search_rows(conn: sqlite3.Connection, mailbox_id: int,
                 uids: Sequence[int]) -> list[tuple[int, bytes | None]]:
    """(uid, search fields) of these messages: a dense run by one range of the table's key, a
    sparse one by IN lists (as `_rows`)."""
    out: list[tuple[int, bytes | None]] = []
    wanted = sorted(set(uids))
    for i in range(0, len(wanted), _QUERY_CHUNK):
        chunk = wanted[i:i + _QUERY_CHUNK]
        if chunk[-1] - chunk[0] < 4 * len(chunk):
            members = set(chunk)
            out += [r for r in conn.execute(_SEARCH + " AND uid BETWEEN ? AND ?",
                                            (mailbox_id, chunk[0], chunk[-1]))
                    if r[0] in members]
        else:
            marks = ",".join("?" * len(chunk))
            out += conn.execute(_SEARCH + f" AND uid IN ({marks})", (mailbox_id, *chunk))
    return out


def candidates(conn: sqlite3.Connection, mailbox_id: int, needles: Sequence[bytes]) -> set[int]:
    """UIDs whose stored search fields contain every needle (see Store.search_candidates),
    found by SQLite's instr over the column, nothing decoded. A row without search fields, or
    with another codec version's, stays a candidate."""
    condition = " AND ".join("instr(search, ?) > 0" for _ in needles)
    query = ("SELECT uid FROM message_search WHERE mailbox_id = ? AND (search IS NULL"
             " OR substr(search, 1, ?) != ? OR (" + condition + "))")
    params = (mailbox_id, len(SEARCH_PREFIX), SEARCH_PREFIX, *needles)
    return {uid for (uid,) in conn.execute(query, params)}


def save_search(conn: sqlite3.Connection, derived: list[tuple[bytes, str, int, int]]) -> None:
    """The derived fields on the blob (for every copy) and on the message they were derived
    for (other copies' `message_search` rows derive theirs when first read)."""
    conn.executemany("UPDATE blobs SET search = ? WHERE id = ?",
                     [(data, blob_id) for data, blob_id, _, _ in derived])
    conn.executemany("UPDATE message_search SET search = ? WHERE mailbox_id = ? AND uid = ?",
                     [(data, mailbox_id, uid) for data, _, mailbox_id, uid in derived])


def save(conn: sqlite3.Connection, parsed: list[tuple[bytes, str]]) -> None:
    conn.executemany("UPDATE blobs SET structure = ? WHERE id = ?", parsed)
