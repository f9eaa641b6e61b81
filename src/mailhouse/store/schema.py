"""The SQLite schema and its migrations.

`PRAGMA user_version` holds the schema version. Each release appends steps to MIGRATIONS and never
edits a released one, so any older database upgrades step by step; a database newer than this
release is refused rather than misread (queue and store formats must survive upgrades:
Stalwart issues #1853, #1858, #2283; security.md checklist item 37).

Design notes for version 1:
- Counters a client sees (UIDNEXT, HIGHESTMODSEQ, message count) live on the mailbox row, so a
  delivery updates one row per target and reads it back with RETURNING (RFC 9051 §2.3.1.1,
  RFC 7162 §3.1).
- AUTOINCREMENT on accounts, mailboxes and messages: ids are held by sessions and snapshots and
  must never be reused for something else after a deletion.
- blob refcounts replace a foreign key on messages.blob_id, which would need an index costing
  every delivery a write; rows at refcount 0 are garbage whose files are still to be unlinked.
- `expunged` keeps (uid, modseq) of removed messages for QRESYNC VANISHED (RFC 7162 §3.2.10).
- `meta` holds the directory serial, read by other processes (the CLI edits while the server
  runs), and the last UIDVALIDITY handed out.

Version 2 adds the outbound queue (issue 3):
- `queue`: one row per queued message; its blob holds one reference for the row, counted with
  the mailbox copies of the same delivery (one blob, one transaction). AUTOINCREMENT: operators
  name messages by id (`mailhouse queue delete 17`), so an id must never point at a newer one.
- `queue_recipients`: per-recipient status, attempts, next attempt and last reply. A recipient
  only ever leaves PENDING; when none is left the message row goes (its recipients cascade).
- `queue_recipients_due`: a partial index over PENDING recipients only, by next attempt, with
  the message id in it: the scheduler's two hot queries (what is due, when is the next one) are
  an index range scan and a min(), never a table scan, however many finished rows wait beside.

Version 3 (issue 8, IMAP mailboxes):
- `subscriptions`: subscribed names per account, apart from mailboxes, because a subscription
  may name a mailbox that does not exist and outlives DELETE (RFC 9051 §6.3.7). Filled from the
  old `mailboxes.subscribed` column, which is left in place and no longer read or written
  (dropping it would rebuild the table for nothing).

Version 4 (issue 8, IMAP messages):
- `messages.internal_zone`: INTERNALDATE's zone in minutes east of UTC, so FETCH INTERNALDATE
  gives back the zone APPEND was given (RFC 9051 §2.3.3); 0 for delivered mail and old rows.
- HIGHESTMODSEQ is at least 1 from a mailbox's creation (RFC 7162 §3.1.2.1: mod-sequences are
  positive): empty mailboxes that never changed move from 0 to 1.

Version 5 (issue 8, STATUS without a scan):
- `mailboxes.unseen`, `deleted`, `total_size`: messages without \\Seen, with \\Deleted, and the
  sum of their sizes, kept current by every write beside `message_count`, so STATUS (and
  STATUS=SIZE, RFC 8438) reads one row. Computed once here from the messages.

Version 6 (issue 8, the change feed):
- `messages_modseq` on (mailbox_id, modseq): "what changed since MODSEQ m" (CONDSTORE
  CHANGEDSINCE, QRESYNC) is a range scan, as `expunged_modseq` already makes it for expunges.
  It costs every write one more index entry; a resync of a 100,000-message mailbox no longer
  reads them all.

Version 7 (issue 8, quota):
- `accounts.quota`: the storage limit in octets, NULL for none (every existing account). Usage
  is not stored: it is the sum of the account's `mailboxes.total_size` counters, a few rows
  found by the (account_id, name) index, so it can never drift from them.

Version 8 (issue 8, parse once at delivery):
- `blobs.structure`: the message's structure (message/structure_codec.py: MIME tree with
  offsets, ENVELOPE, BODYSTRUCTURE fields, search and sort fields), written with the blob row
  in the delivery's transaction and shared by every copy. NULL for blobs stored before (and
  for queue-only blobs): parsed on first use and saved then, as is a structure of an older
  codec version.

Version 9 (issue 8, search without the structure):
- `blobs.search`: the search and sort fields alone (message/structure_codec.search_to_bytes),
  written beside the structure, so SEARCH on addresses and subjects, SORT and THREAD decode a
  few hundred octets per message instead of the whole MIME tree. NULL for older blobs: derived
  from the structure on first use and saved.

Version 10 (issue 8, search without a join):
- `message_search`: each message's search fields again, keyed by (mailbox_id, uid), so SEARCH
  on addresses and subjects and SORT read one mailbox's fields as a range of one dense table
  instead of a lookup of each message's blob by its text id (random pages of a table that also
  holds the structures: about 3 µs a message, more once it outgrows the page cache). Kept by
  triggers on `messages` (insert, delete — cascades included —, and a change of mailbox or
  UID), so no write path can forget it; a delivery or APPEND inserts its message row before
  the blob row, so it then sets the fields itself (`sqlite_messages`), as does the derivation
  of fields for older rows (`structures.save_search`).

Version 11 (issue 9, operators):
- `admins`: the server's operators (name, Argon2 hash), apart from mail accounts: operating the
  server is not a mailbox.
- `audit`: every change an operator makes, append-only (AUTOINCREMENT: ids never reused).

Version 12 (issue 9, the admin API and the message trace):
- `api_tokens`: operators' tokens for automation. Only a SHA-256 digest of each token is kept
  (the token is 256 random bits shown once, so a slow hash adds nothing); `scopes` is a
  space-separated list; a token goes with its operator.
- `message_events`: each step of a message's way through the server (received, accepted,
  refused, stored, queued, delivered, deferred, bounced), searchable by trace id, sender,
  recipient, Message-ID and outbound queue id for the message trace; old rows are pruned by
  age.
- `queue.trace`: the trace id of a queued message (the reception's id), so every delivery
  attempt's steps join its reception's; '' for rows queued before.

Version 13 (issue 9, bouncing a queued message):
- `queue.bounce_requested`: an operator asked for the message to be bounced; the queue worker
  fails its PENDING recipients and sends the DSN at its next round (docs/decisions.md).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from mailhouse.errors import ConfigError

_V1 = """
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO meta (key, value) VALUES ('directory_serial', 0), ('last_uidvalidity', 0);

