-- A mailhouse database at schema version 1, as that release wrote it.
-- Generated once and never edited: later releases must open it (security.md checklist 37).
-- Blob files are not included; the test loads this with PRAGMA user_version = 1.
BEGIN TRANSACTION;
CREATE TABLE accounts (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    address       TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL
);
INSERT INTO "accounts" VALUES(1,'alice@example.org','$argon2id$fixture');
CREATE TABLE aliases (
    alias   TEXT PRIMARY KEY,
    targets TEXT NOT NULL  -- JSON array of address keys, in order
) WITHOUT ROWID;
INSERT INTO "aliases" VALUES('postmaster@example.org','["alice@example.org"]');
CREATE TABLE blobs (
    id       TEXT PRIMARY KEY,
    size     INTEGER NOT NULL,
    refcount INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO "blobs" VALUES('20261128/5a1074ad3db54dd4a4a246d17bd574db',21,1);
CREATE TABLE domains (
    name TEXT PRIMARY KEY
) WITHOUT ROWID;
INSERT INTO "domains" VALUES('example.org');
CREATE TABLE expunged (
    mailbox_id INTEGER NOT NULL REFERENCES mailboxes (id) ON DELETE CASCADE,
    uid        INTEGER NOT NULL,
    modseq     INTEGER NOT NULL,
    PRIMARY KEY (mailbox_id, uid)
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
INSERT INTO "mailboxes" VALUES(1,1,'INBOX',NULL,1795858200,2,1,1,1);
INSERT INTO "mailboxes" VALUES(2,1,'Sent','\Sent',1795858201,1,0,1,0);
INSERT INTO "mailboxes" VALUES(3,1,'Drafts','\Drafts',1795858202,1,0,1,0);
INSERT INTO "mailboxes" VALUES(4,1,'Trash','\Trash',1795858203,1,0,1,0);
INSERT INTO "mailboxes" VALUES(5,1,'Junk','\Junk',1795858204,1,0,1,0);
INSERT INTO "mailboxes" VALUES(6,1,'Archive','\Archive',1795858205,1,0,1,0);
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
INSERT INTO "messages" VALUES(1,1,1,1,'',1.79585820003876733778e+09,21,'20261128/5a1074ad3db54dd4a4a246d17bd574db');
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO "meta" VALUES('directory_serial',3);
INSERT INTO "meta" VALUES('last_uidvalidity',1795858205);
CREATE INDEX blobs_garbage ON blobs (refcount) WHERE refcount <= 0;
CREATE INDEX expunged_modseq ON expunged (mailbox_id, modseq);
DELETE FROM "sqlite_sequence";
INSERT INTO "sqlite_sequence" VALUES('accounts',1);
INSERT INTO "sqlite_sequence" VALUES('mailboxes',6);
INSERT INTO "sqlite_sequence" VALUES('messages',1);
COMMIT;