CREATE TABLE domains (
    name TEXT PRIMARY KEY
) WITHOUT ROWID;

CREATE TABLE accounts (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    address       TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL
);

CREATE TABLE aliases (
    alias   TEXT PRIMARY KEY,
    targets TEXT NOT NULL  -- JSON array of address keys, in order
) WITHOUT ROWID;

CREATE TABLE mailboxes (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id     INTEGER NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    name           TEXT NOT NULL,
    special_use    TEXT,
    uidvalidity    INTEGER NOT NULL CHECK (uidvalidity BETWEEN 1 AND 4294967295),
    uidnext        INTEGER NOT NULL DEFAULT 1,
    highest_modseq INTEGER NOT NULL DEFAULT 0,
    subscribed     INTEGER NOT NULL DEFAULT 1,
    message_count  INTEGER NOT NULL DEFAULT 0,
    UNIQUE (account_id, name)
);

CREATE TABLE blobs (
    id       TEXT PRIMARY KEY,
    size     INTEGER NOT NULL,
    refcount INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX blobs_garbage ON blobs (refcount) WHERE refcount <= 0;

CREATE TABLE messages (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    mailbox_id    INTEGER NOT NULL REFERENCES mailboxes (id) ON DELETE CASCADE,
    uid           INTEGER NOT NULL,
    modseq        INTEGER NOT NULL,
    flags         TEXT NOT NULL DEFAULT '',  -- space-separated, sorted
    internal_date REAL NOT NULL,
    size          INTEGER NOT NULL,
    blob_id       TEXT NOT NULL,
    UNIQUE (mailbox_id, uid)
);

CREATE TABLE expunged (
    mailbox_id INTEGER NOT NULL REFERENCES mailboxes (id) ON DELETE CASCADE,
    uid        INTEGER NOT NULL,
    modseq     INTEGER NOT NULL,
    PRIMARY KEY (mailbox_id, uid)
) WITHOUT ROWID;
CREATE INDEX expunged_modseq ON expunged (mailbox_id, modseq);
"""

_V2 = """
CREATE TABLE queue (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    blob_id      TEXT NOT NULL,
    size         INTEGER NOT NULL,
    sender       TEXT NOT NULL,  -- '' for the null reverse-path
    created      REAL NOT NULL,
    smtputf8     INTEGER NOT NULL DEFAULT 0,
    body_8bit    INTEGER NOT NULL DEFAULT 0,
    delay_warned INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE queue_recipients (
    id           INTEGER PRIMARY KEY,  -- insertion order = the order the sender gave
    queue_id     INTEGER NOT NULL REFERENCES queue (id) ON DELETE CASCADE,
    address      TEXT NOT NULL,
    status       TEXT NOT NULL DEFAULT 'pending'
                 CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    last_reply   TEXT,
    UNIQUE (queue_id, address)
);
CREATE INDEX queue_recipients_due ON queue_recipients (next_attempt, queue_id)
    WHERE status = 'pending';
"""

_V3 = """
CREATE TABLE subscriptions (
    account_id INTEGER NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    PRIMARY KEY (account_id, name)
) WITHOUT ROWID;
INSERT INTO subscriptions (account_id, name)
    SELECT account_id, name FROM mailboxes WHERE subscribed <> 0;
"""

_V4 = """
ALTER TABLE messages ADD COLUMN internal_zone INTEGER NOT NULL DEFAULT 0;
UPDATE mailboxes SET highest_modseq = 1 WHERE highest_modseq = 0;
"""

_V5 = """
ALTER TABLE mailboxes ADD COLUMN unseen INTEGER NOT NULL DEFAULT 0;
ALTER TABLE mailboxes ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0;
ALTER TABLE mailboxes ADD COLUMN total_size INTEGER NOT NULL DEFAULT 0;
UPDATE mailboxes SET
    unseen = (SELECT count(*) FROM messages AS m WHERE m.mailbox_id = mailboxes.id
              AND instr(' ' || m.flags || ' ', ' \\Seen ') = 0),
    deleted = (SELECT count(*) FROM messages AS m WHERE m.mailbox_id = mailboxes.id
               AND instr(' ' || m.flags || ' ', ' \\Deleted ') > 0),
    total_size = (SELECT coalesce(sum(m.size), 0) FROM messages AS m
                  WHERE m.mailbox_id = mailboxes.id);
"""

_V6 = """
CREATE INDEX messages_modseq ON messages (mailbox_id, modseq);
"""

_V7 = """
ALTER TABLE accounts ADD COLUMN quota INTEGER CHECK (quota IS NULL OR quota >= 0);
"""

Migration = str | Callable[[sqlite3.Connection], None]

_V8 = """
ALTER TABLE blobs ADD COLUMN structure BLOB;
"""

# MIGRATIONS[i] upgrades version i to version i + 1. Append only.
_V9 = """
ALTER TABLE blobs ADD COLUMN search BLOB;
"""

_V10 = """
CREATE TABLE message_search (
    mailbox_id INTEGER NOT NULL,
    uid        INTEGER NOT NULL,
    search     BLOB,
    PRIMARY KEY (mailbox_id, uid)
) WITHOUT ROWID;
INSERT INTO message_search (mailbox_id, uid, search)
    SELECT m.mailbox_id, m.uid, b.search FROM messages AS m LEFT JOIN blobs AS b
    ON b.id = m.blob_id;
CREATE TRIGGER message_search_insert AFTER INSERT ON messages BEGIN
    INSERT OR REPLACE INTO message_search (mailbox_id, uid, search)
        VALUES (NEW.mailbox_id, NEW.uid, (SELECT search FROM blobs WHERE id = NEW.blob_id));
END;
CREATE TRIGGER message_search_delete AFTER DELETE ON messages BEGIN
    DELETE FROM message_search WHERE mailbox_id = OLD.mailbox_id AND uid = OLD.uid;
END;
CREATE TRIGGER message_search_renumber AFTER UPDATE OF mailbox_id, uid ON messages BEGIN
    UPDATE message_search SET mailbox_id = NEW.mailbox_id, uid = NEW.uid
        WHERE mailbox_id = OLD.mailbox_id AND uid = OLD.uid;
END;
"""

_V11 = """
CREATE TABLE admins (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    name          TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created       REAL NOT NULL
);
CREATE TABLE audit (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    at     REAL NOT NULL,
    actor  TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL
);
"""

_V12 = """
CREATE TABLE api_tokens (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    admin_id  INTEGER NOT NULL REFERENCES admins(id) ON DELETE CASCADE,
    label     TEXT NOT NULL,
    scopes    TEXT NOT NULL,
    digest    BLOB NOT NULL UNIQUE,
    created   REAL NOT NULL,
    expires   REAL,
    last_used REAL
);
CREATE INDEX api_tokens_admin ON api_tokens (admin_id);
CREATE TABLE message_events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    at         REAL NOT NULL,
    trace      TEXT NOT NULL,
    kind       TEXT NOT NULL,
    sender     TEXT NOT NULL,
    recipient  TEXT NOT NULL,
    message_id TEXT NOT NULL,
    detail     TEXT NOT NULL,
    queue_id   INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX message_events_trace ON message_events (trace);
CREATE INDEX message_events_sender ON message_events (sender);
CREATE INDEX message_events_recipient ON message_events (recipient);
CREATE INDEX message_events_message_id ON message_events (message_id);
CREATE INDEX message_events_queue_id ON message_events (queue_id) WHERE queue_id <> 0;
CREATE INDEX message_events_at ON message_events (at);
ALTER TABLE queue ADD COLUMN trace TEXT NOT NULL DEFAULT '';
"""

_V13 = """
ALTER TABLE queue ADD COLUMN bounce_requested INTEGER NOT NULL DEFAULT 0;
"""

MIGRATIONS: list[Migration] = [
    _V1, _V2, _V3, _V4, _V5, _V6, _V7, _V8, _V9, _V10, _V11, _V12, _V13]


def latest_version() -> int:
    return len(MIGRATIONS)


def statements(script: str) -> list[str]:
    """Split a script into statements. executescript() would COMMIT the surrounding transaction,
    and a migration must be all-or-nothing together with its user_version bump."""
    result: list[str] = []
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            result.append(pending.strip())
            pending = ""
    if pending.strip():
        raise ValueError(f"incomplete SQL statement: {pending.strip()[:60]!r}")
    return result


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the database to latest_version(); returns the version found before.

    Runs under BEGIN IMMEDIATE and reads the version inside the transaction, so two processes
    opening one fresh database at once cannot both run a step. `conn` must be in autocommit mode
    (isolation_level=None).
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = int(conn.execute("PRAGMA user_version").fetchone()[0])
        target = latest_version()
        if found > target:
            raise ConfigError(
                f"the database schema is version {found}, newer than this release of mailhouse "
                f"understands ({target}); run the newer release or restore a backup"
            )
        for version in range(found, target):
            step = MIGRATIONS[version]
            if isinstance(step, str):
                for statement in statements(step):
                    conn.execute(statement)
            else:
                step(conn)
            conn.execute(f"PRAGMA user_version = {version + 1:d}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return found
